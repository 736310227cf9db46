"""``api show channels as json`` -> snapshot message (pure; the message is busylamp.wire's).

FreeSWITCH answers ``show channels as json`` from its ``channels`` table (src/switch_core_sqldb.c:
uuid, direction, created, created_epoch, name, state, cid_name, cid_num, ip_addr, dest, ...,
presence_id, presence_data, accountcode, callstate, callee_name, callee_num, callee_direction,
call_uuid, ...) as ``{"row_count": N, "rows": [{column: value, ...}]}``; with no channels it
answers ``{"row_count":0}`` (older builds: the plain text ``0 total.``). Each row goes through the
same rule as a CHANNEL_CALLSTATE event (bridge.normalize.channel_updates): ``callstate`` by name,
``direction`` inbound -> initiator / outbound -> recipient, ``presence_id`` as the presentity;
remote party = ``dest`` (fallback ``callee_num``) for an initiator, ``cid_num`` (fallback
``cid_name``) for a recipient. Rows without a presence id or in state DOWN are left out.

Valet parking slots are not channel state: ``show channels`` lists a parked channel under its
own presence id, in application ``valet_park``. The occupied slots come from ``api valet_info``
(``<lots><lot name="LOT"><extension uuid="UUID">SLOT</extension>...``, the slots whose call
still waits); a slot is in the snapshot when its channel is listed and still in ``valet_park``
(a retrieved one is already bridged), with the same dialogs the live events give
(bridge.normalize.park_updates: Call-ID = the parked channel's uuid). Without mod_valet_parking
(``-ERR``) there are no slots.
"""

from __future__ import annotations

import json
import re
from typing import Any

from busylamp.bridge.normalize import NormalizeConfig, channel_updates, park_updates, split_aor
from busylamp.wire import snapshot

_LOT = re.compile(r'<lot name="([^"]*)">(.*?)</lot>', re.S)
_SLOT = re.compile(r'<extension uuid="([^"]*)">([^<]*)</extension>')


class SnapshotError(ValueError):
    """The api output is neither channel JSON nor an empty answer."""


def parse_channel_rows(text: str) -> list[dict[str, Any]]:
    """Rows of ``show channels as json``; [] for the empty answers; SnapshotError otherwise."""
    stripped = (text or "").strip()
    if not stripped or stripped.startswith("0 total"):
        return []
    if stripped.startswith("-ERR"):
        raise SnapshotError(stripped.splitlines()[0][:200])
    try:
        data = json.loads(stripped)
    except ValueError as exc:
        raise SnapshotError(f"not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the parser's stack (hostile or broken output)
        raise SnapshotError("not JSON: nested too deep") from None
    if not isinstance(data, dict) or "row_count" not in data:
        raise SnapshotError("no row_count in channels JSON")
    rows = data.get("rows") or []
    if not isinstance(rows, list):
        raise SnapshotError("rows is not a list")
    return [row for row in rows if isinstance(row, dict)]


def _text(row: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = row.get(name)
        if value not in (None, "", "_undef_"):
            return str(value)
    return None


def updates_from_rows(rows: list[dict[str, Any]], switch_id: str, config: NormalizeConfig) -> list[dict[str, Any]]:
    updates: list[dict[str, Any]] = []
    for row in rows:
        result = channel_updates(
            presence_id=_text(row, "presence_id"),
            call_id=_text(row, "uuid"),
            call_state=_text(row, "callstate"),
            previous_state=None,
            fs_direction=_text(row, "direction"),
            destination=_text(row, "dest", "callee_num"),
            caller=_text(row, "cid_num", "cid_name"),
            config=config,
            channel_name=_text(row, "name"),
        )
        for update in result.updates:
            if update.get("State") == "terminated":
                continue  # a hanging-up channel is simply not part of the live set
            update["Switch-ID"] = switch_id
            updates.append(update)
    return updates


def parse_valet_info(text: str | None) -> list[tuple[str, str, str]]:
    """``(lot, slot, parked uuid)`` of every occupied slot in ``valet_info``'s answer; [] for
    none or ``-ERR`` (no mod_valet_parking); SnapshotError for anything else."""
    stripped = (text or "").strip()
    if not stripped or stripped.startswith("-ERR"):
        return []
    if not stripped.startswith("<lots>"):
        raise SnapshotError(f"valet_info: unexpected answer {stripped[:80]!r}")
    return [(lot, slot.strip(), uuid)
            for lot, body in _LOT.findall(stripped)
            for uuid, slot in _SLOT.findall(body) if uuid and slot.strip()]


def park_updates_from(slots: list[tuple[str, str, str]], rows: list[dict[str, Any]],
                      switch_id: str, config: NormalizeConfig) -> list[dict[str, Any]]:
    """The park lamps of the slots whose channel is still parked (listed, in ``valet_park``)."""
    by_uuid = {str(row.get("uuid")): row for row in rows}
    updates: list[dict[str, Any]] = []
    for lot, slot, parked_uuid in slots:
        row = by_uuid.get(parked_uuid)
        if row is None or row.get("application", "valet_park") != "valet_park":
            continue
        domain = lot.rsplit("@", 1)[1] if "@" in lot else None
        if not domain:
            aor = split_aor(_text(row, "presence_id"), None)
            domain = aor[1] if aor else config.domain_default
        if not domain:
            continue
        for update in park_updates(slot=slot, lot=lot, domain=domain, parked_uuid=parked_uuid,
                                   state="confirmed", caller=_text(row, "cid_num", "cid_name")
                                   or "unknown", config=config):
            update["Switch-ID"] = switch_id
            updates.append(update)
    return updates


def snapshot_from_channels(json_text: str, switch_id: str, config: NormalizeConfig,
                           valet_text: str | None = None) -> dict[str, Any]:
    """Snapshot message (without ordering fields) for one FreeSWITCH: its calls and, given
    ``valet_info``'s answer, its occupied park slots; SnapshotError if garbage."""
    rows = parse_channel_rows(json_text)
    updates = updates_from_rows(rows, switch_id, config)
    updates += park_updates_from(parse_valet_info(valet_text), rows, switch_id, config)
    return snapshot(switch_id, updates)
