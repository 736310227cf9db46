"""The bridge: FreeSWITCH event sockets -> normalize -> Sequencer -> call table -> bus (gevent).

One :class:`esl.connection.EslClient` per FreeSWITCH. On every (re)connect the service asks the
switch for its Core-UUID (``api global_getvar core_uuid``, the Switch-ID), publishes a snapshot
built from ``api show channels as json`` and ``api valet_info`` (occupied park slots) and sends
``MESSAGE_QUERY`` for every mailbox a presence node watches, paced (bridge/mwi.py; mod_voicemail
answers with MESSAGE_WAITING). When the Core-UUID changed (FreeSWITCH restarted), an empty
snapshot for the old Switch-ID is published first: none of its calls survived.
Control messages from engines (busylamp.wire.control, validated by ``parse_control``): ``resync``
(Switch-ID or ``*``; one naming a Bridge-ID is for that bridge only, the others count it in
``resync_not_ours``), ``mwi_query``, ``mwi_watch`` and ``mwi_forget`` (Presentity; see
bridge/mwi.py). A malformed one is counted (``bad_control``, and per reason in
``bad_control_reasons``) and logged once per reason.
One greenlet republishes live calls, driven by ``CallTable.get_timer``. ``first_round`` is set once
every switch has had its first chance: its first snapshot sent (or tried), or its first connect
attempt failed; a presence node in the same process serves SUBSCRIBEs only then (``--esl-warmup``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent
import gevent.event

from busylamp.bridge.bus import Bus
from busylamp.bridge.calls import CallTable
from busylamp.bridge.mwi import MailboxBook
from busylamp.bridge.normalize import NormalizeConfig, normalize, split_aor
from busylamp.bridge.origin import SkipLog, event_latency, origin_fields
from busylamp.bridge.registrations import EVENTS as REGISTRATION_EVENTS
from busylamp.bridge.registrations import (
    RegistrationsError,
    registration_from_event,
    registrations_from_api,
)
from busylamp.bridge.resync import SnapshotError, snapshot_from_channels
from busylamp.bridge.sequence import Sequencer
from busylamp.esl.connection import EslClient, EslError, EslTarget
from busylamp.esl.protocol import EslEvent
from busylamp.wire import (
    ALL_SWITCHES,
    MWI_FORGET,
    MWI_QUERY,
    PART_BYTES,
    RESYNC,
    Control,
    ControlError,
    parse_control,
    snapshot,
    split_snapshot,
)

log = logging.getLogger(__name__)

# CHANNEL_PROGRESS: the caller's leg gets its presence id only after its RINGING call state (see
# bridge/normalize.py, "The caller's leg"); two events per call
EVENTS = ("CHANNEL_CALLSTATE", "CHANNEL_PROGRESS", "PRESENCE_IN", "MESSAGE_WAITING", "HEARTBEAT",
          "CUSTOM valet_parking::info")
# ``show channels as json`` of a big switch (tens of MB) takes longer than an ordinary command
RESYNC_TIMEOUT = 60.0
MAX_LOGGED_REASONS = 100  # distinct bad-control reasons logged (each once); later ones counted
UpdateTap = Callable[[EslEvent, list[dict[str, Any]]], None]


class BridgeService:
    """Runs the bridge for a list of FreeSWITCH targets onto one bus."""

    def __init__(self, targets: Sequence[EslTarget], bus: Bus, config: NormalizeConfig,
                 bridge_id: str, clock: Callable[[], float] = time.monotonic, *,
                 epoch: int | None = None, mailboxes: Sequence[str] = (),
                 on_update: UpdateTap | None = None, events: Sequence[str] = EVENTS,
                 esl_options: Mapping[str, Any] | None = None,
                 max_timer_sleep: float = 1.0, snapshot_part_bytes: int = PART_BYTES,
                 resync_timeout: float = RESYNC_TIMEOUT,
                 mwi_options: Mapping[str, Any] | None = None,
                 registrations: bool = False) -> None:
        self.targets = list(targets)
        self.bus = bus
        self.config = config
        self.clock = clock
        self.sequencer = Sequencer(bridge_id, epoch if epoch is not None else int(time.time() * 1000))
        self.calls = CallTable()
        self.mailboxes = MailboxBook(**(mwi_options or {}))  # see bridge/mwi.py
        for mailbox in mailboxes:
            self.mailboxes.claim(mailbox, "configured", clock(), [])
        self._mwi_wakeup = gevent.event.Event()
        self._mwi_greenlet: gevent.Greenlet | None = None
        self.on_update = on_update
        self.events = list(events)
        self.registrations = registrations  # --require-registration: pass them to the nodes
        if registrations and REGISTRATION_EVENTS not in self.events:
            self.events.append(REGISTRATION_EVENTS)
        self.esl_options = dict(esl_options or {})
        self.max_timer_sleep = max_timer_sleep
        self.snapshot_part_bytes = snapshot_part_bytes
        self.resync_timeout = resync_timeout
        self.counters: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.bad_control_reasons: Counter[str] = Counter()
        self.clients: list[EslClient] = []
        self._switch_of: dict[int, str] = {}
        self._timer_greenlet: gevent.Greenlet | None = None
        self._wakeup = gevent.event.Event()
        self._republish_wakes_at = math.inf  # when the republish loop looks at the table next
        self._running = False
        self.first_round = gevent.event.Event()
        self._settled: set[int] = set()
        # presence/history.py's view of the bridge: skipped events, stage esl_to_bridge
        self.wall: Callable[[], float] = time.time
        self.skip_log = SkipLog()
        self.event_latency: Any = None  # a histogram (anything with observe(seconds))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._running = True
        self.bus.subscribe_control(self.handle_control)
        for target in self.targets:
            client = EslClient(target, self.events, self._on_event,
                               on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                               on_connect_failed=self._on_connect_failed, **self.esl_options)
            self.clients.append(client)
        if not self.clients:
            self.first_round.set()
        for client in self.clients:
            client.start()
        self._timer_greenlet = gevent.spawn(self._republish_loop)
        self._mwi_greenlet = gevent.spawn(self._mwi_loop)

    def stop(self) -> None:
        self._running = False
        for client in self.clients:
            client.stop()
        if self._timer_greenlet is not None:
            self._timer_greenlet.kill(block=True, timeout=2.0)
            self._timer_greenlet = None
        if self._mwi_greenlet is not None:
            self._mwi_greenlet.kill(block=True, timeout=2.0)
            self._mwi_greenlet = None

    # ------------------------------------------------------------------ events

    def _on_event(self, event: EslEvent) -> None:
        self.handle_event(event, None)

    def handle_event(self, event: EslEvent, switch_id: str | None) -> list[dict[str, Any]]:
        """Normalize and publish one event; returns the updates published (for tests/taps)."""
        self.counters["events"] += 1
        if event.name == "HEARTBEAT":
            return []
        if self.registrations and event.name == "CUSTOM":
            message = registration_from_event(event, switch_id or event.headers.get("Core-UUID")
                                              or "unknown")
            if message is not None:
                self._send_unsequenced(message)
                return []
        received = self.wall()
        result = normalize(event.name, event.headers, self.config)
        if result.skipped:
            self.skipped[result.skipped] += 1
            self.skip_log.add(event.name, event.headers, result.skipped, received)
        self._note_origin(event, result.updates, received)
        if self.on_update is not None:
            try:
                self.on_update(event, result.updates)
            except Exception:
                log.exception("on_update tap failed")
        for update in result.updates:
            if switch_id and "Switch-ID" not in update:
                update["Switch-ID"] = switch_id
            self._publish_update(update)
        return result.updates

    def _note_origin(self, event: EslEvent, updates: list[dict[str, Any]],
                     received: float) -> None:
        """Name the event on its updates and time its trip from FreeSWITCH (bridge/origin.py)."""
        if self.event_latency is not None:
            latency = event_latency(event.headers, received)
            if latency is not None:
                self.event_latency.observe(latency)
        if updates:
            fields = origin_fields(event.name, event.headers)
            for update in updates:
                update.update(fields)

    def _publish_update(self, update: dict[str, Any]) -> None:
        switch_id = str(update.get("Switch-ID", ""))
        due = self.calls.record(switch_id, update, self.clock())
        self._send(update)
        self.counters["published"] += 1
        if due is not None and due < self._republish_wakes_at:
            self._wakeup.set()  # the republish loop sleeps past this call's first republish

    def _send(self, message: dict[str, Any]) -> None:
        try:
            stamped = self.sequencer.stamp(message)
            stamped["Bridge-Timestamp"] = int(self.wall() * 1_000_000)
            self.bus.publish(stamped)
        except Exception:
            self.counters["errors"] += 1
            log.exception("bus publish failed")

    # ------------------------------------------------------------------ (re)connect and resync

    def _settle(self, client: EslClient) -> None:
        """``client``'s switch had its first chance (snapshot sent or tried, or connect failed)."""
        self._settled.add(id(client))
        if len(self._settled) >= len(self.clients):
            self.first_round.set()

    def _on_connect_failed(self, client: EslClient, reason: str) -> None:
        self._settle(client)

    def _on_connect(self, client: EslClient) -> None:
        try:
            self._connect_and_resync(client)
        finally:
            self._settle(client)

    def _connect_and_resync(self, client: EslClient) -> None:
        try:
            switch_id = client.api("global_getvar core_uuid").strip()
        except EslError as exc:
            self.counters["errors"] += 1
            log.warning("%s: cannot read core_uuid: %s", client.target, exc)
            return
        if not switch_id or switch_id.startswith("-ERR"):
            switch_id = client.core_uuid or str(client.target)
        old = self._switch_of.get(id(client))
        self._switch_of[id(client)] = switch_id
        if old and old != switch_id:
            log.info("%s restarted (Core-UUID %s -> %s): dropping its old calls",
                     client.target, old, switch_id)
            self.calls.forget_switch(old)
            self._send_snapshot(snapshot(old, []))
        self.resync(client)
        if self.registrations:
            self._publish_registrations(client, switch_id)
        self.counters["mwi_replayed"] += self.mailboxes.replay(id(client), self.clock())
        self._mwi_wakeup.set()

    def _publish_registrations(self, client: EslClient, switch_id: str) -> None:
        try:
            message = registrations_from_api(client.api("show registrations as json"), switch_id)
        except (EslError, RegistrationsError) as exc:
            self.counters["errors"] += 1
            log.warning("%s: registrations not read: %s", client.target, exc)
            return
        self._send_unsequenced(message)

    def _send_unsequenced(self, message: dict[str, Any]) -> None:
        """Registrations are not presence state: no sequence number (the nodes' gap detection
        counts only updates)."""
        try:
            self.bus.publish(message)
            self.counters["registrations"] += 1
        except Exception:
            self.counters["errors"] += 1
            log.exception("bus publish failed")

    def _on_disconnect(self, client: EslClient, reason: str) -> None:
        self.counters["disconnects"] += 1

    def resync(self, client: EslClient) -> bool:
        """Publish a snapshot of the switch behind ``client``; False when it failed."""
        switch_id = self._switch_of.get(id(client))
        if switch_id is None:
            return False
        try:
            channels = client.api("show channels as json", timeout=self.resync_timeout)
            snapshot = snapshot_from_channels(channels, switch_id, self.config,
                                              client.api("valet_info"))
        except (EslError, SnapshotError) as exc:
            self.counters["errors"] += 1
            log.warning("%s: snapshot failed: %s", client.target, exc)
            return False
        self.calls.replace_switch(switch_id, snapshot["Updates"], self.clock())
        self._send_snapshot(snapshot)
        self._wakeup.set()
        return True

    def _send_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Publish a snapshot in parts that each fit one bus message (on every bus: the same
        path), stamped one after the other with nothing in between."""
        parts = split_snapshot(snapshot, self.snapshot_part_bytes)
        for part in parts:
            self._send(part)
        self.counters["snapshots"] += 1
        self.counters["snapshot_parts"] += len(parts)

    def query_mailboxes(self, client: EslClient, mailboxes: Sequence[str]) -> None:
        for mailbox in mailboxes:
            try:
                client.send_event("MESSAGE_QUERY", {"Message-Account": f"sip:{mailbox}"})
                self.counters["mwi_queries"] += 1
            except (EslError, ValueError) as exc:
                self.counters["errors"] += 1
                log.warning("%s: MESSAGE_QUERY %s failed: %s", client.target, mailbox, exc)

    @property
    def bridge_id(self) -> str:
        """This bridge's Bridge-ID (on every message it sends; a resync request may name it)."""
        return self.sequencer.bridge_id

    def handle_control(self, message: dict[str, Any]) -> None:
        """Engine -> bridge messages; the work runs in its own greenlet (never blocks the bus)."""
        try:
            control = parse_control(message)
        except ControlError as exc:
            self._reject_control(str(exc))
            return
        if control.kind == RESYNC:
            self._resync_requested(control)
        else:
            self._mailbox_claim(control)

    def _reject_control(self, reason: str) -> None:
        """Count a malformed control message; log each reason once."""
        self.counters["bad_control"] += 1
        first = reason not in self.bad_control_reasons
        if first and len(self.bad_control_reasons) >= MAX_LOGGED_REASONS:
            reason = "(other reasons)"
            first = reason not in self.bad_control_reasons
        self.bad_control_reasons[reason] += 1
        if first:
            log.warning("control message rejected: %s (logged once; counted in bad_control)",
                        reason)

    def _resync_requested(self, control: Control) -> None:
        """Resync the switch(es) asked for, unless the request names another bridge."""
        if not control.addressed_to(self.bridge_id):
            self.counters["resync_not_ours"] += 1  # another bridge's gap: its own resync
            return
        self.counters["resync_requests"] += 1
        for client in self.clients:
            if control.switch_id == ALL_SWITCHES or \
                    self._switch_of.get(id(client)) == control.switch_id:
                gevent.spawn(self.resync, client)

    def _mailbox_claim(self, control: Control) -> None:
        """A node claims (mwi_query, mwi_watch) or releases (mwi_forget) a mailbox."""
        aor = split_aor(control.presentity, self.config.domain_default)
        if aor is None:
            self._reject_control(f"{control.kind}: Presentity is not an address")
            return
        mailbox = f"{aor[0]}@{aor[1]}"
        node = control.node_id or ""
        if control.kind == MWI_FORGET:
            self.mailboxes.release(mailbox, node, self.clock())
            return
        switches = [id(c) for c in self.clients if c.state == "connected"] \
            if control.kind == MWI_QUERY else []  # mwi_watch: the node knows the state already
        if self.mailboxes.claim(mailbox, node, self.clock(), switches):
            self._mwi_wakeup.set()  # coalesced and paced: see bridge/mwi.py

    def _mwi_loop(self) -> None:
        """Send the MESSAGE_QUERYs the mailbox book lets go, at its pace."""
        book = self.mailboxes
        while self._running:
            now = self.clock()
            by_id = {id(c): c for c in self.clients}
            for mailbox, switch in book.due(now):
                client = by_id.get(switch)
                if client is not None and client.state == "connected":
                    self.query_mailboxes(client, [mailbox])
            due = book.next_due(now)
            self._mwi_wakeup.clear()
            self._mwi_wakeup.wait(10.0 if due is None else min(10.0, max(0.01, due - now)))

    # ------------------------------------------------------------------ republishing

    def republish_due(self) -> int:
        """Republish every live call whose time has come; returns how many."""
        due = self.calls.due(self.clock())
        for update in due:
            self._send(update)
        self.counters["republished"] += len(due)
        return len(due)

    def _republish_loop(self) -> None:
        while self._running:
            deadline = self.calls.get_timer()
            delay = self.max_timer_sleep if deadline is None else deadline - self.clock()
            delay = min(max(delay, 0.0), self.max_timer_sleep)
            self._republish_wakes_at = self.clock() + delay
            self._wakeup.clear()
            if delay > 0:
                self._wakeup.wait(delay)
            try:
                self.republish_due()
            except Exception:
                self.counters["errors"] += 1
                log.exception("republish failed")
