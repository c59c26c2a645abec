"""At most one generating run per browser session.

Worked example::

    runs = SessionRuns()
    first = runs.start("session-a")        # Generate pressed
    second = runs.start("session-a")       # pressed again while the first streams
    runs.superseded("session-a", first)    # True: the first run stops at its next frame
    runs.finish("session-a", first)        # nothing: not the session's current run
    runs.finish("session-a", second)
    len(runs)                              # 0
"""

from __future__ import annotations

import threading


class SessionRuns:
    """At most one generating run per browser session: a session's new run
    supersedes its previous one, which stops at its next frame. So one session
    never holds more than one of the queue's workers (``AXON_CONCURRENCY``), and
    none holds it longer than a run may take (``AXON_MAX_RUN_SECONDS``);
    ``AXON_QUEUE_SIZE`` bounds who waits."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: dict[str, object] = {}

    def start(self, key: str | None) -> object:
        ticket = object()
        if key:
            with self._lock:
                self._current[key] = ticket
        return ticket

    def superseded(self, key: str | None, ticket: object) -> bool:
        return bool(key) and self._current.get(key) is not ticket

    def finish(self, key: str | None, ticket: object) -> None:
        if key:
            with self._lock:
                if self._current.get(key) is ticket:
                    del self._current[key]

    def __len__(self) -> int:
        return len(self._current)
