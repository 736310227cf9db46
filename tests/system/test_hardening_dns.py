"""Host names in Contacts are looked up off the loop: a DNS server that never answers (the
test's own) cannot stall the node; lookups are bounded, cached, and end what cannot resolve."""

from __future__ import annotations

import struct

import gevent
import pytest
from gevent import socket

from tests.hostile import RawPeer, answers_until_ping, method, reply, status, subscribe
from tests.node_util import publish, running_node, settled, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp

pytestmark = pytest.mark.sipp

PRESENTITY = "1001@example.com"


class DnsServer:
    """A UDP DNS server of the test's own: answers A queries from ``answers``, or (blackhole)
    reads every query and never answers. ``queries`` lists the names asked, in order."""

    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.answers = answers
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self._reader = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            data, peer = self.sock.recvfrom(4096)
            name, qtype, end = _question(data)
            self.queries.append(name)
            if self.answers is None:
                continue  # the blackhole: read and drop
            ip = self.answers.get(name) if qtype == 1 else None
            header = data[:2] + struct.pack(">HHHHH", 0x8180, 1, 1 if ip else 0, 0, 0)
            answer = b""
            if ip:
                answer = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip)
            self.sock.sendto(header + data[12:end] + answer, peer)

    def close(self) -> None:
        self._reader.kill()
        self.sock.close()


def _question(data: bytes) -> tuple[str, int, int]:
    labels, at = [], 12
    while data[at]:
        labels.append(data[at + 1: at + 1 + data[at]].decode())
        at += 1 + data[at]
    qtype = struct.unpack(">H", data[at + 1: at + 3])[0]
    return ".".join(labels), qtype, at + 5


def resolver_options(dns: DnsServer, **extra) -> dict:
    return {"server": dns.address, **extra}


def watcher_is_served(tmp_path, node, name: str = "sipp") -> None:
    watcher = Watcher(PRESENTITY).subscribe().notify(count=2).unsubscribe().notify()
    sipp = start_sipp(watcher.write(tmp_path / f"{name}.xml"), sip_address(node), tmp_path / name)
    def sipp_settled() -> bool:
        subs = [s for s in node.engine.subscriptions if s.remote_uri.startswith("sip:2000@")]
        return bool(subs) and all(s.inflight is None and not s.dirty for s in subs)

    wait_until(sipp_settled, message="sipp subscribed")
    publish(node, {"Event-Name": "update", "Event-Package": "dialog",
                   "From": "sip:1001@example.com", "From-User": "1001",
                   "From-Realm": "example.com", "To": "sip:1002@example.com",
                   "Call-ID": f"call-{name}", "State": "early", "Direction": "recipient"})
    assert sipp.wait() == 0, sipp.errors()
    assert "early" in sipp.received("NOTIFY")[1].body


def test_a_dns_server_that_never_answers_does_not_stall_the_node(tmp_path):
    dns = DnsServer()  # the blackhole
    try:
        with running_node(resolver_options=resolver_options(dns, timeout=3.0)) as node:
            peer = RawPeer(target=sip_address(node))
            try:
                seen = answers_until_ping(peer, subscribe(
                    peer, contact="<sip:6666@phone-1.invalid:5060>"), 1)
            finally:
                peer.close()
            assert [status(m) for m in seen] == [200]  # accepted; the NOTIFY waits for DNS
            wait_until(lambda: "phone-1.invalid" in dns.queries, message="lookup sent")
            assert node.resolver.in_flight == 1
            # the lookup hangs; the node goes on serving phones meanwhile
            watcher_is_served(tmp_path, node)
            assert node.resolver.in_flight == 1
            wait_until(lambda: node.engine.counters["subscriptions_removed_unresolvable"] == 1,
                       timeout=10, message="unresolvable subscription ended")
            assert node.resolver.counters["timeout"] == 1
            assert node.engine.counters["notify_sent"] == 3  # sipp's only
            text = node.metrics_text()
            assert 'busylamp_subscriptions_removed_total{reason="unresolvable"} 1' in text
            assert 'busylamp_dns_lookups_total{outcome="timeout"} 1' in text
    finally:
        dns.close()


def test_lookups_in_flight_are_bounded(tmp_path):
    dns = DnsServer()
    try:
        options = resolver_options(dns, timeout=0.5, max_in_flight=3)
        with running_node(resolver_options=options) as node:
            peer = RawPeer(target=sip_address(node))
            try:
                for n in range(10):
                    peer.send(subscribe(peer, call_id=f"dns-{n}",
                                        contact=f"<sip:6666@phone-{n}.invalid:5060>"))
                peer.wait_for(lambda ms: len(ms) == 10, message="ten 200s")
            finally:
                peer.close()
            assert node.resolver.in_flight == 3 and node.resolver.queued == 7
            text = node.metrics_text()
            assert "busylamp_dns_lookups_in_flight 3" in text
            assert "busylamp_dns_lookups_queued 7" in text
            wait_until(lambda: node.engine.counters["subscriptions_removed_unresolvable"] == 10,
                       timeout=15, message="all ten ended")
            assert set(dns.queries) == {f"phone-{n}.invalid" for n in range(10)}
            watcher_is_served(tmp_path, node)
    finally:
        dns.close()


def test_a_resolved_name_gets_its_notify_and_the_answer_is_cached(tmp_path):
    dns = DnsServer({"phone.test": "127.0.0.1"})
    try:
        with running_node(resolver_options=resolver_options(dns)) as node:
            peer = RawPeer(target=sip_address(node))
            try:
                for n in range(2):
                    before = len(peer.poll())
                    peer.send(subscribe(peer, call_id=f"named-{n}",
                                        contact=f"<sip:6666@phone.test:{peer.port}>"))
                    messages = peer.wait_for(lambda ms, b=before: any(
                        method(m) == "NOTIFY" for m in ms[b:]), message="NOTIFY via DNS")
                    notify = next(m for m in messages[before:] if method(m) == "NOTIFY")
                    peer.send(reply(notify))
                    wait_until(lambda: settled(node, PRESENTITY), message="NOTIFY answered")
            finally:
                peer.close()
            assert len(node.engine.subscriptions) == 2
            assert {s.dest for s in node.engine.subscriptions} == {("127.0.0.1", peer.port)}
            assert node.resolver.counters["resolved"] == 1
            assert node.resolver.counters["cached"] == 1
            assert dns.queries.count("phone.test") >= 1
            assert node.engine.counters["notify_responses_wrong_source"] == 0
            watcher_is_served(tmp_path, node)
    finally:
        dns.close()
