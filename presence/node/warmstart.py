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

The peer download is stdlib ``http.client`` (HTTP/1.1, so a chunked stream that breaks off is
an error, not a short snapshot) over a gevent socket, so it also works in an unpatched process.
"""

from __future__ import annotations

import base64
import http.client
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import gevent
import gevent.socket
import ujson

log = logging.getLogger(__name__)


class PeerError(OSError):
    """The peer could not be reached or answered something other than a snapshot."""


class _GeventConnection(http.client.HTTPConnection):
    """``http.client`` over a gevent socket: cooperative even where ``socket`` is not patched."""

    def connect(self) -> None:
        self.sock = gevent.socket.create_connection((self.host, self.port), self.timeout,
                                                    self.source_address)


def stream_snapshot(url: str, token: str | None = None, timeout: float = 10.0) -> Iterator[dict]:
    """Yield the JSON objects of a peer's ``GET /snapshot`` (NDJSON) as they arrive; every
    socket operation has ``timeout``; any failure is a PeerError."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise PeerError(f"peer {url!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise PeerError(f"peer {url!r}: expected http://HOST:PORT")
    path = (parts.path.rstrip("/") or "") + "/snapshot"
    headers = {"Accept": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif parts.username:
        basic = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    conn = _GeventConnection(parts.hostname, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            raise PeerError(f"peer {url}: answered {response.status} {response.reason}")
        for raw in response:  # line by line as the (chunked) stream arrives
            raw = raw.strip()
            if raw:
                try:
                    yield ujson.loads(raw)
                except ValueError as exc:
                    raise PeerError(f"peer {url}: bad snapshot line: {exc}") from None
    except (OSError, http.client.HTTPException, gevent.Timeout) as exc:
        if isinstance(exc, PeerError):
            raise
        raise PeerError(f"peer {url}: {exc!r}" if isinstance(exc, http.client.HTTPException)
                        else f"peer {url}: {exc}") from None
    finally:
        conn.close()
