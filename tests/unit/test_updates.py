"""Validation of presence update JSON (presence/updates.py) and AOR normalisation."""

from __future__ import annotations

import pytest
import ujson

from busylamp.presence.updates import (
    FIELD_TABLE,
    MAX_ITEMS,
    Snapshot,
    Update,
    UpdateError,
    parse_update,
    parse_updates,
)
from busylamp.wire.aor import aor_from_uri, aor_uri, normalize_aor

# A Kazoo ecallmgr / pua_json style dialog update (field set of formats.md §1.2 and §3).
PUA_JSON_DIALOG = {
    "Event-Category": "presence",
    "Event-Name": "update",
    "Event-Package": "dialog",
    "From": "sip:1001@example.com",
    "From-User": "1001",
    "From-Realm": "example.com",
    "From-Tag": "as5f7e2",
    "To": "sip:1002@example.com",
    "To-User": "1002",
    "To-Realm": "example.com",
    "To-URI": "sip:1001@example.com",
    "To-Tag": "Qd3x9",
    "Call-ID": "a2b7c6e0-1b4e-11ef-9a8b-0242ac120002",
    "Direction": "initiator",
    "State": "confirmed",
    "Expires": 36000,
    "Switch-URI": "sip:10.0.0.5:5060",
    "App-Name": "ecallmgr",
    "Msg-ID": "0e5c",
}

MWI = {
    "Event-Name": "update",
    "Event-Package": "message-summary",
    "From-User": "1001",
    "From-Realm": "example.com",
    "Messages-Waiting": "yes",
    "Messages-New": 2,
    "Messages-Saved": "1",
}


def dialog(**changes: object) -> dict:
    obj = dict(PUA_JSON_DIALOG)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def error_of(payload: object) -> UpdateError:
    with pytest.raises(UpdateError) as info:
        parse_updates(payload)  # type: ignore[arg-type]
    return info.value


# --- AOR --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "host", "expected"),
    [
        ("1001", "Example.COM", "1001@example.com"),
        ("1001", "10.0.0.5:5060", "1001@10.0.0.5"),
        ("1001", "[2001:DB8::1]:5060", "1001@[2001:db8::1]"),
        ("1001", "[::1]", "1001@[::1]"),
        ("Bob%20Smith", "example.com", "Bob Smith@example.com"),
        ("Alice", "example.com", "Alice@example.com"),
    ],
)
def test_normalize_aor(user: str, host: str, expected: str) -> None:
    assert normalize_aor(user, host) == expected


def test_normalize_aor_aliases() -> None:
    aliases = {"10.0.0.5": "example.com", "pbx.local": "Example.com"}
    assert normalize_aor("1001", "10.0.0.5:5060", aliases) == "1001@example.com"
    assert normalize_aor("1001", "PBX.local", aliases) == "1001@example.com"
    assert normalize_aor("1001", "other.org", aliases) == "1001@other.org"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:1001@10.0.0.5:5060;transport=udp", "1001@10.0.0.5"),
        ("SIPS:1001@Example.com", "1001@example.com"),
        ('"Bob" <sip:1001:secret@example.com;user=phone>;tag=x', "1001@example.com"),
        ("sip:1001@example.com?subject=hi", "1001@example.com"),
        ("1001@Example.com:5080", "1001@example.com"),
        ("sip:[2001:db8::1]:5060", "[2001:db8::1]"),
        ("tel:+15551234;phone-context=example.com", "+15551234@example.com"),
        ("tel:+15551234", "+15551234"),
    ],
)
def test_aor_from_uri(uri: str, expected: str) -> None:
    assert aor_from_uri(uri) == expected


def test_aor_uri_shortcut_is_quote() -> None:
    """An ASCII letters-and-digits user skips urllib's quote: the same URI as quoting it."""
    from urllib.parse import quote

    safe = "-_.!~*'()&=+$,;?/"
    for user in ("1001", "alice", "Bob7", "a1b2c3", "x" * 40, "٣", "ext½", "1001 ", "a.b", ""):
        assert aor_uri(user + "@example.com") == "sip:" + quote(user, safe=safe) + "@example.com"


def test_aor_uri_reescapes_user() -> None:
    assert aor_uri("1001@example.com") == "sip:1001@example.com"
    assert aor_uri("Bob Smith@example.com") == "sip:Bob%20Smith@example.com"
    assert aor_uri("a%b@x") == "sip:a%25b@x"
    assert aor_uri("+15551234") == "sip:+15551234"
    assert aor_from_uri(aor_uri("Bob Smith@example.com")) == "Bob Smith@example.com"


