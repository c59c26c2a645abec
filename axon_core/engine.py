"""The engine: one owner of the models, stepping every live run token by token.

The token loop and the view are apart. Browser sessions *submit* a run and
*read* its progress (a :class:`LiveRun`: steps so far, state, timing); one
engine thread steps every live run in turns, one token each per round, so a
new run's prompt pass starts within one round however many runs are live,
and none starves. Runs of one model that each need one new token may go
through the weights together (:func:`~axon_core.batching.step_batch`) when
that is measured to be faster on this device (:class:`BatchChooser`).

Identical requests (model, SAE, prompt, every sampling setting incl. the seed,
steering, the watch list, a fork) are computed once: a request arriving while its run is in flight
attaches to it; one arriving later gets the finished run from a bounded
replay cache (bytes and TTL), which its view paces like a live run.
A finished run's keys and values are kept too, for its most recent runs
within a byte budget (:mod:`axon_core.kv_store`, ``AXON_FORK_KV_MB``), so that
a fork of it computes only the forced token and what follows
(``stats()["runs"][i]["positions_computed"]`` counts what each run fed through the model).

Views never wait on the engine for anything but new steps, and the engine
never waits on a view: frames are built in the viewer's own thread at its own
cadence (see :mod:`axon_core.session`).

On a CPU machine the engine and the server share the cores. How many torch
threads the engine should use depends on the host, so it is measured
(:mod:`axon_core.threads`): :meth:`Engine.choose_threads` times real steps of
the default pair with each sensible count while frames are built beside them,
before the first visitor, and the engine re-checks the neighbouring counts now
and then under real load. Until then :func:`share_cpus` gives torch all but
one of the CPUs this process may use (a cgroup quota counts).

On ZeroGPU, GPU work may only happen inside a ``@spaces.GPU`` call (in a
worker process, per call), so there the app does not use the engine: each
view computes its run inside one decorated call (see app.py, ``gpu_steps``).

Worked example::

    engine = Engine(max_run_seconds=180)
    run = engine.submit(pair, "The capital of France is", GenerationSettings(seed=7))
    seen = 0
    while not run.finished or seen < len(run.steps):
        run.wait(seen, timeout=0.1)              # new steps, or 100 ms
        for step in run.steps[seen:]: ...        # draw
        seen = len(run.steps)
    engine.release(run)                           # this viewer is done
    engine.stats()["computed"]                   # 1: generations started
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import cachetools
import torch

from .batching import can_batch, step_batch
from .decision import full_encodes
from .fast_encode import encode_paths
from .fork import Fork
from .generation import Generation, GenerationSettings, LayerSae, TokenStep
from .kv_store import KVStore, budget_from_env
from .steering import steering_edit
from .threads import (ThreadChooser, engine_threads, measure_startup, real_steps, share_cpus,  # noqa: F401
                      thread_override, usable_cpus, view_like_load)  # the CPU helpers live in threads.py

log = logging.getLogger("axon.engine")


QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)


class LiveRun:
    """One run as views see it: its steps so far (append-only), its state and timing.

    ``offsets[i]`` is when step ``i`` was ready, in seconds from the start of
    the prompt pass (a replay uses them to pace itself); ``token_seconds`` is
    the engine's wall time between consecutive new tokens of this run.
    """

    def __init__(self, key: tuple, meta: dict[str, Any], settings: GenerationSettings,
                 steer: tuple = (), generation: Generation | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.key, self.meta, self.settings, self.steer = key, dict(meta), settings, tuple(steer)
        self.generation = generation
        self.steps: list[TokenStep] = []
        self.offsets: list[float] = []
        self.token_seconds: list[float] = []
        self.step_times: list[float] = []  # time.monotonic() of each new token (server-side proof)
        self.notices: list[str] = []
        self.state = QUEUED
        self.error: str | None = None
        self.complete = False  # finished normally: every token it was asked for (or EOS / context)
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished_at: float | None = None
        self.viewers = 0
        # Server-side counts for tests (no clocks): the engine round the run arrived
        # in and got its prompt pass in, and its step count when its last viewer left.
        self.arrived_round: int | None = None
        self.started_round: int | None = None
        self.steps_at_release: int | None = None
        # what its keys and values depend on besides the tokens (see axon_core.kv_store), and, once
        # it ends, how many positions went through the model and whether a fork reused its run's keys
        self.kv_owner: tuple = ()
        self._computed: int | None = None
        self._kv_reused = False
        self._cond = threading.Condition()

    # ---- reading (any thread) ----------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state not in ACTIVE

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until there are more than ``seen`` steps, the run ends, or ``timeout``.
        True when there is something new."""
        with self._cond:
            if len(self.steps) > seen or self.finished:
                return True
            self._cond.wait(timeout)
            return len(self.steps) > seen or self.finished

    @property
    def positions_computed(self) -> int:
        """Positions fed through the model for this run (a fork with its run's keys
        and values at hand: the forced token and what follows only)."""
        g = self.generation
        return g.positions_computed if g is not None else (self._computed or 0)

    @property
    def kv_reused(self) -> bool:
        g = self.generation
        return g.kv_reused if g is not None else self._kv_reused

    def ms_per_token(self) -> float | None:
        """Median engine time between this run's new tokens (ms)."""
        s = sorted(self.token_seconds)
        return 1e3 * s[len(s) // 2] if s else None

    def nbytes(self) -> int:
        """A rough size of what the replay cache keeps of this run."""
        feats = sum(len(s.features) for s in self.steps)
        decided = [s.decision for s in self.steps if s.decision is not None]  # candidates, effects (floats)
        extra = sum(300 * len(d.candidates) + 32 * len(d.candidates) * len(d.effects) for d in decided)
        watched = sum(len(s.watched) for s in self.steps)
        return (600 + 400 * len(self.steps) + 120 * feats + extra + 100 * sum(len(s.fit) for s in self.steps)
                + 24 * watched)

    # ---- writing (engine thread) ------------------------------------------

    def _append(self, steps: list[TokenStep], new_token: bool) -> None:
        now = time.monotonic()
        if new_token:
            if self.step_times:
                self.token_seconds.append(now - self.step_times[-1])
            elif self.offsets:  # the first new token: time since the prompt pass ended
                self.token_seconds.append(now - (self.started + self.offsets[-1]))
            self.step_times.append(now)
        with self._cond:
            for s in steps:
                self.steps.append(s)
                self.offsets.append(now - self.started)
                if s.notice:
                    self.notices.append(s.notice)
            self._cond.notify_all()

    def _end(self, state: str, error: str | None = None, notice: str | None = None) -> None:
        with self._cond:
            if notice:
                self.notices.append(notice)
            self.state, self.error = state, error
            self.finished_at = time.monotonic()
            if self.generation is not None:
                self._computed, self._kv_reused = self.generation.positions_computed, self.generation.kv_reused
            self.generation = None  # frees the stepper (its KV cache: a copy may be kept, see Engine._keep_kv)
            self._cond.notify_all()


class BatchChooser:
    """Batched or one-by-one, by measurement on this device.

    It keeps the running mean time of a one-run step, and of a batched step of
    each batch size, and batches B runs when ``batched(B) < B × single``.
    A batch size never tried is tried once; the losing mode is tried again
    every ``explore_every`` decisions, so the choice follows the machine.
    ``mode`` "always" / "never" fix the choice (tests, benchmarks).
    """

    def __init__(self, mode: str = "auto", explore_every: int = 40, alpha: float = 0.2):
        self.mode, self.explore_every, self.alpha = mode, explore_every, alpha
        self.single: float | None = None
        self.batched: dict[int, float] = {}
        self._decisions = 0

    def batch(self, size: int) -> bool:
        if size < 2 or self.mode == "never":
            return False
        if self.mode == "always":
            return True
        self._decisions += 1
        if self.single is None:
            return False
        if size not in self.batched:
            return True
        better = self.batched[size] < size * self.single
        if self._decisions % self.explore_every == 0:
            return not better
        return better

    def record(self, size: int, seconds: float) -> None:
        if size == 1:
            self.single = seconds if self.single is None else (1 - self.alpha) * self.single + self.alpha * seconds
        else:
            old = self.batched.get(size)
            self.batched[size] = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds

    def table(self) -> dict:
        return {"single_ms": None if self.single is None else round(1e3 * self.single, 2),
                "batched_ms": {str(b): round(1e3 * t, 2) for b, t in sorted(self.batched.items())}}


@dataclass
class EngineCounters:
    computed: int = 0  # generations started
    attached: int = 0  # requests that joined a run in flight
    replayed: int = 0  # requests served from the replay cache
    batched_steps: int = 0  # batched forwards (each for several runs)
    single_steps: int = 0  # one-run forwards
    cancelled: int = 0
    rounds: int = 0  # engine turns (each: every live run's prompt pass or one token)


def request_key(pair, prompt: str, settings: GenerationSettings, steer: tuple, extra: tuple = (),
                watch: tuple = (), fork=None) -> tuple:
    """What makes two requests the same run (``extra``: the other SAEs it reads; ``watch``:
    the features it follows, canonical keys (:func:`~axon_core.watch.resolve_watch`), in order:
    the order of a step's ``watched``; ``fork``: a :class:`~axon_core.fork.Fork` of that run, or None)."""
    saes = tuple((s.release, s.sae_id) for s in map(LayerSae.of, extra))
    key = (pair.choice.release, pair.choice.sae_id, prompt, settings, tuple(steer), saes, tuple(watch))
    return key if fork is None else key + (("fork", *Fork.of(fork).as_tuple()),)


class Engine:
    """Steps every live run; one per process, shared by all sessions (thread-safe)."""

    def __init__(self, max_run_seconds: float = 180.0, batch: str = "auto",
                 replay_bytes: int = 64 << 20, replay_ttl: float = 3600.0, recent: int = 64,
                 step_delay: float = 0.0, kv_bytes: int | None = None):
        self.max_run_seconds = float(max_run_seconds)
        # a test-only pace (AXON_STEP_DELAY): seconds slept after each new token, so that a
        # tiny model's run lasts long enough for a browser to press Stop during it; 0 in production
        self.step_delay = max(0.0, float(step_delay))
        self.chooser = BatchChooser(batch)
        # torch threads: measured by choose_threads, re-checked as runs step
        self.threads = ThreadChooser(usable_cpus(), default=torch.get_num_threads())
        self._applied = 0  # the count the engine thread last set for itself
        self.counters = EngineCounters()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._live: list[LiveRun] = []
        self._inflight: dict[tuple, LiveRun] = {}
        self._replay = cachetools.TTLCache(maxsize=replay_bytes, ttl=replay_ttl, getsizeof=LiveRun.nbytes)
        self._recent: deque[LiveRun] = deque(maxlen=recent)
        # finished runs' keys and values, so that a fork computes only what follows the fork point
        # (bounded by bytes, AXON_FORK_KV_MB; see axon_core.kv_store)
        self._kv = KVStore(budget_from_env() if kv_bytes is None else kv_bytes)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="axon-engine", daemon=True)
        self._thread.start()

    # ---- sessions ------------------------------------------------------------

    def submit(self, pair, prompt: str, settings: GenerationSettings, steer: tuple = (),
               meta: dict[str, Any] | None = None, extra: tuple = (), watch: tuple = (), fork=None,
               base=()) -> LiveRun:
        """The run for this request: one in flight, a finished one from the replay
        cache, or a new one. The caller becomes one of its viewers and must call
        :meth:`release` when done. ``extra``: more SAEs of the same model
        (LoadedPairs) read in the same forward (see :class:`Generation`); ``watch``: the
        features whose exact activations every step reports (canonical keys). ``fork``
        (a :class:`~axon_core.fork.Fork`) with ``base``, the run's steps: that run
        forked there (computed once like any request: the fork is in the key).
        Raises :class:`~axon_core.generation.PromptError` (or ``ValueError`` for a
        steering spec the SAE cannot take, or extra SAEs it cannot read) at once."""
        extra, watch = tuple(extra), tuple(tuple(k) for k in watch)
        key = request_key(pair, prompt, settings, steer, extra, watch, fork)
        with self._lock:
            run = self._inflight.get(key)
            if run is not None and not run.finished:
                run.viewers += 1
                self.counters.attached += 1
                return run
            run = self._replay.get(key)
            if run is not None:
                run.viewers += 1
                self.counters.replayed += 1
                return run
        edit = steering_edit(pair.sae, steer) if steer else None
        # PromptError (or ForkError) here, in the caller
        owner = (pair.choice.release, pair.choice.sae_id, tuple(steer))
        kv = (lambda ids: self._kv.find(owner, ids)) if fork is not None else None
        generation = Generation(pair, prompt, settings, edit, extra=extra, watch=watch, fork=fork, base=base,
                                kv=kv)
        run = LiveRun(key, meta or {}, settings, steer, generation)
        run.kv_owner = owner
        with self._lock:
            other = self._inflight.get(key)  # the same request may have raced us here
            if other is not None and not other.finished:
                other.viewers += 1
                self.counters.attached += 1
                return other
            run.viewers = 1
            run.arrived_round = self.counters.rounds
            self._inflight[key] = run
            self._live.append(run)
            self._recent.append(run)
            self.counters.computed += 1
            self._wake.notify_all()
        return run

    def release(self, run: LiveRun) -> None:
        """One viewer is done with ``run``; a run nobody watches stops at its next turn."""
        with self._lock:
            run.viewers = max(0, run.viewers - 1)
            if run.viewers == 0 and not run.finished:
                run.steps_at_release = len(run.steps)
            self._wake.notify_all()

    @property
    def live_count(self) -> int:
        """Runs being computed now (views draw less often when there are many)."""
        return sum(1 for r in self._live if not r.finished)

    def choose_threads(self, pair, override: str | None = None, rounds: int = 3, steps: int = 4) -> int:
        """Choose the engine's torch thread count by timing real steps of ``pair``
        with each sensible count (:func:`~axon_core.threads.measure_startup`),
        while a view-like frame is built beside them every 0.1 s. ``override``
        (``AXON_TORCH_THREADS``) fixes the count; off the CPU the rule of
        :func:`engine_threads` holds. Call it before the first visitor; returns the count."""
        cpus, fixed = usable_cpus(), thread_override(override)
        device = str(getattr(pair, "device", "cpu"))
        if not fixed and device != "cpu":
            fixed = engine_threads(device, cpus)
        chooser = ThreadChooser(cpus, fixed=fixed or None, default=self.threads.current)
        if fixed and not thread_override(override):
            chooser.source = f"rule for {device}"
        try:
            background = view_like_load(pair) if chooser.fixed is None else None
            with torch.inference_mode():
                measure_startup(chooser, real_steps(pair), rounds, steps, background=background)
        except Exception:  # noqa: BLE001 - a failed measurement must not stop the app: keep the count it had
            log.exception("measuring torch threads failed; keeping %d", self.threads.current)
            torch.set_num_threads(self.threads.current)
            return self.threads.current
        self.threads = chooser
        log.info("torch threads: %s", chooser.table())
        return chooser.current

    def _apply_threads(self) -> int:
        """Set the chooser's count in the engine thread (OpenMP's count is per thread)."""
        want = self.threads.threads()
        if want != self._applied:
            torch.set_num_threads(want)
            self._applied = want
        return want

    def stats(self) -> dict[str, Any]:
        """Counters, the batching table, the torch thread count and how it was
        chosen, the encode path of each SAE in use, and recent runs' step counts
        and times (for tests and the crowd benchmark; no prompts or other content)."""
        with self._lock:
            recent = list(self._recent)
            live = sum(1 for r in self._live if not r.finished)
            replay = len(self._replay)
        return {
            **vars(self.counters), "live": live, "replay_cached": replay, "batching": self.chooser.table(),
            "torch_threads": self._applied or self.threads.current, "threads": self.threads.table(),
            "encode": encode_paths() + full_encodes(), "kv_kept": self._kv.stats(),
            "runs": [{"id": r.id, "state": r.state, "steps": len(r.steps), "viewers": r.viewers,
                      "arrived_round": r.arrived_round, "started_round": r.started_round,
                      "steps_at_release": r.steps_at_release,
                      "positions_computed": r.positions_computed, "kv_reused": r.kv_reused,
                      "step_times": [round(t, 4) for t in r.step_times]} for r in recent],
        }

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=5)

    # ---- the loop --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not any(not r.finished for r in self._live):
                    self._wake.wait(1.0)
                if self._stop:
                    return
                runs = [r for r in self._live if not r.finished]
            try:
                self._turn(runs)
            except Exception:  # noqa: BLE001 - a bug must not stop every session's runs
                log.exception("engine turn failed")
                time.sleep(0.05)

    def _turn(self, runs: list[LiveRun]) -> None:
        """One round: every run gets its prompt pass or one new token."""
        self.counters.rounds += 1
        ready: list[LiveRun] = []
        for run in runs:
            if self._stopped(run):
                continue
            if run.state == QUEUED:
                self._start(run)
            else:
                ready.append(run)
        groups: dict[int, list[LiveRun]] = {}
        for run in ready:
            stepper = run.generation.stepper
            groups.setdefault(id(getattr(stepper, "w", stepper)), []).append(run)
        for group in groups.values():
            steppers = [r.generation.stepper for r in group]
            if can_batch(steppers) and self.chooser.batch(len(group)):
                self._step_batched(group)
            else:
                for run in group:
                    self._step_one(run)
        with self._lock:
            self._live = [r for r in self._live if not r.finished]

    def _stopped(self, run: LiveRun) -> bool:
        """End a run nobody watches, or one past the time limit; True if it ended."""
        if run.viewers <= 0:
            self.counters.cancelled += 1
            self._finish(run, CANCELLED)
            return True
        if run.started is not None and time.monotonic() - run.started > self.max_run_seconds:
            self._finish(run, DONE, notice=f"stopped: runs are limited to {self.max_run_seconds:.0f} s",
                         complete=False)
            return True
        return False

    def _start(self, run: LiveRun) -> None:
        self._apply_threads()
        run.started = time.monotonic()
        run.started_round = self.counters.rounds
        run.state = RUNNING
        try:
            steps = run.generation.start()
        except Exception as err:  # noqa: BLE001
            self._fail(run, err)
            return
        run._append(steps, new_token=False)
        if run.generation.done:
            self._finish(run, DONE)

    def _step_one(self, run: LiveRun) -> None:
        threads = self._apply_threads()
        t = time.perf_counter()
        try:
            step = run.generation.step()
        except Exception as err:  # noqa: BLE001
            self._fail(run, err)
            return
        seconds = time.perf_counter() - t
        self.chooser.record(1, seconds)
        self.threads.record(threads, seconds)
        self.counters.single_steps += 1
        self._after_step(run, step)

    def _step_batched(self, group: list[LiveRun]) -> None:
        self._apply_threads()
        t = time.perf_counter()
        try:
            gens = [r.generation for r in group]
            with torch.inference_mode():
                outs = step_batch([g.stepper for g in gens], [g.next_input for g in gens])
                feats = self._batched_features(gens, outs)
                steps = [g.advance(o, f, fit=fit) for g, o, (f, fit) in zip(gens, outs, feats)]
        except Exception:  # noqa: BLE001 - fall back to one by one (a state this code did not expect)
            log.exception("batched step failed; stepping one by one")
            for run in group:
                if not run.finished:
                    self._fail(run, RuntimeError("batched step failed"))
            return
        self.chooser.record(len(group), time.perf_counter() - t)
        self.counters.batched_steps += 1
        for run, step in zip(group, steps):
            self._after_step(run, step)

    @staticmethod
    def _batched_features(gens: list[Generation], outs) -> list[tuple[list[tuple[int, float]], Any]]:
        """SAE features (and Fit, or None) of each run's new activation, one encode
        per (SAE, settings)."""
        result: list[tuple | None] = [None] * len(gens)
        by_sae: dict[tuple, list[int]] = {}
        for i, g in enumerate(gens):
            key = (id(g.pair.sae), g.settings.feature_k, g.settings.activation_threshold, g.decisions)
            by_sae.setdefault(key, []).append(i)
        for rows in by_sae.values():
            acts = torch.cat([outs[i].acts for i in rows])
            feats, fits = gens[rows[0]].encode(acts)
            for j, i in enumerate(rows):
                result[i] = (feats[j], None if fits is None else fits[j])
        return result

    def _after_step(self, run: LiveRun, step: TokenStep) -> None:
        run._append([step], new_token=True)
        if run.generation is not None and run.generation.done:
            self._finish(run, DONE)
        if self.step_delay:  # after the timings were recorded: the thread and batch choices see real steps
            time.sleep(self.step_delay)

    def _keep_kv(self, run: LiveRun) -> None:
        """Keep a copy of a finished run's keys and values (the store evicts the least
        recently used beyond its budget), for a fork of it to start at the fork point."""
        g = run.generation
        if g is None or self._kv.max_bytes <= 0 or getattr(g.stepper, "extra_edits", None):
            return  # (extra edits change the keys in ways the owner does not name: not kept)
        try:
            self._kv.put(g.keep_kv(run.kv_owner))
        except Exception:  # noqa: BLE001 - keeping is an optimisation: a fork then recomputes
            log.exception("keeping run %s's keys and values failed", run.id)

    def _fail(self, run: LiveRun, err: Exception) -> None:
        log.error("run %s failed: %s: %s", run.id, type(err).__name__, err)
        self._finish(run, FAILED, error=f"Generation failed ({type(err).__name__}); the app is still running.")

    def _finish(self, run: LiveRun, state: str, error: str | None = None, notice: str | None = None,
                complete: bool = True) -> None:
        run.complete = state == DONE and complete
        if run.complete:
            self._keep_kv(run)
        run._end(state, error, notice)
        with self._lock:
            if self._inflight.get(run.key) is run:
                del self._inflight[run.key]
            if run.complete:
                try:
                    self._replay[run.key] = run
                except ValueError:  # larger than the whole cache
                    pass

