"""Hostile HTTP at a running node's API: refused early and cheaply; phones (sipp) still served."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager

import gevent
import pytest
from gevent import socket

from busylamp.presence.api import serve_api
from tests.node_util import running_node, settled, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp

pytestmark = pytest.mark.sipp

PRESENTITY = "1001@example.com"
TOKEN = "s3cret"


def update(state: str = "early", call_id: str = "call-1") -> dict:
    return {"Event-Name": "update", "Event-Package": "dialog", "From": "sip:1001@example.com",
            "From-User": "1001", "From-Realm": "example.com", "To": "sip:1002@example.com",
            "Call-ID": call_id, "State": state, "Direction": "recipient", "Expires": 600}


@contextmanager
def api_node(token: str | None = None, **limits):
    with running_node() as node:
        server = serve_api("127.0.0.1", 0, node, token, **limits)
        try:
            yield node, server
        finally:
            server.stop(timeout=1)


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            ) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send ``data`` on a fresh connection and read the answer until the node closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def read_answer(sock) -> tuple[int, dict, bytes]:
    raw = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def publish_json(port: int, payload, headers: dict | None = None) -> tuple[int, dict, bytes]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return exchange(port, request(port, "POST", "/publish", body, hdrs))


def phone_sees_http_publish(tmp_path, node, port: int, headers: dict | None = None,
                            name: str = "sipp") -> None:
    """A sipp phone subscribes; a state published over HTTP reaches it as a NOTIFY."""
    watcher = Watcher(PRESENTITY).subscribe().notify(count=2).unsubscribe().notify()
    sipp = start_sipp(watcher.write(tmp_path / f"{name}.xml"), sip_address(node),
                      tmp_path / name)
    wait_until(lambda: len(node.engine.subscriptions) == 1 and settled(node, PRESENTITY),
               message="sipp subscribed")
    status, _, body = publish_json(port, update("confirmed", f"call-{name}"), headers)
    assert status == 202, body
    assert sipp.wait() == 0, sipp.errors()
    assert "confirmed" in sipp.received("NOTIFY")[1].body


def test_token_is_checked_before_the_body_is_read(tmp_path):
    with api_node(TOKEN) as (node, server):
        port = server.server_port
        socks = []
        try:
            for _ in range(25):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                # the head promises 8 MiB; not one byte of it is sent
                sock.sendall(request(port, "POST", "/publish", headers={
                    "Content-Type": "application/json"}).replace(
                    b"Content-Length: 0", b"Content-Length: 8388608"))
                socks.append(sock)
            answers = [read_answer(sock) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert {status for status, _, _ in answers} == {401}
        assert server.counters["refused_before_body"] == 25
        assert 'busylamp_http_refused_total{reason="unauthorized"} 25' in node.metrics_text()
        phone_sees_http_publish(tmp_path, node, port, {"Authorization": f"Bearer {TOKEN}"})


def test_a_body_over_the_limit_is_refused_before_100_continue():
    with api_node(TOKEN) as (node, server):
        port = server.server_port
        head = request(port, "POST", "/publish", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
            "Expect": "100-continue"}).replace(b"Content-Length: 0",
                                               b"Content-Length: 8388609")
        status, headers, body = exchange(port, head)  # no byte of the body is ever sent
        assert status == 413 and headers["connection"] == "close", body
        assert server.counters["refused_before_body"] == 1
        # at the limit: 100 Continue, and the node waits for the body
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head.replace(b"Content-Length: 8388609", b"Content-Length: 8388608"))
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_large_publish_with_100_continue_is_not_delayed(tmp_path):
    """curl waits for ``100 Continue`` before a body (here up to 30 s): the node sends it at
    once for a head that passes its checks, and refuses a bad one without it."""
    big = tmp_path / "big.json"
    big.write_bytes(json.dumps(update()).encode() + b" " * (2 << 20))  # 2 MiB of JSON space
    with api_node(TOKEN) as (node, server):
        url = f"http://127.0.0.1:{server.server_port}/publish"

        def curl(token: str) -> tuple[str, str, float]:
            """Run curl (stdlib subprocess, polled: gevent's child watcher would reap the
            children of later tests) while this process's hub serves the node."""
            out, err = tmp_path / f"curl-{token}.out", tmp_path / f"curl-{token}.err"
            started = time.monotonic()
            with out.open("wb") as stdout, err.open("wb") as stderr:
                proc = subprocess.Popen(
                    ["curl", "-sS", "-v", "--expect100-timeout", "30",
                     "-H", "Expect: 100-continue", "-H", "Content-Type: application/json",
                     "-H", f"Authorization: Bearer {token}", "--data-binary", f"@{big}",
                     "-o", "-", "-w", "\\n%{http_code}", url], stdout=stdout, stderr=stderr)
                deadline = started + 60
                while proc.poll() is None and time.monotonic() < deadline:
                    gevent.sleep(0.01)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            return out.read_text(), err.read_text(), time.monotonic() - started

        stdout, stderr, took = curl(TOKEN)
        assert stdout.endswith("\n202"), (stdout, stderr)
        assert "< HTTP/1.1 100 Continue" in stderr
        assert took < 10, f"{took:.1f} s: curl waited for its expect timeout"
        assert node.publish_counters["accepted"] == 1
        stdout, stderr, took = curl("wrong")
        assert stdout.endswith("\n401"), (stdout, stderr)
        assert "100 Continue" not in stderr and took < 10
        assert server.counters["refused_before_body"] == 1


