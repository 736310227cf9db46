"""Hostile SIP at a running node: what it answers, and that real phones (sipp) are still served.

Every test sends its hostile input over a real socket to an in-process node, asserts the node's
answer, then runs a sipp watcher against the same node.
"""

from __future__ import annotations

import json

import pytest
from gevent import socket as gsocket

from busylamp.presence.api import serve_api
from busylamp.presence.engine import PresenceEngine
from tests.hostile import RawPeer, answers_until_ping, header, method, reply, status, subscribe
from tests.node_util import publish, running_node, settled, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp

pytestmark = pytest.mark.sipp

PRESENTITY = "1001@example.com"


def dialog(state: str, call_id: str = "call-1") -> dict:
    return {
        "Event-Name": "update", "Event-Package": "dialog",
        "From": "sip:1001@example.com", "From-User": "1001", "From-Realm": "example.com",
        "To": "sip:1002@example.com", "To-User": "1002", "To-Realm": "example.com",
        "Call-ID": call_id, "State": state, "Direction": "recipient", "Expires": 600,
    }


def watcher_is_served(tmp_path, node, transport: str = "udp", name: str = "sipp") -> None:
    """A sipp phone subscribes, sees a state change, unsubscribes: all NOTIFYs arrive."""
    before = len(node.engine.subscriptions.watchers("dialog", PRESENTITY))
    watcher = Watcher(PRESENTITY).subscribe().notify(count=2).unsubscribe().notify()
    sipp = start_sipp(watcher.write(tmp_path / f"{name}.xml"), sip_address(node),
                      tmp_path / name, transport=transport)
    wait_until(lambda: len(node.engine.subscriptions.watchers("dialog", PRESENTITY)) > before
               and settled(node, PRESENTITY), message="sipp subscribed")
    publish(node, dialog("early", f"call-{name}"))
    assert sipp.wait() == 0, sipp.errors()
    notifies = sipp.received("NOTIFY")
    assert len(notifies) == 3
    assert "early" in notifies[1].body
    assert notifies[2].header("Subscription-State") == "terminated;reason=timeout"


# -- 1 and 2: validate before storing; misdirected NOTIFYs --------------------------------------

HOSTILE = [
    # (extra header or None, Contact or None (the peer's own), expected status, reason fragment)
    ("Record-Route: <>", None, 400, "Record-Route"),
    ("Record-Route: <tel:+15550100>", None, 400, "Record-Route is not a SIP URI"),
    ("Record-Route: sip:", None, 400, "Record-Route"),
    ("Record-Route: <sip:>", None, 400, "Record-Route"),
    ('Record-Route: "proxy <sip:10.0.0.1;lr', None, 400, "Record-Route"),
    ("Record-Route: <sip:10.0.0.1;lr>, <>", None, 400, "Record-Route"),
    ("Record-Route: <sips:10.0.0.1;lr>", None, 416, "TLS"),
    (None, "<sips:6666@127.0.0.1:5061>", 416, "TLS"),
    (None, "<tel:+15550100>", 400, "Contact is not a SIP URI"),
    (None, "<sip:6666@127.0.0.1:{port};transport=tls>", 400, "transport"),
    (None, "<sip:6666@127.0.0.1:{port}?Subject=hi>", 400, "Headers in Contact"),
    (None, "<sip:6666@127.0.0.1:0>", 400, "port"),
    (None, "*", 400, "Contact"),
    (None, "<sip:6666@0.0.0.0:5060>", 400, "Contact points at an unspecified"),
    (None, "<sip:6666@224.0.0.1:5060>", 400, "Contact points at an unspecified, multicast"),
    ("Record-Route: <sip:[::]:5060;lr>", None, 400, "Record-Route points at"),
]


@pytest.mark.parametrize("extra, contact, expected, reason", HOSTILE,
                         ids=[h[0] or h[1] for h in HOSTILE])
def test_unusable_subscribe_gets_one_answer_and_is_not_stored(tmp_path, extra, contact,
                                                              expected, reason):
    with running_node() as node:
        peer = RawPeer(target=sip_address(node))
        try:
            contact_value = contact.format(port=peer.port) if contact else None
            seen = answers_until_ping(peer, subscribe(peer, extra=extra or "",
                                                      contact=contact_value), 1)
        finally:
            peer.close()
        # exactly one final answer, and no NOTIFY (to 0.0.0.0:5060, to port 5061, anywhere)
        assert [status(m) for m in seen] == [expected], seen
        assert reason.encode() in seen[0].split(b"\r\n", 1)[0], seen[0]
        assert node.engine.counters["notify_sent"] == 0
        assert len(node.engine.subscriptions) == 0
        # the presentity's publishes and the legitimate watchers are untouched
        assert publish(node, dialog("confirmed", "call-x")) == 1
        watcher_is_served(tmp_path, node)


