"""The label service: one per process, serving every browser session, never waiting on the network.

:meth:`LabelService.label` answers from memory or the disk store
(:mod:`~axon_core.labels.store`), or with ``"Feature {index}"`` while a
background worker fetches the real label (:mod:`~axon_core.labels.client`),
so the next call (next frame) gets it. Failures (timeouts, 5xx, garbage) are
retried with per-feature exponential back-off (``backoff_base`` doubling up
to ``backoff_max`` seconds); a 429 pauses all fetches for its ``Retry-After``;
a 404 or a feature without explanations is remembered as "no label" for
``negative_ttl``. A token bucket caps requests at ``AXON_NEURONPEDIA_RATE`` a
second. ``clock`` (monotonic seconds) drives back-off and pauses, so tests
can move time forward.

Worked example::

    svc = LabelService(clock=lambda: now[0])       # env-var defaults otherwise
    svc.label("gpt2-small/8-res-jb", 4821)         # 'Feature 4821' (fetch scheduled)
    svc.pending("gpt2-small/8-res-jb", [4821])     # True while it is on its way
    # Neuronpedia times out: back-off 5 s, then 10 s, 20 s, ... for that feature alone
    svc.status()["backing_off"]                    # 1
    now[0] += 5; svc.label("gpt2-small/8-res-jb", 4821)   # asked again
    svc.known("gpt2-small/8-res-jb", 4821)         # 'European capitals' once it arrived
"""

from __future__ import annotations

import collections
import functools
import re
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import cachetools

from ..paths import cache_dir
from .backoff import Backoff
from .client import NeuronpediaClient, RateLimited
from .evidence_fetch import EvidenceService
from .prefetch import Progress, prefetch_all
from .search import SemanticSearch, fts_queries, query_words
from .store import LabelStore
from .text import fallback_label

log = logging.getLogger("axon_core.labels")

Key = tuple[str, int]
_MISSING = object()
MAX_URGENT = 256  # visible wishes kept at once (the newest frame's first)
BULK_WORKERS = 4  # bulk batches downloaded at once
BULK_RETRY = 300.0  # seconds before a failed bulk download is tried again


class BulkState:
    """The bulk downloads of one service: which SAEs are queued, running, done
    or failed, and one daemon thread working through the queue."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.progress: dict[str, tuple[int, "int | None"]] = {}
        self._failed_at: dict[str, float] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, np_ids: list[str], now: float, complete: Callable[[str], bool]) -> bool:
        """Queue those not done, queued or freshly failed; whether any was."""
        added = False
        for np_id in np_ids:
            with self._lock:
                st = self.state.get(np_id)
                if st in ("queued", "running", "done"):
                    continue
                if st == "failed" and now - self._failed_at.get(np_id, -1e18) < BULK_RETRY:
                    continue
            if complete(np_id):  # a disk read, outside the lock
                with self._lock:
                    self.state[np_id] = "done"
                continue
            with self._lock:
                if self.state.get(np_id) not in ("queued", "running"):
                    self.state[np_id] = "queued"
                    self._queue.append(np_id)
                    added = True
        return added

    def start(self, work: Callable[[str], None]) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, args=(work,), name="axon-labels-bulk", daemon=True)
            self._thread.start()

    def _run(self, work: Callable[[str], None]) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                np_id = self._queue.popleft()
                self.state[np_id] = "running"
            work(np_id)

    def finish(self, np_id: str, state: str, now: float) -> None:
        with self._lock:
            self.state[np_id] = state
            if state == "failed":
                self._failed_at[np_id] = now


class _TokenBucket:
    """Client-side rate cap: ``rate`` tokens per second, ``burst`` at most."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.capacity = rate, max(1.0, float(burst))
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token (possibly on credit); return seconds to wait before using it."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0
            return max(0.0, -self.tokens / self.rate)