def test_publish_needs_application_json(tmp_path):
    with api_node() as (node, server):
        port = server.server_port
        body = json.dumps(update()).encode()
        for headers in ({}, {"Content-Type": "text/plain"},
                        {"Content-Type": "application/x-www-form-urlencoded"}):
            status, _, answer = exchange(port, request(port, "POST", "/publish", body, headers))
            assert status == 415, answer
        assert node.publish_counters["accepted"] == 0
        status, _, _ = publish_json(port, update(), {"Content-Type":
                                                     "application/json; charset=utf-8"})
        assert status == 202
        phone_sees_http_publish(tmp_path, node, port)


@pytest.mark.parametrize("host, allowed", [
    ("evil.example", False), ("evil.example:8080", False), ("127.0.0.1.nip.io", False),
    ("localhost:8080", True), ("127.0.0.1", True), ("[::1]:8080", True),
    ("busylamp.internal", True),
])
def test_foreign_host_names_need_the_token(tmp_path, host, allowed):
    with api_node(allowed_hosts=["busylamp.internal"]) as (node, server):
        port = server.server_port
        data = request(port, "GET", "/subscriptions").replace(
            f"Host: 127.0.0.1:{port}".encode(), f"Host: {host}".encode())
        status, _, _ = exchange(port, data)
        assert status == (200 if allowed else 403)
        publish = request(port, "POST", "/publish", json.dumps(update()).encode(),
                          {"Content-Type": "application/json"}).replace(
            f"Host: 127.0.0.1:{port}".encode(), f"Host: {host}".encode())
        assert exchange(port, publish)[0] == (202 if allowed else 403)
        phone_sees_http_publish(tmp_path, node, port)


def test_foreign_host_with_the_token_is_served(tmp_path):
    with api_node(TOKEN) as (node, server):
        port = server.server_port
        data = request(port, "GET", "/subscriptions", headers={
            "Authorization": f"Bearer {TOKEN}"}).replace(
            f"Host: 127.0.0.1:{port}".encode(), b"Host: evil.example")
        assert exchange(port, data)[0] == 200
        data = request(port, "GET", "/health").replace(
            f"Host: 127.0.0.1:{port}".encode(), b"Host: evil.example")
        assert exchange(port, data)[0] == 403


@pytest.mark.parametrize("payload", [
    b'{"Event-Name": "update", "Event-Package": "dialog", "From-User": "1001", '
    b'"From-Realm": "example.com", "To": "sip:1002@example.com", "Call-ID": "\\ud800", '
    b'"State": "early", "Direction": "recipient"}',
    b'{"Event-Name": "update", "Event-Package": "dialog", "From-User": "1001", '
    b'"From-Realm": "example.com", "To": "sip:1002@example.com", "Call-ID": "\xed\xa0\x80", '
    b'"State": "early", "Direction": "recipient"}',
    b'{"Event-Name": "update", "Event-Package": "dialog", "From-User": "1001", '
    b'"From-Realm": "example.com", "To": "sip:1002@example.com", "Call-ID": "c", '
    b'"State": "early", "Direction": "recipient", "X": ["\\udfff"]}',
])
def test_text_that_is_not_unicode_is_a_400_and_never_stored(tmp_path, payload):
    with api_node() as (node, server):
        port = server.server_port
        status, _, body = publish_json(port, payload)
        assert status == 400, body
        assert node.publish_counters["accepted"] == 0
        status, _, _ = exchange(port, request(port, "GET", f"/presentities/{PRESENTITY}"))
        assert status == 404
        phone_sees_http_publish(tmp_path, node, port)
        status, _, body = exchange(port, request(port, "GET", f"/presentities/{PRESENTITY}"))
        assert status == 200, body


@pytest.mark.parametrize("query", ["cursor=9223372036854775807", "cursor=-1", "cursor=x",
                                   "cursor=%C2%B2", "limit=%C2%B2", "limit=99999999999999999"])
def test_bad_cursor_or_limit_is_a_400(tmp_path, query):
    with api_node() as (node, server):
        port = server.server_port
        status, _, body = exchange(port, request(port, "GET", f"/subscriptions?{query}"))
        assert status == 400, body
        assert exchange(port, request(port, "GET", "/subscriptions?cursor=5"))[0] == 200
        phone_sees_http_publish(tmp_path, node, port)


def test_connection_cap_and_request_deadline(tmp_path):
    with api_node(max_connections=4, request_timeout=0.5) as (node, server):
        port = server.server_port
        # three keep-alive connections, idle after one request each: they hold their slots
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        for sock in idle:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
        try:
            # a slow head: the node answers 408 once its deadline passes, and closes
            slow = socket.create_connection(("127.0.0.1", port), timeout=5)
            slow.sendall(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            wait_until(lambda: server.active == 4, message="4 connections open")
            # the cap: one more connection is answered 503 at once
            status, _, _ = exchange(port, request(port, "GET", "/health"))
            assert status == 503
            started = time.monotonic()
            status, _, _ = read_answer(slow)
            assert status == 408 and time.monotonic() - started < 3
            slow.close()
            # a body that trickles in past the deadline: 408 as well
            trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
            trickle.sendall(request(port, "POST", "/publish", b"{", {
                "Content-Type": "application/json"}).replace(b"Content-Length: 1",
                                                             b"Content-Length: 100"))
            assert read_answer(trickle)[0] == 408
            trickle.close()
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: server.active == 0, message="connections closed")
        # a connection that never sends a request is not kept either
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert read_answer(silent)[0] == 408
        silent.close()
        text = node.metrics_text()
        assert 'busylamp_http_refused_total{reason="connection_limit"} 1' in text
        assert 'busylamp_http_refused_total{reason="request_timeout"} 3' in text
        assert exchange(port, request(port, "GET", "/health"))[0] == 200
        phone_sees_http_publish(tmp_path, node, port)