def test_bad_from_tag_is_refused_before_the_200(tmp_path):
    with running_node() as node:
        peer = RawPeer(target=sip_address(node))
        try:
            seen = answers_until_ping(peer, subscribe(peer, from_tag='"x"'), 1)
        finally:
            peer.close()
        assert [status(m) for m in seen] == [400]
        assert len(node.engine.subscriptions) == 0
        watcher_is_served(tmp_path, node)


def _break(sub) -> None:
    """Make a stored subscription's NOTIFYs fail to build (what an unvalidated route used to do)."""
    sub.route = ("<>",)


def test_a_notify_that_cannot_be_built_ends_only_its_subscription(tmp_path, caplog):
    with running_node(min_expires=1) as node:
        peer = RawPeer(target=sip_address(node))
        try:
            seen = answers_until_ping(peer, subscribe(peer), 1)
            assert [status(m) for m in seen if status(m)] == [200]
            notify = next(m for m in peer.wait_for(
                lambda ms: any(method(m) == "NOTIFY" for m in ms)) if method(m) == "NOTIFY")
            peer.send(reply(notify))
            wait_until(lambda: settled(node, PRESENTITY), message="initial NOTIFY answered")
        finally:
            peer.close()
        broken = node.engine.subscriptions.watchers("dialog", PRESENTITY)[0]
        _break(broken)
        # a sipp watcher subscribes after the broken one: fan-out reaches it all the same
        watcher = Watcher(PRESENTITY).subscribe().notify(count=2)
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "w")
        wait_until(lambda: len(node.engine.subscriptions.watchers("dialog", PRESENTITY)) == 2,
                   message="sipp subscribed")
        wait_until(lambda: settled(node, PRESENTITY))
        # the publish over the HTTP API is a 202, not a 400, though one watcher's NOTIFY fails
        server = serve_api("127.0.0.1", 0, node, None)
        try:
            body = json.dumps(dialog("early")).encode()
            with gsocket.create_connection(("127.0.0.1", server.server_port), timeout=5) as sock:
                sock.sendall(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                             b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
                assert sock.recv(100).startswith(b"HTTP/1.1 202")
        finally:
            server.stop(timeout=1)
        assert sipp.wait() == 0, sipp.errors()
        assert "early" in sipp.received("NOTIFY")[1].body
        counters = node.engine.counters
        assert counters["notify_errors"] == 1
        assert counters["subscriptions_removed_notify_error"] == 1
        assert broken not in node.engine.subscriptions.watchers("dialog", PRESENTITY)
        assert "busylamp_notify_failed_total{outcome=\"error\"} 1" in node.metrics_text()
        assert "subscription removed" in caplog.text
        # timers and shutdown go on: the remaining (sipp) dialog is terminated at stop
        _break(node.engine.subscriptions.watchers("dialog", PRESENTITY)[0])
        node.stop(terminate=True, timeout=2)
        assert counters["notify_errors"] == 2
        assert caplog.text.count("subscription removed") == 1  # rate-limited


# -- 3: forged responses --------------------------------------------------------------------------


def test_forged_481_from_elsewhere_does_not_end_a_subscription(tmp_path):
    # long T1: no retransmission while sipp holds its answer back
    with running_node(t1=5.0, t2=5.0, timer_f=30.0) as node:
        watcher = (Watcher(PRESENTITY).subscribe().notify()
                   .notify(answer=None).pause(1500).reply(200).unsubscribe().notify())
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "w")
        wait_until(lambda: len(node.engine.subscriptions) == 1 and settled(node, PRESENTITY))
        sub = node.engine.subscriptions.watchers("dialog", PRESENTITY)[0]
        publish(node, dialog("early"))
        branch = sub.inflight
        assert branch is not None
        attacker = RawPeer(target=sip_address(node))
        try:
            forged = (
                f"SIP/2.0 481 Call/Transaction Does Not Exist\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{sip_address(node)[1]};branch={{b}}\r\n"
                f"From: <sip:{PRESENTITY}>;tag={sub.tag}\r\nTo: <sip:2000@example.com>;tag=x\r\n"
                f"Call-ID: {sub.call_id}\r\nCSeq: {sub.cseq} NOTIFY\r\nContent-Length: 0\r\n\r\n"
            )
            # the real branch (as if guessed), and a spray of old-style sequential guesses
            attacker.send(forged.replace("{b}", branch).encode())
            prefix = branch[: -16]
            for n in range(1, 200):
                attacker.send(forged.replace("{b}", f"{prefix}{n:x}").encode())
            wait_until(lambda: node.engine.counters["notify_responses_wrong_source"] == 1
                       and node.engine.counters["notify_unmatched_responses"] >= 199)
        finally:
            attacker.close()
        assert sub in node.engine.subscriptions.watchers("dialog", PRESENTITY)
        assert sub.inflight == branch
        assert sipp.wait() == 0, sipp.errors()  # its real 200 and its unsubscribe were honoured
        assert node.engine.counters["subscriptions_removed_notify_rejected"] == 0
        assert node.engine.counters["subscriptions_removed_unsubscribe"] == 1
        assert "busylamp_sip_responses_wrong_source_total 1" in node.metrics_text()
        watcher_is_served(tmp_path, node, name="after")


