"""When a node sheds new SUBSCRIBEs: only once its UDP receive queue has stayed past
``--shed-backlog`` for ``Limits.shed_after`` seconds (a brief stall it catches up on is no
overload), and until a reading falls below it."""

from __future__ import annotations

import logging

from busylamp.presence.engine import EngineConfig
from busylamp.presence.limits import Limits
from busylamp.presence.node import PresenceNode


def test_shedding_starts_after_a_sustained_full_queue_and_stops_when_it_drains(caplog):
    now = [100.0]
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)},
                                     limits=Limits(shed_backlog=0.9, shed_after=2.0)),
                        clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="busylamp.presence.node.node")
    try:
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
    finally:
        node.stop()


def test_no_shedding_when_switched_off():
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)},
                                     limits=Limits(shed_backlog=0.0, shed_after=0.0)),
                        clock=lambda: 100.0)
    try:
        node._on_backlog(1.0)
        assert not node.engine.overloaded
    finally:
        node.stop()
