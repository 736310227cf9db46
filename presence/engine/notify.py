"""NOTIFYs: fan-out in batches, building each NOTIFY from the subscription's bytes and the
prebuilt body, its transaction and answer, final NOTIFYs, and the lifecycle moves
(presence/lifecycle.py) each of those makes."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from busylamp.presence.engine.config import ERROR_LOG_INTERVAL, NOTIFY_REMOVE_STATUSES
from busylamp.presence.engine.events import (
    ResolveName,
)
from busylamp.presence.engine.routing import (
    AWAITING_ADDRESS,
    Unresolved,
    _routed,
    _unreachable,
)
from busylamp.presence.lifecycle import (
    BUSY,
    FINAL_IN_FLIGHT,
    IDLE,
    IN_FLIGHT,
    IN_FLIGHT_DIRTY,
    LEGAL_MOVES,
    QUEUED,
    RESOLVING,
    TERMINATED,
    TERMINATING,
    IllegalTransition,
    advance,
    check_moves,
)
from busylamp.presence.packages.base import RenderedBody
from busylamp.presence.sip import (
    ParseError,
    Response,
)
from busylamp.presence.sip.tokens import token64
from busylamp.presence.subscriptions import Subscription

log = logging.getLogger(__name__)

# The lifecycle moves made by assignment on the hot path, each right after testing the phase it
# leaves (presence/lifecycle.py); every other move goes through advance().
HOT_MOVES = check_moves(
    (IDLE, QUEUED),  # fan-out: a change for an idle watcher
    (IN_FLIGHT, IN_FLIGHT_DIRTY),  # fan-out or refresh while a NOTIFY is in flight
    (IN_FLIGHT, IDLE),  # answered, nothing owed
    (IN_FLIGHT_DIRTY, QUEUED),  # answered, a NOTIFY owed: it goes at once
    (FINAL_IN_FLIGHT, TERMINATED),  # the final NOTIFY answered
)


class Notifier:
    """Fan-out, NOTIFY building and NOTIFY transactions (a mixin of PresenceEngine)."""

    def resolved(self, name: str, address: str | None, now: float) -> None:
        """The lookup of ``name`` ended: its address, or None when it has none (or timed out);
        the NOTIFYs waiting for it go out, or their subscriptions end."""
        for sub in self._resolving.pop(name, ()):
            if sub.phase != RESOLVING:
                continue
            sub.inflight = None
            live = self.subscriptions.get(sub.tag) is sub
            dest = sub.dest
            if dest.__class__ is Unresolved and dest[0] == name:
                if address is not None and _unreachable(address, sub.source[0]):
                    address = None  # a name may not lead where its address could not
                if address is not None and not self._believable((address, dest[1]), sub.source):
                    self.counters.target_refused += 1
                    address = None
                if address is None:
                    advance(sub, TERMINATED)
                    if live:
                        self._remove(sub, "unresolvable")
                    continue
                sub.dest = self.subscriptions.shared((address, dest[1]))
            if live or sub.final_reason is not None:
                self._notify(sub, self._body_to_send(sub), now)
            else:
                advance(sub, TERMINATED)

    def _await_address(self, sub: Subscription) -> None:
        """Hold ``sub``'s NOTIFYs until its destination's name is resolved (one lookup per
        name, however many subscriptions wait for it)."""
        advance(sub, RESOLVING)
        sub.inflight = AWAITING_ADDRESS
        name = sub.dest[0]
        waiting = self._resolving.get(name)
        if waiting is None:
            self._resolving[name] = [sub]
            self._events.append(ResolveName(name))
        else:
            waiting.append(sub)

    def _fan_out(self, changed: Iterable[tuple[str, str]], now: float) -> None:
        """Queue a NOTIFY for every watcher of what changed, then send the first batch.

        The rest go out ``fanout_batch`` at a time from :meth:`handle_timer` (due at once), so a
        presentity with tens of thousands of watchers never holds the caller's loop for long.
        A queued watcher is QUEUED (presence/lifecycle.py); it gets the state as it is when its
        turn comes. With a history (``observer``), each watcher points at the entry its next
        NOTIFY tells."""
        backlog = self._backlog
        obs = self.observer
        for package_name, presentity in changed:
            watchers = self.subscriptions.watchers(package_name, presentity)
            if not watchers:
                continue
            note = obs.fanout(package_name, presentity, watchers, now) if obs is not None else None
            for sub in watchers:
                phase = sub.phase
                if phase == IDLE:
                    sub.phase = QUEUED  # HOT_MOVES
                    if note is not None:
                        sub.note = note  # its answer lands there (presence/history.py)
                    backlog.append(sub)
                elif phase == QUEUED:  # already queued for a step of an earlier fan-out
                    if note is not None:
                        sub.note = note
                else:  # busy: the change goes out merged after the NOTIFY in flight
                    if phase == IN_FLIGHT:
                        sub.phase = IN_FLIGHT_DIRTY  # HOT_MOVES
                    if note is not None:
                        obs.merged(note)
        if backlog:
            self._drain(now)

    def _backlog_due(self) -> float | None:
        if not self._backlog or self._pending_full():
            return None
        return self._backlog_at

    def _pending_full(self) -> bool:
        cap = self.config.limits.max_pending_notifies
        return cap is not None and len(self.client_transactions) >= cap

    def _drain(self, now: float) -> None:
        """Send up to ``fanout_batch`` queued fan-out NOTIFYs (fewer under the pending cap)."""
        backlog = self._backlog
        budget = self.config.fanout_batch
        cap = self.config.limits.max_pending_notifies  # _pending_full(), inline
        pending = self.client_transactions
        bodies: dict[tuple[str, str], RenderedBody] = {}
        while backlog and budget > 0 and (cap is None or len(pending) < cap):
            sub = backlog.popleft()
            if sub.phase != QUEUED:  # sent meanwhile, or ended (QUEUED is always in the table)
                continue
            key = (sub.package.name, sub.presentity)
            body = bodies.get(key)
            if body is None:
                body = bodies[key] = self.state.body(*key)
                self.state.mark_sent(*key)
            budget -= 1
            try:
                self._send_notify(sub, body, now)
            except Exception as exc:  # one watcher's bad NOTIFY must not stop the others
                self._notify_broken(sub, exc, now)
                if self.observer is not None and sub.note is not None:
                    self.observer.merged(sub.note)
        self._backlog_at = now

    @property
    def backlog(self) -> int:
        """Fan-out NOTIFYs queued for the next steps."""
        return len(self._backlog)

    def _send_notify(self, sub: Subscription, body: RenderedBody, now: float) -> None:
        """Build and queue one NOTIFY for ``sub`` with ``body`` and start its transaction.

        A target that has not answered yet (see :meth:`_unverified`) gets no more than its byte
        budget and no retransmission: when the NOTIFY with the state would not fit, a minimal one
        (the subscription state, no body) goes first and the state follows once it answered."""
        if sub.dest.__class__ is Unresolved:
            self._await_address(sub)
            return
        package = sub.package
        sub.cseq += 1
        branch = self._branch_prefix + token64()
        final_reason = sub.final_reason
        if final_reason is not None:
            sub_state = "terminated;reason=" + final_reason
        else:
            # (expires_at is a whole second, rounded up: presence/subscriptions.py)
            left = int(sub.expires_at - now)
            sub_state = f"active;expires={left if left > 1 else 1}"
        versioned = body.versioned  # body.for_version(sub.version), inline:
        payload = b"%s%d%s" % (body.prefix, sub.version, body.suffix) if versioned else body.prefix
        transport = sub.transport
        route = sub.route
        if route is None:
            request_uri = sub.target
            route_lines = ""
        else:
            request_uri, route_lines = _routed(route, sub.target)
        head = (
            f"NOTIFY {request_uri} SIP/2.0\r\n"
            f"Via: {self._via_sent_by.get(transport) or next(iter(self._via_sent_by.values()))}"
            f";branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"{route_lines}"
            f"From: <{sub.local_uri}>;tag={sub.tag}\r\n"
            f"To: <{sub.remote_uri}>;tag={sub.remote_tag}\r\n"
            f"Call-ID: {sub.call_id}\r\n"
            f"CSeq: {sub.cseq} NOTIFY\r\n"
            f"Contact: {self._contact_hdr.get(transport) or next(iter(self._contact_hdr.values()))}\r\n"
            f"Event: {package.name}\r\n"
            f"Subscription-State: {sub_state}\r\n"
        )
        full = f"Content-Type: {package.content_type}\r\nContent-Length: {len(payload)}\r\n\r\n"
        data = (head + full).encode("utf-8", "surrogateescape") + payload
        verified = sub.verified or self._target_verified(sub)
        if not verified and len(data) > sub.budget:
            # the state does not fit the budget: the subscription state alone, the rest later
            data = (head + "Content-Length: 0\r\n\r\n").encode("utf-8", "surrogateescape")
            if len(data) > sub.budget:
                # not even that: nothing until the watcher shows it is there (a refresh adds
                # to the budget); only a SUBSCRIBE far smaller than any phone's gets here
                sub.cseq -= 1
                advance(sub, QUEUED if sub.final_reason is None else TERMINATED)
                self.counters.notify_withheld += 1
                return
            self.counters.notify_minimal += 1
            # the state is still owed: it follows once this one is answered
            advance(sub, IN_FLIGHT_DIRTY if sub.final_reason is None else FINAL_IN_FLIGHT)
        else:
            if versioned:
                sub.version += 1
            to = IN_FLIGHT if final_reason is None else FINAL_IN_FLIGHT  # advance(), inline:
            if not LEGAL_MOVES[sub.phase][to]:
                raise IllegalTransition(sub.phase, to)
            sub.phase = to
        sub.inflight = branch
        dest = (transport, sub.dest, sub.conn_id)
        if verified:
            self.client_transactions.start(branch, data, dest, transport != "udp", now, sub)
        else:  # no retransmissions to a target that may never have asked for anything
            sub.budget -= len(data)
            self.client_transactions.start(branch, b"", dest, True, now, sub)
        self.counters.notify_sent += 1
        self._out.append((transport, sub.dest, data, sub.conn_id))

    def _verify(self, sub: Subscription) -> None:
        """``sub``'s target answered: it asked for NOTIFYs, no budget applies to it any more."""
        sub.verified = True
        sub.budget = 0  # no longer read: the small int, not one int object per subscription
        targets = self._verified_targets
        if len(targets) >= 65_536:
            targets.clear()  # forgetting costs one small first NOTIFY per target, never memory
        # a UDP target is its (shared) address tuple itself: no tuple per target
        targets[sub.dest if sub.transport == "udp" else (sub.transport, sub.dest)] = None

    def _target_verified(self, sub: Subscription) -> bool:
        """Whether ``sub``'s target answered a NOTIFY before (any subscription's)."""
        if (sub.dest if sub.transport == "udp" else (sub.transport, sub.dest)) \
                in self._verified_targets:
            sub.verified = True
            sub.budget = 0
            return True
        return False

    def _handle_response(
        self, resp: Response, source: tuple[str, int], transport: str, conn_id: int | None,
        now: float,
    ) -> None:
        try:
            vias = resp.vias
            branch = vias[0].branch if vias else None
            method = resp.cseq[1]
        except ParseError:
            self.counters.sip_dropped += 1
            return
        if branch is None or method != "NOTIFY":
            self.counters.notify_unmatched_responses += 1
            return
        self._notify_response(branch, resp.status, source, transport, conn_id, now)

    def _notify_response(
        self, branch: str, status: int, source: tuple[str, int], transport: str,
        conn_id: int | None, now: float,
    ) -> None:
        """A response to one of our NOTIFYs counts only when it comes from where that NOTIFY
        went: the same connection, or (UDP, or a stream opened anew) the destination address.
        A forged response from anywhere else cannot end or disturb a subscription."""
        clients = self.client_transactions
        dest = clients.destination(branch)
        if dest is None:
            if status >= 200:
                self.counters.notify_unmatched_responses += 1
            return
        out, addr, out_conn = dest  # (transport, address, connection) the NOTIFY went to
        if transport != out or not ((conn_id is not None and conn_id == out_conn)
                                    or (source[0] == addr[0] and source[1] == addr[1])):
            self.counters.notify_responses_wrong_source += 1
            return
        sub = clients.on_response(branch, status, now)
        if sub is not None:
            if not sub.verified:
                self._verify(sub)
            self._notify_done(sub, status, now)

    def _notify_done(self, sub: Subscription, status: int, now: float) -> None:
        """The NOTIFY in flight was answered: the subscription is idle again, or what is owed
        goes now; a 404 or 481 ends it."""
        sub.inflight = None
        obs = self.observer
        if obs is not None and sub.note is not None:
            obs.answered(sub, status, now)
        phase = sub.phase
        if status in NOTIFY_REMOVE_STATUSES:
            advance(sub, TERMINATED)
            if sub.final_reason is None:
                self._remove(sub, "notify_rejected")
            return
        if status >= 300:
            self.counters.notify_failed += 1
        if phase == IN_FLIGHT:
            sub.phase = IDLE  # HOT_MOVES
        elif phase == FINAL_IN_FLIGHT:
            sub.phase = TERMINATED  # HOT_MOVES
        else:  # IN_FLIGHT_DIRTY, TERMINATING: what is owed goes at once
            if phase == IN_FLIGHT_DIRTY:
                sub.phase = QUEUED  # HOT_MOVES
            self._notify(sub, self._body_to_send(sub), now)
            if self.observer is not None:
                self.observer.resent(sub, now, True)

    def _notify_timed_out(self, sub: Subscription, now: float) -> None:
        sub.inflight = None
        advance(sub, TERMINATED)
        if sub.note is not None and self.observer is not None:
            self.observer.timed_out(sub, now)
        self.counters.notify_timeouts += 1
        if sub.final_reason is None:
            self._remove(sub, "notify_timeout")

    def _terminate(self, sub: Subscription, reason: str, now: float) -> None:
        """Send the final NOTIFY now, or when the one in flight completes (never overlapping)."""
        sub.final_reason = reason
        phase = sub.phase
        if phase in BUSY:
            if phase in (IN_FLIGHT, IN_FLIGHT_DIRTY):
                advance(sub, TERMINATING)
            # RESOLVING: the NOTIFY sent once resolved is the final one
        else:
            self._notify(sub, self._body_to_send(sub), now)
            if self.observer is not None:
                self.observer.resent(sub, now, False)

    def _notify(self, sub: Subscription, body: RenderedBody, now: float) -> None:
        """:meth:`_send_notify`, with a failure confined to ``sub`` (see :meth:`_notify_broken`)."""
        try:
            self._send_notify(sub, body, now)
        except Exception as exc:
            self._notify_broken(sub, exc, now)

    def _notify_broken(self, sub: Subscription, exc: Exception, now: float) -> None:
        """A NOTIFY that could not be built ends its subscription, and only that one: counted,
        logged at most once a minute, and never in the way of fan-out, timers or shutdown."""
        self.counters.notify_errors += 1
        sub.inflight = None
        if sub.phase != TERMINATED:
            advance(sub, TERMINATED)
        self._remove(sub, "notify_error")
        if now < self._notify_error_logged_at + ERROR_LOG_INTERVAL:
            return
        count = self.counters.notify_errors - self._notify_error_logged_count
        self._notify_error_logged_at = now
        self._notify_error_logged_count = self.counters.notify_errors
        log.warning("NOTIFY for subscription %s (%s) failed, subscription removed: %r; "
                    "%d such failures since the last report",
                    sub.tag, sub.remote_uri, exc, count)

    def terminate_all(self, reason: str, now: float, limit: int | None = None) -> int:
        """Terminate up to ``limit`` subscriptions (shutdown); returns how many were ended."""
        ended = 0
        for sub in self.subscriptions:
            if limit is not None and ended >= limit:
                break
            self._remove(sub, "shutdown")
            self._terminate(sub, reason, now)
            ended += 1
        return ended

    def _body_to_send(self, sub: Subscription) -> RenderedBody:
        """The body of ``sub``'s presentity, marked sent (its tombstones are then announced)."""
        state = self.state
        name = sub.package.name
        body = state.body(name, sub.presentity)
        state.mark_sent(name, sub.presentity)
        return body
