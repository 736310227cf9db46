"""Restarts against the real FreeSWITCH: busylamp killed and started again, the event socket
dropped, FreeSWITCH killed and started again, two switches feeding one busylamp.

Calls are loopback calls placed with ``originate`` (the kit README's way): ``9196`` (echo) for a
talking call with ``presence_id``, ``70xx`` to park one on a valet slot.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kits import FreeSwitchKit
from tests.polling import wait_until
from tests.sipp_util import free_port
from tests.system.freeswitch import DOMAIN, FreeSwitch, originate, valet_slots
from tests.system.phones import SteadyWatcher, lamp
from tests.system.test_cli_subprocess import Proc, healthy, http_get, metric

SNAPSHOTS = 'busylamp_bridge_updates_published_total{kind="snapshot"}'


class Busylamp:
    """``busylamp run --role all`` on ports of its own that stay the same across restarts."""

    def __init__(self, workdir: Path, *esl: str, extra: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.esl = esl
        self.extra = extra
        self.sip_port = free_port()
        self.http_port = free_port(socket.SOCK_STREAM)
        self.proc: Proc | None = None
        self.runs = 0

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.sip_port)

    def start(self, wait_healthy: bool = True) -> Busylamp:
        args = ["run", "--role", "all", "--bus", "memory",
                "--sip", f"udp:127.0.0.1:{self.sip_port}", "--http", f"127.0.0.1:{self.http_port}",
                "--status-interval", "0", *[a for e in self.esl for a in ("--esl", e)],
                *self.extra]
        self.runs += 1
        self.proc = Proc.start(args, self.workdir, f"busylamp-{self.runs}")
        if wait_healthy:
            wait_until(lambda: healthy(self.http_port) or self.proc.proc.poll() is not None,
                       timeout=20, message="busylamp not healthy in time")
            assert self.proc.proc.poll() is None, self.proc.stderr
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown NOTIFYs, nothing saved."""
        if self.proc is not None:
            self.proc.kill()

    def metric(self, sample: str) -> float | None:
        return metric(self.http_port, sample)

    def records(self, presentity: str) -> list[dict]:
        import json

        status, body = http_get(self.http_port, f"/presentities/{presentity}")
        assert status == 200, body
        package = json.loads(body)["packages"].get("dialog") or {}
        return package.get("records", [])


@pytest.fixture
def busylamp_factory(tmp_path) -> Iterator:
    started: list[Busylamp] = []

    def make(*esl: str, extra: tuple[str, ...] = ()) -> Busylamp:
        node = Busylamp(tmp_path / f"busylamp{len(started)}", *esl, extra=extra)
        started.append(node)
        return node

    yield make
    for node in started:
        node.kill()


@pytest.fixture
def watchers(tmp_path) -> Iterator:
    started: list[SteadyWatcher] = []

    def watch(node: Busylamp, presentity: str) -> SteadyWatcher:
        watcher = SteadyWatcher(presentity, node.sip, tmp_path).start()
        started.append(watcher)
        # a NOTIFY with the state: a new target may first get one without a body (its byte
        # budget, docs/security.md), the state following its answer; that shows no lamp
        wait_until(lambda: watcher.dialogs(), timeout=10,
                   message=f"{presentity}: no NOTIFY with the state")
        return watcher

    yield watch
    for watcher in started:
        watcher.stop()


@pytest.fixture(autouse=True)
def _no_calls_left(fs):
    yield
    if fs.pid is not None:
        fs.api("hupall")
        wait_until(lambda: not fs.channels(), timeout=10, message="calls left on the switch")


def lamps(watch: SteadyWatcher) -> list[str]:
    return [lamp(d) for d in watch.dialogs()]


def changes(watch: SteadyWatcher) -> list[str]:
    """The lamp's changes (a loopback call has two legs: two NOTIFYs can show the same lamp)."""
    out: list[str] = []
    for state in lamps(watch):
        if out[-1:] != [state]:
            out.append(state)
    return out


def becomes(watch: SteadyWatcher, state: str, timeout: float = 10) -> float:
    """Wait until the watcher's lamp shows ``state``; sipp's time of that NOTIFY."""
    wait_until(lambda: lamps(watch)[-1:] == [state], timeout=timeout,
               message=f"{watch.presentity} never {state}: {lamps(watch)}")
    return watch.notifies()[-1].at


def talking_call(fs: FreeSwitch, user: str) -> str:
    """An answered loopback call (echo) whose legs carry ``presence_id=user@domain``."""
    call = originate(fs, "9196", presence_user=user)
    wait_until(lambda: any(c["uuid"] == call and c["callstate"] == "ACTIVE" for c in fs.channels()),
               timeout=10, message=f"call for {user} never became active")
    return call


def parked_call(fs: FreeSwitch, slot: str, user: str) -> str:
    originate(fs, slot, presence_user=user)
    return wait_until(lambda: valet_slots(fs).get(slot), timeout=10,
                      message=f"nothing parked on {slot}")


