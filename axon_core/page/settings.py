"""The page's settings: read once from the environment, clamped, never raising.

Every number a person running the app can set (``AXON_CONCURRENCY``,
``AXON_QUEUE_SIZE``, ``AXON_MAX_RUN_SECONDS``, ``AXON_REPLAY_MB``, ...) goes
through :func:`env_number`: an unreadable or too-small value keeps the
default, with a warning in the log, so the app always starts.

Worked example::

    env_number("AXON_CONCURRENCY", 16, 1, int)   # 16 unset; 4 for " 4 "; 16 for "abc" or "0"
    s = PageSettings.from_env({"SPACES_ZERO_GPU": "true"})
    s.zero_gpu, s.concurrency                    # (True, 1): one view per GPU call
    s.limits.top_k                               # (0, 200): the Top-k slider's range
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Mapping

from ..share import Limits

log = logging.getLogger("axon")

EXPORT_MAX_AGE = 3600.0  # downloads are kept this long (seconds)
FRAME_INTERVAL = 0.1  # a view draws at most this often (seconds): ≤ 10 frames a second
TABLE_INTERVAL = 0.5  # the features table, at most this often during a run (seconds)
LABEL_TAIL = 2.0  # after a run, labels still arriving are drawn for this long (seconds)
SESSION_TTL = 900  # a browser session's run is forgotten this long after its last update (seconds)
EXAMPLES = [
    "The capital of France is",
    "In 1969, the first person to walk on the Moon was",
    "def fibonacci(n):",
    "She opened the letter and began to cry because",
]


def env_number(name: str, default: float, low: float, cast=float, env: Mapping[str, str] | None = None):
    """A number from the environment, at least ``low``; anything else keeps ``default``."""
    raw = (os.environ if env is None else env).get(name)
    try:
        value = cast(raw) if raw not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    return value if not math.isnan(value) and value >= low else default


def page_limits(env: Mapping[str, str] | None = None) -> Limits:
    """Links and API calls are clamped to the sliders' own ranges, so whatever they
    ask for is a value the page can show (and Generate then accepts)."""
    return dataclasses.replace(Limits.from_env(env), top_k=(0, 200), activation_threshold=(0.0, 10.0))


@dataclass
class PageSettings:
    """What the environment decides about this process's page (see the module doc)."""

    limits: Limits = field(default_factory=page_limits)
    max_run_seconds: float = 180.0
    zero_gpu: bool = False  # each view computes its own run inside one @spaces.GPU call
    concurrency: int = 16  # sessions viewing a run at once
    queue_size: int = 64
    batch: str = "auto"  # the engine's batching (AXON_BATCH)
    replay_bytes: int = 16 << 20
    torch_threads: str | None = None  # AXON_TORCH_THREADS, or None: chosen by the CPUs
    label_bulk: bool = True  # AXON_LABEL_BULK=0: no bulk label downloads at start-up and on load
    step_delay: float = 0.0  # AXON_STEP_DELAY (tests only): the engine sleeps this long after each new token

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PageSettings":
        env = os.environ if env is None else env
        zero_gpu = env.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
        return cls(
            limits=page_limits(env),
            max_run_seconds=env_number("AXON_MAX_RUN_SECONDS", 180.0, 1.0, env=env),
            zero_gpu=zero_gpu,
            # The engine steps all views' runs in turns (a view only waits and draws);
            # on ZeroGPU each view drives its own run on the GPU: one at a time.
            concurrency=env_number("AXON_CONCURRENCY", 1 if zero_gpu else 16, 1, int, env=env),
            queue_size=env_number("AXON_QUEUE_SIZE", 64, 1, int, env=env),
            batch=env.get("AXON_BATCH", "auto"),
            replay_bytes=int(env_number("AXON_REPLAY_MB", 16, 0, env=env)) << 20,
            torch_threads=env.get("AXON_TORCH_THREADS"),
            label_bulk=env.get("AXON_LABEL_BULK", "1").strip().lower() not in ("0", "false", "no", "off"),
            step_delay=min(env_number("AXON_STEP_DELAY", 0.0, 0.0, env=env), 5.0),
        )

    @property
    def gpu_seconds(self) -> int:
        """One ZeroGPU call computes one whole run, in at most this long."""
        return int(min(self.max_run_seconds, 120))
