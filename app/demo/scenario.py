"""The demo office: a scripted timeline of calls played on the FreeSWITCH simulator.

Users 1001..1006 at demo.example.com, park slot 701, 1004's voicemail box. The timeline is
plain data (seconds at speed 1, caption, action); :class:`Timeline` is a sans-IO cursor over
it (``get_timer`` / ``due(now)``), so the player is a small loop in ``run.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from busylamp.esl.simulator import Call, FreeSwitchSimulator

DOMAIN = "demo.example.com"
USERS = ("1001", "1002", "1003", "1004", "1005", "1006")
PARK_SLOT = "701"
MAILBOX = "1004"


class Office:
    """The simulator and the calls in progress, by name."""

    def __init__(self, sim: FreeSwitchSimulator) -> None:
        self.sim = sim
        self.calls: dict[str, Call] = {}

    def dial(self, name: str, caller: str, callee: str) -> None:
        self.calls[name] = self.sim.originate(caller, callee)

    def answer(self, name: str) -> None:
        self.sim.answer(self.calls[name])

    def hangup(self, name: str, cause: str = "NORMAL_CLEARING") -> None:
        call = self.calls.pop(name, None)
        if call is not None:
            self.sim.hangup(call, cause)

    def to_voicemail(self, name: str) -> None:
        """The callee's leg stops ringing (NO_ANSWER); voicemail answers the caller's leg."""
        call = self.calls[name]
        if call.b is not None:
            self.sim.hangup(Call(call.b), "NO_ANSWER")
        self.calls[name] = Call(call.a)
        self.sim.answer(self.calls[name])

    def leave_voicemail(self, new: int, saved: int) -> None:
        self.sim.leave_voicemail(f"{MAILBOX}@{self.sim.domain}", new, saved)

    def park(self, name: str, talker: str) -> None:
        """``talker`` parks the call it is on: its leg leaves, the other party waits on the slot."""
        call = self.calls.pop(name)
        parked = call.a.user if call.b is not None and call.b.user == talker else call.b.user
        self.sim.hangup(call, "NORMAL_CLEARING")
        self.calls["parked"] = self.sim.park(parked, PARK_SLOT)

    def pick_up(self, picker: str, new_name: str) -> None:
        """``picker`` dials the slot and is bridged to the parked caller."""
        parked = self.calls.pop("parked")
        self.sim.hangup(parked, "NORMAL_CLEARING")
        self.calls[new_name] = call = self.sim.originate(parked.a.user, picker)
        self.sim.answer(call)


@dataclass(frozen=True, slots=True)
class Step:
    at: float  # seconds from the start, at speed 1
    caption: str
    action: Callable[[Office], None]


def office_timeline() -> list[Step]:
    """About 20 s of office life at speed 1."""
    return [
        Step(0.5, "1001 calls 1002", lambda o: o.dial("c1", "1001", "1002")),
        Step(2.5, "1002 answers", lambda o: o.answer("c1")),
        Step(3.5, "1003 calls 1004", lambda o: o.dial("c2", "1003", "1004")),
        Step(5.0, "1005 calls 1001 (busy: call waiting)", lambda o: o.dial("c3", "1005", "1001")),
        Step(7.0, "1005 gives up", lambda o: o.hangup("c3", "ORIGINATOR_CANCEL")),
        Step(7.5, "1004 does not answer: voicemail picks up", lambda o: o.to_voicemail("c2")),
        Step(9.0, "1003 leaves a voicemail for 1004",
             lambda o: (o.leave_voicemail(1, 0), o.hangup("c2"))),
        Step(10.0, "1001 and 1002 hang up", lambda o: o.hangup("c1")),
        Step(10.5, "1006 calls 1003", lambda o: o.dial("c4", "1006", "1003")),
        Step(11.5, "1003 answers", lambda o: o.answer("c4")),
        Step(13.0, "1003 parks 1006 on 701", lambda o: o.park("c4", "1003")),
        Step(15.0, "1005 picks up park 701", lambda o: o.pick_up("1005", "c5")),
        Step(16.0, "1004 listens to voicemail", lambda o: o.dial("vm", "1004", "*98")),
        Step(16.5, "voicemail answers", lambda o: o.answer("vm")),
        Step(18.0, "1004 has heard the message",
             lambda o: (o.leave_voicemail(0, 1), o.hangup("vm"))),
        Step(19.5, "1005 and 1006 hang up", lambda o: o.hangup("c5")),
    ]


TAIL = 1.0  # seconds (speed 1) after the last step, for the last NOTIFYs


def scenario_length(steps: list[Step]) -> float:
    return (steps[-1].at if steps else 0.0) + TAIL


class Timeline:
    """A cursor over steps scaled by ``speed``, started at ``start`` (monotonic seconds).

    With ``repeat`` the timeline starts over after each pass (every pass ends with the office
    idle and the mailbox heard, so passes chain)."""

    def __init__(self, steps: list[Step], start: float, speed: float = 1.0,
                 repeat: bool = False) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.steps = steps
        self.speed = speed
        self.repeat = repeat
        self.length = scenario_length(steps)
        self._pass_start = start
        self._index = 0
        self.played = 0

    def get_timer(self) -> float | None:
        """When the next step is due; None when the timeline is over."""
        if self._index >= len(self.steps):
            if not self.repeat or not self.steps:
                return None
            self._pass_start += self.length / self.speed
            self._index = 0
        return self._pass_start + self.steps[self._index].at / self.speed

    def due(self, now: float) -> list[Step]:
        """The steps whose time has come, in order (each returned once)."""
        out: list[Step] = []
        while (deadline := self.get_timer()) is not None and deadline <= now:
            out.append(self.steps[self._index])
            self._index += 1
        self.played += len(out)
        return out

    def end(self) -> float:
        """When the current pass (with its tail) ends."""
        return self._pass_start + self.length / self.speed
