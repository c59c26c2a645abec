"""What the benchmark scripts share: an offline hub to load from by real names,
and the AXON-style step they are measured against.

Example::

    hub = use_offline_hub(None, "axon-bench-hub-")     # HF_HUB_CACHE -> a fresh GPT-2-small-shape hub
    step = axon_style_step(pair.model, pair.sae, pair.hook_name)
    next_token = step(tokens)                            # one full forward over the whole sequence
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def use_offline_hub(hub: str | None, prefix: str, size: str = "gpt2-small", layers=(8,)) -> Path:
    """Point Hugging Face at ``hub`` (a fresh temporary folder if None), offline,
    writing the ``gpt2`` + ``gpt2-small-res-jb`` hub there first if it holds none.
    Call it before anything imports huggingface_hub (it reads these at import)."""
    path = Path(hub or tempfile.mkdtemp(prefix=prefix))
    os.environ["HF_HUB_CACHE"] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not (path / "AXON_OFFLINE_HUB.json").exists():
        from scripts.offline_hub import write_offline_hub

        t = time.perf_counter()
        write_offline_hub(path, size, layers=list(layers))
        print(f"wrote {size}-shape offline hub in {time.perf_counter() - t:.1f} s: {path}")
    return path


def axon_style_step(model, sae, hook_name: str):
    """The loop AXON started from: a full ``run_with_hooks`` forward over the
    whole sequence per token, the SAE's encode and top-12 of the last position,
    then a sampled token. Returns ``step(tokens) -> next token id``."""
    import torch

    @torch.inference_mode()
    def step(tokens: torch.Tensor) -> int:
        got = {}

        def grab(act, hook):
            got["resid"] = act

        logits = model.run_with_hooks(tokens[None], fwd_hooks=[(hook_name, grab)])
        sae.encode(got["resid"][0, -1]).topk(12)
        return int(torch.multinomial(logits[0, -1].float().softmax(-1), 1))

    return step


@contextlib.contextmanager
def running_app(hub: Path, work: Path, env: dict | None = None):
    """``python app.py`` on the offline ``hub`` (Neuronpedia unreachable, temp
    and caches under ``work``), as a stranger reaches it: yields ``(proc, url)``
    once the page is served; stops it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB")}
    environ.update(AXON_OFFLINE_HUB=str(hub), AXON_PORT=str(port), AXON_HOST="127.0.0.1",
                   AXON_LABEL_CACHE=str(work / "labels.sqlite"), AXON_CACHE_DIR=str(work / "cache"),
                   AXON_NEURONPEDIA_URL="http://127.0.0.1:9", AXON_NEURONPEDIA_DATASETS_URL="http://127.0.0.1:9",
                   TMPDIR=str(tmp), GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False",
                   **(env or {}))
    log = open(work / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=environ, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}; see {work / 'app.log'}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
