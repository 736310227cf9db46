"""The subscription lifecycle table (presence/lifecycle.py): every move, legal or not."""

from __future__ import annotations

import itertools

import pytest

from busylamp.presence import lifecycle
from busylamp.presence.lifecycle import (
    BUSY,
    FINAL_IN_FLIGHT,
    IDLE,
    IN_FLIGHT,
    IN_FLIGHT_DIRTY,
    NAMES,
    NEW,
    OWED,
    QUEUED,
    RESOLVING,
    TERMINATED,
    TERMINATING,
    TRANSITIONS,
    IllegalTransition,
    advance,
)
from busylamp.presence.subscriptions import Subscription

PHASES = range(len(NAMES))

# The table spelled out once more, by hand: what the engine does in each phase.
EXPECTED = {
    (NEW, IN_FLIGHT), (NEW, IN_FLIGHT_DIRTY), (NEW, QUEUED), (NEW, RESOLVING),
    (NEW, FINAL_IN_FLIGHT), (NEW, TERMINATED),
    (IDLE, QUEUED), (IDLE, IN_FLIGHT), (IDLE, IN_FLIGHT_DIRTY), (IDLE, RESOLVING),
    (IDLE, FINAL_IN_FLIGHT), (IDLE, TERMINATED),
    (QUEUED, IN_FLIGHT), (QUEUED, IN_FLIGHT_DIRTY), (QUEUED, RESOLVING),
    (QUEUED, FINAL_IN_FLIGHT), (QUEUED, TERMINATED),
    (IN_FLIGHT, IDLE), (IN_FLIGHT, IN_FLIGHT_DIRTY), (IN_FLIGHT, TERMINATING),
    (IN_FLIGHT, TERMINATED),
    (IN_FLIGHT_DIRTY, QUEUED), (IN_FLIGHT_DIRTY, TERMINATING), (IN_FLIGHT_DIRTY, TERMINATED),
    (RESOLVING, IN_FLIGHT), (RESOLVING, IN_FLIGHT_DIRTY), (RESOLVING, QUEUED),
    (RESOLVING, RESOLVING), (RESOLVING, FINAL_IN_FLIGHT), (RESOLVING, TERMINATED),
    (TERMINATING, FINAL_IN_FLIGHT), (TERMINATING, RESOLVING), (TERMINATING, TERMINATED),
    (FINAL_IN_FLIGHT, TERMINATED),
}


class Holder:
    __slots__ = ("phase",)

    def __init__(self, phase: int) -> None:
        self.phase = phase


def test_the_table_is_the_expected_one() -> None:
    assert {(a, b) for a, tos in TRANSITIONS.items() for b in tos} == EXPECTED
    assert set(TRANSITIONS) == set(PHASES)


@pytest.mark.parametrize(("phase", "to"), sorted(EXPECTED),
                         ids=[f"{NAMES[a]}->{NAMES[b]}" for a, b in sorted(EXPECTED)])
def test_legal_transition(phase: int, to: int) -> None:
    holder = Holder(phase)
    advance(holder, to)
    assert holder.phase == to


ILLEGAL = sorted(set(itertools.product(PHASES, PHASES)) - EXPECTED)


@pytest.mark.parametrize(("phase", "to"), ILLEGAL,
                         ids=[f"{NAMES[a]}->{NAMES[b]}" for a, b in ILLEGAL])
def test_illegal_transition_raises_and_changes_nothing(phase: int, to: int) -> None:
    holder = Holder(phase)
    with pytest.raises(IllegalTransition, match=f"from {NAMES[phase]} to {NAMES[to]}"):
        advance(holder, to)
    assert holder.phase == phase


def test_terminated_is_final_and_reachable_from_every_other_phase() -> None:
    assert TRANSITIONS[TERMINATED] == frozenset()
    assert all(TERMINATED in TRANSITIONS[p] for p in PHASES if p != TERMINATED)


def test_every_phase_is_reachable_from_new() -> None:
    seen, todo = {NEW}, [NEW]
    while todo:
        for to in TRANSITIONS[todo.pop()]:
            if to not in seen:
                seen.add(to)
                todo.append(to)
    assert seen == set(PHASES)


def test_owed_and_busy_phases() -> None:
    assert {QUEUED, IN_FLIGHT_DIRTY, TERMINATING} == OWED
    assert {IN_FLIGHT, IN_FLIGHT_DIRTY, RESOLVING, TERMINATING, FINAL_IN_FLIGHT} == BUSY
    assert lifecycle.NAMES[IN_FLIGHT_DIRTY] == "IN_FLIGHT_DIRTY"


def test_a_subscription_starts_new_and_keeps_one_slot_for_its_phase() -> None:
    assert "phase" in Subscription.__slots__ and "dirty" not in Subscription.__slots__
    sub = Subscription.__new__(Subscription)
    sub.phase = NEW
    assert not sub.dirty and sub.phase_name == "NEW"
    advance(sub, QUEUED)
    assert sub.dirty


def test_the_engine_hot_moves_are_legal_and_checked_at_import() -> None:
    from busylamp.presence.engine.notify import HOT_MOVES

    assert set(HOT_MOVES) <= EXPECTED
    assert lifecycle.check_moves((IDLE, QUEUED)) == ((IDLE, QUEUED),)
    with pytest.raises(IllegalTransition):
        lifecycle.check_moves((IDLE, QUEUED), (FINAL_IN_FLIGHT, IDLE))
