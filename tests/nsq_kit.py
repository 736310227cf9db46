"""Real nsqd and nsqlookupd (the test kit, tests/kits.py) run by the tests on their own ports.

:class:`NsqCluster` starts one nsqlookupd and one nsqd (registered with it) on free loopback
ports, with ``--data-path`` in a temporary folder, and stops them by PID (SIGTERM, then SIGKILL
after a deadline). ``restart_nsqd`` brings nsqd back on the same ports. The inspection helpers go
through nsqd's HTTP API (``/stats?format=json``, ``/pub``, ``/mpub``) over gevent sockets, so a
test's in-process NSQ clients (the tornado loop in a greenlet) keep running while it waits.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gevent
import gevent.socket
import ujson

from tests.kits import NsqKit
from tests.polling import wait_until
from tests.sipp_util import free_port

STOP_TIMEOUT = 10.0
READY_TIMEOUT = 15.0


def http_request(address: tuple[str, int], method: str, path: str, body: bytes = b"",
                 timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP/1.0 request over a gevent socket: (status, body)."""
    sock = gevent.socket.create_connection(address, timeout=timeout)
    try:
        head = f"{method} {path} HTTP/1.0\r\nHost: {address[0]}:{address[1]}\r\n"
        if method != "GET":
            head += f"Content-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


class Daemon:
    """One kit binary as a child process, stopped by its PID."""

    def __init__(self, name: str, argv: list[str], http: tuple[str, int], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.http = http
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_until(self.ready, READY_TIMEOUT, interval=0.02,
                   message=f"{self.name} did not answer /ping: {self.log_tail()}")

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log_tail()}")
        try:
            return http_request(self.http, "GET", "/ping", timeout=1.0) == (200, b"OK")
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout`` (by PID only)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait(5)

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


class NsqCluster:
    """nsqlookupd + nsqd from the kit on free loopback ports (tcp + http each)."""

    def __init__(self, kit: NsqKit, workdir: Path, *, mem_queue_size: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "nsqd-data"
        data.mkdir(exist_ok=True)
        self.tcp_port, self.http_port = free_port(), free_port()
        self.lookupd_tcp_port, self.lookupd_http_port = free_port(), free_port()
        self.lookupd = Daemon("nsqlookupd", [
            str(kit.nsqlookupd), f"--tcp-address=127.0.0.1:{self.lookupd_tcp_port}",
            f"--http-address=127.0.0.1:{self.lookupd_http_port}",
            "--broadcast-address=127.0.0.1",
        ], ("127.0.0.1", self.lookupd_http_port), self.workdir / "nsqlookupd.log")
        argv = [
            str(kit.nsqd), f"--tcp-address=127.0.0.1:{self.tcp_port}",
            f"--http-address=127.0.0.1:{self.http_port}", f"--data-path={data}",
            "--broadcast-address=127.0.0.1",
            f"--lookupd-tcp-address=127.0.0.1:{self.lookupd_tcp_port}",
        ]
        if mem_queue_size is not None:
            argv.append(f"--mem-queue-size={mem_queue_size}")
        self.nsqd = Daemon("nsqd", argv + list(extra_args), ("127.0.0.1", self.http_port),
                           self.workdir / "nsqd.log")

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def lookupd_address(self) -> str:
        return f"127.0.0.1:{self.lookupd_http_port}"

    def start(self) -> NsqCluster:
        self.lookupd.start()
        self.nsqd.start()
        return self

    def stop(self) -> None:
        self.nsqd.stop()
        self.lookupd.stop()

    def stop_nsqd(self) -> None:
        self.nsqd.stop()

    def start_nsqd(self) -> None:
        self.nsqd.start()

    def restart_nsqd(self, downtime: float = 0.0) -> None:
        """Stop nsqd (SIGTERM) and start it again on the same ports after ``downtime``."""
        self.nsqd.stop()
        if downtime:
            gevent.sleep(downtime)  # the outage itself, not a wait for anything
        self.nsqd.start()

    # -- nsqd HTTP API ----------------------------------------------------------------------

    def pub(self, topic: str, body: bytes) -> None:
        """Publish one raw body (any bytes) with ``/pub``."""
        status, answer = http_request(self.nsqd.http, "POST", f"/pub?topic={quote(topic)}", body)
        if status != 200:
            raise AssertionError(f"/pub {topic}: {status} {answer!r}")

    def mpub(self, topic: str, bodies: list[bytes]) -> None:
        """Publish several bodies (none containing a newline) with one ``/mpub``."""
        status, answer = http_request(self.nsqd.http, "POST", f"/mpub?topic={quote(topic)}",
                                      b"\n".join(bodies))
        if status != 200:
            raise AssertionError(f"/mpub {topic}: {status} {answer!r}")

    def create_topic(self, topic: str) -> None:
        """Create ``topic`` (nsqd registers it with nsqlookupd, so consumers can find it)."""
        status, answer = http_request(self.nsqd.http, "POST", f"/topic/create?topic={quote(topic)}")
        if status != 200:
            raise AssertionError(f"/topic/create {topic}: {status} {answer!r}")

    def stats(self, topic: str | None = None) -> dict[str, Any]:
        path = "/stats?format=json" + (f"&topic={quote(topic)}" if topic else "")
        status, body = http_request(self.nsqd.http, "GET", path)
        if status != 200:
            raise AssertionError(f"/stats: {status} {body!r}")
        data = ujson.loads(body)
        return data.get("data", data)  # older nsqd wrap the answer in "data"

    def topic(self, topic: str) -> dict[str, Any] | None:
        return next((t for t in self.stats(topic).get("topics") or []
                     if t["topic_name"] == topic), None)

    def channel(self, topic: str, channel: str) -> dict[str, Any] | None:
        found = self.topic(topic)
        return next((c for c in (found or {}).get("channels") or []
                     if c["channel_name"] == channel), None)

    def channels(self, topic: str) -> list[str]:
        return [c["channel_name"] for c in (self.topic(topic) or {}).get("channels") or []]

    def message_count(self, topic: str) -> int:
        """Messages nsqd accepted on ``topic`` since it started."""
        return int((self.topic(topic) or {}).get("message_count", 0))

    def message_count_all(self) -> int:
        """Messages nsqd accepted on all topics since it started."""
        return sum(int(t.get("message_count", 0)) for t in self.stats().get("topics") or [])

    def depth(self, topic: str, channel: str) -> int:
        return int((self.channel(topic, channel) or {}).get("depth", 0))

    def clients(self, topic: str, channel: str) -> int:
        return len((self.channel(topic, channel) or {}).get("clients") or [])

    def settled(self, topic: str) -> bool:
        """Nothing in flight, queued, deferred or requeued on any channel of ``topic``."""
        return all(c["in_flight_count"] == 0 and c["depth"] == 0 and c["requeue_count"] == 0
                   and c["deferred_count"] == 0
                   for c in (self.topic(topic) or {}).get("channels") or [])

    def lookup(self, topic: str) -> list[str]:
        """``host:tcp_port`` of the nsqd nsqlookupd knows for ``topic``."""
        status, body = http_request(self.lookupd.http, "GET", f"/lookup?topic={quote(topic)}")
        if status != 200:
            return []
        data = ujson.loads(body)
        data = data.get("data", data)
        return [f"{p['broadcast_address']}:{p['tcp_port']}" for p in data.get("producers", [])]
