"""Resource figures of `busylamp run` under hostile load (docs/security.md).

    python -m bench.security http-bodies [--tree DIR]   # 25 unauthenticated 8 MiB POST /publish
    python -m bench.security tcp-idle [--tree DIR]      # 1,100 idle SIP TCP connections, 1024 fds
    python -m bench.security subscribe-flood [--tree DIR]  # 50,000 SUBSCRIBEs from one source
    python -m bench.security amplification [--tree DIR]    # bytes out per byte of a spoofed SUBSCRIBE
    python -m bench.security fanout [--tree DIR]           # loop held by a publish to 36,000 watchers

``--tree`` runs the busylamp source tree at DIR (e.g. an older checkout, for a before/after);
default: this one. Prints one line of figures read from /proc and /metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.tree import launcher_code

HERE = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(tree: Path, args: list[str], prefix: list[str] = ()) -> subprocess.Popen:
    code = launcher_code(tree)
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


def _subscribe(host: str, port: int, n: int, *, user: str = "6666", contact: str | None = None,
               presentity: str = "1001@example.com", event: str = "dialog") -> bytes:
    contact = contact or f"{host}:{port}"
    return (f"SUBSCRIBE sip:{presentity} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-f{n};rport\r\n"
            f"From: <sip:{user}@example.com>;tag=f{n}\r\nTo: <sip:{presentity}>\r\n"
            f"Call-ID: flood-{n}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:{user}@{contact}>\r\n"
            f"Max-Forwards: 70\r\nEvent: {event}\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
            ).encode()


def _udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def _metric(port: int, name: str) -> str:
    _, body = _get(port, "/metrics")
    return " ".join(line.split("_", 1)[1] for line in body.decode().splitlines()
                    if line.startswith("busylamp_" + name))


def subscribe_flood(tree: Path, count: int = 50_000, seconds: float = 10.0) -> str:
    """``count`` initial SUBSCRIBEs from 127.0.0.2 in ``seconds`` (to a Contact that never
    answers), while 127.0.0.1 pings with OPTIONS every 10 ms and 127.0.0.3 subscribes every
    100 ms: the node's RSS growth, the OPTIONS round trips, the other source's answers."""
    http_port, sip_port = _port(), _port()
    proc = _start(tree, ["--sip", f"udp:127.0.0.1:{sip_port}", "--http", f"127.0.0.1:{http_port}"])
    node = ("127.0.0.1", sip_port)
    stop = threading.Event()
    rtts: list[float] = []
    other: dict[int, int] = {}
    try:
        _wait_healthy(http_port)
        before = _kib(proc.pid, "VmRSS")
        cpu_before = _cpu_seconds(proc.pid)

        def ping() -> None:
            sock = _udp("127.0.0.1")
            sock.settimeout(1.0)
            n = 0
            while not stop.is_set():
                n += 1
                msg = (f"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;"
                       f"branch=z9hG4bK-p{n};rport\r\nFrom: <sip:p@127.0.0.1>;tag=p{n}\r\n"
                       f"To: <sip:ping@127.0.0.1>\r\nCall-ID: ping-{n}\r\nCSeq: 1 OPTIONS\r\n"
                       f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
                started = time.perf_counter()
                sock.sendto(msg, node)
                try:
                    while f"ping-{n}".encode() not in sock.recv(65535):
                        pass
                    rtts.append(time.perf_counter() - started)
                except TimeoutError:
                    rtts.append(1.0)
                time.sleep(0.01)
            sock.close()

        def legit() -> None:
            sock = _udp("127.0.0.3")
            sock.settimeout(1.0)
            port = sock.getsockname()[1]
            n = 0
            while not stop.is_set():
                n += 1
                sock.sendto(_subscribe("127.0.0.3", port, n, user=f"3{n:04d}"), node)
                code = 0
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    try:
                        data = sock.recv(65535)
                    except TimeoutError:
                        break
                    if data.startswith(b"SIP/2.0 ") and f"flood-{n}".encode() in data:
                        code = int(data[8:11])
                        if code >= 200:
                            break
                other[code] = other.get(code, 0) + 1
                time.sleep(0.1)
            sock.close()

        threads = [threading.Thread(target=ping), threading.Thread(target=legit)]
        for thread in threads:
            thread.start()
        # the flood runs in a process of its own: it must not hold this one's GIL while the
        # probes time their round trips
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                f"from bench.security import _flood; _flood({sip_port}, {count}, {seconds})")
        subprocess.run([sys.executable, "-c", code], check=True)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        after = _kib(proc.pid, "VmRSS")
        cpu = _cpu_seconds(proc.pid) - cpu_before
        load = os.getloadavg()[0]
        subscribed = _metric(http_port, "subscribe_total")
        limited = _metric(http_port, "subscribe_limited_total")
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=20)
    rtts.sort()
    p50 = rtts[len(rtts) // 2] * 1000
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1000
    return (f"RSS +{(after - before) / 1024:.1f} MB ({before // 1024} -> {after // 1024} MB); "
            f"OPTIONS from another source: {len(rtts)} pings, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
            f"SUBSCRIBEs from another source: {dict(sorted(other.items()))}; "
            f"node CPU {cpu:.1f} s over the {seconds:.0f} s flood (+1 s); load average {load:.1f}; "
            f"node: {subscribed} {limited}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _flood(sip_port: int, count: int, seconds: float) -> None:
    """``count`` initial SUBSCRIBEs from 127.0.0.2, evenly over ``seconds`` (bench helper)."""
    flood = _udp("127.0.0.2")
    port = flood.getsockname()[1]
    messages = [_subscribe("127.0.0.2", port, n) for n in range(count)]
    started = time.monotonic()
    for n, message in enumerate(messages):
        flood.sendto(message, ("127.0.0.1", sip_port))
        ahead = started + seconds * (n + 1) / count - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
    flood.close()


def _publish(http_port: int, calls: int) -> None:
    for i in range(calls):
        body = json.dumps({
            "Event-Name": "update", "Event-Package": "dialog", "From": "sip:1001@example.com",
            "From-User": "1001", "From-Realm": "example.com", "To": f"sip:20{i:02d}@example.com",
            "To-User": f"20{i:02d}", "To-Realm": "example.com", "Call-ID": f"amp-call-{i}",
            "State": "confirmed", "Direction": "recipient", "Expires": 600}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=3)
        try:
            conn.request("POST", "/publish", body, {"Content-Type": "application/json"})
            conn.getresponse().read()
        finally:
            conn.close()


def _amplification_case(tree: Path, calls: int, pad: int, wait: float) -> tuple[int, int, int]:
    """(bytes in, bytes out, datagrams out) of one spoofed SUBSCRIBE padded by ``pad`` bytes."""
    http_port, sip_port = _port(), _port()
    proc = _start(tree, ["--sip", f"udp:127.0.0.1:{sip_port}", "--http", f"127.0.0.1:{http_port}"])
    try:
        _wait_healthy(http_port)
        _publish(http_port, calls)
        victim = _udp("127.0.0.1")
        victim.settimeout(0.5)
        port = victim.getsockname()[1]
        padding = f"User-Agent: {'x' * (pad - 14)}\r\n" if pad else ""
        message = (f"SUBSCRIBE sip:1001@example.com SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:{port}"
                   f";branch=z9hG4bK-a\r\nf: <sip:6@example.com>;tag=a\r\nt: "
                   f"<sip:1001@example.com>\r\ni: a\r\nCSeq: 1 SUBSCRIBE\r\n"
                   f"m: <sip:127.0.0.1:{port}>\r\no: dialog\r\n{padding}l: 0\r\n\r\n").encode()
        victim.sendto(message, ("127.0.0.1", sip_port))
        received = datagrams = 0
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                received += len(victim.recv(65535))
                datagrams += 1
            except TimeoutError:
                pass
        victim.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return len(message), received, datagrams


def amplification(tree: Path, wait: float = 34.0) -> str:
    """One SUBSCRIBE whose source and Contact are the victim's, who never answers: all bytes
    the victim receives over Timer F (32 s) per byte of the SUBSCRIBE, with an empty dialog and
    with three live calls on the presentity, for SUBSCRIBEs of 216 bytes (compact headers) and
    padded by 100 to 600 bytes; the worst ratio first."""
    cases = [(calls, pad) for calls in (0, 3) for pad in (0, 100, 200, 400, 600)]
    results: dict[tuple[int, int], tuple[int, int, int]] = {}

    failed: list[str] = []

    def run(case: tuple[int, int]) -> None:
        try:
            results[case] = _amplification_case(tree, case[0], case[1], wait)
        except (Exception, SystemExit) as exc:  # a node that did not start: say so
            failed.append(f"{case}: {exc!r}")

    for first in range(0, len(cases), 5):  # five nodes side by side at most
        threads = [threading.Thread(target=run, args=(case,)) for case in cases[first:first + 5]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failed:
        raise SystemExit("cases failed: " + "; ".join(failed))
    worst = max(results.items(), key=lambda kv: kv[1][1] / kv[1][0])
    lines = [f"worst {worst[1][1] / worst[1][0]:.1f}x ({worst[0][0]} calls, {worst[1][0]} B in)"]
    for (calls, _), (size, out, datagrams) in sorted(results.items()):
        lines.append(f"{calls} calls, {size} B in: {out} B out in {datagrams} datagrams = "
                     f"{out / size:.1f}x")
    return "; ".join(lines)


_FANOUT_CODE = """
import sys, time
sys.path.insert(0, HERE)
from bench.tree import use_tree
use_tree(TREE)
from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates

