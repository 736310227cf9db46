"""PresenceState: ordering, tombstones, expiry, snapshots, gaps, cache, export (injected clock)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import ujson

from busylamp.presence.packages import REGISTRY, PackageOptions
from busylamp.presence.state import TERMINATED_LIFETIME, PresenceState
from busylamp.presence.updates import Snapshot, Update, parse_updates

DI = "{urn:ietf:params:xml:ns:dialog-info}"
ALICE = "1001@example.com"
KEY = ("dialog", ALICE)


def upd(call_id: str = "c1", state: str = "confirmed", **fields: object) -> Update:
    obj: dict = {
        "Event-Name": "update",
        "Event-Package": "dialog",
        "From": f"sip:{ALICE}",
        "From-User": "1001",
        "From-Realm": "example.com",
        "To": "sip:1002@example.com",
        "Call-ID": call_id,
        "State": state,
    }
    obj.update({k.replace("_", "-"): v for k, v in fields.items()})
    [update] = parse_updates(obj)
    assert isinstance(update, Update)
    return update


def mwi(waiting: str = "yes", new: int = 1, **fields: object) -> Update:
    obj = {"Event-Name": "update", "Event-Package": "message-summary", "From-User": "1001",
           "From-Realm": "example.com", "Messages-Waiting": waiting, "Messages-New": new}  # fmt: skip
    obj.update({k.replace("_", "-"): v for k, v in fields.items()})
    [update] = parse_updates(obj)
    assert isinstance(update, Update)
    return update


def shown(state: PresenceState, presentity: str = ALICE) -> list[tuple[str, str]]:
    """(dialog id, state) in the current dialog body."""
    root = ET.fromstring(state.body("dialog", presentity).for_version(1))
    return [(d.get("id", ""), d.findtext(f"{DI}state", "")) for d in root.findall(f"{DI}dialog")]


@pytest.fixture
def state() -> PresenceState:
    return PresenceState(REGISTRY)


# --- basic apply / changes / cache ---------------------------------------------------------


def test_apply_reports_changes_and_caches_body(state: PresenceState) -> None:
    assert state.apply(upd(state="early"), 0.0) == {KEY}
    first = state.body(*KEY)
    assert state.body(*KEY) is first
    assert shown(state) == [("c1", "early")]
    assert state.apply(upd(state="early"), 1.0) == set()  # same data: refresh only
    assert state.body(*KEY) is first
    assert state.apply(upd(state="confirmed"), 2.0) == {KEY}
    assert state.body(*KEY) is not first
    assert shown(state) == [("c1", "confirmed")]
    assert state.stats.records["dialog"] == 1
    assert list(state.presentities()) == [KEY]
    assert [r.record_id for r in state.records(*KEY)] == ["c1"]


def test_multiple_calls_order_by_last_change(state: PresenceState) -> None:
    state.apply(upd("c1", "early"), 0.0)
    state.apply(upd("c2", "early"), 0.0)
    state.apply(upd("c1", "confirmed"), 1.0)
    assert shown(state) == [("c2", "early"), ("c1", "confirmed")]


def test_unknown_presentity_body_is_idle_and_not_cached(state: PresenceState) -> None:
    body = state.body("dialog", "nobody@example.com")
    assert ET.fromstring(body.for_version(0)).findall(f"{DI}dialog") == []
    assert state.body("dialog", "nobody@example.com") is not body
    mwi_body = state.body("message-summary", "nobody@example.com").for_version(0)
    assert mwi_body.startswith(b"Messages-Waiting: no\r\n")


# --- ordering -------------------------------------------------------------------------------


def test_stale_sequence_dropped(state: PresenceState) -> None:
    assert state.apply(upd(state="confirmed", Bridge_ID="b", Bridge_Epoch=1, Sequence=5), 0.0)
    assert state.apply(upd(state="early", Bridge_ID="b", Bridge_Epoch=1, Sequence=4), 0.1) == set()
    assert state.apply(upd(state="early", Bridge_ID="b", Bridge_Epoch=1, Sequence=5), 0.1) == set()
    assert state.stats.stale_dropped == 2
    assert state.apply(upd(state="early", Bridge_ID="b", Bridge_Epoch=0, Sequence=99), 0.1) == set()
    assert state.stats.stale_dropped == 3
    assert shown(state) == [("c1", "confirmed")]
    assert state.apply(upd(state="early", Bridge_ID="b", Bridge_Epoch=2, Sequence=1), 0.2) == {KEY}
    assert shown(state) == [("c1", "early")]


def test_ordering_is_per_presentity_record(state: PresenceState) -> None:
    bob = upd(state="early", From_User="1002", Bridge_ID="b", Bridge_Epoch=1, Sequence=6)
    alice = upd(state="early", Bridge_ID="b", Bridge_Epoch=1, Sequence=5)
    assert state.apply(bob, 0.0) == {("dialog", "1002@example.com")}
    assert state.apply(alice, 0.0) == {KEY}  # same Call-ID, other presentity: not stale
    assert state.stats.stale_dropped == 0


def test_updates_without_bridge_fields_apply_in_arrival_order(state: PresenceState) -> None:
    state.apply(upd(state="confirmed", Bridge_ID="b", Sequence=5), 0.0)
    assert state.apply(upd(state="early"), 0.1) == {KEY}
    assert state.apply(upd(state="confirmed"), 0.2) == {KEY}
    assert shown(state) == [("c1", "confirmed")]


def test_other_bridge_is_not_compared(state: PresenceState) -> None:
    state.apply(upd(state="early", Bridge_ID="a", Sequence=50), 0.0)
    assert state.apply(upd(state="confirmed", Bridge_ID="b", Sequence=1), 0.1) == {KEY}


# --- tombstones -----------------------------------------------------------------------------


def test_terminated_rendered_once_then_dropped(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed"), 0.0)
    state.apply(upd("c2", "early"), 0.0)
    assert state.apply(upd("c1", "terminated"), 1.0) == {KEY}
    assert shown(state) == [("c2", "early"), ("c1", "terminated")]
    assert shown(state) == [("c2", "early"), ("c1", "terminated")]  # cached until a change
    assert state.stats.tombstones == 1 and state.stats.records["dialog"] == 1
    state.mark_announced(*KEY)
    assert shown(state) == [("c2", "early")]
    state.apply(upd("c2", "confirmed"), 2.0)
    assert shown(state) == [("c2", "confirmed")]


def test_next_change_drops_announced_terminated(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed"), 0.0)
    state.apply(upd("c1", "terminated"), 1.0)
    assert shown(state) == [("c1", "terminated")]
    state.mark_sent(*KEY)
    assert shown(state) == [("c1", "terminated")]  # the cached body stays for the fan-out
    state.apply(upd("c2", "early"), 2.0)
    assert shown(state) == [("c2", "early")]


def test_reading_a_body_changes_nothing(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed"), 0.0)
    state.apply(upd("c1", "terminated"), 1.0)
    first = state.body(*KEY).for_version(0)
    assert state.body(*KEY).for_version(0) == first
    [record] = state.records(*KEY)
    assert record.terminated and not record.announced  # a read announces nothing
    state.apply(upd("c2", "early"), 2.0)  # a change before anything was sent
    assert shown(state) == [("c1", "terminated"), ("c2", "early")]  # still to be told


def test_tombstone_blocks_late_early_and_expires(state: PresenceState) -> None:
    state.apply(upd("c1", "early"), 0.0)
    state.apply(upd("c1", "terminated"), 1.0)
    shown(state)
    assert state.apply(upd("c1", "early"), 2.0) == set()
    assert state.apply(upd("c1", "confirmed", Sequence=9, Bridge_ID="b"), 3.0) == set()
    assert state.stats.resurrect_dropped == 2
    assert state.apply(upd("c1", "terminated"), 4.0) == set()  # duplicate: nothing new
    assert state.get_timer() == 1.0 + TERMINATED_LIFETIME
    assert state.handle_timer(1.0 + TERMINATED_LIFETIME - 0.001) == set()
    assert state.records(*KEY) != []
    assert state.handle_timer(1.0 + TERMINATED_LIFETIME) == set()
    assert state.records(*KEY) == [] and state.stats.tombstones == 0
    assert state.get_timer() is None
    assert state.apply(upd("c1", "early"), 30.0) == {KEY}  # call-id reused after tombstone


def test_terminated_expires_field_sets_tombstone_life(state: PresenceState) -> None:
    state.apply(upd("c1", "early"), 0.0)
    state.apply(upd("c1", "terminated", Expires=5), 10.0)
    assert state.get_timer() == 15.0


def test_terminated_for_unknown_call_is_announced(state: PresenceState) -> None:
    assert state.apply(upd("c9", "terminated"), 0.0) == {KEY}
    assert shown(state) == [("c9", "terminated")]
    assert state.stats.records["dialog"] == 0 and state.stats.tombstones == 1


def test_expires_zero_deletes_as_terminated(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed"), 0.0)
    assert state.apply(upd("c1", "confirmed", Expires=0), 1.0) == {KEY}
    assert shown(state) == [("c1", "terminated")]
    state.mark_announced(*KEY)
    assert shown(state) == []
    assert state.apply(upd("c1", "confirmed"), 2.0) == set()  # tombstone
    assert state.get_timer() == 1.0 + TERMINATED_LIFETIME


def test_expires_zero_for_unknown_call_leaves_silent_tombstone(state: PresenceState) -> None:
    assert state.apply(upd("c1", "confirmed", Expires=-1), 0.0) == set()
    assert shown(state) == []
    assert state.apply(upd("c1", "early"), 1.0) == set()
    assert state.stats.resurrect_dropped == 1


# --- expiry ---------------------------------------------------------------------------------


def test_live_record_expiry_renders_terminated_once(state: PresenceState) -> None:
    state.apply(upd("c1", "early", Expires=120), 0.0)
    state.apply(upd("c2", "confirmed"), 0.0)  # package default: 12 h
    assert state.get_timer() == 120.0
    assert state.handle_timer(119.9) == set()
    assert state.handle_timer(120.0) == {KEY}
    assert shown(state) == [("c2", "confirmed"), ("c1", "terminated")]
    assert state.stats.expired == 1
    assert state.get_timer() == 120.0 + TERMINATED_LIFETIME
    assert state.handle_timer(140.0) == set()  # tombstone gone silently
    assert shown(state) == [("c2", "confirmed")]  # cached body with the tombstone dropped
    assert state.get_timer() == REGISTRY["dialog"].default_record_expires


def test_refresh_extends_expiry_lazily(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed", Expires=10), 0.0)
    state.apply(upd("c1", "confirmed", Expires=10), 5.0)
    assert state.get_timer() == 15.0  # the superseded 10.0 entry is skipped
    assert state.handle_timer(10.0) == set()
    assert state.handle_timer(15.0) == {KEY}


def test_heap_compaction_keeps_timers_correct(state: PresenceState) -> None:
    for i in range(3000):
        state.apply(upd("c1", "confirmed", Expires=100 + i), float(i) / 1000)
    assert len(state._heap) <= 2 * 1 + 1024 + 1
    assert state.get_timer() == pytest.approx(2.999 + 100 + 2999)


# --- message-summary --------------------------------------------------------------------------


def test_mwi_latest_wins_no_expiry_and_delete(state: PresenceState) -> None:
    key = ("message-summary", ALICE)
    assert state.apply(mwi("yes", 2), 0.0) == {key}
    assert state.apply(mwi("yes", 3), 1.0) == {key}
    assert state.body(*key).for_version(0) == (
        b"Messages-Waiting: yes\r\nMessage-Account: sip:1001@example.com\r\n"
        b"Voice-Message: 3/0 (0/0)\r\n"
    )
    assert state.get_timer() is None
    assert state.apply(mwi("no", 0, Expires=0), 2.0) == {key}
    assert state.records(*key) == []
    assert state.body(*key).for_version(0).startswith(b"Messages-Waiting: no\r\n")
    assert state.apply(mwi("yes", 1, Expires=60), 3.0) == {key}
    assert state.handle_timer(63.0) == {key}
    assert state.records(*key) == [] and state.stats.records["message-summary"] == 0


# --- snapshots ------------------------------------------------------------------------------


def snapshot(
    switch_id: str, updates: list[Update], seq: int | None = None, epoch: int = 1
) -> Snapshot:
    for update in updates:
        update.switch_id = switch_id
    return Snapshot(switch_id, "b", epoch, seq, updates)


def test_snapshot_terminates_missing_records_of_that_switch(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed", Switch_ID="fs1"), 0.0)
    state.apply(upd("c2", "early", Switch_ID="fs1"), 0.0)
    state.apply(upd("c3", "early", Switch_ID="fs2"), 0.0)
    state.apply(mwi("yes", 1, Switch_ID="fs1"), 0.0)
    changed = state.apply_snapshot(snapshot("fs1", [upd("c2", "confirmed")], seq=10), 1.0)
    assert changed == {KEY}
    assert shown(state) == [("c3", "early"), ("c2", "confirmed"), ("c1", "terminated")]
    state.mark_announced(*KEY)
    assert shown(state) == [("c3", "early"), ("c2", "confirmed")]
    assert state.records("message-summary", ALICE) != []  # MWI is not call state


def test_snapshot_keeps_records_newer_than_itself(state: PresenceState) -> None:
    state.apply(
        upd("c1", "early", Switch_ID="fs1", Bridge_ID="b", Bridge_Epoch=1, Sequence=20), 0.0
    )
    assert state.apply_snapshot(snapshot("fs1", [], seq=15), 1.0) == set()
    assert shown(state) == [("c1", "early")]
    assert state.apply_snapshot(snapshot("fs1", [], seq=1, epoch=2), 2.0) == {KEY}
    assert shown(state) == [("c1", "terminated")]


def test_snapshot_items_use_snapshot_stamp(state: PresenceState) -> None:
    state.apply(
        upd("c1", "early", Switch_ID="fs1", Bridge_ID="b", Bridge_Epoch=1, Sequence=20), 0.0
    )
    assert state.apply_snapshot(snapshot("fs1", [upd("c1", "confirmed")], seq=15), 1.0) == set()
    assert state.stats.stale_dropped == 1
    assert state.apply_snapshot(snapshot("fs1", [upd("c1", "confirmed")], seq=21), 1.0) == {KEY}


# --- gaps -----------------------------------------------------------------------------------


def test_gap_detection(state: PresenceState) -> None:
    for seq in (1, 2, 3):
        state.apply(
            upd(f"c{seq}", Bridge_ID="b", Bridge_Epoch=1, Sequence=seq, Switch_ID="fs"), 0.0
        )
    assert state.stats.gaps == 0 and state.pending_gaps == {}
    state.apply(upd("c7", Bridge_ID="b", Bridge_Epoch=1, Sequence=7), 0.0)
    assert state.stats.gaps == 3 and state.pending_gaps == {"b": 3}  # until the engine drains
    state.apply(upd("c5", Bridge_ID="b", Bridge_Epoch=1, Sequence=5), 0.0)  # late: no new gap
    assert state.stats.gaps == 3
    state.apply(upd("c8", Bridge_ID="b", Bridge_Epoch=2, Sequence=500), 0.0)  # new epoch resets
    state.apply(upd("c9", Bridge_ID="b", Bridge_Epoch=2, Sequence=501), 0.0)
    assert state.stats.gaps == 3
    assert state.marks() == {"b": (2, 501)}
    state.apply(upd("c10", Bridge_ID="b", Bridge_Epoch=1, Sequence=900), 0.0)  # old epoch
    assert state.marks() == {"b": (2, 501)} and state.stats.gaps == 3


def test_snapshot_sequence_counts_for_gaps(state: PresenceState) -> None:
    state.apply(upd("c1", Bridge_ID="b", Bridge_Epoch=1, Sequence=1), 0.0)
    state.apply_snapshot(snapshot("fs1", [], seq=4), 0.0)
    assert state.stats.gaps == 2 and state.marks() == {"b": (1, 4)}


# --- options --------------------------------------------------------------------------------


def test_options_reach_renderer() -> None:
    state = PresenceState(
        REGISTRY, PackageOptions(force_single_dialog=True, force_dummy_dialog=True)
    )
    assert [d[1] for d in shown(state, "idle@example.com")] == ["terminated"]
    state.apply(upd("c1", "confirmed"), 0.0)
    state.apply(upd("c2", "early"), 0.0)
    state.apply(upd("c3", "trying"), 0.0)
    assert shown(state) == [("c2", "early")]


def test_presence_package_tombstones(state: PresenceState) -> None:
    key = ("presence", ALICE)

    def presence(state_name: str) -> Update:
        [update] = parse_updates({"Event-Name": "update", "Event-Package": "presence",
                                  "From-User": "1001", "From-Realm": "example.com",
                                  "State": state_name, "Call-ID": "c1"})  # fmt: skip
        assert isinstance(update, Update)
        return update

    assert state.apply(presence("confirmed"), 0.0) == {key}
    assert b"on-the-phone" in state.body(*key).for_version(0)
    assert state.apply(presence("terminated"), 1.0) == {key}
    assert b"on-the-phone" not in state.body(*key).for_version(0)
    assert state.apply(presence("early"), 2.0) == set()


# --- export ---------------------------------------------------------------------------------


def test_export_round_trip(state: PresenceState) -> None:
    state.apply(upd("c1", "confirmed", Expires=100, Bridge_ID="b", Bridge_Epoch=3, Sequence=7,
                    Switch_ID="fs1", From_Tag="ft", To_URI="sip:**1001@example.com"), 0.0)  # fmt: skip
    state.apply(upd("c2", "early", From_User="park+701"), 0.0)
    state.apply(upd("c3", "terminated"), 0.0)  # tombstone: not exported
    state.apply(mwi("yes", 4, Message_Account="sip:vm@example.com"), 0.0)
    state.apply(upd("c4", "early", Expires=10), 0.0)
    exported = list(state.export(2.5))
    state.handle_timer(2.5)
    assert list(state.export()) == exported  # default: the latest clock seen
    assert len(exported) == 4
    by_call = {item.get("Call-ID", "mwi"): item for item in exported}
    assert by_call["c1"]["Expires"] == 98
    assert by_call["c4"]["Expires"] == 8
    assert "Expires" not in by_call["mwi"]
    assert by_call["c1"]["Bridge-ID"] == "b" and by_call["c1"]["Sequence"] == 7

    peer = PresenceState(REGISTRY)
    updates = parse_updates(ujson.dumps(exported))
    for update in updates:
        assert isinstance(update, Update)
        peer.apply(update, 1000.0, track_gaps=False)
    peer.import_marks(state.marks())
    assert peer.stats.gaps == 0 and peer.marks() == {"b": (3, 7)}
    for key in set(state.presentities()):
        state.body(*key)
        state.mark_announced(*key)  # the c3 tombstone has been announced
        assert peer.body(*key).for_version(5) == state.body(*key).for_version(5)
    for key in state.presentities():
        ours = {r.record_id: r for r in state.records(*key) if not r.terminated}
        theirs = {r.record_id: r for r in peer.records(*key)}
        assert set(ours) == set(theirs)
        for record_id, record in ours.items():
            other = theirs[record_id]
            assert other.data == record.data
            assert (other.bridge_id, other.bridge_epoch, other.sequence, other.switch_id) == (
                record.bridge_id,
                record.bridge_epoch,
                record.sequence,
                record.switch_id,
            )
    assert peer.get_timer() == 1008.0


def test_many_records_stay_cheap() -> None:
    state = PresenceState(REGISTRY)
    base = upd("c0", "confirmed", Expires=60)
    for i in range(20000):
        update = Update("dialog", f"u{i % 5000}@example.com", f"c{i}", 60 + i % 7, base.data)
        state.apply(update, 0.0)
    assert state.stats.records["dialog"] == 20000
    assert state.get_timer() == 60.0
    changed = state.handle_timer(60.0)
    assert len(changed) == len({f"u{i % 5000}@example.com" for i in range(0, 20000, 7)})
