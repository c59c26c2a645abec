"""When to ask Neuronpedia again: per-feature back-off after a failure, one pause for all after a 429.

The label service and the evidence service fetch one feature at a time and
react to an answer the same way: a failure (timeout, 5xx, garbage) backs that
feature off, ``base`` seconds doubling per failure up to ``most``; a 429 pauses
every fetch for its ``Retry-After``; a success forgets the feature's failures.
:class:`Backoff` keeps that bookkeeping; it holds no lock (its owner calls it
under its own) and reads time from ``clock`` (monotonic seconds), so tests can
move time forward.

Worked example::

    b = Backoff(base=5.0, most=600.0, clock=lambda: now[0])
    b.failed(key)           # 5.0: asked again in 5 s
    b.failed(key)           # 10.0
    b.waiting(key)          # True until then
    b.pause(30.0)           # a 429: b.paused() for 30 s, every key
    b.succeeded(key)        # its failures forgotten
"""

from __future__ import annotations

from typing import Callable, Hashable

import cachetools


class Backoff:
    """Per-key failure counts and retry times, and a pause for every key (see the module doc)."""

    def __init__(self, base: float, most: float, clock: Callable[[], float], size: int = 100_000):
        self.base, self.most, self._clock = base, most, clock
        self._keys: cachetools.LRUCache = cachetools.LRUCache(maxsize=size)  # key -> (failures, retry_at)
        self.paused_until = 0.0

    def failed(self, key: Hashable) -> float:
        """Note a failure of ``key``; the seconds until it is worth asking again."""
        failures = self._keys.get(key, (0, 0.0))[0] + 1
        delay = min(self.most, self.base * 2 ** (failures - 1))
        self._keys[key] = (failures, self._clock() + delay)
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._keys.pop(key, None)

    def waiting(self, key: Hashable) -> bool:
        """Whether ``key`` is backing off now."""
        b = self._keys.get(key)
        return b is not None and self._clock() < b[1]

    def backing_off(self) -> int:
        """How many keys are backing off now."""
        now = self._clock()
        return sum(1 for _, retry_at in self._keys.values() if retry_at > now)

    def pause(self, seconds: float) -> None:
        """A 429: no key is asked for ``seconds`` (an earlier, longer pause stands)."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def paused(self) -> bool:
        return self._clock() < self.paused_until

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self._clock())
