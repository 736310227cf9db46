"""Amplification: NOTIFYs go only where the SUBSCRIBE came from (or through an edge), and a
target that never answered gets at most 3x the SUBSCRIBE's bytes, without retransmissions.

Against a running node over real sockets; sipp is the phone that must still get its full state.
"""

from __future__ import annotations

import pytest

from busylamp.presence.limits import AMPLIFICATION_FACTOR
from busylamp.presence.metrics import render_metrics
from tests.hostile import RawPeer, answers_until_ping, header, method, reply, status, subscribe
from tests.node_util import publish, running_node, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp
from tests.system.test_hardening_limits import watcher_is_served
from tests.system.test_hardening_sip import PRESENTITY, dialog

pytestmark = pytest.mark.sipp

GUARDED = {"amplification_factor": AMPLIFICATION_FACTOR, "notify_any_target": False}


def three_calls(node) -> None:
    for i in range(3):
        publish(node, dialog("confirmed", f"live-call-{i}-" + "x" * 40))


@pytest.mark.parametrize("contact", [
    "<sip:victim@127.0.0.5:5060>",
    "<sip:victim@127.0.0.5:5060;transport=tcp>",
    "<sip:victim@192.0.2.7:5060;transport=tcp>",
], ids=["udp-elsewhere", "tcp-elsewhere", "tcp-remote"])
def test_a_contact_away_from_the_source_is_refused(tmp_path, contact):
    with running_node(**GUARDED) as node:
        peer = RawPeer(target=sip_address(node))
        try:
            seen = answers_until_ping(peer, subscribe(peer, contact=contact), 1)
        finally:
            peer.close()
        assert [status(m) for m in seen] == [403]
        assert b"Contact is not at the source address" in seen[0].split(b"\r\n", 1)[0]
        assert node.engine.counters["notify_sent"] == 0
        assert node.transports.connection_count() == 0  # no TCP connection to anyone
        assert "busylamp_subscribe_target_refused_total 1" in render_metrics(node)
        watcher_is_served(tmp_path, node)


def test_any_target_only_with_the_flag(tmp_path):
    with running_node(amplification_factor=AMPLIFICATION_FACTOR, notify_any_target=True) as node:
        peer = RawPeer(target=sip_address(node))
        try:
            seen = answers_until_ping(
                peer, subscribe(peer, contact="<sip:victim@127.0.0.5:5060>"), 1)
        finally:
            peer.close()
        assert [status(m) for m in seen if status(m)] == [200]


def test_a_silent_target_gets_at_most_3x_and_no_retransmission(tmp_path):
    """Three live calls make the state far bigger than the SUBSCRIBE: the first NOTIFY carries
    the subscription state only; unanswered, it is never retransmitted."""
    with running_node(t1=0.02, timer_f=0.5, **GUARDED) as node:
        three_calls(node)
        peer = RawPeer(target=sip_address(node))
        try:
            request = subscribe(peer)
            peer.send(request)
            peer.wait_for(lambda ms: any(method(m) == "NOTIFY" for m in ms))
            wait_until(lambda: len(node.engine.client_transactions) == 0, message="Timer F")
            seen = answers_until_ping(peer, b"", 2)  # everything sent before is in
        finally:
            peer.close()
        notifies = [m for m in peer.messages if method(m) == "NOTIFY"]
        assert len(notifies) == 1
        assert header(notifies[0], "Content-Length") == "0"
        to_victim = sum(len(m) for m in peer.messages if b"ping-2" not in m)
        assert to_victim <= 3 * len(request), (to_victim, len(request))
        assert node.engine.client_transactions.retransmissions == 0
        assert not seen
        assert 'busylamp_notify_budgeted_total{outcome="minimal"} 1' in render_metrics(node)


def test_a_target_that_answers_gets_the_full_state(tmp_path):
    with running_node(**GUARDED) as node:
        three_calls(node)
        peer = RawPeer(target=sip_address(node))
        try:
            peer.send(subscribe(peer))
            first = next(m for m in peer.wait_for(
                lambda ms: any(method(m) == "NOTIFY" for m in ms)) if method(m) == "NOTIFY")
            assert header(first, "Content-Length") == "0"
            peer.send(reply(first))
            full = peer.wait_for(lambda ms: sum(method(m) == "NOTIFY" for m in ms) == 2)[-1]
        finally:
            peer.close()
        assert all(f"live-call-{i}".encode() in full for i in range(3))
        assert header(full, "Subscription-State").startswith("active")


