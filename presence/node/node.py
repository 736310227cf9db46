"""A running presence node: the engine behind SIP listeners, the HTTP API and the update bus.

This is the gevent edge around the sans-IO :class:`~presence.engine.PresenceEngine`. One greenlet
(the *clock loop*) sleeps until the engine's next deadline; the SIP reader greenlets, the HTTP
handlers and the bus consumer call into the engine directly (one OS thread, cooperative) and flush
what it wants sent. No greenlet or timer exists per subscription or per transaction.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterator

import gevent
import gevent.event
import gevent.queue
from busylamp.presence.engine import (
    EngineConfig,
    Event,
    PresenceEngine,
    ResolveName,
    SubscriptionEnded,
)
from busylamp.presence.history import History, history_metrics
from busylamp.presence.metrics import render_metrics
from busylamp.presence.node.resolver import Resolver
from busylamp.presence.node.transport import SipTransports
from busylamp.presence.node.warmstart import PeerError, stream_snapshot
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.registrations import KINDS as REGISTRATION_KINDS
from busylamp.presence.registrations import RegistrationError, parse_registration
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import Snapshot, Update, UpdateError, parse_update

log = logging.getLogger(__name__)

TAIL_QUEUE_MAX = 10_000
GC_FREEZE_GROWTH = 2_000  # freeze the heap again after this many new subscriptions
HOUSEKEEPING_INTERVAL = 2.0


class TailSubscription:
    """One `/tail` reader: a bounded queue of applied update objects (oldest dropped when full)."""

    def __init__(self, node: PresenceNode) -> None:
        self._node = node
        self._queue: gevent.queue.Queue = gevent.queue.Queue(maxsize=TAIL_QUEUE_MAX)
        self.dropped = 0

    def put(self, message: dict) -> None:
        try:
            self._queue.put_nowait(message)
        except gevent.queue.Full:
            self.dropped += 1

    def get(self, timeout: float | None = None) -> dict | None:
        try:
            return self._queue.get(timeout=timeout)
        except gevent.queue.Empty:
            return None

    def close(self) -> None:
        self._node._tails.discard(self)


class PresenceNode:
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
            **(transport_options or {}))
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

    # -- lifecycle ----------------------------------------------------------------------------

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

    def _housekeeping(self) -> None:
        """Keep the cyclic garbage collector out of the latency: subscriptions, records and
        their strings are long-lived and acyclic (refcounting frees them), but a full collection
        would still walk all of them — a pause that grows with the table. After each bulk growth
        the heap is frozen (``gc.freeze``): later collections only walk younger objects."""
        frozen_at = 0
        history_at = 0  # the per-lamp history is long-lived and acyclic too
        while not self._stopping:
            gevent.sleep(HOUSEKEEPING_INTERVAL)
            count = len(self.engine.subscriptions)
            if (abs(count - frozen_at) >= GC_FREEZE_GROWTH
                    or self.history.added - history_at >= 10 * GC_FREEZE_GROWTH):
                gc.collect(1)  # let young garbage go first, not into the permanent generation
                gc.freeze()
                frozen_at = count
                history_at = self.history.added
                log.debug("gc: froze the heap at %d subscriptions (%d objects permanent)",
                          count, gc.get_freeze_count())

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

    def _clock_loop(self) -> None:
        engine = self.engine
        while not self._stopping:
            deadline = engine.get_timer()
            self._deadline = deadline
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping:
                break
            now = self.clock()
            if deadline is not None and now >= deadline:
                try:
                    engine.handle_timer(now)
                except Exception:  # an engine bug must not stop the node's clock
                    log.exception("engine timer handling failed")
                self._flush()
                if self.history.pending:
                    self.history.flushed(self.clock())
                if engine.backlog:
                    gevent.sleep(0)  # a big fan-out goes on in steps: let the readers in between

    def _poke(self) -> None:
        """Wake the clock loop when the engine's next deadline moved earlier."""
        deadline = self.engine.get_timer()
        if deadline is not None and (self._deadline is None or deadline < self._deadline):
            self._deadline = deadline
            self._wake.set()

    def _flush(self) -> bool:
        """Send what the engine queued, then act on its events (after the engine returned, so
        nothing done here re-enters it mid-call); True when anything was sent (and so maybe
        timed)."""
        engine = self.engine
        out = engine.messages_to_send()
        if out:
            send = self.transports.send
            for transport, dest, data, conn_id in out:
                send(transport, dest, data, conn_id)
        events = engine.events()
        if events:
            self._handle_events(events)
        return bool(out)

    def _handle_events(self, events: list[Event]) -> None:
        """The I/O the engine's events ask for (presence/engine/events.py)."""
        for event in events:
            kind = event.__class__
            if kind is ResolveName:
                self.resolver.lookup(event.name)  # a cached answer comes back (and flushes) at once
            elif kind is SubscriptionEnded:
                continue  # counted by the engine; nothing to do outside it
            else:  # RequestResync, WatchMailbox, ForgetMailbox: a message to the bridges
                self._on_control(event.control_message())

    def _on_resolved(self, name: str, address: str | None) -> None:
        self.engine.resolved(name, address, self.clock())
        if self._flush():
            self._poke()

    # -- inputs -------------------------------------------------------------------------------

    def _on_sip(self, data: bytes, source: tuple[str, int], transport: str, conn_id: int | None) -> None:
        self.engine.receive(data, source, transport, conn_id, self.clock())
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
        # socket buffer (each lost answer is a retransmitted NOTIFY, more load still)
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
            for item in messages:
                raw = item.raw if isinstance(item, Update) else {"Event-Name": "snapshot",
                                                                 "Switch-ID": item.switch_id}
                for tail in list(self._tails):
                    tail.put(raw)
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

    def prepare_warm_start(self) -> None:
        """Stop accepting SUBSCRIBEs and start buffering bus messages (call before the bus runs)."""
        self.ready = False
        self.engine.accepting = False
        if self._warm_buffer is None:
            self._warm_buffer = []

    def prepare_esl_warmup(self) -> None:
        """Answer new SUBSCRIBEs 503 (Retry-After) until :meth:`finish_esl_warmup`: right after a
        start the state holds no calls yet, and an idle lamp followed by the real one ~20 ms later
        is a wrong lamp (the bridge in this process is about to send its first snapshots)."""
        self.ready = False
        self.engine.accepting = False

    def finish_esl_warmup(self, first_round: gevent.event.Event, timeout: float) -> bool:
        """Serve once ``first_round`` is set (every switch answered or failed once), at the latest
        after ``timeout`` seconds; True when the switches were heard in time."""
        started = time.monotonic()
        heard = bool(first_round.wait(timeout))
        self.engine.accepting = True
        self.ready = True
        log.info("serving SUBSCRIBEs: %s after %.2fs",
                 "every switch's first snapshot (or failed connect) in" if heard
                 else "--esl-warmup ran out", time.monotonic() - started)
        return heard

    def warm_start(
        self, peers: list[str], *, token: str | None = None, resync: bool = False,
        resync_wait: float = 3.0,
    ) -> dict:
        """Fill the state before accepting SUBSCRIBEs (see presence/node/warmstart.py for the order).

        Buffers bus messages, imports the first reachable peer's snapshot (records, then its
        bridge marks), optionally asks the bridges to resync and waits ``resync_wait`` for their
        snapshots, then applies the buffer on top and starts accepting. Returns what happened.
        """
        self.prepare_warm_start()
        report: dict = {"peer": None, "records": 0, "skipped": 0, "buffered": 0}
        try:
            for peer in peers:
                try:
                    report.update(self._import_peer(peer, token))
                    report["peer"] = peer
                    break
                except PeerError as exc:
                    log.warning("warm start: %s; trying the next source", exc)
            if resync or report["peer"] is None and peers:
                self._on_control({"Event-Name": "resync", "Switch-ID": "*",
                                  "Reason": "warm start"})
                gevent.sleep(resync_wait)
        finally:
            buffered, self._warm_buffer = self._warm_buffer or [], None
            report["buffered"] = len(buffered)
            for message in buffered:
                with contextlib.suppress(UpdateError):  # counted as bus_malformed
                    self.on_bus_message(message)
            self.engine.accepting = True
            self.ready = True
            gc.collect(1)
            gc.freeze()  # the imported state is long-lived: keep it out of later collections
        log.info("warm start done: %s", report)
        return report

    def _import_peer(self, peer: str, token: str | None) -> dict:
        now = self.clock()
        records = skipped = 0
        marks: dict = {}
        for index, item in enumerate(stream_snapshot(peer, token)):
            if index == 0 and set(item) == {"marks"}:
                marks = item["marks"] or {}
                continue
            try:
                update = parse_update(item)
            except UpdateError:
                skipped += 1
                continue
            if isinstance(update, Update):
                self.state.apply(update, now, track_gaps=False)
                records += 1
            if records % 1000 == 0:
                gevent.sleep(0)  # a big snapshot must not starve the SIP readers
        self.state.import_marks({k: (int(v[0]), int(v[1])) for k, v in marks.items()})
        return {"records": records, "skipped": skipped}

    def count_bus_malformed(self, reason: str) -> None:
        """A bus message that never became a dict (not JSON, not an object)."""
        self.publish_counters["bus_malformed"] += 1

    def _on_control(self, message: dict) -> None:
        message.setdefault("Node-ID", self.node_id)
        if self._control_sink is not None:
            self._control_sink(message)

    # -- NodeControl (admin API) ----------------------------------------------------------------

    def subscriptions(
        self, *, presentity: str | None, watcher: str | None, event: str | None,
        cursor: str | None, limit: int,
    ) -> tuple[list[dict], str | None]:
        offset = int(cursor) if cursor and cursor.isascii() and cursor.isdigit() else 0
        offset = min(offset, 2**40)  # islice takes at most sys.maxsize
        now = self.clock()
        it = self.engine.iter_subscriptions(presentity, watcher, event)
        page = list(itertools.islice(it, offset, offset + limit + 1))  # the skip runs in C
        rows = [sub.as_dict(now) for sub in page[:limit]]
        return rows, (str(offset + limit) if len(page) > limit else None)

    def presentity(self, aor: str) -> dict | None:
        found = False
        result: dict = {"presentity": aor, "packages": {}}
        now = self.clock()
        for name in REGISTRY:
            records = self.state.records(name, aor)
            watchers = self.engine.subscriptions.watcher_count(name, aor)
            if not records and not watchers:
                continue
            found = True
            result["packages"][name] = {
                "watchers": watchers,
                "records": [_record_view(r, now) for r in records],
                "body": self.state.body(name, aor).for_version(0).decode("utf-8", "replace"),
            }
        return result if found else None

    def history_report(self, aor: str) -> dict:
        """``busylamp why``: the lamp, its timeline and likely causes (presence/why.py)."""
        from busylamp.presence.why import explain

        return explain(self, aor)

    def health(self) -> tuple[bool, dict]:
        return self.ready, {
            "node_id": self.node_id,
            "ready": self.ready,
            "uptime": int(time.time() - self.started_at),
            "subscriptions": len(self.engine.subscriptions),
            "listeners": [f"{t}:{h}:{p}" for t, (h, p) in self.listeners],
        }

    def metrics_text(self) -> str:
        return render_metrics(self)

    def tail(self) -> TailSubscription:
        tail = TailSubscription(self)
        self._tails.add(tail)
        return tail

    def snapshot(self) -> Iterator[dict]:
        yield {"marks": {k: list(v) for k, v in self.state.marks().items()}}
        yield from self.state.export()


def _record_view(record, now: float) -> dict:
    expires_at = getattr(record, "expires_at", None)
    return {
        "id": record.record_id,
        "data": dict(record.data),
        "expires_in": None if expires_at is None else max(0, int(expires_at - now)),
        "switch_id": record.switch_id,
        "bridge_id": record.bridge_id,
        "sequence": record.sequence,
    }


__all__ = ["PresenceNode", "TailSubscription", "Snapshot", "Update"]
