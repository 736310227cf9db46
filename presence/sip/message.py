"""Sans-IO SIP message parser and serializer (RFC 3261, robust to RFC 4475 / RFC 5118 torture).

Headers are split into a list once per message; structured values (URIs, name-addrs, Vias, CSeq)
are parsed lazily and cached on the message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Headers",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "SipUri",
    "StreamFramer",
    "Via",
    "build_request",
    "build_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]

MAGIC_COOKIE = "z9hG4bK"
MAX_CSEQ = 2**31 - 1
MAX_EXPIRES = 2**32 - 1

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


class ParseError(ValueError):
    """A message (or header value) that cannot be accepted; `status`/`reason` fit a response."""

    def __init__(self, reason: str, status: int = 400, request: Request | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request = request


# ---------------------------------------------------------------------------------------------
# header names

_COMPACT = {
    "i": "Call-ID", "f": "From", "t": "To", "v": "Via", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "k": "Supported", "e": "Content-Encoding", "o": "Event",
    "u": "Allow-Events", "s": "Subject", "x": "Session-Expires",
}
_KNOWN_NAMES = (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
    "Identity-Info", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reply-To", "Require", "Retry-After", "Route",
    "RSeq", "Server", "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject",
    "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
    "Warning", "WWW-Authenticate",
)
_LIST_HEADERS = frozenset((
    "Via", "Route", "Record-Route", "Contact", "Allow", "Accept", "Supported", "Require",
    "Proxy-Require", "Allow-Events", "Unsupported", "Accept-Encoding", "Accept-Language",
))
_SINGLE_HEADERS = ("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length")
_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_CANON_BY_LOWER: dict[str, str] = {n.lower(): n for n in _KNOWN_NAMES}
_CANON_BY_LOWER.update(_COMPACT)
_CANON_CACHE: dict[str, str] = {}
_CANON_CACHE_MAX = 4096


def canonical_name(name: str) -> str | None:
    """Canonical spelling of a header name (compact forms expanded); None if not a token."""
    cached = _CANON_CACHE.get(name)
    if cached is not None:
        return cached
    stripped = name.rstrip(" \t")
    if not _TOKEN_RE.fullmatch(stripped):
        return None
    lower = stripped.lower()
    canon = _CANON_BY_LOWER.get(lower)
    if canon is None:
        canon = "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))
    if len(_CANON_CACHE) < _CANON_CACHE_MAX:
        _CANON_CACHE[name] = canon
    return canon


def _split_outside(text: str, sep: str, *, angle: bool) -> tuple[list[str], bool]:
    """Split ``text`` at ``sep`` outside quoted strings (and outside <...> when ``angle``).

    Returns the raw parts and whether a quoted string was left open.
    """
    out: list[str] = []
    start = 0
    in_quote = in_angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif angle and ch == "<":
            in_angle = True
        elif angle and ch == ">":
            in_angle = False
        elif ch == sep and not in_angle:
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out, in_quote


def is_token(text: str) -> bool:
    """True when ``text`` is an RFC 3261 token (a tag, a method, a parameter name)."""
    return _TOKEN_RE.fullmatch(text) is not None


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quoted strings and <...>; drop empties."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    parts, _ = _split_outside(value, ",", angle=True)
    return [p for p in (part.strip() for part in parts) if p]


class Headers:
    """Ordered header list; names canonicalised (Call-ID, CSeq, Via, WWW-Authenticate, ...;
    compact forms i f t v m l c k e o u s x expanded)."""

    __slots__ = ("_items", "_index")

    def __init__(self, items: list[tuple[str, str]] | None = None):
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items or ():
            canon = canonical_name(name) or name
            self._items.append((canon, value))
            self._index.setdefault(canon, []).append(value)

    @classmethod
    def _from_canonical(cls, items: list[tuple[str, str]]) -> Headers:
        self = cls.__new__(cls)
        self._items = items
        index: dict[str, list[str]] = {}
        for name, value in items:
            bucket = index.get(name)
            if bucket is None:
                index[name] = [value]
            else:
                bucket.append(value)
        self._index = index
        return self

    def _values(self, name: str) -> list[str] | None:
        values = self._index.get(name)
        if values is None:
            canon = canonical_name(name)
            if canon is not None and canon != name:
                values = self._index.get(canon)
        return values

    def get(self, name: str) -> str | None:
        """First occurrence's whole value."""
        values = self._values(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """All values; list headers are split on commas (quotes and <...> respected)."""
        values = self._values(name)
        if not values:
            return []
        canon = canonical_name(name) or name
        if canon not in _LIST_HEADERS:
            return list(values)
        out: list[str] = []
        for value in values:
            out.extend(split_list(value))
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._values(name))

    def items(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def count(self, name: str) -> int:
        values = self._values(name)
        return len(values) if values else 0

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# ---------------------------------------------------------------------------------------------
# structured values


def _bad(reason: str, status: int = 400) -> ParseError:
    return ParseError(reason, status)


def _split_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ';name[=value]' sequences (leading ';' required, LWS allowed around ';' and '=')."""
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise _bad(f"Bad {what} Parameters")
    parts = text[1:].split(";") if '"' not in text else _split_quoted(text[1:], ";")
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name or not _TOKEN_RE.fullmatch(name):
            raise _bad(f"Bad {what} Parameter")
        if eq:
            value = value.strip()
            if not value:
                raise _bad(f"Bad {what} Parameter Value")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def _split_quoted(text: str, sep: str) -> list[str]:
    parts, open_quote = _split_outside(text, sep, angle=False)
    if open_quote:
        raise _bad("Unbalanced Quotes")
    return parts


_HOST_RE = re.compile(r"[A-Za-z0-9\-._]+")
_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[v6]' or '[v6]:port'; IPv6 hosts keep their brackets."""
    if not text:
        raise _bad(f"Missing {what} Host")
    if text[0] == "[":
        close = text.find("]")
        if close < 3 or not set(text[1:close]) <= _V6_CHARS or ":" not in text[1:close]:
            raise _bad(f"Bad {what} IPv6 Reference")
        host = text[: close + 1]
        tail = text[close + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise _bad(f"Bad {what} Host")
        return host, _parse_port(tail[1:], what)
    host, colon, port = text.partition(":")
    if colon and ":" in port:
        raise _bad(f"IPv6 {what} Host Without Brackets")
    if not _HOST_RE.fullmatch(host):
        raise _bad(f"Bad {what} Host")
    return host, (_parse_port(port, what) if colon else None)


def _parse_port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise _bad(f"Bad {what} Port")
    return int(text)


@dataclass(slots=True)
class SipUri:
    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str | None

    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            if self.host:
                out.append("@")
        out.append(self.host_port() if self.host else "")
        for name, value in self.params.items():
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)


def parse_uri(text: str) -> SipUri:
    """Parse a sip:/sips:/tel: URI. ParseError(416) for other schemes, ParseError(400) if bad."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
        raise _bad("Bad URI")
    scheme_l = scheme.lower()
    if any(ch in text for ch in " \t\r\n<>"):
        raise _bad("Bad URI")
    if scheme_l == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise _bad("Bad tel URI")
        return SipUri("tel", number, None, "", None, _split_params(";" + ptext, "URI")
                      if ptext else {}, None)
    if scheme_l not in ("sip", "sips"):
        raise ParseError("Unsupported URI Scheme", 416)
    if rest.partition("?")[0].count("@") > 1:
        raise _bad("Bad URI")  # "@" may appear in the user part only escaped (%40)
    at = rest.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, hostpart = rest[:at], rest[at + 1 :]
        user, pcolon, pwd = userinfo.partition(":")
        if not user:
            raise _bad("Bad URI User")
        password = pwd if pcolon else None
    else:
        hostpart = rest
    hostpart, qmark, headers = hostpart.partition("?")
    hostport, semi, ptext = hostpart.partition(";")
    host, port = _parse_hostport(hostport, "URI")
    params = _split_params(";" + ptext, "URI") if semi else {}
    return SipUri(scheme_l, user, password, host, port, params, headers if qmark else None)


@dataclass(slots=True)
class NameAddr:
    display: str | None
    uri: str
    params: dict[str, str | None]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.display is not None:
            quoted = self.display.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{quoted}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + "".join(
            f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items()
        )


def _unquote(text: str) -> tuple[str, int]:
    """Unescape a quoted string starting at text[0] == '"'; return (content, index after it)."""
    close = text.find('"', 1)
    if close > 0 and "\\" not in text[:close]:
        return text[1:close], close + 1
    out: list[str] = []
    i = 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise _bad("Unbalanced Quotes In Display Name")


def parse_name_addr(text: str) -> NameAddr:
    """Parse name-addr ('"Name" <uri>;params') or addr-spec ('uri;params', params belong to the
    header field, RFC 3261 20.10)."""
    text = text.strip()
    if not text:
        raise _bad("Empty Address")
    display: str | None = None
    if text[0] == '"':
        display, end = _unquote(text)
        if not text[end:].lstrip().startswith("<"):
            raise _bad("Bad Address")
        lt = text.index("<", end)
    else:
        lt = text.find("<")
        semi = text.find(";")
        if lt >= 0 and (semi < 0 or lt < semi):
            display = text[:lt].strip() or None
        else:
            lt = -1
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise _bad("Unterminated <> In Address")
        uri = text[lt + 1 : gt].strip()
        ptext = text[gt + 1 :]
    else:
        uri, semi, ptext = text.partition(";")
        uri = uri.strip()
        ptext = semi + ptext
    if not uri or " " in uri or "\t" in uri:
        raise _bad("Bad Address URI")
    if uri != "*" and not _SCHEME_RE.fullmatch(uri.partition(":")[0]):
        raise _bad("Bad Address URI")
    return NameAddr(display, uri, _split_params(ptext, "Address"))


_VIA_PROTO_RE = re.compile(r"\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+")


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]
    raw: str
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def rport(self) -> bool | int | None:
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        if value is None:
            return True
        return int(value) if value.isascii() and value.isdigit() else True

    @property
    def received(self) -> str | None:
        value = self.params.get("received")
        if value and value[0] == "[" and value[-1] == "]":
            return value[1:-1]
        return value

    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) as sent; IPv6 host without brackets."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return host, self.port

    def serialize(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hostport}" + "".join(
            f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items()
        )


def parse_via(text: str) -> Via:
    """Parse one via-parm ('SIP/2.0/UDP host:port;params'); LWS tolerated around '/', ';', '='."""
    match = _VIA_PROTO_RE.match(text)
    if match is None:
        raise _bad("Bad Via")
    name, version, transport = match.groups()
    rest = text[match.end() :]
    sent_by, semi, ptext = rest.partition(";")
    sent_by = sent_by.strip()
    if " " in sent_by or "\t" in sent_by:
        raise _bad("Bad Via Sent-By")
    host, port = _parse_hostport(sent_by, "Via")
    params = _split_params(semi + ptext, "Via")
    return Via(transport.upper(), host, port, params, text.strip(), f"{name}/{version}")


# ---------------------------------------------------------------------------------------------
# messages


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
            if not _TOKEN_RE.fullmatch(parts[1]):
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
        if not package or not _TOKEN_RE.fullmatch(package):
            raise ParseError("Bad Event")
        return package, (_split_params(";" + ptext, "Event") if semi else {})

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
    status: int
    reason: str
    headers: Headers
    body: bytes
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# ---------------------------------------------------------------------------------------------
# parse_message

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
    cache = _CANON_CACHE
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
        name = cache.get(raw_name)
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
    if not _TOKEN_RE.fullmatch(method):
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
    lines, body_at = _split_head(data, stream)
    if not lines or not lines[0]:
        raise ParseError("Empty Message")
    start = lines[0]
    if start.startswith("SIP/"):
        return _parse_response(start, lines, data, body_at, stream)
    method, uri, error, status = _parse_request_line(start)
    items, header_error = _parse_headers(lines[1:])
    headers = Headers._from_canonical(items)
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
    start: str, lines: list[str], data: bytes, body_at: int, stream: bool
) -> Response:
    parts = start.split(" ", 2)
    if parts[0] != "SIP/2.0" or len(parts) < 2:
        raise ParseError("Bad Status-Line")
    code = parts[1]
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or not "100" <= code <= "699":
        raise ParseError("Bad Status Code")
    items, header_error = _parse_headers(lines[1:])
    if header_error is not None:
        raise ParseError(header_error)
    headers = Headers._from_canonical(items)
    response = Response(int(code), parts[2] if len(parts) == 3 else "", headers, b"")
    _check_common(response)
    response._top_via()
    response.body = _body(data, body_at, _content_length(headers), stream)
    return response


# ---------------------------------------------------------------------------------------------
# stream framing


class StreamFramer:
    """TCP framing by Content-Length (mandatory on streams, RFC 3261 18.3).

    CRLF keep-alives between messages are skipped; each CRLFCRLF ping (RFC 5626) increments
    `pings` so the transport can answer with a CRLF pong."""

    __slots__ = ("max_buffer", "pings", "_buf")

    def __init__(self, max_buffer: int = 65536):
        self.max_buffer = max_buffer
        self.pings = 0
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                if buf.startswith(b"\r\n\r\n"):
                    self.pings += 1
                    del buf[:4]
                    continue
                if buf in (b"\r", b"\r\n", b"\r\n\r"):
                    break  # wait for the rest of a possible ping
                del buf[: 2 if buf.startswith(b"\r\n") else 1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_buffer:
                    raise ParseError("Message Too Large", 413)
                break
            total = end + 4 + self._content_length(bytes(buf[:end]))
            if total > self.max_buffer:
                raise ParseError("Message Too Large", 413)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @staticmethod
    def _content_length(head: bytes) -> int:
        found: int | None = None
        for line in head.split(b"\r\n")[1:]:
            colon = line.find(b":")
            if colon <= 0 or line[:1] in (b" ", b"\t"):
                continue
            name = line[:colon].strip().lower()
            if name == b"content-length" or name == b"l":
                value = line[colon + 1 :].strip()
                if not value.isdigit() or len(value) > 10 or found is not None:
                    raise ParseError("Bad Content-Length")
                found = int(value)
        if found is None:
            raise ParseError("Missing Content-Length")
        return found


# ---------------------------------------------------------------------------------------------
# serialisation


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


_SNIFF_VIA = (b"\r\nVia:", b"\r\nv:")


def sniff_response(data: bytes) -> tuple[int, str] | None:
    """(status, top Via branch) of a response, read straight from the bytes, or None.

    The fast path for the answers to our own NOTIFYs (the bulk of all traffic): no header table,
    no structured parsing. Returns None (the caller then runs :func:`parse_message`) unless the
    message is plainly a ``SIP/2.0`` response with a 3-digit status and a top Via in its canonical
    or compact spelling carrying a ``branch`` parameter.
    """
    if data[:8] != b"SIP/2.0 " or len(data) < 12 or data[11:12] not in (b" ", b"\r"):
        return None
    code = data[8:11]
    if not code.isdigit():
        return None
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    via_at = -1
    for marker in _SNIFF_VIA:
        at = data.find(marker, 0, head_end)
        if at >= 0 and (via_at < 0 or at < via_at):
            via_at = at
    if via_at < 0:
        return None
    line_end = data.find(b"\r\n", via_at + 2)
    line = data[via_at + 2 : line_end if line_end >= 0 else head_end]
    comma = line.find(b",")
    if comma >= 0:
        line = line[:comma]  # several Via values on one line: the first is the top one
    at = line.find(b";branch=")
    if at < 0:
        return None
    value = line[at + 8 :]
    for stop in (b";", b" ", b"\t"):
        cut = value.find(stop)
        if cut >= 0:
            value = value[:cut]
    if not value:
        return None
    return int(code), value.decode("ascii", "replace")
