"""Registrations learned from the switches, for ``--require-registration`` (sans-IO).

The bridge (bridge/registrations.py) sends two message kinds over the bus, validated here like
the presence updates in presence/updates.py:

* ``{"Event-Name": "registrations", "Switch-ID", "Registrations": [{"User", "Realm",
  "Network-IP", "Call-ID", "Expires"}, ...]}``: every registration of one switch (on connect);
  replaces what was known of that switch.
* ``{"Event-Name": "registration", "Switch-ID", "User", "Realm", "Network-IP", "Call-ID",
  "Expires"}``: one registration made or refreshed (Expires > 0, seconds from now) or ended (0).

:class:`RegistrationTable` answers whether a watcher AOR has a live registration from an address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

KINDS = frozenset(("registration", "registrations"))
MAX_REGISTRATIONS = 200_000  # per snapshot message
MAX_TEXT = 256
MAX_EXPIRES = 7 * 86400


class RegistrationError(ValueError):
    """A registration message that does not validate."""


def _text(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or \
            any(ord(c) < 33 or 0xD800 <= ord(c) < 0xE000 for c in value):
        raise RegistrationError(f"{name} must be a non-empty token of at most {MAX_TEXT}")
    return value


def _entry(obj: Any) -> tuple[str, str, str, int]:
    """(aor, ip, call_id, expires) of one registration object."""
    if not isinstance(obj, dict):
        raise RegistrationError("a registration must be a JSON object")
    user = _text(obj, "User").lower()
    realm = _text(obj, "Realm").lower()
    if "@" in user or "@" in realm:
        raise RegistrationError("User and Realm must not contain @")
    expires = obj.get("Expires")
    if isinstance(expires, bool) or not isinstance(expires, int) or \
            not 0 <= expires <= MAX_EXPIRES:
        raise RegistrationError(f"Expires must be an integer 0..{MAX_EXPIRES}")
    # an ended registration may name neither (an unREGISTER's own Call-ID is often new)
    ip = call_id = ""
    if expires or obj.get("Network-IP"):
        try:
            ip = ipaddress.ip_address(_text(obj, "Network-IP")).compressed
        except ValueError:
            raise RegistrationError("Network-IP must be an IP address") from None
    if expires or obj.get("Call-ID"):
        call_id = _text(obj, "Call-ID")
    return f"{user}@{realm}", ip, call_id, expires


def parse_registration(message: Mapping[str, Any]) -> dict:
    """The checked content of a registration(s) message; RegistrationError otherwise."""
    if not isinstance(message, dict):
        raise RegistrationError("must be a JSON object")
    kind = message.get("Event-Name")
    if kind not in KINDS:
        raise RegistrationError("Event-Name must be registration or registrations")
    switch = _text(message, "Switch-ID")
    if kind == "registration":
        return {"kind": kind, "switch": switch, "entries": [_entry(message)]}
    items = message.get("Registrations")
    if not isinstance(items, list) or len(items) > MAX_REGISTRATIONS:
        raise RegistrationError(f"Registrations must be a list of at most {MAX_REGISTRATIONS}")
    return {"kind": kind, "switch": switch, "entries": [_entry(item) for item in items]}


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
