"""Launchers for the servers under test, pinned to one core, with CPU and memory probes."""

from __future__ import annotations

import abc
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.tree import launcher_code

REPO = Path(__file__).resolve().parent.parent
KAMAILIO_CFG = Path(__file__).resolve().parent / "kamailio" / "kamailio.cfg"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """An ephemeral port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="latin-1") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of the given processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="latin-1") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def memory_kb(pids: list[int]) -> dict[str, int]:
    """Summed Rss and Pss (kB) from /proc/PID/smaps_rollup."""
    out = {"rss_kb": 0, "pss_kb": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="latin-1") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        out["rss_kb"] += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        out["pss_kb"] += int(line.split()[1])
        except OSError:
            continue
    return out


def stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM a process started in its own session (and its children); SIGKILL after 15 s."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def sip_ping(port: int, timeout: float = 0.5) -> bool:
    """True once something answers an OPTIONS on udp:127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        me = s.getsockname()[1]
        msg = (
            f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-ping{time.monotonic_ns()};rport\r\n"
            f"From: <sip:bench@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
            f"Call-ID: ping-{time.monotonic_ns()}@bench\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), ("127.0.0.1", port))
        try:
            return s.recv(65535).startswith(b"SIP/2.0 ")
        except OSError:
            return False


def tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# the node's counters a publish step reports (bench key -> Prometheus sample name)
NODE_COUNTERS = {
    "notify_sent": "busylamp_notify_sent_total",
    "notify_retransmitted": "busylamp_notify_retransmitted_total",
    "notify_timeouts": 'busylamp_notify_failed_total{outcome="timeout"}',
    "publishes_rejected": 'busylamp_publishes_total{outcome="rejected"}',
    "udp_receive_drops": "busylamp_sip_udp_receive_drops_total",
}


def metric_values(text: str, wanted: dict[str, str]) -> dict[str, float]:
    """The samples named in ``wanted`` (key -> sample name with its labels) of a Prometheus text
    exposition, by key; a sample not in the text is left out."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = value
    return {key: float(samples[name]) for key, name in wanted.items() if name in samples}


class Server(abc.ABC):
    """A server under test listening on udp SIP + TCP HTTP ports of 127.0.0.1."""

    name = "server"
    publish_path = "/publish"

    def __init__(self, cpu: int | None = 0, workdir: Path | None = None) -> None:
        self.cpu = cpu
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line (without the taskset prefix)."""

    def start(self, timeout: float = 20) -> None:
        cmd = self.command()
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        # the log stays open as long as the server runs; stop() closes it
        self._log = open(self.workdir / f"{self.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see "
                                   f"{self.workdir / (self.name + '.log')}")
            if sip_ping(self.sip_port) and tcp_open(self.http_port):
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} did not come up within {timeout}s")

    def stop(self) -> None:
        stop_group(self.proc)
        if self._log:
            self._log.close()
            self._log = None

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        # taskset execs the server in place, so proc.pid is the server itself
        return descendants(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def memory(self) -> dict[str, int]:
        """Memory figures in kB (at least pss_kb and rss_kb)."""
        return memory_kb(self.pids())

    def counters(self) -> dict[str, float]:
        """The server's own counts of what it did (NOTIFY retransmissions, refused publishes),
        where it reports them; a step's figures carry their change over the step."""
        return {}

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "command": " ".join(self.command()), "cpu": self.cpu}


