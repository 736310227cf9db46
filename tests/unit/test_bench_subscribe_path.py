"""bench/subscribe_path.py measures what it says: every round trip makes a subscription whose
initial NOTIFY was answered, and every retransmission is answered from its transaction."""

from __future__ import annotations

from bench import subscribe_path as sp


def test_round_trips_make_settled_subscriptions_and_retransmissions_are_absorbed():
    engine, datagrams = sp.new_engine(), sp.messages(40)
    sp.round_trips(engine, datagrams)
    assert len(engine.subscriptions) == 40
    assert all(sub.inflight is None for sub in engine.subscriptions)
    assert len({sub.presentity for sub in engine.subscriptions}) == 10  # a pool of N/4
    sp.retransmissions(engine, datagrams)
    assert engine.counters["sip_retransmissions_received"] == 40
    assert len(engine.subscriptions) == 40


def test_measure_reports_both_rates():
    rates = sp.measure(20, 1)
    assert set(rates) == {"round_trips_per_cpu_s", "retransmissions_per_cpu_s"}
    assert all(value > 0 for value in rates.values())
