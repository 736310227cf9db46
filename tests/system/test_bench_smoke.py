"""The benchmark harness: its pure parts, and a tiny run against a real Kamailio."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bench import analysis
from bench.report import table
from bench.responder import Responder
from bench.sipp import parse_stat_file
from bench.workload import PublishPlan, Workload, dialog_update, presentity_index

NOTIFY = (
    b"NOTIFY sip:phone1@127.0.0.1:5999 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\n"
    b"To: <sip:phone1@bench.local>;tag=abc\r\n"
    b"From: <sip:ext7@bench.local>;tag=srv\r\n"
    b"CSeq: 3 NOTIFY\r\nCall-ID: 9-1@127.0.0.1\r\nEvent: dialog\r\nMax-Forwards: 70\r\n"
    b"Content-Type: application/dialog-info+xml\r\nContent-Length: 200\r\n\r\n"
    b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
    b'version="4" state="full" entity="sip:ext7@bench.local">\n  <dialog id="c" call-id="c" '
    b'local-tag="p12" direction="initiator">\n    <state>confirmed</state></dialog></dialog-info>'
)


def test_workload_balances_watchers_and_keeps_keys_distinct():
    w = Workload(watchers=10, keys=4)
    assert w.subscriptions == 40
    assert w.watcher_counts() == [4] * 10
    assert all(len(set(w.watched(i))) == 4 for i in range(10))
    rows = list(w.csv_rows())
    assert rows[0] == "phone0;ext0;bench.local" and len(rows) == 40
    assert Workload(watchers=10, keys=4, pool=20).watched_presentities() == list(range(20))
    with pytest.raises(ValueError):
        Workload(watchers=2, keys=4, pool=3)


def test_publish_plan_cycles_each_presentity_through_call_states():
    plan = PublishPlan([3, 5])
    got = [plan.next() for _ in range(8)]
    assert got == [(0, 3, "early", 0), (1, 5, "early", 0), (2, 3, "confirmed", 0),
                   (3, 5, "confirmed", 0), (4, 3, "terminated", 0), (5, 5, "terminated", 0),
                   (6, 3, "early", 1), (7, 5, "early", 1)]
    update = dialog_update(3, "early", "p6", call=1)
    assert update["From"] == "sip:ext3@bench.local" and update["From-Tag"] == "p6"
    assert update["Call-ID"] == "bench-3-1" != dialog_update(3, "early", "p0")["Call-ID"]
    assert update["Event-Name"] == "update" and update["Expires"] == 120
    assert dialog_update(3, "terminated", "p9")["Expires"] == 10
    assert presentity_index("ext3") == 3 and presentity_index("rp1x2") is None


def test_c_responder_copies_dialog_headers_and_records_state():
    import socket

    responder = Responder(cpu=None)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
            s.sendto(b"SIP/2.0 200 OK\r\n\r\n", ("127.0.0.1", responder.port))  # ignored
            s.sendto(NOTIFY, ("127.0.0.1", responder.port))
            reply = s.recv(65535)
    finally:
        answered, records = responder.stop()
    lines = reply.split(b"\r\n")
    assert lines[0] == b"SIP/2.0 200 OK"
    assert lines[1:7] == [
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0",
        b"To: <sip:phone1@bench.local>;tag=abc", b"From: <sip:ext7@bench.local>;tag=srv",
        b"CSeq: 3 NOTIFY", b"Call-ID: 9-1@127.0.0.1"]
    assert reply.endswith(b"Content-Length: 0\r\n\r\n")
    assert answered == 1 and records[0][1:] == (b"9-1@127.0.0.1", b"ext7", b"confirmed", 4, b"p12")


def test_responder_ceiling_closed_loop_loses_nothing():
    from bench.responder import measure_ceiling

    res = measure_ceiling(2000, responder_cpu=None, blaster_cpu=None, window=100)
    assert res["answered"] == 2000 and res["notify_per_s"] > 0


ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"


def take_requests(buf: bytes) -> tuple[list[bytes], bytes]:
    """The bodies of the complete requests (framed by Content-Length) at the start of ``buf``,
    and what follows them."""
    bodies = []
    while b"\r\n\r\n" in buf:
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(rest) < length:
            break
        bodies.append(rest[:length])
        buf = rest[length:]
    return bodies, buf


def test_c_publisher_posts_the_workload_json_paced(tmp_path: Path):
    import json
    import socket
    import threading

    from bench.publisher import publish

    bodies: list[dict] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        buf = b""
        while len(bodies) < 6:
            taken, buf = take_requests(buf + conn.recv(65536))
            for body in taken:
                bodies.append(json.loads(body))
                conn.sendall(ACCEPTED)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    plan = PublishPlan([3, 5])
    res = publish(listener.getsockname(), plan, 6, 200.0, connections=1, tag_prefix="q", depth=2)
    listener.close()
    assert [s[:3] for s in res.sent] == [(0, 3, "early"), (1, 5, "early"), (2, 3, "confirmed"),
                                         (3, 5, "confirmed"), (4, 3, "terminated"),
                                         (5, 5, "terminated")]
    assert bodies[2] == dialog_update(3, "confirmed", "q2", call=0)
    assert res.statuses == {202: 6} and res.errors == 0
    assert res.finished - res.started >= 5 / 200.0  # paced, not a burst


def _rec(t, call, pres, state, version, tag):
    return (t, call.encode(), f"ext{pres}".encode(), state.encode(), version, tag.encode())


def test_fanout_figures_count_delivery_state_and_latency():
    held = {"a": 1, "b": 1, "c": 2}
    sent = [(0, 1, "early", 10.0), (1, 2, "early", 10.1), (2, 1, "confirmed", 10.2)]
    records = [
        _rec(10.001, "a", 1, "early", 2, "p0"), _rec(10.002, "b", 1, "early", 2, "p0"),
        _rec(10.002, "b", 1, "early", 2, "p0"),  # retransmission: counted once
        _rec(10.104, "c", 2, "early", 2, "p1"),
        _rec(10.21, "a", 1, "confirmed", 3, "p2"),  # "b" never got the confirmed NOTIFY
        _rec(10.3, "zz", 1, "confirmed", 3, "p2"),  # not a held subscription: ignored
    ]
    fig = analysis.fanout(sent, analysis.decode(records), held, publish_rate=100.0)
    assert fig.expected == 5 and fig.delivered == 4
    assert fig.delivery_ratio == pytest.approx(0.8)
    assert fig.right_state_ratio == pytest.approx(2 / 3)
    assert fig.latency_ms_max == pytest.approx(10.0)
    assert fig.latency_ms_p50 == pytest.approx(2.0)
    assert fig.tag_mismatch == 0 and fig.unmatched == 0


def test_fanout_matches_the_latest_publish_of_the_state_even_with_a_stale_tag():
    # Kamailio shows the oldest unexpired terminated call: its tag names an earlier publish
    held = {"a": 1}
    sent = [(0, 1, "terminated", 10.0), (1, 1, "early", 11.0), (2, 1, "terminated", 12.0)]
    records = [_rec(10.002, "a", 1, "terminated", 2, "p0"), _rec(11.003, "a", 1, "early", 3, "p1"),
               _rec(12.004, "a", 1, "terminated", 4, "p0"),
               _rec(14.0, "a", 1, "terminated", 5, "p2")]  # expiry sweep: same state again
    fig = analysis.fanout(sent, analysis.decode(records), held, publish_rate=1.0)
    assert fig.delivery_ratio == 1.0 and fig.right_state_ratio == 1.0
    assert fig.latency_ms_max == pytest.approx(4.0)
    assert fig.tag_mismatch == 1 and fig.extra == 1
    assert fig.notify_per_s == pytest.approx(3 / 2.004)


def test_fanout_matches_by_state_when_the_server_renders_no_tag():
    held = {"a": 1}
    sent = [(0, 1, "early", 10.0), (1, 1, "confirmed", 11.0)]
    records = [_rec(10.005, "a", 1, "early", 2, ""), _rec(11.002, "a", 1, "confirmed", 3, "")]
    fig = analysis.fanout(sent, analysis.decode(records), held, publish_rate=2.0)
    assert fig.delivery_ratio == 1.0 and fig.right_state_ratio == 1.0
    assert fig.latency_ms_max == pytest.approx(5.0)
    assert analysis.held_subscriptions(analysis.decode(
        [_rec(1.0, "a", 1, "early", 1, "v0"), _rec(1.0, "b", 2, "early", 1, "p9")])) == {"a": 1}


def test_percentile_and_median():
    values = [float(v) for v in range(1, 101)]
    assert analysis.percentile(values, 50) == 50.0
    assert analysis.percentile(values, 99) == 99.0
    assert analysis.percentile(values, 100) == 100.0
    assert analysis.median([3.0, 1.0, 2.0, 10.0]) == 2.5


def test_sipp_stat_file_parsing(tmp_path: Path):
    names = ["StartTime", "CurrentTime", "SuccessfulCall(C)", "FailedCall(C)",
             "Retransmissions(C)", "OutOfCallMsgs(C)", "DeadCallMsgs(C)"]
    row = ["2026-11-26\t09:52:42.5\t100.5", "2026-11-26\t09:52:44.5\t102.5", "200", "0", "3",
           "0", "0"]
    stat = tmp_path / "s.csv"
    stat.write_text(";".join(names) + ";\n" + ";".join(row) + ";\n")
    res = parse_stat_file(stat, 100.0, 200, 0)
    assert res.successful == 200 and res.retransmissions == 3 and not res.clean
    assert res.rate == pytest.approx(100.0)


needs_tools = pytest.mark.skipif(
    not (shutil.which("kamailio") and shutil.which("sipp") and shutil.which("kamcmd")),
    reason="kamailio, kamcmd and sipp are needed")


@pytest.mark.kamailio
@pytest.mark.sipp
@needs_tools
def test_tiny_run_against_kamailio_delivers_everything(tmp_path: Path):
    from bench.runner import QUICK, make_server, run_server

    cfg = replace(QUICK, watchers=20, keys=2, rate=200.0, duration=1.0, repeats=1,
                  subscribe_rate=500.0, probe_start=500.0, probe_seconds=0.5,
                  probe_max_rungs=1, settle=0.5, memory_settle=0.0, kamailio_shm_mb=64)
    result = run_server(make_server("kamailio", cfg, tmp_path), cfg, tmp_path)
    assert result.subscribe["successful"] == 40
    assert result.held == 40
    fan = result.fanout_median
    assert fan["delivery_ratio"] == 1.0
    assert fan["right_state_ratio"] == 1.0
    assert fan["delivered"] == fan["expected"] == 200 * 2  # 200 publishes x 2 watchers
    assert 0 < fan["latency_ms_p50"] <= fan["latency_ms_p99"] <= fan["latency_ms_max"]
    assert result.clean_subscribe_per_s > 0
    assert result.memory["grown_kb"]["shm_used_kb"] > 0
    assert result.cpu_seconds["fanout"] > 0
    assert "| delivery ratio (median) | 1.0000 |" in table({"kamailio": _as_dict(result)})


def _as_dict(result):
    from dataclasses import asdict

    return asdict(result)


def test_engine_micro_benchmark_runs_and_completes_every_transaction():
    from bench.engine import engine_throughput

    result = engine_throughput(presentities=20, keys=3)
    assert result["watchers"] == 60
    assert result["notifies"] == 3 * 60  # three state changes, each to every watcher
    assert result["notify_transactions_per_s"] > 0


def test_notify_phase_runs_as_the_script_the_callgrind_commands_name() -> None:
    """``python bench/notify_phase.py`` puts bench/ first on sys.path, where bench/bisect.py
    would shadow the standard library's bisect: the script takes its folder off again."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent.parent
    run = subprocess.run([sys.executable, str(repo / "bench" / "notify_phase.py"), ".", "on"],
                         cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]


def test_c_publisher_opens_a_connection_only_when_it_needs_one():
    """An unused connection is never opened: opened early and left idle, it would meet the
    node's first-request deadline (408) mid-run."""
    import socket
    import threading

    from bench.publisher import publish

    accepted: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        buf = b""
        while chunk := conn.recv(65536):
            taken, buf = take_requests(buf + chunk)
            conn.sendall(ACCEPTED * len(taken))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    # 8 connections offered, one request at a time at 50/s: each answer is back long before
    # the next request is due, so the connection just answered is always the one free
    res = publish(listener.getsockname(), PublishPlan([1, 2]), 10, 50.0, connections=8,
                  tag_prefix="z")
    listener.close()
    assert res.statuses == {202: 10} and res.errors == 0
    assert len(accepted) == 1
    for conn in accepted:
        conn.close()


def test_publish_path_bench_answers_every_notify_and_every_publish():
    from bench.publish_path import run

    result = run(publishes=30, presentities=10, keys=2, timed=False)
    assert result["held"] == 20
    assert result["notifies_answered"] == 30 * 2  # each publish: one NOTIFY per watcher