def hang_up(fs: FreeSwitch, user: str) -> None:
    """Hang up every leg whose presence id is ``user``'s."""
    for channel in fs.channels():
        if channel.get("presence_id") == f"{user}@{DOMAIN}":
            fs.api(f"uuid_kill {channel['uuid']}")
    wait_until(lambda: not [c for c in fs.channels() if c.get("presence_id") == f"{user}@{DOMAIN}"],
               timeout=10, message=f"{user}'s call did not end")


# --- busylamp restarts ----------------------------------------------------------------------------

def test_busylamp_killed_and_started_again_shows_what_the_switch_has(
        fs, busylamp_factory, watchers):
    """Defect 4 after a restart: calls and parked calls that survived light their lamps from the
    first snapshot; those that ended while busylamp was down are dark. A phone re-subscribing
    after the restart gets the right lamp in its first NOTIFY."""
    node = busylamp_factory(fs.esl).start()
    talking_call(fs, "1010")
    talking_call(fs, "1011")
    parked_call(fs, "7010", "1012")
    parked_call(fs, "7011", "1013")
    for presentity in ("1010", "1011", "7010", "7011"):
        becomes(watchers(node, f"{presentity}@{DOMAIN}"), "confirmed")

    node.kill()
    hang_up(fs, "1011")
    hang_up(fs, "1013")  # the caller parked on 7011
    assert set(valet_slots(fs)) == {"7010"}
    node.start()
    expected = {"1010": "confirmed", "7010": "confirmed", "park+7010": "confirmed",
                "busylamp_lot": "confirmed", "1011": "idle", "7011": "idle"}
    for presentity, state in expected.items():
        watch = watchers(node, f"{presentity}@{DOMAIN}")
        assert lamps(watch)[0] == state, (presentity, lamps(watch))


def test_esl_reconnect_keeps_a_parked_slot_lit(fs, busylamp_factory, watchers):
    """Defect 4 on a reconnect: the event socket drops (a proxy between busylamp and the switch
    closes it), busylamp reconnects and resyncs; the parked call's slot stays lit throughout."""
    with esl_proxy(fs.esl_port) as proxy:
        node = busylamp_factory(f"ClueCon@127.0.0.1:{proxy.port}",
                                extra=("--esl-backoff-max", "1")).start()
        parked = parked_call(fs, "7012", "1014")
        slot = watchers(node, f"7012@{DOMAIN}")
        becomes(slot, "confirmed")
        snapshots = node.metric(SNAPSHOTS)
        dropped = time.monotonic()
        proxy.drop()
        wait_until(lambda: node.metric(SNAPSHOTS) > snapshots, timeout=10,
                   message="no resync after the reconnect")
        print(f"ESL dropped -> reconnected and resynced in {time.monotonic() - dropped:.3f}s")
        (record,) = [r for r in node.records(f"7012@{DOMAIN}") if r["id"] == parked]
        assert record["data"]["State"] == "confirmed"
        assert proxy.connections >= 2
        # a change after the resync reaches the phone after anything the resync could send
        fs.api(f"uuid_kill {parked}")
        becomes(slot, "idle")
    assert lamps(slot) == ["confirmed", "idle"]


def test_resubscribing_right_after_a_restart_never_sees_a_wrong_lamp(fs, busylamp_factory):
    """Defect 5: from the moment busylamp starts, a phone re-subscribing at once is told 503 with
    Retry-After until the first snapshot is in, then gets the lit lamp; never idle first."""
    talking_call(fs, "1015")
    with esl_proxy(fs.esl_port, delay=1.0) as proxy, \
            contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        # the switch answers a second late: plenty of time for a phone to ask too early
        node = busylamp_factory(f"ClueCon@127.0.0.1:{proxy.port}")
        started = time.monotonic()
        node.start(wait_healthy=False)
        answers = []
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, headers, body = subscribe_once(sock, node.sip, f"1015@{DOMAIN}")
            answers.append(status)
            if status == 200:
                break
            if status == 503:
                assert headers.get("retry-after"), headers
            time.sleep(0.01)
    print(f"first 200 {time.monotonic() - started:.3f}s after start; answers: "
          f"{len([a for a in answers if a == 503])} x 503, {answers.count(None)} unanswered")
    assert answers[-1] == 200
    assert set(answers) <= {None, 503, 200}
    assert 503 in answers  # it was asked before it was ready
    assert body is not None and lamp(parse_dialogs(body)) == "confirmed", body


def test_warmup_is_bounded_when_a_switch_never_answers(busylamp_factory):
    """--esl-warmup bounds the wait: a switch that accepts the connection and says nothing."""
    with contextlib.closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        node = busylamp_factory(f"ClueCon@127.0.0.1:{silent.getsockname()[1]}",
                                extra=("--esl-warmup", "1.5"))
        started = time.monotonic()
        node.start(wait_healthy=False)
        wait_until(lambda: healthy(node.http_port), timeout=10, message="never served")
        waited = time.monotonic() - started
    print(f"served {waited:.3f}s after start (--esl-warmup 1.5)")
    assert 1.5 <= waited < 6


