"""Replay every RFC 4475 / RFC 5118 torture message at a running node, over UDP and TCP.

What INDEX.tsv expects: a valid request is never answered 400; an invalid one is answered 400
(or another 4xx/5xx its line names) or dropped; a response is dropped silently; and after each
message the server still answers OPTIONS.
"""

from __future__ import annotations

import csv
import socket
import time
from pathlib import Path

import gevent
import pytest

from tests.conftest import FIXTURES
from tests.node_util import running_node, sip_address

TORTURE = FIXTURES / "sip-torture"
ROWS = list(csv.DictReader((TORTURE / "INDEX.tsv").open(), delimiter="\t")) if TORTURE.is_dir() \
    else []
# Invalid messages that INDEX.tsv says a robust element may also process normally.
MAY_PROCESS = {"trws.dat", "baddate.dat", "regbadct.dat", "badaspec.dat", "baddn.dat",
               "escruri.dat", "unksm2.dat", "mismatch02.dat", "ipv6-bug-abnf-3-colons.dat"}

OPTIONS = (
    b"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/{T} 127.0.0.1:9;branch=z9hG4bK-alive-{N}\r\n"
    b"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
    b"Call-ID: alive-{N}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def _status(data: bytes) -> int:
    first = data.split(b"\r\n", 1)[0].split(b" ")
    assert first[0] == b"SIP/2.0", data[:80]
    return int(first[1])


def _udp_exchange(address, payload: bytes, wait: float) -> list[bytes]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    replies: list[bytes] = []
    try:
        sock.sendto(payload, address)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                replies.append(sock.recv(65535))
                deadline = min(deadline, time.monotonic() + 0.05)
            except BlockingIOError:
                gevent.sleep(0.005)
    finally:
        sock.close()
    return replies


def _tcp_exchange(address, payload: bytes, wait: float) -> list[bytes]:
    sock = socket.create_connection(address)
    sock.setblocking(False)
    data = b""
    try:
        sock.sendall(payload)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65535)
                if not chunk:
                    break
                data += chunk
                deadline = min(deadline, time.monotonic() + 0.05)
            except BlockingIOError:
                gevent.sleep(0.005)
    finally:
        sock.close()
    return [m + b"\r\n\r\n" for m in data.split(b"\r\n\r\n") if m.startswith(b"SIP/2.0")]


@pytest.mark.skipif(not ROWS, reason="shared torture fixtures not present")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_every_torture_message_over_the_wire(transport):
    exchange = _udp_exchange if transport == "udp" else _tcp_exchange
    with running_node() as node:
        address = sip_address(node)
        for n, row in enumerate(ROWS):
            name = Path(row["file"]).name
            payload = (TORTURE / row["file"]).read_bytes()
            if transport == "tcp" and name == "dblreq.dat":
                payload = payload.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"  # one message per stream
            expected = row["expected"].lower()
            must_answer = row["kind"] == "request" and "drop" not in expected
            may_400 = row["validity"] == "invalid" or "400" in expected
            replies = exchange(address, payload, 1.0 if must_answer else 0.3)
            statuses = [_status(r) for r in replies]
            label = f"{row['file']} over {transport}: {statuses} (expected: {row['expected']})"
            if row["kind"] == "response":
                assert statuses == [], label
                continue
            if transport == "tcp" and name == "clerr.dat":
                assert statuses == [], label  # the stream waits for the promised body
            elif transport == "tcp" and name == "inv2543.dat":
                # no Content-Length: a stream cannot be framed (RFC 3261 18.3), the server closes
                assert statuses == [], label
            elif must_answer:
                assert len(statuses) == 1, label
            if row["validity"] == "invalid" and name not in MAY_PROCESS:
                assert all(s >= 400 for s in statuses), label
            if not may_400:
                assert 400 not in statuses, label
            # the server is still up and answering
            alive = exchange(address, OPTIONS.replace(b"{T}", transport.upper().encode())
                             .replace(b"{N}", str(n).encode()), 2.0)
            assert [_status(r) for r in alive] == [200], f"not alive after {label}"
        assert node.engine.counters["sip_malformed"] > 0