def test_branches_and_tags_are_unguessable():
    import base64

    from busylamp.presence.sip import is_token
    from busylamp.presence.sip.tokens import token64
    from busylamp.presence.subscriptions import new_tag

    branches = [token64() for _ in range(5000)]
    tags = [new_tag() for _ in range(5000)]
    assert len(set(branches + tags)) == len(branches) + len(tags)
    assert all(len(t) == 16 and int(t, 16) >= 0 for t in branches)  # 64 bits each
    assert all(len(t) == 12 and len(base64.urlsafe_b64decode(t)) == 9 for t in tags)  # 72 bits
    assert all(is_token(t) for t in tags)  # fits a To-tag as it is (RFC 3261 25.1)
    assert PresenceEngine  # the engine draws its branches from token64 (see the wire test)


# -- 5: --trusted everywhere; transport errors counted ---------------------------------------------


def test_untrusted_sender_gets_403_first_even_in_a_dialog(tmp_path):
    import ipaddress

    trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    with running_node(trusted=trusted) as node:
        # a trusted sipp phone holds a dialog; an outsider on 127.0.0.2 replays its identifiers
        watcher = Watcher(PRESENTITY).subscribe().notify().pause(300).unsubscribe().notify()
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "w")
        wait_until(lambda: len(node.engine.subscriptions) == 1, message="sipp subscribed")
        sub = node.engine.subscriptions.watchers("dialog", PRESENTITY)[0]
        outsider = RawPeer(target=sip_address(node), host="127.0.0.2")
        try:
            in_dialog = (subscribe(outsider, call_id=sub.call_id, from_tag=sub.remote_tag,
                                   cseq=50).decode()
                         .replace("To: <sip:1001@example.com>",
                                  f"To: <sip:1001@example.com>;tag={sub.tag}")
                         .replace("Event: dialog", "Event: bogus").encode())
            outsider.send(in_dialog)
            outsider.send(subscribe(outsider, call_id="outsider-2").replace(
                b"Event: dialog", b"Event: bogus"))
            outsider.send(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:"
                          + str(outsider.port).encode() + b";branch=z9hG4bK-o\r\n"
                          b"From: <sip:o@x>;tag=o\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: o\r\n"
                          b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            # malformed yet answerable: the outsider learns nothing more than 403 either
            outsider.send(subscribe(outsider, call_id="outsider-3").replace(
                b"Max-Forwards: 70", b"Max-Forwards: many"))
            seen = outsider.wait_for(lambda ms: len(ms) == 4)
        finally:
            outsider.close()
        assert [status(m) for m in seen] == [403, 403, 403, 403]
        assert not any(b"Allow-Events" in m or b"Allow:" in m for m in seen)
        assert node.engine.counters["sip_untrusted"] == 4
        assert "busylamp_sip_untrusted_total 4" in node.metrics_text()
        assert sipp.wait() == 0, sipp.errors()  # the trusted phone's dialog went on untouched
        assert node.engine.counters["subscriptions_removed_unsubscribe"] == 1


def test_tcp_framing_and_handler_errors_are_counted(tmp_path, monkeypatch):
    from gevent import socket

    with running_node() as node:
        address = sip_address(node)
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(b"SUBSCRIBE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n")  # no length
            assert sock.recv(100) == b""  # the node closed the stream
        real = node.engine.receive

        def explode(data, *args):
            if b"EXPLODE" in data:
                raise RuntimeError("engine bug")
            return real(data, *args)

        monkeypatch.setattr(node.engine, "receive", explode)
        peer = RawPeer(target=address)
        try:
            peer.send(b"EXPLODE")
            seen = answers_until_ping(peer, b"\r\nEXPLODE\r\n", 1)
        finally:
            peer.close()
        assert seen == []
        text = node.metrics_text()
        assert 'busylamp_sip_transport_errors_total{kind="tcp_framing"} 1' in text
        assert 'busylamp_sip_transport_errors_total{kind="handler"} 2' in text
        watcher_is_served(tmp_path, node, transport="tcp")


def test_a_broken_subscription_expiring_does_not_stop_the_timers(tmp_path, caplog):
    with running_node(min_expires=1) as node:
        peer = RawPeer(target=sip_address(node))
        try:
            seen = answers_until_ping(peer, subscribe(peer, expires=1), 1)
            notify = next(m for m in peer.wait_for(
                lambda ms: any(method(m) == "NOTIFY" for m in ms)) if method(m) == "NOTIFY")
            assert status(seen[0]) == 200
            peer.send(reply(notify))
            wait_until(lambda: settled(node, PRESENTITY), message="initial NOTIFY answered")
        finally:
            peer.close()
        _break(node.engine.subscriptions.watchers("dialog", PRESENTITY)[0])
        # at expiry its final NOTIFY cannot be built: counted, and the clock loop goes on
        wait_until(lambda: node.engine.counters["notify_errors"] == 1, timeout=5)
        assert node.engine.counters["subscriptions_removed_expired"] == 1
        assert "engine timer handling failed" not in caplog.text
        watcher = Watcher(PRESENTITY).subscribe(expires=1).notify(count=2)
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "w")
        assert sipp.wait() == 0, sipp.errors()  # its own expiry NOTIFY came from the timers
        assert sipp.received("NOTIFY")[1].header("Subscription-State") == \
            "terminated;reason=timeout"


