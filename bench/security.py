"""Resource figures of `busylamp run` under hostile load (docs/security.md).

    python -m bench.security http-bodies [--tree DIR]   # 25 unauthenticated 8 MiB POST /publish
    python -m bench.security tcp-idle [--tree DIR]      # 1,100 idle SIP TCP connections, 1024 fds

``--tree`` runs the busylamp source tree at DIR (e.g. an older checkout, for a before/after);
default: this one. Prints one line of figures read from /proc and /metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(tree: Path, args: list[str], prefix: list[str] = ()) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(tree)!r}); import cli; "
            "sys.exit(cli.main(prog_name='busylamp'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSYLAMP_")}
    return subprocess.Popen([*prefix, sys.executable, "-c", code, "run", "--role", "presence",
                             "--status-interval", "0", *args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            _get(port, "/health")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("node did not start")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def http_bodies(tree: Path) -> str:
    http_port = _port()
    proc = _start(tree, ["--sip", f"udp:127.0.0.1:{_port()}", "--http",
                         f"127.0.0.1:{http_port}", "--http-token", "secret"])
    try:
        _wait_healthy(http_port)
        before = _kib(proc.pid, "VmRSS")
        body = b"[" + b" " * (8 * 1024 * 1024 - 1)
        head = (b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        answers: list[str] = []

        def one() -> None:
            with socket.create_connection(("127.0.0.1", http_port)) as sock:
                with contextlib.suppress(OSError):  # refused before the body: reading stopped
                    sock.sendall(head + body)
                try:
                    answers.append(sock.recv(64).split(b"\r\n")[0].decode())
                except OSError as exc:
                    answers.append(type(exc).__name__)

        threads = [threading.Thread(target=one) for _ in range(25)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak = _kib(proc.pid, "VmHWM")
        return (f"RSS before {before // 1024} MiB, peak {peak // 1024} MiB "
                f"(+{(peak - before) // 1024} MiB); answers {sorted(set(answers))}")
    finally:
        proc.terminate()
        proc.wait()


def tcp_idle(tree: Path) -> str:
    sip_port, http_port = _port(), _port()
    proc = _start(tree, ["--sip", f"udp:127.0.0.1:{sip_port}", "--sip", f"tcp:127.0.0.1:{sip_port}",
                         "--http", f"127.0.0.1:{http_port}"],
                  prefix=["prlimit", "--nofile=1024:1024"])
    idle: list[socket.socket] = []
    try:
        _wait_healthy(http_port)
        for _ in range(1100):
            try:
                idle.append(socket.create_connection(("127.0.0.1", sip_port), timeout=2))
            except OSError:
                break
        time.sleep(1.0)
        try:
            health = _get(http_port, "/health")[0]
        except OSError as exc:
            health = type(exc).__name__
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        try:
            metrics = _get(http_port, "/metrics")[1].decode().splitlines()
        except OSError:
            metrics = []
        evicted = next((line.rsplit(" ", 1)[1] for line in metrics
                        if line.startswith('busylamp_sip_tcp_closed_total{reason="evicted"}')), "-")
        return (f"{len(idle)} connections opened; /health {health}; node fds {fds}; "
                f"evicted {evicted}; RSS {_kib(proc.pid, 'VmRSS') // 1024} MiB")
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.security")
    parser.add_argument("probe", choices=["http-bodies", "tcp-idle"])
    parser.add_argument("--tree", type=Path, default=HERE)
    args = parser.parse_args()
    probe = http_bodies if args.probe == "http-bodies" else tcp_idle
    print(f"{args.probe} ({args.tree}): {probe(args.tree.resolve())}")


if __name__ == "__main__":
    main()
