"""The suite's one polling helper: wait for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time


def pause(seconds: float) -> None:
    """Yield to gevent (or sleep) between two polls."""
    try:
        import gevent

        gevent.sleep(seconds)
    except ImportError:  # pragma: no cover - gevent is a dependency
        time.sleep(seconds)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Poll ``predicate`` (yielding to gevent) until it is true or the deadline passes; return
    its (true) value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        pause(interval)