class LabelService:
    """Neuronpedia labels for (np_id, feature index); thread-safe, never blocks callers.

    ``clock`` (monotonic seconds) drives back-off and 429 pauses, so tests can
    move time forward; the rate cap always uses real time.
    """

    def __init__(
        self,
        base_url: str | None = None,
        datasets_url: str | None = None,
        cache_path: str | os.PathLike | None = None,
        api_key: str | None = None,
        max_workers: int = 4,
        timeout: float = 3.0,
        rate_per_s: float | None = None,
        enabled: bool = True,
        *,
        burst: int = 5,
        memory_size: int = 200_000,
        max_pending: int = 2_000,
        negative_ttl: float = 7 * 86400.0,
        backoff_base: float = 5.0,
        backoff_max: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        env = os.environ.get
        self.client = NeuronpediaClient(base_url, datasets_url, api_key, timeout)
        self.enabled, self.max_workers = enabled, max(1, max_workers)
        self.max_pending, self.negative_ttl = max_pending, negative_ttl
        self._clock = clock
        if rate_per_s is None:
            rate_per_s = float(env("AXON_NEURONPEDIA_RATE") or 5.0)
        self._bucket = _TokenBucket(rate_per_s, burst)

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._mem: cachetools.LRUCache = cachetools.LRUCache(maxsize=memory_size)  # Key -> (label|None, unix time)
        self._backoff = Backoff(backoff_base, backoff_max, clock)  # per-feature failures, and the 429 pause
        self._inflight: set[Key] = set()
        self._queue: collections.deque[Key] = collections.deque()  # background wishes, newest served first
        self._urgent: collections.deque[Key] = collections.deque()  # what is on screen, in the order given
        self._running: set[Key] = set()  # being fetched now
        self._bulk = BulkState()
        self._workers: list[threading.Thread] = []
        self._closed = False
        self._stats = {"fetched": 0, "failures": 0, "reachable": None, "last_error": None}
        self._mem_batches: set[tuple[str, int]] = set()  # prefetch bookkeeping without a DB
        self.arrivals = 0  # how many times labels were stored: a view redraws when it changes
        if cache_path is None:
            cache_path = env("AXON_LABEL_CACHE") or cache_dir() / "labels.sqlite"
        self.store = LabelStore(Path(cache_path))
        self.semantic = SemanticSearch(self.client)  # Neuronpedia's search by meaning, in the background
        # examples, logit lens, density of a picked feature, beside the labels (same store, same rate cap)
        self.evidence = EvidenceService(self.client, self.store, enabled=enabled, reserve=self._bucket.reserve,
                                        clock=clock)
        if enabled:  # started here so that label() never pays for a thread start
            for n in range(self.max_workers):
                t = threading.Thread(target=self._worker, name=f"axon-labels-{n}", daemon=True)
                t.start()
                self._workers.append(t)

    # the client's and the store's settings, as they were when one class held them
    base_url = property(lambda self: self.client.base_url)
    datasets_url = property(lambda self: self.client.datasets_url)
    api_key = property(lambda self: self.client.api_key)
    timeout = property(lambda self: self.client.timeout)
    cache_path = property(lambda self: self.store.path, doc="The SQLite file, or None: memory only.")

    # ---- public API --------------------------------------------------------

    def label(self, np_id: str | None, index: int) -> str:
        """The label, or ``"Feature {index}"`` while unknown (a fetch is then scheduled)."""
        index = int(index)
        if np_id is None or "/" not in np_id:
            return fallback_label(index)
        key = (np_id, index)
        hit = self._lookup(key)
        if hit is _MISSING:
            with self._lock:
                self._schedule(key)
            return fallback_label(index)
        return hit or fallback_label(index)

    def labels(self, np_id: str | None, indices: Iterable[int]) -> dict[int, str]:
        return {int(i): self.label(np_id, i) for i in indices}

    def known(self, np_id: str | None, index: int) -> str | None:
        """The cached label, or None (unknown, or Neuronpedia has none). Never fetches."""
        if np_id is None:
            return None
        hit = self._lookup((np_id, int(index)))
        return None if hit is _MISSING else hit

    def pending(self, np_id: str | None, indices: Iterable[int]) -> bool:
        """Whether any of these labels is still on its way (unknown, and not
        backing off after a failure). Never fetches."""
        if np_id is None or "/" not in np_id or not self.enabled:
            return False
        for i in indices:
            key = (np_id, int(i))
            if self._lookup(key) is _MISSING:
                with self._lock:
                    if not self._backoff.waiting(key):
                        return True
        return False

    def request(self, np_id: str | None, indices: Iterable[int]) -> None:
        """Schedule background fetches for those of ``indices`` not known yet."""
        for i in indices:
            self.label(np_id, i)

    def prioritize(self, np_id: str | None, indices: Iterable[int]) -> None:
        """Fetch these (unknown) labels before every other wish, in the order given
        (strongest first): the scene's names and the table's rows. Never waits."""
        if np_id is None or "/" not in np_id or not self.enabled:
            return
        keys = [(np_id, int(i)) for i in indices]
        keys = [k for k in dict.fromkeys(keys) if self._lookup(k) is _MISSING]
        if not keys:
            return
        with self._lock:
            if self._closed or self._backoff.paused():
                return
            keys = [k for k in keys if k not in self._running and not self._backoff.waiting(k)]
            wanted = set(keys)
            if not wanted:
                return
            rest = [k for k in self._urgent if k not in wanted]
            self._urgent.clear()
            self._urgent.extend(keys + rest[: max(0, MAX_URGENT - len(keys))])
            self._inflight.update(keys)
            self._work.notify(len(keys))

    def bulk(self, *np_ids: str | None) -> None:
        """Download these SAEs' labels in bulk, in the background, one SAE after
        another (resumable: :meth:`prefetch`); an SAE already complete, queued, or
        failed less than ``BULK_RETRY`` s ago is skipped. Never waits."""
        if not self.enabled or self._closed:
            return
        if self._bulk.add([n for n in np_ids if n and "/" in n], self._clock(), self.store.complete):
            self._bulk.start(self._bulk_worker)

    def bulk_state(self, np_id: str) -> str | None:
        """"queued", "running", "done", "failed" or None (never asked)."""
        return self._bulk.state.get(np_id)

    def search(self, np_ids: Iterable[str | None], text, limit: int = 20) -> list[tuple[str, int, str]]:
        """Cached labels of these SAEs matching ``text`` (np_id, index, label):
        every word exactly first, then as prefixes, then any word, each ranked by bm25.
        Any text is safe (FTS5 syntax, quotes, 10 KB); never fetches."""
        np_ids = [n for n in dict.fromkeys(np_ids) if n and "/" in n]
        queries = fts_queries(text)
        if not np_ids or queries is None:
            return []
        out: dict[tuple[str, int], str] = {}
        for match in queries:
            hits = self.store.search(np_ids, match, limit)
            if hits is None:  # no disk index: scan what memory holds
                return self._scan(np_ids, query_words(text), limit)
            for np_id, index, label in hits:
                out.setdefault((np_id, index), label)
            if len(out) >= limit:
                break
        return [(n, i, lab) for (n, i), lab in list(out.items())[:limit]]

    def _scan(self, np_ids: list[str], words: list[str], limit: int) -> list[tuple[str, int, str]]:
        with self._lock:
            items = [(k, v[0]) for k, v in self._mem.items() if k[0] in np_ids and v[0]]
        scored = []
        for (np_id, index), label in items:
            have = re.findall(r"\w+", label.lower())
            prefixed = sum(any(h.startswith(w) for h in have) for w in words)
            if prefixed:
                exact = sum(w in have for w in words)
                scored.append((-(prefixed == len(words)), -exact, -prefixed, len(label), np_id, index, label))
        return [row[-3:] for row in sorted(scored)[:limit]]

    def cached_count(self, np_id: str) -> int:
        """How many labels of ``np_id`` are cached (on disk, else in memory)."""
        if self.cache_path is not None:
            return self.store.count(np_id)
        with self._lock:
            return sum(1 for k, v in self._mem.items() if k[0] == np_id and v[0])

    def put(self, np_id: str, labels: Mapping[int, str | None]) -> None:
        """Store labels (None = "has no label") in memory and on disk, one transaction."""
        now = time.time()
        self._remember([(np_id, int(i), lab or None, now) for i, lab in labels.items()])

    def fetch(self, np_id: str, index: int) -> str | None:
        """Blocking fetch of one label from the API (for scripts); stores and returns it.
        Raises :class:`LabelFetchError` (or a network error) on failure."""
        label = self.client.fetch_feature(np_id, int(index))
        self._remember([(np_id, int(index), label, time.time())])
        return label

    def status(self) -> dict:
        """Counts and the last error, plus ``message``: a short line for a status bar
        (None when all is well)."""
        with self._lock:
            paused_for = self._backoff.paused_for()
            st = dict(self._stats)
            st.update(
                enabled=self.enabled,
                cached=len(self._mem),
                in_flight=len(self._inflight),
                queued=len(self._queue),
                backing_off=self._backoff.backing_off(),
                paused_for=paused_for,
                persistent=self.cache_path is not None,
                bulk=dict(self._bulk.state),
                bulk_progress=dict(self._bulk.progress),
                cache_path=str(self.cache_path) if self.cache_path else None,
            )
        parts = []
        if paused_for:
            parts.append(f"Neuronpedia rate limit: paused {paused_for:.0f} s")
        elif st["reachable"] is False:
            parts.append(f"Neuronpedia unreachable ({st['last_error']})")
        if self.store.message:
            parts.append(self.store.message)
        st["message"] = "; ".join(parts) or None
        return st

    def prefetch(
        self, np_id: str, progress: Progress | None = None, *, retries: int = 0, timeout: float = 60.0,
        workers: int = 1,
    ) -> int:
        """Download all published explanation batches of ``np_id`` into the cache.

        Each batch is stored in one transaction together with a "done" mark, so an
        interrupted prefetch resumes at the first missing batch. ``progress(done,
        total)`` is called after each batch (``total`` is None if the bucket can't be
        listed); ``workers`` batches are downloaded at once. Returns the number of
        labels stored by this call; raises :class:`PrefetchError` if a batch fails
        ``retries + 1`` times. Once every batch is in, the SAE is marked complete
        (a bulk download at start-up then skips it).
        """
        n = prefetch_all(self.client, np_id, self._done_batches(np_id), functools.partial(self._store_batch, np_id),
                         progress, retries=retries, timeout=timeout, workers=workers)
        self.store.mark_complete(np_id)
        return n

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._urgent.clear()
            self._work.notify_all()
        self._stop.set()
        self.semantic.close()
        self.evidence.close()
        self.store.close()
        self.client.close()

    def __enter__(self) -> LabelService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- lookup and scheduling ---------------------------------------------

    def _lookup(self, key: Key):
        """label, None (known: no label) or _MISSING."""
        with self._lock:
            hit = self._mem.get(key)
            busy = key in self._inflight or self._backoff.waiting(key)
        if hit is None and not busy:
            hit = self.store.read(key)
            if hit is not None:
                with self._lock:
                    self._mem[key] = hit
        if hit is None:
            return _MISSING
        label, fetched_at = hit
        if label is None and time.time() - fetched_at > self.negative_ttl:
            return _MISSING
        return label

    def _schedule(self, key: Key) -> None:  # called with self._lock held
        if not self.enabled or self._closed or key in self._inflight:
            return
        if self._backoff.paused() or self._backoff.waiting(key):
            return
        self._inflight.add(key)
        self._queue.append(key)
        if len(self._queue) > self.max_pending:  # drop the oldest wish; it is asked again later
            self._inflight.discard(self._queue.popleft())
        self._work.notify()

    def _worker(self) -> None:
        while True:
            with self._work:
                key = None
                while key is None:
                    while not self._queue and not self._urgent and not self._closed:
                        self._work.wait()
                    if self._closed:
                        return
                    key = self._next_key()
                self._running.add(key)
            try:
                self._fetch_one(key)
            except Exception:  # never let a worker die
                log.exception("label worker failed on %s", key)
            finally:
                with self._lock:
                    self._running.discard(key)
                    self._inflight.discard(key)

    def _next_key(self) -> Key | None:  # called with self._lock held
        """The next wish worth a request: the visible ones first, in their order;
        then the newest background wish, unless that SAE's bulk download is on its
        way (it brings the label without a request of its own). None: look again."""
        if self._urgent:
            key, urgent = self._urgent.popleft(), True
        else:
            key, urgent = self._queue.pop(), False
        stale = key in self._running or self._backoff.waiting(key) or self._mem.get(key) is not None
        if stale or not urgent and self._bulk.state.get(key[0]) in ("queued", "running"):
            if key not in self._running and key not in self._urgent:
                self._inflight.discard(key)
            return None
        return key

    def _fetch_one(self, key: Key) -> None:
        wait = self._bucket.reserve()
        if wait and self._stop.wait(wait):
            return
        with self._lock:
            if self._closed or self._backoff.paused():
                return
        try:
            label = self.client.fetch_feature(*key)
        except RateLimited as e:
            with self._lock:
                self._backoff.pause(e.retry_after)
                self._stats.update(last_error=str(e), failures=self._stats["failures"] + 1)
        except Exception as e:  # timeouts, 5xx, garbage, closed connections: back off
            with self._lock:
                self._backoff.failed(key)
                self._stats.update(
                    last_error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
                    failures=self._stats["failures"] + 1,
                    reachable=False,
                )
            log.debug("label fetch %s failed: %r", key, e)
        else:
            self._remember([(*key, label, time.time())])
            with self._lock:
                self._backoff.succeeded(key)
                self._stats.update(fetched=self._stats["fetched"] + 1, reachable=True)

    # ---- storage -----------------------------------------------------------

    def _remember(self, rows: list[tuple[str, int, str | None, float]]) -> None:
        with self._lock:
            for np_id, idx, label, at in rows:
                self._mem[(np_id, idx)] = (label, at)
            self.arrivals += 1  # views redraw when this changes
        self.store.write(rows)

    def _done_batches(self, np_id: str) -> set[int]:
        if self.cache_path is None:
            return {b for n, b in self._mem_batches if n == np_id}
        return self.store.done_batches(np_id)

    def _bulk_worker(self, np_id: str) -> None:
        """One SAE's bulk download (see :meth:`bulk`), in the bulk thread."""
        def progress(done: int, total: int | None) -> None:
            if self._closed:
                raise RuntimeError("the label service was closed")
            self._bulk.progress[np_id] = (done, total)

        try:
            self.prefetch(np_id, progress, retries=1, workers=BULK_WORKERS)
        except Exception as e:  # offline, a bad batch: one-by-one fetches go on; tried again later
            self._bulk.finish(np_id, "failed", self._clock())
            with self._lock:
                self._stats["last_bulk_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            log.info("bulk labels for %s stopped: %s", np_id, e)
        else:
            self._bulk.finish(np_id, "done", self._clock())
        with self._lock:
            self.arrivals += 1  # the views look again at labels they had not found

    def _store_batch(self, np_id: str, batch: int, labels: dict[int, str]) -> int:
        now = time.time()
        rows = [(np_id, i, lab, now) for i, lab in labels.items()]
        with self._lock:
            for i, lab in labels.items():
                self._backoff.succeeded((np_id, i))
                if self.cache_path is not None:
                    self._mem.pop((np_id, i), None)  # re-read from disk on next use
                elif self._mem.get((np_id, i), (None,))[0] is None:
                    self._mem[(np_id, i)] = (lab, now)
            self.arrivals += 1  # views redraw when this changes
            if self.cache_path is None:
                self._mem_batches.add((np_id, batch))
                return len(rows)
        return self.store.store_batch(np_id, batch, rows, now)  # outside the lock: a long write never holds up the workers
