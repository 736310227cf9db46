"""Names and spellings of the bus: message kinds, packages, states, topics, formats.

Everything here is written once; bridge/ and presence/ import it from :mod:`busylamp.wire`.
"""

from __future__ import annotations

import re

# --- message kinds (the Event-Name field) ----------------------------------------------------

UPDATE = "update"  # bridge -> engines: one record (Kazoo/pua_json field set)
SNAPSHOT = "snapshot"  # bridge -> engines: every record of one switch (maybe in parts)
REGISTRATION = "registration"  # bridge -> engines: one phone registration made/refreshed/ended
REGISTRATIONS = "registrations"  # bridge -> engines: every registration of one switch
RESYNC = "resync"  # engine -> bridges: publish a snapshot again
MWI_QUERY = "mwi_query"  # engine -> bridges: a node's first watcher of a mailbox, state unknown
MWI_WATCH = "mwi_watch"  # engine -> bridges: the same, state already known (claim only)
MWI_FORGET = "mwi_forget"  # engine -> bridges: a node's last watcher of a mailbox left

STATE_KINDS = (UPDATE, SNAPSHOT)
REGISTRATION_KINDS = frozenset((REGISTRATION, REGISTRATIONS))
MWI_KINDS = (MWI_QUERY, MWI_WATCH, MWI_FORGET)
CONTROL_KINDS = (RESYNC, *MWI_KINDS)

# --- presence update packages and their values ------------------------------------------------

DIALOG = "dialog"
MESSAGE_SUMMARY = "message-summary"
PRESENCE = "presence"
PACKAGES = (DIALOG, MESSAGE_SUMMARY, PRESENCE)
EVENT_CATEGORY = "presence"  # pua_json's Event-Category of every update

DIALOG_STATES = ("early", "confirmed", "terminated", "trying", "proceeding")
DIRECTIONS = ("initiator", "recipient")
PRESENCE_STATES = (
    "open", "closed", "online", "offline", "early", "confirmed", "terminated",
    "busy", "available", "away", "dnd", "on-the-phone",
)  # fmt: skip
MESSAGES_WAITING = ("yes", "no")
MWI_COUNTS = ("Messages-New", "Messages-Saved", "Messages-Urgent", "Messages-Urgent-Saved")

MWI_RECORD_ID = "mwi"  # the one message-summary record of a presentity
PRESENCE_DEFAULT_RECORD_ID = "presence"  # a presence update without Call-ID
ALL_SWITCHES = "*"  # a resync request's Switch-ID for every switch

# "new/old" or "new/old (urgent/urgent_old)": mod_voicemail's MWI-Voice-Message and the wire's
VOICE_MESSAGE = re.compile(r"^(\d{1,9})/(\d{1,9})(?: \((\d{1,9})/(\d{1,9})\))?$")

# --- ordering fields (bridge/sequence.py stamps them; presence/state.py orders by them) -------

BRIDGE_ID = "Bridge-ID"
BRIDGE_EPOCH = "Bridge-Epoch"
SEQUENCE = "Sequence"


def control_topic(topic: str) -> str:
    """The NSQ topic of the control messages that go with the update topic ``topic``."""
    return f"{topic}.control"


def parse_voice_message(text: str | None) -> tuple[int, int, int, int] | None:
    """(new, old, urgent, urgent old) of a Voice-Message text (outer blanks ignored); None
    when it has neither wire form."""
    match = VOICE_MESSAGE.match((text or "").strip())
    if match is None:
        return None
    new, old, urgent, urgent_old = match.groups()
    return int(new), int(old), int(urgent or 0), int(urgent_old or 0)


def format_voice_message(new: int, old: int, urgent: int = 0, urgent_old: int = 0) -> str:
    """The long wire form ``new/old (urgent/urgent_old)``."""
    return f"{new}/{old} ({urgent}/{urgent_old})"
