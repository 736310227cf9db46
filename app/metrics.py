"""Prometheus families of the bridge and the NSQ bus, added to a node's /metrics by the roles."""

from __future__ import annotations

from collections.abc import Callable

from busylamp.presence.metrics import MetricWriter


def bridge_metrics(service) -> Callable[[MetricWriter], None]:
    """The ESL bridge's counters (role all): events, updates, skips by reason, ESL links."""

    def render(metric: MetricWriter) -> None:
        c = service.counters
        metric("bridge_events_total", "counter", "FreeSWITCH events received by the bridge.",
               [({}, c["events"])])
        metric("bridge_updates_published_total", "counter", "Presence updates the bridge published.",
               [({"kind": "event"}, c["published"]), ({"kind": "republish"}, c["republished"]),
                ({"kind": "snapshot"}, c["snapshots"])])
        metric("bridge_events_skipped_total", "counter",
               "Events that produced no update, by reason.",
               [({"reason": reason}, n) for reason, n in sorted(service.skipped.items())])
        metric("bridge_control_messages_total", "counter",
               "Control messages from the nodes, by outcome (resync honoured, resync addressed "
               "to another bridge, rejected as malformed).",
               [({"outcome": "resync"}, c["resync_requests"]),
                ({"outcome": "not_ours"}, c["resync_not_ours"]),
                ({"outcome": "malformed"}, c["bad_control"])])
        metric("bridge_errors_total", "counter", "Bridge errors (resync, control, publish).",
               [({}, c["errors"])])
        metric("esl_connected", "gauge", "1 while the event socket to a FreeSWITCH is up.",
               [({"server": f"{cl.target.host}:{cl.target.port}"}, cl.state == "connected")
                for cl in service.clients])
        metric("esl_connect_failures_total", "counter",
               "Event-socket connection attempts that failed (refused, timed out, auth), per FreeSWITCH.",
               [({"server": f"{cl.target.host}:{cl.target.port}"}, cl.counters["connect_failures"])
                for cl in service.clients])
        metric("esl_reconnects_total", "counter", "Event-socket reconnections, per FreeSWITCH.",
               [({"server": f"{cl.target.host}:{cl.target.port}"}, cl.counters["reconnects"])
                for cl in service.clients])

    return render


def nsq_metrics(bus) -> Callable[[MetricWriter], None]:
    """The NSQ bus's publisher buffer and consumer counters."""

    def render(metric: MetricWriter) -> None:
        publishers = [p for p in (bus.publisher, bus.control_publisher)]
        metric("nsq_publisher_connected", "gauge", "1 while the publisher has an nsqd connection.",
               [({"topic": p.topic}, p.connected) for p in publishers])
        metric("nsq_publisher_buffered", "gauge", "Messages waiting for nsqd.",
               [({"topic": p.topic}, p.buffered) for p in publishers])
        metric("nsq_publisher_dropped_total", "counter",
               "Messages dropped because the buffer was full while nsqd was unreachable.",
               [({"topic": p.topic}, p.dropped) for p in publishers])
        metric("nsq_publisher_refused_total", "counter",
               "Messages not sent because nsqd refuses them (over its --max-msg-size).",
               [({"topic": p.topic}, p.refused) for p in publishers])
        metric("nsq_messages_received_total", "counter", "Messages consumed, per topic.",
               [({"topic": c.topic}, c.received) for c in bus.consumers])
        metric("nsq_messages_malformed_total", "counter",
               "Messages FIN'd without being applied (bad JSON or invalid update).",
               [({"topic": c.topic}, c.malformed) for c in bus.consumers])

    return render
