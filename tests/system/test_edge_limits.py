"""--edge with the real Kamailio edge (contrib/kamailio-edge/kamailio.cfg) in front of a node:
per-source limits count each phone behind the edge, as the edge vouches for it in the Via it
received (its own Via on top; below it the phone's, with received=/rport= when the phone's
sent-by is not where the request came from)."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest

from busylamp.presence.limits import AMPLIFICATION_FACTOR, Limits
from tests.hostile import RawPeer, header, status
from tests.kamailio_util import AUTO_PORT, start_kamailio
from tests.node_util import running_node, sip_address
from tests.system.test_hardening_limits import watcher_is_served

EDGE_CFG = Path(__file__).resolve().parents[2] / "contrib" / "kamailio-edge" / "kamailio.cfg"

pytestmark = [
    pytest.mark.kamailio,
    pytest.mark.skipif(not (shutil.which("kamailio") and shutil.which("sipp")),
                       reason="needs kamailio and sipp"),
]


def subscribe_via_edge(peer: RawPeer, n: int, sent_by: str) -> bytes:
    """A phone's SUBSCRIBE to the edge; ``sent_by`` is what the phone believes its address is."""
    return (
        f"SUBSCRIBE sip:1001@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch=z9hG4bK-edge-{peer.port}-{n};rport\r\n"
        f"From: <sip:66{n:02d}@example.com>;tag=e{n}\r\nTo: <sip:1001@example.com>\r\n"
        f"Call-ID: edge-{peer.port}-{n}\r\nCSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:66{n:02d}@{sent_by}>\r\nMax-Forwards: 70\r\nEvent: dialog\r\n"
        f"Accept: application/dialog-info+xml\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def final_answer(peer: RawPeer, n: int) -> bytes:
    call_id = f"edge-{peer.port}-{n}"
    messages = peer.wait_for(lambda ms: any(
        (status(m) or 0) >= 200 and header(m, "Call-ID") == call_id for m in ms),
        message=f"answer to {call_id}")
    return next(m for m in messages if (status(m) or 0) >= 200
                and header(m, "Call-ID") == call_id)


def test_per_source_limits_count_each_phone_behind_the_edge(tmp_path):
    limits = Limits(max_per_source=1)
    with running_node(transports=("udp",), limits=limits,
                      edges=(ipaddress.ip_network("127.0.0.1/32"),), notify_any_target=False,
                      amplification_factor=AMPLIFICATION_FACTOR) as node:
        dispatcher = tmp_path / "dispatcher.list"
        dispatcher.write_text(f"1 sip:127.0.0.1:{sip_address(node)[1]}\n")
        edge = start_kamailio(EDGE_CFG, {
            "PHONES_PORT": AUTO_PORT, "INSIDE_PORT": AUTO_PORT, "DS_LIST_FILE": str(dispatcher),
            "DS_PING_INTERVAL": 1, "FR_TIMER": 1000, "CHILDREN": 1, "TCP_CHILDREN": 1,
        }, tmp_path)
        edge_address = ("127.0.0.1", edge.ports["PHONES_PORT"])
        natted = RawPeer(target=edge_address, host="127.0.0.2")  # Via says a private address
        honest = RawPeer(target=edge_address, host="127.0.0.3")
        try:
            natted.send(subscribe_via_edge(natted, 1, "192.168.1.50:5060"))
            assert status(final_answer(natted, 1)) == 200
            natted.send(subscribe_via_edge(natted, 2, "192.168.1.50:5060"))
            assert status(final_answer(natted, 2)) == 403  # that phone's one subscription
            honest.send(subscribe_via_edge(honest, 3, f"127.0.0.3:{honest.port}"))
            assert status(final_answer(honest, 3)) == 200  # another phone behind the same edge
        finally:
            natted.close()
            honest.close()
            edge.stop()
        # the edge stamped received=127.0.0.2 on the NATed phone's Via: that is what counted
        assert node.engine.subscriptions.per_origin == {"127.0.0.2": 1, "127.0.0.3": 1}
        assert node.engine.counters["limit_source"] == 1
        watcher_is_served(tmp_path, node)  # a phone straight from 127.0.0.1 (the edge's IP)


def test_a_phone_over_the_rate_gets_480_and_the_edge_keeps_the_node(tmp_path):
    """A 503 (or silence) would make the edge mark the node down and fail over: behind an edge
    one phone's SUBSCRIBE flood is answered 480 with Retry-After, relayed to that phone."""
    limits = Limits(subscribe_rate=0.001, subscribe_burst=1)
    with running_node(transports=("udp",), limits=limits,
                      edges=(ipaddress.ip_network("127.0.0.1/32"),)) as node:
        dispatcher = tmp_path / "dispatcher.list"
        uri = f"sip:127.0.0.1:{sip_address(node)[1]}"
        dispatcher.write_text(f"1 {uri}\n")
        edge = start_kamailio(EDGE_CFG, {
            "PHONES_PORT": AUTO_PORT, "INSIDE_PORT": AUTO_PORT, "DS_LIST_FILE": str(dispatcher),
            "DS_PING_INTERVAL": 1, "FR_TIMER": 1000, "CHILDREN": 1, "TCP_CHILDREN": 1,
        }, tmp_path)
        phone = RawPeer(target=("127.0.0.1", edge.ports["PHONES_PORT"]), host="127.0.0.2")
        try:
            phone.send(subscribe_via_edge(phone, 1, f"127.0.0.2:{phone.port}"))
            assert status(final_answer(phone, 1)) == 200
            phone.send(subscribe_via_edge(phone, 2, f"127.0.0.2:{phone.port}"))
            answer = final_answer(phone, 2)
            assert status(answer) == 480 and header(answer, "Retry-After") == "10"
            listed = edge.rpc("dispatcher.list")
            flags = listed.split(uri, 1)[1].split("FLAGS:", 1)[1].split()[0]
            assert flags.startswith("A"), listed  # still active: no failover
        finally:
            phone.close()
            edge.stop()
        assert node.engine.counters["limit_rate"] == 1