try:  # the default of --fanout-batch, where there is one
    config = EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}, fanout_batch=500)
except TypeError:
    config = EngineConfig(contacts={"udp": ("192.0.2.1", 5065)})
engine = PresenceEngine(config, PresenceState(REGISTRY, PackageOptions()), REGISTRY)
now = 1000.0
for n in range(WATCHERS):
    host = f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"
    engine.receive((f"SUBSCRIBE sip:1001@example.com SIP/2.0\\r\\nVia: SIP/2.0/UDP {host}:5060;"
                    f"branch=z9hG4bK-{n}\\r\\nFrom: <sip:{n}@example.com>;tag=t{n}\\r\\n"
                    f"To: <sip:1001@example.com>\\r\\nCall-ID: c{n}\\r\\nCSeq: 1 SUBSCRIBE\\r\\n"
                    f"Contact: <sip:{n}@{host}:5060>\\r\\nMax-Forwards: 70\\r\\nEvent: dialog\\r\\n"
                    f"Expires: 3600\\r\\nContent-Length: 0\\r\\n\\r\\n").encode(),
                   (host, 5060), "udp", None, now)
    for _, dest, data, _ in engine.messages_to_send():
        if data.startswith(b"NOTIFY"):
            head = data.split(b"\\r\\n\\r\\n", 1)[0].split(b"\\r\\n")[1:]
            keep = [h for h in head if h.split(b":", 1)[0] in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")]
            engine.receive(b"SIP/2.0 200 OK\\r\\n" + b"\\r\\n".join(keep)
                           + b"\\r\\nContent-Length: 0\\r\\n\\r\\n", dest, "udp", None, now)
engine.messages_to_send()
import gc
gc.collect()
gc.freeze()  # as a running node does after its table grew (presence/node/node.py housekeeping)
update = parse_updates({"Event-Name": "update", "Event-Package": "dialog",
    "From": "sip:1001@example.com", "From-User": "1001", "From-Realm": "example.com",
    "To": "sip:1002@example.com", "Call-ID": "big", "State": "early", "Direction": "recipient",
    "Expires": 600})
steps = []
started = time.perf_counter()
engine.apply(update, now)
sent = len(engine.messages_to_send())
steps.append(time.perf_counter() - started)
while getattr(engine, "backlog", 0):
    t0 = time.perf_counter()
    engine.handle_timer(now)
    sent += len(engine.messages_to_send())
    steps.append(time.perf_counter() - t0)
print(f"{sent} NOTIFYs in {len(steps)} steps, {sum(steps) * 1000:.0f} ms in all, "
      f"longest step {max(steps) * 1000:.1f} ms")
"""


def fanout(tree: Path, watchers: int = 36_000) -> str:
    """One publish to a presentity with ``watchers`` watchers (the sans-IO engine, no sockets):
    how long the caller's loop is held at a stretch (the longest step) and in all."""
    code = _FANOUT_CODE.replace("TREE", repr(str(tree))).replace("HERE", repr(str(HERE))).replace("WATCHERS", str(watchers))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tree)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.security")
    probes = {"http-bodies": http_bodies, "tcp-idle": tcp_idle,
              "subscribe-flood": subscribe_flood, "amplification": amplification,
              "fanout": fanout}
    parser.add_argument("probe", choices=list(probes))
    parser.add_argument("--tree", type=Path, default=HERE)
    args = parser.parse_args()
    probe = probes[args.probe]
    print(f"{args.probe} ({args.tree}): {probe(args.tree.resolve())}")


if __name__ == "__main__":
    main()
