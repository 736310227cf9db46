"""Snapshots (sans-IO: every call takes ``now``): the reassembly of bus snapshots sent in parts,
and the record rows of a peer's ``GET /snapshot`` (a node's warm start).

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

A peer snapshot in rows (``ROWS_TYPE``, asked for by a warm-starting node): the first line is
``{"marks": {...}}``, each further line a JSON array of up to ``ROWS_PER_LINE`` rows, one per live
record, ``[package, presentity, record_id, data, expires, switch_id, bridge_id, epoch,
sequence]`` (``expires``: seconds left, or null). About half the bytes of the update
objects, and a row becomes an Update without the field-by-field parse of a bus message; it is
still input from the network, so :func:`parse_rows` checks each row's shape, types, lengths,
characters and the fields its package renders, and names what is wrong.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from busylamp.wire.names import (
    DIALOG,
    DIALOG_STATES,
    MESSAGE_SUMMARY,
    MESSAGES_WAITING,
    MWI_RECORD_ID,
    PRESENCE,
    PRESENCE_DEFAULT_RECORD_ID,
    PRESENCE_STATES,
)
from busylamp.wire.updates import MAX_FIELD_LENGTH, Snapshot, Update

if TYPE_CHECKING:
    from busylamp.presence.state import PresenceState

__all__ = ["ROWS_PER_LINE", "ROWS_TYPE", "SNAPSHOT_TIMEOUT", "RowError", "SnapshotAssembler",
           "parse_rows", "record_rows"]

SNAPSHOT_TIMEOUT = 30.0
ROWS_TYPE = "application/x-busylamp-rows"
ROWS_PER_LINE = 1000


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
        if not self._pending:  # the usual case: no snapshot arriving in parts
            return None
        return min(p.deadline for p in self._pending.values())

    def handle_timer(self, now: float) -> None:
        """Drop every incomplete snapshot whose time is up."""
        for switch_id in [s for s, p in self._pending.items() if p.deadline <= now]:
            self._drop(switch_id, "timed_out")


# --- a peer snapshot's record rows ---------------------------------------------------------------


class RowError(ValueError):
    """A peer snapshot row is malformed; the message names the row and what is wrong."""


def record_rows(state: PresenceState, now: float) -> Iterator[list]:
    """The peer snapshot's lines after the marks: lists of up to ROWS_PER_LINE rows, every live
    record of ``state`` with its lifetime left at ``now`` (tombstones are not exported)."""
    batch: list = []
    ceil = math.ceil
    for package, presentity in state.presentities():
        for r in state.records(package, presentity):
            if r.terminated:
                continue
            expires = None if r.expires_at is None else max(1, ceil(r.expires_at - now))
            batch.append([package, presentity, r.record_id, r.data, expires, r.switch_id,
                          r.bridge_id, r.bridge_epoch, r.sequence])
            if len(batch) >= ROWS_PER_LINE:
                yield batch
                batch = []
    if batch:
        yield batch


_BAD_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates
_OPTIONAL_STR = (str, type(None))
_INT_LIMIT = 2**63
_REQUIRED = {  # what each package's renderer reads, and its allowed values (None: any text)
    DIALOG: {"Call-ID": None, "From": None, "To": None, "From-URI": None, "To-URI": None,
             "State": frozenset(DIALOG_STATES)},
    PRESENCE: {"State": frozenset(PRESENCE_STATES)},
    MESSAGE_SUMMARY: {"Messages-Waiting": frozenset(MESSAGES_WAITING), "Message-Account": None},
}


def parse_rows(rows: object) -> tuple[list[Update], list[str]]:
    """The Updates of one rows line, and an error per refused row ("row N: what"); a line that
    is not a list of rows raises RowError."""
    if type(rows) is not list:
        raise RowError(f"expected a JSON array of rows, got {type(rows).__name__}")
    updates: list[Update] = []
    indexes: list[int] = []
    errors: list[str] = []
    texts: list[str] = []  # every string of the line, checked at once (a bad one is rare)
    for index, row in enumerate(rows):
        try:
            updates.append(_row_update(row, texts))
            indexes.append(index)
        except RowError as exc:
            errors.append(f"row {index}: {exc}")
    if texts and _text_fault(texts):
        kept = []
        for index, update in zip(indexes, updates, strict=True):
            fault = _text_fault(_texts(update))
            if fault:
                errors.append(f"row {index}: {fault}")
            else:
                kept.append(update)
        updates = kept
    return updates, errors


def _texts(update: Update) -> list[str]:
    texts = [update.presentity, update.record_id, update.switch_id or "", update.bridge_id or ""]
    for key, value in update.data.items():
        texts += (key, value)
    return texts


def _text_fault(texts: list) -> str | None:
    """What is wrong with the strings of ``texts``, if anything (one join, one search)."""
    try:
        joined = "".join(texts)
    except TypeError:
        return "data values must be strings"
    if _BAD_TEXT.search(joined):
        return "a field holds a control character or a lone surrogate"
    if max(map(len, texts)) > MAX_FIELD_LENGTH:
        return f"a field is longer than {MAX_FIELD_LENGTH} characters"
    return None


def _integer(value: object) -> bool:
    return value is None or (type(value) is int and -_INT_LIMIT <= value < _INT_LIMIT)  # type: ignore[operator]


def _row_update(row: object, texts: list) -> Update:
    """The Update of one row; its strings (data values unchecked) are appended to ``texts``,
    which the caller checks at once."""
    if type(row) is not list or len(row) != 9:
        raise RowError("expected an array of 9 fields")
    package, presentity, record_id, data, expires, switch_id, bridge_id, epoch, sequence = row
    required = _REQUIRED.get(package) if type(package) is str else None
    if required is None:
        raise RowError(f"unknown package {package!r}")
    if type(presentity) is not str or not presentity or type(record_id) is not str \
            or not record_id:
        raise RowError("presentity and record id must be non-empty strings")
    if type(data) is not dict or not data:
        raise RowError("data must be a non-empty object")
    if type(switch_id) not in _OPTIONAL_STR or type(bridge_id) not in _OPTIONAL_STR:
        raise RowError("switch and bridge ids must be strings or null")
    if not (_integer(expires) and _integer(epoch) and _integer(sequence)):
        raise RowError("expires, epoch and sequence must be integers or null")
    for name, allowed in required.items():
        value = data.get(name)
        if type(value) is not str or not value or (allowed is not None and value not in allowed):
            raise RowError(f"{package} data {name!r} missing or not one of the allowed values")
    if (package == DIALOG and record_id != data["Call-ID"]) \
            or (package == MESSAGE_SUMMARY and record_id != MWI_RECORD_ID) \
            or (package == PRESENCE and record_id != data.get("Call-ID", PRESENCE_DEFAULT_RECORD_ID)):
        raise RowError(f"record id {record_id!r} does not match its {package} data")
    texts += (presentity, record_id, switch_id or "", bridge_id or "", *data, *data.values())
    return Update(package, presentity, record_id, expires, data, bridge_id, epoch, sequence,
                  switch_id)
