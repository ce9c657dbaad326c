"""Bounded polling for tests that wait on another thread or process (no sleep-based races)."""
from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, period: float = 0.01) -> bool:
    """Call ``predicate`` every ``period`` s until it is true or ``timeout`` s pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())
