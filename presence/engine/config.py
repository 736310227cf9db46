"""What the engine is told about its node and its policy, and the SIP constants it answers with."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from busylamp.presence.limits import Limits
from busylamp.presence.snapshots import SNAPSHOT_TIMEOUT

SERVER = "busylamp"

ALLOW = "SUBSCRIBE, NOTIFY, OPTIONS"

# Methods RFC 3261 and its extensions define; any other is unknown (501).
KNOWN_METHODS = frozenset(
    ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"]
)

SUPPORTED_EXTENSIONS = frozenset()

NOTIFY_REMOVE_STATUSES = frozenset((404, 481))

# Transports a Contact or route may name that this node can send over (no TLS, SCTP, WS).
SENDABLE_TRANSPORTS = frozenset(("udp", "tcp"))

ERROR_LOG_INTERVAL = 60.0


@dataclass
class EngineConfig:
    """What the engine needs to know about its node and its policy."""

    contacts: Mapping[str, tuple[str, int]]  # transport -> advertised (host, port)
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int | None = None  # None: the package's own default
    domain_aliases: Mapping[str, str] = field(default_factory=dict)
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cross_domain: bool = False
    nat_send_to_source: bool = False
    t1: float = 0.5
    t2: float = 4.0
    timer_f: float | None = None  # None: 64*T1
    server_name: str = SERVER
    snapshot_timeout: float = SNAPSHOT_TIMEOUT  # an incomplete snapshot is dropped after this
    limits: Limits = field(default_factory=Limits)
    edges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # --edge
    fanout_batch: int = 500  # NOTIFYs built per step of a fan-out; the rest on the next step
    # Amplification (see docs/security.md): NOTIFY targets must be believable (the source, its IP,
    # or a route through an edge) unless notify_any_target; a target that never answered gets at
    # most amplification_factor times the SUBSCRIBE's bytes, without retransmissions (0: off).
    notify_any_target: bool = True
    amplification_factor: float = 0.0
    # --require-registration: an initial SUBSCRIBE needs a live registration of its watcher from
    # its origin (the source, or the phone an edge vouches for), as the switches report them
    require_registration: bool = False
