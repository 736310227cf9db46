"""The CLI (cli.py and commands/) through click's CliRunner: run (flags/env/TOML), publish,
inspect, tail, dialplan."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
from pathlib import Path

import gevent
import gevent.server
import pytest
from click.testing import CliRunner

from busylamp import cli
from busylamp.app.tail import TAIL_EVENTS
from busylamp.commands import dialplanfiles
from busylamp.commands.logsetup import JsonLogFormatter
from busylamp.commands.tail import UpdatePrinter
from busylamp.presence.config import ConfigError
from tests.integration.test_api import TOKEN, ApiThread, FakeNode, dialog
from tests.polling import wait_until
from tests.sipp_util import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def started(monkeypatch):
    """Replace the long-running parts of `run`: record the config instead of serving."""
    calls: dict = {"patched": 0}
    monkeypatch.setattr("busylamp.app.patch_gevent", lambda: calls.__setitem__("patched", 1))
    monkeypatch.setattr("busylamp.commands.run.setup_logging",
                        lambda level, fmt: calls.update(log=(level, fmt)))
    monkeypatch.setattr("busylamp.app.roles.run_roles", lambda config: calls.update(config=config))
    for name in list(__import__("os").environ):
        if name.startswith("BUSYLAMP_"):
            monkeypatch.delenv(name)
    return calls


@pytest.fixture
def node():
    return FakeNode(rows=4)


@pytest.fixture
def api(node):
    server = ApiThread(node, heartbeat=0.05)
    yield server
    server.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# --- import and run ------------------------------------------------------------------------------

def test_importing_cli_does_not_monkey_patch(runner):
    from gevent import monkey

    assert runner.invoke(cli.main, ["--help"]).exit_code == 0
    assert not monkey.is_module_patched("socket")


def test_run_help_lists_every_option_with_its_env_name(runner):
    result = runner.invoke(cli.main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--sip", "--http-token", "--max-in-flight", "--no-cross-domain",
                 "--shutdown-notify-rate", "--config"):
        assert flag in result.output
    assert "BUSYLAMP_NSQ_RECONNECT_INTERVAL" in result.output


def test_run_starts_roles_with_defaults(runner, started):
    result = runner.invoke(cli.main, ["run"])
    assert result.exit_code == 0, result.output
    assert started["patched"] == 1 and started["log"] == ("info", "text")
    assert started["config"].role == "all" and started["config"].http.port == 8080


@pytest.mark.parametrize(("args", "needle"), [
    (["--sip", "udp:foo"], 'invalid --sip "udp:foo": expected udp:HOST:PORT or tcp:HOST:PORT'),
    (["--max-in-flight", "many"], "--max-in-flight"),
    (["--role", "everything"], "all, bridge or presence"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--t1", "2", "--t2", "1"], "--t2"),
])
def test_run_bad_flags_exit_2_with_one_line(runner, started, args, needle):
    result = runner.invoke(cli.main, ["run", *args])
    assert result.exit_code == 2
    assert needle in one_line_error(result)
    assert "config" not in started and started["patched"] == 0


def test_run_precedence_flag_env_file(runner, started, tmp_path):
    config_file = tmp_path / "busylamp.toml"
    config_file.write_text('role = "presence"\ntopic = "from-file"\nmax-in-flight = 10\n'
                           'sip = ["udp:127.0.0.1:5099"]\nlog_format = "json"\n')
    env = {"BUSYLAMP_TOPIC": "from-env", "BUSYLAMP_MAX_IN_FLIGHT": "20",
           "BUSYLAMP_ESL": "a@127.0.0.1:1,b@127.0.0.1:2"}
    result = runner.invoke(cli.main, ["run", "--config", str(config_file),
                                      "--max-in-flight", "30"], env=env)
    assert result.exit_code == 0, result.output
    config = started["config"]
    assert config.max_in_flight == 30 and config.topic == "from-env"
    assert config.role == "presence" and config.sip[0].port == 5099
    assert config.esl == ["a@127.0.0.1:1", "b@127.0.0.1:2"]
    assert started["log"] == ("info", "json")


def test_run_config_from_busylamp_config_with_lists_and_switches(runner, started, tmp_path):
    """The file named by BUSYLAMP_CONFIG: arrays or comma-separated strings for repeatable
    options, TOML booleans or words for switches; a variable still beats it, and what neither
    gives keeps its default."""
    config_file = tmp_path / "busylamp.toml"
    config_file.write_text('esl = "a@127.0.0.1:1, b@127.0.0.1:2"\ntrusted = ["10.0.0.0/8"]\n'
                           'cross_domain = true\nnat-send-to-source = "yes"\nt1 = 0.25\n')
    result = runner.invoke(cli.main, ["run"], env={"BUSYLAMP_CONFIG": str(config_file),
                                                   "BUSYLAMP_CROSS_DOMAIN": "off",
                                                   "BUSYLAMP_SIP": "udp:127.0.0.1:5061,"})
    assert result.exit_code == 0, result.output
    config = started["config"]
    assert config.esl == ["a@127.0.0.1:1", "b@127.0.0.1:2"] and len(config.trusted) == 1
    assert config.cross_domain is False and config.nat_send_to_source is True
    assert config.t1 == 0.25 and config.t2 == 4.0
    assert [str(s) for s in config.sip] == ["udp:127.0.0.1:5061"]


@pytest.mark.parametrize(("env", "needle"), [
    ({"BUSYLAMP_CROSS_DOMAIN": "maybe"}, 'invalid BUSYLAMP_CROSS_DOMAIN "maybe": expected true'),
    ({"BUSYLAMP_SIP": "udp:x"}, 'invalid BUSYLAMP_SIP "udp:x"'),
])
def test_run_bad_env_values_name_the_variable(runner, started, env, needle):
    result = runner.invoke(cli.main, ["run"], env=env)
    assert result.exit_code == 2 and needle in one_line_error(result)


def test_run_bool_flag_beats_env(runner, started):
    result = runner.invoke(cli.main, ["run", "--no-nat-send-to-source"],
                           env={"BUSYLAMP_NAT_SEND_TO_SOURCE": "yes",
                                "BUSYLAMP_CROSS_DOMAIN": "on"})
    assert result.exit_code == 0, result.output
    assert started["config"].nat_send_to_source is False
    assert started["config"].cross_domain is True


@pytest.mark.parametrize(("text", "needle"), [
    ("colour = 'red'\n", 'key "colour"'),
    ("t1 = 'soon'\n", 't1 in'),
    ("role = \n", "invalid TOML"),
])
def test_run_bad_config_file_exit_2(runner, started, tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = runner.invoke(cli.main, ["run", "--config", str(path)])
    assert result.exit_code == 2 and needle in one_line_error(result)


def test_run_missing_config_file_and_bad_env(runner, started, tmp_path):
    result = runner.invoke(cli.main, ["run", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "cannot read --config" in one_line_error(result)
    result = runner.invoke(cli.main, ["run"], env={"BUSYLAMP_HTTP": "nowhere"})
    assert result.exit_code == 2 and 'invalid BUSYLAMP_HTTP "nowhere"' in one_line_error(result)


def test_run_maps_bind_errors_to_exit_2(runner, started, monkeypatch):
    def busy(config):
        raise ConfigError("--sip", "a free port",
                          message="port 5065 already in use: choose another with --sip")
    monkeypatch.setattr("busylamp.app.roles.run_roles", busy)
    result = runner.invoke(cli.main, ["run"])
    assert result.exit_code == 2
    assert "port 5065 already in use: choose another with --sip" in one_line_error(result)


def test_startup_summary_hides_esl_passwords():
    from busylamp.app.roles import startup_summary
    from busylamp.presence.config import load_config

    config = load_config({"esl": ["hunter2@10.0.0.5:8021"], "http_token": "t"})
    text = "\n".join(startup_summary(config, None))
    assert "hunter2" not in text and "10.0.0.5:8021" in text and "bearer token required" in text


def test_json_log_lines():
    record = logging.LogRecord("busylamp.x", logging.WARNING, __file__, 1, "hello %s", ("you",),
                               None)
    line = json.loads(JsonLogFormatter().format(record))
    assert line["level"] == "warning" and line["msg"] == "hello you"
    assert line["logger"] == "busylamp.x"


# --- publish ---------------------------------------------------------------------------------------

def test_publish_dialog(runner, api, node):
    result = runner.invoke(cli.main, [
        "publish", "--http", f"127.0.0.1:{api.port}", "--presentity", "100@example.com",
        "--state", "confirmed", "--direction", "recipient", "--call-id", "abc", "--expires",
        "60", "--to", "sip:200@example.com"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"accepted": 1}
    [[update]] = node.published
    assert (update.presentity, update.record_id, update.expires) == ("100@example.com", "abc", 60)
    assert update.data["State"] == "confirmed" and update.data["Direction"] == "recipient"
    assert update.data["To"] == "sip:200@example.com"


def test_publish_mwi_and_presence(runner, api, node):
    base = ["publish", "--http", f"127.0.0.1:{api.port}", "--presentity", "100@example.com"]
    result = runner.invoke(cli.main, [*base, "--package", "message-summary", "--waiting", "yes",
                                      "--new", "2", "--saved", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.main, [*base, "--package", "presence", "--state", "busy"])
    assert result.exit_code == 0, result.output
    mwi, presence = node.published[0][0], node.published[1][0]
    assert mwi.package == "message-summary" and mwi.data["Messages-Waiting"] == "yes"
    assert presence.package == "presence" and presence.presentity == "100@example.com"


@pytest.mark.parametrize(("args", "needle"), [
    (["--presentity", "100"], "--presentity"),
    (["--presentity", "100@example.com"], "needs --state"),
    (["--presentity", "100@example.com", "--state", "ringing"], 'invalid --state "ringing"'),
    (["--presentity", "1@x", "--package", "message-summary"], "--waiting"),
    (["--presentity", "1@x", "--state", "early", "--http", "nohost"], "--http"),
])
def test_publish_usage_errors_exit_2(runner, args, needle):
    result = runner.invoke(cli.main, ["publish", *args])
    assert result.exit_code == 2 and needle in one_line_error(result)


def test_publish_unreachable_node_exits_1_naming_the_address(runner):
    port = closed_port()
    result = runner.invoke(cli.main, ["publish", "--http", f"127.0.0.1:{port}", "--presentity",
                                      "1@x", "--state", "early"])
    assert result.exit_code == 1
    assert f"http://127.0.0.1:{port}" in one_line_error(result)


def test_publish_rejected_and_token(runner, node, tmp_path):
    server = ApiThread(node, token=TOKEN)
    try:
        base = ["publish", "--http", f"127.0.0.1:{server.port}"]
        args = [*base, "--presentity", "1@x", "--state", "early"]
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 1 and "--http-token" in result.output
        result = runner.invoke(cli.main, args, env={"BUSYLAMP_HTTP_TOKEN": TOKEN})
        assert result.exit_code == 0, result.output
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([dialog(), {**dialog(), "State": "bogus"}]))
        result = runner.invoke(cli.main, [*base, "--http-token", TOKEN, "--from-file", str(bad)])
        assert result.exit_code == 1 and "item 1" in result.output and "400" in result.output
    finally:
        server.stop()
    assert len(node.published) == 1


class FakeNsqd:
    """Accepts one connection, reads magic + one PUB, answers OK (or an error frame)."""

    def __init__(self, answer: bytes = b"OK", frame_type: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.answer, self.frame_type = answer, frame_type
        self.received: list[tuple[bytes, bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as reader:
            assert reader.read(4) == b"  V2"
            command = reader.readline()
            size = struct.unpack(">l", reader.read(4))[0]
            self.received.append((command, reader.read(size)))
            heartbeat = b"_heartbeat_"
            conn.sendall(struct.pack(">lL", len(heartbeat) + 4, 0) + heartbeat)
            assert reader.readline() == b"NOP\n"
            conn.sendall(struct.pack(">lL", len(self.answer) + 4, self.frame_type) + self.answer)
        self.sock.close()


def test_publish_to_nsqd(runner):
    nsqd = FakeNsqd()
    result = runner.invoke(cli.main, ["publish", "--nsqd", f"127.0.0.1:{nsqd.port}", "--topic",
                                      "presence", "--presentity", "1@x", "--state", "early"])
    nsqd.thread.join(5)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"nsqd 127.0.0.1:{nsqd.port}: OK"
    [(command, body)] = nsqd.received
    assert command == b"PUB presence\n" and json.loads(body)["State"] == "early"


def test_publish_to_nsqd_errors(runner):
    nsqd = FakeNsqd(b"E_BAD_TOPIC PUB topic name invalid", frame_type=1)
    result = runner.invoke(cli.main, ["publish", "--nsqd", f"127.0.0.1:{nsqd.port}",
                                      "--presentity", "1@x", "--state", "early"])
    nsqd.thread.join(5)
    assert result.exit_code == 1 and "E_BAD_TOPIC" in result.output
    port = closed_port()
    result = runner.invoke(cli.main, ["publish", "--nsqd", f"127.0.0.1:{port}",
                                      "--presentity", "1@x", "--state", "early"])
    assert result.exit_code == 1 and f"nsqd at 127.0.0.1:{port}" in result.output


# --- inspect ---------------------------------------------------------------------------------------

def test_inspect_subscriptions_table_json_and_all(runner, api):
    http = ["--http", f"127.0.0.1:{api.port}"]
    result = runner.invoke(cli.main, ["inspect", "subscriptions", "--limit", "3", *http])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "PRESENTITY", "WATCHER", "EVENT"]
    assert lines[1].split()[0] == "s0" and lines[-1] == "more: --cursor 3"
    result = runner.invoke(cli.main, ["inspect", "subscriptions", "--json", "--presentity",
                                      "101@example.com", *http])
    assert [r["id"] for r in json.loads(result.output)["subscriptions"]] == ["s1"]
    result = runner.invoke(cli.main, ["inspect", "subscriptions", "--all", "--json", *http])
    assert [r["id"] for r in json.loads(result.output)["subscriptions"]] == [
        "s0", "s1", "s2", "s3"]


def test_inspect_presentity_and_stats(runner, api):
    http = ["--http", f"127.0.0.1:{api.port}"]
    result = runner.invoke(cli.main, ["inspect", "presentity", "100@example.com", *http])
    assert result.exit_code == 0 and "presentity: 100@example.com" in result.output
    result = runner.invoke(cli.main, ["inspect", "presentity", "9@example.com", *http])
    assert result.exit_code == 1 and "unknown presentity 9@example.com" in result.output
    result = runner.invoke(cli.main, ["inspect", "stats", "--json", *http])
    stats = json.loads(result.output)
    assert stats["health"]["ready"] is True
    assert stats["metrics"]['busylamp_subscriptions{event="dialog"}'] == 3
    result = runner.invoke(cli.main, ["inspect", "stats", *http])
    assert "busylamp_notify_sent_total" in result.output and "ready: True" in result.output


def test_inspect_unreachable_exits_1(runner):
    port = closed_port()
    result = runner.invoke(cli.main, ["inspect", "stats", "--http", f"127.0.0.1:{port}"])
    assert result.exit_code == 1 and f"127.0.0.1:{port}" in one_line_error(result)


# --- tail ------------------------------------------------------------------------------------------

def test_tail_http_human_and_json(runner, api, node):
    node.tail_items = [dialog("100", "early", "a"), dialog("101", "early", "b"),
                       dialog("100", "confirmed", "a")]
    http = ["--http", f"127.0.0.1:{api.port}"]
    result = runner.invoke(cli.main, ["tail", *http, "--presentity", "100@example.com",
                                      "--count", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and "\x1b[" not in result.output
    assert lines[0].split()[1:] == ["100@example.com", "dialog", "early", "initiator", "a"]
    assert lines[1].split()[3] == "confirmed"
    result = runner.invoke(cli.main, ["tail", *http, "--json", "--count", "3"])
    assert [json.loads(line)["Call-ID"] for line in result.output.splitlines()] == ["a", "b", "a"]


def test_tail_errors(runner):
    result = runner.invoke(cli.main, ["tail", "--http", "127.0.0.1:1", "--esl", "a@b:1"])
    assert result.exit_code == 2 and "choose one source" in one_line_error(result)
    result = runner.invoke(cli.main, ["tail", "--raw"])
    assert result.exit_code == 2 and "--raw needs --esl" in one_line_error(result)
    port = closed_port()
    result = runner.invoke(cli.main, ["tail", "--http", f"127.0.0.1:{port}"])
    assert result.exit_code == 1 and f"127.0.0.1:{port}" in one_line_error(result)


def test_tail_esl_normalizes_simulator_events(runner, monkeypatch):
    from busylamp.esl.simulator import FreeSwitchSimulator

    monkeypatch.setattr("busylamp.app.patch_gevent", lambda: None)
    simulator = FreeSwitchSimulator(password="pw", heartbeat_interval=None)
    host, port = simulator.start()

    def place_call() -> None:
        while not any(c.startswith("event") for c in simulator.commands):
            gevent.sleep(0.01)
        simulator.originate("100", "200")

    caller = gevent.spawn(place_call)
    try:
        with gevent.Timeout(10):
            result = runner.invoke(cli.main, ["tail", "--esl", f"pw@{host}:{port}", "--json",
                                              "--package", "dialog", "--count", "2"])
    finally:
        caller.kill()
        simulator.stop()
    assert result.exit_code == 0, result.output
    updates = [json.loads(line) for line in result.output.splitlines()
               if line.startswith("{")]
    assert {u["Event-Package"] for u in updates} == {"dialog"}
    assert {u["From-User"] for u in updates} == {"100", "200"}


def subscribed(simulator, times: int = 1) -> bool:
    """The simulator has seen ``times`` event subscriptions (tail is listening)."""
    return sum(c.startswith("event") for c in simulator.commands) >= times


def test_tail_esl_raw_decoded_headers_and_skipped_lines(runner, monkeypatch):
    from busylamp.esl.simulator import FreeSwitchSimulator

    monkeypatch.setattr("busylamp.app.patch_gevent", lambda: None)
    simulator = FreeSwitchSimulator(password="pw", heartbeat_interval=None)
    host, port = simulator.start()

    def place_call() -> None:
        wait_until(lambda: subscribed(simulator), timeout=10)
        simulator.originate("100", "200")

    caller = gevent.spawn(place_call)
    try:
        with gevent.Timeout(10):
            result = runner.invoke(cli.main, ["tail", "--esl", f"pw@{host}:{port}", "--raw",
                                              "--json", "--presentity", "100@example.com",
                                              "--count", "1"])
    finally:
        caller.kill()
        simulator.stop()
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.splitlines()[0])
    assert line["update"]["From-User"] == "100"
    event = line["event"]
    assert event["Event-Name"] == "PRESENCE_IN"
    assert event["Channel-Presence-ID"] == "100@example.com"  # percent-decoded
    assert "Content-Type" not in event and "Content-Length" not in event  # the frame's own
    assert "%40" not in result.stdout
    assert re.search(r"^CHANNEL_\w+: skipped \(.+\)$", result.stderr, re.MULTILINE), result.stderr
    assert f"following {host}:{port}" in result.stderr
    assert simulator.commands[-1] == "exit"  # a polite goodbye after --count


@pytest.mark.parametrize("spec, says", [
    ("nope", "expected PASSWORD@HOST:PORT"),
    ("pw@host:99999", "port out of range"),
    ("pw@[::1]:8021", "IPv6 address ::1 not supported (greenswitch connects over IPv4 only)"),
])
def test_tail_esl_bad_target_is_one_line_exit_2(runner, monkeypatch, spec, says):
    monkeypatch.setattr("busylamp.app.patch_gevent", lambda: None)
    result = runner.invoke(cli.main, ["tail", "--esl", spec])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert f'invalid --esl "{spec}"' in line and says in line
    assert "[IPv6]" not in line  # not offered: greenswitch cannot connect to one


def test_tail_esl_help_says_ipv4_only(runner):
    result = runner.invoke(cli.main, ["tail", "--help"], terminal_width=200)
    assert "greenswitch has no IPv6" in result.output


def test_tail_esl_waits_for_freeswitch_follows_a_restart_and_stops_on_ctrl_c(runner, monkeypatch,
                                                                             caplog):
    from greenlet import getcurrent

    from busylamp.esl.simulator import FreeSwitchSimulator

    monkeypatch.setattr("busylamp.app.patch_gevent", lambda: None)
    caplog.set_level(logging.INFO, logger="busylamp.esl.greenswitch_tail")
    shown: list[str] = []
    real_show = UpdatePrinter.show

    def spy(self, update, raw_headers=None):
        shown.append(update["From-User"])
        return real_show(self, update, raw_headers)

    monkeypatch.setattr(UpdatePrinter, "show", spy)
    port = free_port(socket.SOCK_STREAM)
    simulator = FreeSwitchSimulator(password="pw", port=port, heartbeat_interval=None)
    main_greenlet = getcurrent()

    def messages(word: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if word in r.getMessage()]

    def script() -> None:
        wait_until(lambda: messages("cannot connect"), timeout=10)  # not up yet
        simulator.start()
        wait_until(lambda: subscribed(simulator), timeout=10)
        simulator.originate("100", "200")
        wait_until(lambda: {"100", "200"} <= set(shown), timeout=10)
        simulator.restart()  # drops tail's connection, no disconnect notice
        wait_until(lambda: subscribed(simulator, 2), timeout=10)
        simulator.originate("101", "201")
        wait_until(lambda: {"101", "201"} <= set(shown), timeout=10)
        # Ctrl-C: the hub throws KeyboardInterrupt into the main greenlet, as on SIGINT
        gevent.get_hub().loop.run_callback(main_greenlet.throw, KeyboardInterrupt)

    driver = gevent.spawn(script)
    try:
        with gevent.Timeout(20):
            result = runner.invoke(cli.main, ["tail", "--esl", f"pw@127.0.0.1:{port}", "--json",
                                              "--package", "dialog"])
        assert driver.dead and driver.exception is None, driver.exception
    finally:
        driver.kill()
        simulator.stop()
    assert result.exit_code == 0, result.output
    users = {json.loads(line)["From-User"] for line in result.stdout.splitlines()}
    assert users == {"100", "101", "200", "201"}
    assert len(messages("cannot connect to FreeSWITCH at 127.0.0.1:")) == 1
    assert len(messages("lost FreeSWITCH connection")) == 1
    assert simulator.connections == 2
    assert simulator.commands[-1] == "exit"  # Ctrl-C still says goodbye


@pytest.fixture
def tail_factory():
    """GreenswitchTail with fast timings, run in a greenlet; stopped (and checked) at the end."""
    from busylamp.esl.greenswitch_tail import GreenswitchTail

    started: list[tuple[GreenswitchTail, gevent.Greenlet]] = []

    def make(target, on_event=lambda name, headers: None, **kwargs):
        options = {"backoff_initial": 0.02, "backoff_max": 0.05, "jitter": 0.0,
                   "connect_timeout": 0.5, "command_timeout": 0.5, "poll": 0.02, **kwargs}
        tail = GreenswitchTail(target, TAIL_EVENTS, on_event, **options)
        started.append((tail, gevent.spawn(tail.run)))
        return tail

    yield make
    for tail, runner_greenlet in started:
        tail.stop()
        runner_greenlet.join(timeout=5)
        assert runner_greenlet.dead, "run() did not return after stop()"


def test_tail_esl_stops_promptly_when_the_switch_does_not_answer_exit():
    """Ctrl-C (stop) says ``exit`` politely but waits at most ``exit_timeout`` for the answer,
    not the whole command timeout, before it closes the connection itself. A hung switch is a
    fault the real FreeSWITCH cannot be made to show on demand: the simulator plays it."""
    import time

    from busylamp.esl.connection import EslTarget
    from busylamp.esl.greenswitch_tail import GreenswitchTail
    from busylamp.esl.simulator import FreeSwitchSimulator

    simulator = FreeSwitchSimulator(password="pw", heartbeat_interval=None)
    host, port = simulator.start()
    tail = GreenswitchTail(EslTarget(host, port, "pw"), TAIL_EVENTS, lambda name, headers: None,
                           connect_timeout=1.0, command_timeout=5.0, exit_timeout=0.3, poll=0.02)
    runner = gevent.spawn(tail.run)
    try:
        wait_until(lambda: tail.connections == 1, timeout=5)
        simulator.go_silent()
        started = time.monotonic()
        tail.stop()
        runner.join(timeout=4)
        assert runner.dead, "run() still closing 4 s after stop()"
        assert simulator.commands[-1] == "exit"  # it did say goodbye first
        assert time.monotonic() - started < 3.0  # not the 5 s command timeout (nor twice it)
    finally:
        runner.kill()
        simulator.stop()


def test_tail_esl_a_failing_callback_is_logged_once_and_tail_goes_on(tail_factory, caplog):
    from busylamp.esl.connection import EslTarget
    from busylamp.esl.simulator import FreeSwitchSimulator

    simulator = FreeSwitchSimulator(password="pw", heartbeat_interval=None)
    host, port = simulator.start()
    seen: list[str] = []

    def on_event(name: str, headers: dict[str, str]) -> None:
        seen.append(name)
        raise RuntimeError("boom")

    try:
        tail = tail_factory(EslTarget(host, port, "pw"), on_event)
        wait_until(lambda: subscribed(simulator), timeout=10)
        simulator.originate("100", "200")
        wait_until(lambda: len(seen) >= 3, timeout=10)
    finally:
        simulator.stop()
    assert tail.callback_errors >= 3 and tail.connections == 1
    assert len([r for r in caplog.records if "on_event failed" in r.getMessage()]) == 1


def test_tail_esl_wrong_password_is_reported_once(tail_factory, caplog):
    from busylamp.esl.connection import EslTarget
    from busylamp.esl.simulator import FreeSwitchSimulator

    simulator = FreeSwitchSimulator(password="right", heartbeat_interval=None)
    host, port = simulator.start()
    try:
        tail_factory(EslTarget(host, port, "wrong"))
        wait_until(lambda: simulator.auth_failures >= 3, timeout=10)
    finally:
        simulator.stop()
    failures = [r for r in caplog.records if "auth failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert "check --esl PASSWORD@HOST:PORT" in failures[0].getMessage()


def test_tail_esl_silent_listener_and_dead_peer_one_line_per_outage(tail_factory, caplog):
    """A socket that accepts and says nothing (no auth/request: greenswitch would wait forever),
    then a FreeSWITCH that stops talking mid-connection (no HEARTBEAT within dead_after)."""
    from busylamp.esl.connection import EslTarget
    from busylamp.esl.simulator import FreeSwitchSimulator

    accepted: list[socket.socket] = []
    mute = gevent.server.StreamServer(("127.0.0.1", 0), lambda sock, _a: accepted.append(sock))
    mute.start()
    try:
        tail_factory(EslTarget("127.0.0.1", mute.server_port, "pw"), connect_timeout=0.2)
        wait_until(lambda: len(accepted) >= 3, timeout=10)
    finally:
        mute.stop(timeout=0)
    cannot = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(cannot) == 1 and "no login within 0.2s" in cannot[0]

    caplog.clear()
    simulator = FreeSwitchSimulator(password="pw", heartbeat_interval=None)
    host, port = simulator.start()
    seen: list[str] = []
    try:
        tail_factory(EslTarget(host, port, "pw"), lambda name, headers: seen.append(name),
                     dead_after=0.3)
        wait_until(lambda: subscribed(simulator), timeout=10)
        simulator.originate("100", "200")
        wait_until(lambda: "CHANNEL_CALLSTATE" in seen, timeout=10)
        simulator.go_silent()
        wait_until(lambda: any("lost" in r.getMessage() for r in caplog.records), timeout=10)
        simulator.speak()
        wait_until(lambda: subscribed(simulator, 2), timeout=10)
    finally:
        simulator.stop()
    lost = [r.getMessage() for r in caplog.records if "lost FreeSWITCH" in r.getMessage()]
    assert len(lost) == 1 and "not even a HEARTBEAT" in lost[0]


# --- dialplan --------------------------------------------------------------------------------------

@pytest.fixture
def snippets(tmp_path):
    real = REPO / "contrib" / "freeswitch-dialplan"
    if real.is_dir() and dialplanfiles.snippet_files(real):
        return real
    folder = tmp_path / "snippets"
    (folder / "dialplan" / "default").mkdir(parents=True)
    (folder / "dialplan" / "default" / "00_busylamp.xml").write_text("<include>\n</include>\n")
    (folder / "README.md").write_text("not installed\n")
    return folder


def test_dialplan_install_is_idempotent_with_backup_and_dry_run(runner, snippets, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    files = dialplanfiles.snippet_files(snippets)
    assert files and all(f.name != "README.md" for f in files)
    args = ["dialplan", "install", "--freeswitch-conf", str(conf), "--source", str(snippets)]

    result = runner.invoke(cli.main, [*args, "--dry-run"])
    assert result.exit_code == 0 and f"+++ b/{files[0]}" in result.output
    assert not any(conf.iterdir())

    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0 and "fs_cli -x reloadxml" in result.output
    for relative in files:
        assert (conf / relative).read_bytes() == (snippets / relative).read_bytes()
    assert not (conf / "README.md").exists()

    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert not list(conf.rglob("*.busylamp-bak-*"))

    target = conf / files[0]
    target.write_text("<include><!-- local edit --></include>\n")
    result = runner.invoke(cli.main, [*args, "--dry-run"])
    assert "-<include><!-- local edit --></include>" in result.output
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 1 and "--force" in result.output
    assert "local edit" in target.read_text()
    result = runner.invoke(cli.main, [*args, "--force"])
    assert result.exit_code == 0, result.output
    [backup] = list(conf.rglob("*.busylamp-bak-*"))
    assert "local edit" in backup.read_text()
    assert target.read_bytes() == (snippets / files[0]).read_bytes()


def test_dialplan_show_and_default_source(runner, snippets, monkeypatch):
    monkeypatch.setenv("BUSYLAMP_DIALPLAN_DIR", str(snippets))
    result = runner.invoke(cli.main, ["dialplan", "show"])
    assert result.exit_code == 0
    for relative in dialplanfiles.snippet_files(snippets):
        assert f"==> {relative} <==" in result.output
    assert "not installed" not in result.output


def test_dialplan_found_from_the_checkout():
    real = REPO / "contrib" / "freeswitch-dialplan"
    if not (real.is_dir() and dialplanfiles.snippet_files(real)):
        pytest.skip("contrib/freeswitch-dialplan has no snippets yet")
    assert dialplanfiles.dialplan_source() == real


_VANILLA_DEFAULT_XML = """<?xml version="1.0" encoding="utf-8"?>
<include>
  <context name="default">

    <extension name="intercept-ext">
      <condition field="destination_number" expression="^\\*\\*(\\d+)$">
