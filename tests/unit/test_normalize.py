"""busylamp.bridge.normalize and bridge.resync: real captures, synthesized events (labelled), tables."""

from __future__ import annotations

import json

import pytest

from busylamp.bridge.normalize import NormalizeConfig, normalize
from busylamp.bridge.resync import SnapshotError, snapshot_from_channels
from busylamp.esl.protocol import FrameParser, parse_event

CFG = NormalizeConfig(domain_default="example.com")


def load(fixtures_dir, name: str) -> tuple[str, dict[str, str]]:
    frames = FrameParser().feed((fixtures_dir / "esl" / name).read_bytes())
    event = parse_event(frames[0])
    assert event is not None
    return event.name, dict(event.headers)


def dialog_of(result):
    assert result.skipped is None, result.skipped
    return next(u for u in result.updates if u["Event-Package"] == "dialog")


# ---------------------------------------------------------------- real captures


@pytest.mark.parametrize("name", [
    "channel_callstate_ringing.txt", "channel_callstate_hangup.txt", "channel_callstate_down.txt",
])
def test_real_2012_callstate_without_presence_id_is_skipped(fixtures_dir, name):
    # The 2012 B2BUA capture has no presence_id on the channel: no presentity to light.
    event, headers = load(fixtures_dir, name)
    assert normalize(event, headers, CFG).skipped == "no presence id"


def test_real_ringing_with_presence_id(fixtures_dir):
    # real capture + ONE added header (Channel-Presence-ID), as a dialplan presence_id would add
    event, headers = load(fixtures_dir, "channel_callstate_ringing.txt")
    headers["Channel-Presence-ID"] = "4986517174963@call-home.net"
    result = normalize(event, headers, CFG)
    dialog = dialog_of(result)
    assert dialog["Call-ID"] == "303c0f9f-4b32-4b9b-9f77-df0ca215bbe7"
    assert dialog["Direction"] == "initiator"  # Presence-Call-Direction inbound
    assert dialog["State"] == "confirmed"  # the caller's own lamp while ringing
    assert dialog["From"] == "sip:4986517174963@call-home.net"
    assert dialog["To"] == "sip:4986517174963@call-home.net"  # Caller-Destination-Number
    assert dialog["Expires"] == 600
    assert dialog["Switch-ID"] == "792e181c-b6e6-499c-82a1-52a778e7d82d"
    assert dialog["Event-Timestamp"] == 1349437306912868
    pidf = next(u for u in result.updates if u["Event-Package"] == "presence")
    assert pidf["State"] == "confirmed" and pidf["Call-ID"] == dialog["Call-ID"]


def test_real_hangup_and_down_after_hangup(fixtures_dir):
    for name in ("channel_callstate_hangup.txt", "channel_callstate_down.txt"):
        event, headers = load(fixtures_dir, name)
        headers["Channel-Presence-ID"] = "1000@call-home.net"
        dialog = dialog_of(normalize(event, headers, CFG))
        assert dialog["State"] == "terminated"
        assert dialog["Expires"] == 20


def test_real_down_not_after_hangup_is_skipped(fixtures_dir):
    event, headers = load(fixtures_dir, "channel_callstate_down.txt")
    headers["Channel-Presence-ID"] = "1000@call-home.net"
    headers["Original-Channel-Call-State"] = "RINGING"  # modified: a DOWN with no state yet
    assert normalize(event, headers, CFG).skipped == "call state down"


def test_real_park_application_capture_is_skipped_with_reason(fixtures_dir):
    event, headers = load(fixtures_dir, "channel_park_presence_2023.txt")
    assert event == "CHANNEL_PARK"
    assert headers["Channel-Presence-ID"] == "1001@192.168.56.120"  # decoded once by esl/
    assert normalize(event, headers, CFG).skipped == "park application has no slot"


def test_park_capture_headers_as_callstate_use_verbose_sip_tags(fixtures_dir):
    # the same real headers under the CHANNEL_CALLSTATE name (renamed: synthesized)
    _, headers = load(fixtures_dir, "channel_park_presence_2023.txt")
    dialog = dialog_of(normalize("CHANNEL_CALLSTATE", headers, CFG))
    assert dialog["From"] == "sip:1001@192.168.56.120"
    assert dialog["To-User"] == "1002" and dialog["Direction"] == "initiator"
    assert dialog["From-Tag"] == "27764SIPpTag001"  # variable_sip_from_tag of an inbound leg
    assert "To-Tag" not in dialog


