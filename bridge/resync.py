"""``api show channels as json`` -> snapshot message (pure).

FreeSWITCH answers ``show channels as json`` from its ``channels`` table (src/switch_core_sqldb.c:
uuid, direction, created, created_epoch, name, state, cid_name, cid_num, ip_addr, dest, ...,
presence_id, presence_data, accountcode, callstate, callee_name, callee_num, callee_direction,
call_uuid, ...) as ``{"row_count": N, "rows": [{column: value, ...}]}``; with no channels it
answers ``{"row_count":0}`` (older builds: the plain text ``0 total.``). Each row goes through the
same rule as a CHANNEL_CALLSTATE event (bridge.normalize.channel_updates): ``callstate`` by name,
``direction`` inbound -> initiator / outbound -> recipient, ``presence_id`` as the presentity;
remote party = ``dest`` (fallback ``callee_num``) for an initiator, ``cid_num`` (fallback
``cid_name``) for a recipient. Rows without a presence id or in state DOWN are left out.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.normalize import NormalizeConfig, channel_updates


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
        )
        for update in result.updates:
            if update.get("State") == "terminated":
                continue  # a hanging-up channel is simply not part of the live set
            update["Switch-ID"] = switch_id
            updates.append(update)
    return updates


def snapshot_from_channels(json_text: str, switch_id: str, config: NormalizeConfig) -> dict[str, Any]:
    """Snapshot message (without ordering fields) for one FreeSWITCH; SnapshotError if garbage."""
    rows = parse_channel_rows(json_text)
    return {
        "Event-Name": "snapshot",
        "Switch-ID": switch_id,
        "Updates": updates_from_rows(rows, switch_id, config),
    }