# --- FreeSWITCH restarts --------------------------------------------------------------------------

def test_freeswitch_killed_and_started_again(fs, busylamp_factory, watchers):
    """busylamp reconnects within its backoff; the dead call's lamp goes dark (the switch's
    Core-UUID changed: none of its calls survived); a new call lights a lamp."""
    node = busylamp_factory(fs.esl, extra=("--esl-backoff-max", "1")).start()
    talking_call(fs, "1016")
    parked_call(fs, "7016", "1017")
    call_lamp = watchers(node, f"1016@{DOMAIN}")
    slot = watchers(node, f"7016@{DOMAIN}")
    becomes(call_lamp, "confirmed")
    becomes(slot, "confirmed")

    fs.kill()
    starting = time.time()
    fs.start()  # returns once the SIP profile runs, a little after the event socket answers
    up = time.time()
    dark = max(becomes(call_lamp, "idle"), becomes(slot, "idle"))
    print(f"FreeSWITCH restart: fs.start() took {up - starting:.3f}s; the dead call's lamps went "
          f"dark {dark - starting:.3f}s after it began (--esl-backoff-max 1)")
    talking_call(fs, "1016")
    becomes(call_lamp, "confirmed")
    assert changes(call_lamp) == ["confirmed", "idle", "confirmed"]


def test_two_switches_feed_one_busylamp(fs, freeswitch_kit: FreeSwitchKit, tmp_path,
                                        busylamp_factory, watchers):
    """Each switch's calls and restarts are handled on their own (per Core-UUID)."""
    other = FreeSwitch(freeswitch_kit, tmp_path / "fs2")
    other.start()
    try:
        node = busylamp_factory(fs.esl, other.esl, extra=("--esl-backoff-max", "1")).start()
        talking_call(fs, "1018")
        talking_call(other, "1019")
        here, there = watchers(node, f"1018@{DOMAIN}"), watchers(node, f"1019@{DOMAIN}")
        becomes(here, "confirmed")
        becomes(there, "confirmed")

        other.kill()
        other.start()
        becomes(there, "idle")
        assert any(r["data"].get("State") == "confirmed" for r in node.records(f"1018@{DOMAIN}"))
        assert changes(here) == ["confirmed"]

        talking_call(other, "1019")
        becomes(there, "confirmed")
        hang_up(fs, "1018")
        becomes(here, "idle")
        assert lamps(there)[-1] == "confirmed"
    finally:
        other.stop()


# --- helpers: a raw SUBSCRIBE, an ESL proxy -------------------------------------------------------

def subscribe_once(sock: socket.socket, target: tuple[str, int], presentity: str,
                   wait: float = 2.0) -> tuple[int | None, dict[str, str], str | None]:
    """One dialog SUBSCRIBE from ``sock``: (status or None, response headers, first NOTIFY
    body when 200: a bodiless NOTIFY carries no state, see LampWatcher.dialogs). Every NOTIFY is
    answered 200."""
    call_id = uuidlib.uuid4().hex
    port = sock.getsockname()[1]
    request = (f"SUBSCRIBE sip:{presentity} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id[:12]}\r\n"
               f"From: <sip:2000@{DOMAIN}>;tag={call_id[:8]}\r\nTo: <sip:{presentity}>\r\n"
               f"Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n"
               f"Contact: <sip:2000@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\n"
               "Event: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 600\r\n"
               "Content-Length: 0\r\n\r\n")
    sock.sendto(request.encode(), target)
    status, headers, body = None, {}, None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and (status is None or (status == 200 and body is None)):
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            if status is None:
                return None, {}, None
            continue
        head, _, payload = data.decode("utf-8", "replace").partition("\r\n\r\n")
        lines = head.split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), value.strip())
        if fields.get("call-id") != call_id:
            continue
        if lines[0].startswith("SIP/2.0 "):
            status, headers = int(lines[0].split()[1]), fields
        elif lines[0].startswith("NOTIFY "):
            body = payload if payload.strip() else body
            ok = "".join(f"{name}: {fields[name.lower()]}\r\n"
                         for name in ("Via", "From", "To", "Call-ID", "CSeq"))
            sock.sendto(f"SIP/2.0 200 OK\r\n{ok}Content-Length: 0\r\n\r\n".encode(), source)
    return status, headers, body


def parse_dialogs(body: str):
    from tests.system.phones import parse_dialog_info

    return parse_dialog_info(body)


class _Proxy:
    """A TCP proxy to the switch's event socket whose connections the test can cut."""

    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        time.sleep(self.delay)  # a slow switch (or network): the test's own pacing, no proof
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self._lock:
            self.connections += 1
            self._open += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Cut every proxied connection (both ends see the socket close)."""
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        self.drop()


@contextlib.contextmanager
def esl_proxy(upstream_port: int, delay: float = 0.0) -> Iterator[_Proxy]:
    proxy = _Proxy(upstream_port, delay)
    try:
        yield proxy
    finally:
        proxy.close()
