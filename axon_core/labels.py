"""Human labels for SAE features, fetched from Neuronpedia and cached on disk.

One :class:`LabelService` per process serves every browser session. Its
:meth:`~LabelService.label` never waits for the network: it answers from the
cache, or with the fallback ``"Feature {index}"`` while a background worker
fetches the real label, so the next call (next frame) gets it.

Worked example::

    svc = LabelService()                          # env-var defaults, see below
    svc.label("gpt2-small/8-res-jb", 4821)        # 'Feature 4821' (fetch scheduled)
    ...                                           # a moment later
    svc.label("gpt2-small/8-res-jb", 4821)        # 'European capitals'
    svc.label(None, 7)                            # 'Feature 7' (SAE not on Neuronpedia)
    svc.status()["message"]                       # None, or 'Neuronpedia unreachable (...)'
    svc.prefetch("gpt2-small/8-res-jb")           # bulk download, resumable -> 24576
    svc.close()

Command line (interrupt with Ctrl-C, run again to resume)::

    python -m axon_core.labels prefetch gpt2-small/8-res-jb [--cache PATH]
    python -m axon_core.labels get gpt2-small/8-res-jb 4821

Sources: ``GET {base}/api/feature/{modelId}/{sourceId}/{index}`` (first
``explanations[].description``), and for bulk the gzip JSON-lines batches
``{datasets}/v1/{modelId}/{sourceId}/explanations/batch-N.jsonl.gz``.
Failures (timeouts, 5xx, 429, garbage) give the fallback and are retried with
per-feature exponential back-off; a 429 pauses all fetches for ``Retry-After``;
a 404 or a feature without explanations is remembered as "no label".

Environment: ``AXON_NEURONPEDIA_URL``, ``AXON_NEURONPEDIA_DATASETS_URL``,
``NEURONPEDIA_API_KEY`` (sent as ``x-api-key``), ``AXON_LABEL_CACHE`` (SQLite
file; default ``labels.sqlite`` in :func:`axon_core.paths.cache_dir`: ``AXON_CACHE_DIR``,
else ``/data/axon`` on a Space with persistent storage, else the user cache
directory), ``AXON_NEURONPEDIA_RATE`` (client-side cap, requests per second).

Safety: labels are third-party text and are stored and returned *raw*.
:func:`safe_text` strips control characters and truncates; HTML escaping is
the job of each renderer, not of this module.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import email.utils
import gzip
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import cachetools

from .paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
DEFAULT_DATASETS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com"
USER_AGENT = "axon-labels/1"

Key = tuple[str, int]
MAX_IDLE_READERS = 4  # reader connections kept open between reads (a busy server opens more, then closes them)
Progress = Callable[[int, "int | None"], None]


def fallback_label(index: int) -> str:
    return f"Feature {index}"


def safe_text(label: str, max_len: int = 120) -> str:
    """``label`` without control/format characters (bidi overrides included),
    whitespace collapsed, cut to ``max_len`` characters with an ellipsis.
    Does *not* HTML-escape.

    >>> safe_text(" tab\\there\\x1b[31m\\u202eevil ")
    'tab here[31mevil'
    """
    out = []
    for ch in label:
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zl", "Zp"):
            out.append(" ")
        elif cat not in ("Cc", "Cf", "Cs"):
            out.append(ch)
    text = " ".join("".join(out).split())
    if len(text) > max_len:
        text = text[: max(0, max_len - 1)].rstrip() + "…"
    return text


class LabelFetchError(RuntimeError):
    """A fetch failed in a way worth retrying later."""


class RateLimited(LabelFetchError):
    def __init__(self, retry_after: float):
        super().__init__(f"HTTP 429, retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class PrefetchError(LabelFetchError):
    """A bulk batch could not be downloaded; finished batches are kept."""


@dataclass
class _Backoff:
    failures: int
    retry_at: float


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


def _split_np_id(np_id: str) -> tuple[str, str]:
    model_id, _, source_id = np_id.partition("/")
    if not model_id or not source_id or "/" in source_id:
        raise ValueError(f"Neuronpedia id must look like 'gpt2-small/8-res-jb', got {np_id!r}")
    return model_id, source_id


def _http_get(url: str, headers: Mapping[str, str], timeout: float):
    """(status, body, headers); HTTP error statuses are returned, network errors raise."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        with contextlib.suppress(Exception):
            e.close()
        return e.code, b"", e.headers


