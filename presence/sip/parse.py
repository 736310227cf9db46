"""Parse SIP messages: Request and Response with lazily parsed, cached header views, and
parse_message (one UDP datagram or one framed stream message -> a validated message)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .grammar import ParseError, match_token, split_params
from .headers import CANON_CACHE, Headers, canonical_name
from .uri import NameAddr, parse_name_addr, parse_uri
from .via import Via, parse_via

__all__ = ["Request", "Response", "parse_message"]

MAX_CSEQ = 2**31 - 1
MAX_EXPIRES = 2**32 - 1

_SINGLE_HEADERS = ("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length")
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")
_headers_from_canonical = Headers._from_canonical  # bound once, see grammar.match_token
_headers_from_index = Headers._from_index

try:  # the common head split in C (presence/sip/_scan.c); _split_head below is the specification
    from busylamp.presence.sip._scan import split_head as _split_head_c
except ImportError:  # not built: the Python parser does it all
    _split_head_c = None


class _MessageMixin:
    """Lazy, cached structured views shared by Request and Response."""

    __slots__ = ()
    headers: Headers
    _cache: dict[str, Any]

    def _single(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ParseError(f"Missing {name}")
        return value

    @property
    def call_id(self) -> str:
        value = self._single("Call-ID")
        if not value or " " in value:
            raise ParseError("Bad Call-ID")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        cached = self._cache.get("cseq")
        if cached is None:
            parts = self._single("CSeq").split()
            if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()):
                raise ParseError("Bad CSeq")
            if len(parts[0]) > 10 or int(parts[0]) > MAX_CSEQ:
                raise ParseError("CSeq Number Too Large")
            if not match_token(parts[1]):
                raise ParseError("Bad CSeq Method")
            cached = self._cache["cseq"] = (int(parts[0]), parts[1])
        return cached

    @property
    def from_(self) -> NameAddr:
        cached = self._cache.get("from")
        if cached is None:
            cached = self._cache["from"] = parse_name_addr(self._single("From"))
        return cached

    @property
    def to(self) -> NameAddr:
        cached = self._cache.get("to")
        if cached is None:
            cached = self._cache["to"] = parse_name_addr(self._single("To"))
        return cached

    @property
    def vias(self) -> list[Via]:
        cached = self._cache.get("vias")
        if cached is None:
            values = self.headers.get_all("Via")
            if not values:
                raise ParseError("Missing Via")
            cached = self._cache["vias"] = [parse_via(v) for v in values]
        return cached

    def _top_via(self) -> Via:
        cached = self._cache.get("vias")
        if cached is not None:
            return cached[0]
        values = self.headers.get_all("Via")
        if not values:
            raise ParseError("Missing Via")
        top = parse_via(values[0])
        if len(values) == 1:
            self._cache["vias"] = [top]
        return top


@dataclass(slots=True)
class Request(_MessageMixin):
    """A parsed request; structured header views are parsed on first use and cached."""

    method: str
    uri: str
    headers: Headers
    body: bytes
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def expires(self) -> int | None:
        value = self.headers.get("Expires")
        if value is None:
            return None
        value = value.strip()
        if not (value.isascii() and value.isdigit()):
            raise ParseError("Bad Expires")
        return min(int(value), MAX_EXPIRES) if len(value) < 12 else MAX_EXPIRES

    @property
    def event(self) -> tuple[str, dict[str, str | None]] | None:
        value = self.headers.get("Event")
        if value is None:
            return None
        package, semi, ptext = value.partition(";")
        package = package.strip().lower()
        if not package or not match_token(package):
            raise ParseError("Bad Event")
        return package, (split_params(";" + ptext, "Event") if semi else {})

    @property
    def contact(self) -> NameAddr | None:
        values = self.headers.get_all("Contact")
        return parse_name_addr(values[0]) if values else None

    @property
    def record_routes(self) -> list[str]:
        return self.headers.get_all("Record-Route")

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        value = value.strip()
        if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > 255:
            raise ParseError("Bad Max-Forwards")
        return int(value)


@dataclass(slots=True)
class Response(_MessageMixin):
    """A parsed response; structured header views are parsed on first use and cached."""

    status: int
    reason: str
    headers: Headers
    body: bytes
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


_VERSION_RE = re.compile(r"SIP/\d+\.\d+")
_CSEQ_SHAPE_RE = re.compile(r"\s*\d+\s+[A-Za-z0-9\-.!%*_+`'~]+\s*")


def _split_head(data: bytes, stream: bool) -> tuple[list[str], int]:
    """Return (header block lines, offset of the body)."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        return data[start:end].decode("utf-8", "surrogateescape").split("\r\n"), end + 4
    end = data.find(b"\n\n", start)
    if end >= 0:
        text = data[start:end].decode("utf-8", "surrogateescape")
        return [line.rstrip("\r") for line in text.split("\n")], end + 2
    if stream:
        raise ParseError("Incomplete Message")
    text = data[start:].decode("utf-8", "surrogateescape")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines, len(data)


