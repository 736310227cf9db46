"""The node's clock loop: one greenlet sleeps until the engine's next deadline and wakes it;
after every input the engine's output is drained (messages sent, events acted on)."""

from __future__ import annotations

import logging

import gevent

from busylamp.presence.engine import (
    Event,
    ResolveName,
    SubscriptionEnded,
)

log = logging.getLogger(__name__)


class EngineLoop:
    """Wakes the engine on time and drains it (a mixin of PresenceNode)."""

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
            elif kind is SubscriptionEnded:  # counted by the engine; told at debug level
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("subscription ended: %s %s watched by %s (tag %s): %s",
                              event.package, event.presentity, event.watcher, event.tag,
                              event.reason)
            else:  # RequestResync, WatchMailbox, ForgetMailbox: a message to the bridges
                self._on_control(event.control_message())

    def _on_resolved(self, name: str, address: str | None) -> None:
        self.engine.resolved(name, address, self.clock())
        if self._flush():
            self._poke()

    def _on_control(self, message: dict) -> None:
        message.setdefault("Node-ID", self.node_id)
        if self._control_sink is not None:
            self._control_sink(message)