def test_aor_from_uri_aliases_and_bad_scheme() -> None:
    assert aor_from_uri("sip:1001@10.0.0.5:5060", {"10.0.0.5": "example.com"}) == "1001@example.com"
    with pytest.raises(ValueError, match="scheme"):
        aor_from_uri("mailto:bob")


# --- accepted updates ---------------------------------------------------------------------


def test_pua_json_dialog_example() -> None:
    [update] = parse_updates(ujson.dumps(PUA_JSON_DIALOG).encode())
    assert isinstance(update, Update)
    assert update.package == "dialog"
    assert update.presentity == "1001@example.com"
    assert update.record_id == PUA_JSON_DIALOG["Call-ID"]
    assert update.expires == 36000
    assert update.data == {
        "Call-ID": PUA_JSON_DIALOG["Call-ID"],
        "From": "sip:1001@example.com",
        "To": "sip:1002@example.com",
        "State": "confirmed",
        "Direction": "initiator",
        "From-Tag": "as5f7e2",
        "To-Tag": "Qd3x9",
        "From-User": "1001",
        "To-User": "1002",
        "From-URI": "sip:1001@example.com",
        "To-URI": "sip:1001@example.com",
    }
    assert update.raw == PUA_JSON_DIALOG
    assert (update.bridge_id, update.bridge_epoch, update.sequence, update.switch_id) == (
        None,
        None,
        None,
        None,
    )


def test_str_and_dict_payloads_and_defaults() -> None:
    obj = dialog(To_URI=None, From_Tag=None, To_Tag=None, Direction=None, State="EARLY")
    [from_str] = parse_updates(ujson.dumps(obj))
    [from_dict] = parse_updates(obj)
    assert from_str == from_dict
    assert isinstance(from_dict, Update)
    assert from_dict.data["State"] == "early"
    assert from_dict.data["To-URI"] == "sip:1002@example.com"
    assert from_dict.data["From-URI"] == "sip:1001@example.com"
    assert "Direction" not in from_dict.data and "From-Tag" not in from_dict.data


def test_presentity_fields_win_only_when_all_three_present() -> None:
    full = dialog(Presentity="sip:park+701@Example.com", Presentity_User="park+701",
                  Presentity_Realm="Example.COM")  # fmt: skip
    [update] = parse_updates(full)
    assert update.presentity == "park+701@example.com"
    partial = dialog(Presentity_User="park+701", Presentity_Realm="example.com")
    [update] = parse_updates(partial)
    assert update.presentity == "1001@example.com"


def test_bridge_fields_and_expires_strings() -> None:
    obj = dialog(Bridge_ID="b1", Bridge_Epoch=1717000000000, Sequence=42, Switch_ID="core-1",
                 Expires="-1")  # fmt: skip
    [update] = parse_updates(obj)
    assert (update.bridge_id, update.bridge_epoch, update.sequence, update.switch_id) == (
        "b1",
        1717000000000,
        42,
        "core-1",
    )
    assert update.expires == -1
    [update] = parse_updates(dialog(Expires=" 30 "))
    assert update.expires == 30
    [update] = parse_updates(dialog(Expires=None))
    assert update.expires is None


def test_message_summary_counters_and_voice_string() -> None:
    [update] = parse_updates(MWI)
    assert update.record_id == "mwi"
    assert update.data == {
        "Messages-Waiting": "yes",
        "Message-Account": "sip:1001@example.com",
        "Messages-New": "2",
        "Messages-Saved": "1",
        "Messages-Urgent": "0",
        "Messages-Urgent-Saved": "0",
        "MWI-Voice-Message": "2/1 (0/0)",
    }
    fs_style = {k: v for k, v in MWI.items() if not k.startswith("Messages-") or k.endswith("ing")}
    fs_style.update({"MWI-Voice-Message": "3/4", "Message-Account": "sip:vm-1001@example.com"})
    [update] = parse_updates(fs_style)
    assert update.data == {
        "Messages-Waiting": "yes",
        "Message-Account": "sip:vm-1001@example.com",
        "MWI-Voice-Message": "3/4",
    }
    bare = {**fs_style, "Messages-Waiting": "NO"}
    del bare["MWI-Voice-Message"]
    [update] = parse_updates(bare)
    assert update.data == {"Messages-Waiting": "no", "Message-Account": "sip:vm-1001@example.com"}


