"""NsqLoop's sliced selector: a busy loop visits the gevent hub once per slice, not per
iteration, and other greenlets still run while it is busy (no nsqd needed)."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.selectors
import pytest

from busylamp.bridge.nsq import NsqLoop
from busylamp.bridge.nsq.loop import HUB_SLICE


def _busy(loop: NsqLoop, seconds: float) -> dict[str, int]:
    """Keep the loop's ready queue non-empty for ``seconds`` (one callback rescheduling itself,
    as pynsq's future per frame does), while a greenlet wakes every millisecond (a timer, as a
    SIP or ESL greenlet waits for its socket) and counts its turns."""
    counts = {"iterations": 0, "turns": 0}
    end = time.monotonic() + seconds

    def step() -> None:
        counts["iterations"] += 1
        if time.monotonic() < end:
            loop.io_loop.add_callback(step)  # inside the loop: asyncio's call_soon

    def other() -> None:
        while time.monotonic() < end:
            counts["turns"] += 1
            gevent.sleep(0.001)

    greenlet = gevent.spawn(other)
    loop.call(step)
    greenlet.join(seconds + 5)
    gevent.sleep(0.05)  # the last step runs
    return counts


def test_other_greenlets_run_while_the_loop_is_busy(loop: NsqLoop) -> None:
    counts = _busy(loop, 0.3)
    assert counts["iterations"] > 1000
    # one turn per millisecond would be 300; a loaded machine may lose some time slices
    assert counts["turns"] > 30


def test_a_busy_loop_visits_the_hub_once_per_slice(loop: NsqLoop,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = gevent.selectors.GeventSelector.select
    visits = [0]

    def counting(self, timeout=None):
        visits[0] += 1
        return real(self, timeout)

    monkeypatch.setattr(gevent.selectors.GeventSelector, "select", counting)
    seconds = 0.3
    counts = _busy(loop, seconds)
    # per iteration before: thousands of visits; now about one per slice (plus idle waits)
    assert visits[0] < counts["iterations"] / 10
    assert visits[0] >= seconds / HUB_SLICE / 10


def test_io_is_served_while_the_loop_is_busy(loop: NsqLoop) -> None:
    """A socket that becomes readable while callbacks keep the loop busy is still read."""
    left, right = socket.socketpair()
    left.setblocking(False)
    got: list[bytes] = []

    def register() -> None:
        loop.io_loop.add_handler(left.fileno(), lambda fd, events: got.append(left.recv(100)),
                                 loop.io_loop.READ)

    loop.run(register)
    busy = gevent.spawn(_busy, loop, 0.3)
    gevent.sleep(0.05)
    right.send(b"x")
    busy.join(5)
    assert got == [b"x"]
    loop.run(lambda: loop.io_loop.remove_handler(left.fileno()))
    left.close()
    right.close()
