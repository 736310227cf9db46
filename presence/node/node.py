"""A running presence node: the engine behind SIP listeners, the HTTP API and the update bus.

This is the gevent edge around the sans-IO :class:`~presence.engine.PresenceEngine`. One greenlet
(the *clock loop*) sleeps until the engine's next deadline; the SIP reader greenlets, the HTTP
handlers and the bus consumer call into the engine directly (one OS thread, cooperative) and flush
what it wants sent. No greenlet or timer exists per subscription or per transaction.

``PresenceNode`` (lifecycle and inputs) is put together from one module per job: ``loop`` (the
clock loop, draining the engine's messages and events), ``housekeeping`` (the garbage collector),
``tail`` (``/tail`` readers), ``views`` (the admin API's read-only views) and ``warming`` (warm
start and ESL warm-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import gevent.event

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.history import History, history_metrics
from busylamp.presence.node.housekeeping import Housekeeping
from busylamp.presence.node.loop import EngineLoop
from busylamp.presence.node.resolver import Resolver
from busylamp.presence.node.tail import Tails, TailSubscription
from busylamp.presence.node.transport import SipTransports
from busylamp.presence.node.views import AdminViews
from busylamp.presence.node.warming import Warming
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.registrations import KINDS as REGISTRATION_KINDS
from busylamp.presence.registrations import RegistrationError, parse_registration
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import UpdateError, parse_update

log = logging.getLogger(__name__)

# A publish reads the answers queued on the UDP sockets first, unless they were read this
# recently: at thousands of publishes a second one system call a millisecond drains them as
# well as one per publish (the socket buffer holds far more than a millisecond of answers)
ANSWER_POLL_INTERVAL = 0.001


class PresenceNode(EngineLoop, Housekeeping, Tails, AdminViews, Warming):
    """The engine, its SIP transports and its wake-up loop; implements the API's NodeControl."""

    def __init__(
        self,
        engine_config: EngineConfig,
        *,
        package_options: PackageOptions | None = None,
        node_id: str = "busylamp",
        clock: Callable[[], float] = time.monotonic,
        on_control: Callable[[dict], None] | None = None,
        transport_options: dict | None = None,
        resolver_options: dict | None = None,
        history: History | None = None,
    ) -> None:
        self.node_id = node_id
        self.clock = clock
        self.state = PresenceState(REGISTRY, package_options or PackageOptions())
        self.engine = PresenceEngine(engine_config, self.state, REGISTRY)
        self._control_sink = on_control
        # a stream connection that carries a subscription is never closed as unused or evicted
        self.transports = SipTransports(
            self._on_sip, in_use=lambda conn_id: self.engine.subscriptions.uses_conn(conn_id),
            on_backlog=self._on_backlog, on_datagram=self._on_datagram,
            after_datagrams=self._after_datagrams, **(transport_options or {}))
        self._answers_read_at = float("-inf")  # when a batch of datagrams was last handled
        self._overload_logged_at = float("-inf")
        self._full_since: float | None = None  # when the UDP receive queue became too full
        self._drops_seen: int | None = None  # the kernel's UDP drop count at the last tick
        self._dropping_since: float | None = None  # first and last of the ticks in a row
        self._last_drop_at = float("-inf")
        self.resolver = Resolver(self._on_resolved, clock=clock, **(resolver_options or {}))
        self.listeners: list[tuple[str, tuple[str, int]]] = []
        self.ready = True
        self.started_at = time.time()
        self.publish_counters = {"accepted": 0, "rejected": 0, "bus_malformed": 0}
        self._tails: set[TailSubscription] = set()
        self._wake = gevent.event.Event()
        self._deadline: float | None = None
        self._loop: gevent.Greenlet | None = None
        self._stopping = False
        self._warm_buffer: list[dict] | None = None
        self.extra_metrics: list[Callable] = []  # renderers of other parts of this process
        self.history = history or History()
        self._observe(engine_config)
        self.extra_metrics.append(history_metrics(self.history))

    def _observe(self, engine_config: EngineConfig) -> None:
        """Hook the per-lamp history into the engine (presence/history.py)."""
        self.history.attach(self.state, self.engine.counters, t1=engine_config.t1,
                            t2=engine_config.t2)
        # --history 0: no hooks at all (the NOTIFY stages go with it)
        self.engine.observer = self.history if self.history.enabled else None

    def listen(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """Bind one SIP listener; raises OSError when the address is unavailable."""
        bound = self.transports.listen(transport, host, port)
        self.listeners.append((transport, bound))
        return bound

    def reconfigure(self, engine_config: EngineConfig) -> None:
        """Replace the engine configuration (before start: the advertised addresses are only
        known once the listeners are bound)."""
        if self._loop is not None or len(self.engine.subscriptions):
            raise RuntimeError("reconfigure() is for a node that has not started")
        self.engine = PresenceEngine(engine_config, self.state, REGISTRY)
        self._observe(engine_config)

    def start(self) -> None:
        if self._loop is None:
            self._loop = gevent.spawn(self._clock_loop)
            self._housekeeper = gevent.spawn(self._housekeeping)

    def stop(self, *, terminate: bool = False, rate: int = 500, timeout: float = 10.0) -> None:
        """Stop the node; with ``terminate``, first end subscriptions at ``rate`` NOTIFY/s
        (``terminated;reason=deactivated``) for at most ``timeout`` seconds, so phones move to
        another node at once; what is left then is dropped (those phones move at refresh)."""
        self.engine.accepting = False  # new SUBSCRIBEs get 503: the edge sends them elsewhere
        self.ready = False
        if terminate:
            self.shutdown_subscriptions(rate, timeout)
        self._stopping = True
        self._wake.set()
        if self._loop is not None:
            self._loop.join(timeout=2)
            self._loop.kill()
            self._housekeeper.kill()
            self._loop = None
        self.resolver.close()
        self.transports.close()

    def shutdown_subscriptions(self, rate: int, timeout: float = 10.0) -> int:
        """Send ``terminated;reason=deactivated`` at ``rate``/s for up to ``timeout`` seconds."""
        ended = 0
        batch = max(1, rate // 10)
        deadline = time.monotonic() + timeout
        while len(self.engine.subscriptions) and time.monotonic() < deadline:
            ended += self.engine.terminate_all("deactivated", self.clock(), limit=batch)
            self._flush()
            gevent.sleep(0.1)
        left = len(self.engine.subscriptions)
        if left:
            log.warning("shutdown: %d subscriptions terminated, %d dropped after %.0fs "
                        "(raise --shutdown-notify-rate or --shutdown-timeout to move them all)",
                        ended, left, timeout)
        return ended

    def _on_backlog(self, fill: float) -> None:
        """The transports measured the UDP receive queue: once it has stayed past
        ``--shed-backlog`` for ``Limits.shed_after`` seconds the engine refuses new SUBSCRIBEs
        (503) until the queue drains (a WARNING a minute at most)."""
        limits = self.engine.config.limits
        now = self.clock()
        if limits.shed_backlog and fill >= limits.shed_backlog:
            if self._full_since is None:
                self._full_since = now
        else:
            self._full_since = None
        self._set_overloaded(now, fill)

    def _on_drops(self, drops: int) -> None:
        """The kernel's count of datagrams dropped on the UDP sockets, read every housekeeping
        tick. Drops seen by every tick for ``Limits.shed_after`` seconds are overload too: a
        queue that is full most of the time, but drained now and then, never stays past
        ``--shed-backlog`` for that long, and the input it loses comes back as
        retransmissions. A tick that sees no new drop ends it. (Ticks, not a time between
        drops: under such load the ticks themselves come late.)"""
        now = self.clock()
        if self._drops_seen is not None and drops > self._drops_seen:
            if self._dropping_since is None:
                self._dropping_since = now
            self._last_drop_at = now
        else:
            self._dropping_since = None
        self._drops_seen = drops
        self._set_overloaded(now, self.transports.backlog)

    def _set_overloaded(self, now: float, fill: float) -> None:
        limits = self.engine.config.limits
        by_fill = self._full_since is not None and now - self._full_since >= limits.shed_after
        by_drops = (bool(limits.shed_backlog) and self._dropping_since is not None
                    and self._last_drop_at - self._dropping_since >= limits.shed_after)
        overloaded = by_fill or by_drops
        if (overloaded and not self.engine.overloaded
                and now >= self._overload_logged_at + 60.0):
            self._overload_logged_at = now
            if by_fill:
                log.warning("SIP input queue %.0f%% full: new SUBSCRIBEs get 503 until it "
                            "drains (%d refused so far)", 100 * fill,
                            self.engine.counters.limit_overload)
            else:
                log.warning("SIP input lost: the kernel has been dropping datagrams for "
                            "%.1f s; new SUBSCRIBEs get 503 until that stops (%d refused so "
                            "far)", self._last_drop_at - self._dropping_since,
                            self.engine.counters.limit_overload)
        self.engine.overloaded = overloaded

    def _on_sip(self, data: bytes, source: tuple[str, int], transport: str, conn_id: int | None) -> None:
        """One SIP message (off a stream); then what the engine's answer needs."""
        self.engine.receive(data, source, transport, conn_id, self.clock())
        self._after_sip()

    def _on_datagram(self, data: bytes, source: tuple[str, int], transport: str,
                     conn_id: int | None) -> None:
        """One datagram of a received batch: :meth:`_after_sip` runs once after the batch."""
        self.engine.receive(data, source, transport, conn_id, self.clock())

    def _after_datagrams(self) -> None:
        """A received batch of datagrams was handled: answer it (:meth:`_after_sip`)."""
        self._answers_read_at = self.clock()
        self._after_sip()

    def _after_sip(self) -> None:
        """Send what the engine answered and wake the clock loop if a deadline moved."""
        # only what the engine sent can have started a timer (a NOTIFY transaction, a stored
        # response, a new subscription's expiry); a plain 200 to a NOTIFY only ends one, which may
        # let a fan-out held back by the pending-NOTIFY limit go on
        if self._flush() or self.engine.backlog:
            self._poke()
        if self.history.pending:
            self.history.flushed(self.clock())

    def publish(self, messages: list) -> int:
        """Apply validated updates/snapshots (from the HTTP API or the bus)."""
        # answers to earlier NOTIFYs first: under load, new work must not push them out of the
        # socket buffer (each lost answer is a retransmitted NOTIFY, more load still); with no
        # NOTIFY transaction open there is no answer to wait for (and no system call to spend),
        # nor within ANSWER_POLL_INTERVAL of the last read
        now = self.clock()
        if len(self.engine.client_transactions) and \
                now - self._answers_read_at >= ANSWER_POLL_INTERVAL:
            self._answers_read_at = now
            self.transports.poll_udp()
            now = self.clock()
        sent = self.engine.counters["notify_sent"]
        applied = self.engine.apply(messages, now)
        self.publish_counters["accepted"] += applied
        self._flush()
        sent = self.engine.counters["notify_sent"] - sent
        if sent or self.history.pending:  # stage applied_to_notify (presence/history.py)
            flushed = self.clock()
            self.history.applied(now, flushed, sent)
            self.history.flushed(flushed)
        self._poke()
        if self._tails:
            self._to_tails(messages)
        return applied

    def on_bus_message(self, message: dict) -> None:
        """Bus/NSQ handler: validate one update dict and apply it; ValueError when malformed."""
        if self._warm_buffer is not None:
            self._warm_buffer.append(message)
            return
        if isinstance(message, dict) and message.get("Event-Name") in REGISTRATION_KINDS:
            try:
                checked = parse_registration(message)
            except RegistrationError:
                self.publish_counters["bus_malformed"] += 1
                raise
            self.engine.apply_registrations(checked, self.clock())
            return
        try:
            item = parse_update(message)
        except UpdateError:
            self.publish_counters["bus_malformed"] += 1
            raise
        self.publish([item])

    def count_bus_malformed(self, reason: str) -> None:
        """A bus message that never became a dict (not JSON, not an object)."""
        self.publish_counters["bus_malformed"] += 1


__all__ = ["PresenceNode", "TailSubscription"]