def test_presence_update_record_ids() -> None:
    obj = {"Event-Name": "update", "Event-Package": "Presence", "From-User": "1001",
           "From-Realm": "example.com", "State": "On-The-Phone", "Call-ID": "c1"}  # fmt: skip
    [update] = parse_updates(obj)
    assert (update.package, update.record_id, update.data) == (
        "presence",
        "c1",
        {"State": "on-the-phone", "Call-ID": "c1"},
    )
    del obj["Call-ID"]
    [update] = parse_updates(obj)
    assert update.record_id == "presence"


def test_integers_accepted_as_string_fields() -> None:
    [update] = parse_updates(dialog(From_User=1001, Call_ID=77))
    assert update.presentity == "1001@example.com"
    assert update.record_id == "77"


def test_unknown_fields_ignored() -> None:
    [update] = parse_updates(dialog(Whatever={"nested": [1, 2]}, Other=1.5))
    assert update.package == "dialog"


def test_snapshot() -> None:
    snap_obj = {
        "Event-Name": "snapshot",
        "Switch-ID": "core-1",
        "Bridge-ID": "b1",
        "Bridge-Epoch": 7,
        "Sequence": 100,
        "Updates": [dialog(), dialog(Call_ID="c2", Switch_ID="core-1")],
    }
    [snap] = parse_updates([snap_obj])
    assert isinstance(snap, Snapshot)
    assert (snap.switch_id, snap.bridge_id, snap.bridge_epoch, snap.sequence) == (
        "core-1",
        "b1",
        7,
        100,
    )
    assert [u.record_id for u in snap.updates] == [PUA_JSON_DIALOG["Call-ID"], "c2"]
    assert all(u.switch_id == "core-1" for u in snap.updates)
    empty = parse_update({"Event-Name": "snapshot", "Switch-ID": "core-2", "Updates": []})
    assert isinstance(empty, Snapshot) and empty.updates == []


def test_field_table_covers_packages() -> None:
    assert set(FIELD_TABLE) == {"common", "dialog", "message-summary", "presence", "snapshot"}
    for rows in FIELD_TABLE.values():
        for name, required, allowed, default, meaning in rows:
            assert name and isinstance(required, bool) and allowed and meaning
            assert isinstance(default, str)
    required_dialog = {row[0] for row in FIELD_TABLE["dialog"] if row[1]}
    assert required_dialog == {"Call-ID", "From", "To", "State"}


# --- rejected updates: exact field and index in the message -------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"State": "ringing"},
            'field "State": must be one of early, confirmed, terminated, trying, proceeding',
        ),
        ({"State": None}, 'field "State": required'),
        ({"From": None}, 'field "From": required'),
        ({"To": ""}, 'field "To": required'),
        ({"Call-ID": None}, 'field "Call-ID": required for dialog updates'),
        ({"Direction": "inbound"}, 'field "Direction": must be one of initiator, recipient'),
        ({"Event-Name": "probe"}, 'field "Event-Name": must be update or snapshot'),
        ({"Event-Name": None}, 'field "Event-Name": required'),
        (
            {"Event-Package": "as-feature-event"},
            'field "Event-Package": must be one of dialog, message-summary, presence',
        ),
        ({"From-User": None}, 'field "From-User": required (or Presentity'),
        ({"From-Realm": None}, 'field "From-Realm": required (or Presentity'),
        ({"Expires": 1.5}, 'field "Expires": must be an integer'),
        ({"Expires": True}, 'field "Expires": must be an integer'),
        ({"Expires": "30s"}, 'field "Expires": must be an integer'),
        ({"Expires": "1e3"}, 'field "Expires": must be an integer'),
        ({"Expires": 2**40}, 'field "Expires": must be between'),
        ({"Sequence": -1}, 'field "Sequence": must be between 0 and'),
        ({"Sequence": "x"}, 'field "Sequence": must be an integer'),
        ({"Bridge-Epoch": [1]}, 'field "Bridge-Epoch": must be an integer'),
        ({"Bridge-ID": {"a": 1}}, 'field "Bridge-ID": must be a string'),
        ({"From": "sip:a@b\r\nX: y"}, 'field "From": contains a control character'),
        ({"To-URI": "x" * 1025}, 'field "To-URI": longer than 1024 characters'),
        ({"Unknown": "x" * 1025}, 'field "Unknown": longer than 1024 characters'),
        ({"From": True}, 'field "From": must be a string'),
    ],
)
def test_dialog_errors_name_field_and_index(changes: dict, message: str) -> None:
    obj = dict(PUA_JSON_DIALOG)
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    single = error_of(obj)
    assert str(single).startswith(message)
    assert single.index is None
    assert single.field == message.split('"')[1]
    batch = error_of([dict(PUA_JSON_DIALOG)] * 3 + [obj])
    assert str(batch).startswith("item 3: " + message)
    assert (batch.index, batch.field) == (3, single.field)


