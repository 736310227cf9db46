"""RFC 3261 lexical grammar shared by the SIP parsers: tokens, quoted strings, parameter lists,
comma lists, host[:port]; and ParseError, raised whenever input breaks it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .parse import Request

__all__ = ["ParseError", "is_token", "split_list"]


class ParseError(ValueError):
    """A message (or header value) that cannot be accepted; `status`/`reason` fit a response.

    `request` is set by parse_message when enough was parsed to address that response."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request: Request | None = None


def bad(reason: str, status: int = 400) -> ParseError:
    """The ParseError for ``reason`` (to raise)."""
    return ParseError(reason, status)


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Bound once for the other modules: Python 3.11 compiles ``imported_name.method(...)`` without the
# method-call optimisation, so ``_TOKEN_RE.fullmatch(x)`` there would bind a method per call.
match_token = _TOKEN_RE.fullmatch
"""``fullmatch`` of an RFC 3261 token."""
match_scheme = _SCHEME_RE.fullmatch
"""``fullmatch`` of a URI scheme."""
_HOST_RE = re.compile(r"[A-Za-z0-9\-._]+")
_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")


def is_token(text: str) -> bool:
    """True when ``text`` is an RFC 3261 token (a tag, a method, a parameter name)."""
    return _TOKEN_RE.fullmatch(text) is not None


def split_outside(text: str, sep: str, *, angle: bool) -> tuple[list[str], bool]:
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


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quoted strings and <...>; drop empties."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    parts, _ = split_outside(value, ",", angle=True)
    return [p for p in (part.strip() for part in parts) if p]


def split_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ';name[=value]' sequences (leading ';' required, LWS allowed around ';' and '=')."""
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise bad(f"Bad {what} Parameters")
    parts = text[1:].split(";") if '"' not in text else _split_quoted(text[1:], ";")
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name or not _TOKEN_RE.fullmatch(name):
            raise bad(f"Bad {what} Parameter")
        if eq:
            value = value.strip()
            if not value:
                raise bad(f"Bad {what} Parameter Value")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def _split_quoted(text: str, sep: str) -> list[str]:
    parts, open_quote = split_outside(text, sep, angle=False)
    if open_quote:
        raise bad("Unbalanced Quotes")
    return parts


def parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[v6]' or '[v6]:port'; IPv6 hosts keep their brackets."""
    if not text:
        raise bad(f"Missing {what} Host")
    if text[0] == "[":
        close = text.find("]")
        if close < 3 or not set(text[1:close]) <= _V6_CHARS or ":" not in text[1:close]:
            raise bad(f"Bad {what} IPv6 Reference")
        host = text[: close + 1]
        tail = text[close + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise bad(f"Bad {what} Host")
        return host, _parse_port(tail[1:], what)
    host, colon, port = text.partition(":")
    if colon and ":" in port:
        raise bad(f"IPv6 {what} Host Without Brackets")
    if not _HOST_RE.fullmatch(host):
        raise bad(f"Bad {what} Host")
    return host, (_parse_port(port, what) if colon else None)


def _parse_port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise bad(f"Bad {what} Port")
    return int(text)
