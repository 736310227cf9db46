"""The engine's typed counters (presence/engine/counters.py)."""

from __future__ import annotations

import pytest

from busylamp.presence.engine.counters import NAMES, EngineCounters


def test_counters_start_at_zero_and_read_by_attribute_or_name() -> None:
    counters = EngineCounters()
    assert counters.as_dict() == dict.fromkeys(NAMES, 0) and list(counters) == list(NAMES)
    counters.notify_sent += 2
    counters.add("subscriptions_removed_" + "expired")
    assert counters["notify_sent"] == 2 and counters.subscriptions_removed_expired == 1


def test_a_misspelt_counter_is_an_error_not_a_new_one() -> None:
    counters = EngineCounters()
    with pytest.raises(AttributeError):
        counters.notify_snet += 1  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        counters.add("limit_totl")
    with pytest.raises(KeyError):
        counters["as_dict"]
