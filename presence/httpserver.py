"""A small HTTP/1.1 server for the node's WSGI app, on gevent.

Why not gevent.pywsgi: the publish path carries one update per request at thousands of requests
per second, and pywsgi spends ~150-250 µs per request (environ building, header parsing, two
writes). Why not h11: in this server's place it cost 2.6x the CPU per publish request and
39% of the NOTIFY ceiling (docs/BENCHMARKS.md, issue 11). This server does what the API needs
and nothing else: keep-alive connections, request bodies framed by Content-Length (no chunked
request bodies: 411), responses written in one ``sendall`` when their size is known, and
streamed with chunked transfer-coding when not (``/tail``, ``/snapshot``, NDJSON listings).
One greenlet per connection, and no timer per connection or per request: the deadlines below
are kept by one sweeping greenlet (every quarter of the shorter timeout, at most 1 s), which
shuts the socket of a connection past its deadline; its greenlet then answers 408 or closes.

Limits: at most ``max_connections`` open connections (one more is answered 503 and closed at
once), a complete request head and body within ``request_timeout`` of its first byte — or, for
a connection's first request, of the accept — (408), and
the app's ``check_head(environ)`` — authorisation, Host, Content-Type — is asked before any body
is read, so a refused request never costs its body's memory.

``Expect: 100-continue`` (RFC 9110 §10.1.1): once a request's head has passed every check
(framing, ``check_head``, the body cap), ``HTTP/1.1 100 Continue`` is sent before the body is
read, so clients such as curl do not wait for their own expect timeout; a request refused by its
head gets only its final answer (401, 413, ...), never a 100. Any other expectation is 417.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from urllib.parse import unquote_to_bytes

import gevent
import ujson
from gevent.server import StreamServer

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024 + 64 * 1024  # the app answers 413 above its own 8 MiB limit
IDLE_TIMEOUT = 300.0
MAX_CONNECTIONS = 256
REQUEST_TIMEOUT = 10.0

_REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required",
            413: "Content Too Large", 417: "Expectation Failed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


FD_LOG_INTERVAL = 60.0
_FD_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class _QuietServer(StreamServer):
    """A StreamServer that meets EMFILE quietly: counted, logged once a minute, one waiting
    connection shed with a spare descriptor, accepting paused 0.1 s — instead of gevent's
    traceback per failed accept."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fd_exhausted = 0
        self._fd_logged_at = float("-inf")
        self._fd_logged_count = 0
        self._spare = _open_spare()

    def do_read(self):
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in _FD_ERRORS:
                raise
        self.fd_exhausted += 1
        if self._spare is not None:
            os.close(self._spare)
            with contextlib.suppress(OSError):
                fd, _ = self.socket._accept()
                os.close(fd)
            self._spare = _open_spare()
        now = time.monotonic()
        if now >= self._fd_logged_at + FD_LOG_INTERVAL:
            log.warning("out of file descriptors accepting HTTP connections (%d times since the "
                        "last report)", self.fd_exhausted - self._fd_logged_count)
            self._fd_logged_at = now
            self._fd_logged_count = self.fd_exhausted
        self.stop_accepting()
        self._timer = self.loop.timer(0.1)
        self._timer.start(self._start_accepting_if_started)
        return None

    def close(self) -> None:
        super().close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


INFINITY = float("inf")
HEAD_CACHE = 256  # response heads kept, by (protocol, status, headers, keep-alive)


class _Conn:
    """One connection's socket and its deadline: what passing it means (``expiry``: 408, or 0
    to close silently) and, once the sweeper acted on it, ``expired``."""

    __slots__ = ("sock", "deadline", "expiry", "expired")

    def __init__(self, sock: socket.socket, deadline: float, expiry: int) -> None:
        self.sock = sock
        self.deadline = deadline
        self.expiry = expiry
        self.expired = 0


# A client's requests repeat their heads (a publisher's differ by Content-Length alone): a head
# parsed once is not parsed again. Only short heads are kept, so the table stays small.
CACHED_HEADS = 256
CACHED_HEAD_MAX = 512

# (environ entries, HTTP version, Connection lower-cased, Expect lower-cased, Content-Length)
_ParsedHead = tuple[tuple[tuple[str, str], ...], str, str, "str | None", "int | None"]


