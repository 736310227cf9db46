"""The spelling of a presentity on the wire and in the engine: ``user@domain``."""

from __future__ import annotations

from urllib.parse import quote, unquote

__all__ = ["aor_uri", "normalize_aor", "normalize_host"]

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


def normalize_aor(user: str, host: str, aliases: dict[str, str] | None = None) -> str:
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


def aor_uri(aor: str) -> str:
    """``sip:`` URI of a normalised AOR, re-escaping user characters a URI cannot carry."""
    user, at, host = aor.rpartition("@")
    if not at:
        return "sip:" + quote(aor, safe=_USER_SAFE + "+")
    return f"sip:{quote(user, safe=_USER_SAFE)}@{host}"
