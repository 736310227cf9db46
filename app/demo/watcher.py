"""A small SIP watcher user agent, sans-IO: subscribes to lamps and keeps what the NOTIFYs said.

:class:`WatcherCore` takes an injected ``now`` (:meth:`~WatcherCore.get_timer` /
:meth:`~WatcherCore.handle_timer`, :meth:`~WatcherCore.datagrams_to_send`);
:class:`app.demo.useragent.WatcherUA` runs it on a gevent UDP socket. SIP behaviour: every
request goes to ``server`` (used as an outbound proxy); SUBSCRIBE retransmits per Timer E and times
out per Timer F (the project's :class:`~presence.sip.transaction.ClientTransactions`); responses
match by Via branch; 423 retries with Min-Expires; 481 or a terminated Subscription-State
(reasons deactivated, timeout, probation, giveup) re-subscribes with a new dialog; refreshes go
out before expiry; every NOTIFY gets a 200 copying Via/From/To/Call-ID/CSeq (retransmissions get
the same bytes and are applied once); a dialog-info body whose version is lower than the last one
seen is ignored (RFC 4235 4.1).
"""

from __future__ import annotations

import itertools
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from busylamp.app.demo.lamps import (
    DIALOG_NS,
    SETUP_STATES,
    LampKey,
    LampState,
    apply_pidf,
    apply_summary,
    dialog_held,
    dialog_lamp,
)
from busylamp.presence.sip import (
    ParseError,
    Request,
    Response,
    build_request,
    build_response,
    parse_message,
)
from busylamp.presence.sip.transaction import ClientTransactions, ServerTransactions

log = logging.getLogger(__name__)

ChangeCallback = Callable[[LampKey, LampState], None]

ACCEPT = {
    "dialog": "application/dialog-info+xml",
    "message-summary": "application/simple-message-summary",
    "presence": "application/pidf+xml",
}
RESUBSCRIBE_REASONS = frozenset({"deactivated", "timeout", "probation", "giveup", ""})


@dataclass(slots=True)
class _Sub:
    """One subscription (its current dialog) and the lamp it feeds."""

    key: LampKey
    expires: int
    lamp: LampState
    call_id: str = ""
    local_tag: str = ""
    remote_tag: str | None = None
    remote_target: str = ""
    route: list[str] = field(default_factory=list)
    cseq: int = 0
    sent_expires: int = 0
    remote_cseq: int = -1
    phase: str = "idle"  # subscribing | active | ending | waiting | ended | failed
    inflight: str | None = None  # branch of the SUBSCRIBE in flight
    refresh_at: float | None = None
    retry_at: float | None = None
    dialogs: dict[str, tuple[str, bool]] = field(default_factory=dict)  # id -> (state, held)


