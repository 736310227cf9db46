"""/metrics text of a node with some activity: every family present, values right."""

from __future__ import annotations

import re

from tests.node_util import publish, running_node


def _metrics_after_one_update() -> str:
    """/metrics of a node that took one dialog update."""
    with running_node() as node:
        publish(node, {
            "Event-Name": "update", "Event-Package": "dialog", "From": "sip:1001@example.com",
            "From-User": "1001", "From-Realm": "example.com", "To": "sip:1002@example.com",
            "Call-ID": "c1", "State": "early", "Expires": 60,
        })
        return node.metrics_text()


def test_metrics_text_has_the_families_and_values():
    text = _metrics_after_one_update()
    for family in ("subscriptions_active", "notify_sent_total", "notify_retransmitted_total",
                   "notify_failed_total", "publishes_total", "sip_malformed_total",
                   "sip_dropped_total", "sip_udp_receive_drops_total", "state_records",
                   "update_gaps_total"):
        assert f"# TYPE busylamp_{family} " in text
    assert 'busylamp_publishes_total{outcome="accepted"} 1' in text
    assert 'busylamp_state_records{event="dialog"} 1' in text
    assert 'busylamp_subscriptions_active{event="dialog"} 0' in text
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(r'busylamp_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? '
                                r'-?[0-9.e+]+', line), line


def test_the_benchmark_reads_its_step_counters_from_this_text():
    """bench/servers.py reports each fan-out step's NOTIFY retransmissions and refused
    publishes from /metrics: every sample it names is there, read as its value."""
    from bench.servers import NODE_COUNTERS, metric_values

    text = _metrics_after_one_update()
    values = metric_values(text, NODE_COUNTERS)
    assert set(values) == set(NODE_COUNTERS)
    assert values["notify_retransmitted"] == 0.0
    assert metric_values(text, {"accepted": 'busylamp_publishes_total{outcome="accepted"}'}) \
        == {"accepted": 1.0}


def test_subscription_pages_cover_every_row_once():
    from tests.unit.test_engine import PHONE, subscribe

    with running_node() as node:
        for i in range(25):
            node.engine.receive(subscribe(call_id=f"c{i}", branch=f"z9hG4bK-{i}", from_tag=f"t{i}"),
                                PHONE, "udp", None, node.clock())
        node.engine.messages_to_send()
        seen, cursor = [], None
        while True:
            rows, cursor = node.subscriptions(presentity=None, watcher=None, event=None,
                                              cursor=cursor, limit=10)
            seen += [r["call_id"] for r in rows]
            if cursor is None:
                break
        assert sorted(seen) == sorted(f"c{i}" for i in range(25))
