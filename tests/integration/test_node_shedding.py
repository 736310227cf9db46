"""When a node sheds new SUBSCRIBEs: only once its UDP receive queue has stayed past
``--shed-backlog`` for ``Limits.shed_after`` seconds (a brief stall it catches up on is no
overload), and until a reading falls below it; or once the kernel has been dropping its
datagrams for as long, and until a second passes without a drop."""

from __future__ import annotations

import contextlib
import logging

from busylamp.presence.engine import EngineConfig
from busylamp.presence.limits import Limits
from busylamp.presence.node import PresenceNode


@contextlib.contextmanager
def shedding_node(now: list[float], shed_backlog: float = 0.9):
    """A node (not listening) whose clock reads ``now[0]``, shedding after 2 s."""
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)},
                                     limits=Limits(shed_backlog=shed_backlog, shed_after=2.0)),
                        clock=lambda: now[0])
    try:
        yield node
    finally:
        node.stop()


def test_shedding_starts_after_a_sustained_full_queue_and_stops_when_it_drains(caplog):
    now = [100.0]
    caplog.set_level(logging.WARNING, logger="busylamp.presence.node.node")
    with shedding_node(now) as node:
        node._on_backlog(0.95)
        assert not node.engine.overloaded  # full, but only just
        now[0] += 1.0
        node._on_backlog(0.97)
        assert not node.engine.overloaded
        now[0] += 0.5
        node._on_backlog(0.2)  # it caught up: the clock starts again
        now[0] += 1.0
        node._on_backlog(0.95)
        now[0] += 1.9
        node._on_backlog(0.95)
        assert not node.engine.overloaded
        now[0] += 0.2
        node._on_backlog(0.92)  # full for 2.1 s: overloaded
        assert node.engine.overloaded
        node._on_backlog(0.0)  # a batch drained the socket
        assert not node.engine.overloaded
        warnings = [r for r in caplog.records if "new SUBSCRIBEs get 503" in r.getMessage()]
        assert len(warnings) == 1


def test_no_shedding_when_switched_off():
    now = [100.0]
    with shedding_node(now, shed_backlog=0.0) as node:
        for step in range(10):  # a full queue, and drops, for 5 s
            node._on_backlog(1.0)
            node._on_drops(1_000 * step)
            now[0] += 0.5
        assert not node.engine.overloaded


def test_input_lost_for_long_is_overload_even_when_the_queue_drains_between(caplog):
    """A queue that overflows most of the time but is drained now and then never stays past
    the fill threshold; the kernel's drop counter, read every housekeeping tick, still shows
    the input being lost: after ``shed_after`` seconds of drops, new SUBSCRIBEs get 503."""
    now = [100.0]
    caplog.set_level(logging.WARNING, logger="busylamp.presence.node.node")
    with shedding_node(now) as node:
        node._on_drops(5_000)  # the first reading is the baseline: drops from before count not
        drops = 5_000
        for _ in range(4):  # 1.5 s of drops, ticks 0.5 s apart, drained batches in between
            now[0] += 0.5
            drops += 3_000
            node._on_drops(drops)
            node._on_backlog(0.0)
            assert not node.engine.overloaded
        now[0] += 0.5
        drops += 3_000
        node._on_drops(drops)  # 2.0 s of drops
        assert node.engine.overloaded
        node._on_backlog(0.0)  # a drained batch does not end it while input is still lost
        assert node.engine.overloaded
        now[0] += 0.5
        node._on_drops(drops)  # a tick without a new drop: over
        assert not node.engine.overloaded
        now[0] += 0.5
        node._on_drops(drops + 10)  # a new, brief loss starts the clock again
        assert not node.engine.overloaded
        warnings = [r for r in caplog.records if "dropping datagrams" in r.getMessage()]
        assert len(warnings) == 1


def test_drops_in_every_tick_count_even_when_the_ticks_come_late():
    """Under the load that makes the kernel drop, the housekeeping ticks themselves come late
    (seconds apart): drops seen by every tick still add up to overload."""
    now = [100.0]
    with shedding_node(now) as node:
        node._on_drops(0)
        for drops in (40_000, 90_000, 130_000):
            now[0] += 1.7  # late ticks, each seeing new drops
            node._on_drops(drops)
        assert node.engine.overloaded


def test_the_kernel_drop_counter_of_a_full_socket_is_read():
    import socket

    from busylamp.presence.node.transport import receive_drops

    full = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    full.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few datagrams fit
    full.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert receive_drops(full) == 0
        for _ in range(200):  # never read: the queue fills, the rest is dropped and counted
            sender.sendto(b"x" * 500, full.getsockname())
        assert receive_drops(full) > 100
    finally:
        full.close()
        sender.close()
