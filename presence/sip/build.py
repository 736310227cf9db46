"""Serialise SIP messages: responses to a parsed request (RFC 3261 8.2.6) and requests."""

from __future__ import annotations

from collections.abc import Iterable

from .grammar import ParseError
from .parse import Request
from .via import Via

__all__ = ["REASONS", "build_ok", "build_request", "build_response", "response_tail"]

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


_EMPTY = ("",)
_OK_LINE = "SIP/2.0 200 OK\r\n"


def _top_via_for_response(via: Via, source: tuple[str, int] | None) -> str:
    """The top Via of a response: ``received`` when the request came from another address than
    its sent-by host, a value for an empty ``rport`` (RFC 3261 18.2.1, RFC 3581); else as sent."""
    if source is None:
        return via.raw
    ip = source[0]
    host = via.host
    if host[:1] == "[":
        host = host[1:-1]
    params = via.params
    if host == ip and params.get("rport", 0) is not None:
        return via.raw  # nothing to add (the usual case): no copy of the parameters
    # what Via.serialize() gives with received set (in its place, else last) and an empty
    # rport filled in, without copying the parameters or making a Via first
    add_received = host != ip
    hostport = via.host if via.port is None else f"{via.host}:{via.port}"
    text = f"{via.protocol}/{via.transport} {hostport}"
    for name, value in params.items():
        if value is None:
            if name == "rport":
                value = str(source[1])
            elif name == "received" and add_received:
                value, add_received = ip, False
            else:
                text += f";{name}"
                continue
        elif name == "received" and add_received:
            value, add_received = ip, False
        text += f";{name}={value}"
    return f"{text};received={ip}" if add_received else text


def _dialog_fields(
    request: Request, status: int, source: tuple[str, int] | None, to_tag: str | None
) -> str:
    """The header lines a response copies from its request (RFC 3261 8.2.6.2), each ending in
    CRLF: every Via in order (the top one through :func:`_top_via_for_response`), From, To
    (with ``to_tag`` when the request's To has none and ``status`` > 100), Call-ID, CSeq, and
    the Record-Routes of a 2xx that makes a SUBSCRIBE dialog (12.1.1)."""
    index = request.headers._index
    values = index.get("Via")
    if values is None:
        vias = ""
    elif len(values) == 1 and "," not in values[0]:  # one via-parm: no list to split
        first = values[0]
        vias = f"Via: {_top_via_for_response(request._top_via(), source)}\r\n" \
            if first and not first.isspace() else ""
    else:
        parms = request.headers.get_all("Via")
        vias = "".join([f"Via: {_top_via_for_response(request._top_via(), source)}\r\n"]
                       + [f"Via: {parm}\r\n" for parm in parms[1:]]) if parms else ""
    to_value = index.get("To", _EMPTY)[0]
    has_tag = False
    if to_value:
        try:
            has_tag = request.to.tag is not None
        except ParseError:
            has_tag = True  # never append a tag to a To we could not parse
    if to_tag and status > 100 and not has_tag:
        to_value = f"{to_value};tag={to_tag}"
    routes = ""
    if "Record-Route" in index and request.method == "SUBSCRIBE" and 100 < status < 300 \
            and not has_tag:
        routes = "".join([f"Record-Route: {route}\r\n"
                          for route in request.headers.get_all("Record-Route")])
    return (f"{vias}From: {index.get('From', _EMPTY)[0]}\r\nTo: {to_value}\r\n"
            f"Call-ID: {index.get('Call-ID', _EMPTY)[0]}\r\n"
            f"CSeq: {index.get('CSeq', _EMPTY)[0]}\r\n{routes}")


def response_tail(headers: Iterable[tuple[str, str]], server: str | None) -> str:
    """What follows the copied fields in a response without a body: ``headers``, Server and
    ``Content-Length: 0``, and the empty line. Made once and kept, it is :func:`build_ok`'s
    ``tail``."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    if server:
        text += f"Server: {server}\r\n"
    return text + "Content-Length: 0\r\n\r\n"


def build_ok(
    request: Request, source: tuple[str, int] | None, to_tag: str | None, tail: str
) -> bytes:
    """A 200 OK without a body, byte for byte what :func:`build_response` makes of
    ``(request, 200, source=source, to_tag=to_tag, headers=headers, server=server)`` with
    ``tail = response_tail(headers, server)``: only the copied fields are made per request,
    in one string when the request has one via-parm, no Record-Route and a parsed To."""
    index = request.headers._index
    vias = index.get("Via")
    cache = request._cache
    parsed = cache.get("vias")
    to = cache.get("to")
    if vias is None or len(vias) != 1 or "," in vias[0] or parsed is None or to is None \
            or "Record-Route" in index:
        return (_OK_LINE + _dialog_fields(request, 200, source, to_tag) + tail).encode(
            "utf-8", "surrogateescape")
    # (a parsed To is the first To's, which is then not empty; the parsed Vias are this one's)
    to_value = index["To"][0]
    if to_tag and to.params.get("tag") is None:
        to_value = f"{to_value};tag={to_tag}"
    return (f"SIP/2.0 200 OK\r\nVia: {_top_via_for_response(parsed[0], source)}\r\n"
            f"From: {index.get('From', _EMPTY)[0]}\r\nTo: {to_value}\r\n"
            f"Call-ID: {index.get('Call-ID', _EMPTY)[0]}\r\n"
            f"CSeq: {index.get('CSeq', _EMPTY)[0]}\r\n{tail}").encode("utf-8", "surrogateescape")


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
    if reason is None:
        reason = REASONS.get(status, "")
    text = f"SIP/2.0 {status} {reason}\r\n" + _dialog_fields(request, status, source, to_tag)
    for name, value in headers:
        text += f"{name}: {value}\r\n"
    if server:
        text += f"Server: {server}\r\n"
    if body and content_type:
        text += f"Content-Type: {content_type}\r\n"
    text += f"Content-Length: {len(body)}\r\n\r\n"
    return text.encode("utf-8", "surrogateescape") + body


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
