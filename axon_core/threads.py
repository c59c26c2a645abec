"""Torch's thread count for the engine, chosen by measurement on this host.

Whether a second torch thread helps depends on the host: on one 2-core AMD
host the engine's step (bound by memory) was faster with one thread (32 vs
35 ms/token) and the app slower with two (the second thread waited for the
core the view was using); on a 2-core Intel host with AMX one thread was 1.5×
*slower* (67 vs 44 ms/token). A rule cannot know which host it lands on, so:

1. **At start-up** (after the default pair loads, before the first visitor),
   :func:`measure_startup` times a few real steps of the default pair with each
   sensible thread count (:func:`candidate_counts` of the CPUs this process may
   use, a cgroup quota included), in alternating rounds, while another thread
   builds and serialises graph frames the way a view does; the fastest wins.
2. **In use**, :class:`ThreadChooser` keeps the running mean step time of the
   chosen count from the engine's real steps and, every ``recheck_every`` steps,
   tries the neighbouring counts for a few steps under the load there is then;
   it switches when one is faster by more than ``margin`` (10 %: one burst of
   8 steps against the running mean is noisy; a 3 % margin switched on noise).

``AXON_TORCH_THREADS`` (an override) fixes the count: nothing is measured.
The engine applies the count in its own thread (torch's OpenMP thread count
is per calling thread once that thread has run a parallel op).

Worked example (fake timings: two threads take 30 ms a step, one 45 ms)::

    chooser = ThreadChooser(cpus=2)
    chooser.candidates                      # [1, 2]
    for n in chooser.candidates:            # what measure_startup does, with real steps
        chooser.add_startup(n, [0.045 if n == 1 else 0.030] * 4)
    chooser.settle()
    chooser.threads()                       # 2
    chooser.table()["startup_ms"]           # {'1': 45.0, '2': 30.0}
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("axon.threads")


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU
    quota (a container's limit, which ``os.cpu_count()`` does not see).

    >>> usable_cpus() >= 1
    True
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_f, period_f in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (cgroup / quota_f).read_text().split()
            quota, period = fields[0], (fields[1] if period_f is None else (cgroup / period_f).read_text().strip())
            if quota not in ("max", "-1"):
                n = min(n, max(1, math.ceil(int(quota) / int(period))))
            break
        except (OSError, ValueError, IndexError):
            continue
    return max(1, n)


def engine_threads(device: str, cpus: int) -> int:
    """Torch threads for the engine: on CPU all but one of ``cpus`` (one is
    the server's: views, Gradio, label fetches), elsewhere (GPU) at most ``cpus``.

    >>> engine_threads("cpu", 2), engine_threads("cpu", 8), engine_threads("cpu", 1), engine_threads("cuda", 2)
    (1, 7, 1, 2)
    """
    return max(1, cpus - 1) if device == "cpu" else max(1, min(cpus, torch.get_num_threads()))


def thread_override(override: str | None) -> int:
    """A thread count from the person running the app (``AXON_TORCH_THREADS``), 0 for none."""
    try:
        threads = int(override) if override not in (None, "") else 0
    except ValueError:
        log.warning("torch threads %r is not a number; choosing by the CPUs", override)
        threads = 0
    return max(0, threads)


def share_cpus(device: str, override: str | None = None) -> int:
    """Set torch's thread count for this process by :func:`engine_threads`
    (``override``: a number from the person running the app) and return it:
    the count until :meth:`axon_core.engine.Engine.choose_threads` has measured."""
    threads = thread_override(override) or engine_threads(device, usable_cpus())
    torch.set_num_threads(threads)
    return threads


def candidate_counts(cpus: int) -> list[int]:
    """Thread counts worth timing on ``cpus`` CPUs: every count up to 8, beyond
    that powers of two and the last two counts.

    >>> candidate_counts(1), candidate_counts(2), candidate_counts(4), candidate_counts(32)
    ([1], [1, 2], [1, 2, 3, 4], [1, 2, 4, 8, 16, 31, 32])
    """
    cpus = max(1, int(cpus))
    if cpus <= 8:
        return list(range(1, cpus + 1))
    return sorted({1 << i for i in range(cpus.bit_length()) if 1 << i <= cpus} | {cpus - 1, cpus})


class ThreadChooser:
    """The engine's torch thread count: measured at start-up, re-checked in use.

    ``fixed``: a count from the person running the app (never changed).
    ``default``: the count before anything is measured. The engine calls
    :meth:`threads` before each step and :meth:`record` after a one-run step
    with the count that ran it.
    """

    def __init__(self, cpus: int, fixed: int | None = None, default: int | None = None,
                 recheck_every: int = 300, burst: int = 8, margin: float = 0.10, alpha: float = 0.2):
        self.candidates = candidate_counts(cpus)
        self.fixed = fixed if fixed and fixed >= 1 else None
        self.current = self.fixed or default or self.candidates[-1]
        self.source = "override" if self.fixed else "default"
        self.recheck_every, self.burst, self.margin, self.alpha = recheck_every, burst, margin, alpha
        self.mean: dict[int, float] = {}  # running mean seconds per step, per count
        self.startup: dict[int, list[float]] = {}  # start-up samples, per count
        self.trials: dict[int, float] = {}  # the latest re-check's median, per count tried
        self.rechecks = self.switches = 0
        self._steps = 0
        self._queue: list[int] = []  # counts still to try in this re-check
        self._samples: list[float] = []
        self._lock = threading.Lock()

    # ---- start-up ------------------------------------------------------------

    def add_startup(self, threads: int, seconds: list[float]) -> None:
        self.startup.setdefault(threads, []).extend(seconds)

    def settle(self) -> int:
        """Choose the count with the smallest median start-up step (ties: fewer threads)."""
        with self._lock:
            if self.fixed is None and self.startup:
                medians = {n: statistics.median(s) for n, s in self.startup.items() if s}
                self.current = min(medians, key=lambda n: (medians[n], n))
                self.mean = dict(medians)
                self.source = "measured"
            return self.current

    # ---- in use ----------------------------------------------------------------

    def threads(self) -> int:
        """The count the next step should run with (a count on trial during a re-check)."""
        with self._lock:
            return self._queue[0] if self._queue else self.current

    def record(self, threads: int, seconds: float) -> None:
        """One one-run step took ``seconds`` with ``threads`` torch threads."""
        with self._lock:
            if self._queue and threads == self._queue[0]:
                self._samples.append(seconds)
                if len(self._samples) > self.burst:  # the first sample after a switch is dropped
                    self.trials[threads] = statistics.median(self._samples[1:])
                    self.mean[threads] = self.trials[threads]
                    self._queue.pop(0)
                    self._samples = []
                    if not self._queue:
                        self._decide()
                return
            if threads != self.current:
                return  # a step from before a switch
            old = self.mean.get(threads)
            self.mean[threads] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds
            self._steps += 1
            if self.fixed is None and len(self.candidates) > 1 and self._steps % self.recheck_every == 0:
                self._queue = self._neighbours()
                self._samples = []
                self.rechecks += 1

    def _neighbours(self) -> list[int]:
        i = self.candidates.index(self.current) if self.current in self.candidates else len(self.candidates) - 1
        return [self.candidates[j] for j in (i - 1, i + 1) if 0 <= j < len(self.candidates)]

    def _decide(self) -> None:
        here = self.mean[self.current]
        best = min(self.trials, key=lambda n: (self.trials[n], n))
        if self.trials[best] < (1 - self.margin) * here:
            log.info("torch threads %d -> %d (%.1f vs %.1f ms a step)", self.current, best,
                     1e3 * self.trials[best], 1e3 * here)
            self.current, self.source = best, "measured"
            self.switches += 1

    def table(self) -> dict:
        """What ``/engine_stats`` shows: the count, why, and the measurements behind it."""
        with self._lock:
            return {
                "chosen": self.current, "source": self.source, "candidates": list(self.candidates),
                "startup_ms": {str(n): round(1e3 * statistics.median(s), 2) for n, s in sorted(self.startup.items())},
                "mean_ms": {str(n): round(1e3 * t, 2) for n, t in sorted(self.mean.items())},
                "recheck_ms": {str(n): round(1e3 * t, 2) for n, t in sorted(self.trials.items())},
                "rechecks": self.rechecks, "switches": self.switches, "on_trial": self._queue[0] if self._queue else None,
            }


def measure_startup(chooser: ThreadChooser, step: Callable[[], None], rounds: int = 3, steps: int = 4,
                    background: Callable[[], None] | None = None, interval: float = 0.1,
                    timer: Callable[[], float] = time.perf_counter,
                    set_threads: Callable[[int], None] = torch.set_num_threads) -> int:
    """Time ``steps`` calls of ``step`` with each candidate count, ``rounds`` times in
    turn (after one untimed call per count and round; a count over 1.5× the best
    median so far drops out), while ``background`` (if any) runs every
    ``interval`` seconds in another thread; settle the chooser and set the chosen
    count in this thread. Returns it. With an override or a single candidate
    nothing is timed."""
    if chooser.fixed is not None or len(chooser.candidates) < 2:
        set_threads(chooser.current)
        return chooser.current
    stop = threading.Event()
    beside = None
    if background is not None:
        def work() -> None:
            while not stop.wait(interval):
                try:
                    background()
                except Exception:  # noqa: BLE001 - the load beside is best effort
                    log.exception("background work while measuring threads failed")
                    return
        beside = threading.Thread(target=work, name="axon-threads-load", daemon=True)
        beside.start()
    try:
        counts = list(chooser.candidates)
        for _ in range(rounds):
            for n in counts:
                set_threads(n)
                step()
                times = []
                for _ in range(steps):
                    t = timer()
                    step()
                    times.append(timer() - t)
                chooser.add_startup(n, times)
            # a count far behind the best is not timed again (start-up stays short on a busy host)
            medians = {n: statistics.median(chooser.startup[n]) for n in counts}
            counts = [n for n in counts if medians[n] <= 1.5 * min(medians.values())]
    finally:
        stop.set()
        if beside is not None:
            beside.join(timeout=5)
    chosen = chooser.settle()
    set_threads(chosen)
    return chosen


def view_like_load(pair, tokens: int = 80, k: int = 12, seed: int = 0) -> Callable[[], None]:
    """A frame as a view builds and sends it: a run of ``tokens`` synthetic tokens
    (``k`` of the SAE's features each, drawn from a growing pool, so the graph
    reaches its 300 nodes), laid out warm, drawn and serialised. Returns a
    function that builds one frame."""

    import numpy as np

    from .features import FeatureHit
    from .generation import GenerationSettings, TokenStep
    from .session import RunSession

    rng = np.random.default_rng(seed)
    d_sae = int(pair.sae.cfg.d_sae)
    view = RunSession({"neuronpedia_id": None}, GenerationSettings(), None, frame_interval=0)
    for p in range(1, tokens + 1):
        reach = min(d_sae, 20 + 5 * p)
        idx = rng.choice(reach, size=min(k, reach), replace=False)
        feats = tuple(FeatureHit(int(i), float(a), 0.0) for i, a in zip(idx, rng.gamma(2.0, 2.0, size=len(idx))))
        view.add(TokenStep(p, p, f"t{p}", p <= 5, feats, next_token_id=p + 1))

    def frame() -> None:
        view.graph_log()  # laid out, its scene built, and the delta to the page's player written, as a view does

    return frame


def real_steps(pair, prompt: str = "The quick brown fox jumps over the lazy dog. It") -> Callable[[], None]:
    """One real token step of ``pair`` per call (a new generation when one runs out)."""
    from .generation import Generation, GenerationSettings

    settings = GenerationSettings(max_new_tokens=64, seed=0, stop_at_eos=False)
    state: dict = {}

    def step() -> None:
        gen = state.get("gen")
        if gen is None or gen.done:
            gen = state["gen"] = Generation(pair, prompt, settings)
            gen.start()
        gen.step()

    return step
