"""Start an in-process presence node on ephemeral loopback ports for the sipp tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from busylamp.presence.engine import EngineConfig
from busylamp.presence.node import PresenceNode
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.updates import parse_updates
from tests.sipp_util import free_port


@contextmanager
def running_node(
    *, transports: tuple[str, ...] = ("udp", "tcp"), package_options: PackageOptions | None = None,
    transport_options: dict | None = None, resolver_options: dict | None = None, **engine_kwargs,
) -> Iterator[PresenceNode]:
    """A started PresenceNode listening on 127.0.0.1 (same port for UDP and TCP)."""
    port = free_port()
    contacts = {t: ("127.0.0.1", port) for t in transports}
    node = PresenceNode(EngineConfig(contacts=contacts, **engine_kwargs),
                        package_options=package_options, transport_options=transport_options,
                        resolver_options=resolver_options)
    for transport in transports:
        node.listen(transport, "127.0.0.1", port)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def publish(node: PresenceNode, *updates: dict) -> int:
    return node.publish(parse_updates(list(updates)))


def sip_address(node: PresenceNode) -> tuple[str, int]:
    return node.listeners[0][1]


def settled(node: PresenceNode, presentity: str, package: str = "dialog") -> bool:
    """True when no watcher of ``presentity`` has a NOTIFY in flight or pending."""
    subs = node.engine.subscriptions.watchers(package, presentity)
    return all(s.inflight is None and not s.dirty for s in subs)
