"""FreeSWITCH event headers -> Kazoo/pua_json-style presence update dicts (pure, sans-IO).

``normalize(event_name, headers, config)`` returns a :class:`NormalizeResult`: ``updates`` (0..n
plain dicts without the Bridge-ID/Bridge-Epoch/Sequence fields) and ``skipped`` (a short reason
string when nothing was produced, counted by the caller). It never raises on bad input.
Header names are matched case-insensitively (mod_valet_parking adds lower-case ``unique-id``).
Updates carry ``Event-Timestamp`` (``Event-Date-Timestamp``, microseconds) and, for call and
park dialogs, ``Switch-ID`` (the event's ``Core-UUID``) when the event has them. MWI and user
presence updates carry no Switch-ID: they are not channel state, so a switch snapshot (which
lists channels only) must not terminate them.

Mapping table
=============

============================  ==================================================================
event                         update(s)
============================  ==================================================================
CHANNEL_CALLSTATE             ``dialog`` + ``presence`` for presentity ``Channel-Presence-ID``
                              (missing -> skipped "no presence id"); Call-ID = ``Unique-ID``
CHANNEL_PROGRESS, inbound leg the same rule for the caller's leg when the far end rings (see
                              "The caller's leg" below); outbound legs: skipped
PRESENCE_IN, no Unique-ID     ``presence`` for ``from`` (user presence: registrations, PUBLISH)
PRESENCE_IN, proto=park       skipped (names no parked channel; valet_parking::info does)
PRESENCE_IN of a ringing      the CHANNEL_CALLSTATE rule (``proto`` any; see "The caller's leg")
inbound channel
PRESENCE_IN of a channel      otherwise skipped "channel presence" (CHANNEL_CALLSTATE covers calls)
CUSTOM valet_parking::info    ``dialog`` for ``<slot>``, ``park+<slot>``, ``<lot>``, ``park+<lot>``
                              @domain, Call-ID = the parked channel's ``Unique-ID``: hold ->
                              confirmed (remote = the parked caller), bridge/exit -> terminated
MESSAGE_WAITING               ``message-summary`` for ``MWI-Message-Account``
CHANNEL_PARK                  skipped: the ``park`` application has no slot (see below)
anything else                 skipped "unsupported event <name>"
============================  ==================================================================

Call state (``Channel-Call-State``, always by NAME: the numbers changed between releases):

=====================================  ===========================  ==========================
Channel-Call-State                     recipient (outbound leg)     initiator (inbound leg)
=====================================  ===========================  ==========================
RINGING, RING_WAIT, EARLY, DIALING     early                        ``initiator_ringing_state``
ACTIVE, HELD, UNHELD                   confirmed                    confirmed
HANGUP                                 terminated                   terminated
DOWN                                   skipped "call state down"    (terminated when the previous
                                                                    state was HANGUP)
=====================================  ===========================  ==========================

Direction comes from ``Presence-Call-Direction`` (fallback ``Call-Direction``): ``inbound`` (the
call came into FreeSWITCH from the presentity's phone) -> ``initiator``, ``outbound`` ->
``recipient``. While a call rings, FreeSWITCH's mod_sofia and Kazoo show the caller's own lamp as
``confirmed`` (it is busy, nothing to pick up); only the callee's lamp shows ``early`` (blinking,
pickable). ``initiator_ringing_state`` keeps that rule by default and can be set to ``early``.

The caller's leg: real FreeSWITCH moves an inbound leg to RINGING when it starts routing, before
the dialplan sets ``presence_id``, so that CHANNEL_CALLSTATE has no ``Channel-Presence-ID``; without
early media (no ``ringback``) the leg's next call state is ACTIVE at the answer. Two later events
carry both the presence id and the ringing state, and either lights the caller's lamp: the
leg's PRESENCE_IN with ``status`` CS_ROUTING (fired by the state machine's ``check_presence`` as
routing ends, when the dialplan set ``presence_id`` *inline*, as 00_busylamp_presence.xml does:
milliseconds after the INVITE, whether or not the far end ever rings), and its CHANNEL_PROGRESS
(the far end rang and FreeSWITCH passed the 180 on; also with a plain ``set``).

Voicemail legs: a loopback leg running voicemail (``Channel-Name`` ``loopback/voicemail-a|b``, the
vanilla ``loopback/app=voicemail:...`` fallback) is skipped ("voicemail leg") even when it carries a
``presence_id``: nobody can pick up a call that is leaving a message, and the mailbox owner's
phone is free. The caller's own leg keeps its lamp lit; MWI follows the mailbox.

Identities: local ``From`` = ``sip:<presence user>@<domain>``; remote ``To`` for an initiator =
``Caller-Destination-Number`` (fallback ``Other-Leg-Destination-Number``), for a recipient =
``Caller-Caller-ID-Number`` (fallback ``Caller-Caller-ID-Name``, ``Other-Leg-Caller-ID-Number``),
in the presentity's domain. A ringing recipient dialog gets ``To-URI`` =
``sip:<pickup_prefix><presence user>@<domain>`` (FreeSWITCH's ``**`` intercept) so a BLF key
press picks the call up. SIP tags are only present with ``verbose_events``: the phone's own tag
is ``variable_sip_from_tag`` on an inbound leg and ``variable_sip_to_tag`` on an outbound leg;
it becomes ``From-Tag`` (local-tag), the other one ``To-Tag``.

Expires: early ``expires_early`` (120 s), confirmed ``expires_confirmed`` (600 s), terminated
``expires_terminated`` (20 s). bridge/calls.py republishes live calls (confirmed every 300 s,
early every 60 s), so a long call never expires while a lost ``terminated`` lets a lamp go dark
after at most 10 minutes.

Parking: a channel whose presence id user starts with ``park+`` is a park slot lamp: it is
``confirmed`` (direction recipient, remote = the parked caller) until HANGUP. mod_valet_parking
(checked against FreeSWITCH 1.11) fires, on park, ``CUSTOM valet_parking::info`` ``Action: hold``
with the parked channel's data, then ``PRESENCE_IN`` ``proto: park`` for the lot (``from:
<lot>@domain``, ``force-status`` "Active (N callers)") and the slot (``from: <slot>@domain``,
"Holding"); on retrieval ``Action: bridge`` (the parked channel's data, ``Bridge-To-UUID``), then
``PRESENCE_IN`` "Empty" for lot and slot and ``Action: exit``; when the parked caller hangs up,
the "Empty" ones and ``exit``. Its ``PRESENCE_IN`` carries ``unique-id: <slot or lot>``, never the
parked channel, so only the CUSTOM event is used: every occupation is a dialog of its own
(Call-ID = the parked channel's uuid), shown at the slot number (what a phone's BLF key watches
and dials, ``<slot>@domain``), at ``park+<slot>@domain`` (alias), and at the lot (``<lot>@domain``
and ``park+<lot>@domain``: lit while any slot is taken). The domain is the lot name's (``lot@domain``),
else the parked channel's. The resync snapshot builds the same dialogs from ``valet_info``
(bridge/resync.py). ``CHANNEL_PARK`` is fired by the plain ``park`` application (the 2023 capture:
a sipp call parked on answer): it has no slot number, the caller's own lamp is already driven by
its CHANNEL_CALLSTATE, so it is skipped with reason "park application has no slot".

Message waiting (mod_voicemail / ``sendevent MESSAGE_WAITING``): presentity from
``MWI-Message-Account`` (``sip:`` stripped; no domain -> ``domain_default``),
``Messages-Waiting`` yes|no, ``Message-Account``, ``MWI-Voice-Message`` (outer blanks stripped) and
its integer ``Messages-New``/``-Saved``/``-Urgent``/``-Urgent-Saved`` when it has a wire form
(``n/m (u/v)`` or ``n/m``: busylamp.wire.names.VOICE_MESSAGE, the one the engine checks), else
neither; Call-ID ``mwi+<user>@<domain>``; no Expires (the latest one wins).

User presence (``PRESENCE_IN`` without ``Unique-ID``): ``rpid`` then ``status`` decide the State:

==========================================================  ============
rpid / status (case-insensitive)                             State
==========================================================  ============
rpid away, status starting "away" / "idle"                  away
rpid dnd / do-not-disturb, status "dnd" / "do not disturb"  dnd
rpid busy / on-the-phone, status "busy" / "on the phone"    busy / on-the-phone
status "unregistered" / "offline" / "closed"               offline
anything else (rpid unknown/open/active, "Available", ...)   open
==========================================================  ============

Call-ID of such an update is ``presence+<user>@<domain>`` (one record per user), Expires
``expires_confirmed``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from busylamp.wire import dialog_update, message_summary_update, presence_update

RINGING_STATES = frozenset({"RINGING", "RING_WAIT", "EARLY", "DIALING"})
_VOICEMAIL_LEG = re.compile(r"^loopback/voicemail-[ab]$")
TALKING_STATES = frozenset({"ACTIVE", "HELD", "UNHELD"})
PARK_PREFIX = "park+"


@dataclass(frozen=True, slots=True)
class NormalizeConfig:
    """Knobs of the mapping (see the module docstring)."""

    domain_default: str | None = None
    pickup_prefix: str = "**"
    initiator_ringing_state: str = "confirmed"
    expires_early: int = 120
    expires_confirmed: int = 600
    expires_terminated: int = 20

    def expires_for(self, state: str) -> int:
        if state == "early":
            return self.expires_early
        if state == "terminated":
            return self.expires_terminated
        return self.expires_confirmed


@dataclass(slots=True)
class NormalizeResult:
    """What one event produced: updates, or the reason why none."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None


