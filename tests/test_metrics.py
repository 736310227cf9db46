"""/metrics text of a node with some activity: every family present, values right."""

from __future__ import annotations

import re

from tests.node_util import publish, running_node


def test_metrics_text_has_the_families_and_values():
    with running_node() as node:
        publish(node, {
            "Event-Name": "update", "Event-Package": "dialog", "From": "sip:1001@example.com",
            "From-User": "1001", "From-Realm": "example.com", "To": "sip:1002@example.com",
            "Call-ID": "c1", "State": "early", "Expires": 60,
        })
        text = node.metrics_text()
    for family in ("subscriptions_active", "notify_sent_total", "notify_retransmitted_total",
                   "notify_failed_total", "publishes_total", "sip_malformed_total",
                   "sip_dropped_total", "state_records", "update_gaps_total"):
        assert f"# TYPE busylamp_{family} " in text
    assert 'busylamp_publishes_total{outcome="accepted"} 1' in text
    assert 'busylamp_state_records{event="dialog"} 1' in text
    assert 'busylamp_subscriptions_active{event="dialog"} 0' in text
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(r'busylamp_[a-z_]+(\{[a-z_]+="[^"]*"\})? -?[0-9.e+]+', line), line
