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
It asks for the snapshot in record rows (presence/snapshots.py; half the bytes, no
per-field parse) and takes the update-per-line NDJSON of an older peer as well; the body is read
in blocks of up to 256 KiB and cut into lines here (``http.client``'s own line reading costs
several Python calls per line).
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

from busylamp.presence.snapshots import ROWS_TYPE

log = logging.getLogger(__name__)

READ_BLOCK = 256 * 1024
MAX_LINE = 64 * 1024 * 1024  # a rows line is ~150 KiB; more without a newline: a broken peer


class PeerError(OSError):
    """The peer could not be reached or answered something other than a snapshot."""


class _GeventConnection(http.client.HTTPConnection):
    """``http.client`` over a gevent socket: cooperative even where ``socket`` is not patched."""

    def connect(self) -> None:
        self.sock = gevent.socket.create_connection((self.host, self.port), self.timeout,
                                                    self.source_address)


def _lines(response: http.client.HTTPResponse, url: str) -> Iterator[bytes]:
    """The body's non-blank lines, read in blocks; an unfinished last line is kept too."""
    rest = b""
    while True:
        block = response.read1(READ_BLOCK)
        if not block:
            break
        lines = (rest + block).split(b"\n") if rest else block.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            raise PeerError(f"peer {url}: a snapshot line longer than {MAX_LINE} bytes")
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest


def stream_snapshot(url: str, token: str | None = None, timeout: float = 10.0, *,
                    rows: bool = False) -> Iterator[object]:
    """Yield the JSON values of a peer's ``GET /snapshot`` (NDJSON) as they arrive; with
    ``rows`` it asks for record rows (the peer may still answer update objects); every socket
    operation has ``timeout``; any failure is a PeerError."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise PeerError(f"peer {url!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise PeerError(f"peer {url!r}: expected http://HOST:PORT")
    path = (parts.path.rstrip("/") or "") + "/snapshot"
    headers = {"Accept": f"{ROWS_TYPE}, application/x-ndjson;q=0.5" if rows
               else "application/x-ndjson"}
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
        for number, raw in enumerate(_lines(response, url), 1):  # as the (chunked) stream arrives
            try:
                value = ujson.loads(raw)
            except ValueError as exc:
                raise PeerError(f"peer {url}: bad snapshot line {number}: {exc}") from None
            yield value
    except (OSError, http.client.HTTPException, gevent.Timeout) as exc:
        if isinstance(exc, PeerError):
            raise
        raise PeerError(f"peer {url}: {exc!r}" if isinstance(exc, http.client.HTTPException)
                        else f"peer {url}: {exc}") from None
    finally:
        conn.close()
