"""HTTP API of a presence node: a WSGI app over a `NodeControl`, served by presence.httpserver.

Routes (JSON unless said otherwise; `Authorization: Bearer TOKEN` on all but /health when a
token is configured; a request whose Host is a name other than localhost, the listener's or one
of --http-allowed-host needs the token too, so a browser tricked by DNS rebinding gets 403):

- `POST /publish` (`Content-Type: application/json`, else 415): a pua_json-style update object
  or an array of them (or snapshots); validated
  as a whole by `presence.updates.parse_updates` (nothing applied if any item is bad) → 202
  `{"accepted": n}`; 400 `{"error": ...}` naming the field and index; 413 over 8 MiB.
- `GET /subscriptions?presentity=&watcher=&event=&cursor=&limit=` (limit 1..1000, default 100) →
  `{"subscriptions": [...], "next_cursor": ...}`; `format=ndjson` streams every row.
- `GET /presentities/<user@domain>` → the node's view of one presentity (404 when unknown).
- `GET /presentities/<user@domain>/history` → ``busylamp why``: lamp, timeline, likely causes.
- `GET /health` → 200 when ready, 503 before; `{"ready": bool, ...details}`.
- `GET /metrics` → Prometheus text exposition.
- `GET /tail?presentity=&package=&call_id=` → NDJSON of applied updates; a bare newline every
  `heartbeat` seconds keeps idle connections alive and detects gone clients.
- `GET /snapshot` → NDJSON: `{"marks": {...}}`, then one update per line; with
  `Accept: application/x-busylamp-rows` (a warm-starting node; the node must offer
  `snapshot_rows`), the marks, then arrays of record rows (presence/snapshots.py).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import parse_qs

import gevent
import ujson

from busylamp.presence.config import ConfigError
from busylamp.presence.httpserver import MAX_CONNECTIONS, REQUEST_TIMEOUT, HttpServer
from busylamp.presence.snapshots import ROWS_TYPE

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
MAX_PAGE = 1000
MAX_CURSOR_DIGITS = 12  # a trillion rows: far past any table, far below sys.maxsize
DEFAULT_PAGE = 100
HEARTBEAT_SECONDS = 15.0
NDJSON_CHUNK_ROWS = 500
CHUNK_BYTES = 256 * 1024  # a rows snapshot is written in chunks of about this size

StartResponse = Callable[..., Any]
Parser = Callable[[bytes], list]


class TailSubscription(Protocol):
    def get(self, timeout: float) -> dict | None: ...
    def close(self) -> None: ...


class NodeControl(Protocol):
    """What the API needs from the running node (implemented by presence/node/node.py)."""

    def publish(self, messages: list) -> int: ...
    def subscriptions(self, *, presentity: str | None, watcher: str | None, event: str | None,
                      cursor: str | None, limit: int) -> tuple[list[dict], str | None]: ...
    def presentity(self, aor: str) -> dict | None: ...
    def health(self) -> tuple[bool, dict]: ...
    def metrics_text(self) -> str: ...
    def tail(self) -> TailSubscription: ...
    def snapshot(self) -> Iterator[dict]: ...
    # optional: ``snapshot_rows() -> Iterator[dict | list]``, the marks then lists of rows


class HttpError(Exception):
    """An error answer: status line and a JSON `{"error": message}` body."""

    def __init__(self, status: str, message: str, headers: list[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


def update_fields(update: dict) -> tuple[str, str, str, str, str]:
    """(presentity, package, state, direction, call-id) of a pua_json-style update dict."""
    get = update.get
    presentity = get("Presentity") or ""
    if "@" not in presentity or presentity.startswith("sip:"):
        user = get("Presentity-User") or get("From-User")
        realm = get("Presentity-Realm") or get("From-Realm")
        if user and realm:
            presentity = f"{user}@{realm}"
        elif presentity.startswith("sip:"):
            presentity = presentity[4:]
    return (presentity or str(get("presentity", "")),
            str(get("Event-Package") or get("package") or ""),
            str(get("State") or get("Messages-Waiting") or get("state") or ""),
            str(get("Direction") or get("direction") or ""),
            str(get("Call-ID") or get("call_id") or ""))


def update_matches(update: dict, presentity: str | None, package: str | None,
                   call_id: str | None) -> bool:
    """Whether an update passes the tail filters (None = no filter; presentity case-blind)."""
    if not (presentity or package or call_id):
        return True
    who, pkg, _, _, cid = update_fields(update)
    return ((not presentity or who.lower() == presentity.lower())
            and (not package or pkg == package) and (not call_id or cid == call_id))


HOSTS_REMEMBERED = 1024
_CHECKED = "busylamp.handler"  # environ key: the handler check_head found, for __call__


def _default_parser() -> Parser:
    from busylamp.presence.updates import parse_updates
    return parse_updates


def _json(status: str, payload: object, start_response: StartResponse,
          headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = ujson.dumps(payload, ensure_ascii=False, escape_forward_slashes=False).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


def _ndjson_line(item: object) -> bytes:
    return ujson.dumps(item, ensure_ascii=False, escape_forward_slashes=False).encode() + b"\n"


class ApiApp:
    """The WSGI application. `parse` defaults to presence.updates.parse_updates."""

    def __init__(self, node: NodeControl, token: str | None = None, *,
                 parse: Parser | None = None, heartbeat: float = HEARTBEAT_SECONDS,
                 max_body: int = MAX_BODY, allowed_hosts: Iterable[str] = ()) -> None:
        self.node = node
        self._token = f"Bearer {token}".encode() if token else None
        self._allowed_hosts = frozenset(h.lower().strip("[]") for h in allowed_hosts)
        self._hosts: dict[str, bool] = {}  # Host header value -> allowed
        self.refused = {"unauthorized": 0, "host": 0, "content_type": 0}
        self._parse = parse or _default_parser()
        self.heartbeat = heartbeat
        self.max_body = max_body
        self._routes: dict[str, tuple[str, Callable[..., Iterable[bytes]]]] = {
            "/publish": ("POST", self._publish),
            "/subscriptions": ("GET", self._subscriptions),
            "/health": ("GET", self._health),
            "/metrics": ("GET", self._metrics),
            "/tail": ("GET", self._tail),
            "/snapshot": ("GET", self._snapshot),
        }

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ["REQUEST_METHOD"]
        try:
            # the server asked check_head already when the request has a body
            handler = environ.pop(_CHECKED, None) or self._check(environ)
            return handler(environ, start_response)
        except HttpError as err:
            return _json(err.status, {"error": str(err)}, start_response, err.headers)
        except Exception:
            log.exception("%s %s failed", method, path)
            return _json("500 Internal Server Error",
                         {"error": f"{method} {path} failed; see the node log"}, start_response)

    def check_head(self, environ: dict) -> tuple[str, str, list[tuple[str, str]]] | None:
        """What the request's head alone earns when it is refused — (status, message, headers)
        — or None; the server asks before it reads a body."""
        try:
            environ[_CHECKED] = self._check(environ)
        except HttpError as err:
            return err.status, str(err), err.headers
        length = environ.get("CONTENT_LENGTH")
        if "HTTP_EXPECT" in environ and length and int(length) > self.max_body:
            # a client waiting for 100 Continue sends no body yet: refuse it now, not after it
            # (one that sends at once is answered after its body, so no RST loses the answer)
            return ("413 Content Too Large", f"body larger than {self.max_body} bytes",
                    [("Connection", "close")])
        return None

    def _check(self, environ: dict) -> Callable[..., Iterable[bytes]]:
        """The route's handler, once method, token, Host and Content-Type pass; else HttpError."""
        path = environ.get("PATH_INFO") or "/"
        method = environ["REQUEST_METHOD"]
        if path.startswith("/presentities/"):
            allowed, handler = "GET", self._presentity
        elif path in self._routes:
            allowed, handler = self._routes[path]
        else:
            raise HttpError("404 Not Found", f"no such endpoint: {path}")
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise HttpError("405 Method Not Allowed", f"{path} accepts {allowed} only",
                            [("Allow", allowed)])
        authorized = self._token is not None and self._authorized(environ)
        if self._token is not None and path != "/health" and not authorized:
            self.refused["unauthorized"] += 1
            raise HttpError("401 Unauthorized", "missing or wrong bearer token",
                            [("WWW-Authenticate", 'Bearer realm="busylamp"')])
        if not authorized and not self._host_allowed(environ.get("HTTP_HOST")):
            self.refused["host"] += 1
            raise HttpError("403 Forbidden", "Host is not this node's address, localhost or an "
                            "--http-allowed-host name; send the bearer token to use another name")
        if method == "POST" and not _is_json(environ.get("CONTENT_TYPE")):
            self.refused["content_type"] += 1
            raise HttpError("415 Unsupported Media Type",
                            f"{path} takes Content-Type: application/json",
                            [("Accept-Post", "application/json")])
        return handler

    def _authorized(self, environ: dict) -> bool:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._token)

    def _host_allowed(self, host: str | None) -> bool:
        """An IP literal, localhost, or a configured name (ports ignored). No Host at all is a
        non-browser client (HTTP/1.0): allowed. Remembered per Host value: a publisher sends
        the same one with every request."""
        if not host:
            return True
        known = self._hosts.get(host)
        if known is None:
            known = self._host_check(host)
            if len(self._hosts) >= HOSTS_REMEMBERED:
                self._hosts.clear()
            self._hosts[host] = known
        return known

    def _host_check(self, host: str) -> bool:
        host = host.strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if host == "localhost" or host.endswith(".localhost") or host in self._allowed_hosts:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    # --- POST /publish: the hot path, kept short -------------------------------------------

    def _publish(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        body = self._read_body(environ)
        try:
            messages = self._parse(body)
        except ValueError as err:          # UpdateError and JSON errors are ValueErrors
            raise HttpError("400 Bad Request", str(err) or "invalid JSON") from None
        try:
            accepted = self.node.publish(messages)
        except ValueError as err:
            raise HttpError("400 Bad Request", str(err)) from None
        body = b'{"accepted":%d}' % accepted
        start_response("202 Accepted", [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(body)))])
        return [body]

    def _read_body(self, environ: dict) -> bytes:
        length = environ.get("CONTENT_LENGTH")
        stream = environ["wsgi.input"]
        if length:
            if not length.isdigit():
                raise HttpError("400 Bad Request", "invalid Content-Length")
            if int(length) > self.max_body:
                raise HttpError("413 Content Too Large",
                                f"body larger than {self.max_body} bytes",
                                [("Connection", "close")])
            return stream.read(int(length))
        body = stream.read(self.max_body + 1)       # chunked or no length
        if len(body) > self.max_body:
            raise HttpError("413 Content Too Large", f"body larger than {self.max_body} bytes",
                            [("Connection", "close")])
        return body

    # --- reads --------------------------------------------------------------------------------

    def _subscriptions(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        query = _query(environ)
        filters = {k: query.get(k) or None for k in ("presentity", "watcher", "event")}
        if query.get("format") == "ndjson":
            start_response("200 OK", [("Content-Type", "application/x-ndjson")])
            return self._stream_subscriptions(filters)
        limit_text = query.get("limit", str(DEFAULT_PAGE))
        if not _digits(limit_text, 4) or not 1 <= int(limit_text) <= MAX_PAGE:
            raise HttpError("400 Bad Request", f"limit: must be an integer 1..{MAX_PAGE}")
        cursor_text = query.get("cursor") or None
        if cursor_text is not None and not _digits(cursor_text, MAX_CURSOR_DIGITS):
            raise HttpError("400 Bad Request", "cursor: must be a next_cursor value")
        rows, cursor = self.node.subscriptions(cursor=cursor_text, limit=int(limit_text),
                                               **filters)
        return _json("200 OK", {"subscriptions": rows, "next_cursor": cursor}, start_response)

    def _stream_subscriptions(self, filters: dict) -> Iterator[bytes]:
        cursor = None
        while True:
            rows, cursor = self.node.subscriptions(cursor=cursor, limit=NDJSON_CHUNK_ROWS,
                                                   **filters)
            if rows:
                yield b"".join(_ndjson_line(row) for row in rows)
            if not cursor:
                return
            gevent.sleep(0)                # let SIP and publishes run between chunks

    def _presentity(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        aor = environ["PATH_INFO"][len("/presentities/"):]
        if aor.startswith("sip:"):
            aor = aor[4:]
        if aor.endswith("/history"):  # busylamp why (presence/why.py)
            return self._history(aor[: -len("/history")], start_response)
        if "@" not in aor:
            raise HttpError("400 Bad Request", "presentity: expected /presentities/user@domain")
        found = self.node.presentity(aor)
        if found is None:
            raise HttpError("404 Not Found", f"unknown presentity {aor}")
        return _json("200 OK", found, start_response)

    def _history(self, aor: str, start_response: StartResponse) -> Iterable[bytes]:
        if "@" not in aor:
            raise HttpError("400 Bad Request",
                            "presentity: expected /presentities/user@domain/history")
        history = getattr(self.node, "history_report", None)
        if history is None:
            raise HttpError("404 Not Found", "this process keeps no presence history")
        return _json("200 OK", history(aor), start_response)

    def _health(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        ready, details = self.node.health()
        return _json("200 OK" if ready else "503 Service Unavailable",
                     {"ready": ready, **details}, start_response)

    def _metrics(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        body = self.node.metrics_text().encode()
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    # --- streams ------------------------------------------------------------------------------

    def _tail(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        query = _query(environ)
        presentity, package = query.get("presentity"), query.get("package")
        call_id = query.get("call_id")
        subscription = self.node.tail()
        start_response("200 OK", [("Content-Type", "application/x-ndjson"),
                                  ("Cache-Control", "no-cache")])
        return self._stream_tail(subscription, presentity, package, call_id)

    def _stream_tail(self, subscription: TailSubscription, presentity: str | None,
                     package: str | None, call_id: str | None) -> Iterator[bytes]:
        try:
            yield b"\n"                    # headers out now, so clients see the stream opened
            next_beat = time.monotonic() + self.heartbeat
            while True:
                item = subscription.get(timeout=max(0.0, next_beat - time.monotonic()))
                if item is not None:
                    if update_matches(item, presentity, package, call_id):
                        yield _ndjson_line(item)
                        next_beat = time.monotonic() + self.heartbeat
                elif time.monotonic() >= next_beat:
                    yield b"\n"
                    next_beat = time.monotonic() + self.heartbeat
        finally:
            subscription.close()

    def _snapshot(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        rows = getattr(self.node, "snapshot_rows", None)
        if rows is not None and ROWS_TYPE in (environ.get("HTTP_ACCEPT") or ""):
            start_response("200 OK", [("Content-Type", ROWS_TYPE)])
            return self._stream_rows(rows())
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        return self._stream_snapshot()

    def _stream_rows(self, lines: Iterator[object]) -> Iterator[bytes]:
        """One JSON value per line (each a list of up to 1000 rows), in ~256 KiB chunks."""
        chunk: list[bytes] = []
        size = 0
        for item in lines:
            line = _ndjson_line(item)
            chunk.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                yield b"".join(chunk)
                chunk.clear()
                size = 0
                gevent.sleep(0)
        if chunk:
            yield b"".join(chunk)

    def _stream_snapshot(self) -> Iterator[bytes]:
        chunk: list[bytes] = []
        for item in self.node.snapshot():
            chunk.append(_ndjson_line(item))
            if len(chunk) >= NDJSON_CHUNK_ROWS:
                yield b"".join(chunk)
                chunk.clear()
                gevent.sleep(0)
        if chunk:
            yield b"".join(chunk)


def _digits(text: str, most: int) -> bool:
    """ASCII digits only (str.isdigit also takes "²"), at most ``most`` of them."""
    return text.isascii() and text.isdigit() and len(text) <= most


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _query(environ: dict) -> dict[str, str]:
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_api(host: str, port: int, node: NodeControl, token: str | None, *,
              parse: Parser | None = None, heartbeat: float = HEARTBEAT_SECONDS,
              allowed_hosts: Iterable[str] = (), max_connections: int = MAX_CONNECTIONS,
              request_timeout: float = REQUEST_TIMEOUT) -> HttpServer:
    """Start the HTTP API in the current hub and return the started server (`.server_port`,
    `.stop()`). ConfigError (one line) for a non-loopback bind without a token, and for an
    address that cannot be bound (in use, not of this host, unresolvable): it names --http."""
    if not token and not is_loopback(host):
        raise ConfigError("--http-token", f"a token when the HTTP API listens on {host} "
                          "(not loopback)", message=(
                              f"refusing to serve the HTTP API on {host}:{port} without "
                              "--http-token (only loopback binds may go without one)"))
    app = ApiApp(node, token, parse=parse, heartbeat=heartbeat,
                 allowed_hosts=[host, *allowed_hosts])
    server = HttpServer((host, port), app, max_connections=max_connections,
                        request_timeout=request_timeout)
    try:
        server.start()
    except OSError as err:
        raise _bind_error(host, port, err) from None
    extra = getattr(node, "extra_metrics", None)
    if extra is not None:
        extra.append(http_metrics(server, app))
    log.info("HTTP API listening on %s:%d%s", host, server.server_port,
             " (bearer token required)" if token else "")
    return server


def _bind_error(host: str, port: int, err: OSError) -> ConfigError:
    """A one-line ConfigError naming --http for a listener that could not be bound."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if err.errno == errno.EADDRINUSE:
        return ConfigError("--http", "a free port", message=(
            f"port {port} already in use ({where}): choose another with --http"))
    # gevent appends ": ('host', port)" to strerror; the message names the address already
    reason = (err.strerror or str(err) or type(err).__name__).partition(": (")[0]
    return ConfigError("--http", "an address of this host", message=(
        f"cannot serve the HTTP API on {where}: {reason}: fix --http"))


def http_metrics(server: HttpServer, app: ApiApp) -> Callable:
    """The HTTP API's limits and refusals, for /metrics."""

    def render(metric: Callable) -> None:
        metric("http_connections", "gauge", "Open HTTP API connections.", [({}, server.active)])
        refused = [({"reason": "connection_limit"}, server.counters["connections_refused"]),
                   ({"reason": "request_timeout"}, server.counters["request_timeouts"])]
        refused += [({"reason": reason}, n) for reason, n in app.refused.items()]
        refused.append(({"reason": "fd_exhausted"}, server.fd_exhausted))
        metric("http_refused_total", "counter",
               "HTTP requests or connections refused, by reason (the limits and checks).",
               refused)

    return render