class _Headers:
    """Case-insensitive view of an event's headers; empty and ``_undef_`` count as missing."""

    __slots__ = ("_get",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._get = headers.get

    def get(self, name: str) -> str | None:
        # FreeSWITCH spells headers one way; the exceptions are all lower case (valet_park's
        # "unique-id"): two dict look-ups instead of lower-casing every header of every event
        value = self._get(name)
        if value is None:
            value = self._get(_LOWER_NAMES.get(name) or _lower(name))
            if value is None:
                return None
        if value.__class__ is str:  # the usual case: one test besides the empty ones
            return value if value and value != "_undef_" else None
        return value if isinstance(value, str) and value and value != "_undef_" else None

    def first(self, *names: str) -> str | None:
        for name in names:
            value = self.get(name)
            if value is not None:
                return value
        return None


def normalize(event_name: str, headers: Mapping[str, str], config: NormalizeConfig) -> NormalizeResult:
    """Map one FreeSWITCH event to update dicts; never raises on bad input."""
    try:
        h = _Headers(headers)
        name = (event_name or "").upper()
        handler = _HANDLERS.get(name)
        if handler is None:
            if name == "CUSTOM" and (h.get("Event-Subclass") or "").lower() == "valet_parking::info":
                return _valet_info(h, config)
            return NormalizeResult(skipped=f"unsupported event {name or '(none)'}")
        return handler(h, config)
    except Exception as exc:  # defensive: a malformed event must never kill the reader
        return NormalizeResult(skipped=f"unparseable: {type(exc).__name__}")


# --------------------------------------------------------------------------- helpers


_LOWER_NAMES: dict[str, str] = {}  # header name -> its lower case (a fixed set of names)
_AORS: dict[tuple[str, str | None], tuple[str, str] | None] = {}  # split_aor's answers
_AORS_MAX = 4096
_BAD_AOR = re.compile('[ <>"\r\n]')


def _lower(name: str) -> str:
    lowered = _LOWER_NAMES.get(name)
    if lowered is None:
        lowered = _LOWER_NAMES[name] = name.lower()
    return lowered


def split_aor(text: str | None, domain_default: str | None) -> tuple[str, str] | None:
    """``sip:user@domain;params`` / ``user@domain`` / ``user`` -> (user, domain) or None
    (remembered: a switch names the same few thousand presence ids again and again)."""
    if not text:
        return None
    key = (text, domain_default)
    try:
        return _AORS[key]
    except KeyError:
        pass
    if len(_AORS) >= _AORS_MAX:
        _AORS.clear()
    answer = _AORS[key] = _split_aor(text, domain_default)
    return answer


def _split_aor(text: str, domain_default: str | None) -> tuple[str, str] | None:
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    low = value.lower()
    for scheme in ("sip:", "sips:"):
        if low.startswith(scheme):
            value = value[len(scheme):]
            break
    value = value.split(";", 1)[0]
    user, sep, domain = value.rpartition("@")
    if not sep:
        user, domain = value, domain_default or ""
    domain = domain.split(":", 1)[0] if not domain.startswith("[") else domain
    if not user or not domain or _BAD_AOR.search(user) or _BAD_AOR.search(domain):
        return None
    return user, domain


def _event_fields(h: _Headers, with_switch: bool = True) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    switch_id = h.get("Core-UUID")
    if switch_id and with_switch:
        extra["Switch-ID"] = switch_id
    stamp = h.get("Event-Date-Timestamp")
    if stamp and stamp.isdigit():
        extra["Event-Timestamp"] = int(stamp)
    return extra


def dialog_state(call_state: str, direction: str, previous: str | None, config: NormalizeConfig) -> str | None:
    """Channel-Call-State NAME -> dialog state, or None when the event says nothing yet."""
    if call_state in RINGING_STATES:
        return "early" if direction == "recipient" else config.initiator_ringing_state
    if call_state in TALKING_STATES:
        return "confirmed"
    if call_state == "HANGUP" or (call_state == "DOWN" and previous == "HANGUP"):
        return "terminated"
    return None


def call_direction(value: str | None) -> str | None:
    """FreeSWITCH channel direction -> dialog-info direction."""
    value = (value or "").lower()
    if value == "inbound":
        return "initiator"
    if value == "outbound":
        return "recipient"
    return None


def channel_updates(
    *,
    presence_id: str | None,
    call_id: str | None,
    call_state: str | None,
    previous_state: str | None,
    fs_direction: str | None,
    destination: str | None,
    caller: str | None,
    config: NormalizeConfig,
    local_tag: str | None = None,
    remote_tag: str | None = None,
    channel_name: str | None = None,
) -> NormalizeResult:
    """The shared channel rule used by CHANNEL_CALLSTATE and by the resync snapshot."""
    aor = split_aor(presence_id, config.domain_default)
    if aor is None:
        return NormalizeResult(skipped="no presence id")
    if channel_name and _VOICEMAIL_LEG.match(channel_name):
        return NormalizeResult(skipped="voicemail leg")
    if not call_id:
        return NormalizeResult(skipped="no unique id")
    user, domain = aor
    state_name = (call_state or "").upper()
    direction = call_direction(fs_direction)
    if direction is None:
        return NormalizeResult(skipped="no call direction")
    parked = user.lower().startswith(PARK_PREFIX)
    if parked:
        direction = "recipient"
    state = dialog_state(state_name, direction, (previous_state or "").upper(), config)
    if parked and state is not None and state != "terminated":
        state = "confirmed"  # a parked call keeps the slot lamp busy (nothing to pick up)
    if state is None:
        if state_name == "DOWN":
            return NormalizeResult(skipped="call state down")
        return NormalizeResult(skipped=f"unknown call state {state_name or '(none)'}")
    remote = (destination if direction == "initiator" and not parked else caller) or "unknown"
    target = None
    if state == "early" and direction == "recipient" and config.pickup_prefix:
        target = f"sip:{config.pickup_prefix}{user}@{domain}"
    dialog = dialog_update(
        user=user, domain=domain, call_id=call_id, state=state, direction=direction,
        remote=remote, expires=config.expires_for(state), remote_target=target,
        from_tag=local_tag, to_tag=remote_tag,
    )
    updates = [dialog]
    if not parked:
        pidf_state = state if state in ("early", "confirmed") else "terminated"
        updates.append(presence_update(
            user=user, domain=domain, call_id=call_id, state=pidf_state,
            expires=config.expires_for(state),
        ))
    return NormalizeResult(updates)


# --------------------------------------------------------------------------- handlers


def _callstate(h: _Headers, config: NormalizeConfig, with_tags: bool = True) -> NormalizeResult:
    fs_direction = h.first("Presence-Call-Direction", "Call-Direction")
    inbound = (fs_direction or "").lower() == "inbound"
    from_tag = to_tag = None
    if with_tags:
        from_tag, to_tag = h.get("variable_sip_from_tag"), h.get("variable_sip_to_tag")
    result = channel_updates(
        presence_id=h.get("Channel-Presence-ID"),
        call_id=h.get("Unique-ID"),
        call_state=h.get("Channel-Call-State"),
        previous_state=h.get("Original-Channel-Call-State"),
        fs_direction=fs_direction,
        destination=h.first("Caller-Destination-Number", "Other-Leg-Destination-Number"),
        caller=h.first("Caller-Caller-ID-Number", "Caller-Caller-ID-Name", "Other-Leg-Caller-ID-Number"),
        config=config,
        local_tag=from_tag if inbound else to_tag,
        remote_tag=to_tag if inbound else from_tag,
        channel_name=h.get("Channel-Name"),
    )
    extra = _event_fields(h)
    for update in result.updates:
        update.update(extra)
    return result


def _progress(h: _Headers, config: NormalizeConfig) -> NormalizeResult:
    # Only the caller's leg: an outbound leg's ringing is its own CHANNEL_CALLSTATE RINGING
    if (h.first("Presence-Call-Direction", "Call-Direction") or "").lower() != "inbound":
        return NormalizeResult(skipped="progress of an outbound leg")
    # CHANNEL_PROGRESS is an "extended" event (variable_* headers) while CHANNEL_CALLSTATE is not:
    # tags taken from it would vanish again at the next call state and cost the phone a NOTIFY
    return _callstate(h, config, with_tags=False)


def _message_waiting(h: _Headers, config: NormalizeConfig) -> NormalizeResult:
    aor = split_aor(h.get("MWI-Message-Account"), config.domain_default)
    if aor is None:
        return NormalizeResult(skipped="no message account")
    waiting = (h.get("MWI-Messages-Waiting") or "").strip().lower()
    if waiting not in ("yes", "no"):
        return NormalizeResult(skipped="bad messages-waiting")
    user, domain = aor
    update = message_summary_update(user=user, domain=domain, waiting=waiting,
                                    voice_message=h.get("MWI-Voice-Message"))
    update.update(_event_fields(h, with_switch=False))
    return NormalizeResult([update])


def user_presence_state(rpid: str | None, status: str | None) -> str:
    """rpid/status of a PRESENCE_IN without a channel -> presence State (table above)."""
    rpid = (rpid or "").strip().lower()
    status = (status or "").strip().lower()
    if rpid == "away" or status.startswith(("away", "idle")):
        return "away"
    if rpid in ("dnd", "do-not-disturb") or status.startswith(("dnd", "do not disturb")):
        return "dnd"
    if rpid == "on-the-phone" or status.startswith("on the phone"):
        return "on-the-phone"
    if rpid == "busy" or status.startswith("busy"):
        return "busy"
    if status.startswith(("unregistered", "offline", "closed")):
        return "offline"
    return "open"


def _presence_in(h: _Headers, config: NormalizeConfig) -> NormalizeResult:
    if (h.get("proto") or "").lower() == "park":
        return _valet_presence(h, config)
    if h.get("Unique-ID") is not None:
        inbound = (h.first("Presence-Call-Direction", "Call-Direction") or "").lower() == "inbound"
        ringing = (h.get("Channel-Call-State") or "").upper() in RINGING_STATES
        if inbound and ringing and (h.get("proto") or "any").lower() == "any":
            return _callstate(h, config, with_tags=False)  # the caller's leg, see the docstring
        return NormalizeResult(skipped="channel presence")
    aor = split_aor(h.first("from", "login"), config.domain_default)
    if aor is None:
        return NormalizeResult(skipped="no presence id")
    user, domain = aor
    state = user_presence_state(h.get("rpid"), h.get("status"))
    update = presence_update(
        user=user, domain=domain, call_id=f"presence+{user}@{domain}", state=state,
        expires=config.expires_confirmed,
    )
    update.update(_event_fields(h, with_switch=False))
    return NormalizeResult([update])


def _park_domain(h: _Headers, config: NormalizeConfig, lot: str | None) -> str | None:
    if lot and "@" in lot:
        return lot.rsplit("@", 1)[1]
    aor = split_aor(h.first("Channel-Presence-ID", "variable_presence_id"), None)
    if aor:
        return aor[1]
    return h.first("variable_domain_name", "variable_sip_to_host") or config.domain_default


def park_presentities(slot: str, lot: str | None) -> list[str]:
    """The users whose lamps show a parked call: the slot number (what a BLF key dials, and
    FreeSWITCH's own name for it), ``park+SLOT`` (alias), and the lot (``LOT``, ``park+LOT``)."""
    users = [slot, f"{PARK_PREFIX}{slot}"]
    lot_user = (lot or "").split("@", 1)[0]
    if lot_user and lot_user != slot:
        users += [lot_user, f"{PARK_PREFIX}{lot_user}"]
    return users


def park_updates(*, slot: str, lot: str | None, domain: str, parked_uuid: str, state: str,
                 caller: str, config: NormalizeConfig) -> list[dict[str, Any]]:
    """One occupation of a valet slot: a dialog per lamp, its id the parked channel's uuid (so a
    slot parked again at once is a new dialog, never swallowed by the last one's tombstone);
    the remote target is the slot, so pressing the lit key dials the slot and retrieves the call."""
    return [
        dialog_update(user=user, domain=domain, call_id=parked_uuid, state=state,
                      direction="recipient", remote=caller, expires=config.expires_for(state),
                      remote_target=f"sip:{slot}@{domain}")
        for user in park_presentities(slot, lot)
    ]


def _valet_presence(h: _Headers, config: NormalizeConfig) -> NormalizeResult:
    # mod_valet_parking's PRESENCE_IN names the slot or lot but not the parked channel (its
    # "unique-id" is the slot number): valet_parking::info, which does, drives every park lamp.
    return NormalizeResult(skipped="park presence: valet_parking::info carries the parked call")


def _valet_info(h: _Headers, config: NormalizeConfig) -> NormalizeResult:
    slot = h.get("Valet-Extension")
    lot = h.get("Valet-Lot-Name")
    action = (h.get("Action") or "").lower()
    domain = _park_domain(h, config, lot)
    if not slot or not domain:
        return NormalizeResult(skipped="valet event without slot or domain")
    if action == "hold":
        state = "confirmed"
    elif action in ("bridge", "exit"):
        state = "terminated"
    else:
        return NormalizeResult(skipped=f"valet action {action or '(none)'}")
    parked_uuid = h.get("Unique-ID")
    if not parked_uuid:
        return NormalizeResult(skipped="valet event without unique id")
    caller = h.first("Caller-Caller-ID-Number", "Caller-Caller-ID-Name") or "unknown"
    updates = park_updates(slot=slot, lot=lot, domain=domain, parked_uuid=parked_uuid,
                           state=state, caller=caller, config=config)
    extra = _event_fields(h)
    for update in updates:
        update.update(extra)
    return NormalizeResult(updates)


def _channel_park(h: _Headers, config: NormalizeConfig) -> NormalizeResult:
    return NormalizeResult(skipped="park application has no slot")


_HANDLERS = {
    "CHANNEL_CALLSTATE": _callstate,
    "CHANNEL_PROGRESS": _progress,
    "MESSAGE_WAITING": _message_waiting,
    "PRESENCE_IN": _presence_in,
    "CHANNEL_PARK": _channel_park,
}
