"""busylamp.wire: each bus message built by the bridge's functions validates on the engine's
side, and control messages are checked with a reason."""

from __future__ import annotations

import pytest

from busylamp import wire
from busylamp.bridge.normalize import NormalizeConfig, normalize
from busylamp.wire import (
    ALL_SWITCHES,
    Control,
    ControlError,
    Snapshot,
    Update,
    mwi_request,
    parse_control,
    resync_request,
)

CFG = NormalizeConfig(domain_default="example.com")


# --- control messages ----------------------------------------------------------------------


def test_a_gap_resync_names_its_bridge_and_only_that_bridge_is_addressed():
    message = resync_request(bridge_id="bridge-a", reason="sequence gap", node_id="node-1")
    assert message == {"Event-Name": "resync", "Switch-ID": "*", "Bridge-ID": "bridge-a",
                       "Reason": "sequence gap", "Node-ID": "node-1"}
    control = parse_control(message)
    assert control == Control("resync", ALL_SWITCHES, "bridge-a", None, "node-1", "sequence gap")
    assert control.addressed_to("bridge-a") and not control.addressed_to("bridge-b")


def test_a_resync_without_bridge_id_is_for_every_bridge_and_switch_defaults_to_all():
    control = parse_control({"Event-Name": "resync"})
    assert control.switch_id == "*" and control.bridge_id is None
    assert control.addressed_to("bridge-a") and control.addressed_to("bridge-b")
    assert parse_control(resync_request(switch_id="core-1")).switch_id == "core-1"


@pytest.mark.parametrize("kind", ["mwi_query", "mwi_watch", "mwi_forget"])
def test_mailbox_messages_round_trip(kind):
    control = parse_control(mwi_request(kind, "1001@example.com", node_id="n1"))
    assert (control.kind, control.presentity, control.node_id) == (kind, "1001@example.com", "n1")
    assert control.addressed_to("any-bridge")


def test_mwi_request_refuses_other_kinds():
    with pytest.raises(ValueError, match="not a mailbox message kind"):
        mwi_request("resync", "1001@example.com")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ([1, 2], "must be a JSON object"),
        ({"Event-Name": "bogus"}, "Event-Name must be one of resync, mwi_query"),
        ({}, "Event-Name must be one of"),
        ({"Event-Name": "resync", "Bridge-ID": ["a"]}, 'resync: field "Bridge-ID": must be a string'),
        ({"Event-Name": "resync", "Switch-ID": {"x": 1}}, 'field "Switch-ID": must be a string'),
        ({"Event-Name": "resync", "Bridge-ID": "a\nb"}, "contains a control character"),
        ({"Event-Name": "resync", "Reason": "x" * 2000}, 'field "Reason": longer than 1024'),
        ({"Event-Name": "mwi_query"}, 'mwi_query: field "Presentity": required'),
        ({"Event-Name": "mwi_forget", "Presentity": ""}, 'field "Presentity": required'),
        ({"Event-Name": "mwi_watch", "Presentity": True}, 'field "Presentity": must be a string'),
        ({"Event-Name": "mwi_query", "Presentity": "a@b", "Node-ID": 1.5},
         'field "Node-ID": must be a string'),
    ],
)
def test_malformed_control_messages_are_rejected_with_a_reason(message, reason):
    with pytest.raises(ControlError) as caught:
        parse_control(message)
    assert reason in str(caught.value)


def test_a_rejection_reason_does_not_carry_the_message_content():
    """The bridge logs each reason once: a reason must not vary with the offending value."""
    reasons = set()
    for value in ("a\x01", "b\x02", "c\x7f"):
        with pytest.raises(ControlError) as caught:
            parse_control({"Event-Name": "resync", "Bridge-ID": value})
        reasons.add(str(caught.value))
    assert len(reasons) == 1


# --- updates built by the bridge validate on the engine's side --------------------------------


