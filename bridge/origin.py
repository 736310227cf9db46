"""Where an update came from: the FreeSWITCH event behind it, and the events that made none.

:func:`origin_fields` gives the optional update fields that name the event (``Switch-Event``,
``Unique-ID``, ``Channel-Call-State``; ``Event-Timestamp`` and ``Switch-ID`` come from
bridge/normalize.py); the bridge adds ``Bridge-Timestamp`` when it publishes. A node keeps them in
its per-lamp history (presence/history.py) and measures the stages between those clocks.

:class:`SkipLog` remembers the last events that produced no update, with the reason and every
user the event named (presence id, caller, callee, channel name, mailbox), so ``busylamp why``
can say "the bridge skipped 3 events naming 1001: no presence id".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SkipLog", "Skipped", "origin_fields", "event_latency"]

# headers that may name the user an event was about, in the order they are shown
_NAMING = ("Channel-Presence-ID", "variable_presence_id", "Caller-Destination-Number",
           "Caller-Caller-ID-Number", "Caller-Username", "variable_sip_to_user",
           "variable_sip_from_user", "variable_dialed_user", "Channel-Name",
           "MWI-Message-Account", "from", "Valet-Extension")


def _get(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if not isinstance(value, str) or not value or value == "_undef_":
        return None
    return value


def origin_fields(event_name: str, headers: Mapping[str, str]) -> dict[str, Any]:
    """The event-naming fields put on every update an event produced."""
    fields: dict[str, Any] = {"Switch-Event": event_name}
    unique_id = _get(headers, "Unique-ID")
    if unique_id:
        fields["Unique-ID"] = unique_id
    call_state = _get(headers, "Channel-Call-State")
    if call_state:
        fields["Channel-Call-State"] = call_state
    return fields


def event_latency(headers: Mapping[str, str], received: float) -> float | None:
    """Seconds from the event's ``Event-Date-Timestamp`` to ``received`` (wall clock)."""
    stamp = _get(headers, "Event-Date-Timestamp")
    if stamp is None or not stamp.isdigit():
        return None
    return received - int(stamp) / 1e6


def _user_of(value: str) -> str:
    """'sofia/internal/1001@example.com' / 'sip:1001@example.com' -> '1001@example.com'."""
    value = value.rsplit("/", 1)[-1].strip("<>")
    if value.lower().startswith(("sip:", "sips:")):
        value = value.split(":", 1)[1]
    return value.split(";", 1)[0]


class Skipped:
    """One event that produced no update."""

    __slots__ = ("wall", "event", "reason", "names", "unique_id", "switch_id")

    def __init__(self, wall: float, event: str, reason: str, names: tuple[str, ...],
                 unique_id: str | None, switch_id: str | None) -> None:
        self.wall, self.event, self.reason, self.names = wall, event, reason, names
        self.unique_id, self.switch_id = unique_id, switch_id

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.wall, "event": self.event, "reason": self.reason,
                "names": list(self.names), "unique_id": self.unique_id,
                "switch_id": self.switch_id}


class SkipLog:
    """The last ``size`` skipped events (a ring), searchable by user."""

    def __init__(self, size: int = 2000, wall: Callable[[], float] = time.time) -> None:
        self.ring: deque[Skipped] = deque(maxlen=size)
        self.wall = wall

    def add(self, event_name: str, headers: Mapping[str, str], reason: str,
            at: float | None = None) -> None:
        if reason == "unsupported event HEARTBEAT":
            return
        names: list[str] = []
        for header in _NAMING:
            value = _get(headers, header)
            if value:
                name = _user_of(value)
                if name and name not in names:
                    names.append(name)
        self.ring.append(Skipped(self.wall() if at is None else at, event_name, reason,
                                 tuple(names), _get(headers, "Unique-ID"),
                                 _get(headers, "Core-UUID")))

    def matching(self, user: str) -> list[Skipped]:
        """Skipped events naming ``user`` (the user part, or user@domain), oldest first."""
        user = user.lower()
        bare = "@" not in user
        found = []
        for item in self.ring:
            for name in item.names:
                name = name.lower()
                if name == user or (bare and name.split("@", 1)[0] == user):
                    found.append(item)
                    break
        return found
