"""Evidence fetched in the background and kept beside the labels: one feature on demand, or an SAE in bulk.

:meth:`EvidenceService.get` answers from memory or the disk store at once
(never the network) with what is local, an :class:`~axon_core.labels.evidence.Evidence`
whose ``missing`` parts are then fetched by one background thread from the
feature endpoint (newest wish first, one request at a time, the label
service's rate cap; a 429 pauses it for ``Retry-After``; a failure backs that
feature off, doubling). ``arrivals`` grows when something arrives, so a
view knows to look again. :meth:`EvidenceService.prefetch` downloads an SAE's
``features/`` (logit lens, density, typical maximum) and ``activations/``
(top examples) bulk folders, resumable per batch, with progress.

Worked example::

    ev = svc.evidence.get("gpt2-small/8-res-jb", 4821)   # Evidence(missing=('lens', 'examples')): fetch scheduled
    svc.evidence.pending("gpt2-small/8-res-jb", 4821)    # True while it is on its way
    ...                                                   # a moment later
    svc.evidence.get("gpt2-small/8-res-jb", 4821).examples[0].tokens   # (' the', ' capital', ' of', ' France', ...)
    svc.evidence.prefetch("gpt2-small/8-res-jb", lambda folder, done, total: None)
    # {'features': 24576, 'activations': 24576}: rows stored by this call
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

import cachetools

from .backoff import Backoff
from .client import NeuronpediaClient, RateLimited
from .evidence import MAX_EXAMPLES, Evidence, Example, examples_of, from_feature, lens_of, record_index
from .prefetch import prefetch_all
from .store import LabelStore

log = logging.getLogger("axon_core.labels")

Key = tuple[str, int]
FOLDERS = ("features", "activations")
PART_OF = {"features": "lens", "activations": "examples"}
MAX_WISHES = 64  # features waiting for their evidence (the newest kept)


def _keep_activation(row: dict):
    """(index, example row) of an ``activations/`` record, cut before the batch is held (None: no index)."""
    i = record_index(row)
    ex = examples_of([row]) if i is not None else ()
    return (i, ex[0]) if ex else None


def _keep_feature(row: dict):
    i = record_index(row)
    return None if i is None else (i, lens_of(row))


class EvidenceService:
    """Evidence for (np_id, index): local at once, the rest in the background (see the module doc)."""

    def __init__(self, client: NeuronpediaClient, store: LabelStore, *, enabled: bool = True,
                 reserve: Callable[[], float] = lambda: 0.0, clock: Callable[[], float] = time.monotonic,
                 memory_size: int = 4096, backoff_base: float = 10.0, backoff_max: float = 600.0):
        self.client, self.store, self.enabled = client, store, enabled
        self._reserve = reserve
        self._mem: cachetools.LRUCache = cachetools.LRUCache(maxsize=memory_size)  # Key -> part -> JSON
        self._wishes: collections.OrderedDict[Key, None] = collections.OrderedDict()
        self._running: Key | None = None
        self._backoff = Backoff(backoff_base, backoff_max, clock)  # per-feature failures, and the 429 pause
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._mem_batches: set[tuple[str, str, int]] = set()
        self.requests = 0  # feature-endpoint requests sent
        self.arrivals = 0  # evidence stored (a view redraws when it changes)
        self.error: str | None = None

    # ---- local answers -----------------------------------------------------

    def local(self, np_id: str, index: int) -> Evidence:
        """What is stored for this feature (never fetches)."""
        key = (np_id, int(index))
        with self._lock:
            parts = self._mem.get(key)
        if parts is None or len(parts) < 2:
            stored = self.store.read_evidence(*key)
            if stored:
                parts = {**(parts or {}), **stored}
                with self._lock:
                    self._mem[key] = parts
        return Evidence.from_parts(parts or {})

    def get(self, np_id: str | None, index: int) -> Evidence:
        """What is local now; the missing parts are fetched in the background."""
        if not np_id or "/" not in np_id:
            return Evidence()
        ev = self.local(np_id, index)
        if ev.missing:
            self._wish((np_id, int(index)))
        return ev

    def pending(self, np_id: str | None, index: int) -> bool:
        """Whether this feature's evidence is on its way (wished for or being fetched)."""
        key = (np_id, int(index))
        with self._lock:
            return key in self._wishes or self._running == key

    # ---- the background fetch ----------------------------------------------

    def _wish(self, key: Key) -> None:
        with self._lock:
            if not self.enabled or self._closed or self._running == key:
                return
            if self._backoff.paused() or self._backoff.waiting(key):
                return
            self._wishes[key] = None
            self._wishes.move_to_end(key)
            while len(self._wishes) > MAX_WISHES:
                self._wishes.popitem(last=False)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="axon-evidence", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._wishes and not self._closed:
                    if not self._lock.wait(30.0):
                        self._thread = None  # idle: the next wish starts another
                        return
                if self._closed:
                    return
                key, _ = self._wishes.popitem(last=True)  # the newest: what the person looks at now
                self._running = key
            try:
                self._fetch(key)
            except Exception:  # never let the thread die
                log.exception("evidence fetch failed on %s", key)
            finally:
                with self._lock:
                    self._running = None

    def _fetch(self, key: Key) -> None:
        wait = self._reserve()
        if wait:
            time.sleep(wait)
        with self._lock:
            if self._closed or self._backoff.paused():
                return
            self.requests += 1
        try:
            record = self.client.fetch_record(*key)
        except RateLimited as e:
            with self._lock:
                self._backoff.pause(e.retry_after)
                self.error = str(e)
            return
        except Exception as e:  # timeouts, 5xx, garbage: this feature backs off
            with self._lock:
                self._backoff.failed(key)
                self.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            return
        try:
            ev = from_feature(record) if record is not None else Evidence(examples=(), pos=(), missing=())
        except (TypeError, ValueError, KeyError) as e:
            ev = Evidence(examples=(), pos=(), missing=())
            log.debug("evidence of %s did not parse: %r", key, e)
        self._put(key, ev.parts())
        with self._lock:
            self._backoff.succeeded(key)
            self.error = None

    def _put(self, key: Key, parts: dict[str, str]) -> None:
        now = time.time()
        with self._lock:
            self._mem[key] = {**(self._mem.get(key) or {}), **parts}
            self.arrivals += 1
        self.store.write_evidence([(*key, part, data, now) for part, data in parts.items()])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wishes.clear()
            self._lock.notify_all()

    # ---- bulk ----------------------------------------------------------------

    def prefetch(self, np_id: str, progress: Callable[[str, int, "int | None"], None] | None = None, *,
                 retries: int = 0, timeout: float = 120.0, workers: int = 1) -> dict[str, int]:
        """Download ``np_id``'s ``features/`` and ``activations/`` bulk folders into the
        store, each batch once (resumable); ``progress(folder, done, total)`` per batch.
        Returns the rows stored by this call, per folder (a folder the bucket lacks: 0)."""
        stored = {}
        for folder in FOLDERS:
            done = self._done(np_id, folder)
            stored[folder] = prefetch_all(
                self.client, np_id, done, lambda b, rows, f=folder: self._store_batch(np_id, f, b, rows),
                (lambda d, t, f=folder: progress(f, d, t)) if progress else None,
                retries=retries, timeout=timeout, workers=workers, folder=folder,
                keep=_keep_feature if folder == "features" else _keep_activation)
        return stored

    def _done(self, np_id: str, folder: str) -> set[int]:
        if self.store.path is None:
            return {b for n, f, b in self._mem_batches if (n, f) == (np_id, folder)}
        return self.store.done_evidence_batches(np_id, folder)

    def _store_batch(self, np_id: str, folder: str, batch: int, rows: list) -> int:
        if self._closed:
            raise RuntimeError("the label service was closed")
        now = time.time()
        if folder == "features":
            parts = {i: Evidence(**lens, missing=("examples",)).parts()["lens"] for i, lens in rows}
        else:
            grouped: dict[int, list[Example]] = {}
            for i, ex in rows:
                grouped.setdefault(i, []).append(ex)
            parts = {i: Evidence(examples=tuple(sorted(exs, key=lambda e: -e.max_value)[:MAX_EXAMPLES]),
                                 missing=("lens",)).parts()["examples"] for i, exs in grouped.items()}
        part = PART_OF[folder]
        with self._lock:
            for i, data in parts.items():
                cached = self._mem.get((np_id, i))
                if cached is not None or self.store.path is None:
                    self._mem[(np_id, i)] = {**(cached or {}), part: data}
            self.arrivals += 1
            if self.store.path is None:
                self._mem_batches.add((np_id, folder, batch))
                return len(parts)
        return self.store.store_evidence_batch(np_id, folder, batch, [(np_id, i, part, d, now)
                                                                      for i, d in parts.items()])

