"""The sans-IO presence engine (see :mod:`~busylamp.presence.engine.core`).

``PresenceEngine`` takes SIP messages, presence updates and the clock in; it hands back SIP
messages to send (:meth:`~PresenceEngine.messages_to_send`, one batched list) and typed events
(:meth:`~PresenceEngine.events`, :mod:`~busylamp.presence.engine.events`).

One job per module:

- ``core``: ``PresenceEngine`` itself: its state, output queues, timers, updates in.
- ``dispatch``: SIP input; requests answered and dispatched (initial and in-dialog SUBSCRIBE).
- ``policy``: what a SUBSCRIBE must pass: trust, origin, limits, expiry, believable targets.
- ``routing``: where a dialog's NOTIFYs go (route set, address, transport, connection).
- ``notify``: fan-out, NOTIFY building, NOTIFY transactions and final NOTIFYs.
- ``events``: the typed events the engine queues for its caller.
- ``config``: ``EngineConfig`` and the SIP constants.

The subscription lifecycle table the engine moves through is presence/lifecycle.py.
"""

from busylamp.presence.engine.config import EngineConfig
from busylamp.presence.engine.core import PresenceEngine
from busylamp.presence.engine.events import (
    Event,
    ForgetMailbox,
    RequestResync,
    ResolveName,
    SendMessage,
    SubscriptionEnded,
    WatchMailbox,
)

__all__ = ["EngineConfig", "Event", "ForgetMailbox", "PresenceEngine", "RequestResync",
           "ResolveName", "SendMessage", "SubscriptionEnded", "WatchMailbox"]