def _retry_after(value: str | None, default: float = 60.0) -> float:
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 1.0), 3600.0)


def _parse_feature(body: bytes) -> str | None:
    """The best explanation of a ``/api/feature`` response, None if it has none."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("explanations"), list):
        raise ValueError("response has no 'explanations' list")
    for exp in data["explanations"]:
        desc = exp.get("description") if isinstance(exp, dict) else None
        if isinstance(desc, str) and desc.strip():
            return desc
    return None


def _parse_batch(raw: bytes, source_id: str) -> dict[int, str]:
    """index -> first description in a (gzipped) JSON-lines explanations batch."""
    text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    out: dict[int, str] = {}
    lines = bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        lines += 1
        try:
            row = json.loads(line)
            index, desc = int(row["index"]), row["description"]
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        if row.get("layer", source_id) != source_id:
            continue
        if isinstance(desc, str) and desc.strip():
            out.setdefault(index, desc)
    if lines and bad == lines:
        raise ValueError("no line of the batch is an explanation record")
    return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    np_id TEXT NOT NULL, idx INTEGER NOT NULL,
    label TEXT,                    -- NULL: Neuronpedia has no label (negative cache)
    fetched_at REAL NOT NULL,      -- unix time
    PRIMARY KEY (np_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prefetch_batches (
    np_id TEXT NOT NULL, batch INTEGER NOT NULL, n_labels INTEGER NOT NULL, done_at REAL NOT NULL,
    PRIMARY KEY (np_id, batch));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
_UPSERT = "INSERT OR REPLACE INTO labels (np_id, idx, label, fetched_at) VALUES (?, ?, ?, ?)"
_UPSERT_BULK = (  # bulk labels fill gaps and negatives but never replace a label
    "INSERT INTO labels (np_id, idx, label, fetched_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (np_id, idx) DO UPDATE SET label = excluded.label, fetched_at = excluded.fetched_at "
    "WHERE labels.label IS NULL"
)


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA busy_timeout = 10000")
    con.execute("PRAGMA synchronous = NORMAL")
    return con


@contextlib.contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


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
        self.base_url = (base_url or env("AXON_NEURONPEDIA_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.datasets_url = (
            datasets_url or env("AXON_NEURONPEDIA_DATASETS_URL") or DEFAULT_DATASETS_URL
        ).rstrip("/")
        self.api_key = api_key if api_key is not None else env("NEURONPEDIA_API_KEY") or None
        self.enabled, self.timeout, self.max_workers = enabled, timeout, max(1, max_workers)
        self.max_pending, self.negative_ttl = max_pending, negative_ttl
        self.backoff_base, self.backoff_max, self._clock = backoff_base, backoff_max, clock
        if rate_per_s is None:
            rate_per_s = float(env("AXON_NEURONPEDIA_RATE") or 5.0)
        self._bucket = _TokenBucket(rate_per_s, burst)

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._mem: cachetools.LRUCache = cachetools.LRUCache(maxsize=memory_size)  # Key -> (label|None, unix time)
        self._backoff: cachetools.LRUCache = cachetools.LRUCache(maxsize=100_000)  # Key -> _Backoff
        self._inflight: set[Key] = set()
        self._queue: collections.deque[Key] = collections.deque()
        self._workers: list[threading.Thread] = []
        self._paused_until = 0.0
        self._closed = False
        self._stats = {"fetched": 0, "failures": 0, "reachable": None, "last_error": None}
        self._store_message: str | None = None
        self._mem_batches: set[tuple[str, int]] = set()  # prefetch bookkeeping without a DB
        self.arrivals = 0  # how many times labels were stored: a view redraws when it changes

        # idle reader connections, lent to one reading thread at a time: a
        # connection per thread (the server's worker threads come and go) was
        # never closed and held its own page cache
        self._readers: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        if cache_path is None:
            cache_path = env("AXON_LABEL_CACHE") or cache_dir() / "labels.sqlite"
        self.cache_path: Path | None = self._open_store(Path(cache_path))
        if enabled:  # started here so that label() never pays for a thread start
            for n in range(self.max_workers):
                t = threading.Thread(target=self._worker, name=f"axon-labels-{n}", daemon=True)
                t.start()
                self._workers.append(t)

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
                    if not self._in_backoff(key):
                        return True
        return False

    def request(self, np_id: str | None, indices: Iterable[int]) -> None:
        """Schedule background fetches for those of ``indices`` not known yet."""
        for i in indices:
            self.label(np_id, i)

    def put(self, np_id: str, labels: Mapping[int, str | None]) -> None:
        """Store labels (None = "has no label") in memory and on disk, one transaction."""
        now = time.time()
        self._remember([(np_id, int(i), lab or None, now) for i, lab in labels.items()])

    def fetch(self, np_id: str, index: int) -> str | None:
        """Blocking fetch of one label from the API (for scripts); stores and returns it.
        Raises :class:`LabelFetchError` (or a network error) on failure."""
        label = self._fetch_feature(np_id, int(index))
        self._remember([(np_id, int(index), label, time.time())])
        return label

    def status(self) -> dict:
        """Counts and the last error, plus ``message``: a short line for a status bar
        (None when all is well)."""
        with self._lock:
            now = self._clock()
            paused_for = max(0.0, self._paused_until - now)
            st = dict(self._stats)
            st.update(
                enabled=self.enabled,
                cached=len(self._mem),
                in_flight=len(self._inflight),
                queued=len(self._queue),
                backing_off=sum(1 for b in self._backoff.values() if b.retry_at > now),
                paused_for=paused_for,
                persistent=self.cache_path is not None,
                cache_path=str(self.cache_path) if self.cache_path else None,
            )
        parts = []
        if paused_for:
            parts.append(f"Neuronpedia rate limit: paused {paused_for:.0f} s")
        elif st["reachable"] is False:
            parts.append(f"Neuronpedia unreachable ({st['last_error']})")
        if self._store_message:
            parts.append(self._store_message)
        st["message"] = "; ".join(parts) or None
        return st

    def prefetch(
        self, np_id: str, progress: Progress | None = None, *, retries: int = 0, timeout: float = 60.0
    ) -> int:
        """Download all published explanation batches of ``np_id`` into the cache.

        Each batch is stored in one transaction together with a "done" mark, so an
        interrupted prefetch resumes at the first missing batch. ``progress(done,
        total)`` is called after each batch (``total`` is None if the bucket can't be
        listed). Returns the number of labels stored by this call; raises
        :class:`PrefetchError` if a batch fails ``retries + 1`` times.
        """
        model_id, source_id = _split_np_id(np_id)
        done = self._done_batches(np_id)
        total = self._count_batches(np_id)
        finished, stored, batch = len(done), 0, 0
        if progress:
            progress(finished, total)
        while batch < 1_000_000:
            if batch not in done:
                url = f"{self.datasets_url}/v1/{_quote(model_id)}/{_quote(source_id)}/explanations/batch-{batch}.jsonl.gz"
                labels = self._download_batch(url, source_id, retries, timeout)
                if labels is None:  # 404/403: no more batches
                    break
                stored += self._store_batch(np_id, batch, labels)
                finished += 1
                if progress:
                    progress(finished, max(total, finished) if total else None)
            batch += 1
        return stored

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._work.notify_all()
            readers, self._readers = self._readers, []
        self._stop.set()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        for con in readers:
            with contextlib.suppress(sqlite3.Error):
                con.close()

    def __enter__(self) -> LabelService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- lookup and scheduling ---------------------------------------------

    def _lookup(self, key: Key):
        """label, None (known: no label) or _MISSING."""
        with self._lock:
            hit = self._mem.get(key)
            busy = key in self._inflight or self._in_backoff(key)
        if hit is None and not busy:
            hit = self._read_disk(key)
            if hit is not None:
                with self._lock:
                    self._mem[key] = hit
        if hit is None:
            return _MISSING
        label, fetched_at = hit
        if label is None and time.time() - fetched_at > self.negative_ttl:
            return _MISSING
        return label

    def _in_backoff(self, key: Key) -> bool:
        b = self._backoff.get(key)
        return b is not None and self._clock() < b.retry_at

    def _schedule(self, key: Key) -> None:  # called with self._lock held
        if not self.enabled or self._closed or key in self._inflight:
            return
        if self._clock() < self._paused_until or self._in_backoff(key):
            return
        self._inflight.add(key)
        self._queue.append(key)
        if len(self._queue) > self.max_pending:  # drop the oldest wish; it is asked again later
            self._inflight.discard(self._queue.popleft())
        self._work.notify()

    def _worker(self) -> None:
        while True:
            with self._work:
                while not self._queue and not self._closed:
                    self._work.wait()
                if self._closed:
                    return
                key = self._queue.pop()  # newest first: what is on screen now
            try:
                self._fetch_one(key)
            except Exception:  # never let a worker die
                log.exception("label worker failed on %s", key)
            finally:
                with self._lock:
                    self._inflight.discard(key)

    def _fetch_one(self, key: Key) -> None:
        wait = self._bucket.reserve()
        if wait and self._stop.wait(wait):
            return
        with self._lock:
            if self._closed or self._clock() < self._paused_until:
                return
        try:
            label = self._fetch_feature(*key)
        except RateLimited as e:
            with self._lock:
                self._paused_until = max(self._paused_until, self._clock() + e.retry_after)
                self._stats.update(last_error=str(e), failures=self._stats["failures"] + 1)
        except Exception as e:  # timeouts, 5xx, garbage, closed connections: back off
            with self._lock:
                b = self._backoff.get(key) or _Backoff(0, 0.0)
                b.failures += 1
                delay = min(self.backoff_max, self.backoff_base * 2 ** (b.failures - 1))
                b.retry_at = self._clock() + delay
                self._backoff[key] = b
                self._stats.update(
                    last_error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
                    failures=self._stats["failures"] + 1,
                    reachable=False,
                )
            log.debug("label fetch %s failed: %r", key, e)
        else:
            self._remember([(*key, label, time.time())])
            with self._lock:
                self._backoff.pop(key, None)
                self._stats.update(fetched=self._stats["fetched"] + 1, reachable=True)

    def _fetch_feature(self, np_id: str, index: int) -> str | None:
        model_id, source_id = _split_np_id(np_id)
        url = f"{self.base_url}/api/feature/{_quote(model_id)}/{_quote(source_id)}/{index}"
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        status, body, resp_headers = _http_get(url, headers, self.timeout)
        if status == 200:
            return _parse_feature(body)
        if status == 404:
            return None
        if status == 429:
            raise RateLimited(_retry_after(resp_headers.get("Retry-After") if resp_headers else None))
        raise LabelFetchError(f"HTTP {status}")

    # ---- storage -----------------------------------------------------------

    def _open_store(self, path: Path) -> Path | None:
        """Open (and if needed create) the SQLite cache; move a corrupt one aside;
        return None (memory only) where the location can't be written."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._memory_only(path, e)
        for attempt in range(3):
            con = None
            try:
                con = _connect(path)
                con.execute("PRAGMA journal_mode = WAL").fetchone()
                check = con.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise _Corrupt(check)
                con.executescript(_SCHEMA)
                with _transaction(con):  # proves the file is writable
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (str(time.time()),))
                self._writer = con
                return path
            except (sqlite3.Error, _Corrupt) as e:
                if con is not None:
                    con.close()
                name = getattr(e, "sqlite_errorname", "")
                if name in ("SQLITE_BUSY", "SQLITE_LOCKED") and attempt < 2:
                    time.sleep(0.5)
                    continue
                if (isinstance(e, _Corrupt) or name in ("SQLITE_NOTADB", "SQLITE_CORRUPT")) and attempt < 2:
                    if self._move_aside(path, e):
                        continue
                return self._memory_only(path, e)
            except OSError as e:
                if con is not None:
                    con.close()
                return self._memory_only(path, e)
        return self._memory_only(path, RuntimeError("could not open"))

    def _move_aside(self, path: Path, err: Exception) -> bool:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
        try:
            os.replace(path, dest)
            for side in ("-wal", "-shm"):
                if Path(f"{path}{side}").exists():
                    os.replace(f"{path}{side}", f"{dest}{side}")
        except OSError as e:
            log.warning("label cache %s is unreadable and could not be moved aside: %s", path, e)
            return False
        msg = f"label cache {path} was unreadable ({err}); moved it to {dest.name} and started a fresh one"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        return True

    def _memory_only(self, path: Path, err: Exception) -> None:
        self._store_message = f"label cache not writable ({path}: {err}); labels kept in memory only"
        log.warning(self._store_message)
        return None

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection | None]:
        """A reader connection for this thread while the block runs (None: no
        disk cache), taken from the idle ones or opened; given back after, and
        closed if MAX_IDLE_READERS are idle already or the service is closed."""
        with self._lock:
            con = None if self._closed else (self._readers.pop() if self._readers else False)
        if con is False and self.cache_path is not None:
            try:
                con = _connect(self.cache_path)
            except sqlite3.Error:
                con = None
        if not con:
            yield None
            return
        try:
            yield con
        finally:
            with self._lock:
                keep = not self._closed and len(self._readers) < MAX_IDLE_READERS
                if keep:
                    self._readers.append(con)
            if not keep:
                with contextlib.suppress(sqlite3.Error):
                    con.close()

    def _read_disk(self, key: Key) -> tuple[str | None, float] | None:
        with self._reader() as con:
            if con is None:
                return None
            try:
                row = con.execute("SELECT label, fetched_at FROM labels WHERE np_id = ? AND idx = ?",
                                  key).fetchone()
            except sqlite3.Error as e:
                log.debug("label cache read failed: %s", e)
                return None
        return (row[0], row[1]) if row else None

    def _remember(self, rows: list[tuple[str, int, str | None, float]]) -> None:
        with self._lock:
            for np_id, idx, label, at in rows:
                self._mem[(np_id, idx)] = (label, at)
            self.arrivals += 1  # views redraw when this changes
        with self._write_lock:
            if self._writer is None:
                return
            try:
                with _transaction(self._writer):
                    self._writer.executemany(_UPSERT, rows)
            except sqlite3.Error as e:
                self._store_message = f"label cache write failed: {e}"
                log.warning(self._store_message)

    def _done_batches(self, np_id: str) -> set[int]:
        if self.cache_path is None:
            return {b for n, b in self._mem_batches if n == np_id}
        with self._reader() as con:
            if con is None:
                return set()
            return {r[0] for r in con.execute("SELECT batch FROM prefetch_batches WHERE np_id = ?", (np_id,))}

    def _store_batch(self, np_id: str, batch: int, labels: dict[int, str]) -> int:
        now = time.time()
        rows = [(np_id, i, lab, now) for i, lab in labels.items()]
        with self._lock:
            for i, lab in labels.items():
                self._backoff.pop((np_id, i), None)
                if self.cache_path is not None:
                    self._mem.pop((np_id, i), None)  # re-read from disk on next use
                elif self._mem.get((np_id, i), (None,))[0] is None:
                    self._mem[(np_id, i)] = (lab, now)
            if self.cache_path is None:
                self._mem_batches.add((np_id, batch))
                return len(rows)
        con = _connect(self.cache_path)  # own connection: a long write never holds up the workers' lock
        try:
            before = con.total_changes
            with _transaction(con):
                con.executemany(_UPSERT_BULK, rows)
                changed = con.total_changes - before
                con.execute(
                    "INSERT OR REPLACE INTO prefetch_batches VALUES (?, ?, ?, ?)", (np_id, batch, len(rows), now)
                )
            return changed
        finally:
            con.close()

    def _download_batch(self, url: str, source_id: str, retries: int, timeout: float) -> dict[int, str] | None:
        err: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(30.0, 2.0**attempt))
            try:
                status, body, _ = _http_get(url, {}, timeout)
                if status in (403, 404):
                    return None
                if status != 200:
                    raise LabelFetchError(f"HTTP {status}")
                return _parse_batch(body, source_id)
            except (OSError, EOFError, ValueError, LabelFetchError) as e:  # network, gzip, JSON
                err = e
        raise PrefetchError(f"{url}: {type(err).__name__}: {err}") from err

    def _count_batches(self, np_id: str) -> int | None:
        """Number of batch files, from an S3 ListObjectsV2 call; None if unlistable."""
        prefix = f"v1/{np_id}/explanations/"
        url = f"{self.datasets_url}/?list-type=2&prefix={urllib.parse.quote(prefix)}"
        try:
            status, body, _ = _http_get(url, {}, self.timeout)
        except (OSError, ValueError):
            return None
        if status != 200 or b"<IsTruncated>true</IsTruncated>" in body:
            return None
        keys = re.findall(rb"<Key>([^<]*)</Key>", body)
        return sum(1 for k in keys if re.search(rb"/batch-\d+\.jsonl\.gz$", k)) or None