def test_builders_make_updates_the_engine_accepts():
    dialog = wire.dialog_update(user="1001", domain="example.com", call_id="c1", state="early",
                                direction="recipient", remote="1002", expires=120,
                                remote_target="sip:**1001@example.com", from_tag="t1")
    presence = wire.presence_update(user="1001", domain="example.com", call_id="c1",
                                    state="early", expires=120)
    mwi = wire.message_summary_update(user="1001", domain="example.com", waiting="yes",
                                      voice_message=" 2/1 (1/0) ")
    parsed = wire.parse_updates([dialog, presence, mwi])
    assert [(u.package, u.presentity, u.record_id) for u in parsed] == [
        ("dialog", "1001@example.com", "c1"), ("presence", "1001@example.com", "c1"),
        ("message-summary", "1001@example.com", "mwi")]
    assert parsed[0].data["To-URI"] == "sip:**1001@example.com"
    assert parsed[0].data["From-Tag"] == "t1" and parsed[0].expires == 120
    assert parsed[2].data["MWI-Voice-Message"] == "2/1 (1/0)"
    assert parsed[2].data["Messages-New"] == "2" and parsed[2].data["Messages-Urgent"] == "1"


def test_snapshot_parts_built_by_the_wire_validate_and_carry_their_place():
    update = wire.presence_update(user="1001", domain="example.com", call_id="c1",
                                  state="confirmed", expires=600)
    whole = wire.snapshot("core-1", [dict(update, **{"Call-ID": f"c{i}"}) for i in range(5)])
    parts = wire.split_snapshot(whole, part_updates=2, new_id=lambda: "snap-1")
    checked = [wire.parse_update(part) for part in parts]
    assert all(isinstance(s, Snapshot) for s in checked)
    assert [(s.snapshot_id, s.part, s.parts, len(s.updates)) for s in checked] == [
        ("snap-1", 0, 3, 2), ("snap-1", 1, 3, 2), ("snap-1", 2, 3, 1)]
    assert all(u.switch_id == "core-1" for s in checked for u in s.updates)


@pytest.mark.parametrize(
    ("text", "counts"),
    [("2/1", (2, 1, 0, 0)), ("2/1 (1/0)", (2, 1, 1, 0)), (" 3/4 (0/0)\t", (3, 4, 0, 0)),
     ("3/4(1/2)", None), ("1234567890/0", None), ("2/x", None), ("", None), (None, None)],
)
def test_one_voice_message_form_for_bridge_and_engine(text, counts):
    assert wire.parse_voice_message(text) == counts
    headers = {"MWI-Message-Account": "sip:1001@example.com", "MWI-Messages-Waiting": "yes"}
    if text is not None:
        headers["MWI-Voice-Message"] = text
    update = normalize("MESSAGE_WAITING", headers, CFG).updates[0]
    assert ("Messages-New" in update) == (counts is not None)
    assert isinstance(wire.parse_update(update), Update)  # what the bridge sends always passes


def test_one_spelling_per_presentity():
    cases = [("1001", "Example.COM:5060", "1001@example.com"), ("a%20b", "[::1]:5060", "a b@[::1]"),
             ("", "x.org", "x.org"), ("+4930", "", "+4930")]
    for user, host, aor in cases:
        assert wire.normalize_aor(user, host) == aor
    assert wire.aor_uri("a b@[::1]") == "sip:a%20b@[::1]"


# --- registrations ---------------------------------------------------------------------------


def test_registration_messages_round_trip_and_clamp_expires():
    entry = wire.registration_entry(user="1001", realm="Example.com", network_ip="10.0.0.1",
                                    call_id="reg-1", expires=10**9)
    one = wire.parse_registration(wire.registration("core-1", entry))
    assert one == {"kind": "registration", "switch": "core-1",
                   "entries": [("1001@example.com", "10.0.0.1", "reg-1", 7 * 86400)]}
    table = wire.parse_registration(wire.registrations("core-1", [entry]))
    assert table["kind"] == "registrations" and len(table["entries"]) == 1
    with pytest.raises(wire.RegistrationError, match="Network-IP must be an IP address"):
        wire.parse_registration(wire.registration("core-1", {**entry, "Network-IP": "x"}))


def test_the_control_topic_goes_with_its_update_topic():
    assert wire.control_topic("busylamp") == "busylamp.control"