def test_hostile_subscribe_then_sigterm_exits_0(tmp_path):
    """`busylamp run` as a process: the hostile SUBSCRIBE gets its one 400, a phone is served,
    and SIGTERM (terminating every subscription) exits 0 without a traceback."""
    from tests.system.test_cli_subprocess import run_node

    with run_node(tmp_path) as node:
        peer = RawPeer(target=("127.0.0.1", node.sip_port))
        try:
            seen = answers_until_ping(peer, subscribe(peer, extra="Record-Route: <>"), 1)
        finally:
            peer.close()
        assert [status(m) for m in seen] == [400]
        watcher = Watcher(PRESENTITY).subscribe().notify(count=2)
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), ("127.0.0.1", node.sip_port),
                          tmp_path / "w")
        wait_until(lambda: len(sipp.received("NOTIFY")) == 1, message="initial NOTIFY")
        assert node.proc.stop(timeout=10) == 0, node.proc.stderr
        assert sipp.wait() == 0, sipp.errors()
        assert sipp.received("NOTIFY")[1].header("Subscription-State") == \
            "terminated;reason=deactivated"
        assert "Traceback" not in node.proc.stderr


@pytest.mark.parametrize("contact", ["<sips:6666@phone.example>",
                                     "<sip:6666@10.1.2.3:5066;transport=ws>",
                                     "<sip:6666@10.1.2.3:5061;transport=tls>"])
def test_behind_a_proxy_the_contact_may_need_what_only_the_proxy_has(tmp_path, contact):
    """A TLS or WebSocket phone behind an edge proxy: the NOTIFY goes to the proxy (the first
    route, plain SIP), with the phone's Contact as Request-URI."""
    with running_node() as node:
        proxy = RawPeer(target=sip_address(node))
        try:
            rr = f"Record-Route: <sip:127.0.0.1:{proxy.port};lr>, <sips:edge.example;lr>"
            seen = answers_until_ping(proxy, subscribe(proxy, contact=contact, extra=rr), 1)
            assert [status(m) for m in seen if status(m)] == [200]
            notify = next(m for m in proxy.wait_for(
                lambda ms: any(method(m) == "NOTIFY" for m in ms)) if method(m) == "NOTIFY")
            assert notify.startswith(f"NOTIFY {contact[1:-1]} SIP/2.0".encode())
            assert header(notify, "Route") == f"<sip:127.0.0.1:{proxy.port};lr>"
            proxy.send(reply(notify))
            wait_until(lambda: settled(node, PRESENTITY), message="NOTIFY answered")
        finally:
            proxy.close()
        watcher_is_served(tmp_path, node)


def _host_address() -> str | None:
    """A non-loopback IPv4 address of this host, or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_remote_sender_cannot_aim_notifies_at_this_hosts_loopback(tmp_path):
    host = _host_address()
    if host is None:
        pytest.skip("no non-loopback address on this host")
    with running_node() as node:
        remote = RawPeer(target=sip_address(node), host=host)
        try:
            contact = "<sip:6666@127.0.0.1:11211>"  # say, a memcached on the node's host
            seen = answers_until_ping(remote, subscribe(remote, contact=contact), 1)
        finally:
            remote.close()
        assert [status(m) for m in seen] == [400]
        assert b"Contact points at a loopback address" in seen[0]
        assert node.engine.counters["notify_sent"] == 0
        watcher_is_served(tmp_path, node)
