"""The busylamp command as an operator runs it: real processes, a real sipp phone.

`busylamp run` is started as a subprocess on ephemeral loopback ports, driven with `busylamp
publish`, read back with `busylamp inspect` and `busylamp tail --json`, and stopped with SIGTERM;
operator mistakes (bad flags, ports in use, an unreachable node or FreeSWITCH) must give one clear
line and the documented exit code, never a traceback.

The helpers here (`Proc`, `busylamp`, `run_node`, ...) are shared with tests/system/test_cli_nsq.py. Every
wait yields to gevent, so in-process gevent servers (the ESL simulator, say) keep serving meanwhile.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import SippRun, free_port, start_sipp

REPO = Path(__file__).resolve().parents[2]
PRESENTITY = "1001@example.com"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR)")


def busylamp_command() -> list[str]:
    """The `busylamp` console script next to this interpreter, else `python -c` on cli.main."""
    script = Path(sys.executable).parent / "busylamp"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from busylamp import cli; sys.exit(cli.main(prog_name=\"busylamp\"))"]


def clean_env() -> dict[str, str]:
    """The environment without BUSYLAMP_* settings of whoever runs the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSYLAMP_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class Proc:
    """A busylamp subprocess whose stdout/stderr go to files (no pipe can fill up)."""

    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @classmethod
    def start(cls, args: list[str], workdir: Path, name: str,
              env: dict[str, str] | None = None) -> Proc:
        workdir.mkdir(parents=True, exist_ok=True)
        out, err = workdir / f"{name}.out", workdir / f"{name}.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen([*busylamp_command(), *args], cwd=REPO, env=env or clean_env(),
                                    stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        return cls(proc, out, err)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code, polling (and yielding to gevent) until ``timeout``."""
        wait_until(lambda: self.proc.poll() is not None, timeout=timeout,
                   message=f"{self.proc.args} still running after {timeout}s:\n{self.stderr}")
        return self.proc.returncode

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then the exit code (AssertionError if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def busylamp(*args: str, workdir: Path, timeout: float = 8.0,
             env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run one short busylamp command; (exit code, stdout, stderr)."""
    name = f"cmd{len(list(workdir.glob('cmd*.out'))) if workdir.exists() else 0}"
    proc = Proc.start(list(args), workdir, name, env)
    try:
        code = proc.wait(timeout)
    finally:
        proc.kill()
    return code, proc.stdout, proc.stderr


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not log records (what an operator reads as the error)."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def assert_one_line_error(code: int, stderr: str, expected_code: int, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert code == expected_code, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def healthy(port: int) -> bool:
    with contextlib.suppress(OSError):
        return http_get(port, "/health")[0] == 200
    return False


def metric(port: int, sample: str) -> float | None:
    """One sample's value from /metrics (``name{labels}`` exactly as exposed)."""
    _, body = http_get(port, "/metrics")
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


@dataclass
class Node:
    proc: Proc
    sip_port: int
    http_port: int

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def run_node(workdir: Path, *extra: str, role: str = "presence", bus: str = "memory",
             ready_timeout: float = 8.0) -> Iterator[Node]:
    """`busylamp run` on ephemeral loopback ports (UDP and TCP SIP on one port), yielded once
    /health answers 200; killed in any case on exit."""
    sip_port, http_port = free_port(), free_port(socket.SOCK_STREAM)
    args = ["run", "--role", role, "--bus", bus,
            "--sip", f"udp:127.0.0.1:{sip_port}", "--sip", f"tcp:127.0.0.1:{sip_port}",
            "--http", f"127.0.0.1:{http_port}", "--status-interval", "0", *extra]
    proc = Proc.start(args, workdir, "node")
    try:
        wait_until(lambda: healthy(http_port) or proc.proc.poll() is not None,
                   timeout=ready_timeout, message="node not healthy in time")
        assert proc.proc.poll() is None, f"node exited {proc.proc.returncode}:\n{proc.stderr}"
        yield Node(proc, sip_port, http_port)
    finally:
        proc.kill()


def subscribed(node: Node, workdir: Path, presentity: str = PRESENTITY) -> list[dict]:
    code, out, err = busylamp("inspect", "subscriptions", "--http", node.http, "--presentity",
                              presentity, "--json", workdir=workdir)
    assert code == 0, err
    return json.loads(out)["subscriptions"]


def notifies(sipp: SippRun) -> list:
    return sipp.received("NOTIFY")


