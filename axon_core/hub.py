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
from urllib.parse import urlsplit

HUB_HOST = ("huggingface.co", 443)


def hub_address(env: dict | None = None) -> tuple[str, int]:
    """(host, port) of the Hub this process downloads from: ``HF_ENDPOINT``
    (a mirror, or a local fake in tests) when set, else huggingface.co:443."""
    env = os.environ if env is None else env
    try:
        url = urlsplit(str(env.get("HF_ENDPOINT") or "").strip())
        if url.hostname:
            return url.hostname, url.port or (80 if url.scheme == "http" else 443)
    except ValueError:  # e.g. a port that is not a number
        pass
    return HUB_HOST


def hub_reachable(timeout: float = 1.5, address: tuple[str, int] | None = None) -> bool:
    """Whether a TCP connection to the Hub opens within ``timeout`` seconds."""
    try:
        with socket.create_connection(address or hub_address(), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def configure_hub(env: dict | None = None, probe=None) -> str | None:
    """Set the Hub environment for this process; returns a notice for people, or None.

    - ``AXON_OFFLINE_HUB=DIR``: serve from a hub written by
      ``scripts/offline_hub.py`` (random weights, real layouts), offline.
    - ``HF_HUB_OFFLINE=1`` already set: respected.
    - otherwise, if the Hub (``HF_ENDPOINT`` when set, else
      huggingface.co) cannot be reached, switch to offline mode so that cached
      models load at once and missing ones fail at once, with a message.
      ``probe`` (a no-argument callable returning bool) replaces the TCP probe.
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
    try:
        reachable = probe() if probe is not None else hub_reachable(address=hub_address(env))
    except Exception:  # a probe that fails counts as "unreachable", never as a crash at start
        reachable = False
    if not reachable:
        env["HF_HUB_OFFLINE"] = "1"
        return (
            "Offline: the Hugging Face Hub is unreachable, so only models already in the local "
            "cache can load."
        )
    return None
