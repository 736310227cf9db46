"""Compose the processes `busylamp run` starts: a presence node, a bridge, or both (role all).

Runs inside the monkey-patched gevent process that ``cli.run`` sets up. Everything here is wiring:
the engine, the bridge and the buses do the work.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from busylamp.app.metrics import bridge_metrics, nsq_metrics
from busylamp.presence.config import ConfigError, RunConfig
from busylamp.presence.engine import EngineConfig
from busylamp.presence.limits import AMPLIFICATION_FACTOR, Limits
from busylamp.presence.node import PresenceNode
from busylamp.presence.packages.base import PackageOptions

if TYPE_CHECKING:
    from busylamp.bridge.bus import Bus

log = logging.getLogger("busylamp")


def engine_config(config: RunConfig, bound: list[tuple[str, tuple[str, int]]]) -> EngineConfig:
    """The engine's view of the run options; ``bound`` are the SIP listeners actually bound."""
    contacts: dict[str, tuple[str, int]] = {}
    guessed: str | None = None
    for transport, (host, port) in bound:
        if transport in contacts:
            continue
        if config.advertise is not None:
            contacts[transport] = (config.advertise.host, config.advertise.port)
        elif host in ("0.0.0.0", "::", ""):
            guessed = guessed or _guess_local_address()
            contacts[transport] = (guessed, port)
        else:
            contacts[transport] = (host, port)
    return EngineConfig(
        contacts=contacts,
        min_expires=config.min_expires,
        max_expires=config.max_expires,
        default_expires=config.default_expires,
        domain_aliases=dict(config.domain_alias),
        trusted=tuple(config.trusted),
        cross_domain=config.cross_domain,
        nat_send_to_source=config.nat_send_to_source,
        t1=config.t1,
        t2=config.t2,
        timer_f=config.timer_f,
        limits=Limits(
            max_subscriptions=config.max_subscriptions,
            max_per_source=config.max_subscriptions_per_source,
            max_per_watcher=config.max_subscriptions_per_watcher,
            subscribe_rate=config.subscribe_rate,
            subscribe_burst=config.subscribe_burst,
            rate_drop=config.subscribe_rate_action == "drop",
            max_pending_notifies=config.max_pending_notifies,
            shed_backlog=config.shed_backlog,
        ),
        edges=tuple(config.edge),
        fanout_batch=config.fanout_batch,
        notify_any_target=config.notify_any_target,
        amplification_factor=AMPLIFICATION_FACTOR,
        require_registration=config.require_registration,
    )


def _guess_local_address() -> str:
    """This host's first non-loopback IPv4 address (its name's addresses), else 127.0.0.1."""
    address = "127.0.0.1"
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        candidate = info[4][0]
        if not candidate.startswith("127."):
            address = candidate
            break
    log.warning(
        "SIP listens on a wildcard address; advertising %s in Contact/Via "
        "(set --advertise HOST:PORT when phones reach this node another way)", address
    )
    return address


def transport_options(config: RunConfig, fd_limit: int) -> dict:
    """The SIP transports' limits; the TCP cap stays below what the open-file limit leaves
    after the HTTP API's connections and a reserve, so /health and new phones are still served
    when that many connections are open."""
    budget = fd_limit - (config.http_max_connections if config.http is not None else 0) - 64
    tcp_max = min(config.sip_tcp_max_connections, max(16, budget))
    if tcp_max < config.sip_tcp_max_connections:
        log.warning("open-file limit %d: SIP TCP connections capped at %d, below "
                    "--sip-tcp-max-connections %d", fd_limit, tcp_max,
                    config.sip_tcp_max_connections)
    return {
        "max_tcp_connections": tcp_max,
        "max_tcp_per_source": config.sip_tcp_max_per_source,
        "tcp_unused_timeout": config.sip_tcp_unused_timeout,
        "tcp_idle_timeout": config.sip_tcp_idle_timeout,
        "tcp_message_timeout": config.sip_tcp_message_timeout,
    }


