"""The spelling of a presentity on the wire and in the engine: ``user@domain`` (one spelling
per presentity), and the ``sip:`` URI back from it."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

__all__ = ["aor_from_uri", "aor_uri", "normalize_aor", "normalize_host"]

_SCHEMES = ("sip", "sips", "tel")
_USER_SAFE = "-_.!~*'()&=+$,;?/"  # RFC 3261 unreserved and user-unreserved characters


def normalize_host(host: str) -> str:
    """Lower-case `host`, drop a trailing ``:port``, keep IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def normalize_aor(user: str, host: str, aliases: Mapping[str, str] | None = None) -> str:
    """Return ``user@domain``: user percent-decoded, host normalised and mapped through aliases.

    `aliases` maps an alias host (lower-case, without port) to its canonical domain. An empty
    host yields the bare user (tel: numbers without a phone-context).
    """
    user = unquote(user)
    host = normalize_host(host)
    if aliases and host in aliases:
        host = normalize_host(aliases[host])
    if not host:
        return user
    return f"{user}@{host}" if user else host


_MEMO_MAX = 8192
_memo: dict[str, str] = {}
_memo_aliases: list[object] = [None]  # the aliases mapping the memo was filled with


def aor_from_uri(uri: str, aliases: Mapping[str, str] | None = None) -> str:
    """AOR of a sip:/sips:/tel: URI (or a bare ``user@host``); params, headers, port dropped.

    Accepts an optional display name and angle brackets (``"Bob" <sip:1001@x>``).
    Raises ValueError for other schemes. Memoised per aliases mapping (a presentity's and a
    phone's URIs repeat across SUBSCRIBEs); the mapping is not to be changed in place.
    """
    if aliases is not _memo_aliases[0]:
        _memo.clear()
        _memo_aliases[0] = aliases
    found = _memo.get(uri)
    if found is None:
        found = _aor_from_uri(uri, aliases)
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[uri] = found
    return found


def _aor_from_uri(uri: str, aliases: Mapping[str, str] | None) -> str:
    text = uri.strip()
    lt = text.find("<")
    if lt != -1:
        gt = text.find(">", lt)
        text = text[lt + 1 : gt if gt != -1 else len(text)].strip()
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in _SCHEMES:
        scheme = scheme.lower()
    elif "@" in text or not sep:
        scheme, rest = "sip", text
    else:
        raise ValueError(f"unsupported URI scheme in {uri!r}")
    rest = rest.split("?", 1)[0]
    if scheme == "tel":
        number, _, params = rest.partition(";")
        context = ""
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "phone-context" and not value.startswith("+"):
                context = value
        return normalize_aor(number, context, aliases)
    userinfo, at, hostport = rest.partition("@")
    if not at:
        userinfo, hostport = "", userinfo
    user = userinfo.split(":", 1)[0].split(";", 1)[0]
    host = hostport.split(";", 1)[0]
    return normalize_aor(user, host, aliases)


def aor_uri(aor: str) -> str:
    """``sip:`` URI of a normalised AOR, re-escaping user characters a URI cannot carry."""
    user, at, host = aor.rpartition("@")
    if not at:
        return "sip:" + quote(aor, safe=_USER_SAFE + "+")
    if user.isascii() and user.isalnum():  # the usual extension: nothing to escape
        return f"sip:{user}@{host}"
    return f"sip:{quote(user, safe=_USER_SAFE)}@{host}"
