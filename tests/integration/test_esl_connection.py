"""busylamp.esl.connection.EslClient against the simulator on an ephemeral port.

The timing rules themselves (dead peer after ``dead_after``, command timeouts, auth timeout,
backoff) are tested on an injected clock in test_esl_session.py; here: that the gevent client
acts on them over real sockets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import gevent
import gevent.server
import pytest

from busylamp.esl.connection import EslClient, EslError, EslTarget
from busylamp.esl.protocol import EslEvent
from busylamp.esl.simulator import FreeSwitchSimulator
from tests.polling import wait_until
from tests.sipp_util import free_port

EVENTS = ["CHANNEL_CALLSTATE", "PRESENCE_IN", "MESSAGE_WAITING"]
FAST = {"backoff_initial": 0.02, "backoff_max": 0.1, "jitter": 0.0, "dead_after": 5.0,
        "command_timeout": 1.0, "connect_timeout": 1.0}


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    wait_until(check, timeout=timeout, interval=0.005)


@pytest.fixture
def sim() -> Iterator[FreeSwitchSimulator]:
    simulator = FreeSwitchSimulator(heartbeat_interval=None)
    simulator.start()
    yield simulator
    simulator.stop()


class Recorder:
    def __init__(self) -> None:
        self.events: list[EslEvent] = []
        self.connects = 0
        self.disconnects: list[str] = []

    def on_event(self, event: EslEvent) -> None:
        self.events.append(event)

    def on_connect(self, client: EslClient) -> None:
        self.connects += 1
        client.api("show channels as json")  # on_connect may issue commands

    def on_disconnect(self, _client: EslClient, reason: str) -> None:
        self.disconnects.append(reason)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def make_client(sim: FreeSwitchSimulator, rec: Recorder, password: str = "ClueCon",
                **overrides: float) -> EslClient:
    client = EslClient(EslTarget(sim.host, sim.port, password), EVENTS, rec.on_event,
                       on_connect=rec.on_connect, on_disconnect=rec.on_disconnect,
                       **{**FAST, **overrides})
    client.start()
    return client


@pytest.mark.parametrize(("text", "expected"), [
    ("secret@10.0.0.1:8021", EslTarget("10.0.0.1", 8021, "secret")),
    ("fs.example.com:8021", EslTarget("fs.example.com", 8021, "ClueCon")),
    ("[::1]:8021", EslTarget("::1", 8021, "ClueCon")),
    ("p@ss@[2001:db8::1]:9000", EslTarget("2001:db8::1", 9000, "p@ss")),
])
def test_target_parse(text: str, expected: EslTarget) -> None:
    assert EslTarget.parse(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "host:99999", "::1:8021", "[::1]8021",
                                  "@host:8021", "host:port"])
def test_target_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="PASSWORD@HOST:PORT"):
        EslTarget.parse(text)


def test_connect_subscribe_and_receive(sim: FreeSwitchSimulator, rec: Recorder) -> None:
    client = make_client(sim, rec)
    try:
        wait_for(lambda: client.state == "connected" and rec.connects == 1)
        assert "event plain CHANNEL_CALLSTATE PRESENCE_IN MESSAGE_WAITING HEARTBEAT" in sim.commands
        assert client.core_uuid == sim.core_uuid
        call = sim.originate("1001", "1002")
        sim.leave_voicemail("1001")
        wait_for(lambda: len(rec.events) == 5)
        assert [e.name for e in rec.events] == ["CHANNEL_CALLSTATE", "PRESENCE_IN"] * 2 + [
            "MESSAGE_WAITING"]
        assert rec.events[0].headers["Unique-ID"] == call.a.uuid
        assert '"row_count":2' in client.api("show channels as json")
        reply = client.send_event("MESSAGE_QUERY", {"Message-Account": "sip:1001@example.com"})
        assert reply.startswith("+OK ")
        wait_for(lambda: len(rec.events) == 6)
        assert rec.events[-1].headers["MWI-Message-Account"] == "sip:1001@example.com"
        assert client.counters["events"] == 6 and client.counters["reconnects"] == 0
    finally:
        client.stop()
    assert client.state == "stopped"


def test_callback_exceptions_do_not_kill_the_reader(sim: FreeSwitchSimulator,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def explode(event: EslEvent) -> None:
        seen.append(event.name)
        raise RuntimeError("boom")

    client = EslClient(EslTarget(sim.host, sim.port, "ClueCon"), EVENTS, explode, **FAST)
    client.start()
    try:
        wait_for(lambda: client.state == "connected")
        with caplog.at_level(logging.ERROR, logger="busylamp.esl.connection"):
            for _ in range(3):
                sim.leave_voicemail("1001")
            wait_for(lambda: len(seen) == 3)
        assert client.counters["callback_errors"] == 3
        assert len([r for r in caplog.records if "callback failed" in r.getMessage()]) == 1
        assert client.state == "connected"
        assert client.api("global_getvar core_uuid") == sim.core_uuid
    finally:
        client.stop()


def test_wrong_password_then_fixed(sim: FreeSwitchSimulator, rec: Recorder,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="busylamp.esl.connection"):
        client = make_client(sim, rec, password="wrong")
        try:
            wait_for(lambda: sim.auth_failures >= 3)
            assert client.state == "auth_failed"
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1
            assert errors[0].getMessage() == (
                f"auth failed for {sim.host}:{sim.port}: check --esl PASSWORD@HOST:PORT")
            with pytest.raises(EslError):
                client.api("status")
            sim.password = "wrong"  # the operator fixes the server side
            wait_for(lambda: client.state == "connected")
            assert rec.connects == 1
        finally:
            client.stop()


def test_drop_reconnects_with_backoff(sim: FreeSwitchSimulator, rec: Recorder,
                                      caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(sim, rec)
    try:
        wait_for(lambda: rec.connects == 1)
        with caplog.at_level(logging.WARNING, logger="busylamp.esl.connection"):
            sim.drop_connections()
            wait_for(lambda: rec.connects == 2)
        assert client.state == "connected"
        assert client.counters["reconnects"] == 1
        assert rec.disconnects and sim.connections == 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "lost FreeSWITCH connection" in warnings[0].getMessage()
        sim.leave_voicemail("1001")
        wait_for(lambda: any(e.name == "MESSAGE_WAITING" for e in rec.events))
    finally:
        client.stop()


def test_outage_logs_one_warning_across_many_retries(rec: Recorder,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    port = free_port(socket.SOCK_STREAM)  # nothing listens here yet: every attempt is refused
    sim = FreeSwitchSimulator(port=port, heartbeat_interval=None)
    with caplog.at_level(logging.WARNING, logger="busylamp.esl.connection"):
        client = EslClient(EslTarget("127.0.0.1", port, "ClueCon"), EVENTS, rec.on_event,
                           on_connect=rec.on_connect, **FAST)
        client.start()
        try:
            wait_for(lambda: client.counters["connect_failures"] >= 4)
            assert client.state in ("connecting", "disconnected")
            assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
            sim.start()
            wait_for(lambda: client.state == "connected")
        finally:
            client.stop()
            sim.stop()


def test_silent_server_is_a_dead_peer(sim: FreeSwitchSimulator, rec: Recorder) -> None:
    client = make_client(sim, rec, dead_after=0.2)
    try:
        wait_for(lambda: rec.connects == 1)
        sim.go_silent()
        wait_for(lambda: len(rec.disconnects) == 1)
        assert "dead peer" in rec.disconnects[0]
        sim.speak()
        wait_for(lambda: rec.connects == 2)
    finally:
        client.stop()


def test_api_fails_fast_when_socket_dies(sim: FreeSwitchSimulator, rec: Recorder) -> None:
    client = make_client(sim, rec, command_timeout=30.0)
    try:
        wait_for(lambda: rec.connects == 1)
        sim.go_silent()
        pending = gevent.spawn(client.api, "status")
        wait_for(lambda: sim.commands[-1] == "api status")
        sim.drop_connections()
        with pytest.raises(EslError, match="closed by server|read failed"):
            pending.get(timeout=10.0)  # long before its 30 s command timeout
        sim.stop()  # nothing to reconnect to
        wait_for(lambda: client.state != "connected")
        with pytest.raises(EslError, match="not connected"):
            client.api("status")
    finally:
        client.stop()


def test_command_timeout_is_counted(sim: FreeSwitchSimulator, rec: Recorder) -> None:
    client = make_client(sim, rec)
    try:
        wait_for(lambda: rec.connects == 1)
        sim.go_silent()
        with pytest.raises(EslError, match="timeout"):
            client.api("status", timeout=0.1)
        assert client.counters["command_timeouts"] == 1
    finally:
        client.stop()


def test_restart_gives_new_core_uuid(sim: FreeSwitchSimulator, rec: Recorder) -> None:
    client = make_client(sim, rec)
    try:
        wait_for(lambda: rec.connects == 1)
        first = client.core_uuid
        assert first == sim.core_uuid
        sim.restart()
        wait_for(lambda: rec.connects == 2)
        assert client.core_uuid == sim.core_uuid != first
    finally:
        client.stop()


def test_corrupt_frames_are_counted_and_good_ones_delivered(sim: FreeSwitchSimulator,
                                                             rec: Recorder,
                                                             fixtures_dir) -> None:
    client = make_client(sim, rec)
    try:
        wait_for(lambda: rec.connects == 1)
        sim.replay_file(fixtures_dir / "esl" / "streams" / "fsock_test_data_2012.txt")
        wait_for(lambda: client.counters["corrupt_frames"] == 2)
        wait_for(lambda: len(rec.events) == 44)  # the simulator's own filter is bypassed by replay
        assert client.state == "connected"
    finally:
        client.stop()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_target(rec: Recorder) -> None:
    sim = FreeSwitchSimulator(host="::1", heartbeat_interval=None)
    sim.start()
    client = EslClient(EslTarget.parse(f"ClueCon@[::1]:{sim.port}"), EVENTS, rec.on_event, **FAST)
    client.start()
    try:
        wait_for(lambda: client.state == "connected")
        assert client.core_uuid == sim.core_uuid
    finally:
        client.stop()
        sim.stop()


def test_server_that_never_sends_auth_request(rec: Recorder) -> None:
    held: list[object] = []
    server = gevent.server.StreamServer(("127.0.0.1", 0),
                                        lambda sock, _addr: (held.append(sock), gevent.sleep(5)))
    server.start()
    client = EslClient(EslTarget("127.0.0.1", server.server_port, "ClueCon"), EVENTS,
                       rec.on_event, **{**FAST, "connect_timeout": 0.1})
    client.start()
    try:
        wait_for(lambda: len(held) >= 2)  # timed out waiting for auth/request, then retried
        assert client.state in ("connecting", "disconnected")
    finally:
        client.stop()
        server.stop(timeout=0)
    assert client.state == "stopped"


def test_several_switches_at_once(sim: FreeSwitchSimulator) -> None:
    other = FreeSwitchSimulator(heartbeat_interval=None)
    other.start()
    first, second = Recorder(), Recorder()
    clients = [make_client(sim, first), make_client(other, second)]
    try:
        wait_for(lambda: first.connects == 1 and second.connects == 1)
        assert [c.core_uuid for c in clients] == [sim.core_uuid, other.core_uuid]
        other.drop_connections()  # one switch's trouble is its own
        sim.leave_voicemail("1001")
        wait_for(lambda: [e.name for e in first.events] == ["MESSAGE_WAITING"])
        wait_for(lambda: second.connects == 2)
        other.leave_voicemail("1002")
        wait_for(lambda: [e.name for e in second.events] == ["MESSAGE_WAITING"])
        assert first.connects == 1 and clients[0].counters["reconnects"] == 0
    finally:
        for client in clients:
            client.stop()
        other.stop()


def test_big_api_reply_over_the_socket(sim: FreeSwitchSimulator, rec: Recorder,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    body = "x" * (40 * 1024 * 1024)
    real_api = sim.api
    monkeypatch.setattr(sim, "api", lambda command: body if command == "big" else real_api(command))
    client = make_client(sim, rec)
    try:
        wait_for(lambda: rec.connects == 1)
        assert len(client.api("big", timeout=30.0)) == len(body)
        assert client.api("global_getvar core_uuid") == sim.core_uuid  # FIFO still aligned
    finally:
        client.stop()
