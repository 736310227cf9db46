"""Reassembly of snapshots sent in parts (sans-IO: every call takes ``now``).

A bridge splits a big snapshot into parts that each fit one bus message (nsqd refuses bodies
over ``--max-msg-size``); every part carries ``Snapshot-ID``, ``Snapshot-Part`` (0-based) and
``Snapshot-Parts``. Rules:

- the parts of one Snapshot-ID are applied as one: nothing is handed on until all have arrived;
- a newer snapshot of the same switch (another Snapshot-ID whose part is not older, by the
  bridge's Bridge-Epoch/Sequence when both carry them, else by arrival) supersedes an
  incomplete older one, which is dropped; a part of an older snapshot is dropped;
- an incomplete snapshot is dropped ``timeout`` seconds after its latest part (``get_timer``
  / ``handle_timer``, driven by the owner's clock);
- a duplicate part (a requeued bus message) is ignored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from busylamp.wire.updates import Snapshot, Update

__all__ = ["SNAPSHOT_TIMEOUT", "SnapshotAssembler"]

SNAPSHOT_TIMEOUT = 30.0


@dataclass(slots=True)
class _Pending:
    snapshot_id: str
    parts: int
    first: Snapshot  # the lowest-sequence part seen: its stamp is the snapshot's
    deadline: float
    received: dict[int, list[Update]] = field(default_factory=dict)


def _newer_or_same(part: Snapshot, than: Snapshot) -> bool:
    """Whether ``part`` is not older than ``than`` (unordered when either lacks a stamp)."""
    if (part.bridge_id is None or than.bridge_id is None or part.sequence is None
            or than.sequence is None or part.bridge_id != than.bridge_id):
        return True
    return (part.bridge_epoch or 0, part.sequence) >= (than.bridge_epoch or 0, than.sequence)


def _lower(a: Snapshot, b: Snapshot) -> Snapshot:
    """Of two parts of one snapshot, the one stamped first."""
    if a.sequence is None or b.sequence is None:
        return a
    return b if (b.bridge_epoch or 0, b.sequence) < (a.bridge_epoch or 0, a.sequence) else a


def _stamp_of(snap: Snapshot) -> Snapshot:
    """The snapshot without its updates: what is kept to recognise its stragglers."""
    return Snapshot(snap.switch_id, snap.bridge_id, snap.bridge_epoch, snap.sequence, [],
                    snap.snapshot_id)


class SnapshotAssembler:
    """Collects snapshot parts per switch; ``add`` returns a whole snapshot once complete."""

    def __init__(self, timeout: float = SNAPSHOT_TIMEOUT) -> None:
        self.timeout = timeout
        self._pending: dict[str, _Pending] = {}
        self._last: dict[str, Snapshot] = {}  # per switch: the stamp of the latest whole one
        self.counters: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        """Incomplete snapshots held."""
        return len(self._pending)

    def add(self, part: Snapshot, now: float) -> Snapshot | None:
        """Take one snapshot message; the whole snapshot when it is complete, else None."""
        pending = self._pending.get(part.switch_id)
        if part.parts <= 1 or part.snapshot_id is None:
            if pending is not None and _newer_or_same(part, pending.first):
                self._drop(part.switch_id, "superseded")
            self._last[part.switch_id] = _stamp_of(part)
            return part
        last = self._last.get(part.switch_id)
        if last is not None and last.snapshot_id != part.snapshot_id \
                and not _newer_or_same(part, last):
            self.counters["parts_stale"] += 1  # a straggler of a snapshot already superseded
            return None
        if last is not None and last.snapshot_id == part.snapshot_id:
            self.counters["parts_duplicate"] += 1  # redelivered after its snapshot was applied
            return None
        if pending is not None and pending.snapshot_id != part.snapshot_id:
            if not _newer_or_same(part, pending.first):
                self.counters["parts_stale"] += 1
                return None
            self._drop(part.switch_id, "superseded")
            pending = None
        if pending is None:
            pending = _Pending(part.snapshot_id, part.parts, part, now + self.timeout)
            self._pending[part.switch_id] = pending
        elif part.parts != pending.parts:
            self.counters["parts_inconsistent"] += 1
            return None
        if part.part in pending.received:
            self.counters["parts_duplicate"] += 1
            return None
        pending.received[part.part] = part.updates
        pending.first = _lower(pending.first, part)
        pending.deadline = now + self.timeout
        if len(pending.received) < pending.parts:
            return None
        del self._pending[part.switch_id]
        self.counters["assembled"] += 1
        first = pending.first
        updates = [u for index in range(pending.parts) for u in pending.received[index]]
        whole = Snapshot(first.switch_id, first.bridge_id, first.bridge_epoch, first.sequence,
                         updates, pending.snapshot_id, 0, 1)
        self._last[part.switch_id] = _stamp_of(whole)
        return whole

    def _drop(self, switch_id: str, reason: str) -> None:
        del self._pending[switch_id]
        self.counters[f"incomplete_{reason}"] += 1

    def get_timer(self) -> float | None:
        """When the next incomplete snapshot times out."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        """Drop every incomplete snapshot whose time is up."""
        for switch_id in [s for s, p in self._pending.items() if p.deadline <= now]:
            self._drop(switch_id, "timed_out")
