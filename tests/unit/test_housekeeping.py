"""When the node freezes the heap again (presence/node/housekeeping.py)."""

from busylamp.presence.node.housekeeping import (
    GC_FREEZE_GROWTH,
    HISTORY_FREEZE_GROWTH,
    HOUSEKEEPING_INTERVAL,
    freeze_due,
)


def test_a_freeze_follows_growth_of_the_table_either_way_or_of_the_history() -> None:
    assert not freeze_due(0, 0)
    assert not freeze_due(GC_FREEZE_GROWTH - 1, HISTORY_FREEZE_GROWTH - 1)
    assert freeze_due(GC_FREEZE_GROWTH, 0) and freeze_due(-GC_FREEZE_GROWTH, 0)
    assert freeze_due(0, HISTORY_FREEZE_GROWTH)


def test_the_young_generations_hold_at_most_a_fraction_of_a_second_of_notifies() -> None:
    """At 10,000 NOTIFYs a second (10,000 history entries), a freeze is due at every tick:
    what the automatic collections walk stays at most one interval's worth."""
    assert HOUSEKEEPING_INTERVAL <= 0.5
    assert freeze_due(0, int(10_000 * HOUSEKEEPING_INTERVAL))


def test_a_freeze_does_not_count_the_permanent_generation_unless_debugging(
        monkeypatch, caplog) -> None:
    """gc.get_freeze_count() walks every frozen object (~30 ms at 3M): a freeze every half
    second at 300k subscriptions made it the fan-out's p99 (77-87 ms)."""
    import gc
    import logging

    from busylamp.presence.node import housekeeping

    def walked() -> int:
        raise AssertionError("the permanent generation was walked")

    monkeypatch.setattr(gc, "get_freeze_count", walked)
    caplog.set_level(logging.INFO, logger=housekeeping.__name__)
    try:
        housekeeping.freeze_heap(10)
        monkeypatch.setattr(gc, "get_freeze_count", lambda: 7)
        caplog.set_level(logging.DEBUG, logger=housekeeping.__name__)
        housekeeping.freeze_heap(10)
    finally:
        gc.unfreeze()
    assert "froze the heap at 10 subscriptions (7 objects permanent)" in caplog.text
