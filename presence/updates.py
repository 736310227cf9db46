"""Validation of presence update JSON into `Update`s: the engine's name for busylamp.wire's
update and snapshot messages (defined, built and validated in wire/updates.py).
"""

from __future__ import annotations

from busylamp.wire.names import (
    DIALOG_STATES,
    DIRECTIONS,
    MWI_RECORD_ID,
    PACKAGES,
    PRESENCE_DEFAULT_RECORD_ID,
    PRESENCE_STATES,
)
from busylamp.wire.updates import (
    FIELD_TABLE,
    MAX_FIELD_LENGTH,
    MAX_ITEMS,
    MAX_SNAPSHOT_PARTS,
    Snapshot,
    Update,
    UpdateError,
    parse_update,
    parse_updates,
)

__all__ = [
    "DIALOG_STATES",
    "DIRECTIONS",
    "FIELD_TABLE",
    "MAX_FIELD_LENGTH",
    "MAX_ITEMS",
    "MAX_SNAPSHOT_PARTS",
    "MWI_RECORD_ID",
    "PACKAGES",
    "PRESENCE_DEFAULT_RECORD_ID",
    "PRESENCE_STATES",
    "Snapshot",
    "Update",
    "UpdateError",
    "parse_update",
    "parse_updates",
]
