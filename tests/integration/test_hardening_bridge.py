"""Hostile input reaching FreeSWITCH through the bridge: MWI query floods, a hostile channel list.

A running presence node and the bridge share a MemoryBus; the FreeSWITCH is esl.simulator over a
real ESL socket, the watchers SUBSCRIBE over real SIP sockets.
"""

from __future__ import annotations

import gevent
import pytest

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.mwi import MailboxBook
from busylamp.bridge.normalize import NormalizeConfig
from busylamp.bridge.service import BridgeService
from busylamp.esl.connection import EslTarget
from busylamp.esl.simulator import FreeSwitchSimulator
from busylamp.presence.engine import EngineConfig
from busylamp.presence.node import PresenceNode
from tests.hostile import RawPeer, answers_until_ping, method, reply, status, subscribe
from tests.polling import wait_until
from tests.sipp_util import free_port

FAST_ESL = {"backoff_initial": 0.05, "backoff_max": 0.2, "jitter": 0.0, "dead_after": 5.0,
            "command_timeout": 2.0, "connect_timeout": 2.0}


@pytest.fixture
def rig():
    sim = FreeSwitchSimulator(password="pw", domain="example.com", heartbeat_interval=None)
    host, port = sim.start()
    bus = MemoryBus()
    service = BridgeService([EslTarget(host, port, "pw")], bus,
                            NormalizeConfig(domain_default="example.com"), "bridge-1",
                            esl_options=FAST_ESL, max_timer_sleep=0.05,
                            mwi_options={"rate": 20.0, "burst": 5})
    sip_port = free_port()
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", sip_port)}),
                        on_control=bus.publish_control)
    node.listen("udp", "127.0.0.1", sip_port)
    bus.subscribe(node.on_bus_message)
    node.start()
    service.start()
    wait_until(lambda: service.counters["snapshots"] >= 1, message="bridge connected")
    try:
        yield sim, service, node
    finally:
        service.stop()
        node.stop()
        sim.stop()


def queries(sim) -> list[str]:
    return [c for c in sim.commands if c.startswith("sendevent MESSAGE_QUERY")]


def mwi_subscribe(peer: RawPeer, mailbox: str, n: int, expires: int = 600) -> bytes:
    return subscribe(peer, presentity=mailbox, call_id=f"mwi-{n}", from_tag=f"m{n}",
                     expires=expires).replace(b"Event: dialog", b"Event: message-summary")


def test_fake_mailboxes_are_queried_paced_once_and_forgotten_with_their_watchers(rig):
    sim, service, node = rig
    peer = RawPeer(target=node.listeners[0][1])
    try:
        # 60 SUBSCRIBEs for 30 mailboxes nobody has (two each), as fast as the node answers
        for n in range(60):
            peer.send(mwi_subscribe(peer, f"9{n % 30:03d}@example.com", n))
        peer.wait_for(lambda ms: sum(status(m) == 200 for m in ms) == 60, message="all 200")
        # paced: the bucket lets 5 go at once, then 20 a second
        assert len(queries(sim)) <= 5 + 1
        wait_until(lambda: len(queries(sim)) == 30, message="every mailbox queried")
        assert service.mailboxes.counters["coalesced"] == 0  # one claim per mailbox: first watcher
        # the watchers leave (their NOTIFYs are refused): the mailboxes are released, forgotten
        for message in list(peer.messages):
            if method(message) == "NOTIFY":
                peer.send(reply(message, 481))
        wait_until(lambda: len(service.mailboxes) == 0, message="mailboxes forgotten")
    finally:
        peer.close()
    # a reconnect replays nothing of them
    before = service.counters["mwi_replayed"]
    snapshots = service.counters["snapshots"]
    sim.drop_connections()
    wait_until(lambda: service.counters["snapshots"] > snapshots, message="reconnected")
    assert service.counters["mwi_replayed"] == before
    # and the node still answers
    probe = RawPeer(target=node.listeners[0][1])
    try:
        seen = answers_until_ping(probe, mwi_subscribe(probe, "1001@example.com", 99), 1)
        assert [status(m) for m in seen if status(m)] == [200]
    finally:
        probe.close()


def test_a_watched_mailbox_is_replayed_on_reconnect_once(rig):
    sim, service, node = rig
    peer = RawPeer(target=node.listeners[0][1])
    try:
        answers_until_ping(peer, mwi_subscribe(peer, "1001@example.com", 1), 1)
        wait_until(lambda: len(queries(sim)) == 1)
        for n in range(2, 6):  # more watchers of the same mailbox: no more queries
            answers_until_ping(peer, mwi_subscribe(peer, "1001@example.com", n), n)
        before = service.counters["mwi_replayed"]
        snapshots = service.counters["snapshots"]
        sim.drop_connections()
        wait_until(lambda: service.counters["snapshots"] > snapshots, message="reconnected")
        assert service.counters["mwi_replayed"] == before + 1
        wait_until(lambda: len(queries(sim)) == 2)
    finally:
        peer.close()


def test_mailbox_book_is_bounded_and_coalesces():
    book = MailboxBook(rate=1.0, burst=2, requery_after=60.0, max_mailboxes=3, max_queue=2)
    assert book.claim("a@x", "n1", 0.0, ["s"]) == 1
    assert book.claim("a@x", "n2", 1.0, ["s"]) == 0  # coalesced
    assert book.claim("b@x", "n1", 1.0, ["s"]) == 1
    assert book.claim("c@x", "n1", 1.0, ["s"]) == 0  # queue full
    assert book.claim("d@x", "n1", 1.0, ["s"]) == 0  # book full (a, b, c)
    assert book.counters["book_full"] == 1 and book.counters["queue_full"] == 1
    assert book.due(1.0) == [("a@x", "s"), ("b@x", "s")]
    assert book.due(1.1) == []
    book.release("a@x", "n1", 2.0)
    assert "a@x" in book  # n2 still watches
    book.release("a@x", "n2", 2.0)
    assert "a@x" not in book


def test_a_channel_list_nested_100000_deep_is_a_clean_snapshot_error(rig, caplog):
    sim, service, node = rig
    api = sim.api

    def hostile(command: str) -> str:
        if command.startswith("show channels"):
            return "[" * 100_000 + "]" * 100_000
        return api(command)

    sim.api = hostile
    errors = service.counters["errors"]
    snapshots = service.counters["snapshots"]
    service.bus.publish_control({"Event-Name": "resync", "Switch-ID": "*"})
    wait_until(lambda: service.counters["errors"] > errors, message="snapshot refused")
    assert service.counters["snapshots"] == snapshots
    assert "nested too deep" in caplog.text
    assert "RecursionError" not in caplog.text
    # the bridge goes on: the next resync with a sane answer is a snapshot
    sim.api = api
    service.bus.publish_control({"Event-Name": "resync", "Switch-ID": "*"})
    wait_until(lambda: service.counters["snapshots"] > snapshots, message="snapshot again")
    gevent.sleep(0)
