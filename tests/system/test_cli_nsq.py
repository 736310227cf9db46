"""busylamp publish/tail/run over NSQ, as subprocesses, against the real nsqd and nsqlookupd of
the kit (tests/nsq_kit.py), started on this test's own ports.

Every wait here yields to gevent (the helpers of tests/system/test_cli_subprocess.py do), never a
blocking `subprocess.run`.
"""

from __future__ import annotations

import time
import uuid

import gevent

from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp
from tests.system.test_cli_subprocess import (
    PRESENTITY,
    Proc,
    assert_one_line_error,
    busylamp,
    healthy,
    json_lines,
    metric,
    run_node,
    subscribed,
)

MALFORMED = 'busylamp_publishes_total{outcome="malformed_bus"}'


def topic_name() -> str:
    return f"cli_{uuid.uuid4().hex[:12]}"


def publish_dialog(nsqd: str, topic: str, workdir, state: str, call_id: str,
                   presentity: str = PRESENTITY) -> None:
    code, out, err = busylamp("publish", "--nsqd", nsqd, "--topic", topic, "--presentity",
                              presentity, "--state", state, "--call-id", call_id,
                              workdir=workdir)
    assert code == 0, err
    assert out.strip() == f"nsqd {nsqd}: OK"


def publish_raw(nsqd: str, topic: str, workdir, body: bytes) -> None:
    path = workdir / f"raw-{uuid.uuid4().hex[:6]}.json"
    path.write_bytes(body)
    code, _, err = busylamp("publish", "--nsqd", nsqd, "--topic", topic, "--from-file",
                            str(path), workdir=workdir)
    assert code == 0, err


# --- publish and tail ---------------------------------------------------------------------------

def test_publish_to_nsqd_and_tail_nsqd_json(nsq, tmp_path):
    nsqd = nsq.tcp_address
    topic = topic_name()
    tail = Proc.start(["tail", "--nsqd", nsqd, "--topic", topic, "--json"], tmp_path, "tail")
    try:
        # no "subscribed" signal from tail: publish probes until one shows up
        def tail_sees_probe() -> bool:
            publish_dialog(nsqd, topic, tmp_path, "early", "probe", "9999@example.com")
            return "probe" in tail.stdout
        wait_until(tail_sees_probe, timeout=8, interval=0.3, message="tail never consumed")
        publish_dialog(nsqd, topic, tmp_path, "confirmed", "call-7")
        wait_until(lambda: "call-7" in tail.stdout, timeout=5, message="tail missed call-7")
        ours = [u for u in json_lines(tail.stdout) if u.get("Call-ID") == "call-7"]
        assert len(ours) == 1
        assert ours[0]["State"] == "confirmed" and ours[0]["From"] == f"sip:{PRESENTITY}"
        # the probes and call-7, each taken once by nsqd; nothing left on tail's channel
        assert nsq.message_count(topic) == len(json_lines(tail.stdout))
        wait_until(lambda: nsq.settled(topic), timeout=5, message="tail left messages unfinished")
        assert "Traceback" not in tail.stderr
    finally:
        tail.kill()


def test_tail_lookupd_json_count(nsq, tmp_path):
    nsqd, lookupd = nsq.tcp_address, nsq.lookupd_address
    topic = topic_name()
    publish_dialog(nsqd, topic, tmp_path, "early", "call-1")  # the topic exists for lookupd
    wait_until(lambda: nsq.lookup(topic) == [nsqd], timeout=5, message="topic not in lookupd")
    tail = Proc.start(["tail", "--lookupd", lookupd, "--topic", topic, "--json", "--count", "2",
                       "--presentity", PRESENTITY], tmp_path, "tail")
    try:
        def tail_has_two() -> bool:
            if tail.proc.poll() is None:
                publish_dialog(nsqd, topic, tmp_path, "confirmed", "call-2")
            return tail.proc.poll() is not None
        wait_until(tail_has_two, timeout=8, interval=0.3, message="tail --count 2 never ended")
        assert tail.proc.returncode == 0, tail.stderr
        lines = json_lines(tail.stdout)
        assert len(lines) == 2 and all(u["From-User"] == "1001" for u in lines)
    finally:
        tail.kill()


def test_publish_to_unreachable_nsqd_exits_1(tmp_path):
    from tests.sipp_util import free_port

    port = free_port()
    code, out, err = busylamp("publish", "--nsqd", f"127.0.0.1:{port}", "--presentity",
                              PRESENTITY, "--state", "confirmed", workdir=tmp_path)
    assert_one_line_error(code, err, 1, f"cannot reach nsqd at 127.0.0.1:{port}", "--nsqd")
    assert out == ""


