"""Limits on new subscriptions, against a running node over real sockets, with sipp still served.

The attacker is a raw peer on 127.0.0.2 (or an "edge" on 127.0.0.3 speaking for many phones);
the legitimate sipp phone is on 127.0.0.1, so per-source limits tell them apart.
"""

from __future__ import annotations

import ipaddress

import pytest

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.lifecycle import IDLE
from busylamp.presence.limits import Limits, TokenBuckets
from busylamp.presence.metrics import render_metrics
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates
from tests.hostile import RawPeer, answers_until_ping, header, options, reply, status, subscribe
from tests.node_util import publish, running_node, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp
from tests.system.test_hardening_sip import PRESENTITY, dialog

pytestmark = pytest.mark.sipp

ATTACKER = "127.0.0.2"


def attacker(node) -> RawPeer:
    return RawPeer(target=sip_address(node), host=ATTACKER)


def flood(peer: RawPeer, count: int, *, start: int = 0, from_tag: str | None = None,
          expires: int = 600, watcher: str | None = None, extra: str = "") -> list[int]:
    """``count`` initial SUBSCRIBEs (distinct dialogs) then a ping: the final statuses, in order."""
    contact = f"<sip:6666@{peer.sock.getsockname()[0]}:{peer.port}>"
    statuses: list[int] = []
    for i in range(start, start + count):
        data = subscribe(peer, call_id=f"flood-{i}", from_tag=from_tag or f"t{i}",
                         contact=contact, expires=expires, extra=extra)
        if watcher is not None:
            data = data.replace(b"sip:6666@example.com", f"sip:{watcher}".encode())
        seen = answers_until_ping(peer, data, 10_000 + i)
        statuses += [s for s in map(status, seen) if s is not None and s >= 200]
    return statuses


def watcher_is_served(tmp_path, node, name: str = "sipp") -> None:
    """A sipp phone (sip:2000@example.com from 127.0.0.1) subscribes, sees a state change and
    unsubscribes: all three NOTIFYs arrive, whatever the attacker's subscriptions are doing."""
    def phone_settled() -> bool:
        subs = [s for s in node.engine.subscriptions.watchers("dialog", PRESENTITY)
                if "2000@" in s.remote_uri]
        return bool(subs) and all(s.inflight is None and not s.dirty for s in subs)

    watcher = Watcher(PRESENTITY).subscribe().notify(count=2).unsubscribe().notify()
    sipp = start_sipp(watcher.write(tmp_path / f"{name}.xml"), sip_address(node),
                      tmp_path / name)
    wait_until(phone_settled, message="sipp subscribed")
    publish(node, dialog("early", f"call-{name}"))
    assert sipp.wait() == 0, sipp.errors()
    notifies = sipp.received("NOTIFY")
    assert len(notifies) == 3
    assert "early" in notifies[1].body
    assert notifies[2].header("Subscription-State") == "terminated;reason=timeout"


def metric(node, line: str) -> bool:
    return line in render_metrics(node)


def test_subscriptions_per_source_address_are_capped(tmp_path):
    with running_node(limits=Limits(max_per_source=3)) as node:
        peer = attacker(node)
        try:
            assert flood(peer, 5) == [200, 200, 200, 403, 403]
        finally:
            peer.close()
        assert len(node.engine.subscriptions) == 3
        assert metric(node, 'busylamp_subscribe_limited_total{limit="source"} 2')
        watcher_is_served(tmp_path, node)


def test_subscriptions_per_watcher_are_capped(tmp_path):
    with running_node(limits=Limits(max_per_watcher=2)) as node:
        peer = attacker(node)
        try:
            assert flood(peer, 3) == [200, 200, 403]
            # the same AOR from another address is the same watcher; another AOR is not
            assert flood(peer, 1, start=10, watcher="6667@example.com") == [200]
        finally:
            peer.close()
        assert metric(node, 'busylamp_subscribe_limited_total{limit="watcher"} 1')
        watcher_is_served(tmp_path, node)


def test_total_subscriptions_beyond_the_cap_get_503_with_retry_after(tmp_path):
    with running_node(limits=Limits(max_subscriptions=3), min_expires=1) as node:
        peer = attacker(node)
        try:
            flood(peer, 3, expires=1)
            contact = f"<sip:6666@{ATTACKER}:{peer.port}>"
            seen = answers_until_ping(peer, subscribe(peer, call_id="over", contact=contact), 1)
        finally:
            peer.close()
        final = [m for m in seen if status(m) and status(m) >= 200]
        assert [status(m) for m in final] == [503]
        assert header(final[0], "Retry-After") == "10"
        assert metric(node, 'busylamp_subscribe_limited_total{limit="total"} 1')
        # the attacker's one-second subscriptions expire: a phone gets its turn
        wait_until(lambda: len(node.engine.subscriptions) == 0, message="subscriptions expired")
        watcher_is_served(tmp_path, node)


@pytest.mark.parametrize("drop", [False, True], ids=["reject", "drop"])
def test_initial_subscribes_per_source_are_rate_limited(tmp_path, drop):
    limits = Limits(subscribe_rate=0.001, subscribe_burst=3, rate_drop=drop)
    with running_node(limits=limits) as node:
        peer = attacker(node)
        try:
            statuses = flood(peer, 5)
        finally:
            peer.close()
        # dropped SUBSCRIBEs get no answer at all: the ping after each proves it
        assert statuses == ([200] * 3 if drop else [200, 200, 200, 503, 503])
        assert metric(node, 'busylamp_subscribe_limited_total{limit="rate"} 2')
        watcher_is_served(tmp_path, node)  # another source has a bucket of its own


