"""Registrations of the switches' phones, for ``--require-registration`` (pure functions).

On connect the bridge reads ``api show registrations as json`` (the sofia registrations table:
reg_user, realm, token (the REGISTER's Call-ID), url, expires (absolute, epoch seconds),
network_ip, network_port, ...) and publishes one ``registrations`` message per switch; then each
``sofia::register`` / ``sofia::unregister`` / ``sofia::expire`` CUSTOM event becomes one
``registration`` message (both defined in busylamp.wire.registrations, which validates them for
presence/registrations.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from busylamp.esl.protocol import EslEvent
from busylamp.wire import registration, registration_entry, registrations

SUBCLASSES = ("sofia::register", "sofia::unregister", "sofia::expire")
EVENTS = "CUSTOM " + " ".join(SUBCLASSES)


class RegistrationsError(ValueError):
    """``show registrations as json`` gave something else than the table."""


def _first(headers: dict[str, str], *names: str) -> str:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return ""


def registration_from_event(event: EslEvent, switch_id: str) -> dict[str, Any] | None:
    """The ``registration`` message of one sofia::(un)register/expire event; None otherwise."""
    headers = event.headers
    if event.name != "CUSTOM":
        return None
    subclass = (headers.get("Event-Subclass") or "").lower()
    if subclass not in SUBCLASSES:
        return None
    try:
        expires = int(_first(headers, "expires") or "0")
    except ValueError:
        expires = 0
    if subclass != "sofia::register":
        expires = 0
    return registration(switch_id, registration_entry(
        user=_first(headers, "username", "from-user", "user", "to-user"),
        realm=_first(headers, "realm", "from-host", "host", "to-host"),
        network_ip=_first(headers, "network-ip"), call_id=_first(headers, "call-id"),
        expires=expires,
    ))


def registrations_from_api(text: str, switch_id: str, now: float | None = None) -> dict[str, Any]:
    """The ``registrations`` message of one switch from ``show registrations as json``."""
    stripped = (text or "").strip()
    rows: list = []
    if stripped and not stripped.startswith("0 total"):
        if stripped.startswith("-ERR"):
            raise RegistrationsError(stripped.splitlines()[0][:200])
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError):
            raise RegistrationsError("not JSON") from None
        if not isinstance(data, dict):
            raise RegistrationsError("not the registrations table")
        rows = data.get("rows") or []
        if not isinstance(rows, list):
            raise RegistrationsError("rows is not a list")
    now = time.time() if now is None else now
    entries = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        try:
            expires = int(str(row.get("expires") or "0")) - int(now)
        except ValueError:
            continue
        if expires <= 0:
            continue
        entries.append(registration_entry(
            user=str(row.get("reg_user") or ""), realm=str(row.get("realm") or ""),
            network_ip=str(row.get("network_ip") or ""), call_id=str(row.get("token") or ""),
            expires=expires,
        ))
    return registrations(switch_id, entries)