# --- a presence node consuming the topic ---------------------------------------------------------

def test_run_bus_nsq_notifies_and_survives_malformed_messages(nsq, tmp_path):
    nsqd = nsq.tcp_address
    topic = topic_name()
    # initial NOTIFY, confirmed, early (after the malformed ones), terminated at SIGTERM
    scenario = Watcher(PRESENTITY).subscribe().notify(count=4).write(tmp_path / "watch.xml")
    # a presence node of an NSQ cluster warm-starts (~3 s resync wait) before /health is 200
    with run_node(tmp_path, "--nsqd", nsqd, "--topic", topic, "--nsq-reconnect-interval", "0.2",
                  bus="nsq", ready_timeout=9) as node:
        sipp = start_sipp(scenario, ("127.0.0.1", node.sip_port), tmp_path / "sipp", timeout=15)
        try:
            wait_until(lambda: subscribed(node, tmp_path), timeout=5, interval=0.1,
                       message="the sipp SUBSCRIBE never showed in inspect subscriptions")
            publish_dialog(nsqd, topic, tmp_path, "confirmed", "call-1")
            wait_until(lambda: any("<state>confirmed</state>" in n.body
                                   for n in sipp.received("NOTIFY")),
                       timeout=5, message="no confirmed NOTIFY from the NSQ update")

            before = metric(node.http_port, MALFORMED)
            assert before == 0
            publish_raw(nsqd, topic, tmp_path, b'{"Event-Name": "update", "State": "confirmed"}')
            publish_raw(nsqd, topic, tmp_path, b'{"Event-Package": "dialog", "From": 7}')
            wait_until(lambda: metric(node.http_port, MALFORMED) == 2, timeout=5,
                       message="malformed bus messages not counted")
            publish_dialog(nsqd, topic, tmp_path, "early", "call-1")
            wait_until(lambda: any("<state>early</state>" in n.body
                                   for n in sipp.received("NOTIFY")),
                       timeout=5, message="node stopped consuming after malformed messages")
            assert healthy(node.http_port) and node.proc.proc.poll() is None

            assert node.proc.stop(timeout=6) == 0, node.proc.stderr
            assert sipp.wait(timeout=8) == 0, sipp.errors()
            states = [n.header("subscription-state") for n in sipp.received("NOTIFY")]
            assert states[-1].startswith("terminated") and "reason=deactivated" in states[-1]
            assert "Traceback" not in node.proc.stderr
        finally:
            sipp.kill()


def test_run_bus_nsq_counts_non_json_bodies_as_malformed(nsq, tmp_path):
    nsqd = nsq.tcp_address
    topic = topic_name()
    with run_node(tmp_path, "--nsqd", nsqd, "--topic", topic, bus="nsq", ready_timeout=9) as node:
        publish_raw(nsqd, topic, tmp_path, b"{not json")
        publish_raw(nsqd, topic, tmp_path, b"[1, 2]")
        publish_dialog(nsqd, topic, tmp_path, "confirmed", "call-1")
        wait_until(lambda: metric(node.http_port, 'busylamp_publishes_total{outcome="accepted"}')
                   == 1, timeout=5, message="the good update after the bad ones never applied")
        assert healthy(node.http_port)
        assert metric(node.http_port, MALFORMED) == 2


def test_run_with_unreachable_nsqd_serves_and_logs_no_tracebacks(tmp_path):
    from tests.sipp_util import free_port

    closed = f"127.0.0.1:{free_port()}"
    args = ["run", "--role", "presence", "--bus", "nsq", "--nsqd", closed,
            "--sip", "udp:127.0.0.1:0", "--http", "off", "--status-interval", "0",
            "--nsq-reconnect-interval", "0.2"]
    node = Proc.start(args, tmp_path, "node")
    try:
        wait_until(lambda: "unreachable" in node.stderr or node.proc.poll() is not None,
                   timeout=8, message="no nsqd outage logged")
        # several reconnect attempts (every 0.2 s) go by: still one line per outage
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert node.proc.poll() is None, node.stderr
        assert node.stderr.count("unreachable") == 2, node.stderr  # consumer + control consumer
        assert node.stop(timeout=6) == 0, node.stderr
        assert "Traceback" not in node.stderr
    finally:
        node.kill()
