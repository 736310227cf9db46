"""A small HTTP/1.1 server for the node's WSGI app, on gevent.

Why not gevent.pywsgi: the publish path carries one update per request at thousands of requests
per second, and pywsgi spends ~150-250 µs per request (environ building, header parsing, two
writes). Why not h11: in this server's place it cost 2.6x the CPU per publish request and
39% of the NOTIFY ceiling (docs/BENCHMARKS.md, issue 11). This server does what the API needs
and nothing else: keep-alive connections, request bodies framed by Content-Length (no chunked
request bodies: 411), responses written in one ``sendall`` when their size is known, and
streamed with chunked transfer-coding when not (``/tail``, ``/snapshot``, NDJSON listings).
One greenlet per connection.

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

    def start(self) -> None:
        self._server.start()

    def stop(self, timeout: float | None = None) -> None:
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

    # -- one connection -----------------------------------------------------------------------

    def _handle(self, sock: socket.socket, address: tuple) -> None:
        if self.active >= self.max_connections:
            self.counters["connections_refused"] += 1
            sock.settimeout(1.0)
            self._send_error(sock, 503, f"more than {self.max_connections} connections open")
            _lingering_close(sock, budget=0.1)  # brief: these are outside the cap
            return
        self.active += 1
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.idle_timeout)
        pending = b""
        first = True  # a new connection's first request is due within request_timeout too
        try:
            while True:
                try:
                    request = self._read_request(sock, pending, address, first)
                    first = False
                except _Reject as reject:
                    if reject.status == 408:
                        self.counters["request_timeouts"] += 1
                    self._send_error(sock, reject.status, reject.detail)
                    _lingering_close(sock)
                    return
                if request is None:
                    return
                environ, keep_alive, pending = request
                if not self._respond(sock, environ, keep_alive) or not keep_alive:
                    return
                sock.settimeout(self.idle_timeout)
        except (OSError, TimeoutError):
            return  # the client went away or idled out
        finally:
            self.active -= 1
            sock.close()

    def _recv(self, sock: socket.socket, size: int, deadline: float | None) -> bytes:
        """One recv; once a request has begun, within what is left of its deadline."""
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Reject(408, f"request not complete within {self.request_timeout:g}s")
            sock.settimeout(min(left, self.idle_timeout))
            try:
                return sock.recv(size)
            except TimeoutError:
                raise _Reject(408, f"request not complete within {self.request_timeout:g}s"
                              ) from None
        return sock.recv(size)

    def _read_request(self, sock: socket.socket, buf: bytes, address: tuple,
                      first: bool = False) -> tuple[dict, bool, bytes] | None:
        deadline = time.monotonic() + self.request_timeout if buf or first else None
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            if len(buf) > MAX_HEAD:
                raise _Reject(431, "request head too large")
            chunk = self._recv(sock, 65536, deadline)
            if not chunk:
                return None
            if deadline is None:  # the first bytes of a request: its deadline starts now
                deadline = time.monotonic() + self.request_timeout
            buf += chunk
            end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(chunk) - 3))
        head = buf[:end].decode("latin-1")
        buf = buf[end + 4:]
        request_line, _, header_text = head.partition("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[0].isalpha():
            raise _Reject(400, "bad request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Reject(505 if version.startswith("HTTP/") else 400, "unsupported HTTP version")
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "SERVER_PROTOCOL": version,
            "SERVER_NAME": str(self._server.server_host),
            "SERVER_PORT": str(self._server.server_port),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        path, _, query = target.partition("?")
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        environ["QUERY_STRING"] = query
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
                    key = "HTTP_" + name.upper().replace("-", "_")
                    environ[key] = f"{environ[key]},{value}" if key in environ else value
        environ["REMOTE_ADDR"] = str(address[0])
        environ["REMOTE_PORT"] = str(address[1]) if len(address) > 1 else ""
        if expect is not None and expect != "100-continue":
            raise _Reject(417, "the only expectation supported is 100-continue")
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
                chunk = self._recv(sock, min(1 << 20, max(65536, length - len(buf))), deadline)
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

    def _respond(self, sock: socket.socket, environ: dict, keep_alive: bool) -> bool:
        """Run the app for one request and write its response; False to close the connection."""
        state: dict = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            state["status"] = status
            state["headers"] = headers
            return lambda data: None  # the legacy write() callable: unused by our app

        try:
            result = self.app(environ, start_response)
        except Exception:
            log.exception("HTTP API handler failed for %s %s", environ["REQUEST_METHOD"],
                          environ["PATH_INFO"])
            self._send_error(sock, 500, "internal error", keep=keep_alive)
            return keep_alive
        try:
            headers = state["headers"]
            known_length = False
            app_connection = None
            for name, value in headers:
                lowered = name.lower()
                if lowered == "content-length":
                    known_length = True
                elif lowered == "connection":
                    app_connection = value.lower()
            if app_connection == "close":
                keep_alive = False
            chunked = not known_length and not isinstance(result, list | tuple)
            lines = [f"{environ['SERVER_PROTOCOL']} {state['status']}"]
            lines += [f"{name}: {value}" for name, value in headers]
            if chunked:
                if environ["SERVER_PROTOCOL"] == "HTTP/1.1":
                    lines.append("Transfer-Encoding: chunked")
                else:
                    keep_alive = False
            elif not known_length:
                result = [b"".join(result)]
                lines.append(f"Content-Length: {len(result[0])}")
            if app_connection is None:
                lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if not chunked:
                data = head + b"".join(result)
                sent = sock.send(data)  # one syscall for the usual small answer
                if sent < len(data):
                    sock.sendall(data[sent:])
                return keep_alive
            sock.sendall(head)
            use_chunks = environ["SERVER_PROTOCOL"] == "HTTP/1.1"
            for piece in result:
                if piece:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if use_chunks else piece)
            if use_chunks:
                sock.sendall(b"0\r\n\r\n")
            return keep_alive
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

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