class WatcherCore:
    """Sans-IO watcher: subscriptions, SUBSCRIBE transactions and NOTIFY handling."""

    def __init__(self, local: tuple[str, int], server: tuple[str, int], user: str, domain: str,
                 *, t1: float = 0.5, t2: float = 4.0, timer_f: float | None = None,
                 retry_interval: float = 30.0, on_change: ChangeCallback | None = None) -> None:
        self.local = local
        self.server = server
        self.user = user
        self.domain = domain
        self.retry_interval = retry_interval
        self.on_change = on_change
        self.counters = {"subscribe_sent": 0, "notify_received": 0, "notify_stale": 0,
                         "resubscribes": 0, "timeouts": 0}
        self._t1 = t1
        self._clients = ClientTransactions(t1=t1, t2=t2, timer_f=timer_f)
        self._servers = ServerTransactions(t1=t1)
        self._subs: dict[LampKey, _Sub] = {}
        self._out: list[tuple[tuple[str, int], bytes]] = []
        self._branches = itertools.count(1)
        self._branch_prefix = "z9hG4bK" + os.urandom(4).hex() + "-"

    # -- public API -------------------------------------------------------------------------

    @property
    def lamps(self) -> dict[LampKey, LampState]:
        return {key: sub.lamp for key, sub in self._subs.items()}

    def phase(self, key: LampKey) -> str:
        return self._subs[key].phase

    def call_id(self, key: LampKey) -> str:
        return self._subs[key].call_id

    def subscribe(self, presentity: str, event: str, expires: int, now: float) -> LampKey:
        """Start (or restart) a subscription; returns its lamp key."""
        aor = presentity if "@" in presentity else f"{presentity}@{self.domain}"
        key = (event.lower(), aor.removeprefix("sip:"))
        sub = self._subs.get(key)
        if sub is None:
            sub = self._subs[key] = _Sub(key, expires, LampState(key[0], key[1]))
        sub.expires = expires
        if sub.phase in ("subscribing", "active"):
            return key
        self._new_dialog(sub, now)
        return key

    def refresh(self, key: LampKey, now: float) -> None:
        """Send a refresh now (in-dialog SUBSCRIBE) if the subscription is active."""
        sub = self._subs[key]
        if sub.phase == "active" and sub.inflight is None:
            self._send_subscribe(sub, sub.expires, now)

    def unsubscribe(self, key: LampKey, now: float) -> None:
        """SUBSCRIBE with Expires 0; the subscription ends with the notifier's terminated NOTIFY
        (or any failure). A SUBSCRIBE still in flight completes first."""
        sub = self._subs[key]
        sub.refresh_at = sub.retry_at = None
        if sub.phase in ("subscribing", "active"):
            sub.phase = "ending"
            if sub.inflight is None:
                self._send_subscribe(sub, 0, now)
        elif sub.phase != "ending":
            sub.phase = "ended"

    def busy(self) -> bool:
        """True while any SUBSCRIBE transaction is in flight or an unsubscribe is unfinished."""
        return len(self._clients) > 0 or any(s.phase == "ending" for s in self._subs.values())

    def datagrams_to_send(self) -> list[tuple[tuple[str, int], bytes]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        deadlines = [self._clients.get_timer(), self._servers.get_timer()]
        for sub in self._subs.values():
            deadlines += [sub.refresh_at, sub.retry_at]
        deadlines = [d for d in deadlines if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        retransmits, timeouts = self._clients.handle_timer(now)
        self._out.extend((self.server, data) for _dest, data in retransmits)
        for sub in timeouts:
            self.counters["timeouts"] += 1
            sub.inflight = None
            log.info("SUBSCRIBE %s %s timed out", *sub.key)
            self._lost(sub, "timeout", now, self.retry_interval)
        self._servers.handle_timer(now)
        for sub in list(self._subs.values()):
            if sub.refresh_at is not None and now >= sub.refresh_at and sub.inflight is None:
                sub.refresh_at = None
                self._send_subscribe(sub, sub.expires, now)
            if sub.retry_at is not None and now >= sub.retry_at:
                sub.retry_at = None
                self.counters["resubscribes"] += 1
                self._new_dialog(sub, now)

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> None:
        try:
            message = parse_message(data)
        except ParseError as exc:
            if exc.request is not None:
                self._answer(exc.request, exc.status, source, now, exc.reason)
            return
        try:
            if isinstance(message, Response):
                self._on_response(message, now)
            else:
                self._on_request(message, source, now)
        except ParseError as exc:
            if isinstance(message, Request):
                self._answer(message, exc.status, source, now, exc.reason)

    # -- SUBSCRIBE ----------------------------------------------------------------------------

    def _new_dialog(self, sub: _Sub, now: float) -> None:
        if sub.inflight is not None:
            self._clients.cancel(sub.inflight)
            sub.inflight = None
        sub.call_id = f"{os.urandom(8).hex()}@{self.local[0]}"
        sub.local_tag = os.urandom(6).hex()
        sub.remote_tag = None
        sub.remote_target = f"sip:{sub.key[1]}"
        sub.route = []
        sub.cseq = 0
        sub.remote_cseq = -1
        sub.dialogs = {}
        sub.refresh_at = sub.retry_at = None
        sub.phase = "subscribing"
        self._send_subscribe(sub, sub.expires, now)

    def _send_subscribe(self, sub: _Sub, expires: int, now: float) -> None:
        event, aor = sub.key
        sub.cseq += 1
        branch = self._branch_prefix + format(next(self._branches), "x")
        host, port = self.local
        to = f"<sip:{aor}>" + (f";tag={sub.remote_tag}" if sub.remote_tag else "")
        headers = [
            ("Via", f"SIP/2.0/UDP {_hostport(host, port)};branch={branch};rport"),
            ("Max-Forwards", "70"),
            *(("Route", r) for r in sub.route),
            ("From", f"<sip:{self.user}@{self.domain}>;tag={sub.local_tag}"),
            ("To", to),
            ("Call-ID", sub.call_id),
            ("CSeq", f"{sub.cseq} SUBSCRIBE"),
            ("Contact", f"<sip:{self.user}@{_hostport(host, port)}>"),
            ("Event", event),
            ("Accept", ACCEPT.get(event, "*/*")),
            ("Expires", str(expires)),
            ("User-Agent", "busylamp-demo-watcher"),
        ]
        data = build_request("SUBSCRIBE", sub.remote_target, headers)
        sub.inflight = branch
        sub.sent_expires = expires
        self._clients.start(branch, data, self.server, False, now, sub)
        self.counters["subscribe_sent"] += 1
        self._out.append((self.server, data))

    def _on_response(self, resp: Response, now: float) -> None:
        via = resp.vias[0]
        if via.branch is None or resp.cseq[1] != "SUBSCRIBE":
            return
        sub = self._clients.on_response(via.branch, resp.status, now)
        if not isinstance(sub, _Sub) or sub.inflight != via.branch:
            return
        sub.inflight = None
        status = resp.status
        if 200 <= status < 300:
            self._accepted(sub, resp, now)
        elif sub.phase == "ending":
            sub.phase = "ended"
        elif status == 423 and _min_expires(resp) > sub.sent_expires:
            sub.expires = _min_expires(resp)
            self._send_subscribe(sub, sub.expires, now)
        elif status == 481:
            self.counters["resubscribes"] += 1
            self._new_dialog(sub, now)
        else:
            log.info("SUBSCRIBE %s %s answered %d", *sub.key, status)
            retry = _retry_after(resp.headers.get("Retry-After"), self.retry_interval)
            self._lost(sub, f"rejected {status}", now, retry)

    def _accepted(self, sub: _Sub, resp: Response, now: float) -> None:
        if sub.remote_tag is None:
            sub.remote_tag = resp.to.tag
            sub.route = list(reversed(resp.headers.get_all("Record-Route")))
        contact = resp.headers.get_all("Contact")
        if contact:
            sub.remote_target = _uri_of(contact[0])
        granted = (resp.headers.get("Expires") or "").strip()
        expires = int(granted) if granted.isdigit() else sub.expires
        if sub.phase == "ending":
            if sub.sent_expires != 0:
                self._send_subscribe(sub, 0, now)  # the earlier SUBSCRIBE finished: end it now
            return  # then wait for the terminated NOTIFY
        if expires <= 0:
            sub.phase = "ended"
            return
        sub.phase = "active"
        sub.refresh_at = now + _refresh_in(expires)

    def _lost(self, sub: _Sub, why: str, now: float, retry: float | None) -> None:
        """The subscription is gone; start a new dialog after ``retry`` seconds (None: never)."""
        sub.refresh_at = None
        if sub.phase in ("ending", "ended"):
            sub.phase = "ended"
            return
        sub.phase = "waiting" if retry is not None else "failed"
        sub.retry_at = None if retry is None else now + retry
        self._set_lamp(sub, replace(sub.lamp, subscription_state=why))

    # -- NOTIFY -------------------------------------------------------------------------------

    def _on_request(self, req: Request, source: tuple[str, int], now: float) -> None:
        if req.method == "ACK":
            return
        key = self._servers.key(req, "udp")
        previous = self._servers.lookup(key)
        if previous is not None:
            self._out.append((source, previous))
            return
        if req.method != "NOTIFY":
            status = 200 if req.method == "OPTIONS" else 405
            self._answer(req, status, source, now, headers=[("Allow", "NOTIFY, OPTIONS")], key=key)
            return
        sub = self._match(req)
        if sub is None:
            self._answer(req, 481, source, now, "Subscription does not exist", key=key)
            return
        cseq = req.cseq[0]
        if cseq <= sub.remote_cseq:
            self._answer(req, 500, source, now, "CSeq out of order", key=key)
            return
        sub.remote_cseq = cseq
        if sub.remote_tag is None:
            sub.remote_tag = req.from_.tag  # NOTIFY before the 200 (RFC 6665 4.1.2.4)
        if req.contact is not None:
            sub.remote_target = req.contact.uri
        self._answer(req, 200, source, now, key=key)
        self.counters["notify_received"] += 1
        self._apply_notify(sub, req, now)

    def _match(self, req: Request) -> _Sub | None:
        call_id, tag = req.call_id, req.to.tag
        for sub in self._subs.values():
            if sub.call_id == call_id and sub.local_tag == tag and (
                    sub.remote_tag is None or sub.remote_tag == req.from_.tag):
                return sub
        return None

    def _answer(self, req: Request, status: int, source: tuple[str, int], now: float,
                reason: str | None = None, headers: list[tuple[str, str]] | None = None,
                key: tuple | None = None) -> None:
        try:
            data = build_response(req, status, reason, headers=headers or ())
        except (ParseError, ValueError):
            return
        if key is not None:
            self._servers.store(key, data, False, now)
        self._out.append((source, data))

    def _apply_notify(self, sub: _Sub, req: Request, now: float) -> None:
        state_value = (req.headers.get("Subscription-State") or "").strip()
        sub_state, params = _split_state(state_value)
        lamp = replace(sub.lamp, notify_count=sub.lamp.notify_count + 1,
                       subscription_state=state_value)
        if req.body:
            lamp = self._apply_body(sub, lamp, req.body)
        self._set_lamp(sub, lamp)
        if sub_state == "terminated":
            sub.refresh_at = None
            if sub.inflight is not None:
                self._clients.cancel(sub.inflight)
                sub.inflight = None
            reason = params.get("reason", "")
            if sub.phase == "ending" or reason not in RESUBSCRIBE_REASONS:
                sub.phase = "ended"
                return
            retry = _retry_after(params.get("retry-after"), 0.0)
            if reason in ("probation", "giveup") and "retry-after" not in params:
                retry = self.retry_interval
            sub.phase = "waiting"
            sub.retry_at = now + retry
        elif sub_state in ("active", "pending") and sub.phase in ("active", "subscribing"):
            expires = params.get("expires", "")
            if expires.isdigit() and sub.inflight is None:
                due = now + _refresh_in(int(expires))
                if sub.refresh_at is None or due < sub.refresh_at:
                    sub.refresh_at = due

    def _apply_body(self, sub: _Sub, lamp: LampState, body: bytes) -> LampState:
        event = sub.key[0]
        try:
            if event == "dialog":
                return self._apply_dialog_info(sub, lamp, body)
            if event == "message-summary":
                return apply_summary(lamp, body)
            if event == "presence":
                return apply_pidf(lamp, body)
        except (ET.ParseError, ValueError) as exc:
            log.debug("unparsable %s body for %s: %s", event, sub.key[1], exc)
        return replace(lamp, ignored=lamp.ignored + 1)

    def _apply_dialog_info(self, sub: _Sub, lamp: LampState, body: bytes) -> LampState:
        root = ET.fromstring(body)
        version = int(root.get("version", "0"))
        if lamp.version is not None and version < lamp.version:
            self.counters["notify_stale"] += 1
            return replace(lamp, ignored=lamp.ignored + 1)
        full = root.get("state", "full") == "full"
        dialogs = {} if full else dict(sub.dialogs)
        for index, element in enumerate(root.iter(DIALOG_NS + "dialog")):
            dialog_id = element.get("id") or f"#{index}"
            state = (element.findtext(DIALOG_NS + "state") or "").strip().lower()
            if state == "terminated" or not state:
                dialogs.pop(dialog_id, None)
                continue
            direction = (element.get("direction") or "").lower()
            if state in SETUP_STATES and direction == "recipient":
                state = "early"
            dialogs[dialog_id] = (state, dialog_held(element))
        sub.dialogs = dialogs
        return replace(lamp, state=dialog_lamp(dialogs.values()), dialogs=len(dialogs),
                       version=version)

    def _set_lamp(self, sub: _Sub, lamp: LampState) -> None:
        if lamp != sub.lamp:
            sub.lamp = lamp
            if self.on_change is not None:
                self.on_change(sub.key, lamp)


# -- body parsing (pure) ---------------------------------------------------------------------


def _split_state(value: str) -> tuple[str, dict[str, str]]:
    head, *rest = value.split(";")
    params = {}
    for item in rest:
        name, _, val = item.partition("=")
        params[name.strip().lower()] = val.strip().strip('"')
    return head.strip().lower(), params


def _retry_after(value: str | None, default: float) -> float:
    text = (value or "").split(";", 1)[0].split("(", 1)[0].strip()
    return float(text) if text.isdigit() else default


def _min_expires(resp: Response) -> int:
    text = (resp.headers.get("Min-Expires") or "").strip()
    return int(text) if text.isdigit() else 0


def _refresh_in(expires: int) -> float:
    """Refresh ahead of expiry: half way for short subscriptions, 30 s early for long ones."""
    return max(expires - 30.0, expires / 2)


def _uri_of(name_addr: str) -> str:
    text = name_addr.strip()
    if "<" in text:
        return text[text.index("<") + 1:text.index(">")]
    return text.split(";", 1)[0]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- gevent adapter --------------------------------------------------------------------------
