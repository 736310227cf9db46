"""The presence engine: SIP requests and presence updates in, responses and NOTIFYs out.

Sans-IO, in the manner of h11 and aioquic: the caller hands in received messages
(:meth:`PresenceEngine.receive`) and validated presence updates (:meth:`apply`), asks when the
engine next needs waking (:meth:`get_timer`), wakes it (:meth:`handle_timer`), and sends whatever
:meth:`messages_to_send` returns (one batched list of SIP messages). Everything else it wants
done (resolve a name, ask a bridge for a resync, claim or release a mailbox) it queues as typed
events (:mod:`~busylamp.presence.engine.events`) for :meth:`events`: the engine never calls out, so
nothing can re-enter it half-way through a call. There are no sockets, greenlets or clocks in here.

The hot path is NOTIFY fan-out: a presentity's body is rendered once per change by the package
(``PresenceState.body``, marked sent with ``PresenceState.mark_sent``); each watcher's NOTIFY is then spliced together from bytes kept on the
subscription and that prebuilt body with the watcher's own ``version``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from busylamp.presence.aor import aor_from_uri
from busylamp.presence.engine.events import (
    Event,
    ForgetMailbox,
    RequestResync,
    ResolveName,
    SendMessage,
    SubscriptionEnded,
    WatchMailbox,
)
from busylamp.presence.lifecycle import (
    BUSY,
    FINAL_IN_FLIGHT,
    IDLE,
    IN_FLIGHT,
    IN_FLIGHT_DIRTY,
    QUEUED,
    RESOLVING,
    TERMINATED,
    TERMINATING,
    advance,
)
from busylamp.presence.limits import Limits, TokenBuckets, in_networks, vouched_address
from busylamp.presence.packages.base import EventPackage, RenderedBody
from busylamp.presence.registrations import RegistrationTable
from busylamp.presence.sip.message import (
    ParseError,
    Request,
    Response,
    SipUri,
    build_response,
    is_token,
    parse_message,
    parse_name_addr,
    parse_uri,
    sniff_response,
)
from busylamp.presence.sip.tokens import token64
from busylamp.presence.sip.transaction import ClientTransactions, ServerTransactions
from busylamp.presence.snapshots import SNAPSHOT_TIMEOUT, SnapshotAssembler
from busylamp.presence.state import PresenceState
from busylamp.presence.subscriptions import Subscription, SubscriptionTable, new_tag
from busylamp.presence.updates import Snapshot, Update

log = logging.getLogger(__name__)

SERVER = "busylamp"
ALLOW = "SUBSCRIBE, NOTIFY, OPTIONS"
# Methods RFC 3261 and its extensions define; any other is unknown (501).
KNOWN_METHODS = frozenset(
    ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"]
)
SUPPORTED_EXTENSIONS = frozenset()
NOTIFY_REMOVE_STATUSES = frozenset((404, 481))
# Transports a Contact or route may name that this node can send over (no TLS, SCTP, WS).
SENDABLE_TRANSPORTS = frozenset(("udp", "tcp"))
ERROR_LOG_INTERVAL = 60.0

AWAITING_ADDRESS = "dns"  # Subscription.inflight while its destination's name is looked up


class Unresolved(tuple):
    """A destination (name, port) whose name is still to be resolved: its subscription's next
    NOTIFY waits for :meth:`PresenceEngine.resolved` instead of going out."""

    __slots__ = ()


@dataclass
class EngineConfig:
    """What the engine needs to know about its node and its policy."""

    contacts: Mapping[str, tuple[str, int]]  # transport -> advertised (host, port)
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int | None = None  # None: the package's own default
    domain_aliases: Mapping[str, str] = field(default_factory=dict)
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cross_domain: bool = False
    nat_send_to_source: bool = False
    t1: float = 0.5
    t2: float = 4.0
    timer_f: float | None = None  # None: 64*T1
    server_name: str = SERVER
    snapshot_timeout: float = SNAPSHOT_TIMEOUT  # an incomplete snapshot is dropped after this
    limits: Limits = field(default_factory=Limits)
    edges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # --edge
    fanout_batch: int = 500  # NOTIFYs built per step of a fan-out; the rest on the next step
    # Amplification (see docs/security.md): NOTIFY targets must be believable (the source, its IP,
    # or a route through an edge) unless notify_any_target; a target that never answered gets at
    # most amplification_factor times the SUBSCRIBE's bytes, without retransmissions (0: off).
    notify_any_target: bool = True
    amplification_factor: float = 0.0
    # --require-registration: an initial SUBSCRIBE needs a live registration of its watcher from
    # its origin (the source, or the phone an edge vouches for), as the switches report them
    require_registration: bool = False


class PresenceEngine:
    """Subscriptions, NOTIFY transactions and presentity state of one presence node."""

    def __init__(
        self,
        config: EngineConfig,
        state: PresenceState,
        packages: Mapping[str, EventPackage],
    ) -> None:
        self.config = config
        self.state = state
        self.packages = dict(packages)
        self.subscriptions = SubscriptionTable()
        self.subscriptions.on_unwatched = self._unwatched
        self.server_transactions = ServerTransactions(t1=config.t1)
        self.client_transactions = ClientTransactions(
            t1=config.t1, t2=config.t2, timer_f=config.timer_f
        )
        self.snapshots = SnapshotAssembler(config.snapshot_timeout)
        self.observer = None  # presence.history.History: per-lamp history hooks (optional)
        self.accepting = True  # False while warming up: SUBSCRIBE/OPTIONS get 503
        self._malformed_logged_at = float("-inf")
        self._malformed_logged_count = 0
        self._notify_error_logged_at = float("-inf")
        self._notify_error_logged_count = 0
        self._out: list[SendMessage] = []
        self._events: list[Event] = []
        self._resolving: dict[str, list[Subscription]] = {}
        self._trusted_cache: dict[str, bool] = {}
        self._edge_cache: dict[str, bool] = {}
        self._buckets = TokenBuckets(config.limits.subscribe_rate, config.limits.subscribe_burst) \
            if config.limits.subscribe_rate > 0 else None
        self._backlog: deque[Subscription] = deque()  # watchers whose fan-out NOTIFY is due
        self._backlog_at = 0.0
        self._verified_targets: dict[tuple, None] = {}  # (transport, address) that answered
        self._in_size = 0  # bytes of the message being handled
        self.registrations = RegistrationTable()  # filled from the bus (presence/registrations.py)
        # A per-process prefix lets the response sniffer recognise our branches at a glance;
        # the 64 random bits after it make each branch unguessable.
        self._branch_prefix = "z9hG4bK" + os.urandom(4).hex() + "."
        self._allow_events = ", ".join(sorted(self.packages))
        self._server_header = config.server_name
        self._contact_hdr = {
            transport: f"<sip:{_hostport(host, port)};transport={transport}>"
            for transport, (host, port) in config.contacts.items()
        }
        self._via_sent_by = {
            transport: f"SIP/2.0/{transport.upper()} {_hostport(host, port)}"
            for transport, (host, port) in config.contacts.items()
        }
        self.counters: dict[str, int] = {
            "sip_requests_received": 0,
            "sip_responses_received": 0,
            "sip_malformed": 0,
            "sip_dropped": 0,
            "sip_untrusted": 0,
            "sip_retransmissions_received": 0,
            "subscribe_accepted": 0,
            "subscribe_rejected": 0,
            "subscribe_fetch": 0,
            "notify_sent": 0,
            "notify_failed": 0,
            "notify_timeouts": 0,
            "notify_unmatched_responses": 0,
            "notify_responses_wrong_source": 0,
            "notify_errors": 0,
            "subscriptions_removed_unsubscribe": 0,
            "subscriptions_removed_expired": 0,
            "subscriptions_removed_notify_rejected": 0,
            "subscriptions_removed_notify_timeout": 0,
            "subscriptions_removed_shutdown": 0,
            "subscriptions_removed_notify_error": 0,
            "subscriptions_removed_unresolvable": 0,
            "updates_applied": 0,
            "limit_total": 0,
            "limit_source": 0,
            "limit_watcher": 0,
            "limit_rate": 0,
            "limit_pending": 0,
            "subscribe_rate_dropped": 0,
            "target_refused": 0,
            "notify_minimal": 0,
            "notify_withheld": 0,
            "registration_refused": 0,
        }

    # -- output and timers --------------------------------------------------------------------

    def messages_to_send(self) -> list[SendMessage]:
        """Every SIP message (UDP datagram or stream message) queued since the last call, as one
        list: (transport, destination, bytes, connection id)."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """Every event (see :mod:`~busylamp.presence.engine.events`) queued since the last call,
        in order; the caller drains it after each input, after :meth:`messages_to_send`."""
        out, self._events = self._events, []
        return out

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
                    self.counters["target_refused"] += 1
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

    def get_timer(self) -> float | None:
        """The absolute time at which :meth:`handle_timer` must next be called."""
        deadlines = [
            t
            for t in (
                self.client_transactions.get_timer(),
                self.server_transactions.get_timer(),
                self.state.get_timer(),
                self.subscriptions.next_expiry(),
                self.snapshots.get_timer(),
                self._backlog_due(),
            )
            if t is not None
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        retransmits, timeouts = self.client_transactions.handle_timer(now)
        for dest, data in retransmits:
            transport, addr, conn_id = dest
            self._out.append((transport, addr, data, conn_id))
        for sub in timeouts:
            self._notify_timed_out(sub, now)
        self.server_transactions.handle_timer(now)
        self.snapshots.handle_timer(now)
        changed = self.state.handle_timer(now)
        if changed:
            if self.observer is not None:
                self.observer.expired(changed, now)
            self._fan_out(changed, now)
        for sub in self.subscriptions.pop_expired(now):
            self._ended(sub, "expired")
            self._terminate(sub, "timeout", now)
        if self._backlog:
            self._drain(now)

    # -- presence updates ---------------------------------------------------------------------

    def apply(self, items: Iterable[Update | Snapshot], now: float) -> int:
        """Apply validated updates and snapshots (a snapshot in parts once its last part is
        here); NOTIFY every watcher whose state changed."""
        changed: set[tuple[str, str]] = set()
        count = 0
        obs = self.observer
        for item in items:
            if isinstance(item, Snapshot):
                if item.parts > 1:  # each part is a message of the bridge's sequence
                    self.state.note_sequence(item.bridge_id, item.bridge_epoch, item.sequence)
                whole = self.snapshots.add(item, now)
                if whole is not None:  # the parts of a snapshot are applied as one
                    keys = self.state.apply_snapshot(whole, now)
                    if obs is not None:
                        obs.snapshot(whole, keys, now)
                    changed |= keys
            else:
                keys = self.state.apply(item, now)
                if obs is not None:
                    obs.updated(item, keys, now)
                changed |= keys
            count += 1
        self.counters["updates_applied"] += count
        if changed:
            self._fan_out(changed, now)
        self._request_resyncs()
        return count

    def _request_resyncs(self) -> None:
        """The gaps the state recorded become :class:`RequestResync` events (one per bridge)."""
        gaps = self.state.pending_gaps
        if gaps:
            self._events.extend(RequestResync(bridge_id, gaps[bridge_id]) for bridge_id in sorted(gaps))
            gaps.clear()

    def _fan_out(self, changed: Iterable[tuple[str, str]], now: float) -> None:
        """Queue a NOTIFY for every watcher of what changed, then send the first batch.

        The rest go out ``fanout_batch`` at a time from :meth:`handle_timer` (due at once), so a
        presentity with tens of thousands of watchers never holds the caller's loop for long.
        A queued watcher is QUEUED (presence/lifecycle.py); it gets the state as it is when its
        turn comes. With a
        history (``observer``), each watcher points at the entry its next NOTIFY tells."""
        backlog = self._backlog
        obs = self.observer
        for package_name, presentity in changed:
            watchers = self.subscriptions.watchers(package_name, presentity)
            if not watchers:
                continue
            note = obs.fanout(package_name, presentity, watchers, now) if obs else None
            for sub in watchers:
                phase = sub.phase
                if phase == IDLE:
                    advance(sub, QUEUED)
                    if note is not None:
                        sub.note = note  # its answer lands there (presence/history.py)
                    backlog.append(sub)
                elif phase == QUEUED:  # already queued for a step of an earlier fan-out
                    if note is not None:
                        sub.note = note
                else:  # busy: the change goes out merged after the NOTIFY in flight
                    if phase == IN_FLIGHT:
                        advance(sub, IN_FLIGHT_DIRTY)
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
        live = self.subscriptions.get
        bodies: dict[tuple[str, str], RenderedBody] = {}
        while backlog and budget > 0 and not self._pending_full():
            sub = backlog.popleft()
            if sub.phase != QUEUED or live(sub.tag) is not sub:
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

    # -- SIP input ----------------------------------------------------------------------------

    def receive(
        self, data: bytes, source: tuple[str, int], transport: str, conn_id: int | None, now: float
    ) -> None:
        """Handle one SIP message (a whole datagram, or one framed message off a stream)."""
        self._in_size = len(data)
        if data[:8] == b"SIP/2.0 ":
            sniffed = sniff_response(data)
            if sniffed is not None and sniffed[1].startswith(self._branch_prefix):
                # the answer to one of our NOTIFYs: no need for a full parse
                self.counters["sip_responses_received"] += 1
                self._notify_response(sniffed[1], sniffed[0], source, transport, conn_id, now)
                return
        try:
            message = parse_message(data, stream=transport != "udp")
        except ParseError as exc:
            self.counters["sip_malformed"] += 1
            self._log_malformed(source, exc.reason, now)
            if exc.request is None:
                self.counters["sip_dropped"] += 1
            elif self.config.trusted and not self._is_trusted(source[0]):
                self.counters["sip_untrusted"] += 1
                self._respond(exc.request, 403, "Source not trusted", source, transport,
                              conn_id, now)
            else:
                self._respond(exc.request, exc.status, exc.reason, source, transport, conn_id, now)
            return
        if isinstance(message, Response):
            self.counters["sip_responses_received"] += 1
            self._handle_response(message, source, transport, conn_id, now)
            return
        self.counters["sip_requests_received"] += 1
        try:
            self._handle_request(message, source, transport, conn_id, now)
        except ParseError as exc:
            self.counters["sip_malformed"] += 1
            self._respond(message, exc.status, exc.reason, source, transport, conn_id, now)

    def _log_malformed(self, source: tuple[str, int], reason: str, now: float) -> None:
        """One WARNING per minute at most, however much garbage arrives."""
        if now < self._malformed_logged_at + 60.0:
            return
        count = self.counters["sip_malformed"] - self._malformed_logged_count
        self._malformed_logged_at = now
        self._malformed_logged_count = self.counters["sip_malformed"]
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
            self.counters["sip_retransmissions_received"] += 1
            self._out.append((transport, source, previous, conn_id))
            return
        respond = self._responder(req, key, source, transport, conn_id, now)
        if self.config.trusted and not self._is_trusted(source[0]):
            # --trusted covers every request, in a dialog or not, and comes before any answer
            # that would tell an outsider about this node (489 Allow-Events, 481, OPTIONS)
            self.counters["sip_untrusted"] += 1
            if method == "SUBSCRIBE":
                self.counters["subscribe_rejected"] += 1
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
            origin = self._origin(req, source)
            if self._buckets is not None and not self._buckets.allow(origin, now):
                self.counters["limit_rate"] += 1
                # through an edge, a 503 or silence would make the edge mark this node down and
                # fail over (contrib/kamailio-edge): one phone's flood is that phone's 480
                via_edge = origin != source[0] or (bool(self.config.edges)
                                                   and self._is_edge(source[0]))
                if self.config.limits.rate_drop and not via_edge:
                    self.counters["subscribe_rate_dropped"] += 1
                    return
                # not kept for retransmissions: a flood must not fill the transaction table
                self.counters["subscribe_rejected"] += 1
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

    def _origin(self, req: Request, source: tuple[str, int]) -> str:
        """The address limits count against: the source, or for a request from a configured
        edge the address the edge vouches for in the Via below its own (see limits.py)."""
        ip = source[0]
        if not self.config.edges:
            return ip
        if not self._is_edge(ip):
            return ip
        return vouched_address(req) or ip

    def _is_edge(self, ip: str) -> bool:
        edge = self._edge_cache.get(ip)
        if edge is None:
            if len(self._edge_cache) >= 4096:
                self._edge_cache.clear()
            edge = self._edge_cache[ip] = in_networks(ip, self.config.edges)
        return edge

    def _over_limit(self, origin: str, watcher: str) -> tuple[str, str] | None:
        """(counter, reason) of the first limit a new subscription would exceed, or None."""
        limits = self.config.limits
        table = self.subscriptions
        if limits.max_subscriptions is not None and len(table) >= limits.max_subscriptions:
            return "limit_total", "Too many subscriptions"
        if self._pending_full():
            return "limit_pending", "Too many NOTIFYs pending"
        if limits.max_per_source is not None and \
                table.per_origin.get(origin, 0) >= limits.max_per_source:
            return "limit_source", "Too many subscriptions from this address"
        if limits.max_per_watcher is not None and \
                table.per_watcher.get(watcher, 0) >= limits.max_per_watcher:
            return "limit_watcher", "Too many subscriptions for this watcher"
        return None

    def _believable(self, dest: tuple[str, int], source: tuple[str, int]) -> bool:
        """Whether NOTIFYs may go to ``dest`` for a SUBSCRIBE from ``source``: the source's own
        IP address (any port), or a configured edge (a route set through it, or the edge's
        own address); any target with ``notify_any_target``. A host name is checked once it
        resolved (:meth:`resolved`)."""
        if self.config.notify_any_target or dest.__class__ is Unresolved:
            return True
        return dest[0] == source[0] or (bool(self.config.edges) and self._is_edge(dest[0]))

    def _set_budget(self, sub: Subscription, source: tuple[str, int], transport: str,
                    conn_id: int | None) -> None:
        """A new subscription's target is unverified until it answers, unless the SUBSCRIBE
        came over a stream (a handshake proved its source) and NOTIFYs take the same connection,
        or from a configured edge. Its budget: ``amplification_factor`` times the SUBSCRIBE's
        bytes, less the response when that went to the same address."""
        factor = self.config.amplification_factor
        if factor <= 0 or (conn_id is not None and sub.conn_id == conn_id) or \
                (self.config.edges and self._is_edge(source[0])):
            return
        sub.verified = False
        budget = int(factor * self._in_size)
        if self._out and sub.dest.__class__ is not Unresolved and sub.dest[0] == source[0]:
            budget -= len(self._out[-1][2])
        sub.budget = budget

    def _is_trusted(self, ip: str) -> bool:
        trusted = self._trusted_cache.get(ip)
        if trusted is None:
            if len(self._trusted_cache) >= 4096:
                self._trusted_cache.clear()
            trusted = self._trusted_cache[ip] = _trusted(ip, self.config.trusted)
        return trusted

    def _capabilities(self) -> list[tuple[str, str]]:
        accept = ", ".join(p.content_type for p in self.packages.values())
        return [("Allow", ALLOW), ("Allow-Events", self._allow_events), ("Accept", accept)]

    def _responder(
        self, req: Request, key: object, source: tuple[str, int], transport: str,
        conn_id: int | None, now: float,
    ) -> Callable[..., None]:
        reliable = transport != "udp"

        def respond(
            status: int, reason: str | None = None,
            headers: Iterable[tuple[str, str]] = (), to_tag: str | None = None,
            store: bool = True,
        ) -> None:
            data = build_response(
                req, status, reason, source=source,
                to_tag=to_tag or (new_tag() if status > 100 else None),
                headers=list(headers), server=self._server_header,
            )
            if store:
                self.server_transactions.store(key, data, reliable, now)
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
            self.counters["sip_dropped"] += 1
            return
        self._out.append((transport, source, data, conn_id))

    # -- SUBSCRIBE ----------------------------------------------------------------------------

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
            self.counters["limit_pending"] += 1
            self._reject(respond, 503, "Too many NOTIFYs pending",
                         [("Retry-After", str(self.config.limits.retry_after))])
            return
        if self.config.require_registration and \
                not self.registrations.allows(watcher_aor.lower(), origin, now):
            self.counters["registration_refused"] += 1
            self._reject(respond, 403, "Watcher not registered from this address")
            return
        if expires:
            over = self._over_limit(origin, watcher_aor)
            if over is not None:
                counter, reason = over
                self.counters[counter] += 1
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
            source=shared(source),
            origin=shared(origin),
            watcher=shared(watcher_aor),
        )
        if not self._believable(dest, source):
            self.counters["target_refused"] += 1
            self._reject(respond, 403, "Contact is not at the source address")
            return
        self.counters["subscribe_accepted"] += 1
        respond(200, None, self._ok_headers(sub, expires), to_tag=sub.tag)
        self._set_budget(sub, source, transport, conn_id)
        body = self.state.body(package.name, presentity)
        self.state.mark_sent(package.name, presentity)
        if expires == 0:
            # A fetch (RFC 6665 4.4.3): one terminated NOTIFY with the state, nothing kept.
            self.counters["subscribe_fetch"] += 1
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
                    self.counters["target_refused"] += 1
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
        respond(200, None, self._ok_headers(sub, expires), to_tag=to_tag)
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

    def _package_for(self, req: Request, respond: Callable[..., None]) -> EventPackage | None:
        event = req.event
        package = self.packages.get(event[0]) if event is not None else None
        if package is None:
            self._reject(respond, 489, None, [("Allow-Events", self._allow_events)])
            return None
        accepts = req.headers.get_all("Accept")
        if accepts and not _accepts(accepts, package):
            self._reject(respond, 406, None, [("Accept", package.content_type)])
            return None
        return package

    def _expires_for(
        self, req: Request, package: EventPackage, respond: Callable[..., None],
        to_tag: str | None = None,
    ) -> int | None:
        expires = req.expires
        if expires is None:  # the default is ours: always within the bounds, never a 423
            default = self.config.default_expires or package.default_expires
            return max(self.config.min_expires, min(default, self.config.max_expires))
        if expires == 0:
            return 0
        if expires < self.config.min_expires:
            self._reject(
                respond, 423, None, [("Min-Expires", str(self.config.min_expires))], to_tag
            )
            return None
        return min(expires, self.config.max_expires)

    def _reject(
        self, respond: Callable[..., None], status: int, reason: str | None,
        headers: Iterable[tuple[str, str]] = (), to_tag: str | None = None,
    ) -> None:
        self.counters["subscribe_rejected"] += 1
        respond(status, reason, headers, to_tag=to_tag)

    def _ok_headers(self, sub: Subscription, expires: int) -> list[tuple[str, str]]:
        return [
            ("Expires", str(expires)),
            ("Contact", self._contact_hdr.get(sub.transport) or next(iter(self._contact_hdr.values()))),
            ("Allow-Events", self._allow_events),
        ]

    def _dialog_target(
        self, req: Request, contact: str, source: tuple[str, int], transport: str,
        conn_id: int | None,
    ) -> tuple[tuple[str, ...] | None, tuple[str, int], str, int | None]:
        """The checked route set and destination of a new dialog's NOTIFYs.

        Raises ParseError (with the status and reason to answer) when anything a NOTIFY would
        be built from is unusable: a tag that is no token, a From or To URI that would not fit
        in ``<...>``, a Contact or route entry that is no SIP URI, or a first hop (the first
        route, else the Contact) this node cannot send to: ``sips:`` or ``transport=tls`` need
        TLS, which it has not. Behind a proxy the Contact may be anything the proxy can reach.
        """
        if not is_token(req.from_.tag or ""):
            raise ParseError("Bad From tag")
        for what, text in (("From", req.from_.uri), ("To", req.to.uri)):
            try:
                parse_uri(text)
            except ParseError:
                raise ParseError(f"Bad {what} URI") from None
        target = _dialog_uri(contact, "Contact")
        route: list[str] = []
        first: SipUri | None = None
        for value in req.record_routes:
            try:
                entry = parse_name_addr(value)
            except ParseError:
                raise ParseError("Bad Record-Route") from None
            uri = _dialog_uri(entry.uri, "Record-Route")
            if first is None:
                first = uri
            route.append(str(entry))
        what = "Record-Route" if first else "Contact"
        _sendable(first or target, what)
        dest, out, out_conn = self._destination(target, first, source, transport, conn_id)
        _reachable(dest, source, what)
        return (tuple(route) or None), dest, out, out_conn

    def _destination(
        self, contact: SipUri, route: SipUri | None, source: tuple[str, int],
        transport: str, conn_id: int | None,
    ) -> tuple[tuple[str, int], str, int | None]:
        """Where this dialog's NOTIFYs go: (address, transport, stream connection to reuse).

        The first route when there is a route set (loose or strict), else the Contact; a watcher
        that subscribed over a stream gets its NOTIFYs over that same connection while it is open
        (the transport falls back to connecting to the address). ``--nat-send-to-source`` sends to
        the address the SUBSCRIBE came from.
        """
        if self.config.nat_send_to_source:
            return source, transport, conn_id
        uri = route or contact
        out = (uri.params.get("transport") or "").lower()
        if not out:
            out = transport if route is None else "udp"
        if out not in self.config.contacts:
            out = transport
        address = _ip_address(uri.host)
        if address is None:  # a name: resolved when the first NOTIFY is due, off the loop
            reuse = out != "udp" and out == transport and route is None
            return Unresolved((uri.host, uri.port or 5060)), out, conn_id if reuse else None
        dest = (address, uri.port or 5060)
        reuse = out != "udp" and out == transport and (route is None or dest == source)
        return dest, out, conn_id if reuse else None

    # -- NOTIFY ---------------------------------------------------------------------------------

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
        if sub.final_reason is not None:
            sub_state = "terminated;reason=" + sub.final_reason
        else:
            sub_state = f"active;expires={max(1, round(sub.expires_at - now))}"
        payload = body.for_version(sub.version) if body.versioned else body.prefix
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
                self.counters["notify_withheld"] += 1
                return
            self.counters["notify_minimal"] += 1
            # the state is still owed: it follows once this one is answered
            advance(sub, IN_FLIGHT_DIRTY if sub.final_reason is None else FINAL_IN_FLIGHT)
        else:
            if body.versioned:
                sub.version += 1
            advance(sub, IN_FLIGHT if sub.final_reason is None else FINAL_IN_FLIGHT)
        sub.inflight = branch
        dest = (transport, sub.dest, sub.conn_id)
        if verified:
            self.client_transactions.start(branch, data, dest, transport != "udp", now, sub)
        else:  # no retransmissions to a target that may never have asked for anything
            sub.budget -= len(data)
            self.client_transactions.start(branch, b"", dest, True, now, sub)
        self.counters["notify_sent"] += 1
        self._out.append((transport, sub.dest, data, sub.conn_id))

    def _verify(self, sub: Subscription) -> None:
        """``sub``'s target answered: it asked for NOTIFYs, no budget applies to it any more."""
        sub.verified = True
        targets = self._verified_targets
        if len(targets) >= 65_536:
            targets.clear()  # forgetting costs one small first NOTIFY per target, never memory
        targets[(sub.transport, sub.dest)] = None

    def _target_verified(self, sub: Subscription) -> bool:
        """Whether ``sub``'s target answered a NOTIFY before (any subscription's)."""
        if (sub.transport, sub.dest) in self._verified_targets:
            sub.verified = True
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
            self.counters["sip_dropped"] += 1
            return
        if branch is None or method != "NOTIFY":
            self.counters["notify_unmatched_responses"] += 1
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
                self.counters["notify_unmatched_responses"] += 1
            return
        if not _from_destination(dest, source, transport, conn_id):
            self.counters["notify_responses_wrong_source"] += 1
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
            self.counters["notify_failed"] += 1
        if phase == IN_FLIGHT:
            advance(sub, IDLE)
        elif phase == FINAL_IN_FLIGHT:
            advance(sub, TERMINATED)
        else:  # IN_FLIGHT_DIRTY, TERMINATING: what is owed goes at once
            if phase == IN_FLIGHT_DIRTY:
                advance(sub, QUEUED)
            self._notify(sub, self._body_to_send(sub), now)
            if self.observer is not None:
                self.observer.resent(sub, now, True)

    def _notify_timed_out(self, sub: Subscription, now: float) -> None:
        sub.inflight = None
        advance(sub, TERMINATED)
        if sub.note is not None and self.observer is not None:
            self.observer.timed_out(sub, now)
        self.counters["notify_timeouts"] += 1
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
        self.counters["notify_errors"] += 1
        sub.inflight = None
        if sub.phase != TERMINATED:
            advance(sub, TERMINATED)
        self._remove(sub, "notify_error")
        if now < self._notify_error_logged_at + ERROR_LOG_INTERVAL:
            return
        count = self.counters["notify_errors"] - self._notify_error_logged_count
        self._notify_error_logged_at = now
        self._notify_error_logged_count = self.counters["notify_errors"]
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

    # -- control and admin ----------------------------------------------------------------------

    def apply_registrations(self, checked: dict, now: float) -> None:
        """A validated registration(s) message from a bridge (see presence/registrations.py)."""
        aliases = self.config.domain_aliases
        self.registrations.apply(checked, now, lambda aor: _aliased(aor, aliases))

    def _unwatched(self, key: tuple[str, str]) -> None:
        if key[0] == "message-summary":
            self._events.append(ForgetMailbox(key[1]))

    def _remove(self, sub: Subscription, reason: str) -> None:
        """Take ``sub`` out of the table (when it is there), counted under ``reason``."""
        if self.subscriptions.remove(sub):
            self._ended(sub, reason)

    def _ended(self, sub: Subscription, reason: str) -> None:
        """``sub`` left the table: count it and tell the caller (:class:`SubscriptionEnded`)."""
        self.counters["subscriptions_removed_" + reason] += 1
        self._events.append(SubscriptionEnded(sub.tag, sub.package.name, sub.presentity,
                                              sub.watcher, reason))

    def _body_to_send(self, sub: Subscription) -> RenderedBody:
        """The body of ``sub``'s presentity, marked sent (its tombstones are then announced)."""
        state = self.state
        name = sub.package.name
        body = state.body(name, sub.presentity)
        state.mark_sent(name, sub.presentity)
        return body

    def iter_subscriptions(
        self, presentity: str | None = None, watcher: str | None = None, event: str | None = None
    ) -> Iterator[Subscription]:
        if presentity is not None:
            packages = [event] if event else list(self.packages)
            for name in packages:
                for sub in self.subscriptions.watchers(name, presentity):
                    if watcher is None or watcher in sub.remote_uri:
                        yield sub
            return
        for sub in self.subscriptions:
            if event is not None and sub.package.name != event:
                continue
            if watcher is not None and watcher not in sub.remote_uri:
                continue
            yield sub