def _via_edge(phone_ip: str, n: int) -> str:
    """The Via a Kamailio edge leaves below its own: the phone's, stamped received/rport."""
    return f"Via: SIP/2.0/UDP 192.168.1.{n}:5060;branch=z9hG4bK-ph{n};received={phone_ip};rport=5060"


def test_an_edge_vouches_for_each_phone_behind_it(tmp_path):
    limits = Limits(max_per_source=2, subscribe_rate=0.001, subscribe_burst=2)
    with running_node(limits=limits, edges=(_net("127.0.0.3/32"),)) as node:
        edge = RawPeer(target=sip_address(node), host="127.0.0.3")
        try:
            phone_a = _via_edge("10.0.0.1", 1)
            phone_b = _via_edge("10.0.0.2", 2)
            # 480, not 503: a 503 would make a Kamailio edge mark this node down
            assert flood(edge, 3, extra=phone_a) == [200, 200, 480]
            # another phone behind the same edge is not throttled with the first one
            assert flood(edge, 2, start=10, extra=phone_b) == [200, 200]
        finally:
            edge.close()
        assert node.engine.subscriptions.per_origin == {"10.0.0.1": 2, "10.0.0.2": 2}
        watcher_is_served(tmp_path, node)


def test_a_non_edge_cannot_vouch(tmp_path):
    with running_node(limits=Limits(max_per_source=2), edges=(_net("127.0.0.3/32"),)) as node:
        peer = attacker(node)
        try:
            statuses = [flood(peer, 1, start=i, extra=_via_edge(f"10.0.1.{i}", i))[0]
                        for i in range(3)]
        finally:
            peer.close()
        assert statuses == [200, 200, 403]
        assert node.engine.subscriptions.per_origin == {ATTACKER: 2}
        watcher_is_served(tmp_path, node)


def test_pending_notifies_are_capped_and_released(tmp_path):
    """A dead Contact (the attacker never answers) holds NOTIFY transactions; beyond the cap a
    SUBSCRIBE gets 503 until Timer F frees them."""
    with running_node(limits=Limits(max_pending_notifies=2), t1=0.1, timer_f=1.0) as node:
        peer = attacker(node)
        try:
            assert flood(peer, 3) == [200, 200, 503]
        finally:
            peer.close()
        assert metric(node, 'busylamp_subscribe_limited_total{limit="pending"} 1')
        wait_until(lambda: len(node.engine.client_transactions) == 0, message="Timer F")
        assert len(node.engine.subscriptions) == 0
        watcher_is_served(tmp_path, node)


def test_fan_out_to_a_huge_presentity_goes_in_steps(tmp_path):
    """Over a real socket: a publish to a presentity with thousands of watchers lets an OPTIONS
    from elsewhere through before the fan-out is over."""
    with running_node(fanout_batch=50) as node:
        engine = node.engine
        peer = attacker(node)
        try:
            contact = f"<sip:6666@{ATTACKER}:{peer.port}>"
            now = node.clock()
            for i in range(2000):  # straight into the engine: the setup, not the test
                engine.receive(subscribe(peer, call_id=f"big-{i}", from_tag=f"b{i}",
                                         contact=contact), (ATTACKER, peer.port), "udp", None, now)
                engine.messages_to_send()
            for sub in engine.subscriptions:
                engine.client_transactions.cancel(sub.inflight)
                sub.inflight = None
                sub.phase = IDLE  # as if answered
            seen_at: list[int] = []
            receive = engine.receive

            def receive_and_note(data, *args):
                if data.startswith(b"OPTIONS"):
                    seen_at.append(engine.backlog)
                receive(data, *args)

            engine.receive = receive_and_note
            probe = RawPeer(target=sip_address(node))
            try:
                publish(node, dialog("early", "big"))
                backlog_after_publish = engine.backlog
                probe.send(options(probe, 1))
                probe.wait_for(lambda ms: any(status(m) == 200 for m in ms))
            finally:
                probe.close()
                del engine.receive
        finally:
            peer.close()
        assert backlog_after_publish == 2000 - 50
        assert seen_at and seen_at[0] > 0, "the OPTIONS waited for the whole fan-out"
        wait_until(lambda: engine.backlog == 0 and engine.counters["notify_sent"] == 4000)


def test_fan_out_steps_in_the_sans_io_engine():
    state = PresenceState(REGISTRY, PackageOptions())
    engine = PresenceEngine(EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}, fanout_batch=10),
                            state, REGISTRY)
    now = 100.0

    class Peer:
        port = 5070
        sock = None

    for i in range(35):
        engine.receive(subscribe(Peer, call_id=f"s{i}", from_tag=f"f{i}",
                                 contact="<sip:6666@192.0.2.9:5070>"),
                       ("192.0.2.9", 5070), "udp", None, now)
    first = engine.messages_to_send()
    for _, _, data, _ in first:
        if data.startswith(b"NOTIFY"):
            engine.receive(_ok(data), ("192.0.2.9", 5070), "udp", None, now)
    engine.apply(parse_updates([dialog("early")]), now)
    sent = [len(engine.messages_to_send())]
    while engine.backlog:
        assert engine.get_timer() <= now
        engine.handle_timer(now)
        sent.append(len(engine.messages_to_send()))
    assert sent == [10, 10, 10, 5]


def _ok(request: bytes) -> bytes:
    return reply(request)


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_token_buckets_refill_and_stay_bounded():
    buckets = TokenBuckets(rate=2.0, burst=2, max_entries=8)
    assert [buckets.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.allow("a", 0.5)  # one token back after half a second
    for i in range(20):
        buckets.allow(f"x{i}", 100.0 + i)
    assert len(buckets) <= 8
