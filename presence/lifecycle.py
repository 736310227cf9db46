"""The lifecycle of a subscription at the notifier, as an explicit state table (as h11's _state).

A subscription's ``phase`` is one small int (no object per subscription); the engine changes it
only through :func:`advance`, which refuses a move the table does not list. What the phases mean:

==================  ==========================================================================
NEW                 accepted, its first NOTIFY not sent yet
IDLE                active; the watcher has been told everything; nothing in flight
QUEUED              active; a NOTIFY is owed (fan-out backlog, or withheld by the byte budget)
IN_FLIGHT           active; a NOTIFY awaits its final response, nothing more owed
IN_FLIGHT_DIRTY     active; a NOTIFY is in flight and another is owed once it is answered
RESOLVING           the destination's name is being looked up; the NOTIFY goes then (the final
                    one when ``final_reason`` is set meanwhile)
TERMINATING         ended (``final_reason``); the final NOTIFY goes once the one in flight answers
FINAL_IN_FLIGHT     the final NOTIFY (``Subscription-State: terminated``) awaits its answer
TERMINATED          nothing more goes out; the subscription is out of the table
==================  ==========================================================================

Verification of the NOTIFY target (the amplification budget) is not a phase: it is orthogonal
(a NOTIFY can be in flight to a verified target or not) and kept in ``verified``/``budget``.
"""

from __future__ import annotations

from typing import Protocol

NEW = 0
IDLE = 1
QUEUED = 2
IN_FLIGHT = 3
IN_FLIGHT_DIRTY = 4
RESOLVING = 5
TERMINATING = 6
FINAL_IN_FLIGHT = 7
TERMINATED = 8

NAMES = ("NEW", "IDLE", "QUEUED", "IN_FLIGHT", "IN_FLIGHT_DIRTY", "RESOLVING", "TERMINATING",
         "FINAL_IN_FLIGHT", "TERMINATED")

# Phases in which a NOTIFY is owed and not yet in flight or waiting (what ``dirty`` meant).
OWED = frozenset((QUEUED, IN_FLIGHT_DIRTY, TERMINATING))
# Phases with a NOTIFY transaction open (or its name lookup): nothing else may go out meanwhile.
BUSY = frozenset((IN_FLIGHT, IN_FLIGHT_DIRTY, RESOLVING, TERMINATING, FINAL_IN_FLIGHT))

# Every legal move: phase -> the phases it may go to. Any phase but TERMINATED may end at once
# (a NOTIFY that cannot be built, an unresolvable name, a rejected or timed-out NOTIFY, a final
# NOTIFY withheld by the byte budget).
TRANSITIONS: dict[int, frozenset[int]] = {
    # the first NOTIFY: sent (in full, or the minimal one first), withheld by the byte budget,
    # or waiting for DNS; a fetch (Expires: 0) sends its final NOTIFY straight away
    NEW: frozenset((IN_FLIGHT, IN_FLIGHT_DIRTY, QUEUED, RESOLVING, FINAL_IN_FLIGHT, TERMINATED)),
    # a change queues a NOTIFY, a refresh sends one at once, an end sends the final one
    IDLE: frozenset((QUEUED, IN_FLIGHT, IN_FLIGHT_DIRTY, RESOLVING, FINAL_IN_FLIGHT,
                     TERMINATED)),
    QUEUED: frozenset((IN_FLIGHT, IN_FLIGHT_DIRTY, RESOLVING, FINAL_IN_FLIGHT, TERMINATED)),
    # answered: idle again; a change or refresh meanwhile: owed after it; ended: final after it
    IN_FLIGHT: frozenset((IDLE, IN_FLIGHT_DIRTY, TERMINATING, TERMINATED)),
    # answered: the owed NOTIFY is queued (and goes at once)
    IN_FLIGHT_DIRTY: frozenset((QUEUED, TERMINATING, TERMINATED)),
    # resolved: as a send from QUEUED (or another name to look up); unresolvable: ended
    RESOLVING: frozenset((IN_FLIGHT, IN_FLIGHT_DIRTY, QUEUED, RESOLVING, FINAL_IN_FLIGHT,
                          TERMINATED)),
    # the NOTIFY in flight answered: the final one goes (or waits for DNS, or is withheld)
    TERMINATING: frozenset((FINAL_IN_FLIGHT, RESOLVING, TERMINATED)),
    FINAL_IN_FLIGHT: frozenset((TERMINATED,)),
    TERMINATED: frozenset(),
}

# advance()'s lookup: one tuple of booleans per phase, indexed by the target phase (read
# directly where the NOTIFY hot path inlines advance()).
LEGAL_MOVES: tuple[tuple[bool, ...], ...] = tuple(
    tuple(to in TRANSITIONS[phase] for to in range(len(NAMES))) for phase in range(len(NAMES))
)


def check_moves(*moves: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Raise IllegalTransition unless every (from, to) move is in the table; returns them.

    For the few moves on the NOTIFY hot path the engine makes by assignment right after testing
    the phase it moves from (``if sub.phase == IDLE: sub.phase = QUEUED``): their legality is
    checked once, here, when the engine module is imported, instead of on every NOTIFY."""
    for phase, to in moves:
        if not LEGAL_MOVES[phase][to]:
            raise IllegalTransition(phase, to)
    return moves


class HasPhase(Protocol):
    phase: int


class IllegalTransition(RuntimeError):
    """The engine tried a move the lifecycle table does not allow (a bug, never input)."""

    def __init__(self, phase: int, to: int) -> None:
        super().__init__(f"subscription cannot go from {NAMES[phase]} to {NAMES[to]}")
        self.phase, self.to = phase, to


def advance(sub: HasPhase, to: int) -> None:
    """Move ``sub`` to phase ``to``; IllegalTransition when the table does not allow it."""
    if not LEGAL_MOVES[sub.phase][to]:
        raise IllegalTransition(sub.phase, to)
    sub.phase = to
