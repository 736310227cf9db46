"""SipTransports over real loopback sockets (gevent sockets, no monkey-patching)."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent import socket

from busylamp.presence.node.transport import SipTransports

MESSAGE = (
    b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\n"
    b"From: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 4\r\n\r\nbody"
)

Received = list[tuple[bytes, tuple[str, int], str, int | None]]


def _wait(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before deadline")
        gevent.sleep(0.005)


def _recv_until(sock: socket.socket, size: int, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def received() -> Received:
    return []


@pytest.fixture
def transports(received: Received) -> Iterator[SipTransports]:
    t = SipTransports(lambda *args: received.append(args), max_tcp_buffer=2048, max_datagram=1500)
    yield t
    t.close()


def test_udp_echo_via_handler_and_send(received: Received) -> None:
    transports: SipTransports

    def echo(data: bytes, source: tuple[str, int], transport: str, conn_id: int | None) -> None:
        received.append((data, source, transport, conn_id))
        transports.send(transport, source, b"echo:" + data, conn_id)

    transports = SipTransports(echo, max_datagram=1500)
    try:
        addr = transports.listen("udp", "127.0.0.1", 0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.settimeout(3.0)
        client.sendto(MESSAGE, addr)
        data, _ = client.recvfrom(65536)
        assert data == b"echo:" + MESSAGE
        assert received[0][1] == client.getsockname()
        assert received[0][2:] == ("udp", None)
        client.sendto(b"x" * 1600, addr)  # oversized: dropped and counted
        client.sendto(b"\r\n\r\n", addr)  # keep-alive: ignored
        client.sendto(b"after", addr)
        _wait(lambda: len(received) == 2)
        assert received[1][0] == b"after"
        assert transports.counters["datagrams_oversized"] == 1
        client.close()
    finally:
        transports.close()


def test_handler_exception_does_not_end_reader(received: Received) -> None:
    def flaky(data: bytes, *rest: object) -> None:
        received.append((data, ("", 0), "udp", None))
        raise RuntimeError("boom")

    transports = SipTransports(flaky)
    try:
        addr = transports.listen("udp", "127.0.0.1", 0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.sendto(b"one", addr)
        client.sendto(b"two", addr)
        _wait(lambda: len(received) == 2)
        assert transports.counters["handler_errors"] == 2
        client.close()
    finally:
        transports.close()


def test_tcp_framing_two_in_one_segment_and_split(transports: SipTransports,
                                                  received: Received) -> None:
    addr = transports.listen("tcp", "127.0.0.1", 0)
    client = socket.create_connection(addr)
    client.sendall(MESSAGE + MESSAGE)
    _wait(lambda: len(received) == 2)
    client.sendall(MESSAGE[:25])
    client.sendall(MESSAGE[25:])
    _wait(lambda: len(received) == 3)
    # the half message was not dispatched alone: the next whole one arrives as the fourth
    client.sendall(MESSAGE)
    _wait(lambda: len(received) >= 4)
    assert len(received) == 4
    assert all(r[0] == MESSAGE and r[2] == "tcp" for r in received)
    assert received[0][1] == client.getsockname()
    assert len({r[3] for r in received}) == 1 and received[0][3] is not None
    assert transports.counters["tcp_connections"] == 1
    client.close()


def test_tcp_crlf_ping_answered(transports: SipTransports) -> None:
    addr = transports.listen("tcp", "127.0.0.1", 0)
    client = socket.create_connection(addr)
    client.sendall(b"\r\n\r\n")
    assert _recv_until(client, 2) == b"\r\n"
    client.close()


def test_tcp_overflow_closes(transports: SipTransports) -> None:
    addr = transports.listen("tcp", "127.0.0.1", 0)
    client = socket.create_connection(addr)
    client.sendall(b"A" * 4096)  # no header end within max_tcp_buffer (2048)
    assert _recv_until(client, 1) == b""  # server closed the connection
    assert transports.counters["tcp_overflow_closed"] == 1
    client.close()


def test_tcp_missing_content_length_closes(transports: SipTransports) -> None:
    addr = transports.listen("tcp", "127.0.0.1", 0)
    client = socket.create_connection(addr)
    client.sendall(MESSAGE.replace(b"Content-Length: 4\r\n", b""))
    assert _recv_until(client, 1) == b""
    assert transports.counters["tcp_framing_closed"] == 1
    client.close()


def test_tcp_send_by_conn_id_and_by_dest(transports: SipTransports, received: Received) -> None:
    addr = transports.listen("tcp", "127.0.0.1", 0)
    client = socket.create_connection(addr)
    client.sendall(MESSAGE)
    _wait(lambda: len(received) == 1)
    _, source, _, conn_id = received[0]
    assert transports.send("tcp", ("192.0.2.1", 9), b"one;", conn_id)  # conn_id wins over dest
    assert transports.send("tcp", source, b"two")  # open connection found by peer address
    assert _recv_until(client, 7) == b"one;two"
    client.close()


def test_tcp_send_connects_without_blocking(received: Received) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    transports = SipTransports(lambda *args: received.append(args))
    try:
        started = time.monotonic()
        assert transports.send("tcp", server.getsockname(), b"queued-1;")
        assert transports.send("tcp", server.getsockname(), b"queued-2")
        assert time.monotonic() - started < 0.5
        server.settimeout(3.0)
        peer, _ = server.accept()
        assert _recv_until(peer, 17) == b"queued-1;queued-2"
        peer.sendall(MESSAGE)  # replies on the outgoing connection reach the handler
        _wait(lambda: len(received) == 1)
        assert received[0][0] == MESSAGE and received[0][2] == "tcp"
        peer.close()
    finally:
        transports.close()
        server.close()


def test_tcp_connect_failure_counted() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    transports = SipTransports(lambda *args: None)
    try:
        assert transports.send("tcp", ("127.0.0.1", closed_port), b"x")
        _wait(lambda: transports.counters["send_errors"] == 1)
    finally:
        transports.close()


def test_bind_error_raises_oserror(transports: SipTransports) -> None:
    addr = transports.listen("udp", "127.0.0.1", 0)
    other = SipTransports(lambda *args: None)
    try:
        with pytest.raises(OSError) as info:
            other.listen("udp", addr[0], addr[1])
        assert info.value.errno == errno.EADDRINUSE
        tcp_addr = transports.listen("tcp", "127.0.0.1", 0)
        with pytest.raises(OSError):
            other.listen("tcp", tcp_addr[0], tcp_addr[1])
    finally:
        other.close()


def test_udp_send_without_listener_fails() -> None:
    transports = SipTransports(lambda *args: None)
    try:
        assert transports.send("udp", ("127.0.0.1", 9), b"x") is False
        assert transports.counters["send_errors"] == 1
    finally:
        transports.close()


def test_ipv6_udp_if_available(received: Received) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    transports = SipTransports(lambda *args: received.append(args))
    try:
        try:
            addr = transports.listen("udp", "::1", 0)
        except OSError:
            pytest.skip("::1 not configured")
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        client.bind(("::1", 0))
        client.sendto(b"hello6", addr)
        _wait(lambda: len(received) == 1)
        assert received[0][1] == client.getsockname()[:2]
        client.close()
    finally:
        transports.close()
