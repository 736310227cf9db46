"""The wire contract: every message on the bus between bridges and engines, defined once
with its building and its validation (pure: no I/O, no clock, nothing else of busylamp).

Bridge -> engines (the update topic):

- ``update`` per package (``dialog``, ``message-summary``, ``presence``; the Kazoo/pua_json
  field set): :func:`dialog_update`, :func:`presence_update`, :func:`message_summary_update`;
  validated by :func:`parse_update` / :func:`parse_updates` into :class:`Update`.
- ``snapshot`` (every record of one switch, maybe in parts: Snapshot-ID/-Part/-Parts):
  :func:`snapshot`, :func:`split_snapshot`; validated by :func:`parse_update` into
  :class:`Snapshot`.
- ``registration`` / ``registrations``: :func:`registration`, :func:`registrations`;
  validated by :func:`parse_registration`.

Engines -> bridges (the control topic, :func:`control_topic`): ``resync``
(:func:`resync_request`) and ``mwi_query``/``mwi_watch``/``mwi_forget`` (:func:`mwi_request`);
validated by :func:`parse_control` into :class:`Control`.
"""

from busylamp.wire.aor import aor_uri, normalize_aor, normalize_host
from busylamp.wire.control import Control, ControlError, mwi_request, parse_control, resync_request
from busylamp.wire.names import (
    ALL_SWITCHES,
    CONTROL_KINDS,
    DIALOG,
    MESSAGE_SUMMARY,
    MWI_FORGET,
    MWI_KINDS,
    MWI_QUERY,
    MWI_WATCH,
    PACKAGES,
    PRESENCE,
    REGISTRATION,
    REGISTRATION_KINDS,
    REGISTRATIONS,
    RESYNC,
    SNAPSHOT,
    UPDATE,
    control_topic,
    format_voice_message,
    parse_voice_message,
)
from busylamp.wire.registrations import (
    RegistrationError,
    parse_registration,
    registration,
    registration_entry,
    registrations,
)
from busylamp.wire.snapshots import PART_BYTES, PART_UPDATES, snapshot, split_snapshot
from busylamp.wire.updates import (
    MAX_ITEMS,
    Snapshot,
    Update,
    UpdateError,
    dialog_update,
    message_summary_update,
    parse_update,
    parse_updates,
    presence_update,
)

__all__ = [
    "ALL_SWITCHES", "CONTROL_KINDS", "DIALOG", "MAX_ITEMS", "MESSAGE_SUMMARY", "MWI_FORGET",
    "MWI_KINDS", "MWI_QUERY", "MWI_WATCH", "PACKAGES", "PART_BYTES", "PART_UPDATES", "PRESENCE",
    "REGISTRATION", "REGISTRATIONS", "REGISTRATION_KINDS", "RESYNC", "SNAPSHOT", "UPDATE",
    "Control", "ControlError", "RegistrationError", "Snapshot", "Update", "UpdateError",
    "aor_uri", "control_topic", "dialog_update", "format_voice_message", "message_summary_update",
    "mwi_request", "normalize_aor", "normalize_host", "parse_control", "parse_registration",
    "parse_update", "parse_updates", "parse_voice_message", "presence_update", "registration",
    "registration_entry", "registrations", "resync_request", "snapshot", "split_snapshot",
]
