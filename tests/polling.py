"""Waiting for a condition in tests without deciding on time: poll ``predicate``
until it holds or ``timeout`` seconds pass (a generous bound that only ends a
hang), then say whether it held::

    assert wait_for(lambda: svc.known(NP, 5) == "European capitals", timeout=10)
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
