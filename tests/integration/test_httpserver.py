"""The API's HTTP/1.1 server: keep-alive, pipelining, framing errors, streaming."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

from busylamp.presence.httpserver import HttpServer


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        return (b'{"n": %d}\n' % i for i in range(3))
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {path} {environ['QUERY_STRING']} {len(body)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text]


@pytest.fixture
def server():
    srv = HttpServer(("127.0.0.1", 0), app)
    srv.start()
    yield srv
    srv.stop(timeout=1)


def exchange(server, data: bytes, expect_close: bool = False) -> bytes:
    sock = socket.create_connection(("127.0.0.1", server.server_port))
    sock.settimeout(0.05)
    sock.sendall(data)
    out = b""
    for _ in range(200):
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            gevent.sleep(0.005)
            if out and not expect_close:
                break
            continue
        if not chunk:
            break
        out += chunk
    sock.close()
    return out


def test_keep_alive_and_pipelined_requests(server):
    reqs = (b"POST /publish?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /presentities/1001%40example.com HTTP/1.1\r\nHost: x\r\n\r\n")
    out = exchange(server, reqs)
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert b"POST /publish a=1 5" in out
    assert b"GET /presentities/1001@example.com  0" in out
    assert b"Connection: keep-alive" in out


def test_http10_closes_and_streams_without_chunks(server):
    out = exchange(server, b"GET /stream HTTP/1.0\r\n\r\n", expect_close=True)
    assert out.startswith(b"HTTP/1.0 200 OK") and b"Connection: close" in out
    assert out.endswith(b'{"n": 2}\n')


def test_streaming_is_chunked_on_http11(server):
    out = exchange(server, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in out
    assert out.endswith(b"0\r\n\r\n") and b'9\r\n{"n": 0}\n\r\n' in out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        ("POST / HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1"), b"400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", b"413"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    ],
)
def test_bad_requests_get_a_clear_status_and_close(server, request_bytes, status):
    out = exchange(server, request_bytes, expect_close=True)
    assert out.split(b" ")[1] == status
    assert b'{"error":"' in out and b"Connection: close" in out


# --- Expect: 100-continue -----------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class GuardedApp:
    """The test app behind a ``check_head`` that refuses requests without the right token."""

    def __call__(self, environ, start_response):
        return app(environ, start_response)

    def check_head(self, environ):
        if environ.get("HTTP_AUTHORIZATION") != "Bearer ok":
            return "401 Unauthorized", "missing or wrong bearer token", [
                ("WWW-Authenticate", 'Bearer realm="test"')]
        return None


@pytest.fixture
def guarded():
    srv = HttpServer(("127.0.0.1", 0), GuardedApp(), max_body=1000)
    srv.start()
    yield srv
    srv.stop(timeout=1)


def read_until(sock: gevent.socket.socket, marker: bytes, closed: bool = False) -> bytes:
    """Read until ``marker`` has arrived (or, with ``closed``, until EOF); 5 s deadline."""
    sock.settimeout(5)
    out = b""
    while closed or marker not in out:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def head(body_length: int, *extra: str, version: str = "HTTP/1.1",
         token: str = "Bearer ok") -> bytes:
    lines = [f"POST /publish {version}", "Host: x", f"Authorization: {token}",
             f"Content-Length: {body_length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_100_continue_is_sent_before_the_body_is_read(guarded):
    with gevent.socket.create_connection(("127.0.0.1", guarded.server_port)) as sock:
        sock.sendall(head(5, "Expect: 100-continue"))
        assert read_until(sock, b"\r\n\r\n") == CONTINUE
        sock.sendall(b"hello")
        out = read_until(sock, b"POST /publish  5")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: keep-alive" in out
        # the connection stays usable, and the expectation's name is case-insensitive
        sock.sendall(head(3, "expect: 100-Continue"))
        assert read_until(sock, b"\r\n\r\n") == CONTINUE
        sock.sendall(b"abc")
        assert read_until(sock, b"POST /publish  3").startswith(b"HTTP/1.1 200 OK")


def test_no_100_when_the_body_came_with_the_head_or_on_http10(guarded):
    with gevent.socket.create_connection(("127.0.0.1", guarded.server_port)) as sock:
        sock.sendall(head(5, "Expect: 100-continue") + b"hello")
        assert read_until(sock, b"POST /publish  5").startswith(b"HTTP/1.1 200 OK")
    with gevent.socket.create_connection(("127.0.0.1", guarded.server_port)) as sock:
        sock.sendall(head(5, "Expect: 100-continue", version="HTTP/1.0"))
        sock.sendall(b"hello")  # a 1.0 client gets no 100 (RFC 9110: the server ignores it)
        out = read_until(sock, b"", closed=True)
        assert out.startswith(b"HTTP/1.0 200 OK") and b"POST /publish  5" in out


@pytest.mark.parametrize(("request_head", "status"), [
    (head(5, "Expect: 100-continue", token="Bearer wrong"), b"401 Unauthorized"),
    (head(5000, "Expect: 100-continue"), b"413 Content Too Large"),
    (head(5, "Expect: 200-ok"), b"417 Expectation Failed"),
])
def test_a_request_refused_by_its_head_gets_its_final_answer_and_no_100(
        guarded, request_head, status):
    with gevent.socket.create_connection(("127.0.0.1", guarded.server_port)) as sock:
        sock.sendall(request_head)  # the body is never sent: the answer must not wait for it
        out = read_until(sock, b"", closed=True)
    assert out.startswith(b"HTTP/1.1 " + status + b"\r\n"), out
    assert b"100 Continue" not in out and b"Connection: close" in out
    assert out.endswith(b"}")


# --- deadlines: kept by one sweeping greenlet, not by a timer per request ------------------------


def timed_server(app_=app, **limits):
    srv = HttpServer(("127.0.0.1", 0), app_, **limits)
    srv.start()
    return srv


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout():
    srv = timed_server(idle_timeout=0.2, request_timeout=5)
    try:
        with gevent.socket.create_connection(("127.0.0.1", srv.server_port)) as sock:
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_until(sock, b"GET /a  0").startswith(b"HTTP/1.1 200 OK")
            # idle from here on: closed without an answer, well within the 5 s read deadline
            assert read_until(sock, b"", closed=True) == b""
        assert srv.active == 0 and srv.counters["request_timeouts"] == 0
    finally:
        srv.stop(timeout=1)


def test_a_pipelined_request_left_unfinished_gets_408():
    srv = timed_server(idle_timeout=60, request_timeout=0.2)
    try:
        with gevent.socket.create_connection(("127.0.0.1", srv.server_port)) as sock:
            # a whole request, then the start of the next one in the same packet
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo")
            out = read_until(sock, b"", closed=True)
        assert out.startswith(b"HTTP/1.1 200 OK") and b"GET /a  0" in out
        assert b"HTTP/1.1 408 Request Timeout" in out and b"GET /b" not in out
        assert srv.counters["request_timeouts"] == 1
    finally:
        srv.stop(timeout=1)


def test_a_client_that_stops_reading_a_stream_is_cut_off():
    def endless(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 65536 for _ in range(100_000))   # 6.5 GB: never fits the buffers

    srv = timed_server(endless, idle_timeout=0.3, request_timeout=5)
    try:
        sock = socket.create_connection(("127.0.0.1", srv.server_port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")   # and never read
        deadline = gevent.get_hub().loop.now() + 10
        while srv.active and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.02)
        assert srv.active == 0, "the stalled stream was not ended"
        sock.close()
    finally:
        srv.stop(timeout=1)


def test_keep_alive_requests_start_no_timer(monkeypatch):
    """Deadlines are the sweeper's: a request that waits for its bytes creates no Timeout."""
    import gevent.timeout

    made = []
    original = gevent.timeout.Timeout.__init__

    def counting(self, *args, **kwargs):
        made.append(args)
        original(self, *args, **kwargs)

    srv = timed_server()
    try:
        with gevent.socket.create_connection(("127.0.0.1", srv.server_port)) as sock:
            sock.settimeout(None)
            monkeypatch.setattr(gevent.timeout.Timeout, "__init__", counting)
            for n in range(20):
                sock.sendall(b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" % n)
                out = b""
                while b"POST /p%d  2" % n not in out:
                    out += sock.recv(65536)
            monkeypatch.undo()
        assert made == []
    finally:
        srv.stop(timeout=1)


def test_answers_of_known_size_reuse_their_head_and_keep_their_framing():
    calls = []

    def sized(environ, start_response):
        body = environ["PATH_INFO"].encode()
        calls.append(body)
        headers = [("Content-Type", "text/plain")]
        if environ["QUERY_STRING"] == "close":
            headers.append(("Connection", "close"))
        start_response("200 OK", headers)     # no Content-Length: the server adds it
        return [body, b"!"]

    srv = timed_server(sized)
    try:
        with gevent.socket.create_connection(("127.0.0.1", srv.server_port)) as sock:
            for path in (b"/a", b"/bbbb", b"/a"):
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
                out = read_until(sock, path + b"!")
                assert b"Content-Length: %d\r\n" % (len(path) + 1) in out
                assert b"Connection: keep-alive" in out
            sock.sendall(b"GET /c?close HTTP/1.1\r\nHost: x\r\n\r\n")
            out = read_until(sock, b"", closed=True)   # the app's close is kept
            assert out.endswith(b"/c!") and out.count(b"Connection:") == 1
        assert calls == [b"/a", b"/bbbb", b"/a", b"/c"]
    finally:
        srv.stop(timeout=1)


def test_the_apps_iterable_is_closed_when_its_size_is_known():
    closed = []

    class Sized:
        def __iter__(self):
            return iter([b"ab", b"c"])

        def close(self):
            closed.append(True)

    def sized_iterable(environ, start_response):
        start_response("200 OK", [("Content-Length", "3")])
        return Sized()

    srv = timed_server(sized_iterable)
    try:
        with gevent.socket.create_connection(("127.0.0.1", srv.server_port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_until(sock, b"abc").endswith(b"\r\n\r\nabc")
        assert closed == [True]
    finally:
        srv.stop(timeout=1)


def test_a_repeated_head_is_parsed_once_and_gives_the_same_environ(monkeypatch):
    """Heads are cached (a publisher repeats its own): the second request with the same head
    reaches the app with the same environ, without a second parse; a refused head is refused
    each time, and a long one is not kept."""
    from busylamp.presence import httpserver

    parsed = []
    real = httpserver._parse_head
    monkeypatch.setattr(httpserver, "_parse_head", lambda head: parsed.append(head) or real(head))
    seen = []

    def recording(environ, start_response):
        seen.append({k: v for k, v in environ.items() if k != "wsgi.input"}
                    | {"body": environ["wsgi.input"].read()})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    srv = HttpServer(("127.0.0.1", 0), recording)
    srv.start()
    try:
        head = (b"POST /publish?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                b"X-Trace: a\r\nContent-Length: 2\r\n\r\n")
        out = exchange(srv, head + b"{}" + head + b"[]")
        assert out.count(b"HTTP/1.1 200 OK") == 2
        assert len(parsed) == 1
        first, second = seen
        assert first.pop("body") == b"{}" and second.pop("body") == b"[]"
        assert first == second
        assert first["HTTP_X_TRACE"] == "a" and first["CONTENT_LENGTH"] == "2"
        assert first["QUERY_STRING"] == "x=1" and first["REQUEST_METHOD"] == "POST"
        bad = b"POST /publish HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n"
        assert exchange(srv, bad, expect_close=True).startswith(b"HTTP/1.1 400")
        assert exchange(srv, bad, expect_close=True).startswith(b"HTTP/1.1 400")
        assert len(parsed) == 3
        long_head = head.replace(b"X-Trace: a", b"X-Trace: " + b"a" * 600)
        for _ in range(2):
            assert exchange(srv, long_head + b"{}").startswith(b"HTTP/1.1 200")
        assert len(parsed) == 5
        assert seen[-1]["HTTP_X_TRACE"] == "a" * 600
    finally:
        srv.stop(timeout=1)
