"""Registrations learned from the switches, for ``--require-registration`` (sans-IO).

The bridge (bridge/registrations.py) sends ``registration`` and ``registrations`` messages over
the bus; busylamp.wire.registrations defines and validates them (``parse_registration``, kept
importable from here). :class:`RegistrationTable` answers whether a watcher AOR has a live
registration from an address.
"""

from __future__ import annotations

from collections.abc import Callable

from busylamp.wire.registrations import (
    KINDS,
    MAX_EXPIRES,
    MAX_REGISTRATIONS,
    RegistrationError,
    parse_registration,
)

__all__ = [
    "KINDS",
    "MAX_EXPIRES",
    "MAX_REGISTRATIONS",
    "RegistrationError",
    "RegistrationTable",
    "parse_registration",
]


class RegistrationTable:
    """Live registrations: (switch, AOR, Call-ID) -> (IP, expiry), indexed by AOR."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._by_key: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._by_aor: dict[str, set[tuple[str, str, str]]] = {}
        self.counters = {"applied": 0, "malformed": 0, "full": 0}

    def __len__(self) -> int:
        return len(self._by_key)

    def apply(self, checked: dict, now: float, alias: Callable[[str], str] = str) -> None:
        """Apply a :func:`parse_registration` result; ``alias`` maps an AOR to its canonical
        domain (--domain-alias)."""
        switch = checked["switch"]
        if checked["kind"] == "registrations":
            for key in [k for k in self._by_key if k[0] == switch]:
                self._drop(key)
        for aor, ip, call_id, expires in checked["entries"]:
            key = (switch, alias(aor), call_id)
            if expires <= 0:
                self._end(key, ip)
                continue
            if key not in self._by_key and len(self._by_key) >= self.max_entries:
                self.counters["full"] += 1
                continue
            self._by_key[key] = (ip, now + expires)
            self._by_aor.setdefault(key[1], set()).add(key)
        self.counters["applied"] += 1

    def _end(self, key: tuple[str, str, str], ip: str) -> None:
        """A registration ended: the one with that Call-ID, else the AOR's at that switch from
        that address (or all of them when the message names no address)."""
        if key in self._by_key:
            self._drop(key)
            return
        for other in list(self._by_aor.get(key[1], ())):
            if other[0] == key[0] and (not ip or self._by_key[other][0] == ip):
                self._drop(other)

    def _drop(self, key: tuple[str, str, str]) -> None:
        if self._by_key.pop(key, None) is None:
            return
        keys = self._by_aor.get(key[1])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_aor[key[1]]

    def allows(self, aor: str, ip: str, now: float) -> bool:
        """Whether ``aor`` has a live registration from ``ip`` (expired ones are dropped)."""
        found = False
        for key in list(self._by_aor.get(aor, ())):
            address, expires_at = self._by_key[key]
            if expires_at <= now:
                self._drop(key)
            elif address == ip:
                found = True
        return found
