"""Header sets FreeSWITCH puts on CHANNEL_CALLSTATE, CHANNEL_PROGRESS, PRESENCE_IN and
MESSAGE_WAITING events.

Pure functions (no sockets, no clock): the simulator and the synthesized fixtures both build their
events here.  Field order and names follow current FreeSWITCH:
``switch_event_prep_for_delivery_detailed`` (src/switch_event.c),
``switch_channel_perform_set_callstate`` / ``switch_channel_event_set_basic_data`` /
``switch_channel_perform_presence`` (src/switch_channel.c),
``switch_caller_profile_event_set_data`` (src/switch_caller.c) and ``update_mwi`` /
``actual_message_query_handler`` (src/mod/applications/mod_voicemail/mod_voicemail.c).
No ``variable_*`` headers: CHANNEL_CALLSTATE and PRESENCE_IN are not "extended" events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CALLSTATE_NUMBERS = {
    "DOWN": 0, "DIALING": 1, "RINGING": 2, "EARLY": 3, "ACTIVE": 4,
    "HELD": 5, "RING_WAIT": 6, "HANGUP": 7, "UNHELD": 8,
}
CHANNEL_STATE_NUMBERS = {
    "CS_NEW": 0, "CS_INIT": 1, "CS_ROUTING": 2, "CS_SOFT_EXECUTE": 3, "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5, "CS_PARK": 6, "CS_CONSUME_MEDIA": 7, "CS_HIBERNATE": 8,
    "CS_RESET": 9, "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12,
}


@dataclass(slots=True)
class SwitchInfo:
    """The identity every event carries (switch_event_prep_for_delivery)."""

    core_uuid: str
    hostname: str = "fs1"
    ipv4: str = "127.0.0.1"
    ipv6: str = "::1"


@dataclass(slots=True)
class Leg:
    """One channel as FreeSWITCH tracks it (enough for events and `show channels`)."""

    uuid: str
    direction: str                 # inbound | outbound
    user: str                      # the SIP user of the endpoint this leg talks to
    domain: str
    ip_addr: str
    cid_name: str
    cid_num: str
    dest: str
    created_us: int
    presence_id: str | None = None
    call_uuid: str | None = None
    callee_name: str = ""
    callee_num: str = ""
    context: str = "default"
    application: str = ""
    application_data: str = ""
    state: str = "CS_NEW"
    callstate: str = "DOWN"
    answered: bool = False
    early_media: bool = False
    hangup_cause: str | None = None
    answered_us: int = 0
    progress_us: int = 0
    progress_media_us: int = 0
    hangup_us: int = 0
    bridged_us: int = 0
    last_hold_us: int = 0
    hold_accum_us: int = 0
    other: Leg | None = field(default=None, repr=False)
    other_type: str | None = None  # originator | originatee
    event_count: int = 0

    @property
    def channel_name(self) -> str:
        return f"sofia/internal/{self.user}@{self.ip_addr}:5060"

    @property
    def answer_state(self) -> str:
        if self.state in ("CS_HANGUP", "CS_REPORTING", "CS_DESTROY"):
            return "hangup"
        if self.answered:
            return "answered"
        return "early" if self.early_media else "ringing"


def event_base(
    name: str, switch: SwitchInfo, sequence: int, timestamp_us: int,
    calling_file: str, calling_function: str, calling_line: int,
) -> dict[str, str]:
    """The first 13 headers of every event."""
    seconds = timestamp_us / 1_000_000
    return {
        "Event-Name": name,
        "Core-UUID": switch.core_uuid,
        "FreeSWITCH-Hostname": switch.hostname,
        "FreeSWITCH-Switchname": switch.hostname,
        "FreeSWITCH-IPv4": switch.ipv4,
        "FreeSWITCH-IPv6": switch.ipv6,
        "Event-Date-Local": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)),
        "Event-Date-GMT": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(seconds)),
        "Event-Date-Timestamp": str(timestamp_us),
        "Event-Calling-File": calling_file,
        "Event-Calling-Function": calling_function,
        "Event-Calling-Line-Number": str(calling_line),
        "Event-Sequence": str(sequence),
    }


def _profile(leg: Leg, prefix: str) -> dict[str, str]:
    """switch_caller_profile_event_set_data for one leg."""
    h = {
        f"{prefix}-Direction": leg.direction,
        f"{prefix}-Logical-Direction": leg.direction,
        f"{prefix}-Username": leg.cid_num if leg.direction == "outbound" else leg.user,
        f"{prefix}-Dialplan": "XML",
        f"{prefix}-Caller-ID-Name": leg.cid_name,
        f"{prefix}-Caller-ID-Number": leg.cid_num,
        f"{prefix}-Orig-Caller-ID-Name": leg.cid_name,
        f"{prefix}-Orig-Caller-ID-Number": leg.cid_num,
    }
    if leg.callee_name:
        h[f"{prefix}-Callee-ID-Name"] = leg.callee_name
    if leg.callee_num:
        h[f"{prefix}-Callee-ID-Number"] = leg.callee_num
    h.update({
        f"{prefix}-Network-Addr": leg.ip_addr,
        f"{prefix}-ANI": leg.cid_num,
        f"{prefix}-Destination-Number": leg.dest,
        f"{prefix}-Unique-ID": leg.uuid,
        f"{prefix}-Source": "mod_sofia" if leg.direction == "inbound" else "src/switch_ivr_originate.c",
        f"{prefix}-Context": leg.context,
        f"{prefix}-Channel-Name": leg.channel_name,
        f"{prefix}-Profile-Index": "1",
        f"{prefix}-Profile-Created-Time": str(leg.created_us),
        f"{prefix}-Channel-Created-Time": str(leg.created_us),
        f"{prefix}-Channel-Answered-Time": str(leg.answered_us),
        f"{prefix}-Channel-Progress-Time": str(leg.progress_us),
        f"{prefix}-Channel-Progress-Media-Time": str(leg.progress_media_us),
        f"{prefix}-Channel-Hangup-Time": str(leg.hangup_us),
        f"{prefix}-Channel-Transfer-Time": "0",
        f"{prefix}-Channel-Resurrect-Time": "0",
        f"{prefix}-Channel-Bridged-Time": str(leg.bridged_us),
        f"{prefix}-Channel-Last-Hold": str(leg.last_hold_us),
        f"{prefix}-Channel-Hold-Accum": str(leg.hold_accum_us),
        f"{prefix}-Screen-Bit": "true",
        f"{prefix}-Privacy-Hide-Name": "false",
        f"{prefix}-Privacy-Hide-Number": "false",
    })
    return h


def channel_data(leg: Leg) -> dict[str, str]:
    """switch_channel_event_set_basic_data: channel state, presence, codecs, caller profiles."""
    h = {
        "Channel-State": leg.state,
        "Channel-Call-State": leg.callstate,
        "Channel-State-Number": str(CHANNEL_STATE_NUMBERS[leg.state]),
        "Channel-Name": leg.channel_name,
        "Unique-ID": leg.uuid,
        "Call-Direction": leg.direction,
        "Presence-Call-Direction": leg.direction,
        "Channel-HIT-Dialplan": "true" if leg.direction == "inbound" else "false",
    }
    if leg.presence_id is not None:
        h["Channel-Presence-ID"] = leg.presence_id
    h["Channel-Call-UUID"] = leg.call_uuid or leg.uuid
    h["Answer-State"] = leg.answer_state
    if leg.hangup_cause:
        h["Hangup-Cause"] = leg.hangup_cause
    if leg.direction == "inbound" or leg.answered or leg.early_media:  # media negotiated
        for side in ("Read", "Write"):
            h[f"Channel-{side}-Codec-Name"] = "PCMU"
            h[f"Channel-{side}-Codec-Rate"] = "8000"
            h[f"Channel-{side}-Codec-Bit-Rate"] = "64000"
    h.update(_profile(leg, "Caller"))
    if leg.other is not None and leg.other_type:
        h["Other-Type"] = leg.other_type
        h.update(_profile(leg.other, "Other-Leg"))
    return h


def callstate_headers(
    leg: Leg, original: str, switch: SwitchInfo, sequence: int, timestamp_us: int,
) -> dict[str, str]:
    """CHANNEL_CALLSTATE for ``leg`` whose call state just moved from ``original``."""
    h = event_base("CHANNEL_CALLSTATE", switch, sequence, timestamp_us,
                   "switch_channel.c", "switch_channel_perform_set_callstate", 302)
    h["Original-Channel-Call-State"] = original
    h["Channel-Call-State-Number"] = str(CALLSTATE_NUMBERS[leg.callstate])
    h.update(channel_data(leg))
    return h


def progress_headers(
    leg: Leg, switch: SwitchInfo, sequence: int, timestamp_us: int,
) -> dict[str, str]:
    """CHANNEL_PROGRESS for ``leg`` (switch_channel_perform_mark_ring_ready_value): the leg's 180
    (outbound) or the 180 passed on to the caller (inbound). Real FreeSWITCH adds the channel's
    ``variable_*`` headers (an "extended" event); the simulator leaves them out."""
    h = event_base("CHANNEL_PROGRESS", switch, sequence, timestamp_us,
                   "switch_channel.c", "switch_channel_perform_mark_ring_ready_value", 3507)
    h.update(channel_data(leg))
    return h


def presence_in_headers(
    leg: Leg, status: str, switch: SwitchInfo, sequence: int, timestamp_us: int,
    *, presence_id: str | None = None, calling_function: str = "switch_channel_perform_mark_answered",
    calling_line: int = 3906, calling_file: str = "src/switch_channel.c",
) -> dict[str, str]:
    """PRESENCE_IN for ``leg`` (switch_channel_perform_presence); bumps ``leg.event_count``."""
    h = event_base("PRESENCE_IN", switch, sequence, timestamp_us,
                   "switch_channel.c", "switch_channel_perform_presence", 806)
    h.update(channel_data(leg))
    pid = presence_id or leg.presence_id or ""
    if leg.answer_state == "hangup":
        info_state = "idle"
    elif status in ("hold", "hold-private"):
        info_state = "held" if status == "hold" else "held-private"
    elif not leg.answered:
        info_state = "progressing" if leg.direction == "outbound" else "alerting"
    else:
        info_state = "active"
    h.update({
        "proto": "any",
        "login": "src/switch_channel.c",
        "from": pid,
        "rpid": "unknown",
        "status": status,
        "event_type": "presence",
        "alt_event_type": "dialog",
        "presence-call-info-state": info_state,
        "presence-call-direction": leg.direction,
        "event_count": str(leg.event_count),
        "Presence-Calling-File": calling_file,
        "Presence-Calling-Function": calling_function,
        "Presence-Calling-Line": str(calling_line),
    })
    leg.event_count += 1
    return h


def message_waiting_headers(
    account: str, new: int, saved: int, switch: SwitchInfo, sequence: int, timestamp_us: int,
    *, update_reason: str | None = "NEW",
) -> dict[str, str]:
    """MESSAGE_WAITING as mod_voicemail sends it (update_mwi; ``update_reason=None`` = query reply)."""
    function, line = ("update_mwi", 1930) if update_reason else ("actual_message_query_handler", 4010)
    h = event_base("MESSAGE_WAITING", switch, sequence, timestamp_us,
                   "mod_voicemail.c", function, line)
    h["MWI-Messages-Waiting"] = "yes" if new else "no"
    if update_reason:
        h["Update-Reason"] = update_reason
    h["MWI-Message-Account"] = account
    if new or saved or update_reason:
        h["MWI-Voice-Message"] = f"{new}/{saved} (0/0)"
    return h
