"""Control messages, engines -> bridges: ``resync`` and the mailbox claims (``mwi_query``,
``mwi_watch``, ``mwi_forget``); building them and validating them into a :class:`Control`.

* ``{"Event-Name": "resync", "Switch-ID": "<Core-UUID>" | "*", "Bridge-ID"?, "Reason"?,
  "Node-ID"?}``: publish a snapshot of that switch (``*``: of every switch). With a Bridge-ID
  (an engine saw a gap in that bridge's sequence) only that bridge answers; without, every one.
* ``{"Event-Name": "mwi_query" | "mwi_watch" | "mwi_forget", "Presentity", "Node-ID"?}``: a
  node's first watcher of a mailbox (query it / state known, claim only), its last one left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from busylamp.wire.names import ALL_SWITCHES, CONTROL_KINDS, MWI_KINDS, RESYNC
from busylamp.wire.updates import UpdateError, _check_values, _string

__all__ = ["Control", "ControlError", "mwi_request", "parse_control", "resync_request"]


class ControlError(ValueError):
    """A control message failed validation; the text is the reason (no message content)."""


@dataclass(frozen=True, slots=True)
class Control:
    """One validated control message."""

    kind: str  # names.RESYNC or one of names.MWI_KINDS
    switch_id: str = ALL_SWITCHES  # resync: the switch, or ALL_SWITCHES
    bridge_id: str | None = None  # resync: only this bridge answers (None: every bridge)
    presentity: str | None = None  # mwi_*: the mailbox, as the engine spells it
    node_id: str | None = None
    reason: str | None = None

    def addressed_to(self, bridge_id: str) -> bool:
        """Whether the bridge ``bridge_id`` is to act on this message."""
        return self.bridge_id is None or self.bridge_id == bridge_id


def resync_request(*, switch_id: str = ALL_SWITCHES, bridge_id: str | None = None,
                   reason: str | None = None, node_id: str | None = None) -> dict[str, Any]:
    """A ``resync`` request: ``bridge_id`` names the one bridge to answer (None: all)."""
    message: dict[str, Any] = {"Event-Name": RESYNC, "Switch-ID": switch_id}
    if bridge_id is not None:
        message["Bridge-ID"] = bridge_id
    if reason is not None:
        message["Reason"] = reason
    if node_id is not None:
        message["Node-ID"] = node_id
    return message


def mwi_request(kind: str, presentity: str, node_id: str | None = None) -> dict[str, Any]:
    """An ``mwi_query``/``mwi_watch``/``mwi_forget`` message about the mailbox ``presentity``."""
    if kind not in MWI_KINDS:
        raise ValueError(f"not a mailbox message kind: {kind!r}")
    message: dict[str, Any] = {"Event-Name": kind, "Presentity": presentity}
    if node_id is not None:
        message["Node-ID"] = node_id
    return message


def parse_control(message: Any) -> Control:
    """Validate one control message; ControlError with the reason otherwise."""
    if not isinstance(message, dict):
        raise ControlError("must be a JSON object")
    kind = message.get("Event-Name")
    if kind not in CONTROL_KINDS:
        raise ControlError("Event-Name must be one of " + ", ".join(CONTROL_KINDS))
    try:
        _check_values(message)
        node_id = _string(message, "Node-ID")
        if kind == RESYNC:
            return Control(kind, switch_id=_string(message, "Switch-ID") or ALL_SWITCHES,
                           bridge_id=_string(message, "Bridge-ID"), node_id=node_id,
                           reason=_string(message, "Reason"))
        return Control(kind, presentity=_string(message, "Presentity", required=True),
                       node_id=node_id)
    except UpdateError as exc:
        raise ControlError(f"{kind}: {exc}") from None