class Kamailio(Server):
    """Kamailio 5.6 from Debian with bench/kamailio/kamailio.cfg (memory only, no database)."""

    name = "kamailio"

    def __init__(self, cpu: int | None = 0, workdir: Path | None = None, children: int = 1,
                 shm_mb: int = 1024) -> None:
        super().__init__(cpu, workdir)
        self.children = children
        self.shm_mb = shm_mb
        self.ctl = self.workdir / "kamailio_ctl"

    def command(self) -> list[str]:
        return [
            shutil.which("kamailio") or "/usr/sbin/kamailio", "-f", str(KAMAILIO_CFG),
            "-DD", "-E", "-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid"),
            "-m", str(self.shm_mb), "-M", "16", "-b", str(4 * 1024 * 1024),
            "-l", f"udp:127.0.0.1:{self.sip_port}", "-l", f"tcp:127.0.0.1:{self.http_port}",
            "-n", str(self.children), "-N", str(self.children), "-A", f'CTL_SOCK="unix:{self.ctl}"',
        ]

    def shm_used(self) -> int:
        """Bytes of Kamailio shared memory in use (kamcmd core.shmmem real_used)."""
        out = subprocess.run(["kamcmd", "-s", f"unix:{self.ctl}", "core.shmmem"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        m = re.search(r"real_used:\s*(\d+)", out)
        if not m:
            raise RuntimeError(f"unexpected core.shmmem output: {out!r}")
        return int(m.group(1))

    def memory(self) -> dict[str, int]:
        mem = super().memory()
        mem["shm_used_kb"] = self.shm_used() // 1024
        return mem

    def describe(self) -> dict[str, object]:
        version = subprocess.run(["kamailio", "-v"], capture_output=True, text=True,
                                 check=False).stdout.splitlines()
        return {**super().describe(), "version": version[0] if version else "",
                "children": self.children, "shm_mb": self.shm_mb}


class Busylamp(Server):
    """``busylamp run --role presence --bus memory`` from the project's virtualenv."""

    name = "busylamp"

    def __init__(self, cpu: int | None = 0, workdir: Path | None = None,
                 executable: str | None = None) -> None:
        super().__init__(cpu, workdir)
        self.executable = executable or str(REPO / ".venv" / "bin" / "busylamp")

    def command(self) -> list[str]:
        return [
            self.executable, "run", "--role", "presence", "--bus", "memory",
            "--sip", f"udp:127.0.0.1:{self.sip_port}", "--http", f"127.0.0.1:{self.http_port}",
            "--max-expires", "3600",
            # the harness ends the server when a run is over: no final NOTIFYs to 300k phones
            "--shutdown", "drop", "--status-interval", "0",
            *self._harness_limits(),
        ]

    def _harness_limits(self) -> list[str]:
        """Every simulated phone's SUBSCRIBE comes from sipp's one address: lift the per-source
        limits (docs/security.md) that would count them as one phone, when this build has them
        (an older ``--baseline`` build has not)."""
        try:
            help_text = subprocess.run([self.executable, "run", "--help"], capture_output=True,
                                       text=True, timeout=30, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        if "--max-subscriptions-per-source" not in help_text:
            return []
        return ["--max-subscriptions-per-source", "10000000", "--subscribe-rate", "1000000",
                "--subscribe-burst", "1000000", "--max-subscriptions", "10000000"]

    def counters(self) -> dict[str, float]:
        """From the node's ``/metrics`` (empty when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                        timeout=10) as answer:
                text = answer.read().decode("utf-8", "replace")
        except OSError:
            return {}
        return metric_values(text, NODE_COUNTERS)

    @classmethod
    def available(cls, executable: str | None = None) -> bool:
        """True when ``busylamp run --help`` works."""
        exe = executable or str(REPO / ".venv" / "bin" / "busylamp")
        try:
            res = subprocess.run([exe, "run", "--help"], capture_output=True, timeout=30,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0


def export_tree(ref: str, prefix: str) -> Path:
    """``git archive ref`` unpacked afresh into bench/build/<prefix>-<ref>."""
    root = REPO / "bench" / "build" / f"{prefix}-{re.sub(r'[^A-Za-z0-9_.-]', '_', ref)}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def baseline_executable(ref: str) -> str:
    """A ``busylamp`` launcher running the code of git ``ref`` (exported into bench/build/)
    with this checkout's virtualenv: the "before" of a before/after run."""
    root = export_tree(ref, "baseline")
    # the tree's optional C extensions, as scripts/bootstrap.sh builds them for a checkout
    for buildext in (root / "presence" / "node" / "buildext.py",
                     root / "presence" / "sip" / "buildext.py"):
        if buildext.exists():
            subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(buildext)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exe = root / "busylamp"
    exe.write_text(f"#!/bin/sh\nexec {REPO / '.venv' / 'bin' / 'python'} -c "
                   f"{shlex.quote(launcher_code(root))} \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


SERVERS: dict[str, type[Server]] = {"kamailio": Kamailio, "busylamp": Busylamp}
