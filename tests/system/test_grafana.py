"""contrib/grafana/busylamp.json: a valid dashboard whose every query names metrics a node
really exposes once traffic went through it (ESL from the simulator, NSQ, SIP to sipp)."""

from __future__ import annotations

import json
import re

import pytest

from busylamp.esl.simulator import FreeSwitchSimulator
from tests.conftest import REPO
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp
from tests.system.test_cli_subprocess import http_get, metric, run_node

DASHBOARD = REPO / "contrib" / "grafana" / "busylamp.json"
METRIC = re.compile(r"\bbusylamp_[a-z_]+")


def notified(sipp, state: str) -> bool:
    return any(f"<state>{state}</state>" in n.body for n in sipp.received("NOTIFY"))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(board: dict) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in board["panels"]}


def test_dashboard_is_grafana_json_with_the_panels_operators_need():
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in ("timeseries", "stat", "gauge")
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
    text = json.dumps(queries(board))
    for needed in ("busylamp_subscriptions_active", "busylamp_notify_sent_total",
                   "busylamp_notify_failed_total", "busylamp_esl_connected",
                   "busylamp_nsq_publisher_connected", "busylamp_update_gaps_total",
                   "busylamp_sip_dropped_total"):
        assert needed in text, needed
    for q in ("0.5", "0.99"):
        assert (f"histogram_quantile({q}, sum by (le, stage) "
                "(rate(busylamp_stage_seconds_bucket") in text


@pytest.mark.sipp
def test_every_metric_of_every_panel_is_in_the_metrics_of_a_busy_node(nsq, tmp_path):
    nsqd = nsq.tcp_address
    sim = FreeSwitchSimulator(domain="example.com")
    host, port = sim.start()
    try:
        with run_node(tmp_path, "--esl", f"ClueCon@{host}:{port}", "--nsqd", nsqd,
                      "--topic", "grafana", role="all", bus="nsq", ready_timeout=10) as node:
            wait_until(lambda: metric(node.http_port, 'busylamp_esl_connected{server="'
                                      f'{host}:{port}"}}') == 1, timeout=10)
            presentity = "1002@example.com"
            watcher = Watcher(presentity).subscribe().notify(count=4)
            sipp = start_sipp(watcher.write(tmp_path / "w.xml"), ("127.0.0.1", node.sip_port),
                              tmp_path / "s")
            wait_until(lambda: metric(node.http_port,
                                      'busylamp_subscriptions_active{event="dialog"}') == 1)
            # one state per step: a change that comes while a NOTIFY is in flight is merged into
            # the next one (one NOTIFY pending per dialog), so back-to-back steps may send fewer
            call = sim.originate("1001", "1002")
            wait_until(lambda: notified(sipp, "early"), message="no early NOTIFY")
            sim.answer(call)
            wait_until(lambda: notified(sipp, "confirmed"), message="no confirmed NOTIFY")
            sim.hangup(call)
            sim.originate("1003", "1004", caller_presence=False)  # a skipped event
            assert sipp.wait() == 0, sipp.errors()
            wait_until(lambda: (metric(node.http_port, "busylamp_notify_sent_total") or 0) >= 4)
            _, body = http_get(node.http_port, "/metrics")
    finally:
        sim.stop()
    samples = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
               if line and not line.startswith("#")}
    missing = {title: sorted(set(METRIC.findall(" ".join(exprs))) - samples)
               for title, exprs in queries(dashboard()).items()}
    assert not any(missing.values()), missing
