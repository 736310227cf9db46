"""sipp phones for the real-FreeSWITCH tests: they register with digest auth, ring, answer, call.

A phone of the switch is two sipp processes, as sipp maps incoming requests to calls by Call-ID:

- :func:`register` sends REGISTER, answers the 401 with ``[authentication]`` and exits once the
  switch said 200; the registered Contact points at the phone's answering port;
- :class:`Callee` listens on that port (sipp server mode) and plays a :class:`CalleePlan`: ring,
  answer, refuse, hang up, or wait for CANCEL;
- :class:`Caller` places a call: INVITE, the 407 answered with credentials, then a
  :class:`CallerPlan` (talk and hang up, wait for the far end's BYE, cancel, expect a refusal).

Watchers of busylamp are sipp too (:class:`LampWatcher`): one SUBSCRIBE, then every NOTIFY answered
200 until the test stops them. Every trace line carries sipp's own wall-clock time, so the test can
measure "SIP event at the phone -> NOTIFY at the watcher" from two sipp traces.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tests.sipp_util import SippRun, SipSeen, free_port, start_sipp
from tests.system.freeswitch import DOMAIN, PASSWORD

_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">
"""

_SDP = """v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=sendrecv
"""


def _sdp(direction: str = "sendrecv") -> str:
    return _SDP.replace("a=sendrecv", f"a={direction}")


# --- registration --------------------------------------------------------------------------------

def register_xml(user: str, contact_port: int, expires: int = 3600) -> str:
    register = """  <send retrans="500">
    <![CDATA[
      REGISTER sip:{domain} SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From: <sip:{user}@{domain}>;tag=[pid]reg[call_number]
      To: <sip:{user}@{domain}>
      Call-ID: [call_id]
      CSeq: {cseq} REGISTER
      Contact: <sip:{user}@[local_ip]:{contact_port}>
      Max-Forwards: 70
      Expires: {expires}
      User-Agent: sipp busylamp-phone
      {auth}Content-Length: 0

    ]]>
  </send>
"""
    fields = dict(domain=DOMAIN, user=user, contact_port=contact_port, expires=expires)
    return (_HEAD.format(name=f"register {user}")
            + register.format(cseq=1, auth="", **fields)
            + '  <recv response="401" auth="true"/>\n'
            + register.format(cseq=2, auth=f"[authentication username={user} password={PASSWORD}]\n      ",
                              **fields)
            + '  <recv response="200"/>\n</scenario>\n')


def register(user: str, contact_port: int, fs_sip: tuple[str, int], workdir: Path,
             expires: int = 3600) -> None:
    """REGISTER ``user`` at the switch with digest auth; the Contact is ``contact_port``."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / f"register-{user}.xml"
    scenario.write_text(register_xml(user, contact_port, expires))
    run = start_sipp(scenario, fs_sip, workdir / f"register-{user}-{expires}", timeout=15)
    if run.wait(30) != 0:
        raise AssertionError(f"REGISTER {user} failed:\n{run.errors()}")


# --- the called phone ----------------------------------------------------------------------------

@dataclass
class CalleePlan:
    """What the called phone does with one INVITE."""

    ring_ms: int = 300  # 180 Ringing, then this long before the final answer
    trying_ms: int = 0  # this long between the INVITE and the 180 (a phone slow to ring)
    answer: int | None = 200  # 200, a refusal (486, 603...) or None: ring until CANCEL
    talk_ms: int | None = None  # answered: hang up after this long; None: wait for BYE
    # answered: expect a re-INVITE (hold), then another (resume). FreeSWITCH 1.11 sends none when
    # the other phone holds: it plays hold_music to this one (tests/system, hold test)
    reinvite_hold: bool = False


_REASONS = {200: "OK", 486: "Busy Here", 603: "Decline", 480: "Temporarily Unavailable",
            180: "Ringing", 487: "Request Terminated"}


def callee_xml(user: str, plans: list[CalleePlan]) -> str:
    """A server scenario for one call per plan (sipp runs it once per incoming call)."""
    if len(plans) != 1:
        raise ValueError("one plan per callee process")
    plan = plans[0]
    contact = f"<sip:{user}@[local_ip]:[local_port]>"
    reply = """  <send>
    <![CDATA[
      SIP/2.0 {status} {reason}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]callee[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: {contact}
      {body_headers}Content-Length: [len]

{body}    ]]>
  </send>
