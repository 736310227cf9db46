"""Batched UDP system calls (recvmmsg/sendmmsg extension) and their recvfrom/sendto fallback,
alone and under SipTransports."""

from __future__ import annotations

import socket as stdsocket
import time

import gevent
import pytest
from gevent import socket

from busylamp.presence.node.mmsg import DatagramBatcher, batching_available
from busylamp.presence.node.transport import SipTransports, receive_queue_fill
from tests.polling import wait_until

MODES = [pytest.param(True, id="batched", marks=pytest.mark.skipif(
             not batching_available(), reason="python -m busylamp.presence.node.buildext not run")),
         pytest.param(False, id="fallback")]


def _udp() -> stdsocket.socket:
    s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


@pytest.mark.parametrize("batched", MODES)
def test_batcher_moves_datagrams_both_ways_and_skips_bad_addresses(batched: bool):
    a, b = _udp(), _udp()
    try:
        sender, receiver = DatagramBatcher(a, batched=batched), DatagramBatcher(b, batched=batched)
        assert sender.batched is batched and receiver.recv() == []
        dest = b.getsockname()
        items = [(b"m%d" % i, dest) for i in range(100)]
        items.insert(10, (b"lost", ("not-an-ip", 5060)))
        assert sender.send(items) == (101, 1)
        got: list = []
        deadline = time.monotonic() + 3
        while len(got) < 100 and time.monotonic() < deadline:
            got += receiver.recv()
        assert [d for d, _ in got] == [b"m%d" % i for i in range(100)]
        assert {addr for _, addr in got} == {a.getsockname()}
        assert max(len(receiver.recv()), 0) == 0
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("batched", MODES)
def test_transport_answers_a_burst_and_sends_queued_datagrams(batched: bool):
    def echo(data: bytes, source: tuple[str, int], transport: str, conn_id: int | None) -> None:
        t.send("udp", source, b"re:" + data)

    t = SipTransports(echo, udp_batch=batched)
    peer = socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    try:
        host, port = t.listen("udp", "127.0.0.1", 0)
        assert t._udp[0].batcher.batched is batched
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(3)
        for burst in range(3):  # 100 datagrams: more than one receive batch
            for i in range(100):
                peer.sendto(b"x%d" % i, (host, port))
            answers = sorted(peer.recv(100) for _ in range(100))
            assert answers == sorted(b"re:x%d" % i for i in range(100)), burst
        # sent from another greenlet (a timer, an HTTP publish): the writer flushes it
        gevent.spawn(lambda: [t.send("udp", peer.getsockname(), b"n%d" % i)
                              for i in range(5)]).join()
        assert [peer.recv(100) for _ in range(5)] == [b"n%d" % i for i in range(5)]
        t.send("udp", ("no-such-host.invalid", 9), b"x")
        wait_until(lambda: t.counters["send_errors"] == 1, timeout=5)
    finally:
        t.close()
        peer.close()


@pytest.mark.parametrize("batched", MODES)
def test_poll_udp_handles_queued_datagrams_from_the_callers_greenlet(batched: bool):
    seen: list[bytes] = []
    t = SipTransports(lambda data, *rest: seen.append(data), udp_batch=batched)
    peer = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    try:
        addr = t.listen("udp", "127.0.0.1", 0)
        for i in range(10):
            peer.sendto(b"a%d" % i, addr)
        # queued in the kernel (loopback delivers within sendto); the reader greenlet has not run
        assert receive_queue_fill(t._udp[0].sock) > 0
        assert t.poll_udp() == 10 and seen == [b"a%d" % i for i in range(10)]
        assert t.poll_udp() == 0
    finally:
        t.close()
        peer.close()


@pytest.mark.parametrize("batched", MODES)
def test_backlog_is_measured_after_each_full_batch_and_cleared_once_drained(batched: bool):
    seen: list[bytes] = []
    fills: list[float] = []
    t = SipTransports(lambda data, *rest: seen.append(data), udp_batch=batched,
                      on_backlog=fills.append)
    peer = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    try:
        addr = t.listen("udp", "127.0.0.1", 0)
        batch = t._udp[0].batcher.batch
        for i in range(4 * batch + 10):  # queued before the reader greenlet runs
            peer.sendto(b"q%d" % i, addr)
        wait_until(lambda: len(seen) == 4 * batch + 10)
        # after each of the four full batches, what was still queued (as the kernel counts it:
        # it releases read memory in steps, so the reading need not fall batch by batch); then
        # the batch that drained the socket
        assert len(fills) == 5 and fills[-1] == 0.0
        assert all(0 < fill < 1 for fill in fills[:4])
        assert t.backlog == 0.0
        peer.sendto(b"lone", addr)  # a partial batch on an empty queue: nothing to report
        wait_until(lambda: seen[-1] == b"lone")
        assert len(fills) == 5
    finally:
        t.close()
        peer.close()
