"""The demo's SIP watcher UA: sans-IO core with an injected clock, against sipp as the notifier,
and against the real presence engine over UDP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from busylamp.app.demo.lamps import LampState
from busylamp.app.demo.useragent import WatcherUA
from busylamp.app.demo.watcher import WatcherCore
from busylamp.presence.sip import (
    Request,
    Response,
    build_request,
    build_response,
    parse_message,
)
from tests.node_util import publish, running_node, sip_address
from tests.polling import wait_until
from tests.sipp_util import SIPP, SippRun, SipSeen, free_port, parse_trace

LOCAL = ("127.0.0.1", 5999)
SERVER = ("127.0.0.1", 5070)
DIALOG_NS = "urn:ietf:params:xml:ns:dialog-info"


def dialog_info(version: int, *dialogs: tuple[str, str], held: bool = False) -> bytes:
    local = ('<local><target uri="sip:x@d"><param pname="+sip.rendering" pvalue="no"/>'
             "</target></local>") if held else ""
    inner = "".join(f'<dialog id="{i}" direction="recipient"><state>{s}</state>{local}</dialog>'
                    for i, s in dialogs)
    return (f'<?xml version="1.0"?><dialog-info xmlns="{DIALOG_NS}" version="{version}" '
            f'state="full" entity="sip:1002@d">{inner}</dialog-info>').encode()


class Rig:
    """A WatcherCore on a fake clock with helpers playing the notifier."""

    def __init__(self, **kwargs) -> None:
        self.now = 0.0
        self.changes: list[tuple[tuple[str, str], LampState]] = []
        self.core = WatcherCore(LOCAL, SERVER, "w", "d", on_change=lambda k, s: self.changes.append((k, s)),
                                **kwargs)
        self.notify_cseq = 0

    def sent(self) -> list[Request | Response]:
        return [parse_message(data) for _dest, data in self.core.datagrams_to_send()]

    def tick(self, now: float) -> list[Request | Response]:
        self.now = now
        self.core.handle_timer(now)
        return self.sent()

    def answer(self, req: Request, status: int, headers=(), to_tag: str | None = "srv") -> None:
        data = build_response(req, status, to_tag=to_tag, headers=list(headers))
        self.core.receive(data, SERVER, self.now)

    def notify(self, sub: Request, state: str, body: bytes = b"", event: str = "dialog",
               cseq: int | None = None, branch: str | None = None) -> bytes:
        self.notify_cseq += 1
        headers = [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch or f'z9hG4bKn{self.notify_cseq}'}"),
            ("From", f"<{sub.to.uri}>;tag=srv"), ("To", sub.headers.get("From")),
            ("Call-ID", sub.call_id), ("CSeq", f"{cseq or self.notify_cseq} NOTIFY"),
            ("Contact", "<sip:engine@127.0.0.1:5070>"), ("Event", event),
            ("Subscription-State", state), ("Content-Type", "application/dialog-info+xml"),
        ]
        data = build_request("NOTIFY", "sip:w@127.0.0.1:5999", headers, body)
        self.core.receive(data, SERVER, self.now)
        return data

    def subscribed(self, presentity: str = "1002", event: str = "dialog") -> tuple[tuple, Request]:
        key = self.core.subscribe(presentity, event, 600, self.now)
        [req] = self.sent()
        self.answer(req, 200, [("Expires", "600"), ("Contact", "<sip:engine@127.0.0.1:5070>")])
        assert self.core.phase(key) == "active"
        return key, req


def test_subscribe_retransmits_per_timer_e_then_times_out_and_retries():
    rig = Rig(retry_interval=5.0)
    key = rig.core.subscribe("1002", "dialog", 600, 0.0)
    assert key == ("dialog", "1002@d")
    [first] = rig.sent()
    assert first.method == "SUBSCRIBE" and first.uri == "sip:1002@d"
    assert first.headers.get("Expires") == "600" and first.to.tag is None
    times = []
    now = 0.0
    while rig.core.get_timer() is not None and now < 31.0:
        now = rig.core.get_timer()
        again = rig.tick(now)
        if again:
            assert [m.vias[0].branch for m in again] == [first.vias[0].branch]
            times.append(now)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # T1 doubling, capped at T2
    assert rig.tick(32.0) == [] and rig.core.phase(key) == "waiting"  # Timer F = 64*T1
    assert rig.core.lamps[key].subscription_state == "timeout"
    [retry] = rig.tick(37.0)
    assert retry.call_id != first.call_id and retry.from_.tag != first.from_.tag


def test_responses_match_by_branch_and_refresh_goes_in_dialog():
    rig = Rig()
    key = rig.core.subscribe("1002", "dialog", 600, 0.0)
    [req] = rig.sent()
    stray = build_response(req, 200, to_tag="x").replace(
        req.vias[0].branch.encode(), b"z9hG4bKother")
    rig.core.receive(stray, SERVER, 0.0)
    assert rig.core.phase(key) == "subscribing"
    rig.answer(req, 200, [("Expires", "120"), ("Contact", "<sip:engine@127.0.0.1:5070>")])
    assert rig.core.phase(key) == "active"
    assert rig.core.get_timer() == 90.0  # 30 s before expiry
    [refresh] = rig.tick(90.0)
    assert refresh.uri == "sip:engine@127.0.0.1:5070"
    assert refresh.to.tag == "srv" and refresh.call_id == req.call_id
    assert refresh.cseq == (2, "SUBSCRIBE") and refresh.vias[0].branch != req.vias[0].branch


def test_423_retries_with_min_expires_and_481_starts_a_new_dialog():
    rig = Rig()
    key = rig.core.subscribe("1002", "dialog", 30, 0.0)
    [req] = rig.sent()
    rig.answer(req, 423, [("Min-Expires", "60")], to_tag="t423")
    [retry] = rig.sent()
    assert retry.headers.get("Expires") == "60" and retry.cseq[0] == 2
    assert retry.call_id == req.call_id and retry.to.tag is None
    rig.answer(retry, 200, [("Expires", "60"), ("Contact", "<sip:engine@127.0.0.1:5070>")])
    rig.core.refresh(key, 1.0)
    [refresh] = rig.sent()
    rig.answer(refresh, 481, to_tag=None)
    [fresh] = rig.sent()
    assert fresh.call_id != req.call_id and fresh.to.tag is None and fresh.cseq[0] == 1
    assert rig.core.phase(key) == "subscribing"


def test_notify_answered_versions_and_retransmissions():
    rig = Rig()
    key, sub = rig.subscribed()
    data = rig.notify(sub, "active;expires=600", dialog_info(1, ("a", "early")))
    [ok] = rig.sent()
    assert isinstance(ok, Response) and ok.status == 200
    sent_notify = parse_message(data)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert ok.headers.get(name) == sent_notify.headers.get(name), name
    rig.core.receive(data, SERVER, 0.1)  # retransmission: same answer, applied once
    assert [m.status for m in rig.sent()] == [200]
    assert rig.core.lamps[key].notify_count == 1 and rig.core.lamps[key].state == "ringing"
    rig.notify(sub, "active;expires=600", dialog_info(2, ("a", "confirmed")))
    rig.notify(sub, "active;expires=600", dialog_info(3, ("a", "confirmed"), held=True))
    rig.notify(sub, "active;expires=600", dialog_info(1, ("a", "early")))  # stale version
    lamp = rig.core.lamps[key]
    assert (lamp.state, lamp.version, lamp.notify_count, lamp.ignored) == ("held", 3, 4, 1)
    assert [s.state for _, s in rig.changes] == ["ringing", "busy", "held", "held"]
    rig.notify(sub, "active;expires=600", dialog_info(4))
    assert rig.core.lamps[key].state == "idle"
    assert all(m.status == 200 for m in rig.sent())
    rig.notify(sub, "active", b"", cseq=1)  # CSeq not above the last one
    assert [m.status for m in rig.sent()] == [500]


def test_terminated_notify_resubscribes_unless_final():
    rig = Rig()
    key, sub = rig.subscribed()
    rig.notify(sub, "terminated;reason=deactivated", dialog_info(0))
    assert rig.core.phase(key) == "waiting" and rig.sent()[0].status == 200
    [fresh] = rig.tick(0.0)
    assert fresh.method == "SUBSCRIBE" and fresh.call_id != sub.call_id
    rig.answer(fresh, 200, [("Expires", "600")])
    rig.notify(fresh, "terminated;reason=noresource", dialog_info(1))
    assert rig.core.phase(key) == "ended" and rig.core.get_timer() is not None  # Timer J only
    assert [m.method for m in rig.tick(100.0) if isinstance(m, Request)] == []


def test_message_summary_and_presence_bodies():
    rig = Rig()
    key, sub = rig.subscribed("1004", "message-summary")
    body = b"Messages-Waiting: yes\r\nMessage-Account: sip:1004@d\r\nVoice-Message: 2/1 (0/0)\r\n"
    rig.notify(sub, "active", body, event="message-summary")
    assert [m.status for m in rig.sent()] == [200]
    lamp = rig.core.lamps[key]
    assert (lamp.state, lamp.waiting, lamp.new_messages, lamp.old_messages) == ("yes", True, 2, 1)
    key, sub = rig.subscribed("1001", "presence")
    pidf = (b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:1001@d">'
            b"<tuple id=\"t\"><status><basic>closed</basic></status><note>Offline</note></tuple>"
            b"</presence>")
    rig.notify(sub, "active", pidf, event="presence")
    assert (rig.core.lamps[key].state, rig.core.lamps[key].note) == ("closed", "Offline")


def test_unsubscribe_waits_for_the_terminated_notify():
    rig = Rig()
    key, sub = rig.subscribed()
    rig.core.unsubscribe(key, 1.0)
    [unsub] = rig.sent()
    assert unsub.headers.get("Expires") == "0" and unsub.to.tag == "srv"
    rig.answer(unsub, 200, [("Expires", "0")])
    assert rig.core.busy()
    rig.notify(sub, "terminated;reason=timeout", dialog_info(5))
    assert not rig.core.busy() and rig.core.phase(key) == "ended"


# -- against sipp playing the notifier -----------------------------------------------------------

NOTIFIER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="busylamp notifier">
  <recv request="SUBSCRIBE"/>
  <pause milliseconds="350"/>
  <send>
    <![CDATA[
      SIP/2.0 423 Interval Too Brief
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag423
      [last_Call-ID:]
      [last_CSeq:]
      Min-Expires: 120
      Content-Length: 0

    ]]>
  </send>
  <recv request="SUBSCRIBE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="wfrom"/>
      <ereg regexp="sip:[^&gt;]*" search_in="hdr" header="Contact:" check_it="true" assign_to="wcontact"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:notifier@[local_ip]:[local_port]>
      Expires: 120
      Content-Length: 0

    ]]>
  </send>
@NOTIFIES@
</scenario>
"""

