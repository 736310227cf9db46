"""Real calls through a real FreeSWITCH (the kit), configured as the README and docs/phones.md say,
with the snippets ``busylamp dialplan install`` installs: which extension handled each call (from
the switch's log), the NOTIFYs a BLF key receives from busylamp (state, direction, remote target),
and how long each lamp change took from the SIP event that caused it (both times from sipp traces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from tests.polling import wait_until
from tests.system.freeswitch import DOMAIN, use_silent_prompts
from tests.system.phones import (
    Callee,
    CalleePlan,
    Caller,
    CallerPlan,
    Dialog,
    LampWatcher,
    Traced,
    TransferringCallee,
    first,
    parse_dialog_info,
)

LAMP_DEADLINE = 1.0  # s from the SIP event at a phone to the NOTIFY at the watcher
# sipp stamps a message it receives with its clock as read before it waited for the socket: an
# idle sipp (a watcher waiting for the next NOTIFY) was seen stamping a NOTIFY 93 ms before the
# SIP event (stamped by another sipp) that caused it. A NOTIFY earlier than that is a test error.
CLOCK_SLACK = 0.15
LATENCIES: list[tuple[str, float]] = []  # (what, seconds), printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def switch_ready(fs, tmp_path_factory):
    """Silent 3 s voicemail prompts (a caller sent to voicemail stays there, as with real sounds),
    and one call nobody watches: a freshly started FreeSWITCH hands the events of its first call
    to event-socket clients ~0.5 s late (measured with a bare socket, busylamp not involved)."""
    use_silent_prompts(fs, 3.0)
    workdir = tmp_path_factory.mktemp("warm-up")
    Callee("1001", CalleePlan(ring_ms=100, answer=200), fs.sip, workdir).start()
    Caller("1000", "1001", CallerPlan(talk_ms=100), fs.sip, workdir).start().wait(30)


@pytest.fixture(scope="module", autouse=True)
def latency_report():
    yield
    if LATENCIES:
        print("\nlamp latencies (SIP event -> NOTIFY):")
        for what, seconds in LATENCIES:
            print(f"  {seconds * 1000:7.1f} ms  {what}")


@dataclass
class Lamp:
    """One NOTIFY as a BLF key sees it."""

    at: float
    dialogs: list[Dialog]

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(d.state for d in self.dialogs)


class Lamps:
    """Watchers of several extensions at busylamp."""

    def __init__(self, node, tmp_path) -> None:
        self.node = node
        self.tmp_path = tmp_path
        self.watchers: dict[str, LampWatcher] = {}

    def watch(self, *users: str) -> Lamps:
        for user in users:
            watcher = LampWatcher(f"{user}@{DOMAIN}", ("127.0.0.1", self.node.sip_port),
                                  self.tmp_path, watcher=f"20{user[-2:]}@{DOMAIN}").start()
            self.watchers[user] = watcher
        for user in users:
            wait_until(lambda u=user: self.of(u), timeout=5, message=f"no first NOTIFY for {user}")
        return self

    def of(self, user: str) -> list[Lamp]:
        return [Lamp(n.at, parse_dialog_info(n.body)) for n in self.watchers[user].notifies()]

    def states(self, user: str) -> list[tuple[str, ...]]:
        return [lamp.states for lamp in self.of(user)]

    def wait_for(self, user: str, states: tuple[str, ...], timeout: float = 10) -> None:
        wait_until(lambda: self.states(user)[-1:] == [states], timeout=timeout,
                   message=f"{user}: {states} never came; saw {self.states(user)}")

    def stop(self) -> None:
        for watcher in self.watchers.values():
            watcher.stop()


@pytest.fixture
def lamps(busylamp_all, tmp_path):
    board = Lamps(busylamp_all, tmp_path)
    try:
        yield board
    finally:
        board.stop()


def first_lamp(lamps: list[Lamp], state: str, after: float = 0.0) -> Lamp:
    for lamp in lamps:
        if lamp.at >= after - CLOCK_SLACK and state in lamp.states:
            return lamp
    raise AssertionError(f"no NOTIFY with a dialog {state} after {after}: "
                         f"{[lamp.states for lamp in lamps]}")


def check_latency(what: str, event: Traced, lamp: Lamp) -> float:
    took = lamp.at - event.at
    LATENCIES.append((what, took))
    assert -CLOCK_SLACK <= took <= LAMP_DEADLINE, f"{what}: {took * 1000:.0f} ms"
    return took


def collapse(states: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Consecutive equal bodies as one (a NOTIFY per refresh would repeat the same lamp)."""
    out: list[tuple[str, ...]] = []
    for state in states:
        if not out or out[-1] != state:
            out.append(state)
    return out


