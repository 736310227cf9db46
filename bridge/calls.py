"""Live call table (sans-IO): what to republish, and what a switch currently has.

Every update with a positive ``Expires`` that is not ``terminated`` is remembered per
(Switch-ID, Event-Package, Call-ID) and republished every ``Expires / 2`` seconds (early 120 s ->
60 s, confirmed 600 s -> 300 s), so a long call never expires at the engine while a lost
``terminated`` still lets the lamp go dark when the last republish expires. A ``terminated``
update removes the entry. Timers are aioquic-style: ``get_timer()`` / ``due(now)``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str]  # (switch id, package, call id)


@dataclass(slots=True)
class _Entry:
    update: dict[str, Any]
    interval: float
    due: float


class CallTable:
    """Last update per live call, per FreeSWITCH (Switch-ID)."""

    def __init__(self) -> None:
        self._entries: dict[Key, _Entry] = {}
        self._heap: list[tuple[float, Key]] = []

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(switch_id: str, update: dict[str, Any]) -> Key | None:
        call_id = update.get("Call-ID")
        if not call_id:
            return None
        return (switch_id, str(update.get("Event-Package", "")), str(call_id))

    def record(self, switch_id: str, update: dict[str, Any], now: float) -> float | None:
        """Remember (or forget, when terminated) one published update; returns when it is
        first due for republishing (None when it is not kept)."""
        key = self._key(switch_id, update)
        if key is None:
            return None
        expires = update.get("Expires")
        if update.get("State") == "terminated" or not isinstance(expires, int) or expires <= 0:
            self._entries.pop(key, None)
            return None
        interval = max(1.0, expires / 2)
        due = now + interval
        self._entries[key] = _Entry(dict(update), interval, due)
        heap = self._heap
        heapq.heappush(heap, (due, key))
        if len(heap) > 2 * len(self._entries) + 1024:
            # a replaced entry's item stays until it comes to the top (up to Expires / 2
            # later): drop them all now and then, amortised O(1), so a busy switch's heap
            # holds its live calls, not every update of the last minutes
            self._heap = [(entry.due, k) for k, entry in self._entries.items()]
            heapq.heapify(self._heap)
        return due

    def live(self, switch_id: str) -> list[dict[str, Any]]:
        """Current updates of one switch (copies)."""
        return [dict(e.update) for k, e in self._entries.items() if k[0] == switch_id]

    def replace_switch(self, switch_id: str, updates: list[dict[str, Any]], now: float) -> None:
        """After a snapshot: the switch's calls are exactly ``updates``."""
        self.forget_switch(switch_id)
        for update in updates:
            self.record(switch_id, update, now)

    def forget_switch(self, switch_id: str) -> None:
        for key in [k for k in self._entries if k[0] == switch_id]:
            del self._entries[key]

    def get_timer(self) -> float | None:
        """Absolute time of the next republish, or None."""
        while self._heap:
            due, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is not None and entry.due == due:
                return due
            heapq.heappop(self._heap)  # stale heap item (entry replaced or removed)
        return None

    def due(self, now: float) -> list[dict[str, Any]]:
        """Copies of the updates to republish now (oldest deadline first); reschedules them."""
        out: list[dict[str, Any]] = []
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            entry = self._entries.get(key)
            if entry is None or entry.due != due:
                continue
            out.append(dict(entry.update))
            entry.due = now + entry.interval
            heapq.heappush(self._heap, (entry.due, key))
        return out