def _hostport(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _dialog_uri(text: str, what: str) -> SipUri:
    """``text`` parsed, when it can stand in a NOTIFY as Request-URI or Route: a ``sip:`` or
    ``sips:`` URI without headers."""
    try:
        uri = parse_uri(text)
    except ParseError:
        raise ParseError(f"Bad {what} URI") from None
    if uri.scheme not in ("sip", "sips"):
        raise ParseError(f"{what} is not a SIP URI")
    if uri.headers is not None:
        raise ParseError(f"Headers in {what} URI")
    if uri.port == 0:
        raise ParseError(f"Bad {what} port")
    return uri


def _sendable(uri: SipUri, what: str) -> None:
    """Raise ParseError unless this node can send to ``uri`` (a first hop): no TLS, SCTP, WS."""
    if uri.scheme == "sips":
        raise ParseError(f"SIPS {what} needs TLS, which this node does not offer", 416)
    out = uri.params.get("transport")
    if out is not None and out.lower() not in SENDABLE_TRANSPORTS:
        raise ParseError(f"{what} transport {out} not offered by this node")


def _unreachable(address: str, source_ip: str) -> str | None:
    """Why NOTIFYs may not go to ``address`` for a SUBSCRIBE from ``source_ip``, or None: never to
    an unspecified, multicast or broadcast address, and to a loopback address only for a sender
    on this host (a remote sender must not aim NOTIFYs at this host's local services)."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_multicast or address == "255.255.255.255":
        return "an unspecified, multicast or broadcast address"
    if ip.is_loopback:
        try:
            local = ipaddress.ip_address(source_ip).is_loopback
        except ValueError:
            local = False
        if not local:
            return "a loopback address"
    return None


def _reachable(dest: tuple[str, int], source: tuple[str, int], what: str) -> None:
    """Raise ParseError when ``dest`` (an address, not a name) is one NOTIFYs may not go to."""
    if dest.__class__ is Unresolved:
        return
    reason = _unreachable(dest[0], source[0])
    if reason is not None:
        raise ParseError(f"{what} points at {reason}")


def _ip_address(host: str) -> str | None:
    """A URI host that is an IP address, as a socket wants it: without brackets and in its one
    canonical text (so responses, whose source the kernel spells canonically, match it); None
    for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _routed(route: tuple[str, ...], target: str) -> tuple[str, str]:
    """(Request-URI, Route header lines) of a NOTIFY in a dialog with a route set.

    Strict routing (RFC 3261 12.2.1.1) when the first route has no ``lr``: it becomes the
    Request-URI and the remote target goes last. Cached: a phone's dialogs share both inputs.
    """
    first = parse_name_addr(route[0]).uri
    if "lr" in parse_uri(first).params:
        return target, "".join(f"Route: {r}\r\n" for r in route)
    return first, "".join(f"Route: {r}\r\n" for r in route[1:]) + f"Route: <{target}>\r\n"


def _from_destination(
    dest: tuple[str, tuple[str, int], int | None], source: tuple[str, int], transport: str,
    conn_id: int | None,
) -> bool:
    """Whether a response arriving from ``source`` (``conn_id`` on streams) can answer a request
    sent to ``dest`` (transport, address, connection)."""
    out, addr, out_conn = dest
    if transport != out:
        return False
    if conn_id is not None and conn_id == out_conn:
        return True
    return source[0] == addr[0] and source[1] == addr[1]


def _aliased(aor: str, aliases: Mapping[str, str]) -> str:
    user, _, domain = aor.rpartition("@")
    return f"{user}@{aliases.get(domain, domain)}"


def _domain(aor: str) -> str:
    return aor.rpartition("@")[2]


def _trusted(ip: str, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def _accepts(accepts: list[str], package: EventPackage) -> bool:
    offered = {t.lower() for t in package.accept}
    for value in accepts:
        media = value.split(";", 1)[0].strip().lower()
        if not media or media == "*/*" or media in offered:
            return True
        if media.endswith("/*") and any(t.startswith(media[:-1]) for t in offered):
            return True
    return False