@pytest.mark.parametrize("name", [
    "channel_answer.txt", "channel_hangup_complete.txt", "heartbeat.txt", "api.txt",
])
def test_real_other_events_are_skipped(fixtures_dir, name):
    event, headers = load(fixtures_dir, name)
    assert normalize(event, headers, CFG).skipped == f"unsupported event {event}"


# ---------------------------------------------------------------- state table (synthesized)


def callstate(state: str, direction: str, previous: str = "DOWN", **extra) -> dict[str, str]:
    headers = {
        "Event-Name": "CHANNEL_CALLSTATE", "Core-UUID": "core-1",
        "Channel-Call-State": state, "Original-Channel-Call-State": previous,
        "Unique-ID": "uuid-1", "Call-Direction": direction, "Presence-Call-Direction": direction,
        "Channel-Presence-ID": "1001@example.com", "Caller-Caller-ID-Number": "1000",
        "Caller-Caller-ID-Name": "Alice", "Caller-Destination-Number": "1002",
    }
    headers.update(extra)
    return headers


@pytest.mark.parametrize(("state", "direction", "expected"), [
    ("RINGING", "outbound", "early"), ("RING_WAIT", "outbound", "early"),
    ("EARLY", "outbound", "early"), ("DIALING", "outbound", "early"),
    ("RINGING", "inbound", "confirmed"), ("EARLY", "inbound", "confirmed"),
    ("DIALING", "inbound", "confirmed"), ("RING_WAIT", "inbound", "confirmed"),
    ("ACTIVE", "inbound", "confirmed"), ("ACTIVE", "outbound", "confirmed"),
    ("HELD", "outbound", "confirmed"), ("UNHELD", "inbound", "confirmed"),
    ("HANGUP", "inbound", "terminated"), ("HANGUP", "outbound", "terminated"),
])
def test_state_table(state, direction, expected):
    dialog = dialog_of(normalize("CHANNEL_CALLSTATE", callstate(state, direction), CFG))
    assert dialog["State"] == expected
    assert dialog["Direction"] == ("initiator" if direction == "inbound" else "recipient")
    assert dialog["Expires"] == {"early": 120, "confirmed": 600, "terminated": 20}[expected]


def test_state_by_name_never_by_number():
    headers = callstate("ACTIVE", "inbound", **{"Channel-Call-State-Number": "7"})
    assert dialog_of(normalize("CHANNEL_CALLSTATE", headers, CFG))["State"] == "confirmed"


def test_initiator_ringing_state_flag():
    cfg = NormalizeConfig(initiator_ringing_state="early")
    assert dialog_of(normalize("CHANNEL_CALLSTATE", callstate("RINGING", "inbound"), cfg))["State"] == "early"


def test_recipient_identities_and_pickup_target():
    headers = callstate("RINGING", "outbound", variable_sip_from_tag="fs-tag", variable_sip_to_tag="phone-tag")
    dialog = dialog_of(normalize("CHANNEL_CALLSTATE", headers, CFG))
    assert dialog["To"] == "sip:1000@example.com"  # the caller
    assert dialog["To-URI"] == "sip:**1001@example.com"  # intercept target
    assert dialog["From-Tag"] == "phone-tag" and dialog["To-Tag"] == "fs-tag"
    custom = NormalizeConfig(pickup_prefix="*8")
    assert dialog_of(normalize("CHANNEL_CALLSTATE", headers, custom))["To-URI"] == "sip:*81001@example.com"
    answered = dialog_of(normalize("CHANNEL_CALLSTATE", callstate("ACTIVE", "outbound"), CFG))
    assert answered["To-URI"] == "sip:1000@example.com"


