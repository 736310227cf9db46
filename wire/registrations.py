"""Registration messages, bridge -> engines (for ``--require-registration``): building and
validating them.

* ``{"Event-Name": "registrations", "Switch-ID", "Registrations": [{"User", "Realm",
  "Network-IP", "Call-ID", "Expires"}, ...]}``: every registration of one switch (on connect);
  replaces what was known of that switch.
* ``{"Event-Name": "registration", "Switch-ID", "User", "Realm", "Network-IP", "Call-ID",
  "Expires"}``: one registration made or refreshed (Expires > 0, seconds from now) or ended (0).

They carry no ordering fields: registrations are not presence state.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from busylamp.wire.names import REGISTRATION, REGISTRATION_KINDS, REGISTRATIONS

__all__ = [
    "KINDS",
    "MAX_EXPIRES",
    "MAX_REGISTRATIONS",
    "RegistrationError",
    "parse_registration",
    "registration",
    "registration_entry",
    "registrations",
]

KINDS = REGISTRATION_KINDS
MAX_REGISTRATIONS = 200_000  # per snapshot message
MAX_TEXT = 256
MAX_EXPIRES = 7 * 86400


class RegistrationError(ValueError):
    """A registration message that does not validate."""


def registration_entry(*, user: str, realm: str, network_ip: str, call_id: str,
                       expires: int) -> dict[str, Any]:
    """The fields of one registration (Expires in seconds from now, clamped to the limit)."""
    return {"User": user, "Realm": realm, "Network-IP": network_ip, "Call-ID": call_id,
            "Expires": max(0, min(int(expires), MAX_EXPIRES))}


def registration(switch_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The ``registration`` message of one :func:`registration_entry` (Expires 0: ended)."""
    return {"Event-Name": REGISTRATION, "Switch-ID": switch_id, **entry}


def registrations(switch_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``registrations`` message: every live registration of ``switch_id``."""
    return {"Event-Name": REGISTRATIONS, "Switch-ID": switch_id, "Registrations": entries}


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
    """The checked content of a registration(s) message: ``{"kind", "switch", "entries":
    [(aor, ip, call_id, expires), ...]}``; RegistrationError otherwise."""
    if not isinstance(message, dict):
        raise RegistrationError("must be a JSON object")
    kind = message.get("Event-Name")
    if kind not in KINDS:
        raise RegistrationError("Event-Name must be registration or registrations")
    switch = _text(message, "Switch-ID")
    if kind == REGISTRATION:
        return {"kind": kind, "switch": switch, "entries": [_entry(message)]}
    items = message.get("Registrations")
    if not isinstance(items, list) or len(items) > MAX_REGISTRATIONS:
        raise RegistrationError(f"Registrations must be a list of at most {MAX_REGISTRATIONS}")
    return {"kind": kind, "switch": switch, "entries": [_entry(item) for item in items]}
