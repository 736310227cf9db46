"""SIP header names (canonical spellings, compact forms) and the ordered header table."""

from __future__ import annotations

from collections.abc import Iterator

from .grammar import match_token, split_list

__all__ = ["Headers", "canonical_name"]

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

_CANONICAL = frozenset(_KNOWN_NAMES)  # names the engine asks for are spelled this way already
_CANON_BY_LOWER: dict[str, str] = {n.lower(): n for n in _KNOWN_NAMES}
_CANON_BY_LOWER.update(_COMPACT)
CANON_CACHE: dict[str, str] = {}
"""Raw header name -> canonical name, filled by :func:`canonical_name` (read by the parser)."""
_CANON_CACHE_MAX = 4096


def canonical_name(name: str) -> str | None:
    """Canonical spelling of a header name (compact forms expanded); None if not a token."""
    cached = CANON_CACHE.get(name)
    if cached is not None:
        return cached
    stripped = name.rstrip(" \t")
    if not match_token(stripped):
        return None
    lower = stripped.lower()
    canon = _CANON_BY_LOWER.get(lower)
    if canon is None:
        canon = "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))
    if len(CANON_CACHE) < _CANON_CACHE_MAX:
        CANON_CACHE[name] = canon
    return canon


class Headers:
    """Ordered header list; names canonicalised (Call-ID, CSeq, Via, WWW-Authenticate, ...;
    compact forms i f t v m l c k e o u s x expanded).

    ``_index`` (canonical name -> values in wire order) is read directly by the parser and the
    response builder of this package."""

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

    @classmethod
    def _from_index(cls, items: list[tuple[str, str]], index: dict[str, list[str]]) -> Headers:
        """From canonical pairs and the same pairs already grouped by name (the C head split)."""
        self = cls.__new__(cls)
        self._items = items
        self._index = index
        return self

    def _values(self, name: str) -> list[str] | None:
        values = self._index.get(name)
        if values is None and name not in _CANONICAL:
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
        canon = name if name in _CANONICAL else canonical_name(name) or name
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
