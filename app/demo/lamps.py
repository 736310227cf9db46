"""What a lamp shows, read from the NOTIFY bodies a watcher received (dialog-info, message
summary, PIDF): the demo's view of a BLF key, an MWI lamp or a presence lamp."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace

LampKey = tuple[str, str]  # (event package, presentity AOR)

DIALOG_NS = "{urn:ietf:params:xml:ns:dialog-info}"
_RINGING = frozenset({"early"})
SETUP_STATES = frozenset({"trying", "proceeding"})


@dataclass(frozen=True, slots=True)
class LampState:
    """One lamp as the NOTIFYs described it (``state`` is ``unknown`` before the first one).

    dialog: ``idle``/``ringing``/``busy``/``held``; message-summary: ``yes``/``no``;
    presence: the PIDF basic status (``open``/``closed``)."""

    event: str
    presentity: str
    state: str = "unknown"
    dialogs: int = 0
    waiting: bool | None = None
    new_messages: int = 0
    old_messages: int = 0
    note: str = ""
    notify_count: int = 0
    ignored: int = 0
    version: int | None = None
    subscription_state: str = ""


def dialog_lamp(dialogs) -> str:
    states = list(dialogs)
    if any(state in _RINGING for state, _ in states):
        return "ringing"
    if any(not held for _, held in states):
        return "busy"
    return "held" if states else "idle"


def dialog_held(element: ET.Element) -> bool:
    """A local target with ``+sip.rendering=no`` (RFC 4235 4.1.6.2) means the call is on hold."""
    local = element.find(DIALOG_NS + "local")
    if local is None:
        return False
    for param in local.iter(DIALOG_NS + "param"):
        if param.get("pname") == "+sip.rendering" and param.get("pvalue") == "no":
            return True
    return False


def apply_summary(lamp: LampState, body: bytes) -> LampState:
    fields: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    waiting_text = fields.get("messages-waiting", "").lower()
    if waiting_text not in ("yes", "no"):
        raise ValueError("no Messages-Waiting")
    new = old = 0
    voice = fields.get("voice-message", "")
    if voice:
        counts = voice.split("(", 1)[0].strip().split("/")
        if len(counts) == 2 and all(c.strip().isdigit() for c in counts):
            new, old = int(counts[0]), int(counts[1])
    return replace(lamp, state=waiting_text, waiting=waiting_text == "yes",
                   new_messages=new, old_messages=old)


def apply_pidf(lamp: LampState, body: bytes) -> LampState:
    root = ET.fromstring(body)
    basic = note = ""
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "basic" and not basic:
            basic = (element.text or "").strip().lower()
        elif tag == "note" and not note:
            note = (element.text or "").strip()
    if basic not in ("open", "closed"):
        raise ValueError("no PIDF basic status")
    return replace(lamp, state=basic, note=note)
