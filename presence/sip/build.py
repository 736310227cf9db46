"""Serialise SIP messages: responses to a parsed request (RFC 3261 8.2.6) and requests."""

from __future__ import annotations

from collections.abc import Iterable

from .grammar import ParseError
from .parse import Request
from .via import Via

__all__ = ["REASONS", "build_request", "build_response"]

REASONS: dict[int, str] = {
    100: "Trying",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    489: "Bad Event",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
}


def _top_via_for_response(via: Via, source: tuple[str, int] | None) -> str:
    if source is None:
        return via.raw
    ip, port = source[0], source[1]
    changed = False
    params = dict(via.params)
    if via.sent_by()[0] != ip:
        params["received"] = ip
        changed = True
    if "rport" in params and params["rport"] is None:
        params["rport"] = str(port)
        changed = True
    if not changed:
        return via.raw
    return Via(via.transport, via.host, via.port, params, via.raw, via.protocol).serialize()


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    source: tuple[str, int] | None = None,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    server: str | None = None,
) -> bytes:
    """Build a response per RFC 3261 8.2.6 (Via with received/rport, From, To(+tag), Call-ID,
    CSeq, Record-Route for dialog-creating SUBSCRIBE, extra headers, Content-Length)."""
    index = request.headers._index
    vias = request.headers.get_all("Via")
    lines = [f"SIP/2.0 {status} {reason if reason is not None else REASONS.get(status, '')}"]
    if vias:
        lines.append("Via: " + _top_via_for_response(request._top_via(), source))
        lines.extend("Via: " + v for v in vias[1:])
    from_value = index.get("From", [""])[0]
    to_value = index.get("To", [""])[0]
    lines.append("From: " + from_value)
    has_tag = False
    if to_value:
        try:
            has_tag = request.to.tag is not None
        except ParseError:
            has_tag = True  # never append a tag to a To we could not parse
    if to_tag and status > 100 and not has_tag:
        to_value = f"{to_value};tag={to_tag}"
    lines.append("To: " + to_value)
    lines.append("Call-ID: " + index.get("Call-ID", [""])[0])
    lines.append("CSeq: " + index.get("CSeq", [""])[0])
    if request.method == "SUBSCRIBE" and 100 < status < 300 and not has_tag:
        lines.extend("Record-Route: " + rr for rr in request.headers.get_all("Record-Route"))
    lines.extend(f"{name}: {value}" for name, value in headers)
    if server:
        lines.append("Server: " + server)
    if body and content_type:
        lines.append("Content-Type: " + content_type)
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def build_request(
    method: str, uri: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    """Serialise a request; Content-Length is appended unless the caller gave one."""
    lines = [f"{method} {uri} SIP/2.0"]
    has_length = False
    for name, value in headers:
        if name.lower() in ("content-length", "l"):
            has_length = True
        lines.append(f"{name}: {value}")
    if not has_length:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body