def test_direction_fallback_and_missing_fields():
    headers = callstate("ACTIVE", "outbound")
    del headers["Presence-Call-Direction"]
    assert dialog_of(normalize("CHANNEL_CALLSTATE", headers, CFG))["Direction"] == "recipient"
    for drop, reason in (("Channel-Presence-ID", "no presence id"), ("Unique-ID", "no unique id")):
        broken = callstate("ACTIVE", "inbound")
        del broken[drop]
        assert normalize("CHANNEL_CALLSTATE", broken, CFG).skipped == reason
    weird = callstate("SPINNING", "inbound")
    assert normalize("CHANNEL_CALLSTATE", weird, CFG).skipped == "unknown call state SPINNING"
    assert normalize("CHANNEL_CALLSTATE", callstate("ACTIVE", "sideways"), CFG).skipped == "no call direction"


def test_garbage_never_raises():
    for headers in ({}, {"Channel-Presence-ID": "@"}, {"MWI-Message-Account": "sip:"},
                    {"Channel-Presence-ID": 5, "Unique-ID": None}):
        for name in ("CHANNEL_CALLSTATE", "MESSAGE_WAITING", "PRESENCE_IN", "CUSTOM", "", None):
            assert normalize(name, headers, CFG).skipped


def test_park_presence_id_channel_is_a_slot_lamp():
    headers = callstate("RINGING", "inbound", **{"Channel-Presence-ID": "park+701@example.com"})
    result = normalize("CHANNEL_CALLSTATE", headers, CFG)
    assert [u["Event-Package"] for u in result.updates] == ["dialog"]
    dialog = result.updates[0]
    assert dialog["Presentity"] == "sip:park+701@example.com"
    assert (dialog["State"], dialog["Direction"], dialog["To-User"]) == ("confirmed", "recipient", "1000")


# ---------------------------------------------------------------- MWI, presence, valet (synthesized)


def test_message_waiting():
    # synthesized from mod_voicemail.c (formats.md §2.4): no real capture exists
    headers = {"MWI-Messages-Waiting": "yes", "MWI-Message-Account": "sip:1001@example.com",
               "MWI-Voice-Message": "2/1 (1/0)", "Core-UUID": "core-1"}
    (update,) = normalize("MESSAGE_WAITING", headers, CFG).updates
    assert update["Event-Package"] == "message-summary"
    assert update["Presentity"] == "sip:1001@example.com"
    assert update["Messages-Waiting"] == "yes" and update["MWI-Voice-Message"] == "2/1 (1/0)"
    assert (update["Messages-New"], update["Messages-Saved"], update["Messages-Urgent"],
            update["Messages-Urgent-Saved"]) == (2, 1, 1, 0)
    assert "Expires" not in update and "Switch-ID" not in update  # snapshots must not drop MWI
    short = normalize("MESSAGE_WAITING", {"MWI-Messages-Waiting": "no",
                                          "MWI-Message-Account": "1002", "MWI-Voice-Message": "0/3"}, CFG)
    assert short.updates[0]["Presentity"] == "sip:1002@example.com"
    assert short.updates[0]["Messages-Saved"] == 3
    assert normalize("MESSAGE_WAITING", {"MWI-Message-Account": "a@b"}, CFG).skipped == "bad messages-waiting"


@pytest.mark.parametrize(("rpid", "status", "state"), [
    ("unknown", "Available", "open"), ("away", "Away", "away"), ("dnd", "", "dnd"),
    ("", "Do Not Disturb", "dnd"), ("busy", "", "busy"), ("on-the-phone", "", "on-the-phone"),
    ("unknown", "Unregistered", "offline"), ("", "Idle", "away"),
])
def test_user_presence_table(rpid, status, state):
    headers = {"proto": "sip", "from": "1001@example.com", "rpid": rpid, "status": status}
    (update,) = normalize("PRESENCE_IN", headers, CFG).updates
    assert (update["Event-Package"], update["State"]) == ("presence", state)
    assert update["Call-ID"] == "presence+1001@example.com"


def test_channel_presence_in_is_ignored():
    headers = {"proto": "any", "from": "1001@example.com", "Unique-ID": "u1", "status": "Active"}
    assert normalize("PRESENCE_IN", headers, CFG).skipped == "channel presence"


def valet_presence(slot: str, answer: str, status: str) -> dict[str, str]:
    # the header set valet_send_presence() in mod_valet_parking.c adds (synthesized)
    return {"proto": "park", "login": slot, "from": f"{slot}@example.com", "force-status": status,
            "rpid": "active", "event_type": "presence", "unique-id": slot,
            "answer-state": answer, "call-direction": "inbound"}


