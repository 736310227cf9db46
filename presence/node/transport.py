"""Thin gevent adapter: SIP over UDP and TCP sockets, one greenlet per socket / connection.

Incoming messages go to `handler(data, source, transport, conn_id)` inline from the reading
greenlet. TCP is framed by `StreamFramer`; outgoing TCP data is queued per connection and written
by a short-lived writer greenlet so `send()` never blocks its caller.

UDP: a reader drains its socket in batches (``recvmmsg`` through presence.node.mmsg, or a
``recvfrom`` loop) without a greenlet switch per datagram. Outgoing datagrams are queued per
socket and leave in batches (``sendmmsg``): after each received batch is handled, and otherwise
from a hub callback run once the sending greenlet yields (so the NOTIFYs of one publish leave
together); only a full socket buffer makes a greenlet wait for writability. After a batch that
filled the receive call, ``on_backlog`` is told how full the socket's receive queue still is
(one ``getsockopt`` per batch; 0.0 once a batch drained it): the node sheds new SUBSCRIBEs
past ``--shed-backlog``.

TCP limits: at most ``max_tcp_connections`` connections and ``max_tcp_per_source`` from one IP
address; a new connection over either cap takes the place of the oldest one that carries no
subscription (``in_use(conn_id)`` says which do), or is closed when there is none. A connection
that carries no subscription is closed after ``tcp_unused_timeout`` without input, any connection
after ``tcp_idle_timeout``; a message must arrive complete within ``tcp_message_timeout`` of its
first byte. Running out of file descriptors (EMFILE) is counted and logged once a minute.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket as _stdsocket
import struct
import time
from collections.abc import Callable
from itertools import count, islice

import gevent
import gevent.pool
from gevent import socket

from busylamp.presence.sip import ParseError, StreamFramer

from .mmsg import DatagramBatcher

__all__ = ["Handler", "SipTransports"]

log = logging.getLogger(__name__)

Handler = Callable[[bytes, tuple[str, int], str, int | None], None]

SOCKET_BUFFER = 8 * 1024 * 1024
CONNECT_TIMEOUT = 5.0
ERROR_LOG_INTERVAL = 10.0
FD_LOG_INTERVAL = 60.0
EVICT_SCAN = 64  # connections looked at for one eviction, at most
UDP_YIELD_AFTER = 1024  # datagrams a reader handles before letting other greenlets run
SO_MEMINFO = 55  # Linux getsockopt: a socket's memory, receive queue bytes first, buffer second
_FD_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def raise_fd_limit() -> int:
    """Raise this process's soft file-descriptor limit to its hard limit; return the soft limit
    now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def receive_queue_fill(sock: _stdsocket.socket) -> float:
    """How full ``sock``'s receive queue is, 0 to 1 (bytes the kernel holds for it over its
    buffer, both as the kernel counts them); 0.0 where the kernel does not tell. Linux gives
    read UDP memory back in steps of a quarter of the buffer while more is queued, so the
    reading may be up to 0.25 above the queue itself."""
    try:
        held, size = struct.unpack("II", sock.getsockopt(_stdsocket.SOL_SOCKET, SO_MEMINFO, 8))
    except (OSError, struct.error):
        return 0.0
    return held / size if size else 0.0


SK_MEMINFO_DROPS = 8  # index of the drop counter in SO_MEMINFO's array (Linux >= 4.6)


