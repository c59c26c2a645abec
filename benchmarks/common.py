"""What the benchmark scripts share: an offline hub to load from by real names,
and the AXON-style step they are measured against.

Example::

    hub = use_offline_hub(None, "axon-bench-hub-")     # HF_HUB_CACHE -> a fresh GPT-2-small-shape hub
    step = axon_style_step(pair.model, pair.sae, pair.hook_name)
    next_token = step(tokens)                            # one full forward over the whole sequence
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


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
