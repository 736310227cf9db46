"""`busylamp why` after a real call through the kit's FreeSWITCH: the timeline names the ESL
event, the update and the NOTIFY with its 200 OK, in order, every time inside the test's window;
the stage histograms of the whole chain are in /metrics."""

from __future__ import annotations

import json
import time

from tests.polling import wait_until
from tests.system.phones import Callee, CalleePlan, Caller, CallerPlan, LampWatcher, lamp
from tests.system.test_cli_subprocess import busylamp, http_get


def test_why_names_the_freeswitch_event_the_update_and_the_answered_notify(
        fs, busylamp_all, tmp_path):
    node = busylamp_all
    presentity = "1001@127.0.0.1"
    window_start = time.time()
    watch = LampWatcher(presentity, ("127.0.0.1", node.sip_port), tmp_path).start()
    try:
        wait_until(lambda: watch.notifies(), timeout=5)
        callee = Callee("1001", CalleePlan(ring_ms=800, answer=200), fs.sip, tmp_path).start()
        caller = Caller("1000", "1001", CallerPlan(talk_ms=1000), fs.sip, tmp_path).start()
        caller.wait(30)
        wait_until(lambda: [lamp(d) for d in watch.dialogs()][-1:] == ["idle"]
                   and len(watch.notifies()) >= 3, timeout=5)
        callee.run.kill()
        code, out, err = busylamp("why", presentity, "--json", "--http", node.http,
                                  workdir=tmp_path / "cli")
        assert code == 0, err
        code, text, err = busylamp("why", presentity, "--http", node.http,
                                   workdir=tmp_path / "cli")
        assert code == 0, err
        _, metrics = http_get(node.http_port, "/metrics")
    finally:
        watch.stop()
    window_end = time.time()
    report = json.loads(out)
    timeline = report["timeline"]
    assert timeline, text
    for item in timeline:
        assert window_start <= item["at"] <= window_end, item
    # the first dialog update of the call: the callee's leg ringing
    update = next(i for i in timeline if i["kind"] == "update" and i["package"] == "dialog"
                  and i["state"] == "early")
    entry = update["id"].split(".")[0]
    chain = [i for i in timeline if i["id"].split(".")[0] == entry]
    assert [i["kind"] for i in chain] == ["esl", "bridge", "update", "notify", "answer"], chain
    esl, bridge, update, notify, ok = chain
    assert esl["event"] == "CHANNEL_CALLSTATE" and esl["call_state"] in ("RINGING", "EARLY")
    assert esl["unique_id"] == update["record"] and esl["switch_id"]
    assert update["effect"] == "applied"
    assert notify["watcher"] == "sip:2000@127.0.0.1" and ok["status"] == 200
    assert [i["at"] for i in chain] == sorted(i["at"] for i in chain)
    states = [i["state"] for i in timeline if i["kind"] == "update" and i["package"] == "dialog"]
    assert states[:3] == ["early", "confirmed", "terminated"], states
    assert report["lamps"][0]["lamp"] == "dark (no call)"
    assert "FreeSWITCH CHANNEL_CALLSTATE" in text and "200 OK from sip:2000@127.0.0.1" in text
    counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
              for line in metrics.decode().splitlines()
              if line.startswith("busylamp_stage_seconds_count")}
    for stage in ("esl_to_bridge", "bridge_to_applied", "applied_to_notify", "notify_to_answer",
                  "subscribe_to_notify"):
        assert counts[f'stage="{stage}"'] >= 1, counts