def _parse_head(head: str) -> _ParsedHead:
    """A request head (request line and header lines, latin-1): what a request's environ takes
    from it, and what framing needs. Raises _Reject (400, 411, 417, 505) for what is refused."""
    request_line, _, header_text = head.partition("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise _Reject(400, "bad request line")
    method, target, version = parts
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        raise _Reject(505 if version.startswith("HTTP/") else 400, "unsupported HTTP version")
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "SERVER_PROTOCOL": version,
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1") if "%" in path else path,
        "QUERY_STRING": query,
    }
    connection = ""
    expect = None
    length = None
    if header_text:
        for line in header_text.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _Reject(400, "bad header line")
            name = name.lower()
            value = value.strip()
            if name == "content-length":
                if not (value.isascii() and value.isdigit()) or (
                        length is not None and int(value) != length):
                    raise _Reject(400, "bad Content-Length")
                length = int(value)
                environ["CONTENT_LENGTH"] = value
            elif name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "transfer-encoding":
                raise _Reject(411, "chunked request bodies are not supported: send Content-Length")
            else:
                if name == "connection":
                    connection = value.lower()
                elif name == "expect":
                    expect = value.lower() if expect is None else f"{expect},{value.lower()}"
                key = _ENVIRON_KEYS.get(name) or _environ_key(name)
                environ[key] = f"{environ[key]},{value}" if key in environ else value
    if expect is not None and expect != "100-continue":
        raise _Reject(417, "the only expectation supported is 100-continue")
    return tuple(environ.items()), version, connection, expect, length


def _environ_key(name: str) -> str:
    """The WSGI environ key of a lower-case header name: ``HTTP_`` and upper case."""
    return "HTTP_" + name.upper().replace("-", "_")


_ENVIRON_KEYS = {name: _environ_key(name) for name in (
    "host", "user-agent", "accept", "authorization", "expect", "connection",
    "accept-encoding", "x-forwarded-for")}


def _no_write(data: bytes) -> None:
    """WSGI's legacy ``write()`` callable, which the API never uses."""


def _head_for(protocol: str, status: str, headers: list[tuple[str, str]], keep_alive: bool,
              chunked: bool = False) -> tuple[bytes, bool, bool]:
    """(head, keep the connection, the app named the Content-Length) of an answer; without a
    Content-Length the caller adds it, or the answer is ``chunked``."""
    sized = False
    app_connection = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-length":
            sized = True
        elif lowered == "connection":
            app_connection = value.lower()
    if app_connection == "close":
        keep_alive = False
    lines = [f"{protocol} {status}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if app_connection is None:
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), keep_alive, sized