def valet_info(action: str, uuid: str = "parked-1", **extra: str) -> dict[str, str]:
    # the headers of mod_valet_parking's CUSTOM valet_parking::info as FreeSWITCH 1.11 sent them
    return {"Event-Subclass": "valet_parking::info", "Valet-Lot-Name": "lot1@example.com",
            "Valet-Extension": "701", "Action": action, "Unique-ID": uuid,
            "Caller-Caller-ID-Number": "1000", "Channel-Presence-ID": "1000@example.com",
            "Core-UUID": "core-1", **extra}


def test_valet_parking_slot_lifecycle():
    updates = normalize("CUSTOM", valet_info("hold"), CFG).updates
    assert [u["Presentity"] for u in updates] == [
        "sip:701@example.com", "sip:park+701@example.com",
        "sip:lot1@example.com", "sip:park+lot1@example.com"]
    for update in updates:
        assert (update["State"], update["To-User"], update["Call-ID"]) == ("confirmed", "1000", "parked-1")
        assert update["To-URI"] == "sip:701@example.com"  # pressing the lit key retrieves
        assert update["Switch-ID"] == "core-1"
    # mod_valet_parking's own PRESENCE_IN names no channel (unique-id is the slot): skipped
    for slot, answer, status in [("701", "confirmed", "Holding"), ("701", "terminated", "Empty"),
                                 ("lot1", "confirmed", "Active (1 caller)")]:
        assert "valet_parking::info" in normalize("PRESENCE_IN", valet_presence(slot, answer, status), CFG).skipped
    for action in ("bridge", "exit"):
        ended = normalize("CUSTOM", valet_info(action), CFG).updates
        assert {(u["Call-ID"], u["State"]) for u in ended} == {("parked-1", "terminated")}
        assert len(ended) == 4


def test_valet_parking_again_is_a_new_dialog():
    """Defect 2: every occupation has its own id, so the last one's tombstone cannot hide it."""
    first = normalize("CUSTOM", valet_info("exit", "parked-1"), CFG).updates[0]
    again = normalize("CUSTOM", valet_info("hold", "parked-2"), CFG).updates[0]
    assert first["Presentity"] == again["Presentity"] and first["Call-ID"] != again["Call-ID"]


def test_valet_event_without_channel_is_skipped():
    headers = valet_info("hold")
    del headers["Unique-ID"]
    assert normalize("CUSTOM", headers, CFG).skipped == "valet event without unique id"


# ---------------------------------------------------------------- resync snapshot


ROW = {  # columns as in switch_core_sqldb.c's channels table (values realistic, synthesized)
    "uuid": "a-leg", "direction": "inbound", "created": "2026-11-26 10:00:00",
    "created_epoch": "1795000000", "name": "sofia/internal/1001@example.com", "state": "CS_EXECUTE",
    "cid_name": "Alice", "cid_num": "1001", "ip_addr": "10.0.0.5", "dest": "1002",
    "application": "bridge", "application_data": "user/1002", "dialplan": "XML",
    "context": "default", "read_codec": "PCMU", "read_rate": "8000", "read_bit_rate": "64000",
    "write_codec": "PCMU", "write_rate": "8000", "write_bit_rate": "64000", "secure": "",
    "hostname": "fs1", "presence_id": "1001@example.com", "presence_data": "", "accountcode": "",
    "callstate": "ACTIVE", "callee_name": "Outbound Call", "callee_num": "1002",
    "callee_direction": "", "call_uuid": "a-leg", "sent_callee_name": "", "sent_callee_num": "",
    "initial_cid_name": "Alice", "initial_cid_num": "1001", "initial_ip_addr": "10.0.0.5",
    "initial_dest": "1002", "initial_dialplan": "XML", "initial_context": "default",
}


