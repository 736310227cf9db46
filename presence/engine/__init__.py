"""The sans-IO presence engine (see :mod:`~busylamp.presence.engine.core`).

``PresenceEngine`` takes SIP messages, presence updates and the clock in; it hands back SIP
messages to send (:meth:`~PresenceEngine.messages_to_send`, one batched list) and typed events
(:meth:`~PresenceEngine.events`, :mod:`~busylamp.presence.engine.events`).
"""

from busylamp.presence.engine.core import EngineConfig, PresenceEngine
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
