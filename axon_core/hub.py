"""Where models come from: the Hugging Face Hub, its local cache, or an offline hub.

Must run before anything imports ``huggingface_hub`` (it reads ``HF_HUB_CACHE``
and ``HF_HUB_OFFLINE`` once, at import). With no network and no
``HF_HUB_OFFLINE``, every load would spend minutes in retries; a one-second
TCP probe finds that out at start and switches to offline mode instead.

Worked example::

    notice = configure_hub()   # before importing transformers / sae_lens / gradio
    # None online; otherwise e.g. "Offline: the Hugging Face Hub is unreachable ..."
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the Hub opens within ``timeout`` seconds."""
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def configure_hub(env: dict | None = None, probe=hub_reachable) -> str | None:
    """Set the Hub environment for this process; returns a notice for people, or None.

    - ``AXON_OFFLINE_HUB=DIR``: serve from a hub written by
      ``scripts/offline_hub.py`` (random weights, real layouts), offline.
    - ``HF_HUB_OFFLINE=1`` already set: respected.
    - otherwise, if the Hub cannot be reached, switch to offline mode so that
      cached models load at once and missing ones fail at once, with a message.
    """
    env = os.environ if env is None else env
    offline_hub = env.get("AXON_OFFLINE_HUB")
    if offline_hub:
        path = Path(offline_hub).expanduser().resolve()
        env["HF_HUB_CACHE"] = str(path)
        env["HF_HUB_OFFLINE"] = "1"
        if not (path / "AXON_OFFLINE_HUB.json").exists():
            return (
                f"AXON_OFFLINE_HUB={path} holds no offline hub: write one with "
                f"`python scripts/offline_hub.py --out {path}`."
            )
        return f"Offline hub at {path}: random weights in the real layouts, not the real GPT-2."
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "Offline mode (HF_HUB_OFFLINE=1): only models already in the local cache can load."
    if not probe():
        env["HF_HUB_OFFLINE"] = "1"
        return (
            "Offline: the Hugging Face Hub is unreachable, so only models already in the local "
            "cache can load."
        )
    return None