def test_exact_state_message() -> None:
    err = error_of([PUA_JSON_DIALOG, PUA_JSON_DIALOG, PUA_JSON_DIALOG, dialog(State="up")])
    assert str(err) == (
        'item 3: field "State": must be one of early, confirmed, terminated, trying, proceeding'
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"Messages-Waiting": None}, 'field "Messages-Waiting": required'),
        ({"Messages-Waiting": "maybe"}, 'field "Messages-Waiting": must be one of yes, no'),
        ({"Messages-New": -1}, 'field "Messages-New": must be between 0 and'),
        ({"Messages-Saved": "two"}, 'field "Messages-Saved": must be an integer'),
        ({"Messages-Urgent": 0.0}, 'field "Messages-Urgent": must be an integer'),
        ({"Messages-New": None, "MWI-Voice-Message": "2/x"}, 'field "MWI-Voice-Message": must'),
        ({"Messages-New": None, "MWI-Voice-Message": "2/1 (0/0) "}, 'field "MWI-Voice-Message"'),
    ],
)
def test_message_summary_errors(changes: dict, message: str) -> None:
    obj = dict(MWI)
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    assert str(error_of(obj)).startswith(message)


def test_presence_errors() -> None:
    base = {"Event-Name": "update", "Event-Package": "presence", "From-User": "1001",
            "From-Realm": "example.com"}  # fmt: skip
    assert str(error_of(base)) == 'field "State": required'
    err = error_of({**base, "State": "sleeping"})
    assert str(err).startswith('field "State": must be one of open, closed, online')


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "invalid JSON"),
        (b'{"Event-Name": "update", "Expires": NaN}', 'field "Expires": must be a finite number'),
        (b'{"Event-Name": "update", "X": Infinity}', 'field "X": must be a finite number'),
        (b'{"Event-Name": "update", "Expires": 1e400}', 'field "Expires": must be a finite'),
        (b'"update"', "payload must be a JSON object or an array"),
        (b"[1]", "item 0: must be a JSON object"),
        (b"42", "payload must be"),
    ],
)
def test_payload_errors(payload: bytes, message: str) -> None:
    assert str(error_of(payload)).startswith(message)


def test_array_size_limit() -> None:
    err = error_of([PUA_JSON_DIALOG] * (MAX_ITEMS + 1))
    assert f"more than {MAX_ITEMS}" in str(err)
    assert len(parse_updates([PUA_JSON_DIALOG] * 3)) == 3


def test_whole_array_validated_before_returning() -> None:
    err = error_of([PUA_JSON_DIALOG, dialog(State="bad"), dialog(To=None)])
    assert err.index == 1


def test_snapshot_errors() -> None:
    base = {"Event-Name": "snapshot", "Switch-ID": "core-1", "Updates": []}
    assert str(error_of({**base, "Switch-ID": None})) == 'field "Switch-ID": required'
    assert str(error_of({**base, "Updates": {}})).startswith('field "Updates": required, an array')
    err = error_of([base, {**base, "Updates": [PUA_JSON_DIALOG, dialog(State="x")]}])
    assert str(err).startswith('item 1: field "Updates": item 1: field "State": must be one of')
    assert (err.index, err.field) == (1, "Updates")
    err = error_of({**base, "Updates": [dialog(Switch_ID="core-2")]})
    assert str(err) == 'field "Updates": item 0: Switch-ID differs from the snapshot\'s'
    err = error_of({**base, "Updates": [dialog(Event_Name="snapshot")]})
    assert str(err) == 'field "Updates": item 0: field "Event-Name": must be update'
    err = error_of({**base, "Updates": [PUA_JSON_DIALOG] * (MAX_ITEMS + 1)})
    assert str(err).startswith('field "Updates": has 10001 items')
