"""--require-registration against a running node over real sockets, registrations fed as the
bridge sends them over the bus (the real FreeSWITCH: tests/system/test_fs_registration.py)."""

from __future__ import annotations

import ipaddress

import pytest

from busylamp.presence.metrics import render_metrics
from tests.hostile import RawPeer, answers_until_ping, status, subscribe
from tests.node_util import running_node, sip_address
from tests.system.test_hardening_limits import watcher_is_served

pytestmark = pytest.mark.sipp


def registration(user: str, ip: str, expires: int = 600) -> dict:
    return {"Event-Name": "registration", "Switch-ID": "sw1", "User": user,
            "Realm": "example.com", "Network-IP": ip, "Call-ID": f"reg-{user}-{ip}",
            "Expires": expires}


def final(peer: RawPeer, data: bytes, n: int) -> int:
    return [status(m) for m in answers_until_ping(peer, data, n) if (status(m) or 0) >= 200][0]


def test_behind_an_edge_the_vouched_address_must_be_registered(tmp_path):
    with running_node(require_registration=True,
                      edges=(ipaddress.ip_network("127.0.0.3/32"),)) as node:
        node.on_bus_message(registration("6666", "10.0.0.1"))
        node.on_bus_message(registration("2000", "127.0.0.1"))  # the sipp phone
        edge = RawPeer(target=sip_address(node), host="127.0.0.3")
        try:
            via = "Via: SIP/2.0/UDP 192.168.1.9:5060;branch=z9hG4bK-ph;received={};rport=5060"
            assert final(edge, subscribe(edge, call_id="r1", extra=via.format("10.0.0.1")),
                         1) == 200
            assert final(edge, subscribe(edge, call_id="r2", extra=via.format("10.0.0.2")),
                         2) == 403  # registered, but from another address
            assert final(edge, subscribe(edge, call_id="r3"), 3) == 403  # the edge's own
        finally:
            edge.close()
        # a non-edge cannot vouch, and an unregistration ends it
        peer = RawPeer(target=sip_address(node), host="127.0.0.2")
        try:
            extra = "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-x;received=10.0.0.1"
            assert final(peer, subscribe(peer, call_id="r4", extra=extra), 4) == 403
        finally:
            peer.close()
        assert "busylamp_subscribe_unregistered_total 3" in render_metrics(node)
        with pytest.raises(ValueError):
            node.on_bus_message(registration("x y", "10.0.0.1"))  # malformed: counted
        assert node.publish_counters["bus_malformed"] == 1
        watcher_is_served(tmp_path, node)
        node.on_bus_message(registration("2000", "127.0.0.1", expires=0))
        probe = RawPeer(target=sip_address(node))
        try:
            data = subscribe(probe, call_id="r5").replace(b"sip:6666@", b"sip:2000@")
            assert final(probe, data, 5) == 403
        finally:
            probe.close()
