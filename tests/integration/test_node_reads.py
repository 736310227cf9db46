"""Reads of the node (the admin API's views) change no state."""

from __future__ import annotations

from busylamp.presence.engine import EngineConfig
from busylamp.presence.node import PresenceNode
from busylamp.presence.node.node import ANSWER_POLL_INTERVAL
from busylamp.presence.updates import parse_updates

ALICE = "1001@example.com"


def dialog(call_id: str, state: str) -> dict:
    return {"Event-Name": "update", "Event-Package": "dialog", "From-User": "1001",
            "From-Realm": "example.com", "From": "sip:1001@example.com", "To": "sip:2000@example.com",
            "Call-ID": call_id, "State": state,
            "Direction": "recipient"}


def test_reading_a_presentity_twice_returns_the_same_and_changes_nothing() -> None:
    clock = [100.0]
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)}),
                        clock=lambda: clock[0])
    try:
        node.publish(parse_updates([dialog("c1", "confirmed"), dialog("c2", "early")]))
        node.publish(parse_updates([dialog("c1", "terminated")]))
        first = node.presentity(ALICE)
        assert first is not None and 'id="c1"' in first["packages"]["dialog"]["body"]
        assert node.presentity(ALICE) == first
        assert not any(r.announced for r in node.state.records("dialog", ALICE))
        # the tombstone was never sent: a later change still tells it
        node.publish(parse_updates([dialog("c2", "confirmed")]))
        assert 'id="c1"' in node.presentity(ALICE)["packages"]["dialog"]["body"]
    finally:
        node.stop()


def test_a_publish_reads_queued_answers_first_only_while_a_notify_awaits_one() -> None:
    """PresenceNode.publish polls the UDP sockets (answers to its NOTIFYs before new work) when a
    NOTIFY transaction is open, and spends no system call when none is."""
    from tests.unit.test_engine import subscribe

    clock = [100.0]
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)}),
                        clock=lambda: clock[0])
    polls: list[int] = []
    node.transports.poll_udp = lambda limit=256: polls.append(1) or 0  # type: ignore[method-assign]
    try:
        node.publish(parse_updates([dialog("c1", "early")]))
        assert polls == [] and len(node.engine.client_transactions) == 0
        # a watcher (its initial NOTIFY stays unanswered: a transaction is open)
        node._on_sip(subscribe(ALICE, contact="sip:2000@127.0.0.1:9"), ("127.0.0.1", 9),
                     "udp", None)
        assert len(node.engine.client_transactions) == 1
        node.publish(parse_updates([dialog("c1", "confirmed")]))
        assert polls == [1]
        # read a moment ago: not again until ANSWER_POLL_INTERVAL has passed
        node.publish(parse_updates([dialog("c1", "terminated")]))
        assert polls == [1]
        clock[0] += ANSWER_POLL_INTERVAL
        node.publish(parse_updates([dialog("c2", "early")]))
        assert polls == [1, 1]
    finally:
        node.stop()
