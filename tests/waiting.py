"""The one way tests wait: on a condition, with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

#: How often a condition is looked at again.
INTERVAL = 0.02


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail after
    `timeout` seconds, naming `what`. It is looked at once more after the deadline, so a
    test descheduled past it by a busy machine fails only if the condition still does not hold."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(INTERVAL)