def test_snapshot_from_channels_json():
    b_leg = {**ROW, "uuid": "b-leg", "direction": "outbound", "callstate": "RINGING",
             "presence_id": "1002@example.com", "name": "sofia/internal/1002@10.0.0.6"}
    no_presence = {**ROW, "uuid": "c-leg", "presence_id": ""}
    down = {**ROW, "uuid": "d-leg", "callstate": "DOWN"}
    text = json.dumps({"row_count": 4, "rows": [ROW, b_leg, no_presence, down]})
    snap = snapshot_from_channels(text, "core-1", CFG)
    assert snap["Event-Name"] == "snapshot" and snap["Switch-ID"] == "core-1"
    dialogs = {u["Call-ID"]: u for u in snap["Updates"] if u["Event-Package"] == "dialog"}
    assert set(dialogs) == {"a-leg", "b-leg"}
    assert (dialogs["a-leg"]["State"], dialogs["a-leg"]["Direction"], dialogs["a-leg"]["To-User"]) == (
        "confirmed", "initiator", "1002")
    assert (dialogs["b-leg"]["State"], dialogs["b-leg"]["Direction"], dialogs["b-leg"]["To-User"]) == (
        "early", "recipient", "1001")
    assert all(u["Switch-ID"] == "core-1" for u in snap["Updates"])


@pytest.mark.parametrize("text", ['{"row_count":0}', "0 total.\n", "", '{"row_count":0,"rows":[]}'])
def test_snapshot_empty_answers(text):
    assert snapshot_from_channels(text, "core-1", CFG)["Updates"] == []


@pytest.mark.parametrize("text", ["-ERR no such command", "{not json", "[1,2]"])
def test_snapshot_garbage_raises(text):
    with pytest.raises(SnapshotError):
        snapshot_from_channels(text, "core-1", CFG)


# valet_info as FreeSWITCH 1.11 answered it with one call parked on 7001 (captured)
VALET_INFO = """<lots>
  <lot name="busylamp_lot@127.0.0.1">
    <extension uuid="0fb286d8-3160-413f-a446-06bb2c0fe929">7001</extension>
  </lot>
</lots>
"""


def test_snapshot_holds_the_occupied_park_slots():
    """Defect 4: a resync keeps a parked call's slot lit (same dialogs as the live events)."""
    parked = {**ROW, "uuid": "0fb286d8-3160-413f-a446-06bb2c0fe929", "direction": "inbound",
              "cid_num": "1003", "dest": "7001", "application": "valet_park",
              "application_data": "busylamp_lot@127.0.0.1 7001", "presence_id": "1003@127.0.0.1"}
    text = json.dumps({"row_count": 1, "rows": [parked]})
    snap = snapshot_from_channels(text, "core-1", CFG, VALET_INFO)
    park = [u for u in snap["Updates"] if u["Call-ID"] == parked["uuid"] and u["Presentity-User"] != "1003"]
    assert [u["Presentity"] for u in park] == [
        "sip:7001@127.0.0.1", "sip:park+7001@127.0.0.1",
        "sip:busylamp_lot@127.0.0.1", "sip:park+busylamp_lot@127.0.0.1"]
    live = normalize("CUSTOM", {"Event-Subclass": "valet_parking::info", "Action": "hold",
                                "Valet-Lot-Name": "busylamp_lot@127.0.0.1", "Valet-Extension": "7001",
                                "Unique-ID": parked["uuid"], "Caller-Caller-ID-Number": "1003",
                                "Core-UUID": "core-1"}, CFG).updates
    assert park == live
    # retrieved (the channel is bridged, no longer in valet_park) or gone: no slot
    bridged = {**parked, "application": "uuid_bridge"}
    for rows in ([bridged], []):
        text = json.dumps({"row_count": len(rows), "rows": rows})
        updates = snapshot_from_channels(text, "core-1", CFG, VALET_INFO)["Updates"]
        assert not [u for u in updates if "7001" in u["Presentity"]]


@pytest.mark.parametrize("text", ["", "-ERR valet_info Command not found!\n", "<lots>\n</lots>\n"])
def test_snapshot_without_valet_slots(text):
    assert snapshot_from_channels('{"row_count":0}', "core-1", CFG, text)["Updates"] == []


def test_snapshot_valet_garbage_raises():
    with pytest.raises(SnapshotError):
        snapshot_from_channels('{"row_count":0}', "core-1", CFG, "garbage")

# ---------------------------------------------------------------- real FreeSWITCH 1.11 (kit)