\t<action application="intercept" data="${hash(select/${domain_name}-last_dial_ext/$1)}"/>
      </condition>
    </extension>

    <extension name="Local_Extension">
      <condition field="destination_number" expression="^(10[01][0-9])$">
\t<!-- bind_meta_app can have these args <key> [a|b|ab] [a|b|o|s] <app> -->
\t<action application="bridge" data="user/${dialed_extension}@${domain_name}"/>
      </condition>
    </extension>

    <X-PRE-PROCESS cmd="include" data="default/*.xml"/>
  </context>
</include>
"""


def test_default_xml_edit_includes_caller_presence_first_and_disables_vanilla():
    text, notes = dialplanfiles.edit_default_xml(_VANILLA_DEFAULT_XML)
    context = text.index('<context name="default">')
    assert text.index(dialplanfiles.TOP_INCLUDE) > context
    assert text.index(dialplanfiles.TOP_INCLUDE) < text.index("<extension")
    for name in ("Local_Extension", "intercept-ext"):
        head = text.index(f'<extension name="{name}">')
        first_condition = text.index("<condition", head)
        assert text.startswith(dialplanfiles.VANILLA_GUARD, first_condition), name
    assert len(notes) == 3
    # nothing of the vanilla text is lost: removing the added lines gives it back
    stripped = "\n".join(line for line in text.splitlines()
                         if "busylamp" not in line)
    assert stripped == _VANILLA_DEFAULT_XML.rstrip("\n")
    assert dialplanfiles.edit_default_xml(text) == (text, [])  # idempotent


def test_default_xml_without_the_context_names_the_edit():
    with pytest.raises(dialplanfiles.DialplanEditError, match="00_busylamp_presence.xml"):
        dialplanfiles.edit_default_xml("<include><context name=\"other\"></context></include>")


def test_dialplan_install_edits_default_xml_with_a_backup(runner, snippets, tmp_path):
    conf = tmp_path / "conf"
    (conf / "dialplan").mkdir(parents=True)
    default_xml = conf / "dialplan" / "default.xml"
    default_xml.write_text(_VANILLA_DEFAULT_XML)
    args = ["dialplan", "install", "--freeswitch-conf", str(conf), "--source", str(snippets)]
    result = runner.invoke(cli.main, [*args, "--dry-run"])
    assert result.exit_code == 0 and "+++ b/dialplan/default.xml" in result.output
    assert default_xml.read_text() == _VANILLA_DEFAULT_XML
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "disables vanilla extension Local_Extension" in result.output
    assert dialplanfiles.VANILLA_GUARD in default_xml.read_text()
    [backup] = list((conf / "dialplan").glob("default.xml.busylamp-bak-*"))
    assert backup.read_text() == _VANILLA_DEFAULT_XML
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0 and "nothing to do" in result.output
