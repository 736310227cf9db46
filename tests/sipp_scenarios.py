"""Build sipp scenario files for a watching phone, step by step.

A test describes what the phone does (subscribe, answer NOTIFYs, refresh, unsubscribe, ignore a
NOTIFY, answer 481) and gets a sipp XML scenario; sipp then is the real phone on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">
"""

_SUBSCRIBE = """  <send retrans="500">
    <![CDATA[
      SUBSCRIBE {ruri} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:{watcher}@{watcher_domain}>;tag=[pid]SIPpTag[call_number]
      To: <sip:{presentity}>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq} SUBSCRIBE
      Contact: <sip:{watcher}@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Event: {event}
{accept}      Expires: {expires}
      User-Agent: sipp busylamp-test
      Content-Length: 0

    ]]>
  </send>
"""

_RECV_RESPONSE = """  <recv response="{status}" timeout="{timeout}">
@CAPTURE@  </recv>
"""

# Remember the dialog (our To-tag and the notifier's Contact) for in-dialog SUBSCRIBEs.
_CAPTURE = """    <action>
      <ereg regexp="tag=[^;&gt;]*" search_in="hdr" header="To:" check_it="false" assign_to="srvtag"/>
      <ereg regexp="sips?:[^&gt;]*" search_in="hdr" header="Contact:" check_it="false" assign_to="srvcontact"/>
    </action>
"""

_RECV_NOTIFY = """  <recv request="NOTIFY" timeout="{timeout}"/>
"""

_ANSWER = """  <send>
    <![CDATA[
      SIP/2.0 {status} {reason}
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:{watcher}@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
"""

_PAUSE = """  <pause milliseconds="{ms}"/>
"""


@dataclass
class Watcher:
    """A phone watching ``presentity`` (user@domain) with one SUBSCRIBE dialog."""

    presentity: str
    watcher: str = "2000"
    watcher_domain: str | None = None
    event: str = "dialog"
    accept: str | None = "application/dialog-info+xml"
    timeout_ms: int = 10000
    steps: list[str] = field(default_factory=list)
    _cseq: int = 0
    _in_dialog: bool = False

    def __post_init__(self) -> None:
        if self.watcher_domain is None:
            self.watcher_domain = self.presentity.rpartition("@")[2]

    def _subscribe(self, expires: int, in_dialog: bool, status: int | str) -> Watcher:
        self._cseq += 1
        accept = f"      Accept: {self.accept}\n" if self.accept else ""
        self.steps.append(
            _SUBSCRIBE.format(
                ruri="[$srvcontact]" if in_dialog else f"sip:{self.presentity}",
                watcher=self.watcher,
                watcher_domain=self.watcher_domain,
                presentity=self.presentity,
                to_tag=";[$srvtag]" if in_dialog else "",
                cseq=self._cseq,
                event=self.event,
                accept=accept,
                expires=expires,
            )
        )
        self.steps.append(
            _RECV_RESPONSE.format(status=status, timeout=self.timeout_ms)
        )
        if in_dialog:
            self._in_dialog = True
        return self

    def subscribe(self, expires: int = 3600, status: int = 200) -> Watcher:
        """Initial SUBSCRIBE; expects ``status``."""
        return self._subscribe(expires, False, status)

    def refresh(self, expires: int = 3600, status: int = 200) -> Watcher:
        """In-dialog SUBSCRIBE (refresh, or unsubscribe with 0)."""
        return self._subscribe(expires, True, status)

    def unsubscribe(self) -> Watcher:
        return self._subscribe(0, True, 200)

    def notify(self, answer: int | None = 200, count: int = 1) -> Watcher:
        """Receive ``count`` NOTIFYs, answering each with ``answer`` (None: never answer)."""
        reasons = {200: "OK", 481: "Call/Transaction Does Not Exist", 404: "Not Found",
                   500: "Server Internal Error"}
        for _ in range(count):
            self.steps.append(_RECV_NOTIFY.format(timeout=self.timeout_ms))
            if answer is not None:
                self.steps.append(
                    _ANSWER.format(status=answer, reason=reasons.get(answer, "Whatever"),
                                   watcher=self.watcher)
                )
        return self

    def reply(self, status: int = 200) -> Watcher:
        """Answer the last request received (after ``notify(answer=None)`` and a pause)."""
        self.steps.append(_ANSWER.format(status=status, reason="OK" if status == 200 else
                                         "Whatever", watcher=self.watcher))
        return self

    def pause(self, ms: int) -> Watcher:
        self.steps.append(_PAUSE.format(ms=ms))
        return self

    def xml(self, name: str = "busylamp watcher") -> str:
        steps = "".join(self.steps)
        # capture on the first response only, and only when an in-dialog request uses it
        # (sipp rejects variables that are set but never used)
        steps = steps.replace("@CAPTURE@", _CAPTURE if self._in_dialog else "", 1)
        steps = steps.replace("@CAPTURE@", "")
        return _HEAD.format(name=name) + steps + "</scenario>\n"

    def write(self, path: Path) -> Path:
        path.write_text(self.xml(path.stem))
        return path