def _parse_headers(lines: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    items: list[tuple[str, str]] = []
    append = items.append
    error: str | None = None
    cache = CANON_CACHE
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            if not items:
                error = error or "Bad Header Folding"
                continue
            name, value = items[-1]
            more = line.strip(" \t")
            items[-1] = (name, f"{value} {more}" if value else more)
            continue
        raw_name, colon, value = line.partition(":")
        name = cache.get(raw_name) if colon else None  # (a line without one is no header)
        if name is None:
            name = canonical_name(raw_name) if colon and raw_name else None
            if name is None:
                error = error or "Bad Header Line"
                continue
        append((name, value.strip(" \t")))
    return items, error


def _content_length(headers: Headers) -> int | None:
    values = headers._index.get("Content-Length")
    if values is None:
        return None
    if len(values) > 1:
        raise ParseError("Multiple Content-Length")
    value = values[0].strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise ParseError("Bad Content-Length")
    return int(value)


def _body(data: bytes, offset: int, length: int | None, stream: bool) -> bytes:
    available = len(data) - offset
    if length is None:
        if stream:
            raise ParseError("Missing Content-Length")
        return data[offset:]
    if length > available:
        raise ParseError("Content-Length Larger Than Body")
    return data[offset : offset + length]


def _check_common(msg: Request | Response) -> None:
    """Mandatory headers present, single-valued ones once, Call-ID and CSeq well formed."""
    index = msg.headers._index
    for name in _MANDATORY:
        if name not in index:
            raise ParseError(f"Missing {name}")
    for name in _SINGLE_HEADERS:
        values = index.get(name)
        if values is not None and len(values) > 1:
            raise ParseError(f"Multiple {name}")
    msg.call_id  # noqa: B018 - validates
    msg.cseq  # noqa: B018


def _addressable(request: Request) -> bool:
    """Enough to build a response: From/To/Call-ID/CSeq of sane shape (the first of each when a
    message repeats them, RFC 4475 3.3.8 still wants its 400) and a parseable top Via."""
    index = request.headers._index
    for name in ("From", "To", "Call-ID", "CSeq"):
        values = index.get(name)
        if not values or not values[0]:
            return False
    if not _CSEQ_SHAPE_RE.fullmatch(index["CSeq"][0]):
        return False
    try:
        request._top_via()
        request.from_  # noqa: B018
        request.to  # noqa: B018
    except ParseError:
        return False
    return True


def _parse_request_line(line: str) -> tuple[str, str, str | None, int]:
    """Return (method, uri, error reason or None, error status)."""
    stripped = line.rstrip(" \t")  # trailing SP tolerated (RFC 4475 3.1.2.10 robust element)
    parts = stripped.split(" ")
    if len(parts) != 3 or not all(parts):
        loose = stripped.split()
        method = loose[0] if loose else ""
        uri = loose[1] if len(loose) > 1 else ""
        return method, uri, "Bad Request-Line", 400
    method, uri, version = parts
    if not match_token(method):
        return method, uri, "Bad Method", 400
    if "<" in uri or ">" in uri or "\t" in uri:
        return method, uri, "Bad Request-URI", 400
    if version != "SIP/2.0":
        if _VERSION_RE.fullmatch(version):
            return method, uri, "Version Not Supported", 505
        return method, uri, "Bad SIP Version", 400
    return method, uri, None, 0


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one SIP message (a whole UDP datagram, or one framed stream message)."""
    data = bytes(data)
    fast = _split_head_c(data, CANON_CACHE) if _split_head_c is not None else None
    if fast is not None:  # the common head: split and indexed in C
        start, items, index, body_at = fast
        headers = _headers_from_index(items, index)
        header_error = None
    else:
        lines, body_at = _split_head(data, stream)
        if not lines or not lines[0]:
            raise ParseError("Empty Message")
        start = lines[0]
        items, header_error = _parse_headers(lines[1:])
        headers = _headers_from_canonical(items)
    if start.startswith("SIP/"):
        return _parse_response(start, headers, header_error, data, body_at, stream)
    method, uri, error, status = _parse_request_line(start)
    request = Request(method, uri, headers, b"")
    try:
        if error is not None and status == 400:
            raise ParseError(error, status)
        if header_error is not None:
            raise ParseError(header_error)
        _check_common(request)
        request.from_  # noqa: B018 - validates
        request.to  # noqa: B018
        request.vias  # noqa: B018
        if request.cseq[1] != method:
            raise ParseError("CSeq Method Does Not Match")
        request.max_forwards  # noqa: B018
        request.body = _body(data, body_at, _content_length(headers), stream)
        if error is not None:
            raise ParseError(error, status)
        parsed_uri = parse_uri(uri)
        if parsed_uri.headers is not None and parsed_uri.scheme != "tel":
            raise ParseError("Headers In Request-URI")
    except ParseError as exc:
        exc.request = request if _addressable(request) else None
        raise
    return request


def _parse_response(
    start: str, headers: Headers, header_error: str | None, data: bytes, body_at: int,
    stream: bool,
) -> Response:
    parts = start.split(" ", 2)
    if parts[0] != "SIP/2.0" or len(parts) < 2:
        raise ParseError("Bad Status-Line")
    code = parts[1]
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not "100" <= code <= "699":
        raise ParseError("Bad Status Code")
    if header_error is not None:
        raise ParseError(header_error)
    response = Response(int(code), parts[2] if len(parts) == 3 else "", headers, b"")
    _check_common(response)
    response._top_via()
    response.body = _body(data, body_at, _content_length(headers), stream)
    return response
