"""Start a real Kamailio for tests: own runtime dir, pid file, ephemeral ports, captured log.

`start_kamailio(cfg, {"PHONES_PORT": AUTO_PORT, "DS_LIST_FILE": "/x"}, tmp_path)` passes every
define as `-A NAME=VALUE` (strings quoted, ints bare, True as a bare `-A NAME`); each AUTO_PORT is
replaced by a port free on both UDP and TCP (found by binding port 0) and reported in `.ports`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.polling import wait_until as _wait_until
from tests.sipp_util import free_port as _free_port

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"


class _AutoPort:
    def __repr__(self) -> str:
        return "AUTO_PORT"


AUTO_PORT = _AutoPort()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`, outside the ephemeral range (sipp_util)."""
    return _free_port(host=host)


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; return it, or raise TimeoutError."""
    try:
        return _wait_until(predicate, timeout, interval)
    except AssertionError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


def _bound_ports(kind: str) -> set[int]:
    """Local ports bound in /proc/net/<kind> (TCP: listening sockets only)."""
    ports: set[int] = set()
    for name in (kind, kind + "6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if kind == "tcp" and cols[3] != "0A":
                continue
            ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _define_arg(name: str, value: object) -> str:
    if value is True:
        return name
    if isinstance(value, int):
        return f"{name}={value}"
    return f'{name}="{value}"'


@dataclass
class KamailioProcess:
    """A running Kamailio; `ports` maps each AUTO_PORT define to the port it got."""

    process: subprocess.Popen
    ports: dict[str, int]
    runtime_dir: Path
    log_path: Path
    ctl_socket: str
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 5.0, start: int = 0) -> re.Match:
        """Wait until `pattern` (a regex) appears in the log after character offset `start`."""
        regex = re.compile(pattern)

        def found():
            self.check_alive()
            return regex.search(self.log(), start)

        return wait_until(found, timeout, what=f"log line {pattern!r}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"kamailio exited with {self.process.returncode}:\n{self.log()[-4000:]}"
            )

    def rpc(self, *command: str) -> str:
        """Run a kamcmd command against this instance's ctl socket (if the cfg loads ctl)."""
        out = subprocess.run(
            ["kamcmd", "-s", self.ctl_socket, *command],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout

    def stop(self) -> None:
        """SIGTERM the main process (it stops its children); SIGKILL its process group if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # Children may linger briefly after the main process; never leave any behind.
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: not _group_alive(self.process.pid), 3.0, what="kamailio children")
        except TimeoutError:
            os.killpg(self.process.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_kamailio(
    cfg_path: str | Path,
    defines: dict[str, object],
    tmp_path: Path,
    *,
    timeout: float = 10.0,
    shm_mb: int = 64,
    pkg_mb: int = 8,
) -> KamailioProcess:
    """Start Kamailio with `cfg_path` and `-A` defines; wait until its ports are bound.

    A `CTL_SOCKET` define pointing into the runtime dir is added unless given.  Raises (with the
    log) if Kamailio exits or does not bind its ports within `timeout` seconds.
    """
    runtime_dir = Path(tmp_path) / "kamailio-run"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    log_path = runtime_dir / "kamailio.log"
    resolved = dict(defines)
    ports: dict[str, int] = {}
    for name, value in defines.items():
        if value is AUTO_PORT:
            port = free_port()  # never the same port twice in one test process
            ports[name] = port
            resolved[name] = port
        elif name.endswith("_PORT") and isinstance(value, int):
            ports[name] = value
    ctl_socket = str(resolved.setdefault("CTL_SOCKET", f"unix:{runtime_dir / 'ctl.sock'}"))
    args = [
        KAMAILIO, "-f", str(cfg_path), "-DD", "-E",
        "-Y", str(runtime_dir), "-P", str(runtime_dir / "kamailio.pid"),
        "-m", str(shm_mb), "-M", str(pkg_mb),
    ]
    for name, value in resolved.items():
        if value is not None and value is not False:
            args += ["-A", _define_arg(name, value)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kam = KamailioProcess(process, ports, runtime_dir, log_path, ctl_socket, args)
    wanted = set(ports.values())

    def ready() -> bool:
        kam.check_alive()
        return wanted <= (_bound_ports("udp") | _bound_ports("tcp"))

    try:
        wait_until(ready, timeout, what="kamailio to bind its ports")
        # Workers are forked after binding; the ctl socket appears once they run.
        if ctl_socket.startswith("unix:"):
            wait_until(lambda: (kam.check_alive(), Path(ctl_socket[5:]).exists())[1], timeout,
                       what="kamailio ctl socket")
    except BaseException:
        kam.stop()
        raise
    return kam
