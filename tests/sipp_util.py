"""Run sipp, the real phone of the test suite, and read back what it saw.

sipp writes every message it sends and receives to a ``-trace_msg`` log; the tests parse NOTIFYs
out of that log and assert on them in Python (states, versions, CSeqs), instead of trusting sipp's
own counters.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.polling import pause, wait_until  # noqa: F401  (the suite's one polling helper)

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_ISSUED: set[int] = set()
_PICK = random.Random()


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host``, for a server a test starts later.

    Chosen outside the kernel's ephemeral range: a port found by binding port 0 comes from that
    range, and any outgoing connection (sipp, Kamailio, an HTTP client) may take it before the
    server binds it. Ports handed out once are not handed out again by this process.
    """
    low = 10000
    high = _EPHEMERAL[0] - 1 if _EPHEMERAL[0] > low + 1000 else 65535
    for _ in range(500):
        port = _PICK.randint(low, high)
        if port in _ISSUED or _EPHEMERAL[0] <= port <= _EPHEMERAL[1]:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                udp.bind((host, port))
                tcp.bind((host, port))
        except OSError:
            continue
        _ISSUED.add(port)
        return port
    raise RuntimeError("no port free for both UDP and TCP")


@dataclass
class SippRun:
    """A sipp process started by :func:`start_sipp`."""

    proc: subprocess.Popen
    workdir: Path
    scenario: str
    port: int
    args: list[str] = field(default_factory=list)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for sipp to exit while letting gevent greenlets (the node under test) run."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"sipp did not finish in {timeout}s:\n{self.errors()}")
            pause(0.02)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def messages_log(self) -> str:
        logs = sorted(self.workdir.glob("*_messages.log"))
        return "".join(p.read_text(errors="replace") for p in logs)

    def errors(self) -> str:
        text = [p.read_text(errors="replace") for p in sorted(self.workdir.glob("*_errors.log"))]
        out = (self.workdir / "stderr.txt")
        if out.exists():
            text.append(out.read_text(errors="replace"))
        return "\n".join(text)[-4000:]

    def received(self, method: str = "NOTIFY") -> list[SipSeen]:
        """Every request of ``method`` sipp received, in order, parsed from its message log."""
        return [m for m in parse_trace(self.messages_log()) if m.received and m.method == method]

    def sent(self) -> list[SipSeen]:
        return [m for m in parse_trace(self.messages_log()) if not m.received]


@dataclass
class SipSeen:
    received: bool
    start_line: str
    headers: dict[str, str]
    body: str

    @property
    def method(self) -> str | None:
        first = self.start_line.split(" ", 1)[0]
        return None if first.startswith("SIP/") else first

    @property
    def status(self) -> int | None:
        parts = self.start_line.split(" ")
        return int(parts[1]) if self.start_line.startswith("SIP/") else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


_BLOCK = re.compile(
    r"^-{5,} [^\n]*?\n(?P<dir>UDP|TCP) message (?P<verb>received|sent)[^\n]*:\n\n(?P<msg>.*?)(?=^-{5,} |\Z)",
    re.S | re.M,
)


def parse_trace(text: str) -> list[SipSeen]:
    """Parse sipp's ``-trace_msg`` log into messages."""
    seen: list[SipSeen] = []
    for match in _BLOCK.finditer(text):
        raw = match.group("msg").replace("\r\n", "\n").strip("\n")
        if not raw:
            continue
        head, _, body = raw.partition("\n\n")
        lines = head.split("\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers.setdefault(name.strip().lower(), value.strip())
        seen.append(SipSeen(match.group("verb") == "received", lines[0].strip(), headers, body))
    return seen


def start_sipp(
    scenario: str | Path,
    target: tuple[str, int],
    workdir: Path,
    *,
    transport: str = "udp",
    keys: dict[str, str] | None = None,
    calls: int = 1,
    rate: float | None = None,
    timeout: float = 20.0,
    port: int | None = None,
    extra: list[str] | None = None,
) -> SippRun:
    """Start sipp with a scenario file (or ``tests/sipp/<name>.xml``) against ``target``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)
    args = [
        SIPP,
        f"{target[0]}:{target[1]}",
        "-sf", str(scenario if isinstance(scenario, Path) else SCENARIOS / f"{scenario}.xml"),
        "-i", "127.0.0.1",
        "-p", str(port),
        "-t", "t1" if transport == "tcp" else "u1",
        "-m", str(calls),
        "-timeout", f"{int(timeout)}s",
        "-timeout_error",
        "-trace_msg", "-trace_err",
        "-nostdin",
        "-max_recv_loops", "1000",
    ]
    if rate is not None:
        args += ["-r", str(rate)]
    for key, value in (keys or {}).items():
        args += ["-key", key, str(value)]
    args += extra or []
    stderr = open(workdir / "stderr.txt", "wb")  # noqa: SIM115 - closed when the process ends
    proc = subprocess.Popen(
        args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
    )
    return SippRun(proc, workdir, str(scenario), port, args)