def invite_sent(caller: Caller) -> Traced:
    return first(caller.trace(), sent=True, method="INVITE")


# stock example extensions (continue="true") that only set a variable, and only on some days
# and hours (tod_example: Monday-Friday 09-18): whether they ran says nothing about the routing
CALENDAR_EXAMPLES = frozenset({"tod_example", "holiday_example"})


def routed(fs, destination: str) -> list[str]:
    """The extensions that ran actions for the last call to ``destination``, without the
    stock calendar examples."""
    return [name for name in fs.handled_by(destination)[-1] if name not in CALENDAR_EXAMPLES]


def handled_by_snippet(fs, destination: str, snippet: str = "busylamp_local_extension") -> None:
    """The last call to ``destination`` ran ``snippet``'s actions and no vanilla call handler."""
    ran = fs.handled_by(destination)[-1]
    assert ran[-1] == snippet, ran
    assert not {"Local_Extension", "intercept-ext"} & set(ran), ran


# --------------------------------------------------------------------------- the install


def test_install_is_idempotent_and_the_switch_accepts_it(fs):
    again = fs.dialplan_install()
    assert "nothing to do" in again.stdout, again.stdout
    default_xml = fs.conf / "dialplan" / "default.xml"
    assert len(list(default_xml.parent.glob("default.xml.busylamp-bak-*"))) == 1
    log_before = len(fs.log_text())
    reply = fs.api("reloadxml")  # a parse error would answer -ERR with the parser's message
    assert reply.strip() == "+OK [Success]", reply
    assert "[ERR]" not in fs.log_text()[log_before:]
    xml = fs.api("xml_locate dialplan context name default")
    assert "busylamp_caller_presence" in xml and "busylamp_local_extension" in xml


# --------------------------------------------------------------------------- answered calls


@pytest.mark.parametrize("hangs_up", ["caller", "callee"])
def test_answered_call(fs, lamps, tmp_path, hangs_up):
    lamps.watch("1000", "1001")
    callee = Callee("1001", CalleePlan(ring_ms=1500, answer=200,
                                       talk_ms=1200 if hangs_up == "callee" else None),
                    fs.sip, tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(talk_ms=1200 if hangs_up == "caller" else None),
                    fs.sip, tmp_path).start()
    caller.wait(30)
    lamps.wait_for("1001", ("terminated",))
    lamps.wait_for("1000", ("terminated",))
    assert callee.run.wait(10) == 0, callee.run.errors()
    assert routed(fs, "1001") == ["busylamp_caller_presence", "global",
                                "busylamp_local_extension"]
    handled_by_snippet(fs, "1001")

    # the callee's key: blinking with the pickup target, then lit, then off
    assert lamps.states("1001") == [(), ("early",), ("confirmed",), ("terminated",)]
    _, early, talking, ended = lamps.of("1001")
    assert early.dialogs[0].direction == "recipient"
    assert early.dialogs[0].remote_target == f"sip:**1001@{DOMAIN}"
    assert talking.dialogs[0].direction == "recipient"
    assert talking.dialogs[0].remote_target == f"sip:1000@{DOMAIN}"
    assert ended.dialogs[0].id == early.dialogs[0].id == talking.dialogs[0].id
    ring = first(callee.trace(), sent=True, status=180)
    answer = first(callee.trace(), sent=True, status=200, cseq_method="INVITE")
    # the hanging-up phone's own trace: a sent message carries a fresh time
    bye = first((callee if hangs_up == "callee" else caller).trace(), sent=True, method="BYE")
    check_latency("callee 180 -> early", ring, early)
    check_latency("callee 200 -> confirmed", answer, talking)
    check_latency(f"BYE ({hangs_up}) -> callee terminated", bye, ended)

    # the caller's key: lit from its INVITE (while 1001 rings, defect 1) until the end
    assert lamps.states("1000") == [(), ("confirmed",), ("terminated",)]
    _, lit, off = lamps.of("1000")
    assert lit.dialogs[0].direction == "initiator"
    assert lit.dialogs[0].remote_target == f"sip:1001@{DOMAIN}"
    check_latency("caller INVITE -> confirmed", invite_sent(caller), lit)
    assert lit.at < answer.at, "the caller's lamp must be lit while the callee rings"
    check_latency(f"BYE ({hangs_up}) -> caller terminated", bye, off)


