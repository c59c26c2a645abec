"""The status line and the features table: what a run looks like in text.

Worked example::

    status_line(services)                       # '<b data-state="idle" class="axon-state">cpu</b>'
    status_line(services, run, "loaded", "done")
    # '<b data-state="done" ...>cpu</b> · gpt2-small · gpt2-small-res-jb / <code>blocks.8.hook_resid_pre</code>
    #  · 41 ms/token · 12 tokens · 96 features · loaded'
    table_frame(run).columns.tolist()           # TABLE_COLUMNS, numbers rounded to 3 places
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ..session import RunSession
    from .services import Services

TABLE_COLUMNS = ["feature", "layer", "label", "activation", "peak", "tokens", "attribution"]


def status_line(services: "Services", run: "RunSession | None" = None, extra: str | None = None,
                state: str = "idle") -> str:
    """The status line as HTML (every variable part escaped): a gr.HTML, not
    Markdown, since a browser re-renders Markdown at ~100 ms a frame. ``state``
    (idle, running, done, failed) is kept in a data attribute for scripts and tests."""
    parts = [f'<b data-state="{state}" class="axon-state">{services.pairs.device}</b>']
    if run is not None:
        parts.append(f"{html.escape(run.meta['model'])} · {html.escape(run.meta['release'])} / "
                     f"<code>{html.escape(run.meta['sae_id'])}</code>")
        if run.layered:
            parts.append("layers " + ", ".join(str(layer) for layer in sorted(run.by_layer)))
        ms = run.ms_per_token()
        if ms is not None:
            parts.append(f"{ms:.0f} ms/token")
        parts.append(f"{len(run.steps)} tokens · {len(run.graph)} features")
    labels = services.labels.status()
    if labels.get("paused_for"):
        parts.append(f"labels: Neuronpedia rate limit, paused {labels['paused_for']:.0f} s")
    elif labels.get("reachable") is False:  # the latest fetch failed (not: one ever did)
        parts.append("labels: Neuronpedia unreachable, showing feature numbers")
    if not labels.get("persistent", True):
        parts.append("labels: the label cache cannot be written, labels are kept in memory only")
    for note in (services.hub_notice, services.startup_error, extra):
        if note:
            parts.append(html.escape(note))
    return " · ".join(parts)


def table_frame(run: "RunSession | None") -> pd.DataFrame:
    """The features table of the token shown (empty before a run)."""
    rows = run.table() if run else []
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for col in ("activation", "peak", "attribution"):
        df[col] = pd.to_numeric(df[col], errors="coerce").round(3)
    return df
