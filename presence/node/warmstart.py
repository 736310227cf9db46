"""Warm start: a node fills its presentity state before it accepts SUBSCRIBEs.

Order, so nothing is lost and nothing old wins (no race):
1. the node consumes the bus from the start, but only *buffers* what arrives;
2. it streams a peer's snapshot (``GET /snapshot``: the peer's bridge marks, then its records)
   and/or asks the bridges to resync (a ``resync`` control message: every bridge publishes a full
   snapshot of its switches);
3. it applies the peer's records, adopts its marks, then applies the buffer on top: the state's
   per-record ordering (bridge epoch and sequence) drops buffered updates that the snapshot
   already contains, and keeps newer ones;
4. it starts answering SUBSCRIBE and OPTIONS (before that: 503 with Retry-After, so an edge
   proxy's dispatcher keeps the node out of rotation).

The peer download uses gevent sockets directly, so it also works in an unpatched process.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import gevent
import gevent.socket
import ujson

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20


class PeerError(OSError):
    """The peer could not be reached or answered something other than a snapshot."""


def stream_snapshot(url: str, token: str | None = None, timeout: float = 10.0) -> Iterator[dict]:
    """Yield the JSON objects of a peer's ``GET /snapshot`` (NDJSON) as they arrive."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname:
        raise PeerError(f"peer {url!r}: expected http://HOST:PORT")
    port = parts.port or 80
    path = (parts.path.rstrip("/") or "") + "/snapshot"
    headers = [f"GET {path} HTTP/1.0", f"Host: {parts.hostname}:{port}", "Accept: application/x-ndjson"]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    elif parts.username:
        basic = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        headers.append(f"Authorization: Basic {basic}")
    try:
        sock = gevent.socket.create_connection((parts.hostname, port), timeout=timeout)
    except OSError as exc:
        raise PeerError(f"peer {url}: {exc}") from None
    try:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        reader = sock.makefile("rb")
        status_line = reader.readline(MAX_LINE).decode("latin-1").strip()
        status = status_line.split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise PeerError(f"peer {url}: answered {status_line!r}")
        while reader.readline(MAX_LINE).strip():
            pass  # response headers
        for raw in reader:
            raw = raw.strip()
            if raw:
                try:
                    yield ujson.loads(raw)
                except ValueError as exc:
                    raise PeerError(f"peer {url}: bad snapshot line: {exc}") from None
    except (OSError, gevent.Timeout) as exc:
        if isinstance(exc, PeerError):
            raise
        raise PeerError(f"peer {url}: {exc}") from None
    finally:
        sock.close()