def test_caller_lamp_lights_before_the_callee_rings(fs, lamps, tmp_path):
    """Defect 1 without help from the callee: its phone takes 2 s to send 180; the caller's key is
    lit within 1 s of the INVITE all the same (the caller leg's PRESENCE_IN "CS_ROUTING", fired
    because 00_busylamp_presence.xml sets presence_id inline)."""
    lamps.watch("1000", "1001")
    callee = Callee("1001", CalleePlan(trying_ms=2000, ring_ms=300, answer=200), fs.sip,
                    tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(talk_ms=500), fs.sip, tmp_path).start()
    caller.wait(30)
    lamps.wait_for("1000", ("terminated",))
    lamps.wait_for("1001", ("terminated",))
    assert lamps.states("1000") == [(), ("confirmed",), ("terminated",)]
    lit = lamps.of("1000")[1]
    check_latency("slow callee: caller INVITE -> confirmed", invite_sent(caller), lit)
    ring = first(callee.trace(), sent=True, status=180)
    assert ring.at - lit.at > 1.0, "lit only when the callee rang"
    assert lamps.states("1001") == [(), ("early",), ("confirmed",), ("terminated",)]
    check_latency("slow callee: 180 -> early", ring, lamps.of("1001")[1])


# --------------------------------------------------------------------------- calls that fail


def test_cancelled_call(fs, lamps, tmp_path):
    lamps.watch("1000", "1001")
    Callee("1001", CalleePlan(answer=None), fs.sip, tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(expect=487, cancel_after_ms=1200), fs.sip,
                    tmp_path).start()
    caller.wait(30)
    lamps.wait_for("1001", ("terminated",))
    lamps.wait_for("1000", ("terminated",))
    handled_by_snippet(fs, "1001")
    assert lamps.states("1001") == [(), ("early",), ("terminated",)]
    assert lamps.states("1000") == [(), ("confirmed",), ("terminated",)]
    cancel = first(caller.trace(), sent=True, method="CANCEL")
    check_latency("caller INVITE -> confirmed", invite_sent(caller), lamps.of("1000")[1])
    check_latency("CANCEL -> callee terminated", cancel, lamps.of("1001")[2])
    check_latency("CANCEL -> caller terminated", cancel, lamps.of("1000")[2])


def _in_voicemail(fs) -> bool:
    return any(str(row.get("name", "")).startswith("loopback/voicemail")
               for row in fs.channels())