"""

    def send(status: int, sdp: str | None = None) -> str:
        reason = _REASONS.get(status, "Whatever")
        if sdp is None:
            return reply.format(status=status, reason=reason, contact=contact, body_headers="",
                                body="")
        return reply.format(status=status, reason=reason, contact=contact,
                            body_headers="Content-Type: application/sdp\n      ",
                            body="      " + sdp)

    steps = [_INVITE_RECV]
    if plan.trying_ms:
        steps.append(f'  <pause milliseconds="{plan.trying_ms}"/>\n')
    steps.append(send(180))
    if plan.answer is None:
        # the 487 answers the INVITE: its CSeq, not the CANCEL's
        steps += ['  <recv request="CANCEL"/>\n', send(200),
                  send(487).replace("[last_CSeq:]", "CSeq:[$invite_cseq]"),
                  '  <recv request="ACK"/>\n']
    elif plan.answer != 200:
        steps += [f'  <pause milliseconds="{plan.ring_ms}"/>\n', send(plan.answer),
                  '  <recv request="ACK"/>\n']
    else:
        steps += [f'  <pause milliseconds="{plan.ring_ms}"/>\n', send(200, _sdp()),
                  '  <recv request="ACK"/>\n']
        if plan.reinvite_hold:
            steps += ['  <recv request="INVITE"/>\n', send(200, _sdp("recvonly")),
                      '  <recv request="ACK"/>\n',
                      '  <recv request="INVITE"/>\n', send(200, _sdp("sendrecv")),
                      '  <recv request="ACK"/>\n']
        if plan.talk_ms is None:
            steps += ['  <recv request="BYE"/>\n', send(200)]
        else:
            steps += [f'  <pause milliseconds="{plan.talk_ms}"/>\n', _BYE_FROM_CALLEE,
                      '  <recv response="200"/>\n']
    return _HEAD.format(name=f"callee {user}") + "".join(steps) + "</scenario>\n"


# The callee remembers the INVITE's From, To and Contact: a request it sends in the dialog goes to
# the switch's Contact, From = the INVITE's To with its own tag, To = the INVITE's From.
_INVITE_RECV = """  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="peer"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="me"/>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="peer_contact"/>
      <ereg regexp=".*" search_in="hdr" header="Call-ID:" assign_to="dialog_call_id"/>
      <ereg regexp=".*" search_in="hdr" header="CSeq:" assign_to="invite_cseq"/>
    </action>
  </recv>
  <Reference variables="peer,me,peer_contact,dialog_call_id,invite_cseq"/>
"""

_BYE_FROM_CALLEE = """  <send retrans="500">
    <![CDATA[
      BYE [$peer_contact] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From:[$me];tag=[pid]callee[call_number]
      To:[$peer]
      Call-ID:[$dialog_call_id]
      CSeq: 1 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


@dataclass
class Callee:
    """A registered phone that answers calls as its plan says."""

    user: str
    plan: CalleePlan
    fs_sip: tuple[str, int]
    workdir: Path
    run: SippRun | None = None
    port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))

    def start(self, register_too: bool = True) -> Callee:
        folder = self.workdir / f"callee-{self.user}"
        folder.mkdir(parents=True, exist_ok=True)
        scenario = folder / "callee.xml"
        scenario.write_text(self.scenario_xml())
        self.run = start_sipp(scenario, self.fs_sip, folder, port=self.port, timeout=60,
                              extra=["-rsa", f"{self.fs_sip[0]}:{self.fs_sip[1]}"])
        if register_too:
            register(self.user, self.port, self.fs_sip, self.workdir)
        return self

    def scenario_xml(self) -> str:
        return callee_xml(self.user, [self.plan])

    def trace(self) -> list[Traced]:
        assert self.run is not None
        return parse_timed_trace(self.run.messages_log())


# --- the calling phone ---------------------------------------------------------------------------

@dataclass
class CallerPlan:
    """What the calling phone does after its INVITE."""

    expect: int = 200  # the final answer it waits for (200, 486, 480, 404, ...)
    talk_ms: int | None = 1000  # answered: hang up after this long; None: wait for the far BYE
    cancel_after_ms: int | None = None  # send CANCEL this long after the 180 (expect 487)
    hold: bool = False  # answered: re-INVITE sendonly, then sendrecv, before hanging up
    hold_ms: int = 800