def test_a_sipp_phone_ends_up_with_the_full_state(tmp_path):
    """RFC 6665 correctness with the budget: a real phone subscribing to a busy presentity
    gets a NOTIFY it answers, then one with every call."""
    with running_node(**GUARDED) as node:
        three_calls(node)
        watcher = Watcher(PRESENTITY).subscribe().notify(count=2).unsubscribe().notify()
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "w")
        assert sipp.wait() == 0, sipp.errors()
        notifies = sipp.received("NOTIFY")
        assert all(f"live-call-{i}" in notifies[1].body for i in range(3))
        assert node.engine.client_transactions.retransmissions == 0


def test_a_tiny_subscribe_gets_its_notify_only_when_it_speaks_again(tmp_path):
    """A SUBSCRIBE so small that even a bare NOTIFY would exceed 3x of it: the NOTIFY is held
    back, and the in-dialog refresh (the watcher is there) releases the state."""
    with running_node(**GUARDED) as node:
        peer = RawPeer(target=sip_address(node))
        port = peer.port
        try:
            tiny = (f"SUBSCRIBE sip:1001@example.com SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:{port};"
                    f"branch=z9hG4bK-t\r\nf: <sip:6@example.com>;tag=a\r\nt: <sip:1001@example."
                    f"com>\r\ni: t\r\nCSeq: 1 SUBSCRIBE\r\nm: <sip:127.0.0.1:{port}>\r\no: dialog"
                    f"\r\nl: 0\r\n\r\n").encode()
            seen = answers_until_ping(peer, tiny, 1)
            assert [status(m) for m in seen] == [200]  # and no NOTIFY: held back
            assert node.engine.counters["notify_withheld"] == 1
            to_tag = header(seen[0], "To").rpartition("tag=")[2]
            refresh = tiny.replace(b"CSeq: 1", b"CSeq: 2").replace(
                b"t: <sip:1001@example.com>", f"t: <sip:1001@example.com>;tag={to_tag}".encode()
            ).replace(b"branch=z9hG4bK-t", b"branch=z9hG4bK-t2")
            peer.send(refresh)
            peer.wait_for(lambda ms: any(method(m) == "NOTIFY" for m in ms), message="NOTIFY")
        finally:
            peer.close()


def test_a_refresh_moving_the_target_starts_its_budget_afresh(tmp_path):
    """A verified dialog refreshed with a Contact on another port (a spoofed refresh aiming at
    a victim on the source's host) gets no retransmissions and a bounded NOTIFY there."""
    with running_node(t1=0.02, timer_f=0.5, **GUARDED) as node:
        three_calls(node)
        peer = RawPeer(target=sip_address(node))
        victim = RawPeer(target=sip_address(node))
        try:
            peer.send(subscribe(peer))
            first = next(m for m in peer.wait_for(
                lambda ms: any(method(m) == "NOTIFY" for m in ms)) if method(m) == "NOTIFY")
            peer.send(reply(first))
            peer.wait_for(lambda ms: sum(method(m) == "NOTIFY" for m in ms) == 2)
            peer.send(reply([m for m in peer.messages if method(m) == "NOTIFY"][-1]))
            wait_until(lambda: len(node.engine.client_transactions) == 0)
            retransmitted = node.engine.client_transactions.retransmissions  # to the peer
            ok = next(m for m in peer.messages if status(m) == 200)
            to_tag = header(ok, "To").rpartition("tag=")[2]
            refresh = subscribe(peer, cseq=2, contact=f"<sip:6666@127.0.0.1:{victim.port}>",
                                extra="").replace(
                b"To: <sip:1001@example.com>", f"To: <sip:1001@example.com>;tag={to_tag}".encode())
            peer.send(refresh)
            victim.wait_for(lambda ms: any(method(m) == "NOTIFY" for m in ms))
            wait_until(lambda: len(node.engine.client_transactions) == 0, message="Timer F")
            answers_until_ping(victim, b"", 5)
        finally:
            peer.close()
            victim.close()
        notifies = [m for m in victim.messages if method(m) == "NOTIFY"]
        assert len(notifies) == 1  # no retransmission to the new target
        assert sum(len(m) for m in notifies) <= 3 * len(refresh)
        assert node.engine.client_transactions.retransmissions == retransmitted