def receive_drops(sock: _stdsocket.socket) -> int:
    """Datagrams the kernel dropped for ``sock`` (its receive queue was full) since it was
    opened; 0 where the kernel does not tell."""
    try:
        info = sock.getsockopt(_stdsocket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
    except OSError:
        return 0
    if len(info) < 4 * (SK_MEMINFO_DROPS + 1):
        return 0
    return struct.unpack_from("I", info, 4 * SK_MEMINFO_DROPS)[0]


def _family(host: str) -> int:
    return _stdsocket.AF_INET6 if ":" in host else _stdsocket.AF_INET


def _peer(addr: tuple) -> tuple[str, int]:
    return addr[0], addr[1]


class _Connection:
    __slots__ = ("conn_id", "peer", "sock", "framer", "out", "out_bytes", "writer", "closed",
                 "last_input", "partial_since")

    def __init__(self, conn_id: int, peer: tuple[str, int], sock: socket.socket | None,
                 max_buffer: int):
        self.conn_id = conn_id
        self.peer = peer
        self.sock = sock
        self.framer = StreamFramer(max_buffer)
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.writer: gevent.Greenlet | None = None
        self.closed = False
        self.last_input = time.monotonic()
        self.partial_since: float | None = None  # when an incomplete message began arriving


class _UdpSocket:
    """One bound UDP socket: its batcher, its send queue, its reader and (while the socket
    buffer is full) its writer greenlet."""

    __slots__ = ("sock", "family", "batcher", "out", "flush_due", "reader", "writer")

    def __init__(self, sock: _stdsocket.socket, bufsize: int, batched: bool | None):
        self.sock = sock
        self.family = sock.family
        self.batcher = DatagramBatcher(sock, bufsize, batched=batched)
        self.out: list[tuple[bytes, tuple[str, int]]] = []
        self.flush_due = False  # a flush callback is scheduled on the hub
        self.reader: gevent.Greenlet | None = None
        self.writer: gevent.Greenlet | None = None


class SipTransports:
    """UDP and TCP listeners plus outgoing TCP connections for the presence engine."""

    def __init__(self, handler: Handler, *, max_datagram: int = 65507,
                 max_tcp_buffer: int = 65536, tcp_idle_timeout: float = 3600.0,
                 max_tcp_connections: int = 10000, max_tcp_per_source: int = 256,
                 tcp_unused_timeout: float = 60.0, tcp_message_timeout: float = 10.0,
                 in_use: Callable[[int], bool] | None = None, udp_batch: bool | None = None,
                 on_backlog: Callable[[float], None] | None = None,
                 on_datagram: Handler | None = None,
                 after_datagrams: Callable[[], None] | None = None):
        self.handler = handler
        # a received batch of datagrams: each to ``on_datagram`` (else ``handler``), then one
        # call of ``after_datagrams`` before the answers are sent (what the handler would do
        # after every message, once a batch: send the answers, wake the clock)
        self.on_datagram = on_datagram or handler
        self.after_datagrams = after_datagrams
        # told how full the UDP receive queue is before each batch is handled: measured after a
        # full batch (one system call per batch), 0.0 once a batch found the socket drained
        self.on_backlog = on_backlog
        self.backlog = 0.0
        self.udp_batch = udp_batch  # None: batched system calls when the extension is built
        self.max_datagram = max_datagram
        self.max_tcp_buffer = max_tcp_buffer
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_tcp_per_source = max_tcp_per_source
        self.tcp_unused_timeout = tcp_unused_timeout
        self.tcp_message_timeout = tcp_message_timeout
        self.in_use = in_use or (lambda conn_id: False)
        self.counters: dict[str, int] = {
            "datagrams_oversized": 0,
            "tcp_overflow_closed": 0,
            "tcp_framing_closed": 0,
            "tcp_connections": 0,
            "tcp_refused": 0,
            "tcp_evicted": 0,
            "tcp_unused_closed": 0,
            "tcp_idle_closed": 0,
            "tcp_message_timeouts": 0,
            "fd_exhausted": 0,
            "send_errors": 0,
            "handler_errors": 0,
        }
        self._udp: list[_UdpSocket] = []
        self._listeners: list[socket.socket] = []
        self._conns: dict[int, _Connection] = {}  # oldest first (scans move busy ones back)
        self._by_source: dict[str, dict[int, _Connection]] = {}
        self._by_peer: dict[tuple[str, int], _Connection] = {}
        self._ids = count(1)
        self._group = gevent.pool.Group()
        self._closed = False
        self._last_error_log = 0.0
        self._suppressed_errors = 0
        self._fd_logged_at = float("-inf")
        self._fd_logged_count = 0
        self._spare_fd: int | None = self._open_spare()

    # ------------------------------------------------------------------ listening

    def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """Bind and start reading; returns the bound (host, port). Raises OSError on failure."""
        transport = transport.lower()
        family = _family(host)
        if transport == "udp":
            sock = _stdsocket.socket(family, _stdsocket.SOCK_DGRAM)
            sock.setblocking(False)
            for option in (_stdsocket.SO_RCVBUF, _stdsocket.SO_SNDBUF):
                try:
                    sock.setsockopt(_stdsocket.SOL_SOCKET, option, SOCKET_BUFFER)
                except OSError:
                    log.debug("kernel refused a %d byte socket buffer", SOCKET_BUFFER)
        elif transport == "tcp":
            sock = socket.socket(family, _stdsocket.SOCK_STREAM)
            sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
        else:
            raise ValueError(f"unknown transport {transport!r}")
        try:
            sock.bind((host, port))
            if transport == "tcp":
                sock.listen(1024)
        except OSError:
            sock.close()
            raise
        if transport == "udp":
            udp = _UdpSocket(sock, max(self.max_datagram + 1, 65536), self.udp_batch)
            self._udp.append(udp)
            udp.reader = self._group.spawn(self._udp_reader, udp)
        else:
            self._listeners.append(sock)
            self._group.spawn(self._accept_loop, sock)
        return _peer(sock.getsockname())

    def _udp_reader(self, udp: _UdpSocket) -> None:
        hub = gevent.get_hub()
        readable = hub.loop.io(udp.sock.fileno(), 1)
        try:
            handled = 0
            while not self._closed:
                # after a short batch, receive again at once rather than wait: under load more
                # datagrams came in meanwhile (waiting on the hub instead was tried and not
                # shown to help: docs/BENCHMARKS.md, round of 2026-12-02 12:05)
                got = self._udp_batch(udp)
                if got < 0:
                    return
                if not got:
                    handled = 0
                    hub.wait(readable)
                    continue
                handled += got
                if handled >= UDP_YIELD_AFTER:  # a flood must not starve timers and HTTP
                    handled = 0
                    gevent.sleep(0)
        finally:
            readable.close()

    def _udp_batch(self, udp: _UdpSocket) -> int:
        """Receive and handle one batch, then send the answers; the number of datagrams
        taken (0: none queued, -1: the socket is closed)."""
        try:
            batch = udp.batcher.recv()
        except OSError as exc:
            if self._closed or udp.sock.fileno() < 0:
                return -1
            log.debug("udp receive failed: %s", exc)
            return 0
        if self.on_backlog is not None:
            fill = receive_queue_fill(udp.sock) if len(batch) >= udp.batcher.batch else 0.0
            if fill or self.backlog:
                self.backlog = fill
                self.on_backlog(fill)
        max_datagram = self.max_datagram
        handler = self.on_datagram
        for data, addr in batch:
            if len(data) > max_datagram:
                self.counters["datagrams_oversized"] += 1
                continue
            if not data.strip(b"\r\n"):
                continue  # CRLF keep-alive
            self._dispatch(data, addr, "udp", None, handler)
        if self.after_datagrams is not None and batch:
            self._guarded(self.after_datagrams)
        if udp.out:
            self._flush_udp(udp)  # the answers leave before more work is read
        return len(batch)

    def poll_udp(self, limit: int = 256) -> int:
        """Handle datagrams already queued on the UDP sockets (up to about ``limit``), from the
        caller's greenlet: the node calls it before taking new work (a publish), so answers to
        its NOTIFYs are read first instead of overflowing the socket buffer and being
        retransmitted. Returns the number handled."""
        handled = 0
        for udp in self._udp:
            while handled < limit and not self._closed:
                got = self._udp_batch(udp)
                if got <= 0:
                    break
                handled += got
        return handled

    def _flush_soon(self, udp: _UdpSocket) -> None:
        """Hub callback: send what other greenlets queued (timers, HTTP publishes) once they
        yield, so a burst leaves in one batch; a full socket buffer hands over to a greenlet."""
        udp.flush_due = False
        if not udp.out or self._closed:
            return
        try:
            taken, failed = udp.batcher.send(udp.out)
        except OSError as exc:
            log.debug("udp send failed: %s", exc)
            taken = failed = len(udp.out)
        if failed:
            self.counters["send_errors"] += failed
        del udp.out[:taken]
        if udp.out and (udp.writer is None or udp.writer.dead):
            udp.writer = self._group.spawn(self._flush_udp, udp)

    def _flush_udp(self, udp: _UdpSocket) -> None:
        """Send the queue of ``udp``; waits (cooperatively) while the socket buffer is full."""
        while udp.out and not self._closed:
            out = udp.out
            udp.out = []
            try:
                taken, failed = udp.batcher.send(out)
            except OSError as exc:
                log.debug("udp send failed: %s", exc)
                taken, failed = len(out), len(out)
            if failed:
                self.counters["send_errors"] += failed
            if taken < len(out):
                udp.out[:0] = out[taken:]
                socket.wait_write(udp.sock.fileno())

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                sock, addr = listener.accept()
            except OSError as exc:
                if self._closed or listener.fileno() < 0:
                    return
                if exc.errno in _FD_ERRORS:
                    self._out_of_fds(listener)
                else:
                    log.debug("tcp accept failed: %s", exc)
                gevent.sleep(0.01)
                continue
            peer = _peer(addr)
            if not self._admit(peer[0]):
                self.counters["tcp_refused"] += 1
                sock.close()
                continue
            conn = self._register(peer, sock)
            self._group.spawn(self._tcp_reader, conn)

    # ------------------------------------------------------------------ file descriptors

    @staticmethod
    def _open_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    def _out_of_fds(self, listener: socket.socket) -> None:
        """EMFILE on accept: counted and logged once a minute; the spare descriptor kept for
        this moment is given up to accept and close one waiting connection, so the backlog
        drains instead of spinning."""
        self.counters["fd_exhausted"] += 1
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                sock, _ = listener.accept()
                sock.close()
            except OSError:
                pass
            self._spare_fd = self._open_spare()
        now = time.monotonic()
        if now >= self._fd_logged_at + FD_LOG_INTERVAL:
            count = self.counters["fd_exhausted"] - self._fd_logged_count
            self._fd_logged_at = now
            self._fd_logged_count = self.counters["fd_exhausted"]
            log.warning("out of file descriptors accepting SIP over TCP (%d times since the last "
                        "report): lower --sip-tcp-max-connections or raise the open-file limit",
                        count)

    # ------------------------------------------------------------------ tcp connections

    def _admit(self, ip: str) -> bool:
        """Room for one more connection from ``ip``, made by closing an unused one if need be."""
        same = self._by_source.get(ip)
        if same is not None and len(same) >= self.max_tcp_per_source and not self._evict(same):
            return False
        return len(self._conns) < self.max_tcp_connections or self._evict(self._conns)

    def _evict(self, table: dict[int, _Connection]) -> bool:
        """Close the oldest connection of ``table`` that carries no subscription (looking at a
        few only); those found busy move to the back. False when none could go."""
        for conn_id, conn in list(islice(table.items(), EVICT_SCAN)):
            if conn.sock is None or self.in_use(conn_id):
                del table[conn_id]
                table[conn_id] = conn
                continue
            self.counters["tcp_evicted"] += 1
            self._close_conn(conn)
            return True
        return False

    def _register(self, peer: tuple[str, int], sock: socket.socket | None) -> _Connection:
        conn = _Connection(next(self._ids), peer, sock, self.max_tcp_buffer)
        self._conns[conn.conn_id] = conn
        self._by_source.setdefault(peer[0], {})[conn.conn_id] = conn
        self._by_peer[peer] = conn
        if sock is not None:
            self.counters["tcp_connections"] += 1
        return conn

    def _read_timeout(self, conn: _Connection, now: float) -> float:
        due = conn.last_input + min(self.tcp_idle_timeout, self.tcp_unused_timeout)
        if conn.partial_since is not None:
            due = min(due, conn.partial_since + self.tcp_message_timeout)
        return max(0.01, due - now)

    def _timed_out(self, conn: _Connection, now: float) -> bool:
        """After a read timeout: whether ``conn`` is to be closed now (and why, counted)."""
        if conn.partial_since is not None and now >= conn.partial_since + self.tcp_message_timeout:
            self.counters["tcp_message_timeouts"] += 1
            return True
        if now >= conn.last_input + self.tcp_idle_timeout:
            self.counters["tcp_idle_closed"] += 1
            return True
        if now >= conn.last_input + self.tcp_unused_timeout and not self.in_use(conn.conn_id):
            self.counters["tcp_unused_closed"] += 1
            return True
        return False

    def _tcp_reader(self, conn: _Connection) -> None:
        sock = conn.sock
        assert sock is not None
        framer = conn.framer
        try:
            while not conn.closed:
                sock.settimeout(self._read_timeout(conn, time.monotonic()))
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if self._timed_out(conn, time.monotonic()):
                        return
                    continue
                except OSError:
                    return
                if not data:
                    return
                now = conn.last_input = time.monotonic()
                pings = framer.pings
                try:
                    messages = framer.feed(data)
                except ParseError as exc:
                    key = "tcp_overflow_closed" if exc.status == 413 else "tcp_framing_closed"
                    self.counters[key] += 1
                    log.debug("closing tcp connection %s: %s", conn.peer, exc.reason)
                    return
                if not framer.pending:
                    conn.partial_since = None
                elif messages or conn.partial_since is None:
                    conn.partial_since = now  # the deadline runs from a message's first bytes
                if framer.pings != pings:
                    self._queue(conn, b"\r\n" * (framer.pings - pings))
                for message in messages:
                    self._dispatch(message, conn.peer, "tcp", conn.conn_id)
        finally:
            self._close_conn(conn)

    def _connect_and_read(self, conn: _Connection) -> None:
        try:
            sock = socket.create_connection(conn.peer, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError, OverflowError) as exc:
            log.debug("tcp connect to %s failed: %s", conn.peer, exc)
            self.counters["send_errors"] += 1
            self._close_conn(conn)
            return
        if conn.closed:
            sock.close()
            return
        conn.sock = sock
        conn.last_input = time.monotonic()
        self.counters["tcp_connections"] += 1
        self._start_writer(conn)
        self._tcp_reader(conn)

    def _close_conn(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.conn_id, None)
        same = self._by_source.get(conn.peer[0])
        if same is not None:
            same.pop(conn.conn_id, None)
            if not same:
                del self._by_source[conn.peer[0]]
        if self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]
        conn.out.clear()
        if conn.sock is not None:
            conn.sock.close()

    def _queue(self, conn: _Connection, data: bytes) -> bool:
        if conn.out_bytes + len(data) > 4 * self.max_tcp_buffer:
            return False
        conn.out.append(data)
        conn.out_bytes += len(data)
        if conn.sock is not None:
            self._start_writer(conn)
        return True

    def _start_writer(self, conn: _Connection) -> None:
        if conn.out and (conn.writer is None or conn.writer.dead):
            conn.writer = self._group.spawn(self._write, conn)

    def _write(self, conn: _Connection) -> None:
        sock = conn.sock
        assert sock is not None
        while conn.out and not conn.closed:
            chunk = b"".join(conn.out)
            conn.out.clear()
            conn.out_bytes = 0
            try:
                sock.sendall(chunk)
            except OSError as exc:
                log.debug("tcp send to %s failed: %s", conn.peer, exc)
                self.counters["send_errors"] += 1
                self._close_conn(conn)
                return

    # ------------------------------------------------------------------ sending

    def send(self, transport: str, dest: tuple[str, int], data: bytes,
             conn_id: int | None = None) -> bool:
        """Send or queue `data`; False when it could not be sent or queued."""
        if self._closed:
            return False
        if transport.lower() == "udp":
            return self._send_udp(dest, data)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        if conn is None:
            conn = self._by_peer.get((dest[0], dest[1]))
        if conn is None:
            conn = self._register((dest[0], dest[1]), None)
            self._group.spawn(self._connect_and_read, conn)
        if self._queue(conn, data):
            return True
        self.counters["send_errors"] += 1
        return False

    def _send_udp(self, dest: tuple[str, int], data: bytes) -> bool:
        """Queue one datagram; it leaves with its batch (see _flush_udp)."""
        if not self._udp:
            self.counters["send_errors"] += 1
            return False
        if len(self._udp) == 1:
            udp = self._udp[0]
        else:
            family = _family(dest[0])
            udp = next((u for u in self._udp if u.family == family), self._udp[0])
        udp.out.append((data, (dest[0], dest[1])))
        if not udp.flush_due:
            udp.flush_due = True
            gevent.get_hub().loop.run_callback(self._flush_soon, udp)
        return True

    # ------------------------------------------------------------------ misc

    def udp_drops(self) -> int:
        """Datagrams the kernel dropped on this node's UDP sockets (their queues were full)."""
        return sum(receive_drops(udp.sock) for udp in self._udp)

    def connection_count(self) -> int:
        return len(self._conns)

    def _dispatch(self, data: bytes, source: tuple[str, int], transport: str,
                  conn_id: int | None, handler: Handler | None = None) -> None:
        self._guarded(handler or self.handler, data, source, transport, conn_id)

    def _guarded(self, call: Callable[..., None], *args: object) -> None:
        """``call(*args)``; an exception is counted and logged (at most once a period), the
        transport goes on."""
        try:
            call(*args)
        except Exception:
            self.counters["handler_errors"] += 1
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_INTERVAL:
                log.exception("SIP handler failed (%d similar errors suppressed)",
                              self._suppressed_errors)
                self._last_error_log = now
                self._suppressed_errors = 0
            else:
                self._suppressed_errors += 1

    def close(self) -> None:
        """Close every socket and stop every greenlet this object started."""
        self._closed = True
        for udp in self._udp:  # nothing may wait on a descriptor as it closes
            for greenlet in (udp.reader, udp.writer):
                if greenlet is not None and greenlet is not gevent.getcurrent():
                    greenlet.kill(block=True, timeout=1.0)
            udp.sock.close()
        for sock in self._listeners:
            sock.close()
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        self._udp.clear()
        self._listeners.clear()
        self._group.kill(block=True, timeout=2.0)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