NOTIFY = """  <send>
    <![CDATA[
      NOTIFY [$wcontact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:1002@example.com>;tag=[pid]SIPpTag01[call_number]
      To:[$wfrom]
      Call-ID: [call_id]
      CSeq: {cseq} NOTIFY
      Contact: <sip:notifier@[local_ip]:[local_port]>
      Event: dialog
      Subscription-State: {state}
      Content-Type: application/dialog-info+xml
      Content-Length: [len]

      <?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" state="full" entity="sip:1002@example.com">{dialogs}</dialog-info>
    ]]>
  </send>
  <recv response="200"/>
"""


def _notifies() -> str:
    plan = [("active;expires=120", 1, "early"), ("active;expires=110", 2, "confirmed"),
            ("active;expires=100", 3, "terminated"), ("active;expires=90", 1, "confirmed"),
            ("terminated;reason=noresource", 4, None)]
    out = []
    for cseq, (state, version, dialog) in enumerate(plan, start=1):
        dialogs = (f'<dialog id="d1" direction="recipient"><state>{dialog}</state></dialog>'
                   if dialog else "")
        out.append(NOTIFY.format(cseq=cseq, state=state, version=version, dialogs=dialogs))
    return "".join(out)


def start_sipp_server(workdir: Path, port: int) -> SippRun:
    """sipp as a UAS (no remote target): the notifier side."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / "notifier.xml"
    scenario.write_text(NOTIFIER.replace("@NOTIFIES@", _notifies()))
    args = [SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
            "-m", "1", "-timeout", "15s", "-timeout_error", "-trace_msg", "-trace_err",
            "-nostdin"]
    stderr = open(workdir / "stderr.txt", "wb")  # noqa: SIM115 - closed when the process ends
    proc = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    return SippRun(proc, workdir, str(scenario), port, args)


@pytest.mark.sipp
def test_against_sipp_notifier(tmp_path):
    port = free_port()
    sipp = start_sipp_server(tmp_path / "sipp", port)
    states: list[str] = []
    ua = WatcherUA(server=("127.0.0.1", port), domain="example.com", t1=0.1,
                   on_change=lambda key, lamp: states.append(lamp.state))
    ua.start()
    try:
        key = ua.subscribe("1002", "dialog", expires=60)
        assert sipp.wait(15) == 0, sipp.errors()
        lamp = ua.lamps[key]
    finally:
        ua.stop(timeout=0.2)
        sipp.kill()
    subscribes = sipp.received("SUBSCRIBE")
    first, retry = subscribes[0], subscribes[-1]
    # sipp waited 350 ms before its 423: the UA (T1 100 ms) retransmitted the same request.
    assert len(subscribes) >= 3
    assert {s.header("via") for s in subscribes[:-1]} == {first.header("via")}
    assert [first.header("expires"), retry.header("expires")] == ["60", "120"]  # Min-Expires
    assert first.header("call-id") == retry.header("call-id")
    assert [first.header("cseq"), retry.header("cseq")] == ["1 SUBSCRIBE", "2 SUBSCRIBE"]
    assert first.header("via") != retry.header("via")  # a new transaction
    notifies = [m for m in sipp.sent() if m.method == "NOTIFY"]
    answers = [m for m in parse_sipp_responses(sipp) if m.header("cseq").endswith("NOTIFY")]
    assert len(notifies) == 5 and [a.status for a in answers] == [200] * 5
    for notify, answer in zip(notifies, answers, strict=True):
        for name in ("via", "from", "to", "call-id", "cseq"):
            assert answer.header(name) == notify.header(name), name
    assert states == ["ringing", "busy", "idle", "idle", "idle"]  # stale v1 changed nothing
    assert (lamp.state, lamp.version, lamp.notify_count, lamp.ignored) == ("idle", 4, 5, 1)
    assert lamp.subscription_state == "terminated;reason=noresource"
    assert ua.core.phase(key) == "ended"  # noresource: no re-subscription


def parse_sipp_responses(sipp: SippRun) -> list[SipSeen]:
    """The responses sipp received, in order."""
    return [m for m in parse_trace(sipp.messages_log()) if m.received and m.status is not None]


# -- against the real presence engine --------------------------------------------------------------


def test_against_the_engine_423_notify_resubscribe_481_and_unsubscribe():
    with running_node(transports=("udp",), min_expires=60) as node:
        ua = WatcherUA(server=sip_address(node), domain="example.com")
        ua.start()
        try:
            key = ua.subscribe("1002@example.com", "dialog", expires=30)
            wait_until(lambda: ua.lamps[key].notify_count >= 1, 5, message="no first NOTIFY")
            [sub] = node.engine.subscriptions.watchers("dialog", "1002@example.com")
            assert sub.expires_at - node.clock() > 50  # granted Min-Expires 60, not 30
            publish(node, {"Event-Name": "update", "Event-Package": "dialog",
                           "From": "sip:1002@example.com", "From-User": "1002",
                           "From-Realm": "example.com", "To": "sip:1001@example.com",
                           "Call-ID": "c1", "State": "early", "Direction": "recipient"})
            wait_until(lambda: ua.lamps[key].state == "ringing", 5, message="no ringing")
            first_call_id = sub.call_id
            node.engine.terminate_all("deactivated", node.clock())
            node._flush()
            wait_until(lambda: [s.call_id for s in node.engine.subscriptions.watchers(
                "dialog", "1002@example.com")] not in ([], [first_call_id]), 5,
                message="no re-subscription after terminated;reason=deactivated")
            [second] = node.engine.subscriptions.watchers("dialog", "1002@example.com")
            node.engine.subscriptions.remove(second)  # the engine forgets it: refresh gets 481
            ua.refresh(key)
            wait_until(lambda: [s.call_id for s in node.engine.subscriptions.watchers(
                "dialog", "1002@example.com")] not in ([], [second.call_id]), 5,
                message="no new dialog after 481")
            wait_until(lambda: ua.lamps[key].state == "ringing" and ua.core.phase(key) == "active", 5)
        finally:
            ua.stop()
        assert len(node.engine.subscriptions) == 0  # unsubscribed on stop
        assert ua.lamps[key].subscription_state.startswith("terminated")