class _Reject(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class HttpServer:
    """Serve ``app`` on ``address``; ``start()``, ``stop()``, ``server_port``."""

    def __init__(self, address: tuple[str, int], app: WsgiApp, *, max_body: int = MAX_BODY,
                 idle_timeout: float = IDLE_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.app = app
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.counters = {"connections_refused": 0, "request_timeouts": 0,
                         "refused_before_body": 0}
        self.active = 0
        self._check_head = getattr(app, "check_head", None)
        self._server = _QuietServer(address, self._handle, backlog=1024)
        self._conns: set[_Conn] = set()
        self._heads: dict[tuple, tuple[bytes, bool, bool]] = {}
        self._parsed_heads: dict[bytes, _ParsedHead] = {}  # request head -> _parse_head's
        # deadlines are kept to within a quarter of the shorter timeout (at most 1 s late)
        self._sweep_interval = min(1.0, max(0.01, min(request_timeout, idle_timeout) / 4))
        self._sweeper: gevent.Greenlet | None = None
        self._host = ""
        self._port = ""

    def start(self) -> None:
        self._server.start()
        self._host = str(self._server.server_host)
        self._port = str(self._server.server_port)
        self._sweeper = gevent.spawn(self._sweep)

    def stop(self, timeout: float | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None
        self._server.stop(timeout=timeout)

    @property
    def fd_exhausted(self) -> int:
        return self._server.fd_exhausted

    @property
    def server_port(self) -> int:
        return self._server.server_port

    @property
    def server_host(self) -> str:
        return self._server.server_host

    # -- deadlines: one sweeping greenlet, no timer per connection or per request ------------

    def _sweep(self) -> None:
        """Every ``_sweep_interval``: end the connections whose deadline has passed. A socket
        shut for reading wakes its greenlet (which then owes the 408, if any); shut both ways
        also ends a send that a client stopped reading."""
        while True:
            gevent.sleep(self._sweep_interval)
            now = time.monotonic()
            for conn in [c for c in self._conns if c.deadline <= now and not c.expired]:
                conn.expired = conn.expiry or -1
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RD if conn.expiry else socket.SHUT_RDWR)

    # -- one connection -----------------------------------------------------------------------

    def _handle(self, sock: socket.socket, address: tuple) -> None:
        if self.active >= self.max_connections:
            self.counters["connections_refused"] += 1
            sock.settimeout(1.0)
            self._send_error(sock, 503, f"more than {self.max_connections} connections open")
            _lingering_close(sock, budget=0.1)  # brief: these are outside the cap
            return
        self.active += 1
        conn = _Conn(sock, time.monotonic() + self.request_timeout, 408)
        self._conns.add(conn)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # per connection once; each request's environ is a copy of it
        base = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": self._host,
            "SERVER_PORT": self._port,
            "REMOTE_ADDR": str(address[0]),
            "REMOTE_PORT": str(address[1]) if len(address) > 1 else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        pending = b""
        try:
            while True:
                try:
                    request = self._read_request(conn, pending, base)
                except _Reject as reject:
                    if reject.status == 408:
                        self.counters["request_timeouts"] += 1
                    self._send_error(sock, reject.status, reject.detail)
                    _lingering_close(sock)
                    return
                if request is None:
                    return
                environ, keep_alive, pending = request
                conn.deadline = INFINITY  # the app's time is its own (a /tail stream waits)
                if not self._respond(conn, environ, keep_alive) or not keep_alive:
                    return
                if pending:  # the next request has begun (pipelined): its own deadline
                    conn.deadline = time.monotonic() + self.request_timeout
                    conn.expiry = 408
                else:  # waiting for the next request: the idle timeout
                    conn.deadline = time.monotonic() + self.idle_timeout
                    conn.expiry = 0
        except OSError:
            return  # the client went away, or its deadline passed while it was idle
        finally:
            self.active -= 1
            self._conns.discard(conn)
            sock.close()

    def _recv(self, conn: _Conn, size: int) -> bytes:
        """One recv; b"" once the client closed or the connection's deadline passed."""
        try:
            chunk = conn.sock.recv(size)
        except OSError:
            if not conn.expired:
                raise
            chunk = b""
        if conn.expired == 408:
            raise _Reject(408, f"request not complete within {self.request_timeout:g}s")
        return chunk

    def _begun(self, conn: _Conn) -> None:
        """A request's first bytes arrived: it must be complete within ``request_timeout``."""
        if conn.expiry != 408:
            conn.deadline = time.monotonic() + self.request_timeout
            conn.expiry = 408

    def _read_request(self, conn: _Conn, buf: bytes, base: dict
                      ) -> tuple[dict, bool, bytes] | None:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > MAX_HEAD:
                raise _Reject(431, "request head too large")
            chunk = self._recv(conn, 65536)
            if not chunk:
                return None
            if not buf:
                self._begun(conn)
            buf += chunk
            end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(chunk) - 3))
        head = buf[:end]
        buf = buf[end + 4:]
        parsed = self._parsed_heads.get(head)
        if parsed is None:
            parsed = _parse_head(head.decode("latin-1"))
            if len(head) <= CACHED_HEAD_MAX:
                if len(self._parsed_heads) >= CACHED_HEADS:
                    self._parsed_heads.clear()
                self._parsed_heads[head] = parsed
        fields, version, connection, expect, length = parsed
        environ = base.copy()
        environ.update(fields)
        sock = conn.sock
        if length and self._check_head is not None:
            refused = self._check_head(environ)  # before the body costs any memory
            if refused is not None:
                self.counters["refused_before_body"] += 1
                status, detail, headers = refused
                self._send_error(sock, status, detail, headers=headers)
                _lingering_close(sock)
                return None
        if length is None:
            body = b""
        elif length > self.max_body:
            raise _Reject(413, f"request body over {self.max_body} bytes")
        else:
            if expect is not None and version == "HTTP/1.1" and len(buf) < length:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the head passed: send the body
            while len(buf) < length:
                chunk = self._recv(conn, min(1 << 20, max(65536, length - len(buf))))
                if not chunk:
                    return None
                buf += chunk
            body, buf = buf[:length], buf[length:]
        environ["wsgi.input"] = io.BytesIO(body)
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        return environ, keep_alive, buf

    def _respond(self, conn: _Conn, environ: dict, keep_alive: bool) -> bool:
        """Run the app for one request and write its response; False to close the connection."""
        sock = conn.sock
        state: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            state[:] = status, headers
            return _no_write  # the legacy write() callable: unused by our app

        try:
            result = self.app(environ, start_response)
        except Exception:
            log.exception("HTTP API handler failed for %s %s", environ["REQUEST_METHOD"],
                          environ["PATH_INFO"])
            self._send_error(sock, 500, "internal error", keep=keep_alive)
            return keep_alive
        try:
            status, headers = state
            protocol = environ["SERVER_PROTOCOL"]
            pieces = result
            if not isinstance(result, list | tuple):
                if not any(name.lower() == "content-length" for name, _ in headers):
                    return self._stream(conn, protocol, status, headers, keep_alive, result)
                pieces = list(result)  # sized: one write (``result`` is still closed below)
            # a known size: the head comes from the cache (the same few answers, over and over)
            head_key = (protocol, status, tuple(headers), keep_alive)
            cached = self._heads.get(head_key)
            if cached is None:
                cached = _head_for(protocol, status, headers, keep_alive)
                if len(self._heads) >= HEAD_CACHE:
                    self._heads.clear()
                self._heads[head_key] = cached
            head, keep_alive, sized = cached
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if not sized:  # the app named no Content-Length: the size goes in here
                head = head[:-2] + b"Content-Length: %d\r\n\r\n" % len(body)
            data = head + body
            sent = sock.send(data)  # one syscall for the usual small answer
            if sent < len(data):
                self._send_all(conn, data[sent:])
            return keep_alive
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _stream(self, conn: _Conn, protocol: str, status: str, headers: list[tuple[str, str]],
                keep_alive: bool, result: Iterable[bytes]) -> bool:
        """An answer of unknown size: chunked on HTTP/1.1, else until the connection closes.
        Each write must be taken within the idle timeout; waiting for the next piece is not."""
        use_chunks = protocol == "HTTP/1.1"  # HTTP/1.0: the close ends the answer
        head, keep_alive, _ = _head_for(protocol, status, headers, keep_alive and use_chunks,
                                        chunked=use_chunks)
        self._send_all(conn, head)
        for piece in result:
            if piece:
                self._send_all(conn, b"%x\r\n%s\r\n" % (len(piece), piece) if use_chunks
                               else piece)
        if use_chunks:
            self._send_all(conn, b"0\r\n\r\n")
        return keep_alive

    def _send_all(self, conn: _Conn, data: bytes) -> None:
        conn.deadline = time.monotonic() + self.idle_timeout
        conn.expiry = 0
        conn.sock.sendall(data)
        conn.deadline = INFINITY

    @staticmethod
    def _send_error(sock: socket.socket, status: int | str, detail: str, *, keep: bool = False,
                    headers: Iterable[tuple[str, str]] = ()) -> None:
        body = ujson.dumps({"error": detail}).encode()
        line = status if isinstance(status, str) else f"{status} {_REASONS.get(status, 'Error')}"
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        head = (f"HTTP/1.1 {line}\r\n{extra}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            sock.sendall(head + body)


def _lingering_close(sock: socket.socket, budget: float = 0.5, most: int = 256 * 1024) -> None:
    """Close after an error answer without resetting the connection: stop writing, then read
    and drop what the client still sends (a little, briefly), so that the answer is not lost to
    an RST caused by unread bytes."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + budget
        while most > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            most -= len(chunk)
    sock.close()
