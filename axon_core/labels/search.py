"""Finding features by their labels: local full-text search (SQLite FTS5) and Neuronpedia's search by meaning.

:func:`fts_queries` turns anything a person (or an API caller) types into
safe FTS5 queries: every word exactly, then every word as a prefix, then any
word as a prefix; FTS5's
own syntax characters, quotes and 10 KB strings only ever become words.
:class:`SemanticSearch` asks Neuronpedia's ``POST /api/explanation/search``
in a background thread: debounced (only the latest query of a burst is sent),
cached, and at most ``per_hour`` requests in any sliding hour (Neuronpedia
allows 200 for all its search routes together); a 429 pauses it.

Worked example::

    fts_queries('capital France*')   # ('"capital" "france"', '"capital"* "france"*', '"capital"* OR "france"*')
    sem = SemanticSearch(client)
    sem.ask(["gpt2-small/8-res-jb"], "european capitals")   # returns at once
    sem.peek(["gpt2-small/8-res-jb"], "european capitals")  # None until it answered, then
    # [('gpt2-small/8-res-jb', 4821, 'European capitals', 0.71), ...]
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from typing import Callable

import cachetools

from .client import NeuronpediaClient, RateLimited, split_np_id

log = logging.getLogger("axon_core.labels")

MAX_WORDS = 8  # words of a query searched
MAX_WORD = 40  # characters of a word
MAX_QUERY = 200  # characters sent to Neuronpedia
Hit = tuple[str, int, str, float]  # np_id, index, description, cosine similarity


def query_words(text) -> list[str]:
    """The words of ``text`` (letters and digits, lower case), at most MAX_WORDS of MAX_WORD characters."""
    return [w[:MAX_WORD] for w in re.findall(r"\w+", str(text or "")[:4096].lower())[:MAX_WORDS]]


def fts_queries(text) -> tuple[str, ...] | None:
    """FTS5 queries to try in turn, or None (no words): every word exactly, every
    word as a prefix, then (several words) any of them as a prefix."""
    words = query_words(text)
    if not words:
        return None
    queries = (" ".join(f'"{w}"' for w in words), " ".join(f'"{w}"*' for w in words))
    return queries + ((" OR ".join(f'"{w}"*' for w in words),) if len(words) > 1 else ())


def semantic_query(text) -> str | None:
    """What is sent to Neuronpedia: whitespace collapsed, cut to MAX_QUERY; None under 3 characters."""
    q = " ".join(str(text or "")[: MAX_QUERY * 4].split())[:MAX_QUERY]
    return q if len(q) >= 3 else None


class SemanticSearch:
    """Neuronpedia's explanation search, in the background (see the module doc)."""

    def __init__(self, client: NeuronpediaClient, *, per_hour: int = 180, debounce: float = 0.35,
                 clock: Callable[[], float] = time.monotonic):
        self.client, self.per_hour, self.debounce, self._clock = client, per_hour, debounce, clock
        self._cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=512, ttl=3600.0)
        self._failed: cachetools.TTLCache = cachetools.TTLCache(maxsize=512, ttl=60.0)  # not asked again soon
        self._sent: collections.deque[float] = collections.deque()
        self._want: tuple | None = None
        self._wanted_at = 0.0
        self._paused_until = 0.0
        self.error: str | None = None
        self.requests = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @staticmethod
    def _key(np_ids, query: str) -> tuple:
        return tuple(sorted(set(np_ids))), query.lower()

    def peek(self, np_ids, text) -> list[Hit] | None:
        """The answer for this query if it came (never waits)."""
        q = semantic_query(text)
        if q is None:
            return []
        with self._lock:
            return self._cache.get(self._key(np_ids, q))

    def ask(self, np_ids, text) -> str:
        """Ask in the background; what will happen: "cached", "queued", "too short",
        "rate limited", "failed" (it failed less than a minute ago) or "closed"."""
        q = semantic_query(text)
        np_ids = [n for n in np_ids if n and "/" in n]
        if q is None or not np_ids:
            return "too short"
        key = self._key(np_ids, q)
        with self._lock:
            if key in self._cache:
                return "cached"
            if key in self._failed:
                return "failed"
            if self._closed:
                return "closed"
            if not self._can_send():
                return "rate limited"
            if self._want != key:  # asked again while waiting: the debounce runs on
                self._want, self._wanted_at = key, self._clock()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="axon-search", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        return "queued"

    def _can_send(self) -> bool:  # with the lock held
        now = self._clock()
        while self._sent and now - self._sent[0] > 3600.0:
            self._sent.popleft()
        return now >= self._paused_until and len(self._sent) < self.per_hour

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._want is None and not self._closed:
                    if not self._lock.wait(30.0):
                        self._thread = None  # idle: the next ask starts another
                        return
                if self._closed:
                    return
                wait = self._wanted_at + self.debounce - self._clock()
                if wait > 0:  # a newer query within the debounce window replaces this one
                    self._lock.wait(wait)
                    continue
                key, self._want = self._want, None
                if key in self._cache or not self._can_send():
                    continue
                self._sent.append(self._clock())
                self.requests += 1
            hits = self._fetch(*key)
            with self._lock:
                if hits is not None:
                    self._cache[key] = hits
                else:
                    self._failed[key] = self.error

    def _fetch(self, np_ids: tuple, query: str) -> list[Hit] | None:
        by_model: dict[str, list[str]] = {}
        for np_id in np_ids:
            model, source = split_np_id(np_id)
            by_model.setdefault(model, []).append(source)
        hits: list[Hit] = []
        try:
            for model, sources in by_model.items():
                hits += self.client.search(model, sources, query)
        except RateLimited as e:
            with self._lock:
                self._paused_until = self._clock() + e.retry_after
            self.error = f"Neuronpedia search: rate limit, paused {e.retry_after:.0f} s"
            return None
        except Exception as e:  # noqa: BLE001 - offline, garbage: local results stand alone
            self.error = f"Neuronpedia search: {type(e).__name__}: {str(e)[:120]}"
            log.debug("semantic search failed: %r", e)
            return None
        self.error = None
        return sorted(hits, key=lambda h: -h[3])
