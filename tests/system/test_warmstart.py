"""A node that starts late fills its state from a peer before it accepts SUBSCRIBEs."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer

from busylamp.presence.api import serve_api
from busylamp.presence.node.warmstart import PeerError, stream_snapshot
from tests.node_util import publish, running_node, settled, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import free_port, start_sipp
from tests.unit.test_engine import Harness, subscribe

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}


def dialog(state, call_id, seq, user="1001", epoch=1):
    return {
        "Event-Name": "update", "Event-Package": "dialog", "From": f"sip:{user}@example.com",
        "From-User": user, "From-Realm": "example.com", "To": "sip:1002@example.com",
        "Call-ID": call_id, "State": state, "Expires": 600,
        "Bridge-ID": "bridge-1", "Bridge-Epoch": epoch, "Sequence": seq,
    }


def test_engine_answers_503_while_warming_up():
    h = Harness()
    h.engine.accepting = False
    out = h.send(subscribe())
    assert out[0][2].status == 503 and out[0][2].headers.get("Retry-After") == "5"
    assert len(h.engine.subscriptions) == 0
    h.engine.accepting = True
    assert h.send(subscribe(branch="z9hG4bK-again"))[0][2].status == 200


def test_unreachable_peer_is_a_peer_error():
    with pytest.raises(PeerError):
        list(stream_snapshot(f"http://127.0.0.1:{free_port()}", timeout=1))


class SnapshotPeer:
    """A NodeControl serving only ``/snapshot``: ``rows`` records, paused after the first
    ``pause_after`` until ``go`` is set (so a test can see rows arrive while the peer still
    holds the rest)."""

    def __init__(self, rows: int, pause_after: int) -> None:
        self.rows = rows
        self.pause_after = pause_after
        self.go = gevent.event.Event()
        self.produced = 0

    def snapshot(self):
        for index in range(self.rows):
            if index == self.pause_after:
                assert self.go.wait(timeout=10), "the client did not see the first rows"
            self.produced += 1
            yield {"n": index, "pad": "x" * 100}


@contextmanager
def raw_peer(handler):
    """A TCP server on 127.0.0.1 answering every connection with ``handler(sock)``."""
    server = StreamServer(("127.0.0.1", 0), lambda sock, _addr: handler(sock))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.stop(timeout=1)


def test_snapshot_rows_arrive_while_a_large_body_streams():
    peer = SnapshotPeer(rows=30000, pause_after=600)
    server = serve_api("127.0.0.1", 0, peer, "tok")
    try:
        rows = stream_snapshot(f"http://127.0.0.1:{server.server_port}", "tok", timeout=5)
        first = next(rows)
        assert first == {"n": 0, "pad": "x" * 100} and peer.produced < peer.rows
        peer.go.set()
        rest = list(rows)
        assert [row["n"] for row in rest] == list(range(1, peer.rows))
    finally:
        server.stop(timeout=1)


def test_peer_refusal_is_a_peer_error_naming_the_status():
    server = serve_api("127.0.0.1", 0, SnapshotPeer(rows=1, pause_after=1), "tok")
    try:
        with pytest.raises(PeerError, match="answered 401 Unauthorized"):
            list(stream_snapshot(f"http://127.0.0.1:{server.server_port}", "wrong", timeout=5))
    finally:
        server.stop(timeout=1)


def test_a_stream_that_breaks_off_is_a_peer_error_not_a_short_snapshot():
    def handler(sock):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n9\r\n{\"n\": 0}\n\r\n40\r\n{\"n\"")
        sock.close()

    with raw_peer(handler) as url:
        rows = stream_snapshot(url, timeout=5)
        with pytest.raises(PeerError, match="IncompleteRead"):
            list(rows)


def test_a_silent_peer_is_a_peer_error_after_the_timeout():
    def handler(sock):
        sock.recv(65536)
        gevent.sleep(30)  # never answers; ended by the server's stop

    with raw_peer(handler) as url:
        started = time.monotonic()
        with pytest.raises(PeerError, match="timed out"):
            list(stream_snapshot(url, timeout=0.3))
        assert time.monotonic() - started < 5


def test_a_bad_peer_address_is_a_peer_error():
    for url in ("https://127.0.0.1:1", "http://127.0.0.1:notaport", "http://"):
        with pytest.raises(PeerError):
            list(stream_snapshot(url, timeout=1))


@pytest.mark.sipp
def test_late_node_serves_state_published_before_it_started(tmp_path):
    http_port = free_port()
    with running_node() as old:
        publish(old, dialog("confirmed", "call-a", 1), dialog("early", "call-b", 2, user="1003"))
        server = serve_api("127.0.0.1", http_port, old, None)
        try:
            with running_node() as late:
                late.prepare_warm_start()
                warming = gevent.spawn(late.warm_start, [f"http://127.0.0.1:{http_port}"])
                # an update that arrives over the bus while the snapshot streams is kept...
                late.on_bus_message(dialog("terminated", "call-b", 3, user="1003"))
                # ...and one the snapshot already has is not applied twice
                late.on_bus_message(dialog("confirmed", "call-a", 1))
                report = warming.get(timeout=10)
                assert report["peer"] and report["records"] == 2 and report["buffered"] == 2
                assert late.ready and late.engine.accepting
                states = {r.record_id: r.data["State"]
                          for r in late.state.records("dialog", "1001@example.com")}
                assert states == {"call-a": "confirmed"}
                assert late.state.marks()["bridge-1"] == (1, 3)
                watcher = Watcher("1001@example.com").subscribe().notify().unsubscribe().notify()
                sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(late),
                                  tmp_path / "sipp")
                assert sipp.wait() == 0, sipp.errors()
                first = sipp.received("NOTIFY")[0]
                dialogs = ET.fromstring(first.body).findall("d:dialog", NS)
                assert [(d.get("id"), d.find("d:state", NS).text) for d in dialogs] == [
                    ("call-a", "confirmed")
                ]
                wait_until(lambda: settled(late, "1001@example.com"))
        finally:
            server.stop(timeout=1)


def test_shutdown_is_bounded_in_time_and_says_what_it_dropped(caplog):
    h = Harness()
    for i in range(30):
        h.send(subscribe(call_id=f"c{i}", branch=f"z9hG4bK-s{i}", from_tag=f"t{i}"))
    from busylamp.presence.node import PresenceNode

    node = PresenceNode.__new__(PresenceNode)  # only the engine and a clock are needed here
    node.engine, node.clock = h.engine, lambda: h.clock.now
    node._flush = lambda: bool(h.engine.messages_to_send())
    with caplog.at_level("WARNING", logger="busylamp.presence.node.node"):
        ended = node.shutdown_subscriptions(rate=50, timeout=0.25)  # 5 per 0.1 s tick
    assert 5 <= ended <= 15 and len(h.engine.subscriptions) == 30 - ended
    assert any("dropped after" in r.getMessage() for r in caplog.records)