def json_lines(text: str) -> list[dict]:
    """Every non-empty line parsed on its own (fails if a line is not one JSON object)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- the whole operator flow --------------------------------------------------------------------

def test_run_publish_inspect_tail_and_sigterm(tmp_path):
    watcher = Watcher(PRESENTITY).subscribe().notify(count=3)  # initial, confirmed, terminated
    scenario = watcher.write(tmp_path / "watch.xml")
    with run_node(tmp_path) as node:
        tail = Proc.start(["tail", "--http", node.http, "--json"], tmp_path, "tail")
        sipp = start_sipp(scenario, ("127.0.0.1", node.sip_port), tmp_path / "sipp", timeout=15)
        try:
            # tail has no "connected" signal: publish a probe until it shows up
            def tail_sees_probe() -> bool:
                code, _, err = busylamp("publish", "--http", node.http, "--presentity",
                                        "9999@example.com", "--state", "early",
                                        workdir=tmp_path)
                assert code == 0, err
                return "9999" in tail.stdout
            wait_until(tail_sees_probe, timeout=8, interval=0.2, message="tail never connected")

            wait_until(lambda: subscribed(node, tmp_path), timeout=8, interval=0.1,
                       message="the sipp SUBSCRIBE never showed in inspect subscriptions")
            code, out, err = busylamp(
                "publish", "--http", node.http, "--package", "dialog", "--presentity", PRESENTITY,
                "--state", "confirmed", "--direction", "recipient", "--call-id", "call-1",
                "--to", "sip:2002@example.com", workdir=tmp_path)
            assert code == 0, err
            assert json.loads(out) == {"accepted": 1}

            wait_until(lambda: any("<state>confirmed</state>" in n.body for n in notifies(sipp)),
                       timeout=8, message="sipp never got the confirmed NOTIFY")

            rows = subscribed(node, tmp_path)
            assert len(rows) == 1 and "2000@example.com" in json.dumps(rows[0])

            code, out, err = busylamp("inspect", "presentity", PRESENTITY, "--http", node.http,
                                      "--json", workdir=tmp_path)
            assert code == 0, err
            dialog = json.loads(out)["packages"]["dialog"]
            assert dialog["watchers"] == 1
            assert [(r["id"], r["data"]["State"]) for r in dialog["records"]] == [
                ("call-1", "confirmed")]
            assert "<state>confirmed</state>" in dialog["body"]

            code, out, err = busylamp("inspect", "stats", "--http", node.http, "--json",
                                      workdir=tmp_path)
            assert code == 0, err
            stats = json.loads(out)
            assert stats["health"]["ready"] is True and stats["health"]["subscriptions"] == 1
            assert stats["metrics"]['busylamp_subscriptions_active{event="dialog"}'] == 1
            assert stats["metrics"]['busylamp_publishes_total{outcome="accepted"}'] >= 2
            code, out, err = busylamp("inspect", "stats", "--http", node.http, workdir=tmp_path)
            assert code == 0 and "busylamp_notify_sent_total" in out, err

            wait_until(lambda: "call-1" in tail.stdout, timeout=5, message="tail missed it")
            ours = [u for u in json_lines(tail.stdout) if u.get("Call-ID") == "call-1"]
            assert len(ours) == 1
            assert ours[0]["State"] == "confirmed" and ours[0]["From-User"] == "1001"
            assert ours[0]["Direction"] == "recipient"

            assert node.proc.stop(timeout=5) == 0, node.proc.stderr
            assert sipp.wait(timeout=8) == 0, sipp.errors()
            states = [n.header("subscription-state") for n in notifies(sipp)]
            assert len(states) == 3 and states[-1].startswith("terminated"), states
            assert "reason=deactivated" in states[-1]
            assert "Traceback" not in node.proc.stderr

            # the node went away: tail ends by itself and says why, in one line
            assert_one_line_error(tail.wait(timeout=5), tail.stderr, 1,
                                  f"http://{node.http} closed the stream")
        finally:
            sipp.kill()
            tail.kill()


def test_sigterm_with_shutdown_drop_sends_no_final_notify(tmp_path):
    scenario = Watcher(PRESENTITY).subscribe().notify(count=1).write(tmp_path / "watch.xml")
    with run_node(tmp_path, "--shutdown", "drop") as node:
        sipp = start_sipp(scenario, ("127.0.0.1", node.sip_port), tmp_path / "sipp", timeout=10)
        try:
            assert sipp.wait(timeout=8) == 0, sipp.errors()
            assert subscribed(node, tmp_path)
            assert node.proc.stop(timeout=5) == 0, node.proc.stderr
            assert "dropping subscriptions" in node.proc.stderr
            assert len(notifies(sipp)) == 1
        finally:
            sipp.kill()


# --- operator mistakes: one line, exit 2 (config) or 1 (unreachable) ----------------------------

def _occupy(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


@pytest.mark.parametrize(("kind", "flag"), [
    (socket.SOCK_DGRAM, "--sip"), (socket.SOCK_STREAM, "--sip"), (socket.SOCK_STREAM, "--http"),
])
def test_listener_port_in_use_exits_2_naming_the_flag(tmp_path, kind, flag):
    busy_port = free_port(kind)
    other_port = free_port(socket.SOCK_STREAM)
    transport = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    sip = f"{transport}:127.0.0.1:{busy_port if flag == '--sip' else other_port}"
    http = f"127.0.0.1:{busy_port if flag == '--http' else other_port}"
    with _occupy(kind, busy_port):
        code, _, err = busylamp("run", "--role", "presence", "--sip", sip, "--http", http,
                                "--status-interval", "0", workdir=tmp_path)
    line = assert_one_line_error(code, err, 2, flag, f"port {busy_port} already in use")
    assert line.startswith("Error: busylamp run:")


@pytest.mark.parametrize(("args", "env", "needle"), [
    (["--sip", "udp:127.0.0.1"], {}, 'invalid --sip "udp:127.0.0.1": expected udp:HOST:PORT'),
    (["--status-interval", "soon"], {}, "--status-interval"),
    (["--shutdown", "never"], {}, "terminate or drop"),
    (["--http", "127.0.0.1:99999"], {}, "--http"),
    (["--no-such-flag"], {}, "--no-such-flag"),
    (["--role", "presence", "--sip", "udp:127.0.0.1:0", "--http", "192.0.2.1:1",
      "--http-token", "t", "--status-interval", "0"], {}, "fix --http"),
    (["--role", "presence", "--sip", "udp:192.0.2.1:5060", "--http", "off"], {}, "fix --sip"),
    ([], {"BUSYLAMP_T1": "abc"}, 'invalid BUSYLAMP_T1 "abc"'),
])
def test_run_bad_values_exit_2_with_one_line(tmp_path, args, env, needle):
    code, out, err = busylamp("run", *args, workdir=tmp_path, env={**clean_env(), **env})
    assert_one_line_error(code, err, 2, needle)
    assert out == ""


@pytest.mark.parametrize("args", [
    ["publish", "--presentity", PRESENTITY, "--state", "confirmed"],
    ["inspect", "subscriptions"],
    ["inspect", "presentity", PRESENTITY],
    ["inspect", "stats", "--json"],
    ["tail", "--json"],
])
def test_unreachable_node_exits_1_with_one_line(tmp_path, args):
    port = free_port(socket.SOCK_STREAM)  # nothing listens there
    code, out, err = busylamp(*args, "--http", f"127.0.0.1:{port}", workdir=tmp_path)
    assert_one_line_error(code, err, 1, f"127.0.0.1:{port}", "cannot reach")
    assert out == ""


def test_publish_bad_value_exits_2_with_one_line(tmp_path):
    code, _, err = busylamp("publish", "--presentity", PRESENTITY, "--state", "sleeping",
                            workdir=tmp_path)
    assert_one_line_error(code, err, 2, '--state "sleeping"', "confirmed")


# --- FreeSWITCH down: the node serves anyway ----------------------------------------------------

def test_role_all_with_unreachable_esl_warns_once_and_serves(tmp_path):
    esl_port = free_port(socket.SOCK_STREAM)  # closed: nothing listens
    with run_node(tmp_path, "--esl", f"ClueCon@127.0.0.1:{esl_port}", role="all") as node:
        wait_until(lambda: "cannot connect to FreeSWITCH" in node.proc.stderr, timeout=5,
                   message="no ESL connection warning")
        # the absence of more warnings is proven by later attempts that failed without one
        failures = f'busylamp_esl_connect_failures_total{{server="127.0.0.1:{esl_port}"}}'
        wait_until(lambda: (metric(node.http_port, failures) or 0) >= 3,
                   timeout=10, message="fewer than 3 failed ESL connection attempts")
        assert healthy(node.http_port)
        warnings = [line for line in node.proc.stderr.splitlines() if "FreeSWITCH" in line
                    and ("WARNING" in line or "ERROR" in line)]
        assert len(warnings) == 1 and f"127.0.0.1:{esl_port}" in warnings[0], node.proc.stderr
        assert "Traceback" not in node.proc.stderr
        assert node.proc.stop(timeout=5) == 0, node.proc.stderr
        assert "Traceback" not in node.proc.stderr


