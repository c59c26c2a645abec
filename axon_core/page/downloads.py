"""Downloads: the run's JSON, its standalone graph page or its replay page, written when a person asks for one.

Each download is a file in a fresh folder under one export directory per
process (removed at exit); folders older than ``max_age`` seconds go first.
Nothing is written for runs nobody downloads. The replay page (self-contained,
no plotly.js, ~100-600 KB) is built from exactly the
JSON the run's JSON download holds, so ``python -m axon_core.export replay
RUN.json -o run.html --small --app-url URL`` writes the same bytes.

Worked example::

    path, warning = prepare_download(services, run, "html")
    path.name, warning  # ('axon-the-capital-of-france-is-gpt2-small-20261201.html', None): prompt, model, date
    path, _ = prepare_download(services, run, "replay", app_url="https://alice-axon.hf.space/")
    path.name  # 'axon-the-capital-of-france-is-gpt2-small-20261201.replay.html'
    prepare_download(services, None, "json")
    # (None, 'Generate first: there is no run to download yet.')
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..replay import replay_html
from .settings import EXPORT_MAX_AGE

if TYPE_CHECKING:
    from ..session import RunSession
    from .services import Services

log = logging.getLogger("axon")


def export_root() -> Path:
    """This process's export directory (under the system's temp directory)."""
    return Path(tempfile.gettempdir()) / f"axon-exports-{os.getpid()}"


# what each kind is saved as (after "axon-<prompt>-<model>-<date>.")
EXTENSIONS = {"json": "json", "html": "html", "replay": "replay.html"}


def write_download(run: "RunSession", kind: str, versions: dict[str, str] | None = None,
                   max_age: float = EXPORT_MAX_AGE, app_url: str | None = None) -> Path | None:
    """The file of ``kind`` ("json", "html": the still graph, "replay": the replay page
    linking back to ``app_url``), or None where the disk cannot be written."""
    try:
        root = export_root()
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            atexit.register(shutil.rmtree, root, True)  # gone with the process
        now = time.time()
        for old in root.iterdir():
            try:
                if now - old.stat().st_mtime > max_age:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:  # removed meanwhile by another session
                pass
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=root))
        # the name the browser saves it under: prompt, model and date
        path = folder / run.download_name(EXTENSIONS[kind], datetime.datetime.now(datetime.timezone.utc).date())
        if kind == "json":
            path.write_text(json.dumps(run.export_json(versions)))
        elif kind == "replay":  # from the JSON as downloaded, so the command line gives the same page
            run_json = json.loads(json.dumps(run.export_json(versions)))
            path.write_bytes(replay_html(run_json, small=True, app_url=app_url).encode("utf-8"))
        else:
            path.write_text(run.export_html())
    except OSError as err:
        log.warning("could not write the download: %s", err)
        return None
    return path


def prepare_download(services: "Services", run: "RunSession | None", kind: str,
                     app_url: str | None = None) -> tuple[Path | None, str | None]:
    """The file to hand over, or None and why (a message for the person).
    ``app_url``: where this app is served (the replay page's link back)."""
    if run is None or not run.steps:
        return None, "Generate first: there is no run to download yet."
    path = write_download(run, kind, services.versions(), app_url=app_url)
    if path is None:
        return None, "Downloads are unavailable: the disk cannot be written."
    return path, None
