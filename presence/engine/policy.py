"""SUBSCRIBE policy: trust, origin and edges, limits and rate, expiry bounds, believable NOTIFY
targets and their byte budget (amplification), accepted packages and bodies."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from busylamp.presence.engine.config import ALLOW
from busylamp.presence.engine.routing import Unresolved
from busylamp.presence.limits import in_networks, vouched_address
from busylamp.presence.packages.base import EventPackage
from busylamp.presence.sip import (
    Request,
)
from busylamp.presence.sip.build import response_tail
from busylamp.presence.subscriptions import Subscription


def _aliased(aor: str, aliases: Mapping[str, str]) -> str:
    user, _, domain = aor.rpartition("@")
    return f"{user}@{aliases.get(domain, domain)}"


def _domain(aor: str) -> str:
    return aor.rpartition("@")[2]


def _member(cache: dict[str, bool], ip: str, networks) -> bool:
    """Whether ``ip`` is in ``networks``, remembered in ``cache`` (4,096 addresses at most)."""
    found = cache.get(ip)
    if found is None:
        if len(cache) >= 4096:
            cache.clear()
        found = cache[ip] = in_networks(ip, networks)
    return found


def _accepts(accepts: list[str], package: EventPackage) -> bool:
    """Whether an Accept header list admits one of ``package``'s body types. Cached: phones
    send the same few Accept values."""
    return _accepts_types(tuple(accepts), package.accept)


@functools.lru_cache(maxsize=1024)
def _accepts_types(accepts: tuple[str, ...], types: tuple[str, ...]) -> bool:
    offered = {t.lower() for t in types}
    for value in accepts:
        media = value.split(";", 1)[0].strip().lower()
        if not media or media == "*/*" or media in offered:
            return True
        if media.endswith("/*") and any(t.startswith(media[:-1]) for t in offered):
            return True
    return False


class SubscribePolicy:
    """The checks a SUBSCRIBE passes before a dialog is made (a mixin of PresenceEngine)."""

    # Set by the node while the UDP receive queue it reads is fuller than Limits.shed_backlog:
    # new SUBSCRIBEs are then refused before any work is spent on them (see _shed).
    overloaded: bool = False

    def _shed(self, req: Request, respond: Callable[..., None]) -> None:
        """Refuse a new SUBSCRIBE while overloaded: 503 with a Retry-After spread over
        [retry_after, 2 * retry_after) by Call-ID, so the refused phones do not all come back
        in the same second."""
        self.counters.limit_overload += 1
        self._reject(respond, 503, "Overloaded", [("Retry-After", self._shed_delay(req.call_id))])

    def _shed_delay(self, call_id: str) -> str:
        """The Retry-After of a shed SUBSCRIBE: ``retry_after`` plus the sum of the Call-ID's
        bytes (as received: one not in UTF-8 too) modulo ``retry_after``."""
        base = self.config.limits.retry_after
        return str(base + sum(call_id.encode("utf-8", "surrogateescape")) % max(1, base))

    def _origin(self, req: Request, source: tuple[str, int]) -> str:
        """The address limits count against: the source, or for a request from a configured
        edge the address the edge vouches for in the Via below its own (see limits.py)."""
        ip = source[0]
        if not self.config.edges:
            return ip
        if not self._is_edge(ip):
            return ip
        return vouched_address(req) or ip

    def _is_edge(self, ip: str) -> bool:
        return _member(self._edge_cache, ip, self.config.edges)

    def _over_limit(self, origin: str, watcher: str) -> tuple[str, str] | None:
        """(counter, reason) of the first limit a new subscription would exceed, or None."""
        limits = self.config.limits
        table = self.subscriptions
        if limits.max_subscriptions is not None and len(table) >= limits.max_subscriptions:
            return "limit_total", "Too many subscriptions"
        if self._pending_full():
            return "limit_pending", "Too many NOTIFYs pending"
        if limits.max_per_source is not None and \
                table.per_origin.get(origin, 0) >= limits.max_per_source:
            return "limit_source", "Too many subscriptions from this address"
        if limits.max_per_watcher is not None and \
                table.per_watcher.get(watcher, 0) >= limits.max_per_watcher:
            return "limit_watcher", "Too many subscriptions for this watcher"
        return None

    def _believable(self, dest: tuple[str, int], source: tuple[str, int]) -> bool:
        """Whether NOTIFYs may go to ``dest`` for a SUBSCRIBE from ``source``: the source's own
        IP address (any port), or a configured edge (a route set through it, or the edge's
        own address); any target with ``notify_any_target``. A host name is checked once it
        resolved (:meth:`resolved`)."""
        if self.config.notify_any_target or dest.__class__ is Unresolved:
            return True
        return dest[0] == source[0] or (bool(self.config.edges) and self._is_edge(dest[0]))

    def _set_budget(self, sub: Subscription, source: tuple[str, int], transport: str,
                    conn_id: int | None) -> None:
        """A new subscription's target is unverified until it answers, unless the SUBSCRIBE
        came over a stream (a handshake proved its source) and NOTIFYs take the same connection,
        or from a configured edge. Its budget: ``amplification_factor`` times the SUBSCRIBE's
        bytes, less the response when that went to the same address."""
        factor = self.config.amplification_factor
        if factor <= 0 or (conn_id is not None and sub.conn_id == conn_id) or \
                (self.config.edges and self._is_edge(source[0])):
            return
        sub.verified = False
        budget = int(factor * self._in_size)
        if self._out and sub.dest.__class__ is not Unresolved and sub.dest[0] == source[0]:
            budget -= len(self._out[-1][2])
        sub.budget = budget

    def _is_trusted(self, ip: str) -> bool:
        return _member(self._trusted_cache, ip, self.config.trusted)

    def _capabilities(self) -> list[tuple[str, str]]:
        accept = ", ".join(p.content_type for p in self.packages.values())
        return [("Allow", ALLOW), ("Allow-Events", self._allow_events), ("Accept", accept)]

    def _package_for(self, req: Request, respond: Callable[..., None]) -> EventPackage | None:
        event = req.event
        package = self.packages.get(event[0]) if event is not None else None
        if package is None:
            self._reject(respond, 489, None, [("Allow-Events", self._allow_events)])
            return None
        accepts = req.headers.get_all("Accept")
        if accepts and not _accepts(accepts, package):
            self._reject(respond, 406, None, [("Accept", package.content_type)])
            return None
        return package

    def _expires_for(
        self, req: Request, package: EventPackage, respond: Callable[..., None],
        to_tag: str | None = None,
    ) -> int | None:
        expires = req.expires
        if expires is None:  # the default is ours: always within the bounds, never a 423
            default = self.config.default_expires or package.default_expires
            return max(self.config.min_expires, min(default, self.config.max_expires))
        if expires == 0:
            return 0
        if expires < self.config.min_expires:
            self._reject(
                respond, 423, None, [("Min-Expires", str(self.config.min_expires))], to_tag
            )
            return None
        return min(expires, self.config.max_expires)

    def _reject(
        self, respond: Callable[..., None], status: int, reason: str | None,
        headers: Iterable[tuple[str, str]] = (), to_tag: str | None = None,
    ) -> None:
        self.counters.subscribe_rejected += 1
        respond(status, reason, headers, to_tag=to_tag)

    # a 200's prebuilt rest per (NOTIFY transport, expiry): see _ok_tail
    _ok_tails: dict[tuple[str, int], str] | None = None

    def _ok_headers(self, transport: str, expires: int) -> list[tuple[str, str]]:
        """The headers a 200 to a SUBSCRIBE adds: Expires, our Contact for NOTIFYs over
        ``transport`` (RFC 6665 4.1.2.1, 4.2.1), Allow-Events."""
        return [
            ("Expires", str(expires)),
            ("Contact", self._contact_hdr.get(transport) or next(iter(self._contact_hdr.values()))),
            ("Allow-Events", self._allow_events),
        ]

    def _ok_tail(self, transport: str, expires: int) -> str:
        """:meth:`_ok_headers` with Server and Content-Length as :func:`build_ok` splices them
        in, made once per (transport, expiry) (a few hundred at most are kept)."""
        tails = self._ok_tails
        if tails is None:
            tails = self._ok_tails = {}
        key = (transport, expires)
        tail = tails.get(key)
        if tail is None:
            if len(tails) >= 256:
                tails.clear()
            tail = tails[key] = response_tail(self._ok_headers(transport, expires),
                                              self._server_header)
        return tail
