"""BridgeService end to end against esl.simulator.FreeSwitchSimulator onto a MemoryBus."""

from __future__ import annotations

import pytest

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.normalize import NormalizeConfig
from busylamp.bridge.service import BridgeService
from busylamp.esl.connection import EslTarget
from busylamp.esl.simulator import FreeSwitchSimulator
from tests.polling import wait_until

FAST_ESL = {"backoff_initial": 0.05, "backoff_max": 0.2, "jitter": 0.0, "dead_after": 5.0,
            "command_timeout": 2.0, "connect_timeout": 2.0}


def wait_for(predicate, timeout: float = 5.0):
    return wait_until(predicate, timeout, interval=0.01)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rig():
    sim = FreeSwitchSimulator(password="pw", domain="example.com", heartbeat_interval=None)
    host, port = sim.start()
    bus = MemoryBus()
    seen: list[dict] = []
    bus.subscribe(seen.append)
    clock = FakeClock()
    taps: list[tuple] = []
    service = BridgeService([EslTarget(host, port, "pw")], bus,
                            NormalizeConfig(domain_default="example.com"), "bridge-1", clock,
                            epoch=7, on_update=lambda ev, ups: taps.append((ev.name, ups)),
                            esl_options=FAST_ESL, max_timer_sleep=0.05)
    service.start()
    try:
        yield sim, service, seen, clock, taps
    finally:
        service.stop()
        sim.stop()


def dialogs(seen, user: str):
    return [m for m in seen if m.get("Event-Name") == "update" and m["Event-Package"] == "dialog"
            and m["Presentity-User"] == user]


def snapshots(seen):
    return [m for m in seen if m.get("Event-Name") == "snapshot"]


def test_call_lifecycle_published_with_ordering_fields(rig):
    sim, service, seen, _, taps = rig
    first = wait_for(lambda: snapshots(seen))[0]
    assert first["Switch-ID"] == sim.core_uuid and first["Updates"] == []
    call = sim.originate("1001", "1002")
    wait_for(lambda: dialogs(seen, "1002"))
    sim.answer(call)
    sim.hangup(call)
    wait_for(lambda: [d for d in dialogs(seen, "1002") if d["State"] == "terminated"])
    callee = [d["State"] for d in dialogs(seen, "1002")]
    caller = [d["State"] for d in dialogs(seen, "1001")]
    assert callee == ["early", "confirmed", "terminated"]
    # initiator: confirmed while ringing (PRESENCE_IN CS_ROUTING, CHANNEL_PROGRESS), EARLY then
    # ACTIVE at the answer
    assert caller == ["confirmed"] * 4 + ["terminated"]
    assert dialogs(seen, "1002")[0]["To-URI"] == "sip:**1002@example.com"
    sequences = [m["Sequence"] for m in seen]
    assert sequences == list(range(1, len(seen) + 1))
    assert all(m["Bridge-ID"] == "bridge-1" and m["Bridge-Epoch"] == 7 for m in seen)
    assert all(d["Switch-ID"] == sim.core_uuid for d in dialogs(seen, "1002"))
    assert service.counters["published"] >= 6 and len(service.calls) == 0
    assert any(name == "CHANNEL_CALLSTATE" and ups for name, ups in taps)


def test_republish_live_calls_on_timer(rig):
    sim, service, seen, clock, _ = rig
    wait_for(lambda: snapshots(seen))
    call = sim.originate("1001", "1002")
    sim.answer(call)
    wait_for(lambda: [d for d in dialogs(seen, "1002") if d["State"] == "confirmed"])
    before = len(seen)
    clock.now += 301  # confirmed calls republish every Expires/2 = 300 s
    wait_for(lambda: service.counters["republished"] >= 4)  # dialog + presence for both legs
    again = seen[before:]
    assert {m["State"] for m in again} == {"confirmed"}
    assert [m["Sequence"] for m in again] == list(range(before + 1, before + 1 + len(again)))


def test_restart_snapshot_terminates_ended_calls(rig):
    sim, service, seen, _, _ = rig
    wait_for(lambda: snapshots(seen))
    old_switch = sim.core_uuid
    call = sim.originate("1001", "1002")
    sim.answer(call)
    wait_for(lambda: [d for d in dialogs(seen, "1002") if d["State"] == "confirmed"])
    survivor = sim.originate("1003", "1004")
    wait_for(lambda: dialogs(seen, "1004"))
    count = len(snapshots(seen))
    sim.restart(new_core_uuid=True, keep_calls=False)  # every call ended while we were away
    wait_for(lambda: len(snapshots(seen)) >= count + 2)
    old, new = snapshots(seen)[count:count + 2]
    assert (old["Switch-ID"], old["Updates"]) == (old_switch, [])  # engine terminates them all
    assert new["Switch-ID"] == sim.core_uuid != old_switch
    assert service.calls.live(old_switch) == []
    del survivor


