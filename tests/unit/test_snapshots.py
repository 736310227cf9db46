"""Snapshots in parts: the bridge's split (bridge/resync.py), the parser's fields and the engine's
reassembly (presence/snapshots.py), sans-IO with an explicit clock."""

from __future__ import annotations

import itertools

import pytest
import ujson

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.packages import REGISTRY
from busylamp.presence.snapshots import SnapshotAssembler
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import MAX_ITEMS, Snapshot, UpdateError, parse_update
from busylamp.wire import split_snapshot

SWITCH = "switch-1"


def dialog(user: str, call_id: str, state: str = "confirmed") -> dict:
    return {"Event-Name": "update", "Event-Package": "dialog", "From": f"sip:{user}@example.com",
            "From-User": user, "From-Realm": "example.com", "To": "sip:9@example.com",
            "Call-ID": call_id, "State": state, "Expires": 600}


def snapshot(updates: list[dict], switch: str = SWITCH) -> dict:
    return {"Event-Name": "snapshot", "Switch-ID": switch, "Updates": updates}


def stamped(parts: list[dict], start: int, epoch: int = 1) -> list[dict]:
    """What the bridge's Sequencer does: Bridge-ID, epoch and +1 per message."""
    return [{**p, "Bridge-ID": "b1", "Bridge-Epoch": epoch, "Sequence": start + i}
            for i, p in enumerate(parts)]


def counter_ids():
    numbers = itertools.count(1)
    return lambda: f"snap-{next(numbers)}"


def engine(timeout: float = 30.0) -> PresenceEngine:
    return PresenceEngine(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)},
                                       snapshot_timeout=timeout),
                          PresenceState(REGISTRY), REGISTRY)


def live_calls(eng: PresenceEngine) -> dict[str, str]:
    """Call-ID -> state of every live dialog record."""
    out = {}
    for bucket in eng.state._records.values():
        for record in bucket.values():
            if record.package == "dialog" and not record.terminated:
                out[record.record_id] = record.data["State"]
    return out


# --- split -------------------------------------------------------------------------------------

def test_split_fits_the_byte_budget_and_keeps_every_update_in_order():
    updates = [dialog(f"u{i}", f"c{i}") for i in range(1000)]
    parts = split_snapshot(snapshot(updates), part_bytes=20_000, new_id=lambda: "s1")
    assert len(parts) > 5
    assert {p["Snapshot-ID"] for p in parts} == {"s1"}
    assert [p["Snapshot-Part"] for p in parts] == list(range(len(parts)))
    assert all(p["Snapshot-Parts"] == len(parts) for p in parts)
    assert all(sum(len(ujson.dumps(u)) + 1 for u in p["Updates"]) <= 20_000 for p in parts)
    assert [u for p in parts for u in p["Updates"]] == updates
    assert all(p["Switch-ID"] == SWITCH and p["Event-Name"] == "snapshot" for p in parts)


def test_split_of_an_empty_snapshot_is_one_empty_part():
    parts = split_snapshot(snapshot([]), new_id=lambda: "s1")
    assert parts == [{"Event-Name": "snapshot", "Switch-ID": SWITCH, "Snapshot-ID": "s1",
                      "Snapshot-Part": 0, "Snapshot-Parts": 1, "Updates": []}]


def test_split_caps_updates_per_part():
    parts = split_snapshot(snapshot([dialog("u", f"c{i}") for i in range(25)]),
                           part_updates=10)
    assert [len(p["Updates"]) for p in parts] == [10, 10, 5]


# --- parse -------------------------------------------------------------------------------------

def test_parse_reads_the_part_fields():
    part = parse_update({**snapshot([dialog("u", "c")]), "Snapshot-ID": "x",
                         "Snapshot-Part": "2", "Snapshot-Parts": 3})
    assert isinstance(part, Snapshot)
    assert (part.snapshot_id, part.part, part.parts) == ("x", 2, 3)
    whole = parse_update(snapshot([]))
    assert (whole.snapshot_id, whole.part, whole.parts) == (None, 0, 1)


@pytest.mark.parametrize("fields, bad", [
    ({"Snapshot-Parts": 2, "Snapshot-Part": 0}, "Snapshot-ID"),
    ({"Snapshot-ID": "x", "Snapshot-Parts": 2, "Snapshot-Part": 2}, "Snapshot-Part"),
    ({"Snapshot-ID": "x", "Snapshot-Parts": 0}, "Snapshot-Parts"),
    ({"Snapshot-ID": "x", "Snapshot-Parts": 2, "Snapshot-Part": -1}, "Snapshot-Part"),
])
def test_parse_rejects_inconsistent_part_fields(fields, bad):
    with pytest.raises(UpdateError) as info:
        parse_update({**snapshot([]), **fields})
    assert info.value.field == bad


def test_the_item_limit_is_per_message_not_per_snapshot():
    with pytest.raises(UpdateError):
        parse_update(snapshot([dialog("u", f"c{i}") for i in range(MAX_ITEMS + 1)]))
    parts = split_snapshot(snapshot([dialog(f"u{i}", f"c{i}") for i in range(3 * MAX_ITEMS)]),
                           new_id=lambda: "big")
    assert sum(len(parse_update(p).updates) for p in parts) == 3 * MAX_ITEMS


