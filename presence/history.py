"""What changed each lamp, and what the watchers were told: a bounded history per presentity.

Sans-IO, driven by the engine's hooks with the engine's ``now`` (monotonic seconds); one
injected wall clock turns those into times an operator can read. The engine calls:

- :meth:`History.updated` after each update it applies (when nothing changed, the state's
  drop counters say why), :meth:`History.snapshot` for a switch
  snapshot, :meth:`History.expired` for records whose Expires ran out;
- :meth:`History.fanout` once per changed presentity before its NOTIFYs go out (and
  :meth:`History.merged` for each watcher it could not notify then): the engine points each
  notified subscription at the entry itself (``sub.note``: its NOTIFY went out at the entry's
  time), so its answer lands there without any look-up;
- :meth:`History.resent` for a NOTIFY sent later (coalesced behind one in flight, refresh,
  final), :meth:`History.subscribed` for a SUBSCRIBE's initial NOTIFY: ``sub.note`` is then a
  two-item ticket [entry, sent at] (the time alone when no entry describes the change);
- :meth:`History.answered` / :meth:`History.timed_out` for the final answer: the first
  DETAILED watchers of the entry are appended to it one by one, the others counted.

Hot-path layout: an entry is one flat list (see ``_record``; :class:`Entry` and :class:`Watch`
are views built when reading), and the notify_to_answer times are queued on the histogram and
settled in bulk (:meth:`presence.histogram.Histogram.settle`). When the optional extension
``presence/_history.c`` is built (``python -m busylamp.presence.node.buildext``), the answer
hook's common paths run in C and entries, acyclic by construction (strings, numbers, None,
tuples of those, a dict of counts: never a subscription), are left out of the cyclic collector;
without it the same Python code runs (docs/BENCHMARKS.md has the cost of both).

The node calls :meth:`History.applied` and :meth:`History.flushed` after handing NOTIFYs to the
transports: the stage histograms ``applied_to_notify`` and ``subscribe_to_notify`` measure up to
that point. With ``per_presentity`` 0 the node attaches no hooks at all.

Cost: an entry records up to :data:`DETAILED` watchers individually and the rest as counts per
answer code plus a latency range, so the fan-out to 36,000 watchers costs the same as to 9.
Rings hold ``per_presentity`` entries; when their estimated size (:data:`ENTRY_BYTES` per entry,
:data:`WATCH_BYTES` per detailed watcher, both measured) passes ``max_bytes`` the rings of the
presentities changed longest ago are dropped first. SUBSCRIBE entries (one per initial NOTIFY,
for presentities of at most DETAILED watchers) stop at :data:`SUBSCRIBE_SHARE` of the cap, so a
bulk load of subscriptions costs a bounded few megabytes here, not the whole cap.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from busylamp.presence.histogram import Histogram, StageHistograms

try:  # the answer hook in C (python -m busylamp.presence.node.buildext); else History._answered
    from busylamp.presence._history import Answerer
    from busylamp.presence._history import untrack as _untrack  # entries out of the cyclic GC
except ImportError:
    Answerer = _untrack = None

__all__ = ["DETAILED", "ENTRY_BYTES", "WATCH_BYTES", "Entry", "Gap", "History", "Watch"]

DETAILED = 8
DEFAULT_PER_PRESENTITY = 32
# Measured bytes of an entry and of each watcher detailed in it (tests/system/test_history.py measures
# them, docs/BENCHMARKS.md reports them): the memory cap counts with these.
ENTRY_BYTES = 800
WATCH_BYTES = 96
DEFAULT_MEMORY_MB = 128
# SUBSCRIBE entries take at most this share of ``max_bytes`` (estimated as any entry): a bulk
# load of a million subscriptions records the first ones, not a history of nothing but
# SUBSCRIBEs; what changed the lamps always has the rest
SUBSCRIBE_SHARE = 8
TIMEOUT = 0  # "answer code" of a NOTIFY that timed out (Timer F)
# the wall clock is read again after this many seconds (engine clock) without a reading
OFFSET_REFRESH = 1.0
SETTLE_AT = 4096  # NOTIFY -> answer times queued before they are folded into the histogram

# effects of an update on the records
APPLIED = "applied"
TERMINATED = "applied: terminated"
UNCHANGED = "unchanged (same state: a refresh or republish)"
OLDER = "ignored: older than the record (bridge, epoch, sequence)"
TOMBSTONE = "ignored: the record already ended (tombstone)"
EXPIRED = "expired: Expires ran out"
SNAPSHOT_APPLIED = "applied (switch snapshot)"
SNAPSHOT_UNCHANGED = "unchanged (switch snapshot)"
SNAPSHOT_REPLACED = "terminated: missing from the switch's snapshot"



# An entry is one flat list (cheap to build on the hot path; :class:`Entry` is its read view):
_ID, _KIND, _PACKAGE, _AT, _WALL, _RECORD, _STATE, _STAMP, _ORIGIN, _EFFECT = range(10)
_WATCHERS, _SENT, _COALESCED, _OK, _CODES, _LAT_MIN, _LAT_MAX = range(10, 17)
_WHO = 17  # then per detailed watcher, appended when it answers: dialog tag, remote URI,
# transport, its version after the send, sent at, answer, answered at
_STRIDE = 7
_FULL = _WHO + DETAILED * _STRIDE  # the length of an entry with DETAILED watchers recorded
# what presence/_history.c needs to know of this layout: indexes, then the subscription's slots
# it reads (its note, then what a detailed watcher records, in that order)
_ANSWER_LAYOUT = (_AT, _OK, _LAT_MIN, _LAT_MAX, _FULL, "_waits", "note", "tag", "remote_uri",
                  "transport", "version")


def _record(id_: int, kind: str, package: str, at: float, wall: float,
            record: str | None = None, state: str | None = None,
            stamp: tuple = (None, None, None, None, None), origin: tuple | None = None,
            effect: str = "") -> list:
    """A new entry (the hot path of updates builds its list inline)."""
    return [id_, kind, package, at, wall, record, state, stamp, origin, effect,
            0, 0, 0, 0, None, 1e9, 0.0]


def _ticket(rec: list | None, at: float) -> list | float:
    """What a NOTIFY sent apart from its entry's fan-out told (merged changes, refresh, final,
    initial state): [entry, sent at]; for a change no entry describes, the time it was sent
    alone (a float: no list per subscription). A fan-out's NOTIFYs point at the entry itself (a
    longer list): they went out at its time."""
    return at if rec is None else [rec, at]


class Entry:
    """A read-only view of one change of a presentity: its origin, the update, its effect, the
    NOTIFYs it caused (built when reading; the history keeps the flat list ``rec``).

    Few objects per entry, none pointing back at a subscription (subscriptions point at their
    entry; the history stays acyclic, so gc.freeze() can hold it and refcounting frees it): the
    first DETAILED watchers to answer are one flat list (:data:`_STRIDE` values each, taken
    from the subscription when its answer arrives: nothing is kept per watcher at fan-out
    time); every answer counts in ``ok``/``codes`` and the latency range."""

    __slots__ = ("rec",)

    def __init__(self, rec: list) -> None:
        self.rec = rec

    id = property(lambda self: self.rec[_ID])
    kind = property(lambda self: self.rec[_KIND])
    package = property(lambda self: self.rec[_PACKAGE])
    at = property(lambda self: self.rec[_AT])
    wall = property(lambda self: self.rec[_WALL])
    record = property(lambda self: self.rec[_RECORD])
    state = property(lambda self: self.rec[_STATE])
    stamp = property(lambda self: self.rec[_STAMP])  # (bridge, epoch, sequence, switch, expires)
    # (event, unique id, call state, event time us, bridge time us)
    origin = property(lambda self: self.rec[_ORIGIN])
    @property
    def effect(self) -> str:
        effect = self.rec[_EFFECT]
        if effect is None:  # an update that changed the records: applied, or ended the call
            expires = self.rec[_STAMP][4]
            return TERMINATED if self.rec[_STATE] == "terminated" or (
                expires is not None and expires <= 0) else APPLIED
        return effect
    watchers = property(lambda self: self.rec[_WATCHERS])
    sent = property(lambda self: self.rec[_SENT])
    coalesced = property(lambda self: self.rec[_COALESCED])
    ok = property(lambda self: self.rec[_OK])
    codes = property(lambda self: self.rec[_CODES])
    lat_min = property(lambda self: self.rec[_LAT_MIN])
    lat_max = property(lambda self: self.rec[_LAT_MAX])
    who = property(lambda self: self.rec[_WHO:])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and other.rec is self.rec

    def __hash__(self) -> int:
        return id(self.rec)

    def answers_by_code(self) -> dict[int, int]:
        """Answer code -> count (0: timed out): the detailed watchers' answers, and the
        others' counts."""
        counts = dict(self.rec[_CODES] or {})
        if self.rec[_OK]:
            counts[200] = self.rec[_OK]
        for status in self.rec[_WHO + 5::_STRIDE]:
            counts[status] = counts.get(status, 0) + 1
        return counts

    def watches(self) -> list[Watch]:
        return [Watch(self, i) for i in range((len(self.rec) - _WHO) // _STRIDE)]

    def watch_of(self, sub: Any) -> Watch | None:
        index = _detail_of(self.rec, sub.tag)
        return None if index is None else Watch(self, index)


class Watch:
    """A read-only view of one detailed watcher's NOTIFY for one entry (built when reading)."""

    __slots__ = ("entry", "watcher", "tag", "version", "sent_at", "status", "answered_at",
                 "coalesced", "reliable")

    def __init__(self, entry: Entry, index: int) -> None:
        base = _WHO + index * _STRIDE
        self.entry = entry
        self.tag, self.watcher, transport, version, self.sent_at, self.status, \
            self.answered_at = entry.rec[base:base + _STRIDE]
        self.reliable = transport != "udp"
        self.version = version - 1 if version else None  # the version that NOTIFY carried
        self.coalesced = self.sent_at != entry.rec[_AT]  # sent later: merged behind one in flight


def _detail_of(rec: list, tag: str) -> int | None:
    """Index of the watcher ``tag`` among the entry's detailed watchers."""
    for index, base in enumerate(range(_WHO, len(rec), _STRIDE)):
        if rec[base] == tag:
            return index
    return None


class Gap:
    """Updates of one bridge that never arrived (detected from its sequence numbers)."""

    __slots__ = ("bridge", "epoch", "first", "last", "at", "wall")

    def __init__(self, bridge: str, epoch: int, first: int, last: int, at: float,
                 wall: float) -> None:
        self.bridge, self.epoch, self.first, self.last = bridge, epoch, first, last
        self.at, self.wall = at, wall


def _fast(answered: Callable) -> Any:
    """``answered`` in C (presence/_history.c), or itself when a stale build does not fit."""
    try:
        return Answerer(answered, _ANSWER_LAYOUT)
    except (TypeError, ValueError):
        return answered


class History:
    """Rings of :class:`Entry` per presentity, the recent sequence gaps, the stage histograms."""

    __slots__ = ("per_presentity", "max_bytes", "enabled", "wall", "stages", "_notify_stage",
                 "_waits", "_applied_stage", "_subscribe_stage", "_bridge_stage", "rings",
                 "_gone", "bytes", "dropped_rings", "gaps", "skip_sources", "t1", "t2",
                 "offset", "_offset_at", "pending", "_seq", "_gaps_seen", "_stale", "_tomb",
                 "_state", "_counters", "_recent", "_recent_at", "subscribe_bytes")

    def __init__(self, *, per_presentity: int = DEFAULT_PER_PRESENTITY,
                 max_bytes: int = DEFAULT_MEMORY_MB * 2**20,
                 wall: Callable[[], float] = time.time,
                 stages: StageHistograms | None = None) -> None:
        self.per_presentity = per_presentity
        self.max_bytes = max_bytes
        self.enabled = per_presentity > 0
        self.wall = wall
        self.stages = stages or StageHistograms()
        self._notify_stage = self.stages["notify_to_answer"]
        self._waits = self._notify_stage.pending  # NOTIFY -> answer times, settled in bulk
        self._applied_stage = self.stages["applied_to_notify"]
        self._subscribe_stage = self.stages["subscribe_to_notify"]
        self._bridge_stage = self.stages["bridge_to_applied"]
        # presentity -> its ring, oldest entry first (a list: far smaller than a deque for the
        # few entries most presentities have); entries: see _record
        self.rings: OrderedDict[str, list[list]] = OrderedDict()
        self._gone = 0  # entries dropped since the start (entries = added - gone)
        self.bytes = 0  # estimated, see ENTRY_BYTES
        self.subscribe_bytes = 0  # of which SUBSCRIBE entries (SUBSCRIBE_SHARE)
        self.dropped_rings = 0
        self.gaps: deque[Gap] = deque(maxlen=64)
        self.skip_sources: list[Any] = []  # objects with .matching(user) (bridge skip logs)
        self.t1, self.t2 = 0.5, 4.0
        self.offset = wall() - time.monotonic()  # wall - engine clock, refreshed by updates
        self._offset_at = float("-inf")  # engine time of the last refresh (OFFSET_REFRESH)
        self.pending: list[tuple[Histogram, float, int]] = []
        self._seq = 0
        self._gaps_seen = 0  # the state's gap counter at the last update
        self._stale = self._tomb = 0  # the state's drop counters at the last update
        self._state: Any = None
        self._counters: dict[str, int] = {"notify_sent": 0}
        self._recent: list | None = None  # the last update's entry, and its presentity
        self._recent_at = ""

    # -- wiring ----------------------------------------------------------------------------

    def attach(self, state: Any, counters: dict[str, int], *, t1: float = 0.5,
               t2: float = 4.0) -> None:
        """Follow ``state``'s gap counter (read after each update: a sequence gap it counted
        becomes a :class:`Gap`) and the engine's ``counters`` (NOTIFYs sent during a fan-out)."""
        self._state = state
        self._gaps_seen = state.stats.gaps
        self._counters = counters
        self.t1, self.t2 = t1, t2

    # -- the ring ---------------------------------------------------------------------------

    def _entry(self, presentity: str, kind: str, package: str, now: float, **fields: Any) -> list:
        self._seq += 1
        entry = _record(self._seq, kind, package, now, now + self.offset, **fields)
        if _untrack is not None:
            _untrack(entry)
        self._add(presentity, entry)
        if kind != "subscribe":
            self._recent, self._recent_at = entry, presentity
        return entry

    def _add(self, presentity: str, entry: list) -> None:
        rings = self.rings
        ring = rings.get(presentity)
        if ring is None:
            ring = rings[presentity] = []
        else:
            rings.move_to_end(presentity)
            if len(ring) >= self.per_presentity:
                self._gone += 1
                self._drop(ring.pop(0))
        ring.append(entry)
        self.bytes += ENTRY_BYTES
        self._shrink()

    def _shrink(self) -> None:
        """Drop the rings of the presentities changed longest ago until under the cap."""
        rings = self.rings
        while self.bytes > self.max_bytes and len(rings) > 1:
            _, oldest = rings.popitem(last=False)
            self._gone += len(oldest)
            for entry in oldest:
                self._drop(entry)
            self.dropped_rings += 1

    def _drop(self, entry: list) -> None:
        cost = _cost(entry)
        self.bytes -= cost
        if entry[_KIND] == "subscribe":
            self.subscribe_bytes -= cost

    @property
    def entries(self) -> int:
        """Entries held in the rings."""
        return self._seq - self._gone

    @entries.setter
    def entries(self, value: int) -> None:
        self._gone = self._seq - value

    @property
    def added(self) -> int:
        """Entries recorded since the start (the node freezes the GC heap as it grows)."""
        return self._seq

    def latest(self, package: str, presentity: str) -> Entry | None:
        rec = self._latest(package, presentity)
        return None if rec is None else Entry(rec)

    def _latest(self, package: str, presentity: str) -> list | None:
        ring = self.rings.get(presentity)
        if ring:
            for entry in reversed(ring):
                if entry[_PACKAGE] == package and entry[_KIND] != "subscribe":
                    return entry
        return None

    # -- engine hooks: updates --------------------------------------------------------------

    def updated(self, update: Any, keys: set, now: float) -> None:
        """One update was applied (``keys``: what changed)."""
        raw = update.raw
        sent = raw.get("Bridge-Timestamp")
        if sent is not None and type(sent) is int:  # the stage needs the wall clock now
            wall = self.wall()
            self.offset = wall - now
            self._offset_at = now
            self._bridge_stage.observe(wall - sent / 1e6)
        elif now - self._offset_at < OFFSET_REFRESH:
            wall = now + self.offset
        else:
            wall = self.wall()
            self.offset = wall - now
            self._offset_at = now
        tracked = self._state
        if tracked is not None and tracked.stats.gaps != self._gaps_seen:
            self._note_gap(update.bridge_id, update.bridge_epoch, update.sequence, now)
        if not self.enabled:
            return
        data = update.data
        state = data.get("State") or data.get("Messages-Waiting")
        if keys:
            effect = None  # APPLIED or TERMINATED, told by the state and Expires when read
        else:  # nothing changed: the state's counters say why
            stats = self._state.stats
            if stats.stale_dropped != self._stale:
                effect = OLDER
            elif stats.resurrect_dropped != self._tomb:
                effect = TOMBSTONE
            else:
                effect = UNCHANGED
            self._stale, self._tomb = stats.stale_dropped, stats.resurrect_dropped
        origin = None
        if "Switch-Event" in raw or "Event-Timestamp" in raw:
            get = raw.get
            origin = (get("Switch-Event"), get("Unique-ID"), get("Channel-Call-State"),
                      get("Event-Timestamp"), sent)
        self._seq = seq = self._seq + 1
        entry = self._recent = [
            seq, "update", update.package, now, wall, update.record_id, state,
            (update.bridge_id, update.bridge_epoch, update.sequence, update.switch_id,
             update.expires), origin, effect, 0, 0, 0, 0, None, 1e9, 0.0]  # _record
        if _untrack is not None:  # acyclic: the young collections need not walk it
            _untrack(entry)
        presentity = self._recent_at = update.presentity
        rings = self.rings
        ring = rings.get(presentity)
        if ring is not None and len(ring) < self.per_presentity:  # the common case, inline
            rings.move_to_end(presentity)
            ring.append(entry)
            self.bytes += ENTRY_BYTES
            if self.bytes > self.max_bytes:
                self._shrink()
        else:
            self._add(presentity, entry)

    def snapshot(self, snap: Any, keys: set, now: float) -> None:
        """A switch snapshot was applied: one entry per record it carried or terminated."""
        self.offset = self.wall() - now
        self._offset_at = now
        self._note_gap(snap.bridge_id, snap.bridge_epoch, snap.sequence, now)
        if not self.enabled:
            return
        carried = set()
        for update in snap.updates:
            key = (update.package, update.presentity)
            carried.add(key)
            self._entry(update.presentity, "snapshot", update.package, now,
                        record=update.record_id,
                        state=update.data.get("State") or update.data.get("Messages-Waiting"),
                        stamp=(snap.bridge_id, snap.bridge_epoch, snap.sequence, snap.switch_id,
                               update.expires),
                        effect=SNAPSHOT_APPLIED if key in keys else SNAPSHOT_UNCHANGED)
        for package, presentity in keys - carried:
            self._entry(presentity, "snapshot", package, now, state="terminated",
                        stamp=(snap.bridge_id, snap.bridge_epoch, snap.sequence, snap.switch_id,
                               None),
                        effect=SNAPSHOT_REPLACED)

    def expired(self, keys: Iterable[tuple[str, str]], now: float) -> None:
        if not self.enabled:
            return
        for package, presentity in keys:
            self._entry(presentity, "expired", package, now, effect=EXPIRED)

    def _note_gap(self, bridge: str | None, epoch: int | None, sequence: int | None,
                  now: float) -> None:
        """Record the updates the state counted missing since the last update (a gap before
        this bridge message's ``sequence``)."""
        state = self._state
        if state is None:
            return
        missing = state.stats.gaps - self._gaps_seen
        self._gaps_seen = state.stats.gaps
        if missing <= 0 or bridge is None or sequence is None:
            return
        self.gaps.append(Gap(bridge, epoch or 0, sequence - missing, sequence - 1, now,
                             now + self.offset))

    # -- engine hooks: NOTIFYs --------------------------------------------------------------

    def fanout(self, package: str, presentity: str, watchers: list, now: float) -> Any:
        """NOTIFYs for the latest change of (package, presentity) are about to go out to
        ``watchers``; the engine points every subscription it notifies at the returned note
        (the entry itself, usually the one the update just made: its NOTIFYs go out at its
        time) and reports each watcher it could not notify (:meth:`merged`)."""
        entry = self._recent
        if (entry is None or self._recent_at != presentity or entry[_PACKAGE] != package
                or entry[_AT] != now or entry[_WATCHERS]):
            entry = self._latest(package, presentity) if self.enabled else None
            if entry is None or entry[_AT] != now or entry[_WATCHERS]:
                note = _ticket(entry, now)  # None: no entry describes it (histogram only)
                if entry is not None:
                    self._count(entry, len(watchers))
                return note
        count = len(watchers)  # as _count does, inline: a fan-out's first count
        self.bytes += WATCH_BYTES * (count if count < DETAILED else DETAILED)
        entry[_WATCHERS] = entry[_SENT] = count
        if len(self._waits) > SETTLE_AT:
            self._notify_stage.settle()
        return entry

    def _count(self, entry: list, count: int) -> None:
        if not entry[_WATCHERS]:
            self.bytes += WATCH_BYTES * (count if count < DETAILED else DETAILED)
        entry[_WATCHERS] = count
        entry[_SENT] += count
        if len(self._waits) > SETTLE_AT:
            self._notify_stage.settle()

    def merged(self, note: Any) -> None:
        """One watcher of the fan-out that returned ``note`` was not sent its NOTIFY now: one
        is in flight (this change goes out merged after it), or it could not be built."""
        if note.__class__ is float:  # no entry describes the change
            return
        entry = note[0] if len(note) == 2 else note
        if entry is not None:
            entry[_SENT] -= 1
            entry[_COALESCED] += 1

    def _answered(self, sub: Any, status: int, now: float) -> None:
        """The final answer to the last NOTIFY sent ``sub``: the first DETAILED watchers of its
        entry one by one, the rest counted per answer code with a latency range; the
        notify_to_answer histogram (its value queued: :meth:`Histogram.settle`)."""
        entry = sub.note
        if entry.__class__ is float:  # a change no entry describes: the histogram only
            self._waits.append(now - entry)
            return
        size = len(entry)
        if size < _FULL:
            if size == 2:  # a ticket: sent apart from its entry's fan-out, or no entry
                self._answer(entry[0], sub, status, now, entry[1])
                return
            at = entry[_AT]
            self._waits.append(now - at)
            # a fan-out's NOTIFY is answered once: no look-up
            entry.extend((sub.tag, sub.remote_uri, sub.transport, sub.version, at, status, now))
            return
        latency = now - entry[_AT]
        self._waits.append(latency)
        if latency > entry[_LAT_MAX]:  # beyond the detailed watchers: a latency range
            entry[_LAT_MAX] = latency
        if latency < entry[_LAT_MIN]:
            entry[_LAT_MIN] = latency
        if status == 200:
            entry[_OK] += 1
        else:
            codes = entry[_CODES]
            if codes is None:
                codes = entry[_CODES] = {}
            codes[status] = codes.get(status, 0) + 1

    # the final answer to the last NOTIFY sent a subscription: the common paths of _answered in
    # C when the extension is built (presence/_history.c; a method like _answered)
    answered = _answered if Answerer is None else _fast(_answered)

    def timed_out(self, sub: Any, now: float) -> None:
        """The last NOTIFY sent ``sub`` was never answered (Timer F)."""
        note = sub.note
        if note.__class__ is float:
            self._answer(None, sub, TIMEOUT, now, note)
        elif len(note) == 2:
            self._answer(note[0], sub, TIMEOUT, now, note[1])
        else:
            self._answer(note, sub, TIMEOUT, now, note[_AT])

    def _answer(self, entry: list | None, sub: Any, status: int, now: float,
                sent_at: float) -> None:
        """An answer (or timeout) to a NOTIFY sent at ``sent_at`` about ``entry``, which may
        have recorded this watcher before (a refresh or merged change of the same entry)."""
        latency = now - sent_at
        if status:
            self._waits.append(latency)
        if entry is None:  # a change no entry describes: the histogram only
            return
        index = _detail_of(entry, sub.tag)
        if index is not None:  # answered again
            base = _WHO + index * _STRIDE
            entry[base + 3:base + _STRIDE] = [sub.version, sent_at, status, now]
            return
        if len(entry) < _FULL:
            entry += (sub.tag, sub.remote_uri, sub.transport, sub.version, sent_at, status, now)
            return
        if status:
            entry[_LAT_MAX] = max(entry[_LAT_MAX], latency)
            entry[_LAT_MIN] = min(entry[_LAT_MIN], latency)
        if status == 200:
            entry[_OK] += 1
        else:
            codes = entry[_CODES]
            if codes is None:
                codes = entry[_CODES] = {}
            codes[status] = codes.get(status, 0) + 1

    def resent(self, sub: Any, now: float, coalesced: bool) -> None:
        """A NOTIFY outside a fan-out (merged changes, refresh, final): points ``sub`` at the
        presentity's latest entry."""
        if len(self._waits) > SETTLE_AT:
            self._notify_stage.settle()
        entry = self._latest(sub.package.name, sub.presentity) if self.enabled else None
        if entry is not None and coalesced:
            entry[_SENT] += 1
            self.pending.append((self._applied_stage, entry[_AT], 1))
        sub.note = _ticket(entry, now)

    def subscribed(self, sub: Any, now: float, watchers: int) -> None:
        """A SUBSCRIBE's initial NOTIFY was queued (``watchers``: now watching the presentity)."""
        self.pending.append((self._subscribe_stage, now, 1))
        if len(self._waits) > SETTLE_AT:
            self._notify_stage.settle()
        # a crowd of SUBSCRIBEs must not evict changes: at most DETAILED entries per presentity,
        # and their share of the memory cap
        if self.enabled and watchers <= DETAILED and \
                self.subscribe_bytes < self.max_bytes // SUBSCRIBE_SHARE:
            self.subscribe_bytes += ENTRY_BYTES + WATCH_BYTES  # _cost() of this entry
            entry = self._entry(sub.presentity, "subscribe", sub.package.name, now,
                                effect="subscribed" if sub.final_reason is None else "fetched")
            entry[_WATCHERS] = entry[_SENT] = 1
            self.bytes += WATCH_BYTES
            sub.note = entry  # sent at the entry's time
        else:
            sub.note = _ticket(None, now)

    def told(self, sub: Any) -> tuple[Entry | None, float | None]:
        """What the last NOTIFY sent ``sub`` told (its entry, if any) and when it was sent."""
        note = sub.note
        if note is None:
            return None, None
        if note.__class__ is float:
            return None, note
        if len(note) != 2:
            return Entry(note), note[_AT]
        return (None if note[0] is None else Entry(note[0])), note[1]

    def applied(self, started: float, now: float, sent: int) -> None:
        """The node applied updates at ``started`` and handed their ``sent`` NOTIFYs to the
        transports at ``now`` (stage applied_to_notify, one observation per NOTIFY)."""
        self._applied_stage.observe_many(now - started, sent)

    def flushed(self, now: float) -> None:
        """The node handed what the engine queued to the transports at ``now``."""
        pending, self.pending = self.pending, []
        for hist, started, count in pending:
            hist.observe_many(now - started, count)

    # -- reading ----------------------------------------------------------------------------

    def ring(self, presentity: str) -> list[Entry]:
        return [Entry(rec) for rec in self.rings.get(presentity, ())]

    def presentities(self) -> Iterator[str]:
        return iter(list(self.rings))

    def to_wall(self, at: float | None) -> float | None:
        return None if at is None else at + self.offset

    def retransmissions(self, watch: Watch) -> int:
        """Timer E firings between a NOTIFY and its answer (UDP only)."""
        if watch.reliable or watch.sent_at is None:
            return 0
        end = watch.answered_at
        if end is None:
            end = time.monotonic() if watch.status is None else watch.sent_at
        waited, interval, count = 0.0, self.t1, 0
        while waited + interval < end - watch.sent_at and count < 64:
            waited += interval
            interval = min(interval * 2, self.t2)
            count += 1
        return count


def _cost(entry: list) -> int:
    return ENTRY_BYTES + WATCH_BYTES * min(entry[_WATCHERS], DETAILED)


def _int(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def history_metrics(history: History) -> Callable:
    """Renderer for presence.metrics: the stage histograms and the history's own size."""

    def render(metric: Any) -> None:
        history.stages.render(metric, metric.lines, "busylamp_")
        metric("history_entries", "gauge", "Entries held in the per-presentity history rings.",
               [({}, history.entries)])
        metric("history_bytes", "gauge", "Estimated memory of the history rings (--history-memory).",
               [({}, history.bytes)])
        metric("history_rings_dropped_total", "counter",
               "Presentity histories dropped because the history memory cap was reached.",
               [({}, history.dropped_rings)])

    return render
