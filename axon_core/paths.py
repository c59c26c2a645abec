"""Where AXON keeps what it writes to disk (parsed catalogue, label cache).

One rule for every cache, never the app folder (a Space's app folder is the
repository checkout, and may be read-only):

1. ``AXON_CACHE_DIR`` when set;
2. on a Hugging Face Space (``SYSTEM=spaces``) with persistent storage, i.e.
   ``/data`` is a writable folder: ``/data/axon``, so caches survive restarts;
3. else the user cache directory (``platformdirs``: ``~/.cache/axon`` on Linux).

Worked example::

    cache_dir()                                        # PosixPath('/home/me/.cache/axon')
    cache_dir({"AXON_CACHE_DIR": "/tmp/c"})            # PosixPath('/tmp/c')
    cache_dir({"SYSTEM": "spaces"}, persistent=Path("/data"))   # /data/axon if writable

Nothing is created here; callers ``mkdir`` when they write, and treat a
failure to write as "no disk cache" rather than an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import platformdirs

# Where a Space mounts persistent storage (when the Space has it).
SPACE_PERSISTENT_DIR = Path("/data")

__all__ = ["SPACE_PERSISTENT_DIR", "cache_dir", "on_space"]


def on_space(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a Hugging Face Space (Spaces set ``SYSTEM=spaces``)."""
    env = os.environ if env is None else env
    return (env.get("SYSTEM") or "").strip().lower() == "spaces"


def cache_dir(env: Mapping[str, str] | None = None, persistent: Path | None = None) -> Path:
    """The folder for AXON's caches (see the module docstring for the order).

    ``persistent`` replaces :data:`SPACE_PERSISTENT_DIR` (for tests).
    """
    env = os.environ if env is None else env
    explicit = (env.get("AXON_CACHE_DIR") or "").strip()
    if explicit:
        return Path(explicit).expanduser()
    data = SPACE_PERSISTENT_DIR if persistent is None else Path(persistent)
    if on_space(env) and data.is_dir() and os.access(data, os.W_OK | os.X_OK):
        return data / "axon"
    return Path(platformdirs.user_cache_dir("axon"))
