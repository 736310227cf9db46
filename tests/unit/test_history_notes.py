"""What a subscription's history note costs: a NOTIFY no entry describes is noted by its sent
time alone (a float, no list per subscription), and its answer, timeout and ``told`` read it."""

from __future__ import annotations

import pytest

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.history import DETAILED, History
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.sip import parse_message
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates
from tests.unit.test_engine import CONTACTS, PHONE, answer, dialog_update, subscribe

pytestmark = pytest.mark.unit


def _node(**history) -> tuple[PresenceEngine, History]:
    state = PresenceState(REGISTRY, PackageOptions())
    engine = PresenceEngine(EngineConfig(contacts=CONTACTS), state, REGISTRY)
    recorder = History(wall=lambda: 1e9, **history)
    recorder.attach(state, engine.counters)
    engine.observer = recorder
    return engine, recorder


def _subscribe(engine: PresenceEngine, i: int, now: float) -> bytes:
    engine.receive(subscribe(watcher=f"w{i}@example.com", call_id=f"c{i}", from_tag=f"t{i}",
                             branch=f"z9hG4bK-{i}"), PHONE, "udp", None, now)
    return engine.messages_to_send()[-1][2]


def test_a_crowds_initial_notify_is_noted_by_its_time_alone():
    engine, history = _node()
    notifies = [_subscribe(engine, i, 10.0 + i) for i in range(DETAILED + 2)]
    subs = sorted(engine.subscriptions, key=lambda s: s.remote_tag)
    crowd = [s for s in subs if s.note.__class__ is float]
    assert [s.remote_tag for s in crowd] == ["t8", "t9"]  # past DETAILED: no subscribe entry
    assert crowd[0].note == 18.0 and history.told(crowd[0]) == (None, 18.0)
    waits = history._waits
    before = len(waits)
    engine.receive(answer(parse_message(notifies[8])), PHONE, "udp", None, 18.25)
    assert waits[before:] == [0.25]  # the answer timed from the note
    assert history.told(crowd[0]) == (None, 18.0)
    # Timer F for the others (the crowd's second among them): timeouts, their subscriptions end
    engine.handle_timer(19.0 + 64 * 0.5 + 1)
    assert crowd[1].note == 19.0 and list(engine.subscriptions) == [crowd[0]]
    assert engine.counters.notify_timeouts == DETAILED + 1


def test_a_fan_out_without_history_entries_notes_each_watcher_by_time():
    engine, history = _node(per_presentity=32)
    history.enabled = False  # the histograms on, the rings off: no entry describes a change
    for i in range(3):
        engine.receive(answer(parse_message(_subscribe(engine, i, 10.0))), PHONE, "udp", None,
                       10.0)
    engine.messages_to_send()
    engine.apply(parse_updates(dialog_update("early")), 20.0)
    out = engine.messages_to_send()
    assert len(out) == 3
    assert {sub.note for sub in engine.subscriptions} == {20.0}
    assert all(sub.note.__class__ is float for sub in engine.subscriptions)
    for _, _, data, _ in out:
        engine.receive(answer(parse_message(data)), PHONE, "udp", None, 20.5)
    assert history._waits[-3:] == [0.5, 0.5, 0.5]


def test_subscribe_entries_take_at_most_their_share_of_the_memory_cap():
    from busylamp.presence.history import ENTRY_BYTES, SUBSCRIBE_SHARE, WATCH_BYTES

    cost = ENTRY_BYTES + WATCH_BYTES
    engine, history = _node(max_bytes=SUBSCRIBE_SHARE * 3 * cost)  # room for 3 SUBSCRIBEs
    for i in range(5):
        engine.receive(subscribe(f"u{i}@example.com", call_id=f"c{i}", from_tag=f"t{i}",
                                 branch=f"z9hG4bK-{i}"), PHONE, "udp", None, 10.0 + i)
    engine.messages_to_send()
    kinds = {p: [e.kind for e in history.ring(p)] for p in history.presentities()}
    assert kinds == {f"u{i}@example.com": ["subscribe"] for i in range(3)}
    assert history.subscribe_bytes == history.bytes == 3 * cost
    later = [s for s in engine.subscriptions if s.presentity in ("u3@example.com",
                                                                 "u4@example.com")]
    assert sorted(s.note for s in later) == [13.0, 14.0]  # their time alone, no entry
    # changes are still recorded, and push the SUBSCRIBE entries out as the cap requires
    for i in range(SUBSCRIBE_SHARE * 3):
        engine.apply(parse_updates(dialog_update("early", call_id=f"x{i}",
                                                 presentity=(f"v{i}", "example.com"))), 20.0)
    assert history.bytes <= history.max_bytes
    assert history.subscribe_bytes == cost * sum(
        e.kind == "subscribe" for p in history.presentities() for e in history.ring(p))
    assert history.subscribe_bytes < 3 * cost
