"""Building the snapshot message and splitting it into parts that each fit one bus message.

A snapshot is ``{"Event-Name": "snapshot", "Switch-ID", "Updates": [update, ...]}``; every
part adds ``Snapshot-ID``, ``Snapshot-Part`` (0-based) and ``Snapshot-Parts`` (validated by
:func:`busylamp.wire.updates.parse_update`, reassembled by presence/snapshots.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import ujson

from busylamp.wire.names import SNAPSHOT

__all__ = ["PART_BYTES", "PART_UPDATES", "snapshot", "split_snapshot"]

# Encoded updates per snapshot part: far below nsqd's --max-msg-size (1 MiB by default), so a
# part with its envelope always fits one bus message, and no part holds more than the engine's
# per-message item limit (wire.updates.MAX_ITEMS).
PART_BYTES = 256 * 1024
PART_UPDATES = 5000


def snapshot(switch_id: str, updates: list[dict[str, Any]]) -> dict[str, Any]:
    """The snapshot message (without ordering fields) replacing every record of ``switch_id``."""
    return {"Event-Name": SNAPSHOT, "Switch-ID": switch_id, "Updates": updates}


def split_snapshot(snapshot: dict[str, Any], part_bytes: int = PART_BYTES,
                   part_updates: int = PART_UPDATES,
                   new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> list[dict[str, Any]]:
    """The parts of ``snapshot`` (at least one), each with at most ``part_bytes`` of encoded
    updates (one oversized update still gets a part of its own) and ``part_updates`` updates.

    Every part is the snapshot's envelope plus ``Snapshot-ID``, ``Snapshot-Part`` (0-based),
    ``Snapshot-Parts`` and its share of ``Updates``; the engine applies them as one.
    """
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for update in snapshot.get("Updates") or []:
        length = len(ujson.dumps(update)) + 1
        if groups[-1] and (size + length > part_bytes or len(groups[-1]) >= part_updates):
            groups.append([])
            size = 0
        groups[-1].append(update)
        size += length
    envelope = {k: v for k, v in snapshot.items() if k != "Updates"}
    snapshot_id = new_id()
    return [{**envelope, "Snapshot-ID": snapshot_id, "Snapshot-Part": index,
             "Snapshot-Parts": len(groups), "Updates": group}
            for index, group in enumerate(groups)]
