"""Presentity records per (package, presentity), ordering, tombstones, expiry and body cache.

Sans-IO: every method takes `now` (monotonic seconds); `get_timer()` / `handle_timer(now)`
drive expiry from one heap of plain tuples with lazy deletion.

Rules:
- Ordering: an update carrying Bridge-ID and Sequence replaces a record stamped by the same
  Bridge-ID only if (epoch, sequence) is higher; otherwise it is dropped (`stale_dropped`).
  Updates without those fields apply in arrival order.
- Records with a `State` (dialog, presence) end as tombstones: rendered once as terminated,
  then hidden, and kept for `terminated_lifetime` seconds (or the update's positive Expires)
  so a late early/confirmed for the same record is dropped (`resurrect_dropped`).
  Expires <= 0 and expiry of a live record terminate it the same way.
- message-summary records (no State) are simply replaced or deleted; snapshots leave them.
- Gaps: per Bridge-ID the highest Sequence of the current epoch is tracked; a jump of more
  than one counts the missing numbers in `stats.gaps` and in `pending_gaps[bridge_id]`
  (drained by the engine into resync request events; nothing is called back). A new epoch
  resets.
- Reads never change state: `body()` renders (and caches) what is there; the engine calls
  `mark_sent()` when it sends a body, which makes its terminated records announced.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field

from busylamp.presence.packages.base import EventPackage, PackageOptions, RenderedBody
from busylamp.presence.updates import Snapshot, Update
from busylamp.wire.aor import aor_uri
from busylamp.wire.names import UPDATE

__all__ = ["PresenceState", "Record", "StateStats", "TERMINATED_LIFETIME"]

log = logging.getLogger(__name__)

TERMINATED_LIFETIME = 20.0
_Key = tuple[str, str]
_Stamp = tuple[str | None, int | None, int | None]


@dataclass(slots=True)
class Record:
    package: str
    presentity: str
    record_id: str
    data: dict[str, str]
    expires_at: float | None
    switch_id: str | None = None
    bridge_id: str | None = None
    bridge_epoch: int | None = None
    sequence: int | None = None
    terminated: bool = False  # a tombstone: rendered once (until announced), then hidden
    announced: bool = False


@dataclass(slots=True)
class StateStats:
    records: dict[str, int] = field(default_factory=dict)  # live records per package
    tombstones: int = 0
    stale_dropped: int = 0
    resurrect_dropped: int = 0
    gaps: int = 0
    expired: int = 0


class PresenceState:
    """All presentity records of the node; see the module docstring for the rules."""

    def __init__(
        self,
        packages: Mapping[str, EventPackage],
        options: PackageOptions | None = None,
        *,
        terminated_lifetime: float = TERMINATED_LIFETIME,
    ) -> None:
        self._packages = packages
        self.options = options or PackageOptions()
        self.terminated_lifetime = terminated_lifetime
        self._records: dict[_Key, dict[str, Record]] = {}
        self._count = 0
        self._bodies: dict[_Key, RenderedBody] = {}
        self._bodies_with_tombstones: set[_Key] = set()
        self._unannounced: set[_Key] = set()  # cached bodies that show unannounced tombstones
        self._heap: list[tuple[float, str, str, str]] = []
        self._marks: dict[str, tuple[int, int]] = {}
        self._last_now = 0.0  # latest clock seen, for export() without `now`
        self.pending_gaps: dict[str, int] = {}  # Bridge-ID -> updates missing (not yet drained)
        self.stats = StateStats(records=dict.fromkeys(packages, 0))

    # --- updates -------------------------------------------------------------------------

    def apply(self, update: Update, now: float, *, track_gaps: bool = True) -> Set[_Key]:
        """Apply one update; return the (package, presentity) keys whose body changed.

        `track_gaps=False` for replayed state (peer exports) whose sequences are not a stream.
        """
        if now > self._last_now:
            self._last_now = now
        bridge_id, epoch, sequence = stamp = update.bridge_id, update.bridge_epoch, update.sequence
        if track_gaps and bridge_id is not None and sequence is not None:
            mark = self._marks.get(bridge_id)
            if mark is not None and sequence == mark[1] + 1 and (epoch or 0) == mark[0]:
                self._marks[bridge_id] = (mark[0], sequence)  # the next one, as usual
            else:
                self._note_sequence(bridge_id, epoch, sequence)
        if self._apply_record(update, stamp, now):
            return {(update.package, update.presentity)}
        return _NOTHING

    def apply_snapshot(self, snap: Snapshot, now: float) -> set[_Key]:
        """Apply a switch's snapshot; its other stateful records become terminated."""
        self._last_now = max(self._last_now, now)
        self._note_sequence(snap.bridge_id, snap.bridge_epoch, snap.sequence)
        snap_stamp = (snap.bridge_id, snap.bridge_epoch, snap.sequence)
        changed: set[_Key] = set()
        seen: set[tuple[str, str, str]] = set()
        for update in snap.updates:
            own = update.bridge_id is not None and update.sequence is not None
            stamp = (update.bridge_id, update.bridge_epoch, update.sequence) if own else snap_stamp
            seen.add((update.package, update.presentity, update.record_id))
            if self._apply_record(update, stamp, now):
                changed.add((update.package, update.presentity))
        missing = [
            record
            for bucket in self._records.values()
            for record in bucket.values()
            if record.switch_id == snap.switch_id
            and not record.terminated
            and "State" in record.data
            and (record.package, record.presentity, record.record_id) not in seen
            and not _is_older(snap_stamp, record)
        ]
        for record in missing:
            self._terminate(record, now, self.terminated_lifetime)
            self._changed((record.package, record.presentity))
            changed.add((record.package, record.presentity))
        return changed

    def _apply_record(self, update: Update, stamp: _Stamp, now: float) -> bool:
        package = self._packages.get(update.package)
        if package is None:
            log.debug("no package %s loaded; update ignored", update.package)
            return False
        key = (update.package, update.presentity)
        bucket = self._records.get(key)
        record = bucket.get(update.record_id) if bucket else None
        if record is not None and _is_older(stamp, record):
            self.stats.stale_dropped += 1
            return False
        stateful = "State" in update.data
        deleting = update.expires is not None and update.expires <= 0
        terminating = stateful and update.data["State"] == "terminated"
        lifetime = self.terminated_lifetime
        if terminating and update.expires is not None and update.expires > 0:
            lifetime = float(update.expires)

        if record is not None and record.terminated:
            if not (deleting or terminating):
                self.stats.resurrect_dropped += 1
                return False
            _stamp(record, stamp, update.switch_id)
            return False
        if deleting:
            if record is None:
                if stateful:  # remember it so a late older update cannot create it
                    tomb = self._new_record(update, stamp, now + lifetime)
                    tomb.terminated = tomb.announced = True
                    self._insert(tomb)
                return False
            _stamp(record, stamp, update.switch_id)
            if stateful:
                self._terminate(record, now, lifetime)
            else:
                self._remove(record)
            self._changed(key)
            return True
        if terminating:
            if record is None:
                record = self._new_record(update, stamp, now + lifetime)
                record.terminated = True
                self._insert(record)
            else:
                record.data = update.data
                _stamp(record, stamp, update.switch_id)
                self._terminate(record, now, lifetime)
            self._changed(key)
            return True

        expires = update.expires if update.expires is not None else package.default_record_expires
        expires_at = now + expires if expires is not None else None
        if record is None:
            self._insert(self._new_record(update, stamp, expires_at))
            self._changed(key)
            return True
        _stamp(record, stamp, update.switch_id)
        if expires_at != record.expires_at:
            record.expires_at = expires_at
            self._schedule(record)
        if record.data == update.data:
            return False
        record.data = update.data
        self._touch(record)
        self._changed(key)
        return True

    def note_sequence(self, bridge_id: str | None, epoch: int | None, sequence: int | None) -> None:
        """Track a bridge message's Sequence (gaps) before its content is applied (a part of
        a snapshot waiting for the others)."""
        self._note_sequence(bridge_id, epoch, sequence)

    def _note_sequence(self, bridge_id: str | None, epoch: int | None, sequence: int | None) -> None:
        if bridge_id is None or sequence is None:
            return
        epoch = epoch or 0
        mark = self._marks.get(bridge_id)
        if mark is None or epoch > mark[0]:
            self._marks[bridge_id] = (epoch, sequence)
            return
        if epoch < mark[0] or sequence <= mark[1]:
            return
        missing = sequence - mark[1] - 1
        if missing > 0:
            self.stats.gaps += missing
            self.pending_gaps[bridge_id] = self.pending_gaps.get(bridge_id, 0) + missing
            log.debug(
                "bridge %s: %d updates missing before sequence %d", bridge_id, missing, sequence
            )
        self._marks[bridge_id] = (epoch, sequence)

    # --- bodies --------------------------------------------------------------------------

    def body(self, package: str, presentity: str) -> RenderedBody:
        """The current body, cached until the next change; a read: it changes no record.

        Terminated records show until a body with them was sent (:meth:`mark_sent`).
        """
        key = (package, presentity)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        bucket = self._records.get(key)
        shown: list[Record] = []
        if bucket:
            for record in bucket.values():
                if record.terminated:
                    if record.announced:
                        continue
                    self._unannounced.add(key)
                    self._bodies_with_tombstones.add(key)
                shown.append(record)
        rendered = self._packages[package].render(presentity, shown, self.options)
        if bucket:  # idle bodies are cheap; caching them would grow with every probe
            self._bodies[key] = rendered
        else:
            self._unannounced.discard(key)
        return rendered

    def mark_sent(self, package: str, presentity: str) -> None:
        """The body :meth:`body` returned went out: its terminated records are announced, and
        the next render (after the next change) leaves them out. The cached body stays, so the
        rest of a fan-out sends the same."""
        key = (package, presentity)
        if key not in self._unannounced:
            return
        self._unannounced.discard(key)
        for record in self._records.get(key, {}).values():
            if record.terminated:
                record.announced = True

    def mark_announced(self, package: str, presentity: str) -> None:
        """Announce the terminated records now: sent, and dropped from the cached body."""
        self.mark_sent(package, presentity)
        key = (package, presentity)
        if key in self._bodies_with_tombstones:
            self._bodies_with_tombstones.discard(key)
            self._bodies.pop(key, None)

    def records(self, package: str, presentity: str) -> list[Record]:
        """Every stored record of the presentity, tombstones included."""
        return list(self._records.get((package, presentity), {}).values())

    def presentity_count(self) -> int:
        """How many (package, presentity) have records (O(1))."""
        return len(self._records)

    def presentities(self) -> Iterator[_Key]:
        """(package, presentity) of every presentity that has records."""
        return iter(list(self._records))

    # --- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, package, presentity, record_id = heap[0]
            record = self._lookup(package, presentity, record_id)
            if record is not None and record.expires_at == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> set[_Key]:
        """Expire due records; return the keys whose body changed."""
        self._last_now = max(self._last_now, now)
        changed: set[_Key] = set()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, package, presentity, record_id = heapq.heappop(heap)
            record = self._lookup(package, presentity, record_id)
            if record is None or record.expires_at != deadline:
                continue
            key = (package, presentity)
            self.stats.expired += 1
            if record.terminated:
                self._remove(record)
                if key in self._bodies_with_tombstones:
                    self.mark_announced(package, presentity)
                continue
            if "State" in record.data:
                self._terminate(record, now, self.terminated_lifetime)
            else:
                self._remove(record)
            self._changed(key)
            changed.add(key)
        return changed

    # --- export --------------------------------------------------------------------------

    def export(self, now: float | None = None) -> Iterator[dict]:
        """Every live record as an update dict (JSON-able) with its remaining Expires.

        Without `now`, remaining lifetimes count from the latest clock passed to this object.
        """
        if now is None:
            now = self._last_now
        for (package, presentity), bucket in list(self._records.items()):
            user, at, realm = presentity.rpartition("@")
            if not at:
                user, realm = presentity, ""
            for record in list(bucket.values()):
                if record.terminated:
                    continue
                item: dict = {
                    "Event-Name": UPDATE,
                    "Event-Package": package,
                    "Presentity": aor_uri(presentity),
                    "Presentity-User": user,
                    "Presentity-Realm": realm,
                }
                item.update(record.data)
                if record.expires_at is not None:
                    item["Expires"] = max(1, math.ceil(record.expires_at - now))
                if record.bridge_id is not None:
                    item["Bridge-ID"] = record.bridge_id
                    if record.bridge_epoch is not None:
                        item["Bridge-Epoch"] = record.bridge_epoch
                    if record.sequence is not None:
                        item["Sequence"] = record.sequence
                if record.switch_id is not None:
                    item["Switch-ID"] = record.switch_id
                yield item

    def marks(self) -> dict[str, tuple[int, int]]:
        """Bridge-ID -> (epoch, highest sequence seen)."""
        return dict(self._marks)

    def import_marks(self, marks: Mapping[str, tuple[int, int]]) -> None:
        """Adopt a peer's marks where they are ahead of ours (after importing its export)."""
        for bridge_id, (epoch, sequence) in marks.items():
            mine = self._marks.get(bridge_id)
            if mine is None or (epoch, sequence) > mine:
                self._marks[bridge_id] = (epoch, sequence)

    # --- internals -----------------------------------------------------------------------

    def _lookup(self, package: str, presentity: str, record_id: str) -> Record | None:
        bucket = self._records.get((package, presentity))
        return bucket.get(record_id) if bucket else None

    def _new_record(self, update: Update, stamp: _Stamp, expires_at: float | None) -> Record:
        return Record(update.package, update.presentity, update.record_id, update.data,
                      expires_at, update.switch_id, *stamp)

    def _insert(self, record: Record) -> None:
        key = (record.package, record.presentity)
        bucket = self._records.get(key)
        if bucket is None:
            self._records[key] = {record.record_id: record}
        else:
            bucket[record.record_id] = record
        self._count += 1
        if record.terminated:
            self.stats.tombstones += 1
        else:
            records = self.stats.records
            records[record.package] = records.get(record.package, 0) + 1
        self._schedule(record)

    def _remove(self, record: Record) -> None:
        key = (record.package, record.presentity)
        bucket = self._records[key]
        del bucket[record.record_id]
        if not bucket:
            del self._records[key]
            self._bodies.pop(key, None)
            self._bodies_with_tombstones.discard(key)
            self._unannounced.discard(key)
        self._count -= 1
        if record.terminated:
            self.stats.tombstones -= 1
        else:
            self.stats.records[record.package] -= 1

    def _touch(self, record: Record) -> None:
        """Move the record to the end of its bucket: buckets keep change order."""
        bucket = self._records[(record.package, record.presentity)]
        del bucket[record.record_id]
        bucket[record.record_id] = record

    def _terminate(self, record: Record, now: float, lifetime: float) -> None:
        self._touch(record)
        record.terminated = True
        record.announced = False
        record.expires_at = now + lifetime
        self.stats.records[record.package] -= 1
        self.stats.tombstones += 1
        self._schedule(record)

    def _changed(self, key: _Key) -> None:
        # both sets only ever hold keys of cached bodies: nothing cached, nothing to forget
        if self._bodies.pop(key, None) is not None:
            self._bodies_with_tombstones.discard(key)
            self._unannounced.discard(key)

    def _schedule(self, record: Record) -> None:
        if record.expires_at is None:
            return
        heap = self._heap
        heapq.heappush(
            heap, (record.expires_at, record.package, record.presentity, record.record_id)
        )
        if len(heap) > 2 * self._count + 1024:  # drop superseded entries, amortised O(1)
            self._heap = [
                (r.expires_at, r.package, r.presentity, r.record_id)
                for bucket in self._records.values()
                for r in bucket.values()
                if r.expires_at is not None
            ]
            heapq.heapify(self._heap)


_NOTHING: frozenset[_Key] = frozenset()  # what an update that changed no body returns


def _is_older(stamp: _Stamp, record: Record) -> bool:
    """True if `stamp` is not newer than the record's stamp from the same bridge."""
    bridge_id, epoch, sequence = stamp
    if bridge_id is None or sequence is None or record.sequence is None:
        return False
    if record.bridge_id != bridge_id:
        return False
    return (epoch or 0, sequence) <= (record.bridge_epoch or 0, record.sequence)


def _stamp(record: Record, stamp: _Stamp, switch_id: str | None) -> None:
    record.bridge_id, record.bridge_epoch, record.sequence = stamp
    if switch_id is not None:
        record.switch_id = switch_id