def build_node(config: RunConfig, bus: Bus | None) -> PresenceNode:
    """Bind the SIP listeners and build the presence node (not started yet)."""
    from busylamp.presence.history import History
    from busylamp.presence.node.transport import raise_fd_limit

    node = PresenceNode(
        EngineConfig(contacts={"udp": ("127.0.0.1", 0)}),
        package_options=PackageOptions(
            force_dummy_dialog=config.force_dummy_dialog,
            force_single_dialog=config.force_single_dialog,
        ),
        node_id=config.node_id or "busylamp",
        on_control=bus.publish_control if bus is not None else None,
        transport_options=transport_options(config, raise_fd_limit()),
        resolver_options={
            "server": (config.dns_server.host, config.dns_server.port)
            if config.dns_server else None,
            "timeout": config.dns_timeout,
            "max_in_flight": config.dns_max_lookups,
            "ttl": config.dns_cache_ttl,
        },
        history=History(per_presentity=config.history,
                        max_bytes=config.history_memory * 2**20),
    )
    for listen in config.sip:
        try:
            node.listen(listen.transport, listen.host, listen.port)
        except OSError as exc:
            node.transports.close()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "--sip", "a free port", message=(
                        f"port {listen.port} already in use ({listen}): "
                        "choose another with --sip")
                ) from None
            raise ConfigError("--sip", "an address of this host", message=(
                f"cannot listen on {listen}: {exc.strerror or exc}: fix --sip")) from None
    node.reconfigure(engine_config(config, node.listeners))
    return node


def make_bus(config: RunConfig) -> Any:
    """The update bus: in-process (memory) or NSQ (one tornado loop for the whole process)."""
    if config.bus == "memory":
        from busylamp.bridge.bus import MemoryBus

        return MemoryBus()
    from busylamp.bridge.nsq import NsqBus, NsqLoop

    loop = NsqLoop()
    loop.start()
    return NsqBus(
        loop,
        [str(a) for a in config.nsqd],
        config.topic,
        config.channel or f"{config.node_id}#ephemeral",
        lookupd_http=config.lookupd,
        max_in_flight=config.max_in_flight,
        reconnect_interval=config.nsq_reconnect_interval,
        lookupd_poll_interval=config.lookupd_poll_interval,
        output_buffer_timeout=round(config.nsq_output_buffer_timeout * 1000),
    )


def build_bridge(config: RunConfig, bus: Any) -> Any:
    """The ESL bridge: one event-socket client per --esl, publishing to ``bus``."""
    from busylamp.bridge.normalize import NormalizeConfig
    from busylamp.bridge.service import BridgeService
    from busylamp.esl.connection import EslTarget

    targets = []
    for text in config.esl:
        try:
            targets.append(EslTarget.parse(text))
        except ValueError as exc:
            raise ConfigError("--esl", "PASSWORD@HOST:PORT", text,
                              message=f"invalid --esl: {exc}") from None
    return BridgeService(
        targets,
        bus,
        NormalizeConfig(
            pickup_prefix=config.pickup_prefix,
            initiator_ringing_state=config.initiator_ringing_state,
        ),
        bridge_id=config.node_id or "busylamp",
        esl_options={"backoff_max": config.esl_backoff_max, "dead_after": config.esl_dead_after},
        registrations=config.require_registration,
    )


def run_roles(config: RunConfig) -> None:
    """Run the configured role(s) until SIGTERM/SIGINT; never returns normally."""
    bus = make_bus(config)
    node: PresenceNode | None = None
    api_server = None
    bridge_service = None
    warm = False
    stop = gevent.event.Event()

    if config.role in ("all", "presence"):
        node = build_node(config, bus)
        if config.http is not None:
            from busylamp.presence.api import serve_api

            try:
                api_server = serve_api(
                    config.http.host, config.http.port, node, config.http_token,
                    allowed_hosts=config.http_allowed_host,
                    max_connections=config.http_max_connections,
                    request_timeout=config.http_request_timeout)
            except OSError as exc:
                node.transports.close()
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError("--http", "a free port", message=(
                        f"port {config.http.port} already in use ({config.http}): "
                        "choose another with --http")) from None
                raise
        warm = bool(config.peer) or (config.bus == "nsq" and config.role == "presence")
        if warm:
            node.prepare_warm_start()
        if config.bus == "nsq":
            bus.subscribe(node.on_bus_message, on_malformed=node.count_bus_malformed)
        else:
            bus.subscribe(node.on_bus_message)
        node.start()
        if warm:
            # a node of a cluster fills its state (peer snapshot, else bridge resync) first
            gevent.spawn(node.warm_start, list(config.peer), token=config.http_token,
                         resync=not config.peer)
    if config.role in ("all", "bridge"):
        bridge_service = build_bridge(config, bus)
        if node is not None and not warm and config.esl_warmup > 0:
            node.prepare_esl_warmup()
        bridge_service.start()
        if node is not None:
            node.extra_metrics.append(bridge_metrics(bridge_service))
            if not node.ready and not warm:
                gevent.spawn(node.finish_esl_warmup, bridge_service.first_round, config.esl_warmup)
            # why: the node sees the bridge's skipped events; stage esl_to_bridge
            node.history.skip_sources.append(bridge_service.skip_log)
            bridge_service.event_latency = node.history.stages["esl_to_bridge"]
    if node is not None and config.bus == "nsq":
        node.extra_metrics.append(nsq_metrics(bus))
    if node is None and bridge_service is not None and config.http is not None:
        from busylamp.app.bridgehttp import serve_bridge_http

        api_server = serve_bridge_http(config, bridge_service, bus)

    for line in startup_summary(config, node):
        log.info("%s", line)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    status = gevent.spawn(_status_loop, config, node, bridge_service, bus) \
        if config.status_interval > 0 else None
    stop.wait()
    log.info("stopping (%s)", "terminating subscriptions" if config.shutdown == "terminate"
             else "dropping subscriptions")
    if status is not None:
        status.kill()
    if bridge_service is not None:
        bridge_service.stop()
    if node is not None:
        node.stop(terminate=config.shutdown == "terminate", rate=config.shutdown_notify_rate,
                  timeout=config.shutdown_timeout)
    if api_server is not None:
        api_server.stop(timeout=1)
    if hasattr(bus, "close"):
        bus.close()


