"""SIP input: a received message parsed and dispatched, requests answered (transaction-stored
responses), initial and in-dialog SUBSCRIBEs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from busylamp.presence.engine.config import ALLOW, KNOWN_METHODS, SUPPORTED_EXTENSIONS
from busylamp.presence.engine.events import (
    WatchMailbox,
)
from busylamp.presence.engine.policy import _domain
from busylamp.presence.engine.routing import Unresolved, _dialog_uri, _reachable, _sendable
from busylamp.presence.lifecycle import (
    BUSY,
    IN_FLIGHT,
    IN_FLIGHT_DIRTY,
    advance,
)
from busylamp.presence.sip import (
    ParseError,
    Request,
    Response,
    build_response,
    parse_message,
    parse_name_addr,
    plain_new_subscribe,
    refusal,
    sniff_response,
)
from busylamp.presence.sip.build import build_ok
from busylamp.presence.subscriptions import Subscription, new_tag
from busylamp.wire.aor import aor_from_uri

log = logging.getLogger(__name__)


class Dispatcher:
    """Receive and request dispatch (a mixin of PresenceEngine)."""

    def receive(
        self, data: bytes, source: tuple[str, int], transport: str, conn_id: int | None, now: float
    ) -> None:
        """Handle one SIP message (a whole datagram, or one framed message off a stream)."""
        self._in_size = len(data)
        self._in_print = None
        if transport == "udp" and data[:8] != b"SIP/2.0 ":
            # a request resent unchanged is answered from the transaction before any parsing:
            # under overload the retransmissions then cost a hash, not a parse each
            data = bytes(data)
            self._in_print = self.server_transactions.fingerprint(data, source)
            previous = self.server_transactions.lookup_exact(self._in_print, data)
            if previous is not None:
                self.counters.sip_requests_received += 1
                self.counters.sip_retransmissions_received += 1
                self._out.append((transport, source, previous, conn_id))
                return
            if self.overloaded and self._shed_plain(data, source, now):
                return
        elif data[:8] == b"SIP/2.0 ":
            sniffed = sniff_response(data)
            if sniffed is not None and sniffed[1].startswith(self._branch_prefix):
                # the answer to one of our NOTIFYs: no need for a full parse
                self.counters.sip_responses_received += 1
                self._notify_response(sniffed[1], sniffed[0], source, transport, conn_id, now)
                return
        try:
            message = parse_message(data, stream=transport != "udp")
        except ParseError as exc:
            self.counters.sip_malformed += 1
            self._log_malformed(source, exc.reason, now)
            if exc.request is None:
                self.counters.sip_dropped += 1
            elif self.config.trusted and not self._is_trusted(source[0]):
                self.counters.sip_untrusted += 1
                self._respond(exc.request, 403, "Source not trusted", source, transport,
                              conn_id, now)
            else:
                self._respond(exc.request, exc.status, exc.reason, source, transport, conn_id, now)
            return
        if isinstance(message, Response):
            self.counters.sip_responses_received += 1
            self._handle_response(message, source, transport, conn_id, now)
            return
        self.counters.sip_requests_received += 1
        try:
            self._handle_request(message, source, transport, conn_id, now)
        except ParseError as exc:
            self.counters.sip_malformed += 1
            self._respond(message, exc.status, exc.reason, source, transport, conn_id, now)

    def _shed_plain(self, data: bytes, source: tuple[str, int], now: float) -> bool:
        """While overloaded, refuse a plain new SUBSCRIBE over UDP from its bytes, before any
        parsing (presence/sip/refuse.py): the same 503, counters and stored answer as
        :meth:`_handle_request` gives it through :meth:`_shed`. False (nothing done): the normal
        path, for anything else or an answer that comes before the 503 (an untrusted source's
        403, the 503 while warming up)."""
        if not self.accepting or (self.config.trusted and not self._is_trusted(source[0])):
            return False
        plain = plain_new_subscribe(data)
        if plain is None:
            return False
        transactions = self.server_transactions
        # the key the parsed request would have; without a magic cookie the RFC 2543 key needs
        # the From tag and CSeq parsed: not plain, the normal path
        key = transactions.branch_key(plain.top_via, "SUBSCRIBE", "udp")
        if key is None:
            return False
        self.counters.sip_requests_received += 1
        previous = transactions.lookup(key)
        if previous is not None:  # resent with other bytes: the answer it had
            self.counters.sip_retransmissions_received += 1
            self._out.append(("udp", source, previous, None))
            return True
        self.counters.limit_overload += 1
        self.counters.subscribe_rejected += 1
        answer = refusal(plain, 503, "Overloaded", to_tag=new_tag(), source=source,
                         headers=[("Retry-After", self._shed_delay(plain.call_id))],
                         server=self._server_header)
        transactions.store(key, answer, False, now, self._in_print)
        self._out.append(("udp", source, answer, None))
        return True

    def _log_malformed(self, source: tuple[str, int], reason: str, now: float) -> None:
        """One WARNING per minute at most, however much garbage arrives."""
        if now < self._malformed_logged_at + 60.0:
            return
        count = self.counters.sip_malformed - self._malformed_logged_count
        self._malformed_logged_at = now
        self._malformed_logged_count = self.counters.sip_malformed
        log.warning("malformed SIP from %s:%s (%s); %d malformed since the last report",
                    source[0], source[1], reason, count)

    def _handle_request(
        self, req: Request, source: tuple[str, int], transport: str, conn_id: int | None,
        now: float,
    ) -> None:
        method = req.method
        if method == "ACK":
            return  # only ever for an INVITE we rejected: nothing to do
        key = self.server_transactions.key(req, transport)
        previous = self.server_transactions.lookup(key)
        if previous is not None:
            self.counters.sip_retransmissions_received += 1
            self._out.append((transport, source, previous, conn_id))
            return
        respond = self._responder(req, key, source, transport, conn_id, now)
        if self.config.trusted and not self._is_trusted(source[0]):
            # --trusted covers every request, in a dialog or not, and comes before any answer
            # that would tell an outsider about this node (489 Allow-Events, 481, OPTIONS)
            self.counters.sip_untrusted += 1
            if method == "SUBSCRIBE":
                self.counters.subscribe_rejected += 1
            respond(403, "Source not trusted")
            return
        # (a CSeq method other than the request's never gets here: parse_message refuses it)
        # Extensions this UAS does not support (RFC 3261 8.2.2.3).
        required = [opt for opt in req.headers.get_all("Require") if opt.strip()]
        unsupported = [opt for opt in required if opt.strip().lower() not in SUPPORTED_EXTENSIONS]
        if unsupported and method != "CANCEL":
            respond(420, None, [("Unsupported", ", ".join(o.strip() for o in unsupported))])
            return
        to_tag = req.to.tag
        if not self.accepting and to_tag is None and method in ("SUBSCRIBE", "OPTIONS"):
            respond(503, "Warming up", [("Retry-After", "5")])
            return
        if to_tag is not None:
            self._in_dialog(req, to_tag, respond, source, transport, conn_id, now)
            return
        if method == "SUBSCRIBE":
            if self.overloaded:
                self._shed(req, respond)
                return
            origin = self._origin(req, source)
            if self._buckets is not None and not self._buckets.allow(origin, now):
                self.counters.limit_rate += 1
                # through an edge, a 503 or silence would make the edge mark this node down and
                # fail over (contrib/kamailio-edge): one phone's flood is that phone's 480
                via_edge = origin != source[0] or (bool(self.config.edges)
                                                   and self._is_edge(source[0]))
                if self.config.limits.rate_drop and not via_edge:
                    self.counters.subscribe_rate_dropped += 1
                    return
                # not kept for retransmissions: a flood must not fill the transaction table
                self.counters.subscribe_rejected += 1
                respond(480 if via_edge else 503, "Too many SUBSCRIBEs",
                        [("Retry-After", str(self.config.limits.retry_after))], store=False)
                return
            self._initial_subscribe(req, respond, source, transport, conn_id, now, origin)
        elif method == "OPTIONS":
            respond(200, None, self._capabilities())
        elif method == "CANCEL":
            respond(481, "Call/Transaction Does Not Exist")
        elif method in KNOWN_METHODS:
            respond(405, None, [("Allow", ALLOW)])
        else:
            respond(501, None, [("Allow", ALLOW)])

    def _responder(
        self, req: Request, key: object, source: tuple[str, int], transport: str,
        conn_id: int | None, now: float,
    ) -> Callable[..., None]:
        """``respond(status, reason, headers, to_tag, store)``: answer ``req``, the answer kept
        for its retransmissions unless ``store`` is false. With ``tail`` (the prebuilt rest of
        a 200, :meth:`_ok_tail`, in place of ``headers``; ``status`` is then 200) only the
        fields copied from ``req`` are made (:func:`build_ok`)."""
        reliable = transport != "udp"
        fingerprint = self._in_print

        def respond(
            status: int, reason: str | None = None,
            headers: Iterable[tuple[str, str]] = (), to_tag: str | None = None,
            store: bool = True, tail: str | None = None,
        ) -> None:
            if tail is not None:
                data = build_ok(req, source, to_tag, tail)
            else:
                data = build_response(
                    req, status, reason, source=source,
                    to_tag=to_tag or (new_tag() if status > 100 else None),
                    headers=headers, server=self._server_header,
                )
            if store:
                self.server_transactions.store(key, data, reliable, now, fingerprint)
            self._out.append((transport, source, data, conn_id))

        return respond

    def _respond(
        self, req: Request, status: int, reason: str | None, source: tuple[str, int],
        transport: str, conn_id: int | None, now: float,
    ) -> None:
        try:
            data = build_response(
                req, status, reason, source=source, to_tag=new_tag(), server=self._server_header
            )
        except (ParseError, ValueError):
            self.counters.sip_dropped += 1
            return
        self._out.append((transport, source, data, conn_id))

    def _initial_subscribe(
        self, req: Request, respond: Callable[..., None], source: tuple[str, int], transport: str,
        conn_id: int | None, now: float, origin: str | None = None,
    ) -> None:
        package = self._package_for(req, respond)
        if package is None:
            return
        expires = self._expires_for(req, package, respond)
        if expires is None:
            return
        from_ = req.from_
        if not from_.tag:
            self._reject(respond, 400, "Missing From tag")
            return
        contact = req.contact
        if contact is None:
            self._reject(respond, 400, "Missing Contact")
            return
        try:
            presentity = aor_from_uri(req.uri, self.config.domain_aliases)
            watcher_aor = aor_from_uri(from_.uri, self.config.domain_aliases)
        except ValueError:
            self._reject(respond, 400, "Bad Request-URI or From")
            return
        if not self.config.cross_domain and _domain(watcher_aor) != _domain(presentity):
            self._reject(respond, 403, "Cross-domain subscription not allowed")
            return
        origin = origin or source[0]
        if not expires and self._pending_full():  # a fetch sends a NOTIFY too
            self.counters.limit_pending += 1
            self._reject(respond, 503, "Too many NOTIFYs pending",
                         [("Retry-After", str(self.config.limits.retry_after))])
            return
        if self.config.require_registration and \
                not self.registrations.allows(watcher_aor.lower(), origin, now):
            self.counters.registration_refused += 1
            self._reject(respond, 403, "Watcher not registered from this address")
            return
        if expires:
            over = self._over_limit(origin, watcher_aor)
            if over is not None:
                counter, reason = over
                self.counters.add(counter)
                # the total and pending limits are the node's load (try again later, or another
                # node); the per-source and per-watcher ones are the sender's own doing
                if counter in ("limit_total", "limit_pending"):
                    self._reject(respond, 503, reason,
                                 [("Retry-After", str(self.config.limits.retry_after))])
                else:
                    self._reject(respond, 403, reason)
                return
        # Everything the NOTIFYs will carry is checked now, before the 200: a dialog that
        # cannot be notified is never accepted.
        try:
            route, dest, out_transport, out_conn = self._dialog_target(
                req, contact.uri, source, transport, conn_id
            )
        except ParseError as exc:
            self._reject(respond, exc.status, exc.reason)
            return
        shared = self.subscriptions.shared
        sub = Subscription(
            tag=new_tag(),
            call_id=req.call_id,
            remote_tag=from_.tag,
            package=package,
            presentity=shared(presentity),
            local_uri=shared(req.to.uri),
            remote_uri=shared(from_.uri),
            target=shared(contact.uri),
            route=shared(route) if route else None,
            transport=out_transport,
            dest=dest if dest.__class__ is Unresolved else shared(dest),
            conn_id=out_conn,
            remote_cseq=req.cseq[0],
            expires_at=now + expires,
            # (address, port), or (address, port, origin) behind an edge: see Subscription
            source=shared(source if origin == source[0] else (source[0], source[1], origin)),
            watcher=shared(watcher_aor),
        )
        if not self._believable(dest, source):
            self.counters.target_refused += 1
            self._reject(respond, 403, "Contact is not at the source address")
            return
        self.counters.subscribe_accepted += 1
        respond(200, to_tag=sub.tag, tail=self._ok_tail(sub.transport, expires))
        self._set_budget(sub, source, transport, conn_id)
        body = self.state.body(package.name, presentity)
        self.state.mark_sent(package.name, presentity)
        if expires == 0:
            # A fetch (RFC 6665 4.4.3): one terminated NOTIFY with the state, nothing kept.
            self.counters.subscribe_fetch += 1
            sub.final_reason = "timeout"
            self._notify(sub, body, now)
            if self.observer is not None:
                self.observer.subscribed(sub, now, 1)
            return
        # a mailbox's first watcher here claims it at the bridges (who query it, coalesced and
        # paced, and replay it on reconnect); its last one releases it (see bridge/mwi.py)
        first = package.name == "message-summary" and \
            not self.subscriptions.watcher_count(package.name, presentity)
        self.subscriptions.add(sub)
        self._notify(sub, body, now)
        if self.observer is not None:
            self.observer.subscribed(
                sub, now, self.subscriptions.watcher_count(package.name, presentity))
        if first:  # a state already known needs no query: the claim alone (mwi_watch)
            known = bool(self.state.records(package.name, presentity))
            self._events.append(WatchMailbox(presentity, known))

    def _in_dialog(
        self, req: Request, to_tag: str, respond: Callable[..., None], source: tuple[str, int],
        transport: str, conn_id: int | None, now: float,
    ) -> None:
        sub = self.subscriptions.get(to_tag)
        if sub is None or sub.call_id != req.call_id or sub.remote_tag != req.from_.tag:
            self._reject(respond, 481, "Subscription does not exist")
            return
        if req.method == "OPTIONS":
            respond(200, None, self._capabilities(), to_tag=to_tag)
            return
        if req.method != "SUBSCRIBE":
            respond(405, None, [("Allow", ALLOW)], to_tag=to_tag)
            return
        cseq = req.cseq[0]
        if cseq <= sub.remote_cseq:
            respond(500, "CSeq out of order", [("Retry-After", "1")], to_tag=to_tag)
            return
        event = req.event
        if event is None or event[0] != sub.package.name:
            respond(489, None, [("Allow-Events", self._allow_events)], to_tag=to_tag)
            return
        expires = self._expires_for(req, sub.package, respond, to_tag=to_tag)
        if expires is None:
            return
        contact = req.contact
        if contact is not None and contact.uri != sub.target:
            # SUBSCRIBE is a target refresh request (RFC 6665 4.1.2.1); an unusable new
            # target is refused and the dialog keeps the one it has.
            try:
                target = _dialog_uri(contact.uri, "Contact")
                first = _dialog_uri(parse_name_addr(sub.route[0]).uri, "Route") \
                    if sub.route else None
                _sendable(first or target, "Route" if first else "Contact")
                dest, out, out_conn = self._destination(target, first, source, transport, conn_id)
                _reachable(dest, source, "Route" if first else "Contact")
                if not self._believable(dest, source):
                    self.counters.target_refused += 1
                    raise ParseError("Contact is not at the source address", 403)
            except ParseError as exc:
                respond(exc.status, exc.reason, to_tag=to_tag)
                return
            if dest != sub.dest and self.config.amplification_factor > 0 and not \
                    (self.config.edges and self._is_edge(source[0])):
                # a new target is a stranger until it answers (a spoofed refresh must not aim
                # a verified dialog's NOTIFYs elsewhere)
                sub.verified = False
                sub.budget = 0
            sub.target = self.subscriptions.shared(contact.uri)
            sub.dest = dest if dest.__class__ is Unresolved else self.subscriptions.shared(dest)
            sub.transport = out
            self.subscriptions.set_conn(sub, out_conn)
        elif transport != "udp" and conn_id is not None and sub.route is None:
            self.subscriptions.set_conn(sub, conn_id)
        sub.remote_cseq = cseq
        respond(200, to_tag=to_tag, tail=self._ok_tail(sub.transport, expires))
        if not sub.verified:  # the watcher spoke again: so much more may go to it
            sub.budget += int(self.config.amplification_factor * self._in_size) - \
                len(self._out[-1][2])
        if expires == 0:
            self._remove(sub, "unsubscribe")
            self._terminate(sub, "timeout", now)
            return
        self.subscriptions.refresh(sub, now + expires)
        # Every accepted refresh gets an immediate NOTIFY (RFC 6665 4.2.1.2).
        if sub.phase in BUSY:
            if sub.phase == IN_FLIGHT:
                advance(sub, IN_FLIGHT_DIRTY)
        else:
            self._notify(sub, self._body_to_send(sub), now)
            if self.observer is not None:
                self.observer.resent(sub, now, False)