def test_reconnect_same_switch_snapshot_lists_live_calls(rig):
    sim, service, seen, _, _ = rig
    wait_for(lambda: snapshots(seen))
    call = sim.originate("1001", "1002")
    sim.answer(call)
    wait_for(lambda: [d for d in dialogs(seen, "1002") if d["State"] == "confirmed"])
    ended = sim.originate("1005", "1006")
    count = len(snapshots(seen))
    sim.drop_connections()
    sim.hangup(ended)  # ends while the bridge is disconnected: nobody hears the HANGUP
    snap = wait_for(lambda: snapshots(seen)[count:])[0]
    assert snap["Switch-ID"] == sim.core_uuid
    live = {(u["Call-ID"], u["State"]) for u in snap["Updates"] if u["Event-Package"] == "dialog"}
    assert live == {(call.a.uuid, "confirmed"), (call.b.uuid, "confirmed")}


def test_mwi_and_control_messages(rig):
    sim, service, seen, _, _ = rig
    wait_for(lambda: snapshots(seen))
    sim.leave_voicemail("1001", new=2, saved=1)
    mwi = wait_for(lambda: [m for m in seen if m.get("Event-Package") == "message-summary"])[0]
    assert (mwi["Messages-Waiting"], mwi["Messages-New"], mwi["Messages-Saved"]) == ("yes", 2, 1)
    before = len([m for m in seen if m.get("Event-Package") == "message-summary"])
    service.bus.publish_control({"Event-Name": "mwi_query", "Presentity": "1001@example.com"})
    assert "1001@example.com" in service.mailboxes  # a node watches it
    wait_for(lambda: len([m for m in seen if m.get("Event-Package") == "message-summary"]) > before)
    assert any(c.startswith("sendevent MESSAGE_QUERY") for c in sim.commands)
    count = len(snapshots(seen))
    service.bus.publish_control({"Event-Name": "resync", "Switch-ID": "*", "Reason": "gap"})
    wait_for(lambda: len(snapshots(seen)) > count)
    service.bus.publish_control({"Event-Name": "resync", "Switch-ID": "other-switch"})
    service.bus.publish_control({"Event-Name": "bogus"})
    # the bogus one, sent last, is counted: the one for another switch was handled before it
    wait_for(lambda: service.counters["bad_control"] == 1)
    assert len(snapshots(seen)) == count + 1
    assert service.counters["bad_control"] == 1


def test_skipped_reasons_counted(rig):
    sim, service, seen, _, _ = rig
    wait_for(lambda: snapshots(seen))
    sim.originate("1001", "1002", caller_presence=False, callee_presence=False)
    wait_for(lambda: service.skipped["no presence id"] >= 2)
    assert not dialogs(seen, "1001")


def test_park_slot_lamp_from_simulator(rig):
    sim, service, seen, _, _ = rig
    wait_for(lambda: snapshots(seen))
    call = sim.park("1001", "701")
    for user in ("701", "park+701"):
        slot = wait_for(lambda u=user: dialogs(seen, u))
        assert {d["State"] for d in slot} == {"confirmed"}
        assert slot[-1]["To-User"] == "1001" and slot[-1]["Direction"] == "recipient"
        assert slot[-1]["Call-ID"] == call.a.uuid
    sim.hangup(call)
    wait_for(lambda: dialogs(seen, "701")[-1]["State"] == "terminated")


def test_reconnect_snapshot_keeps_the_parked_slot(rig):
    """Defect 4 (the simulator now parks as FreeSWITCH does): the resync after a reconnect
    holds the occupied slot, so it does not terminate it."""
    sim, service, seen, _, _ = rig
    wait_for(lambda: snapshots(seen))
    call = sim.park("1001", "701")
    wait_for(lambda: dialogs(seen, "701"))
    before = len(snapshots(seen))
    sim.drop_connections()
    wait_for(lambda: len(snapshots(seen)) > before)
    slots = {(u["Presentity-User"], u["Call-ID"], u["State"]) for u in snapshots(seen)[-1]["Updates"]
             if u["Event-Package"] == "dialog"}
    assert {("701", call.a.uuid, "confirmed"), ("park+701", call.a.uuid, "confirmed")} <= slots
