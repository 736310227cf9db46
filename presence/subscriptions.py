"""The subscription table: every active SUBSCRIBE dialog, its indexes and its expiry wheel.

Sans-IO. A subscription is one small ``__slots__`` object; the table keeps three indexes (by our
To-tag, by watched presentity, by expiry second). Expiry uses a per-second bucket wheel with lazy
deletion: refreshing a subscription only appends it to a new bucket, and a bucket entry whose
subscription moved on is skipped when the bucket comes due. No timer object per subscription.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from busylamp.presence.lifecycle import NAMES, NEW, OWED
from busylamp.presence.packages.base import EventPackage
from busylamp.presence.sip.tokens import token72


class Subscription:
    """One SUBSCRIBE dialog (RFC 6665), seen from the notifier."""

    __slots__ = (
        "tag",
        "call_id",
        "remote_tag",
        "package",
        "presentity",
        "local_uri",
        "remote_uri",
        "target",
        "route",
        "transport",
        "dest",
        "conn_id",
        "cseq",
        "remote_cseq",
        "version",
        "expires_at",
        "inflight",
        "phase",
        "final_reason",
        "source",
        "note",
        "watcher",
        "verified",
        "budget",
    )

    def __init__(
        self,
        tag: str,
        call_id: str,
        remote_tag: str,
        package: EventPackage,
        presentity: str,
        local_uri: str,
        remote_uri: str,
        target: str,
        route: tuple[str, ...] | None,
        transport: str,
        dest: tuple[str, int],
        conn_id: int | None,
        remote_cseq: int,
        expires_at: float,
        source: tuple[str, int],
        origin: str | None = None,
        watcher: str = "",
    ) -> None:
        self.tag = tag
        self.call_id = call_id
        self.remote_tag = remote_tag
        self.package = package
        self.presentity = presentity
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.target = target
        self.route = route
        self.transport = transport
        self.dest = dest
        self.conn_id = conn_id
        self.cseq = 0
        self.remote_cseq = remote_cseq
        self.version = 0
        self.expires_at = expires_at
        self.inflight: str | None = None  # branch of the NOTIFY awaiting its final response
        self.phase = NEW  # where it is in its lifecycle: presence/lifecycle.py
        self.final_reason: str | None = None  # set once terminated: the reason of the last NOTIFY
        # where the SUBSCRIBE came from; (address, port, origin) when the origin, the address
        # limits count against (see limits.py), is not the source's own (behind an edge)
        self.source = source if not origin or origin == source[0] or len(source) > 2 \
            else (source[0], source[1], origin)
        # presence.history: what the last NOTIFY told, and when it went out (answers go there)
        self.note: object = None
        self.watcher = watcher  # the watcher's AOR, for the per-watcher limit
        self.verified = True  # False until the NOTIFY target answered once (amplification)
        self.budget = 0  # bytes a not yet verified target may still be sent

    @property
    def origin(self) -> str:
        """The address limits count against: the source's, or the phone's an edge vouched for."""
        source = self.source
        return source[2] if len(source) > 2 else source[0]

    @property
    def dirty(self) -> bool:
        """Whether a NOTIFY is owed that has not gone out yet."""
        return self.phase in OWED

    @property
    def phase_name(self) -> str:
        return NAMES[self.phase]

    def as_dict(self, now: float) -> dict:
        """A JSON-able view for the admin API."""
        return {
            "id": self.tag,
            "event": self.package.name,
            "presentity": self.presentity,
            "watcher": self.remote_uri,
            "call_id": self.call_id,
            "contact": self.target,
            "route": list(self.route or ()),
            "transport": self.transport,
            "destination": f"{self.dest[0]}:{self.dest[1]}",
            "source": f"{self.source[0]}:{self.source[1]}",
            "expires_in": max(0, int(self.expires_at - now)),
            "version": self.version,
            "cseq": self.cseq,
            "notify_in_flight": self.inflight is not None,
        }


def new_tag() -> str:
    """A To-tag of 72 bits from the OS CSPRNG (RFC 3261 19.3 asks for 32 bits at least): unique
    enough to key the dialog table on its own, and not predictable from tags seen before; 12
    characters, so the string stays in the 64-byte size class."""
    return token72()


# Values kept shared (see SubscriptionTable.shared): a value stays shared while it was seen among
# the last SHARED_GENERATION to 2 * SHARED_GENERATION distinct values (a phone's keys subscribe
# together), at a fixed cost however many subscriptions there are.
SHARED_GENERATION = 16_384
# A presentity's watchers are a list up to this many (cheaper than a dict), a dict by tag beyond
# (removal stays O(1) for the presentity with tens of thousands of watchers).
SMALL_WATCHERS = 16


class SubscriptionTable:
    """Active subscriptions indexed by dialog tag, by (event, presentity) and by expiry second."""

    def __init__(self) -> None:
        self._shared: dict[object, object] = {}  # this generation's shared values
        self._shared_old: dict[object, object] = {}  # the previous generation's
        self._by_tag: dict[str, Subscription] = {}
        # event -> presentity -> its watchers (a list, a dict by tag past SMALL_WATCHERS)
        self._watchers: dict[str, dict[str, list[Subscription] | dict[str, Subscription]]] = {}
        self._wheel: dict[int, list[Subscription]] = {}
        self._wheel_heap: list[int] = []
        self._seconds: dict[int, float] = {}  # expiry second -> the one float the table keeps
        self._conn_use: dict[int, int] = {}  # stream connection -> subscriptions notified on it
        self.per_origin: dict[str, int] = {}  # origin address -> subscriptions (limits)
        self.per_watcher: dict[str, int] = {}  # watcher AOR -> subscriptions (limits)

    def __len__(self) -> int:
        return len(self._by_tag)

    def shared(self, value):
        """One object for equal values seen close together (a phone's URIs and addresses,
        repeated by each of its line keys): memory per subscription is the budget at a million
        of them. Two generations of values, bounded: a value not seen for a generation simply
        stops being shared, the table never grows with the subscriptions."""
        found = self._shared.get(value)
        if found is not None:
            return found
        found = self._shared_old.get(value)
        if found is None:
            found = value
        if len(self._shared) >= SHARED_GENERATION:
            self._shared_old, self._shared = self._shared, {}
        self._shared[found] = found
        return found

    def get(self, tag: str) -> Subscription | None:
        return self._by_tag.get(tag)

    def add(self, sub: Subscription) -> None:
        """Index ``sub``; it takes its presentity's strings from another watcher (one copy per
        presentity), and its expiry rounded up to the second (one float per second)."""
        self._by_tag[sub.tag] = sub
        by_presentity = self._watchers.get(sub.package.name)
        if by_presentity is None:
            by_presentity = self._watchers[sub.package.name] = {}
        watchers = by_presentity.get(sub.presentity)
        if watchers is None:
            by_presentity[sub.presentity] = [sub]
        else:
            other = watchers[0] if watchers.__class__ is list else next(iter(watchers.values()))
            sub.presentity = other.presentity
            if sub.local_uri == other.local_uri:
                sub.local_uri = other.local_uri
            if watchers.__class__ is dict:
                watchers[sub.tag] = sub
            elif len(watchers) < SMALL_WATCHERS:
                watchers.append(sub)
            else:
                many = by_presentity[sub.presentity] = {w.tag: w for w in watchers}
                many[sub.tag] = sub
        if sub.conn_id is not None:
            self._conn_use[sub.conn_id] = self._conn_use.get(sub.conn_id, 0) + 1
        self.per_origin[sub.origin] = self.per_origin.get(sub.origin, 0) + 1
        self.per_watcher[sub.watcher] = self.per_watcher.get(sub.watcher, 0) + 1
        self._schedule(sub, sub.expires_at)

    def remove(self, sub: Subscription) -> bool:
        """Drop a subscription from every index; False when it was not in the table."""
        if self._by_tag.pop(sub.tag, None) is None:
            return False
        by_presentity = self._watchers.get(sub.package.name)
        watchers = by_presentity.get(sub.presentity) if by_presentity is not None else None
        if watchers is not None:
            if watchers.__class__ is dict:
                watchers.pop(sub.tag, None)
            elif sub in watchers:
                watchers.remove(sub)
            if not watchers:
                del by_presentity[sub.presentity]
                if not by_presentity:
                    del self._watchers[sub.package.name]
        if sub.conn_id is not None:
            self._release_conn(sub.conn_id)
        _decrement(self.per_origin, sub.origin)
        _decrement(self.per_watcher, sub.watcher)
        return True

    def set_conn(self, sub: Subscription, conn_id: int | None) -> None:
        """Move ``sub``'s NOTIFYs to another stream connection (or to none)."""
        if conn_id == sub.conn_id:
            return
        if self._by_tag.get(sub.tag) is sub:
            if sub.conn_id is not None:
                self._release_conn(sub.conn_id)
            if conn_id is not None:
                self._conn_use[conn_id] = self._conn_use.get(conn_id, 0) + 1
        sub.conn_id = conn_id

    def uses_conn(self, conn_id: int) -> bool:
        """Whether any subscription's NOTIFYs go over stream connection ``conn_id``."""
        return conn_id in self._conn_use

    def _release_conn(self, conn_id: int) -> None:
        left = self._conn_use.get(conn_id, 0) - 1
        if left > 0:
            self._conn_use[conn_id] = left
        else:
            self._conn_use.pop(conn_id, None)

    def refresh(self, sub: Subscription, expires_at: float) -> None:
        self._schedule(sub, expires_at)

    def watchers(self, package: str, presentity: str) -> list[Subscription]:
        by_presentity = self._watchers.get(package)
        watchers = by_presentity.get(presentity) if by_presentity is not None else None
        if watchers is None:
            return []
        return watchers[:] if watchers.__class__ is list else list(watchers.values())

    def watcher_count(self, package: str, presentity: str) -> int:
        by_presentity = self._watchers.get(package)
        watchers = by_presentity.get(presentity) if by_presentity is not None else None
        return len(watchers) if watchers else 0

    def watched(self) -> Iterator[tuple[str, str]]:
        """Every (event, presentity) that has at least one watcher."""
        return iter([(package, presentity) for package, by_presentity in self._watchers.items()
                     for presentity in by_presentity])

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._by_tag.values()))

    def counts_by_package(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for package, by_presentity in self._watchers.items():
            counts[package] = sum(len(watchers) for watchers in by_presentity.values())
        return counts

    # -- expiry wheel -------------------------------------------------------------------------

    def _schedule(self, sub: Subscription, expires_at: float) -> None:
        """Set ``sub``'s expiry to ``expires_at`` rounded up to the second (the float of that
        second is shared by every subscription expiring then), and put it in its bucket."""
        whole = int(expires_at)
        if whole < expires_at:
            whole += 1
        at = self._seconds.get(whole)
        if at is None:
            at = self._seconds[whole] = float(whole)
        sub.expires_at = at
        second = whole + 1  # due strictly after expires_at
        bucket = self._wheel.get(second)
        if bucket is None:
            bucket = self._wheel[second] = []
            heapq.heappush(self._wheel_heap, second)
        bucket.append(sub)

    def next_expiry(self) -> float | None:
        return float(self._wheel_heap[0]) if self._wheel_heap else None

    def pop_expired(self, now: float) -> list[Subscription]:
        """Remove and return the subscriptions whose expiry has passed."""
        expired: list[Subscription] = []
        heap = self._wheel_heap
        while heap and heap[0] <= now:
            second = heapq.heappop(heap)
            self._seconds.pop(second - 1, None)
            for sub in self._wheel.pop(second, ()):
                if (
                    int(sub.expires_at) + 1 == second
                    and sub.expires_at <= now
                    and self._by_tag.get(sub.tag) is sub
                ):
                    self.remove(sub)
                    expired.append(sub)
        return expired


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