def test_busy_call_goes_to_voicemail_without_a_pickable_lamp(fs, lamps, tmp_path):
    """Defect 6: while the caller leaves a message for 1001, 1001's key neither blinks (nothing
    to pick up) nor lights (1001's phone is free): it stays dark."""
    lamps.watch("1000", "1001")
    callee = Callee("1001", CalleePlan(ring_ms=300, answer=486), fs.sip, tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(expect=200, talk_ms=5000), fs.sip, tmp_path).start()
    wait_until(lambda: _in_voicemail(fs), timeout=10, message="the caller never reached voicemail")
    lamps.wait_for("1001", ("terminated",))
    busy = first(callee.trace(), sent=True, status=486)
    in_voicemail_since = min(lamp.at for lamp in lamps.of("1001") if lamp.states == ("terminated",))
    caller.wait(30)
    lamps.wait_for("1000", ("terminated",))
    assert "Handle play-file:[voicemail/vm-person.wav]" in fs.log_text()
    assert routed(fs, "1001") == ["busylamp_caller_presence", "global",
                                "busylamp_local_extension"]
    # rang, refused, then nothing at all while the caller was in voicemail
    assert lamps.states("1001") == [(), ("early",), ("terminated",)]
    check_latency("486 -> callee terminated", busy, lamps.of("1001")[2])
    bye = first(caller.trace(), sent=True, method="BYE")
    assert bye.at - in_voicemail_since > 3.0, "the caller did not stay in voicemail"
    # the caller's key stays lit through the ringing, the refusal and the message
    assert lamps.states("1000") == [(), ("confirmed",), ("terminated",)]
    check_latency("caller INVITE -> confirmed", invite_sent(caller), lamps.of("1000")[1])
    check_latency("caller BYE -> caller terminated", bye, lamps.of("1000")[2])


def test_call_to_an_unregistered_user(fs, lamps, tmp_path):
    """1005 is in the directory but not registered: the bridge fails at once and the caller goes
    to 1005's voicemail. 1005's key never lights; the caller's is lit until it hangs up."""
    lamps.watch("1000", "1005")
    caller = Caller("1000", "1005", CallerPlan(expect=200, talk_ms=2000), fs.sip, tmp_path).start()
    caller.wait(30)
    lamps.wait_for("1000", ("terminated",))
    assert "USER_NOT_REGISTERED" in fs.log_text()
    handled_by_snippet(fs, "1005")
    assert lamps.states("1000") == [(), ("confirmed",), ("terminated",)]
    check_latency("caller INVITE -> confirmed", invite_sent(caller), lamps.of("1000")[1])
    check_latency("caller BYE -> terminated", first(caller.trace(), sent=True, method="BYE"),
                  lamps.of("1000")[2])
    assert lamps.states("1005") == [()]


# --------------------------------------------------------------------------- pickup, hold, transfer


def test_pickup_from_the_advertised_target(fs, lamps, tmp_path):
    lamps.watch("1000", "1001", "1002")
    callee = Callee("1001", CalleePlan(answer=None), fs.sip, tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(talk_ms=None), fs.sip, tmp_path).start()
    lamps.wait_for("1001", ("early",))
    target = lamps.of("1001")[-1].dialogs[0].remote_target
    match = re.fullmatch(rf"sip:(\*\*1001)@{re.escape(DOMAIN)}", target or "")
    assert match, target
    picker = Caller("1002", match.group(1), CallerPlan(talk_ms=1500), fs.sip, tmp_path).start()
    picker.wait(30)
    caller.wait(30)
    assert callee.run.wait(10) == 0, callee.run.errors()
    lamps.wait_for("1002", ("terminated",))
    lamps.wait_for("1000", ("terminated",))
    assert routed(fs, "**1001") == ["busylamp_caller_presence", "global",
                                  "busylamp_intercept"]
    assert lamps.states("1001") == [(), ("early",), ("terminated",)]
    assert lamps.states("1002") == [(), ("confirmed",), ("terminated",)]
    assert collapse(lamps.states("1000")) == [(), ("confirmed",), ("terminated",)]
    cancel = first(callee.trace(), method="CANCEL")
    check_latency("pickup: CANCEL at 1001 -> 1001 terminated", cancel, lamps.of("1001")[2])
    check_latency("pickup: picker INVITE -> 1002 confirmed", invite_sent(picker),
                  lamps.of("1002")[1])
    picker_bye = first(picker.trace(), sent=True, method="BYE")
    check_latency("pickup: picker BYE -> 1002 terminated", picker_bye, lamps.of("1002")[2])
    check_latency("pickup: picker BYE -> 1000 terminated", picker_bye, lamps.of("1000")[-1])


