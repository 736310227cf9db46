"""The presence update and snapshot messages (Kazoo/pua_json field set, stricter): building
them (bridge) and validating them into `Update`/`Snapshot` (engines).

The whole payload is validated before anything is returned, so a bad array item rejects the
batch. Every error is an `UpdateError` naming the field and, for arrays, the item index.
A well-formed dialog or presence update (what the bridge publishes) takes a fast path that
checks all its values in one pass (`_parse_plain`); anything else, and every error, goes the
general way (`_parse_general`), which accepts exactly what the fast path accepts, and more.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import ujson

from busylamp.wire.aor import aor_uri, normalize_aor
from busylamp.wire.names import (
    DIALOG,
    DIALOG_STATES,
    DIRECTIONS,
    EVENT_CATEGORY,
    MESSAGE_SUMMARY,
    MESSAGES_WAITING,
    MWI_COUNTS,
    MWI_RECORD_ID,
    PACKAGES,
    PRESENCE,
    PRESENCE_DEFAULT_RECORD_ID,
    PRESENCE_STATES,
    SNAPSHOT,
    UPDATE,
    VOICE_MESSAGE,
    format_voice_message,
    parse_voice_message,
)

__all__ = [
    "FIELD_TABLE",
    "MAX_FIELD_LENGTH",
    "MAX_ITEMS",
    "MAX_SNAPSHOT_PARTS",
    "Snapshot",
    "Update",
    "UpdateError",
    "dialog_update",
    "message_summary_update",
    "parse_update",
    "parse_updates",
    "presence_update",
]

MAX_FIELD_LENGTH = 1024
MAX_ITEMS = 10_000
MAX_SNAPSHOT_PARTS = 100_000
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UpdateError(ValueError):
    """A presence update failed validation; `field` and `index` say where."""

    def __init__(self, message: str, field: str | None = None, index: int | None = None):
        self.detail = message
        text = message
        if field is not None:
            text = f'field "{field}": {text}'
        if index is not None:
            text = f"item {index}: {text}"
        super().__init__(text)
        self.field = field
        self.index = index


@dataclass(slots=True)
class Update:
    """One validated record update for (package, presentity, record_id)."""

    package: str
    presentity: str
    record_id: str
    expires: int | None
    data: dict[str, str]
    bridge_id: str | None = None
    bridge_epoch: int | None = None
    sequence: int | None = None
    switch_id: str | None = None
    raw: dict = field(default_factory=dict)


@dataclass(slots=True)
class Snapshot:
    """Every record one FreeSWITCH (`switch_id`) currently has; replaces that switch's records.

    A big snapshot travels in parts (`part` of `parts`, 0-based, one `snapshot_id`); the engine
    applies them as one once all have arrived (presence/snapshots.py).
    """

    switch_id: str
    bridge_id: str | None
    bridge_epoch: int | None
    sequence: int | None
    updates: list[Update]
    snapshot_id: str | None = None
    part: int = 0
    parts: int = 1


# (field, required, allowed values, default, meaning) per package; "common" applies to all
# updates, "snapshot" to the snapshot envelope. Used to generate the README table.
FieldRow = tuple[str, bool, str, str, str]
FIELD_TABLE: dict[str, list[FieldRow]] = {
    "common": [
        ("Event-Name", True, "update | snapshot", "", "message kind"),
        ("Event-Package", True, " | ".join(PACKAGES), "", "event package the record belongs to"),
        (
            "Presentity",
            False,
            "string",
            "",
            "with Presentity-User and -Realm: selects them as presentity",
        ),
        (
            "Presentity-User",
            False,
            "string",
            "",
            "presentity user (needs all three Presentity fields)",
        ),
        (
            "Presentity-Realm",
            False,
            "string",
            "",
            "presentity domain (needs all three Presentity fields)",
        ),
        ("From-User", True, "string", "", "presentity user when the Presentity fields are absent"),
        (
            "From-Realm",
            True,
            "string",
            "",
            "presentity domain when the Presentity fields are absent",
        ),
        (
            "Expires",
            False,
            "integer or numeric string",
            "package default",
            "record lifetime in seconds; <= 0 deletes the record now",
        ),
        ("Bridge-ID", False, "string", "", "publishing bridge process (ordering)"),
        ("Bridge-Epoch", False, "integer >= 0", "0", "changes when that bridge restarts"),
        ("Sequence", False, "integer >= 0", "", "+1 per message per (Bridge-ID, Bridge-Epoch)"),
        ("Switch-ID", False, "string", "", "Core-UUID of the FreeSWITCH the record came from"),
        # the FreeSWITCH event behind the update, kept in the per-lamp history (busylamp why)
        ("Switch-Event", False, "string", "", "name of the FreeSWITCH event behind the update"),
        ("Unique-ID", False, "string", "", "Unique-ID of that event's channel"),
        ("Channel-Call-State", False, "string", "", "that channel's call state in the event"),
        (
            "Event-Timestamp",
            False,
            "integer >= 0",
            "",
            "the event's Event-Date-Timestamp (microseconds since the epoch)",
        ),
        (
            "Bridge-Timestamp",
            False,
            "integer >= 0",
            "",
            "when the bridge published the update (microseconds since the epoch)",
        ),
    ],
    DIALOG: [
        ("Call-ID", True, "string", "", "record id and dialog id/call-id"),
        ("From", True, "URI", "", "local identity (sip: added when no scheme)"),
        ("To", True, "URI", "", "remote identity (sip: added when no scheme)"),
        ("State", True, " | ".join(DIALOG_STATES), "", "dialog state (case-insensitive)"),
        ("Direction", False, " | ".join(DIRECTIONS), "", "dialog direction attribute"),
        ("From-Tag", False, "string", "", "local-tag attribute"),
        ("To-Tag", False, "string", "", "remote-tag attribute"),
        ("From-URI", False, "URI", "From", "local target uri"),
        ("To-URI", False, "URI", "To", "remote target uri (pickup/intercept URI)"),
        ("To-User", False, "string", "", "remote identity display name"),
    ],
    MESSAGE_SUMMARY: [
        ("Messages-Waiting", True, "yes | no", "", "Messages-Waiting line"),
        ("Message-Account", False, "URI", "sip:<presentity>", "Message-Account line"),
        ("Messages-New", False, "integer >= 0", "", "new messages (selects the counters form)"),
        ("Messages-Saved", False, "integer >= 0", "0", "old messages"),
        ("Messages-Urgent", False, "integer >= 0", "0", "new urgent messages"),
        ("Messages-Urgent-Saved", False, "integer >= 0", "0", "old urgent messages"),
        (
            "MWI-Voice-Message",
            False,
            "n/m or n/m (u/v)",
            "",
            "Voice-Message line when Messages-New is absent",
        ),
    ],
    PRESENCE: [
        ("State", True, " | ".join(PRESENCE_STATES), "", "presence state (see PIDF map)"),
        ("Call-ID", False, "string", PRESENCE_DEFAULT_RECORD_ID, "record id"),
    ],
    "snapshot": [
        ("Switch-ID", True, "string", "", "FreeSWITCH whose records the snapshot replaces"),
        (
            "Updates",
            True,
            f"array of update objects (<= {MAX_ITEMS} per message)",
            "",
            "the switch's records (of this part)",
        ),
        (
            "Snapshot-ID",
            False,
            "string",
            "",
            "names one snapshot sent in parts (required with Snapshot-Parts > 1)",
        ),
        (
            "Snapshot-Part",
            False,
            "integer >= 0, < Snapshot-Parts",
            "0",
            "index of this part; all parts are applied as one when the last arrives",
        ),
        (
            "Snapshot-Parts",
            False,
            f"integer 1..{MAX_SNAPSHOT_PARTS}",
            "1",
            "how many parts the snapshot has; a newer snapshot drops an incomplete one",
        ),
        ("Bridge-ID", False, "string", "", "as for updates"),
        ("Bridge-Epoch", False, "integer >= 0", "0", "as for updates"),
        ("Sequence", False, "integer >= 0", "", "as for updates"),
    ],
}


def parse_updates(payload: bytes | str | dict | list) -> list[Update | Snapshot]:
    """Validate a JSON object or array of objects; return updates/snapshots in order."""
    if isinstance(payload, (bytes, bytearray, memoryview, str)):
        try:
            payload = ujson.loads(bytes(payload) if not isinstance(payload, str) else payload)
        except (ValueError, OverflowError) as exc:
            raise UpdateError(f"invalid JSON: {exc}") from None
    if isinstance(payload, dict):
        return [parse_update(payload)]
    if isinstance(payload, list):
        if len(payload) > MAX_ITEMS:
            raise UpdateError(f"array has {len(payload)} items, more than {MAX_ITEMS}")
        return [parse_update(obj, index) for index, obj in enumerate(payload)]
    raise UpdateError("payload must be a JSON object or an array of objects")


def parse_update(obj: dict, index: int | None = None) -> Update | Snapshot:
    """Validate one update or snapshot object; `index` is its position for error messages."""
    if type(obj) is dict:
        try:
            return _parse_plain(obj)
        except _Unusual:
            pass  # the general path decides, and names any error
    return _parse_general(obj, index)


def _parse_general(obj: dict, index: int | None = None) -> Update | Snapshot:
    """Every check, one field at a time: any input, any error named."""
    if not isinstance(obj, dict):
        raise UpdateError("must be a JSON object", index=index)
    try:
        _check_values(obj)
        name = _string(obj, "Event-Name", required=True).lower()
        if name == SNAPSHOT:
            return _parse_snapshot(obj)
        if name != UPDATE:
            raise UpdateError("must be update or snapshot", "Event-Name")
        return _parse_one(obj)
    except UpdateError as exc:
        if index is None:
            raise
        raise UpdateError(exc.detail, exc.field, index) from None


class _Unusual(Exception):
    """Raised by the fast path for anything it does not handle itself."""


_LOWER = {name: name for name in (UPDATE, *PACKAGES, *DIALOG_STATES, *DIRECTIONS, *PRESENCE_STATES)}
# The fields the fast path knows: every update field of FIELD_TABLE and what the builders add.
_PLAIN_FIELDS = frozenset(
    [row[0] for name in ("common", DIALOG, PRESENCE) for row in FIELD_TABLE[name]]
    + ["Event-Category", "To-Realm", "From-Realm", "From-User", "To-User"]
)
_INT_FIELDS = frozenset(("Expires", "Bridge-Epoch", "Sequence", "Event-Timestamp",
                         "Bridge-Timestamp"))
# strings already found short, ASCII and printable: domains, URIs, names and states repeat
_CLEAN: set[str] = set()
_CLEAN_MAX = 16384
_AORS: dict[tuple[str, str], str] = {}  # (user, realm) -> normalize_aor(user, realm)
_AORS_MAX = 4096


def _parse_plain(obj: dict) -> Update:
    """The fast path for a well-formed dialog or presence update of known fields holding short
    printable ASCII strings (ints in the integer fields): what the bridge publishes. Returns
    the `Update` the general path would; raises `_Unusual` for anything else (a snapshot,
    message-summary, another field or value type, an error), and the general path then
    decides and names the error, so both accept exactly the same input.
    """
    if not _PLAIN_FIELDS.issuperset(obj):
        raise _Unusual
    if not _plain_values(obj, _CLEAN, _INT_FIELDS, MAX_FIELD_LENGTH, _CLEAN_MAX):
        raise _Unusual
    # every field read below is now a clean str (or absent); "" counts as absent
    get = obj.get
    if get("Event-Name") != UPDATE and _word(get("Event-Name")) != UPDATE:
        raise _Unusual
    lower = _LOWER.get  # the usual spellings without a call to _word
    package = lower(get("Event-Package")) or _word(get("Event-Package"))
    user = get("Presentity-User")
    realm = get("Presentity-Realm")
    if not (user and realm and get("Presentity")):
        user = get("From-User")
        realm = get("From-Realm")
        if not (user and realm):
            raise _Unusual
    if package == DIALOG:
        call_id = get("Call-ID")
        local = get("From")
        remote = get("To")
        state = lower(get("State")) or _word(get("State"))
        if not (call_id and local and remote) or state not in DIALOG_STATES:
            raise _Unusual
        data = {"Call-ID": call_id, "From": local, "To": remote, "State": state}
        direction = get("Direction")
        if direction:
            direction = lower(direction) or _word(direction)
            if direction not in DIRECTIONS:
                raise _Unusual
            data["Direction"] = direction
        for name in ("From-Tag", "To-Tag", "From-User", "To-User"):
            value = get(name)
            if value:
                data[name] = value
        data["From-URI"] = get("From-URI") or local
        data["To-URI"] = get("To-URI") or remote
        record_id = call_id
    elif package == PRESENCE:
        state = lower(get("State")) or _word(get("State"))
        if state not in PRESENCE_STATES:
            raise _Unusual
        data = {"State": state}
        call_id = get("Call-ID")
        if call_id:
            data["Call-ID"] = call_id
        record_id = call_id or PRESENCE_DEFAULT_RECORD_ID
    else:
        raise _Unusual
    presentity = _AORS.get((user, realm))
    if presentity is None:
        if len(_AORS) >= _AORS_MAX:
            _AORS.clear()
        presentity = _AORS[user, realm] = normalize_aor(user, realm)
    expires = get("Expires")
    if type(expires) is not int or not -(2**31) <= expires < 2**31:
        expires = _plain_int(expires, -(2**31), 2**31 - 1)
    epoch = get("Bridge-Epoch")
    if type(epoch) is not int or not 0 <= epoch <= _INT_MAX:
        epoch = _plain_int(epoch, 0, _INT_MAX)
    sequence = get("Sequence")
    if type(sequence) is not int or not 0 <= sequence <= _INT_MAX:
        sequence = _plain_int(sequence, 0, _INT_MAX)
    return Update(package, presentity, record_id, expires, data, get("Bridge-ID") or None,
                  epoch, sequence, get("Switch-ID") or None, obj)


def _plain_values_py(obj: dict, clean: set[str], int_fields: frozenset[str], longest: int,
                     clean_max: int) -> bool:
    """Fast path: every value a string of at most ``longest`` printable ASCII characters
    (remembered in ``clean`` once found so) or an int under a key in ``int_fields``.
    wire/_plain.c does the same in C."""
    try:
        for key, value in obj.items():
            if value in clean:  # never true for a non-str: only strings are added
                continue
            kind = type(value)
            if kind is str:
                if len(value) > longest or not (value.isascii() and value.isprintable()):
                    return False  # isprintable(): no ASCII control character
                if len(clean) >= clean_max:
                    clean.clear()
                clean.add(value)
            elif kind is not int or key not in int_fields:
                return False
    except TypeError:  # an unhashable value (array, object)
        return False
    return True


try:  # the value check in C (wire/_plain.c); _plain_values_py is the same in Python
    from busylamp.wire._plain import plain_values as _plain_values
except ImportError:  # not built here
    _plain_values = _plain_values_py


def _word(value: str | None) -> str | None:
    """Fast path: a case-insensitive name (package, state, direction) in lower case."""
    if not value:
        raise _Unusual
    word = _LOWER.get(value)
    return word if word is not None else value.lower()


def _plain_int(value: object, minimum: int, maximum: int) -> int | None:
    """Fast path: an integer field as `_integer` reads it; `_Unusual` for anything else."""
    if type(value) is not int:
        if not value:
            return None
        if not (value.isdigit() and len(value) <= 19):  # type: ignore[attr-defined]
            raise _Unusual
        value = int(value)  # type: ignore[arg-type]
    if not minimum <= value <= maximum:
        raise _Unusual
    return value


def _parse_snapshot(obj: dict) -> Snapshot:
    switch_id = _string(obj, "Switch-ID", required=True)
    items = obj.get("Updates")
    if not isinstance(items, list):
        raise UpdateError("required, an array of update objects", "Updates")
    if len(items) > MAX_ITEMS:
        raise UpdateError(f"has {len(items)} items, more than {MAX_ITEMS}", "Updates")
    bridge_id = _string(obj, "Bridge-ID")
    epoch = _integer(obj, "Bridge-Epoch", minimum=0)
    sequence = _integer(obj, "Sequence", minimum=0)
    snapshot_id = _string(obj, "Snapshot-ID")
    parts = _integer(obj, "Snapshot-Parts", minimum=1, maximum=MAX_SNAPSHOT_PARTS) or 1
    part = _integer(obj, "Snapshot-Part", minimum=0, maximum=parts - 1)
    if parts > 1 and snapshot_id is None:
        raise UpdateError("required when Snapshot-Parts is more than 1", "Snapshot-ID")
    updates = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise UpdateError("must be a JSON object")
            _check_values(item)
            if _string(item, "Event-Name", required=True).lower() != UPDATE:
                raise UpdateError("must be update", "Event-Name")
            update = _parse_one(item)
        except UpdateError as exc:
            raise UpdateError(f"item {i}: {exc}", "Updates") from None
        if update.switch_id is None:
            update.switch_id = switch_id
        elif update.switch_id != switch_id:
            raise UpdateError(f"item {i}: Switch-ID differs from the snapshot's", "Updates")
        updates.append(update)
    return Snapshot(switch_id, bridge_id, epoch, sequence, updates, snapshot_id, part or 0, parts)


def _parse_one(obj: dict) -> Update:
    package = _string(obj, "Event-Package", required=True).lower()
    if package not in PACKAGES:
        raise UpdateError("must be one of " + ", ".join(PACKAGES), "Event-Package")
    presentity = _presentity(obj)
    if package == DIALOG:
        record_id, data = _dialog(obj)
    elif package == MESSAGE_SUMMARY:
        record_id, data = MWI_RECORD_ID, _message_summary(obj, presentity)
    else:
        record_id, data = _presence(obj)
    return Update(
        package=package,
        presentity=presentity,
        record_id=record_id,
        expires=_integer(obj, "Expires", minimum=-(2**31), maximum=2**31 - 1),
        data=data,
        bridge_id=_string(obj, "Bridge-ID"),
        bridge_epoch=_integer(obj, "Bridge-Epoch", minimum=0),
        sequence=_integer(obj, "Sequence", minimum=0),
        switch_id=_string(obj, "Switch-ID"),
        raw=obj,
    )


def _presentity(obj: dict) -> str:
    pres = _string(obj, "Presentity")
    user = _string(obj, "Presentity-User")
    realm = _string(obj, "Presentity-Realm")
    if not (pres and user and realm):
        for name in ("From-User", "From-Realm"):
            if not _present(obj, name):
                raise UpdateError(
                    "required (or Presentity, Presentity-User and Presentity-Realm)", name
                )
        user = _string(obj, "From-User")
        realm = _string(obj, "From-Realm")
    return normalize_aor(user, realm)


def _dialog(obj: dict) -> tuple[str, dict[str, str]]:
    call_id = _string(obj, "Call-ID")
    if call_id is None:
        raise UpdateError("required for dialog updates (no dummy dialog is made)", "Call-ID")
    data = {
        "Call-ID": call_id,
        "From": _string(obj, "From", required=True),
        "To": _string(obj, "To", required=True),
        "State": _choice(obj, "State", DIALOG_STATES, required=True),
    }
    direction = _choice(obj, "Direction", DIRECTIONS)
    if direction:
        data["Direction"] = direction
    for name in ("From-Tag", "To-Tag", "From-User", "To-User"):
        value = _string(obj, name)
        if value:
            data[name] = value
    data["From-URI"] = _string(obj, "From-URI") or data["From"]
    data["To-URI"] = _string(obj, "To-URI") or data["To"]
    return call_id, data


def _message_summary(obj: dict, presentity: str) -> dict[str, str]:
    data = {
        "Messages-Waiting": _choice(obj, "Messages-Waiting", MESSAGES_WAITING, required=True),
        "Message-Account": _string(obj, "Message-Account") or aor_uri(presentity),
    }
    if _present(obj, "Messages-New"):
        counts = [_count(obj, name, required=i == 0) for i, name in enumerate(MWI_COUNTS)]
        for name, value in zip(MWI_COUNTS, counts, strict=True):
            data[name] = str(value)
        data["MWI-Voice-Message"] = format_voice_message(*counts)
    else:
        voice = _string(obj, "MWI-Voice-Message")
        if voice is not None:
            if not VOICE_MESSAGE.match(voice):
                raise UpdateError(
                    'must look like "new/old" or "new/old (urgent/urgent_old)"', "MWI-Voice-Message"
                )
            data["MWI-Voice-Message"] = voice
    return data


def _presence(obj: dict) -> tuple[str, dict[str, str]]:
    data = {"State": _choice(obj, "State", PRESENCE_STATES, required=True)}
    call_id = _string(obj, "Call-ID")
    if call_id:
        data["Call-ID"] = call_id
    return call_id or PRESENCE_DEFAULT_RECORD_ID, data


# --- building updates (the bridge's side) ---------------------------------------------------


def _self_addressed(package: str, user: str, domain: str, call_id: str) -> dict[str, Any]:
    """The head of an update about ``user@domain`` itself (presence, message-summary)."""
    uri = f"sip:{user}@{domain}"
    return {
        "Event-Category": EVENT_CATEGORY,
        "Event-Name": UPDATE,
        "Event-Package": package,
        "Presentity": uri,
        "Presentity-User": user,
        "Presentity-Realm": domain,
        "From": uri,
        "From-User": user,
        "From-Realm": domain,
        "To": uri,
        "To-User": user,
        "To-Realm": domain,
        "Call-ID": call_id,
    }


def dialog_update(
    *, user: str, domain: str, call_id: str, state: str, direction: str, remote: str,
    expires: int, remote_target: str | None = None, from_tag: str | None = None,
    to_tag: str | None = None,
) -> dict[str, Any]:
    """One ``dialog`` update (local = the presentity ``user@domain``, remote = the other party,
    a user in that domain or a ``user@host``)."""
    local_uri = f"sip:{user}@{domain}"
    remote_uri = f"sip:{remote}@{domain}" if "@" not in remote else f"sip:{remote}"
    update: dict[str, Any] = {
        "Event-Category": EVENT_CATEGORY,
        "Event-Name": UPDATE,
        "Event-Package": DIALOG,
        "Presentity": local_uri,
        "Presentity-User": user,
        "Presentity-Realm": domain,
        "From": local_uri,
        "From-User": user,
        "From-Realm": domain,
        "From-URI": local_uri,
        "To": remote_uri,
        "To-User": remote.split("@", 1)[0],
        "To-Realm": domain,
        "To-URI": remote_target or remote_uri,
        "Call-ID": call_id,
        "State": state,
        "Direction": direction,
        "Expires": expires,
    }
    if from_tag:
        update["From-Tag"] = from_tag
    if to_tag:
        update["To-Tag"] = to_tag
    return update


def presence_update(
    *, user: str, domain: str, call_id: str, state: str, expires: int
) -> dict[str, Any]:
    """One ``presence`` update (PIDF) for ``user@domain``."""
    update = _self_addressed(PRESENCE, user, domain, call_id)
    update["State"] = state
    update["Expires"] = expires
    return update


def message_summary_update(
    *, user: str, domain: str, waiting: str, voice_message: str | None = None
) -> dict[str, Any]:
    """One ``message-summary`` update for the mailbox ``user@domain`` (no Expires: the latest
    one wins). A ``voice_message`` in a wire form (names.VOICE_MESSAGE, outer blanks ignored)
    is sent with its counters; any other is left out."""
    update = _self_addressed(MESSAGE_SUMMARY, user, domain, f"mwi+{user}@{domain}")
    update["Messages-Waiting"] = waiting
    update["Message-Account"] = update["From"]
    counts = parse_voice_message(voice_message)
    if counts is not None:
        update["MWI-Voice-Message"] = voice_message.strip()  # type: ignore[union-attr]
        update.update(zip(MWI_COUNTS, counts, strict=True))
    return update


# --- field helpers -------------------------------------------------------------------------


def _check_values(obj: dict) -> None:
    """Reject oversized strings, non-finite numbers and text that is not Unicode (lone
    surrogates such as "\\ud800", which cannot be encoded as UTF-8) anywhere in the object's
    top level; nested arrays and objects are checked for such text too."""
    for key, value in obj.items():
        kind = type(value)  # exact types first: this runs for every field of every update
        if kind is str or kind is int:
            if kind is str:
                if len(value) > MAX_FIELD_LENGTH:
                    raise UpdateError(f"longer than {MAX_FIELD_LENGTH} characters", str(key))
                if not value.isascii() and _SURROGATE.search(value):  # isascii() is O(1)
                    raise UpdateError(_NOT_UNICODE, _safe_key(key))
        elif isinstance(value, str) and len(value) > MAX_FIELD_LENGTH:
            raise UpdateError(f"longer than {MAX_FIELD_LENGTH} characters", str(key))
        elif isinstance(value, float) and not math.isfinite(value):
            raise UpdateError("must be a finite number", str(key))
        elif isinstance(value, list | dict) and _has_surrogate(value):
            raise UpdateError(_NOT_UNICODE, _safe_key(key))
        if type(key) is str and not key.isascii() and _SURROGATE.search(key):
            raise UpdateError(_NOT_UNICODE, _safe_key(key))


_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_UNICODE = "not valid Unicode text (a lone surrogate cannot be encoded as UTF-8)"


def _safe_key(key: object) -> str:
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _has_surrogate(value: object, depth: int = 0) -> bool:
    if isinstance(value, str):
        return not value.isascii() and _SURROGATE.search(value) is not None
    if depth > 32:
        return False
    if isinstance(value, dict):
        return any(_has_surrogate(k, depth + 1) or _has_surrogate(v, depth + 1)
                   for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v, depth + 1) for v in value)
    return False


def _present(obj: dict, name: str) -> bool:
    value = obj.get(name)
    return value is not None and value != ""


def _string(obj: dict, name: str, *, required: bool = False) -> Any:
    """A string field (integers are accepted and stringified); None/"" count as missing."""
    value = obj.get(name)
    if type(value) is str and value and not _CONTROL.search(value):
        return value  # the common case, checked in one step
    if value is None or value == "":
        if required:
            raise UpdateError("required", name)
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise UpdateError("must be a string", name)
    if _CONTROL.search(value):
        raise UpdateError("contains a control character", name)
    return value


def _choice(obj: dict, name: str, allowed: tuple[str, ...], *, required: bool = False) -> Any:
    value = _string(obj, name, required=required)
    if value is None:
        return None
    lowered = value.lower()
    if lowered not in allowed:
        raise UpdateError("must be one of " + ", ".join(allowed), name)
    return lowered


def _integer(
    obj: dict, name: str, *, minimum: int = _INT_MIN, maximum: int = _INT_MAX
) -> int | None:
    """An integer or a decimal numeric string; bools and floats are rejected."""
    value = obj.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UpdateError("must be an integer", name)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
            raise UpdateError("must be an integer", name)
        value = int(text)
    if not minimum <= value <= maximum:
        raise UpdateError(f"must be between {minimum} and {maximum}", name)
    return value


def _count(obj: dict, name: str, *, required: bool) -> int:
    value = _integer(obj, name, minimum=0, maximum=999_999_999)
    if value is None:
        if required:
            raise UpdateError("required", name)
        return 0
    return value
