"""Prometheus text exposition of a presence node's counters and gauges."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from busylamp.presence.node import PresenceNode

PREFIX = "busylamp_"


class MetricWriter:
    """Collects metric families in the text exposition format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, name: str, kind: str, help_text: str,
                 samples: list[tuple[dict, float]]) -> None:
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            if labels:
                label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                self.lines.append(f"{full}{{{label_text}}} {value:g}")
            else:
                self.lines.append(f"{full} {value:g}")


def render_metrics(node: PresenceNode) -> str:
    """Every counter of the engine, transports, state and publish path, as text format 0.0.4,
    then those of the bridge and the bus when this process runs them."""
    engine = node.engine
    metric = MetricWriter()
    lines = metric.lines

    by_package = engine.subscriptions.counts_by_package()
    metric(
        "subscriptions_active", "gauge", "Active subscriptions by event package.",
        [({"event": name}, by_package.get(name, 0)) for name in sorted(engine.packages)],
    )
    c = engine.counters
    metric("notify_sent_total", "counter", "NOTIFY requests sent (first transmissions).",
           [({}, c["notify_sent"])])
    metric("notify_retransmitted_total", "counter", "NOTIFY retransmissions over UDP (Timer E).",
           [({}, engine.client_transactions.retransmissions)])
    metric("notify_failed_total", "counter", "NOTIFYs answered with a failure status, by outcome.",
           [({"outcome": "rejected"}, c["notify_failed"]),
            ({"outcome": "timeout"}, c["notify_timeouts"]),
            ({"outcome": "error"}, c["notify_errors"])])
    metric("notify_in_flight", "gauge", "NOTIFY client transactions awaiting a final response.",
           [({}, len(engine.client_transactions))])
    metric("subscriptions_removed_total", "counter", "Subscriptions removed, by reason.",
           [({"reason": reason}, c["subscriptions_removed_" + reason])
            for reason in ("unsubscribe", "expired", "notify_rejected", "notify_timeout",
                           "shutdown", "notify_error", "unresolvable")])
    metric("subscribe_total", "counter", "SUBSCRIBE requests by outcome.",
           [({"outcome": "accepted"}, c["subscribe_accepted"]),
            ({"outcome": "rejected"}, c["subscribe_rejected"]),
            ({"outcome": "fetch"}, c["subscribe_fetch"])])
    metric("subscribe_limited_total", "counter",
           "Initial SUBSCRIBEs refused (or dropped) by a limit, by limit.",
           [({"limit": name}, c["limit_" + name])
            for name in ("total", "source", "watcher", "rate", "pending", "overload")])
    metric("subscribe_target_refused_total", "counter",
           "SUBSCRIBEs refused 403 because NOTIFYs would go elsewhere than the source or an edge.",
           [({}, c["target_refused"])])
    metric("subscribe_unregistered_total", "counter",
           "Initial SUBSCRIBEs refused 403 by --require-registration.",
           [({}, c["registration_refused"])])
    metric("notify_budgeted_total", "counter",
           "NOTIFYs to a target that never answered cut to the subscription state (minimal) or "
           "held back (withheld) by the byte budget.",
           [({"outcome": "minimal"}, c["notify_minimal"]),
            ({"outcome": "withheld"}, c["notify_withheld"])])
    metric("notify_backlog", "gauge", "Fan-out NOTIFYs queued for the next steps.",
           [({}, engine.backlog)])
    metric("sip_messages_received_total", "counter", "SIP messages received, by kind.",
           [({"kind": "request"}, c["sip_requests_received"]),
            ({"kind": "response"}, c["sip_responses_received"]),
            ({"kind": "retransmission"}, c["sip_retransmissions_received"])])
    metric("sip_malformed_total", "counter", "SIP messages that failed to parse.",
           [({}, c["sip_malformed"])])
    dropped = c["sip_dropped"] + sum(
        node.transports.counters.get(k, 0)
        for k in ("datagrams_oversized", "tcp_overflow_closed")
    )
    metric("sip_dropped_total", "counter",
           "SIP input dropped without a response (unaddressable, oversized, stream overflow).",
           [({}, dropped)])
    metric("sip_udp_receive_drops_total", "counter",
           "Datagrams the kernel dropped because a UDP socket's receive queue was full.",
           [({}, node.transports.udp_drops())])
    metric("sip_unmatched_responses_total", "counter", "Responses matching no NOTIFY transaction.",
           [({}, c["notify_unmatched_responses"])])
    metric("sip_responses_wrong_source_total", "counter",
           "Responses to a NOTIFY from another address or connection than it went to (ignored).",
           [({}, c["notify_responses_wrong_source"])])
    metric("sip_untrusted_total", "counter", "Requests refused 403 because of --trusted.",
           [({}, c["sip_untrusted"])])
    tc = node.transports.counters
    metric("sip_transport_errors_total", "counter",
           "SIP transport failures, by kind (handler exceptions, failed sends, TCP framing).",
           [({"kind": "handler"}, tc["handler_errors"]),
            ({"kind": "send"}, tc["send_errors"]),
            ({"kind": "tcp_framing"}, tc["tcp_framing_closed"])])
    metric("sip_tcp_connections", "gauge", "Open SIP TCP connections.",
           [({}, node.transports.connection_count())])
    metric("sip_tcp_closed_total", "counter",
           "SIP TCP connections refused or closed by a limit, by reason.",
           [({"reason": "refused"}, tc["tcp_refused"]),
            ({"reason": "evicted"}, tc["tcp_evicted"]),
            ({"reason": "unused"}, tc["tcp_unused_closed"]),
            ({"reason": "idle"}, tc["tcp_idle_closed"]),
            ({"reason": "message_timeout"}, tc["tcp_message_timeouts"])])
    rc = node.resolver.counters
    metric("dns_lookups_total", "counter",
           "Host-name lookups of NOTIFY destinations, by outcome.",
           [({"outcome": outcome}, n) for outcome, n in rc.items()])
    metric("dns_lookups_in_flight", "gauge", "Host-name lookups under way.",
           [({}, node.resolver.in_flight)])
    metric("dns_lookups_queued", "gauge",
           "Host-name lookups waiting because --dns-max-lookups are under way.",
           [({}, node.resolver.queued)])
    metric("fd_exhausted_total", "counter",
           "Accepts that failed for want of a file descriptor (EMFILE/ENFILE).",
           [({}, tc["fd_exhausted"])])
    pc = node.publish_counters
    metric("publishes_total", "counter", "Presence updates by outcome.",
           [({"outcome": "accepted"}, pc["accepted"]),
            ({"outcome": "rejected"}, pc["rejected"]),
            ({"outcome": "malformed_bus"}, pc["bus_malformed"])])
    stats = node.state.stats
    metric("state_records", "gauge", "Live presentity records, by event package.",
           [({"event": name}, stats.records.get(name, 0)) for name in sorted(engine.packages)])
    metric("state_tombstones", "gauge", "Terminated records kept to stop late resurrections.",
           [({}, stats.tombstones)])
    metric("updates_dropped_total", "counter", "Updates not applied, by reason.",
           [({"reason": "stale"}, stats.stale_dropped),
            ({"reason": "after_terminated"}, stats.resurrect_dropped)])
    metric("update_gaps_total", "counter",
           "Updates missing from a bridge's sequence (lost on the bus); each triggers a resync.",
           [({}, stats.gaps)])
    snaps = engine.snapshots.counters
    metric("snapshots_assembled_total", "counter",
           "Snapshots sent in parts and applied as one once the last part arrived.",
           [({}, snaps["assembled"])])
    metric("snapshots_incomplete_dropped_total", "counter",
           "Incomplete snapshots dropped, by reason (a newer one came, or parts stopped coming).",
           [({"reason": "superseded"}, snaps["incomplete_superseded"]),
            ({"reason": "timed_out"}, snaps["incomplete_timed_out"])])
    metric("snapshots_pending", "gauge", "Snapshots waiting for more parts.",
           [({}, engine.snapshots.pending)])
    metric("records_expired_total", "counter", "Records removed because their Expires ran out.",
           [({}, stats.expired)])
    metric("presentities_watched", "gauge", "Presentities with at least one watcher.",
           [({}, sum(1 for _ in engine.subscriptions.watched()))])
    for extra in node.extra_metrics:
        extra(metric)
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
