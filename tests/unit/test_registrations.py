"""--require-registration's parts without a switch: the bus messages' validation, the table,
the bridge's translation of FreeSWITCH's events and registrations table (system test:
tests/system/test_fs_registration.py)."""

from __future__ import annotations

import json

import pytest

from busylamp.bridge.registrations import registration_from_event, registrations_from_api
from busylamp.esl.protocol import EslEvent
from busylamp.presence.registrations import RegistrationError, RegistrationTable, parse_registration


def message(**fields) -> dict:
    base = {"Event-Name": "registration", "Switch-ID": "sw1", "User": "1000",
            "Realm": "example.com", "Network-IP": "192.0.2.5", "Call-ID": "r1", "Expires": 300}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("bad", [
    {"User": ""}, {"User": "a@b"}, {"Network-IP": "not-an-ip"}, {"Expires": -1},
    {"Expires": "300"}, {"Expires": True}, {"Expires": 10**9}, {"Call-ID": None},
    {"Switch-ID": None}, {"Realm": "x" * 300}, {"User": "a b"}, {"User": "\ud800"},
])
def test_malformed_registration_messages_are_refused(bad):
    with pytest.raises(RegistrationError):
        parse_registration(message(**bad))


def test_table_allows_only_the_registered_address_until_expiry_or_end():
    table = RegistrationTable()
    table.apply(parse_registration(message()), 0.0)
    assert table.allows("1000@example.com", "192.0.2.5", 10.0)
    assert not table.allows("1000@example.com", "192.0.2.6", 10.0)
    assert not table.allows("1000@example.com", "192.0.2.5", 301.0)  # expired
    table.apply(parse_registration(message()), 400.0)
    # an unREGISTER with a Call-ID of its own and no address ends the AOR's registrations
    table.apply(parse_registration(message(Expires=0, **{"Call-ID": "other",
                                                          "Network-IP": None})), 401.0)
    assert not table.allows("1000@example.com", "192.0.2.5", 402.0)
    assert len(table) == 0


def test_a_switch_snapshot_replaces_only_that_switch():
    table = RegistrationTable()
    table.apply(parse_registration(message()), 0.0)
    table.apply(parse_registration(message(**{"Switch-ID": "sw2", "Call-ID": "r2"})), 0.0)
    table.apply(parse_registration({"Event-Name": "registrations", "Switch-ID": "sw1",
                                    "Registrations": []}), 1.0)
    assert len(table) == 1


def test_bridge_translates_freeswitch_events_and_table():
    event = EslEvent("CUSTOM", {"Event-Subclass": "sofia::register", "username": "1000",
                                "realm": "127.0.0.1", "network-ip": "127.0.0.1",
                                "call-id": "abc", "expires": "3600"}, None, b"")
    msg = registration_from_event(event, "sw")
    assert parse_registration(msg)["entries"] == [("1000@127.0.0.1", "127.0.0.1", "abc", 3600)]
    gone = EslEvent("CUSTOM", {"Event-Subclass": "sofia::unregister", "from-user": "1000",
                               "from-host": "127.0.0.1", "call-id": "zzz", "expires": "0"}, None, b"")
    assert parse_registration(registration_from_event(gone, "sw"))["entries"][0][3] == 0
    text = json.dumps({"row_count": 1, "rows": [
        {"reg_user": "1000", "realm": "127.0.0.1", "token": "abc", "expires": "1300",
         "network_ip": "127.0.0.1", "network_port": "5060"}]})
    snap = registrations_from_api(text, "sw", now=1000.0)
    assert parse_registration(snap)["entries"] == [("1000@127.0.0.1", "127.0.0.1", "abc", 300)]
