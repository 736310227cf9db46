"""Admission limits for initial SUBSCRIBEs: per source, per watcher, in total, and by rate.

Sans-IO and clock-injected like the engine. The counts themselves live on the subscription
table (:class:`~presence.subscriptions.SubscriptionTable` keeps them as subscriptions come and
go); this module holds the policy and the per-source token bucket.

The *origin* of a SUBSCRIBE is the address limits count against: its source address, or, when
the source is a configured edge proxy (``--edge``), the address that proxy received the request
from. A Kamailio edge (contrib/kamailio-edge/kamailio.cfg) puts its own Via on top and leaves the
phone's Via below it, stamped with ``received=`` (when the phone's sent-by host is not its
source address) and ``rport=``: so the origin is the second Via's ``received``, else its host.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from busylamp.presence.sip import ParseError, Request

TOKEN_TABLE_MAX = 65_536  # sources tracked by the rate limiter at most
# A NOTIFY target that never answered gets at most this many times the SUBSCRIBE's bytes.
AMPLIFICATION_FACTOR = 3.0


@dataclass(frozen=True)
class Limits:
    """Limits on new subscriptions; None (or 0 for a rate) switches one off."""

    max_subscriptions: int | None = None
    max_per_source: int | None = None
    max_per_watcher: int | None = None
    subscribe_rate: float = 0.0  # initial SUBSCRIBEs per source per second (0: no limit)
    subscribe_burst: int = 0  # bucket size (0: one second's worth, at least 1)
    rate_drop: bool = False  # over the rate: no answer at all instead of a 503
    max_pending_notifies: int | None = None
    retry_after: int = 10  # seconds, on a 503 for the total or pending limit
    # new SUBSCRIBEs get 503 while the UDP receive queue being read is at least this full
    # (a fraction of its buffer; 0: never): see presence/node/transport.py
    shed_backlog: float = 0.0
    # ... once it has stayed that full this many seconds (a brief stall the node catches up on
    # is no overload: shedding then would only delay phones a kernel drop delays less)
    shed_after: float = 2.0


class TokenBuckets:
    """One token bucket per source IP: ``rate`` tokens a second, ``burst`` at most.

    The table is bounded: when it outgrows :data:`TOKEN_TABLE_MAX`, buckets full again (idle
    for a whole burst) are forgotten, and if that is not enough the table starts afresh (a spoofed
    flood from many addresses then costs a little fairness, never memory)."""

    def __init__(self, rate: float, burst: int, max_entries: int = TOKEN_TABLE_MAX) -> None:
        self.rate = rate
        self.burst = float(max(1, burst or int(rate) or 1))
        self.max_entries = max_entries
        self._buckets: dict[str, list[float]] = {}  # ip -> [tokens, last refill]
        self.resets = 0

    def allow(self, key: str, now: float) -> bool:
        """Take one token for ``key``; False when its bucket is empty."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._prune(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < full_after}
        if len(self._buckets) >= self.max_entries // 2:
            self._buckets.clear()
            self.resets += 1

    def __len__(self) -> int:
        return len(self._buckets)


def in_networks(ip: str, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def vouched_address(req: Request) -> str | None:
    """The address an edge proxy received ``req`` from, as it wrote it in the Via below its own
    (``received``, else the sent-by host); None when there is no such Via or it is unusable."""
    try:
        vias = req.vias
    except ParseError:
        return None
    if len(vias) < 2:
        return None
    via = vias[1]
    host = via.received or via.sent_by()[0]
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return None