class _Corrupt(Exception):
    pass


_MISSING = object()


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# ---- command line -----------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axon_core.labels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    pf = sub.add_parser("prefetch", help="bulk-download all labels of an SAE (resumable)")
    pf.add_argument("np_id", help="Neuronpedia id, e.g. gpt2-small/8-res-jb")
    pf.add_argument("--retries", type=int, default=3)
    get = sub.add_parser("get", help="print one feature's label (blocking)")
    get.add_argument("np_id")
    get.add_argument("index", type=int)
    get.add_argument("--refresh", action="store_true", help="ask Neuronpedia even if cached")
    for p in (pf, get):
        p.add_argument("--cache", help="SQLite cache file (default: $AXON_LABEL_CACHE, else labels.sqlite in AXON's cache dir)")
    args = parser.parse_args(argv)

    with LabelService(cache_path=args.cache) as svc:
        if args.cmd == "get":
            label = None if args.refresh else svc.known(args.np_id, args.index)
            try:
                label = label or svc.fetch(args.np_id, args.index)
            except (LabelFetchError, OSError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(label if label is not None else "(no label)")
            return 0

        def show(done: int, total: int | None) -> None:
            if total:
                bar = "#" * (30 * done // total)
                print(f"\r{args.np_id} [{bar:<30}] batch {done}/{total}", end="", file=sys.stderr, flush=True)
            else:
                print(f"\r{args.np_id} batch {done}/?", end="", file=sys.stderr, flush=True)

        try:
            n = svc.prefetch(args.np_id, show, retries=args.retries)
        except KeyboardInterrupt:
            print("\ninterrupted; run the same command again to resume", file=sys.stderr)
            return 130
        except (PrefetchError, ValueError) as e:
            print(f"\nstopped: {e}\nrun the same command again to resume", file=sys.stderr)
            return 1
        print(f"\n{n} labels stored in {svc.cache_path or 'memory (cache not writable)'}", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