def test_hold_and_resume_keep_the_lamps_lit(fs, lamps, tmp_path):
    lamps.watch("1000", "1001")
    log_start = len(fs.log_text())
    Callee("1001", CalleePlan(ring_ms=300, answer=200), fs.sip, tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(talk_ms=800, hold=True, hold_ms=800), fs.sip,
                    tmp_path).start()
    caller.wait(30)
    lamps.wait_for("1001", ("terminated",))
    lamps.wait_for("1000", ("terminated",))
    # what FreeSWITCH reports for the caller's re-INVITEs: HELD, then UNHELD and ACTIVE again
    changes = re.findall(r"\(sofia/internal/1000@[^)]*\) Callstate Change (\w+) -> (\w+)",
                         fs.log_text()[log_start:])
    assert ("ACTIVE", "HELD") in changes and ("HELD", "UNHELD") in changes, changes
    handled_by_snippet(fs, "1001")
    assert lamps.states("1001") == [(), ("early",), ("confirmed",), ("terminated",)]
    assert lamps.states("1000") == [(), ("confirmed",), ("terminated",)]


def test_blind_transfer(fs, lamps, tmp_path):
    """1000 calls 1001; 1001 transfers 1000 to 1003 with REFER: 1001's key goes off, 1003's rings
    then lights, 1000's stays lit from the first INVITE to the last BYE."""
    lamps.watch("1000", "1001", "1003")
    transferor = TransferringCallee("1001", CalleePlan(ring_ms=300), fs.sip, tmp_path,
                                    refer_to="1003", talk_ms=800).start()
    target = Callee("1003", CalleePlan(ring_ms=800, answer=200, talk_ms=1200), fs.sip,
                    tmp_path).start()
    caller = Caller("1000", "1001", CallerPlan(talk_ms=None), fs.sip, tmp_path).start()
    caller.wait(40)
    assert transferor.run.wait(10) == 0, transferor.run.errors()
    assert target.run.wait(10) == 0, target.run.errors()
    lamps.wait_for("1003", ("terminated",))
    lamps.wait_for("1000", ("terminated",))
    handled_by_snippet(fs, "1001")
    handled_by_snippet(fs, "1003")  # the transferred caller's leg, routed again
    assert lamps.states("1001") == [(), ("early",), ("confirmed",), ("terminated",)]
    assert lamps.states("1003") == [(), ("early",), ("confirmed",), ("terminated",)]
    assert collapse(lamps.states("1000")) == [(), ("confirmed",), ("terminated",)]
    # 1000's dialog stays one (same Call-ID) and names its new far end once transferred
    remotes = [lamp.dialogs[0].remote_target for lamp in lamps.of("1000")[1:]]
    assert remotes[0] == f"sip:1001@{DOMAIN}" and remotes[-1] == f"sip:1003@{DOMAIN}", remotes
    assert len({lamp.dialogs[0].id for lamp in lamps.of("1000")[1:]}) == 1
    check_latency("transfer: caller INVITE -> confirmed", invite_sent(caller), lamps.of("1000")[1])
    refer = first(transferor.trace(), sent=True, method="REFER")
    bye_1001 = first(transferor.trace(), method="BYE")  # from the switch: received
    check_latency("transfer: BYE at 1001 -> 1001 terminated", bye_1001, lamps.of("1001")[3])
    ring = first(target.trace(), sent=True, status=180)
    answer = first(target.trace(), sent=True, status=200, cseq_method="INVITE")
    assert ring.at > refer.at
    check_latency("transfer: 1003 180 -> early", ring, lamps.of("1003")[1])
    check_latency("transfer: 1003 200 -> confirmed", answer, lamps.of("1003")[2])
    assert lamps.of("1003")[1].dialogs[0].remote_target == f"sip:**1003@{DOMAIN}"
    check_latency("transfer: 1003 BYE -> 1000 terminated",
                  first(target.trace(), sent=True, method="BYE"), lamps.of("1000")[-1])
