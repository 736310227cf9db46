"""MemoryBus, Sequencer and CallTable."""

from __future__ import annotations

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.calls import CallTable
from busylamp.bridge.sequence import Sequencer


def test_memory_bus_fan_out_same_objects_and_isolated_failures():
    bus = MemoryBus()
    got_a, got_b, control = [], [], []

    def broken(message):
        raise RuntimeError("handler bug")

    bus.subscribe(got_a.append)
    bus.subscribe(broken)
    bus.subscribe(got_b.append)
    bus.subscribe_control(control.append)
    message = {"Event-Name": "update"}
    bus.publish(message)  # must not raise
    assert got_a == [message] and got_a[0] is message and got_b[0] is message
    assert bus.handler_errors == 1 and control == []
    bus.publish_control({"Event-Name": "resync", "Switch-ID": "*"})
    assert control == [{"Event-Name": "resync", "Switch-ID": "*"}] and len(got_a) == 1


def test_sequencer_stamps_copies():
    seq = Sequencer("b1", 42)
    original = {"Call-ID": "x"}
    first, second = seq.stamp(original), seq.stamp(original)
    assert (first["Bridge-ID"], first["Bridge-Epoch"], first["Sequence"]) == ("b1", 42, 1)
    assert second["Sequence"] == 2 and "Sequence" not in original


def update(call_id, state, expires, package="dialog"):
    return {"Event-Package": package, "Call-ID": call_id, "State": state, "Expires": expires}


def test_call_table_republish_schedule_and_removal():
    table = CallTable()
    assert table.get_timer() is None
    table.record("s1", update("a", "early", 120), now=0)
    table.record("s1", update("b", "confirmed", 600), now=0)
    table.record("s1", {"Event-Package": "message-summary", "Call-ID": "mwi+x"}, now=0)  # no Expires
    assert len(table) == 2 and table.get_timer() == 60
    assert table.due(59) == []
    assert [u["Call-ID"] for u in table.due(60)] == ["a"]
    assert table.get_timer() == 120
    table.record("s1", update("a", "confirmed", 600), now=70)  # answered: new interval
    assert table.get_timer() == 300
    assert sorted(u["Call-ID"] for u in table.due(370)) == ["a", "b"]
    table.record("s1", update("a", "terminated", 20), now=380)
    assert [u["Call-ID"] for u in table.live("s1")] == ["b"]


def test_call_table_switch_replace_and_forget():
    table = CallTable()
    table.record("s1", update("a", "confirmed", 600), now=0)
    table.record("s2", update("b", "confirmed", 600), now=0)
    table.replace_switch("s1", [update("c", "early", 120)], now=10)
    assert [u["Call-ID"] for u in table.live("s1")] == ["c"]
    table.forget_switch("s2")
    assert table.live("s2") == [] and len(table) == 1
    assert [u["Call-ID"] for u in table.due(1000)] == ["c"]


def test_call_table_heap_holds_live_calls_not_every_update():
    """A call updated again and again leaves one live entry: the replaced ones' heap items are
    dropped now and then instead of waiting up to Expires / 2 to reach the top."""
    table = CallTable()
    assert table.record("s1", update("a", "early", 120), now=0) == 60
    for i in range(10_000):
        table.record("s1", update("a", "confirmed" if i % 2 else "early", 600), now=i)
    assert len(table) == 1 and len(table._heap) <= 2 * len(table) + 1024 + 1
    assert table.get_timer() == 9_999 + 300  # the last one's, not a stale item's
    assert table.record("s1", update("a", "terminated", 20), now=10_000) is None
    assert len(table) == 0 and table.get_timer() is None
