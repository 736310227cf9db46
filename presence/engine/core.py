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

import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping

from busylamp.presence.engine.config import EngineConfig
from busylamp.presence.engine.counters import EngineCounters
from busylamp.presence.engine.dispatch import Dispatcher
from busylamp.presence.engine.events import (
    Event,
    ForgetMailbox,
    RequestResync,
    SendMessage,
    SubscriptionEnded,
)
from busylamp.presence.engine.notify import Notifier
from busylamp.presence.engine.policy import SubscribePolicy, _aliased
from busylamp.presence.engine.routing import Routing, _hostport
from busylamp.presence.limits import TokenBuckets
from busylamp.presence.packages.base import EventPackage
from busylamp.presence.registrations import RegistrationTable
from busylamp.presence.sip.transaction import ClientTransactions, ServerTransactions
from busylamp.presence.snapshots import SnapshotAssembler
from busylamp.presence.state import PresenceState
from busylamp.presence.subscriptions import Subscription, SubscriptionTable
from busylamp.presence.updates import Snapshot, Update


class PresenceEngine(Dispatcher, SubscribePolicy, Routing, Notifier):
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
        self._in_print: int | None = None  # its fingerprint, for a request over UDP
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
        self.counters = EngineCounters()

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

    def get_timer(self) -> float | None:
        """The absolute time at which :meth:`handle_timer` must next be called."""
        earliest = self.client_transactions.get_timer()
        for t in (
            self.server_transactions.get_timer(),
            self.state.get_timer(),
            self.subscriptions.next_expiry(),
            self.snapshots.get_timer(),
            self._backlog_due(),
        ):
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        return earliest

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
        self.counters.updates_applied += count
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

    def apply_registrations(self, checked: dict, now: float) -> None:
        """A validated registration(s) message from a bridge (see presence/registrations.py)."""
        aliases = self.config.domain_aliases
        self.registrations.apply(checked, now, lambda aor: _aliased(aor, aliases))

    def _remove(self, sub: Subscription, reason: str) -> None:
        """Take ``sub`` out of the table (when it is there), counted under ``reason``."""
        if self.subscriptions.remove(sub):
            self._ended(sub, reason)

    def _ended(self, sub: Subscription, reason: str) -> None:
        """``sub`` left the table: count it and tell the caller (:class:`SubscriptionEnded`);
        a mailbox's last watcher here releases it at the bridges (:class:`ForgetMailbox`)."""
        self.counters.add("subscriptions_removed_" + reason)
        package = sub.package.name
        events = self._events
        events.append(SubscriptionEnded(sub.tag, package, sub.presentity, sub.watcher, reason))
        if package == "message-summary" and \
                not self.subscriptions.watcher_count(package, sub.presentity):
            events.append(ForgetMailbox(sub.presentity))

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