def caller_xml(user: str, dest: str, plan: CallerPlan) -> str:
    invite = """  <send retrans="500" start_txn="invite">
    <![CDATA[
      INVITE sip:{dest}@{domain} SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From: <sip:{user}@{domain}>;tag=[pid]caller[call_number]
      To: <sip:{dest}@{domain}>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: sipp busylamp-phone
      {auth}Content-Type: application/sdp
      Content-Length: [len]

      {sdp}
    ]]>
  </send>
"""
    ack = """  <send{ack_txn}>
    <![CDATA[
      ACK {ruri} SIP/2.0
      {via}
      From: <sip:{user}@{domain}>;tag=[pid]caller[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      {auth}Content-Length: 0

    ]]>
  </send>
"""
    in_dialog = """  <send retrans="500">
    <![CDATA[
      {method} [next_url] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From: <sip:{user}@{domain}>;tag=[pid]caller[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      {extra}Content-Length: [len]

{body}    ]]>
  </send>
"""
    cred = f"[authentication username={user} password={PASSWORD}]\n      "
    f = dict(user=user, dest=dest, domain=DOMAIN)
    steps = [invite.format(cseq=1, auth="", to_tag="", sdp=_sdp(), **f),
             '  <recv response="100" optional="true" response_txn="invite"/>\n',
             '  <recv response="407" auth="true" response_txn="invite"/>\n',
             ack.format(ack_txn=' ack_txn="invite"', ruri=f"sip:{dest}@{DOMAIN}",
                        via="[last_Via:]", cseq=1, auth="", **f),
             invite.format(cseq=2, auth=cred, to_tag="", sdp=_sdp(), **f),
             '  <recv response="100" optional="true" response_txn="invite"/>\n']
    if plan.expect == 200:
        steps += ['  <recv response="180" optional="true" response_txn="invite"/>\n',
                  '  <recv response="183" optional="true" response_txn="invite"/>\n',
                  '  <recv response="200" rrs="true" response_txn="invite"/>\n',
                  ack.format(ack_txn="", ruri="[next_url]",
                             via="Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]",
                             cseq=2, auth="", **f)]
        cseq = 3
        if plan.hold:
            for direction in ("sendonly", "sendrecv"):
                steps += [f'  <pause milliseconds="{plan.hold_ms}"/>\n',
                          in_dialog.format(method="INVITE", cseq=cseq,
                                           extra="Content-Type: application/sdp\n      ",
                                           body="      " + _sdp(direction), **f),
                          '  <recv response="100" optional="true"/>\n',
                          '  <recv response="200"/>\n',
                          ack.format(ack_txn="", ruri="[next_url]",
                                     via="Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]",
                                     cseq=cseq, auth="", **f)]
                cseq += 1
        if plan.talk_ms is None:
            steps += ['  <recv request="BYE"/>\n', _OK_TO_REQUEST]
        else:
            steps += [f'  <pause milliseconds="{plan.talk_ms}"/>\n',
                      in_dialog.format(method="BYE", cseq=cseq, extra="", body="", **f),
                      '  <recv response="200"/>\n']
    elif plan.cancel_after_ms is not None:
        # sipp refuses an optional receive right before a pause: the callee does ring
        steps += ['  <recv response="180" response_txn="invite"/>\n',
                  f'  <pause milliseconds="{plan.cancel_after_ms}"/>\n',
                  _CANCEL.format(**f),
                  '  <recv response="200"/>\n',
                  '  <recv response="487" response_txn="invite"/>\n',
                  ack.format(ack_txn=' ack_txn="invite"', ruri=f"sip:{dest}@{DOMAIN}",
                             via="[last_Via:]",  # the 487's: the INVITE's branch
                             cseq=2, auth="", **f)]
    else:
        steps += ['  <recv response="180" optional="true" response_txn="invite"/>\n',
                  '  <recv response="183" optional="true" response_txn="invite"/>\n',
                  f'  <recv response="{plan.expect}" response_txn="invite"/>\n',
                  ack.format(ack_txn=' ack_txn="invite"', ruri=f"sip:{dest}@{DOMAIN}",
                             via="[last_Via:]", cseq=2, auth="", **f)]
    return _HEAD.format(name=f"caller {user} -> {dest}") + "".join(steps) + "</scenario>\n"