def test_real_caller_ringing_has_no_presence_id_yet(fixtures_dir):
    # The caller's leg turns RINGING when routing starts, before the dialplan set presence_id.
    event, headers = load(fixtures_dir, "channel_callstate_caller_ringing_1.11.txt")
    assert headers["Channel-Call-State"] == "RINGING" and headers["Call-Direction"] == "inbound"
    assert normalize(event, headers, CFG).skipped == "no presence id"


def test_real_caller_progress_lights_the_caller_lamp(fixtures_dir):
    # The caller leg's CHANNEL_PROGRESS (1001 rang) is its first event with a presence id.
    event, headers = load(fixtures_dir, "channel_progress_caller_1.11.txt")
    assert event == "CHANNEL_PROGRESS"
    result = normalize(event, headers, CFG)
    dialog = dialog_of(result)
    assert dialog["Presentity"] == "sip:1000@127.0.0.1"
    assert dialog["Direction"] == "initiator" and dialog["State"] == "confirmed"
    assert dialog["To"] == "sip:1001@127.0.0.1"
    assert dialog["Call-ID"] == headers["Unique-ID"]
    # it carries variable_sip_*_tag, CHANNEL_CALLSTATE does not: no tags, one body for both
    assert headers["variable_sip_from_tag"] and "From-Tag" not in dialog and "To-Tag" not in dialog
    [pidf] = [u for u in result.updates if u["Event-Package"] == "presence"]
    assert pidf["State"] == "confirmed"


def test_progress_of_an_outbound_leg_is_skipped(fixtures_dir):
    # labelled: the real caller frame turned into the callee leg's (outbound) progress
    event, headers = load(fixtures_dir, "channel_progress_caller_1.11.txt")
    headers["Call-Direction"] = headers["Presence-Call-Direction"] = "outbound"
    assert normalize(event, headers, CFG).skipped == "progress of an outbound leg"


def test_real_voicemail_leg_lights_no_lamp(fixtures_dir):
    # The vanilla-style fallback bridged loopback/app=voicemail with the callee's presence_id:
    # its EARLY would blink 1001 as ringing and pickable while the caller leaves a message.
    event, headers = load(fixtures_dir, "channel_callstate_voicemail_leg_1.11.txt")
    assert headers["Channel-Presence-ID"] == "1001@127.0.0.1"
    assert normalize(event, headers, CFG).skipped == "voicemail leg"


def test_snapshot_skips_voicemail_legs():
    rows = {"row_count": 1, "rows": [{
        "uuid": "u1", "direction": "outbound", "name": "loopback/voicemail-a",
        "presence_id": "1001@127.0.0.1", "callstate": "EARLY", "cid_num": "1000", "dest": "voicemail"}]}
    assert snapshot_from_channels(json.dumps(rows), "sw", CFG)["Updates"] == []


def test_real_caller_routing_presence_lights_the_caller_lamp(fixtures_dir):
    # 00_busylamp_presence.xml sets presence_id inline: the state machine's check_presence fires
    # PRESENCE_IN "CS_ROUTING" for the caller's leg as routing ends, before anything rings.
    event, headers = load(fixtures_dir, "presence_in_caller_routing_1.11.txt")
    assert (headers["status"], headers["Channel-Call-State"]) == ("CS_ROUTING", "RINGING")
    dialog = dialog_of(normalize(event, headers, CFG))
    assert dialog["Presentity"] == "sip:1000@127.0.0.1"
    assert (dialog["Direction"], dialog["State"]) == ("initiator", "confirmed")
    assert dialog["To"] == "sip:1001@127.0.0.1"


@pytest.mark.parametrize("change", [
    {"Channel-Call-State": "ACTIVE"},  # answered: CHANNEL_CALLSTATE says it
    {"Call-Direction": "outbound", "Presence-Call-Direction": "outbound"},  # a callee's leg
    {"proto": "conf"},  # another module's presence about the channel
])
def test_other_channel_presence_is_skipped(fixtures_dir, change):
    # labelled: the real frame with one header changed
    event, headers = load(fixtures_dir, "presence_in_caller_routing_1.11.txt")
    headers.update(change)
    assert normalize(event, headers, CFG).skipped == "channel presence"