# --- assembly in the engine ----------------------------------------------------------------------

def test_parts_are_applied_as_one_when_the_last_arrives():
    eng = engine()
    eng.apply([parse_update({**dialog("old", "gone"), "Switch-ID": SWITCH})], 0.0)
    updates = [dialog(f"u{i}", f"c{i}") for i in range(300)]
    parts = stamped(split_snapshot(snapshot(updates), part_bytes=5_000, new_id=counter_ids()),
                    start=10)
    assert len(parts) >= 3
    for part in parts[:-1]:
        eng.apply([parse_update(part)], 1.0)
        assert live_calls(eng) == {"gone": "confirmed"}  # nothing replaced yet
        assert eng.snapshots.pending == 1
    eng.apply([parse_update(parts[-1])], 1.0)
    assert live_calls(eng) == {f"c{i}": "confirmed" for i in range(300)}
    assert eng.snapshots.pending == 0 and eng.snapshots.counters["assembled"] == 1
    assert eng.state.stats.gaps == 0  # every part is a message of the bridge's sequence


def test_parts_out_of_order_and_duplicates_still_make_one_snapshot():
    eng = engine()
    parts = stamped(split_snapshot(snapshot([dialog(f"u{i}", f"c{i}") for i in range(100)]),
                                   part_bytes=3_000, new_id=counter_ids()), start=1)
    order = list(reversed(parts)) + [parts[0]]
    for part in order[:-1]:
        eng.apply([parse_update(part)], 0.0)
    assert len(live_calls(eng)) == 100
    eng.apply([parse_update(order[-1])], 0.0)  # redelivered after the snapshot was applied
    assert eng.snapshots.counters["parts_duplicate"] >= 1
    assert eng.snapshots.counters["assembled"] == 1 and len(live_calls(eng)) == 100


def test_a_newer_snapshot_supersedes_an_incomplete_older_one():
    eng = engine()
    ids = counter_ids()
    older = stamped(split_snapshot(snapshot([dialog(f"u{i}", f"old{i}") for i in range(100)]),
                                   part_bytes=3_000, new_id=ids), start=1)
    newer = stamped(split_snapshot(snapshot([dialog(f"u{i}", f"new{i}") for i in range(100)]),
                                   part_bytes=3_000, new_id=ids), start=1 + len(older))
    eng.apply([parse_update(older[0])], 0.0)
    for part in newer:
        eng.apply([parse_update(part)], 0.0)
    assert eng.snapshots.counters["incomplete_superseded"] == 1
    for part in older[1:]:  # stragglers of the superseded snapshot change nothing
        eng.apply([parse_update(part)], 0.0)
    assert live_calls(eng) == {f"new{i}": "confirmed" for i in range(100)}
    assert eng.snapshots.pending == 0


def test_a_whole_newer_snapshot_also_supersedes_an_incomplete_one():
    eng = engine()
    ids = counter_ids()
    older = stamped(split_snapshot(snapshot([dialog(f"u{i}", f"old{i}") for i in range(100)]),
                                   part_bytes=3_000, new_id=ids), start=1)
    eng.apply([parse_update(older[0])], 0.0)
    eng.apply([parse_update(stamped([snapshot([dialog("x", "only")])], start=50)[0])], 0.0)
    assert eng.snapshots.pending == 0
    assert live_calls(eng) == {"only": "confirmed"}


def test_an_incomplete_snapshot_times_out_on_the_engine_timer():
    eng = engine(timeout=5.0)
    eng.apply([parse_update({**dialog("old", "kept"), "Switch-ID": SWITCH})], 0.0)
    parts = stamped(split_snapshot(snapshot([dialog(f"u{i}", f"c{i}") for i in range(100)]),
                                   part_bytes=3_000, new_id=counter_ids()), start=1)
    eng.apply([parse_update(parts[0])], 10.0)
    eng.apply([parse_update(parts[1])], 12.0)
    assert eng.get_timer() is not None and eng.get_timer() <= 17.0  # latest part + timeout
    eng.handle_timer(16.9)
    assert eng.snapshots.pending == 1
    eng.handle_timer(17.0)
    assert eng.snapshots.pending == 0
    assert eng.snapshots.counters["incomplete_timed_out"] == 1
    assert live_calls(eng) == {"kept": "confirmed"}  # nothing of it was applied


def test_assembler_alone_without_stamps_uses_arrival_order():
    assembler = SnapshotAssembler()
    a = Snapshot(SWITCH, None, None, None, [], "a", 0, 2)
    b0 = Snapshot(SWITCH, None, None, None, [], "b", 0, 2)
    b1 = Snapshot(SWITCH, None, None, None, [], "b", 1, 2)
    assert assembler.add(a, 0.0) is None
    assert assembler.add(b0, 0.0) is None  # later, so newer: "a" is dropped
    whole = assembler.add(b1, 0.0)
    assert whole is not None and whole.snapshot_id == "b" and whole.parts == 1
    assert assembler.counters["incomplete_superseded"] == 1