_OK_TO_REQUEST = """  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""

_CANCEL = """  <send retrans="500">
    <![CDATA[
      CANCEL sip:{dest}@{domain} SIP/2.0
      [last_Via:]
      From: <sip:{user}@{domain}>;tag=[pid]caller[call_number]
      To: <sip:{dest}@{domain}>
      Call-ID: [call_id]
      CSeq: 2 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


@dataclass
class Caller:
    """A phone that places one call through the switch (authenticating its INVITE)."""

    user: str
    dest: str
    plan: CallerPlan
    fs_sip: tuple[str, int]
    workdir: Path
    run: SippRun | None = None

    def start(self) -> Caller:
        folder = self.workdir / f"caller-{self.user}-{self.dest}"
        folder.mkdir(parents=True, exist_ok=True)
        scenario = folder / "caller.xml"
        scenario.write_text(caller_xml(self.user, self.dest, self.plan))
        self.run = start_sipp(scenario, self.fs_sip, folder, timeout=60)
        return self

    def wait(self, timeout: float = 60) -> None:
        assert self.run is not None
        code = self.run.wait(timeout)
        if code != 0:
            raise AssertionError(f"caller {self.user}->{self.dest} failed ({code}):\n"
                                 f"{self.run.errors()}\n{self.run.messages_log()[-3000:]}")

    def trace(self) -> list[Traced]:
        assert self.run is not None
        return parse_timed_trace(self.run.messages_log())


# --- watchers of busylamp ------------------------------------------------------------------------

def watcher_xml(presentity: str, watcher: str, event: str, accept: str) -> str:
    return _HEAD.format(name=f"watch {presentity}") + f"""  <send retrans="500">
    <![CDATA[
      SUBSCRIBE sip:{presentity} SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From: <sip:{watcher}>;tag=[pid]watch[call_number]
      To: <sip:{presentity}>
      Call-ID: [call_id]
      CSeq: 1 SUBSCRIBE
      Contact: <sip:{watcher.partition("@")[0]}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Event: {event}
      Accept: {accept}
      Expires: 3600
      User-Agent: sipp busylamp-watcher
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <label id="1"/>
  <recv request="NOTIFY"/>
{_OK_TO_REQUEST}  <nop next="1"/>
</scenario>
"""


_ACCEPT = {"dialog": "application/dialog-info+xml",
           "message-summary": "application/simple-message-summary",
           "presence": "application/pidf+xml"}


@dataclass
class LampWatcher:
    """A phone watching one presentity at busylamp until :meth:`stop`."""

    presentity: str  # user@domain
    busylamp_sip: tuple[str, int]
    workdir: Path
    event: str = "dialog"
    watcher: str = f"2000@{DOMAIN}"
    run: SippRun | None = None

    def start(self) -> LampWatcher:
        folder = self.workdir / f"watch-{self.presentity}-{self.event}-{free_port()}"
        folder.mkdir(parents=True, exist_ok=True)
        scenario = folder / "watch.xml"
        scenario.write_text(watcher_xml(self.presentity, self.watcher, self.event,
                                        _ACCEPT[self.event]))
        self.run = start_sipp(scenario, self.busylamp_sip, folder, timeout=3600)
        return self

    def notifies(self) -> list[Traced]:
        assert self.run is not None
        return [m for m in parse_timed_trace(self.run.messages_log())
                if m.received and m.method == "NOTIFY"]

    def stop(self) -> None:
        if self.run is not None:
            self.run.kill()

    # --- reading lamps ---------------------------------------------------------------------------

    def dialogs(self) -> list[list[Dialog]]:
        """The dialogs of each NOTIFY's dialog-info body, in arrival order. A NOTIFY without a
        body carries no state (RFC 6665): the node sends one first to a target that has not
        answered yet when the state would exceed its amplification budget (docs/security.md),
        and the state follows the answer; it shows no lamp, so it is left out here."""
        return [parse_dialog_info(n.body) for n in self.notifies() if n.body.strip()]


# --- traces and bodies ---------------------------------------------------------------------------

@dataclass
class Traced(SipSeen):
    """A message of a sipp trace, with the time sipp logged it."""

    at: float = 0.0  # sipp's wall clock (epoch seconds)


_TIMED = re.compile(
    r"^-{5,} (?P<date>\d{4}-\d\d-\d\d)\s+(?P<time>\d\d:\d\d:\d\d\.\d+)[^\n]*\n"
    r"(?:UDP|TCP) message (?P<verb>received|sent)[^\n]*:\n\n(?P<msg>.*?)(?=^-{5,} |\Z)",
    re.S | re.M)


def parse_timed_trace(text: str) -> list[Traced]:
    """sipp's ``-trace_msg`` log, each message with the time sipp logged it (local time)."""
    seen = []
    for match in _TIMED.finditer(text):
        at = dt.datetime.fromisoformat(f"{match['date']} {match['time']}").timestamp()
        raw = match["msg"].replace("\r\n", "\n").strip("\n")
        head, _, body = raw.partition("\n\n")
        lines = head.split("\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers.setdefault(name.strip().lower(), value.strip())
        seen.append(Traced(match["verb"] == "received", lines[0].strip(), headers, body, at=at))
    return seen


@dataclass
class Dialog:
    id: str
    state: str
    direction: str | None
    remote_target: str | None


_NS = "{urn:ietf:params:xml:ns:dialog-info}"


def parse_dialog_info(body: str) -> list[Dialog]:
    if not body.strip():
        return []
    root = ET.fromstring(body.strip())
    dialogs = []
    for d in root.findall(f"{_NS}dialog"):
        state = d.findtext(f"{_NS}state") or ""
        target = d.find(f"{_NS}remote/{_NS}target")
        dialogs.append(Dialog(d.get("id", ""), state.strip(), d.get("direction"),
                              target.get("uri") if target is not None else None))
    return dialogs


def lamp(dialogs: list[Dialog]) -> str:
    """What a BLF key shows for one dialog-info body: idle, early (blinking) or confirmed (lit)."""
    states = {d.state for d in dialogs}
    if "confirmed" in states:
        return "confirmed"
    if states & {"early", "trying", "proceeding"}:
        return "early"
    return "idle"


# --- a registered phone that takes unsolicited NOTIFYs (MWI from the switch) ---------------------

def notify_sink_xml(user: str) -> str:
    """A server scenario: every out-of-dialog NOTIFY (one sipp call each) is answered 200."""
    return (_HEAD.format(name=f"notify sink {user}") + '  <recv request="NOTIFY" crlf="true"/>\n'
            + _OK_TO_REQUEST + "</scenario>\n")


@dataclass
class NotifySink:
    """A phone registered at the switch that answers and records every NOTIFY sent to it."""

    user: str
    fs_sip: tuple[str, int]
    workdir: Path
    run: SippRun | None = None
    port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))

    def start(self) -> NotifySink:
        folder = self.workdir / f"sink-{self.user}-{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        scenario = folder / "sink.xml"
        scenario.write_text(notify_sink_xml(self.user))
        self.run = start_sipp(scenario, self.fs_sip, folder, port=self.port, calls=1000,
                              timeout=3600, extra=["-rsa", f"{self.fs_sip[0]}:{self.fs_sip[1]}"])
        register(self.user, self.port, self.fs_sip, self.workdir)
        return self

    def notifies(self, event: str | None = None) -> list[Traced]:
        assert self.run is not None
        return [m for m in parse_timed_trace(self.run.messages_log())
                if m.received and m.method == "NOTIFY"
                and (event is None or (m.header("Event") or "").lower() == event)]

    def stop(self) -> None:
        if self.run is not None:
            self.run.kill()


def message_summary(body: str) -> dict[str, str]:
    """An ``application/simple-message-summary`` body as ``{lower-case name: value}``."""
    fields: dict[str, str] = {}
    for line in body.replace("\r\n", "\n").split("\n"):
        name, sep, value = line.partition(":")
        if sep and name.strip():
            fields[name.strip().lower()] = value.strip()
    return fields


class SteadyWatcher(LampWatcher):
    """A :class:`LampWatcher` that survives a loaded machine: a NOTIFY retransmitted while sipp is
    still answering the first copy is answered 200 (``-aa``) instead of aborting the watcher,
    and a retransmission sipp does take in its loop is counted once (by CSeq)."""

    def start(self) -> SteadyWatcher:
        folder = self.workdir / f"watch-{self.presentity}-{self.event}-{free_port()}"
        folder.mkdir(parents=True, exist_ok=True)
        scenario = folder / "watch.xml"
        scenario.write_text(watcher_xml(self.presentity, self.watcher, self.event,
                                        _ACCEPT[self.event]))
        self.run = start_sipp(scenario, self.busylamp_sip, folder, timeout=3600, extra=["-aa"])
        return self

    def notifies(self) -> list[Traced]:
        seen: set[str | None] = set()
        unique = []
        for notify in super().notifies():
            if notify.header("CSeq") not in seen:
                seen.add(notify.header("CSeq"))
                unique.append(notify)
        return unique

# --- appended: phones that transfer, timing helpers ----------------------------------------------

# the same 200, with a Contact (a dialog-creating or target-refreshing answer); {user} formatted
_OK_IN_DIALOG = _OK_TO_REQUEST.replace(
    "      Content-Length: 0", "      Contact: <sip:{user}@[local_ip]:[local_port]>\n      Content-Length: 0")


def transferring_callee_xml(user: str, ring_ms: int, talk_ms: int, refer_to: str) -> str:
    """Answer, talk ``talk_ms``, then blind-transfer the caller with REFER to ``refer_to``; answer
    the switch's NOTIFYs (sipfrag) and its BYE in whatever order they come."""
    contact = f"<sip:{user}@[local_ip]:[local_port]>"
    tag = "[pid]callee[call_number]"
    answer = f"""  <send>
    <![CDATA[
      SIP/2.0 {{status}}
      [last_Via:]
      [last_From:]
      [last_To:];tag={tag}
      [last_Call-ID:]
      [last_CSeq:]
      Contact: {contact}
      {{body_headers}}Content-Length: [len]

{{body}}    ]]>
  </send>
"""
    refer = f"""  <send retrans="500">
    <![CDATA[
      REFER [$peer_contact] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From:[$me];tag={tag}
      To:[$peer]
      Call-ID:[$dialog_call_id]
      CSeq: 1 REFER
      Contact: {contact}
      Refer-To: <sip:{refer_to}@{DOMAIN}>
      Referred-By: <sip:{user}@{DOMAIN}>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""
    steps = [
        _INVITE_RECV,
        answer.format(status="180 Ringing", body_headers="", body=""),
        f'  <pause milliseconds="{ring_ms}"/>\n',
        answer.format(status="200 OK", body_headers="Content-Type: application/sdp\n      ",
                      body="      " + _sdp()),
        '  <recv request="ACK"/>\n',
        f'  <pause milliseconds="{talk_ms}"/>\n',
        refer,
        '  <recv response="202"/>\n',
        '  <label id="10"/>\n',
        '  <recv request="NOTIFY" optional="true" next="11"/>\n',
        '  <recv request="BYE" next="12"/>\n',
        '  <label id="11"/>\n',
        _OK_IN_DIALOG.format(user=user),
        '  <nop next="10"/>\n',
        '  <label id="12"/>\n',
        _OK_IN_DIALOG.format(user=user),
    ]
    return _HEAD.format(name=f"transferring callee {user}") + "".join(steps) + "</scenario>\n"


@dataclass
class TransferringCallee(Callee):
    """A registered phone that answers, then blind-transfers the caller (REFER)."""

    refer_to: str = ""
    talk_ms: int = 800

    def scenario_xml(self) -> str:
        return transferring_callee_xml(self.user, self.plan.ring_ms, self.talk_ms, self.refer_to)


def first(messages: list[Traced], *, sent: bool | None = None, method: str | None = None,
          status: int | None = None, cseq_method: str | None = None) -> Traced:
    """The first traced message that matches (AssertionError naming the wish when none does)."""
    for m in messages:
        if sent is not None and m.received == sent:
            continue
        if method is not None and m.method != method:
            continue
        if status is not None and m.status != status:
            continue
        if cseq_method is not None and not (m.header("CSeq") or "").endswith(cseq_method):
            continue
        return m
    raise AssertionError(f"no message sent={sent} method={method} status={status} "
                         f"cseq={cseq_method} in the trace")
