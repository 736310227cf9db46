"""What the engine asks its caller to do, as typed events (in the manner of h11 and aioquic).

The engine never calls out: it queues these and the adapter drains them with
:meth:`PresenceEngine.events` after each input (``receive``, ``apply``, ``handle_timer``,
``resolved``, ``terminate_all``) and does the I/O. Nothing the adapter does for an event can
re-enter the engine half-way through a call.

The hot path, SIP messages out (responses and NOTIFYs), is not an event object per message: it
stays one batched list of :data:`SendMessage` tuples, drained with
:meth:`PresenceEngine.messages_to_send`.
"""

from __future__ import annotations

from dataclasses import dataclass

from busylamp.wire import MWI_FORGET, MWI_QUERY, MWI_WATCH, mwi_request, resync_request

# One SIP message to send: (transport, destination address, bytes, stream connection id or None).
# A plain tuple on purpose: a fan-out builds one per NOTIFY, and a tuple costs least.
SendMessage = tuple[str, tuple[str, int], bytes, int | None]


@dataclass(frozen=True, slots=True)
class ResolveName:
    """Look ``name`` up (once) and answer with :meth:`PresenceEngine.resolved`."""

    name: str


@dataclass(frozen=True, slots=True)
class RequestResync:
    """A bridge's update sequence skipped ``missing`` messages: ask it for a fresh snapshot."""

    bridge_id: str
    missing: int
    reason: str = "sequence gap"

    def control_message(self) -> dict:
        """The control-bus message the bridges act on (bridge/service.py)."""
        return resync_request(bridge_id=self.bridge_id, reason=self.reason)


@dataclass(frozen=True, slots=True)
class WatchMailbox:
    """A mailbox got its first watcher on this node: claim it at the bridges; ``known``: its
    state is here already (no query needed, the claim alone)."""

    presentity: str
    known: bool

    def control_message(self) -> dict:
        return mwi_request(MWI_WATCH if self.known else MWI_QUERY, self.presentity)


@dataclass(frozen=True, slots=True)
class ForgetMailbox:
    """A mailbox lost its last watcher on this node: release it at the bridges."""

    presentity: str

    def control_message(self) -> dict:
        return mwi_request(MWI_FORGET, self.presentity)


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    """A subscription left the table (its final NOTIFY, if any, is queued or sent already).

    ``reason`` is the counter suffix it was counted under: unsubscribe, expired,
    notify_rejected, notify_timeout, shutdown, notify_error, unresolvable."""

    tag: str
    package: str
    presentity: str
    watcher: str
    reason: str


Event = ResolveName | RequestResync | WatchMailbox | ForgetMailbox | SubscriptionEnded
ControlEvent = RequestResync | WatchMailbox | ForgetMailbox

__all__ = ["ControlEvent", "Event", "ForgetMailbox", "RequestResync", "ResolveName",
           "SendMessage", "SubscriptionEnded", "WatchMailbox"]