def startup_summary(config: RunConfig, node: PresenceNode | None) -> list[str]:
    """Human lines describing what runs (ESL passwords hidden); with a bound ``node``, its real
    listeners and the addresses advertised in Contact/Via."""
    lines = [f"busylamp node {config.node_id}: role {config.role}, bus {config.bus}"]
    if config.role != "bridge":
        if node is not None:
            sip = ", ".join(f"{t}:{h}:{p}" for t, (h, p) in node.listeners)
            contacts = node.engine.config.contacts
            advertise = " (advertised as " + ", ".join(
                f"{t}:{h}:{p}" for t, (h, p) in contacts.items()) + ")"
        else:
            sip = ", ".join(str(listen) for listen in config.sip)
            advertise = f" (advertised as {config.advertise})" if config.advertise else ""
        lines.append(f"SIP on {sip}{advertise}; expires {config.min_expires}.."
                     f"{config.max_expires}s (default "
                     f"{config.default_expires or 'per package'}"
                     f"{'s' if config.default_expires else ''})")
    if config.role != "presence":
        targets = ", ".join("***@" + spec.rpartition("@")[2] for spec in config.esl)
        lines.append(f"FreeSWITCH event sockets: {targets}")
    if config.role != "bridge":
        if config.http is None:
            lines.append("HTTP API off")
        else:
            auth = "bearer token required" if config.http_token else "no token"
            lines.append(f"HTTP API on http://{config.http} ({auth})")
    if config.bus == "nsq":
        lines.append(f"NSQ topic {config.topic}, channel {config.channel}; nsqd "
                     f"{', '.join(map(str, config.nsqd)) or '-'}; lookupd "
                     f"{', '.join(config.lookupd) or '-'}")
    if config.peer:
        lines.append(f"peers: {', '.join(config.peer)}")
    return lines


def _status_loop(config: RunConfig, node: PresenceNode | None, bridge_service, bus) -> None:
    last_sent = 0
    last_time = time.monotonic()
    while True:
        gevent.sleep(config.status_interval)
        parts = []
        if node is not None:
            sent = node.engine.counters["notify_sent"]
            now = time.monotonic()
            rate = (sent - last_sent) / max(1e-9, now - last_time)
            last_sent, last_time = sent, now
            parts += [
                f"subscriptions={len(node.engine.subscriptions)}",
                f"presentities={node.state.presentity_count()}",
                f"notify_per_s={rate:.1f}",
            ]
        if bridge_service is not None:
            states = [f"{c.target.host}:{c.target.port}={c.state}" for c in bridge_service.clients]
            parts.append("esl=" + ",".join(states))
        parts.extend(_nsq_status(bus))
        log.info("status: %s", " ".join(parts))


def _nsq_status(bus: Any) -> list[str]:
    publisher = getattr(bus, "publisher", None)
    if publisher is None:
        return []
    parts = [f"nsq_publisher={'up' if publisher.connected else 'down'}"
             f"(buffered={publisher.buffered},dropped={publisher.dropped})"]
    consumers = getattr(bus, "consumers", [])
    if consumers:
        parts.append("nsq_consumers=" + ",".join(
            f"{c.topic}:{c.received}msgs/{c.malformed}bad" for c in consumers))
    return parts
