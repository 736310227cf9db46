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
from busylamp.presence.node import warmstart
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


class FakePeer:
    """A NodeControl serving only ``/snapshot``: the given lines as update objects, or as rows
    (``snapshot_rows``) when ``rows`` is given."""

    def __init__(self, lines: list, rows: list | None = None) -> None:
        self.lines = lines
        if rows is not None:
            self.snapshot_rows = lambda: iter(rows)

    def snapshot(self):
        return iter(self.lines)


@contextmanager
def api_of(node):
    server = serve_api("127.0.0.1", 0, node, None)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.stop(timeout=1)


def test_a_node_serves_rows_to_who_asks_and_update_objects_to_the_others():
    with running_node() as old, api_of(old) as url:
        publish(old, dialog("confirmed", "call-a", 1), dialog("early", "call-b", 2, user="1003"))
        marks, *objects = stream_snapshot(url)
        assert marks == {"marks": {"bridge-1": [1, 2]}}
        assert sorted(o["Call-ID"] for o in objects) == ["call-a", "call-b"]
        marks, *lines = stream_snapshot(url, rows=True)
        assert marks == {"marks": {"bridge-1": [1, 2]}} and len(lines) == 1
        assert sorted((row[1], row[2], row[3]["State"], row[8]) for row in lines[0]) == [
            ("1001@example.com", "call-a", "confirmed", 1), ("1003@example.com", "call-b", "early", 2)]


def test_warm_start_takes_update_objects_from_a_peer_without_rows():
    peer = FakePeer([{"marks": {"bridge-1": [1, 9]}}, dialog("confirmed", "call-a", 4),
                     {"Event-Name": "update", "Event-Package": "dialog"},  # invalid: skipped
                     dialog("early", "call-b", 5, user="1003")])
    with api_of(peer) as url, running_node() as late:
        report = late.warm_start([url])
        assert (report["peer"], report["records"], report["skipped"]) == (url, 2, 1)
        assert [r.record_id for r in late.state.records("dialog", "1003@example.com")] == ["call-b"]
        assert late.state.marks()["bridge-1"] == (1, 9) and late.ready


def test_refused_rows_are_counted_and_the_first_is_logged_by_line_and_row(caplog):
    good = ["presence", "1001@example.com", "presence", {"State": "open"}, 60, None, "b1", 1, 3]
    bad = ["presence", "1002@example.com", "presence", {"State": "open", "Note": "a\r\nX: y"}, 60, None,
           None, None, None]
    peer = FakePeer([], rows=[{"marks": {"b1": [1, 3]}}, [good, bad]])
    with api_of(peer) as url, running_node() as late, caplog.at_level("WARNING"):
        report = late.warm_start([url])
        assert (report["peer"], report["records"], report["skipped"]) == (url, 1, 1)
        assert late.state.records("presence", "1002@example.com") == []
        assert [r.data for r in late.state.records("presence", "1001@example.com")] == [
            {"State": "open"}]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("snapshot line 2, row 1: a field holds a control character" in w
               for w in warnings), warnings


def test_malformed_marks_fail_the_peer_and_the_next_source_is_used():
    row = ["presence", "1001@example.com", "presence", {"State": "open"}, 60, None, "b1", 1, 3]
    broken = FakePeer([], rows=[{"marks": {"b1": [1]}}, [row]])
    good = FakePeer([], rows=[{"marks": {"b1": [1, 3]}}, [row]])
    with api_of(broken) as first, api_of(good) as second, running_node() as late:
        report = late.warm_start([first, second])
        assert (report["peer"], report["records"]) == (second, 1)
        assert late.state.marks()["b1"] == (1, 3)


def _chunked_peer(body: bytes):
    def handler(sock):
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-busylamp-rows\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                     % (len(body), body))
        sock.close()
    return raw_peer(handler)


def test_a_line_that_is_not_json_fails_the_peer_naming_the_line():
    with _chunked_peer(b'{"marks": {}}\n[["presence", "1001@e' + b"\n[]\n") as url:
        with pytest.raises(PeerError, match="bad snapshot line 2"):
            list(stream_snapshot(url, timeout=5, rows=True))
        with running_node() as late:
            report = late.warm_start([url], resync_wait=0)
            assert report["peer"] is None and late.ready  # the next source: a resync request


def test_a_line_without_end_is_a_peer_error_past_the_limit(monkeypatch):
    monkeypatch.setattr(warmstart, "MAX_LINE", 1000)
    with (_chunked_peer(b'{"marks": {}}\n[' + b"[1]," * 400) as url,
          pytest.raises(PeerError, match="line longer than 1000 bytes")):
        list(stream_snapshot(url, timeout=5, rows=True))
    with _chunked_peer(b'{"marks": {}}\n[' + b"[1]," * 100 + b"[1]]") as url:  # last, no newline
        assert list(stream_snapshot(url, timeout=5, rows=True))[1] == [[1]] * 101


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
