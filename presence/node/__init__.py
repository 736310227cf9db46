"""The node: the gevent adapter around the sans-IO presence core.

Everything here touches sockets, greenlets or the clock: the SIP transports (UDP with batched
system calls, TCP), the asynchronous DNS resolver, the warm-start fetch and ``PresenceNode``,
the one loop that feeds datagrams and updates into the engine, drains what it returns and
sleeps until the core's next timer.
"""

from busylamp.presence.node.node import PresenceNode

__all__ = ["PresenceNode"]
