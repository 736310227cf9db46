"""Warm start from a peer: how long until a new node serves (``python -m bench.warmstart``).

A peer node (``busylamp run --role presence --bus memory``) is loaded through ``POST /publish``
with the presentity state of the harness workload (W phones x 4 keys over a pool of P
presentities; 75,000 x 4 over 75,000 by default, the 300k-subscription office): every
presentity has a presence record, 10% a call in progress (a dialog record), 30% a mailbox
(a message-summary record). Then, ``--repeats`` times, alternating:

* the floor: a node with no peer, from process start to ``/health`` 200 (interpreter, imports,
  bind);
* a node started with ``--peer``: process start to ``/health`` 200 and to the first SUBSCRIBE
  answered 200 (one real datagram every 20 ms, 503 while it warms), its CPU seconds until then,
  the peer's CPU seconds while it serves the snapshot, and the records the new node holds
  (``busylamp_state_records``), which must equal the peer's.

Once per peer: the snapshot's size in bytes and lines, read with a plain client. Medians are
printed as JSON. ``--codec`` instead measures, in this one process and without sockets, the CPU
seconds of both formats' two sides (the peer's serialization; the node's parse and apply, with
the collection a warm start ends with), alternating. A node that never becomes healthy, or holds other record counts, ends the run
with an error naming its log. ``--baseline REF`` runs git REF's code (peer and node) in the
same loop, alternating with this checkout's.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ujson

from bench.servers import (
    REPO,
    baseline_executable,
    cpu_seconds,
    descendants,
    free_port,
    stop_group,
)
from busylamp.presence.packages import REGISTRY
from busylamp.presence.snapshots import parse_rows, record_rows
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_update

DOMAIN = "bench.local"
BATCH = 5000  # updates per POST /publish (far under the API's 8 MiB)
BRIDGE = "bench-bridge"
SWITCH = "bench-switch-1"
ACCEPT = ("application/x-ndjson", "application/x-busylamp-rows")  # update objects; record rows


class BenchError(RuntimeError):
    """The run cannot go on (a node did not start, became unhealthy or lost records)."""


def office_state(presentities: int, calls: float = 0.10, mailboxes: float = 0.30) -> list[dict]:
    """The published state: presence for every presentity, a call for ``calls`` of them,
    a mailbox for ``mailboxes``; stamped by one bridge as a real bridge stamps them."""
    updates: list[dict] = []
    call_every = round(1 / calls) if calls else 0
    mwi_every = mailboxes and 1 / mailboxes
    for i in range(presentities):
        user, uri = f"ext{i}", f"sip:ext{i}@{DOMAIN}"
        head = {"Event-Category": "presence", "Event-Name": "update", "Presentity": uri,
                "Presentity-User": user, "Presentity-Realm": DOMAIN, "From": uri,
                "From-User": user, "From-Realm": DOMAIN, "Switch-ID": SWITCH}
        updates.append({**head, "Event-Package": "presence", "To": uri, "To-User": user,
                        "State": "open" if i % 3 else "closed", "Expires": 3600})
        if call_every and i % call_every == 0:
            peer = f"ext{(i + 1) % presentities}"
            updates.append({
                **head, "Event-Package": "dialog", "From-URI": uri,
                "To": f"sip:{peer}@{DOMAIN}", "To-User": peer, "To-Realm": DOMAIN,
                "To-URI": f"sip:{peer}@{DOMAIN}", "Call-ID": f"call-{i}@{SWITCH}",
                "From-Tag": f"ft{i}", "To-Tag": f"tt{i}",
                "State": "confirmed" if i % 4 else "early", "Direction": "initiator",
                "Expires": 3600})
        if mwi_every and int(i / mwi_every) != int((i + 1) / mwi_every):
            updates.append({**head, "Event-Package": "message-summary", "To": uri,
                            "To-User": user, "Messages-Waiting": "yes" if i % 2 else "no",
                            "Message-Account": uri, "MWI-Voice-Message": f"{i % 5}/{i % 7}"})
    for sequence, update in enumerate(updates, 1):
        update.update({"Bridge-ID": BRIDGE, "Bridge-Epoch": 1, "Sequence": sequence})
    return updates


# --- one node process --------------------------------------------------------------------------


@dataclass
class Node:
    """One ``busylamp run --role presence --bus memory`` on ephemeral ports of 127.0.0.1."""

    executable: str
    workdir: Path
    name: str
    peer: str | None = None
    sip_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    http_port: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    proc: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        cmd = [self.executable, "run", "--role", "presence", "--bus", "memory",
               "--sip", f"udp:127.0.0.1:{self.sip_port}", "--http", f"127.0.0.1:{self.http_port}",
               "--shutdown", "drop", "--status-interval", "0",
               "--max-subscriptions-per-source", "10000000", "--subscribe-rate", "1000000",
               "--subscribe-burst", "1000000", "--max-subscriptions", "10000000"]
        return [*cmd, "--peer", self.peer] if self.peer else cmd

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)

    def stop(self) -> None:
        stop_group(self.proc)

    def cpu(self) -> float:
        return cpu_seconds(descendants(self.proc.pid)) if self.proc else 0.0

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"{self.name} exited with {code}; see {self.log}")

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 60.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/health", timeout=1.0)[0] == 200
        except OSError:
            return False

    def records(self) -> dict[str, int]:
        """``busylamp_state_records`` by event package."""
        status, text = self.request("GET", "/metrics")
        if status != 200:
            raise BenchError(f"{self.name}: /metrics answered {status}")
        out = {}
        for line in text.decode().splitlines():
            if line.startswith("busylamp_state_records{"):
                labels, value = line.rsplit(" ", 1)
                out[labels.split('event="', 1)[1].split('"', 1)[0]] = int(float(value))
        return out


def subscribe(port: int, me: int, n: int) -> bytes:
    """One dialog SUBSCRIBE for ext0 from ``127.0.0.1:me`` (a new dialog each time)."""
    return (
        f"SUBSCRIBE sip:ext0@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-warm{n}-{time.monotonic_ns()};rport\r\n"
        f"From: <sip:phone0@{DOMAIN}>;tag=w{n}\r\nTo: <sip:ext0@{DOMAIN}>\r\n"
        f"Call-ID: warm-{n}-{time.monotonic_ns()}@bench\r\nCSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:phone0@127.0.0.1:{me}>\r\nMax-Forwards: 70\r\nEvent: dialog\r\n"
        f"Accept: application/dialog-info+xml\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def wait_serving(node: Node, timeout: float, sip: bool) -> dict[str, float]:
    """Seconds from the node's process start to /health 200 and (``sip``) to the first
    SUBSCRIBE answered 200; its CPU seconds at /health 200. BenchError when it never gets there."""
    out: dict[str, float] = {}
    deadline = node.started + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.02)
        me, n = s.getsockname()[1], 0
        while "health_s" not in out or (sip and "subscribe_s" not in out):
            node.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{node.name} not serving {timeout:.0f}s after start "
                                 f"(got {out}); see {node.log}")
            if sip and "subscribe_s" not in out:
                n += 1
                s.sendto(subscribe(node.sip_port, me, n), ("127.0.0.1", node.sip_port))
                try:
                    while True:  # 503s, NOTIFYs: read until a 200 or the 20 ms pause
                        data = s.recv(65535)
                        if data.startswith(b"SIP/2.0 200") and b"SUBSCRIBE" in data:
                            out["subscribe_s"] = time.monotonic() - node.started
                            break
                except OSError:
                    pass
            else:
                time.sleep(0.01)
            if "health_s" not in out and node.healthy():
                out["health_s"] = time.monotonic() - node.started
                out["node_cpu_s"] = node.cpu()
    return out


# --- the codec alone ----------------------------------------------------------------------------


def _dumps(item: object) -> bytes:
    return ujson.dumps(item, ensure_ascii=False, escape_forward_slashes=False).encode() + b"\n"


def _import_objects(body: bytes) -> PresenceState:
    """The node's import of update objects before the rows: a full parse per line."""
    state = PresenceState(REGISTRY)
    for line in body.split(b"\n")[1:]:
        if line:
            update = parse_update(ujson.loads(line))
            state.apply(update, 1.0, track_gaps=False)
    gc.collect(1)
    return state


def _import_rows(body: bytes) -> PresenceState:
    """The node's import of rows: no collection during it (presence/node/warming.py)."""
    state = PresenceState(REGISTRY)
    gc.disable()
    try:
        for line in body.split(b"\n")[1:]:
            if line:
                updates, errors = parse_rows(ujson.loads(line))
                if errors:
                    raise BenchError(f"rows refused: {errors[:3]}")
                for update in updates:
                    state.apply(update, 1.0, track_gaps=False)
    finally:
        gc.enable()
    gc.collect(1)
    return state


def codec(presentities: int, repeats: int) -> dict:
    """CPU seconds (medians) of each side of each format, alternating, in this process."""
    peer = PresenceState(REGISTRY)
    for update in office_state(presentities):
        peer.apply(parse_update(update), 1.0)
    gc.collect()
    gc.freeze()  # the peer's state is long-lived, as in a node after housekeeping
    encode = {"objects": lambda: b"".join(_dumps(i) for i in [{"marks": {}}, *peer.export(1.0)]),
              "rows": lambda: b"".join(_dumps(i) for i in [{"marks": {}},
                                                            *record_rows(peer, 1.0)])}
    decode = {"objects": _import_objects, "rows": _import_rows}
    samples: dict[str, dict[str, list[float]]] = {f: {"peer_cpu_s": [], "node_cpu_s": []}
                                                  for f in encode}
    report: dict = {"presentities": presentities, "records": peer.stats.records}
    for _ in range(repeats):
        for fmt in encode:
            started = time.process_time()
            body = encode[fmt]()
            samples[fmt]["peer_cpu_s"].append(time.process_time() - started)
            started = time.process_time()
            state = decode[fmt](body)
            samples[fmt]["node_cpu_s"].append(time.process_time() - started)
            if state.stats.records != peer.stats.records:
                raise BenchError(f"{fmt}: the node holds {state.stats.records}")
            report[f"{fmt}_bytes"] = len(body)
            del state, body
            gc.collect()
    for fmt, figures in samples.items():
        report[fmt] = {k: round(statistics.median(v), 6) for k, v in figures.items()}
    return report


# --- the run -------------------------------------------------------------------------------------


def load(peer: Node, updates: list[dict]) -> None:
    for start in range(0, len(updates), BATCH):
        body = json.dumps(updates[start:start + BATCH]).encode()
        status, answer = peer.request("POST", "/publish", body)
        if status != 202:
            raise BenchError(f"peer refused a batch: {status} {answer[:200]!r}")


def snapshot_size(peer: Node, accept: str) -> dict[str, object]:
    """Bytes and lines of the peer's /snapshot as ``accept``, and its CPU seconds to serve it."""
    before = peer.cpu()
    conn = http.client.HTTPConnection("127.0.0.1", peer.http_port, timeout=60)
    try:
        conn.request("GET", "/snapshot", headers={"Accept": accept})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return {"content_type": response.getheader("Content-Type"), "bytes": len(body),
            "lines": body.count(b"\n"), "peer_cpu_s": round(peer.cpu() - before, 3)}


def start_peer(executable: str, workdir: Path, name: str, updates: list[dict]) -> Node:
    peer = Node(executable, workdir, name)
    peer.start()
    wait_serving(peer, 60, sip=False)
    load(peer, updates)
    return peer


def warm_once(executable: str, peer: Node, workdir: Path, name: str, expect: dict[str, int],
              timeout: float) -> dict[str, float]:
    node = Node(executable, workdir, name, peer=f"http://127.0.0.1:{peer.http_port}")
    peer_before = peer.cpu()
    node.start()
    try:
        result = wait_serving(node, timeout, sip=True)
        result["peer_cpu_s"] = peer.cpu() - peer_before
        held = node.records()
        if held != expect:
            raise BenchError(f"{name} holds {held}, the peer {expect}; see {node.log}")
        result["records"] = sum(held.values())
        return result
    finally:
        node.stop()


def floor_once(executable: str, workdir: Path, name: str, timeout: float) -> dict[str, float]:
    node = Node(executable, workdir, name)
    node.start()
    try:
        result = wait_serving(node, timeout, sip=False)
        return {"health_s": result["health_s"], "node_cpu_s": result["node_cpu_s"]}
    finally:
        node.stop()


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def run(presentities: int, repeats: int, baseline: str | None, timeout: float) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-warmstart-"))
    updates = office_state(presentities)
    builds = {"current": str(REPO / ".venv" / "bin" / "busylamp")}
    if baseline:
        builds["baseline"] = baseline_executable(baseline)
    peers: dict[str, Node] = {}
    report: dict = {"presentities": presentities, "published": len(updates),
                    "workdir": str(workdir), "builds": {}}
    try:
        for label, exe in builds.items():
            peers[label] = start_peer(exe, workdir, f"peer-{label}", updates)
        samples: dict[str, dict[str, list]] = {b: {"warm": [], "floor": []} for b in builds}
        expect = {label: peer.records() for label, peer in peers.items()}
        for r in range(repeats):
            for label, exe in builds.items():
                samples[label]["floor"].append(floor_once(exe, workdir, f"floor-{label}-{r}",
                                                          timeout))
                samples[label]["warm"].append(
                    warm_once(exe, peers[label], workdir, f"warm-{label}-{r}", expect[label],
                              timeout))
                print(label, r, samples[label]["warm"][-1], file=sys.stderr, flush=True)
        for label in builds:
            report["builds"][label] = {
                "records": expect[label],
                "snapshot": [snapshot_size(peers[label], accept) for accept in ACCEPT],
                "floor": _median(samples[label]["floor"]), "warm": _median(samples[label]["warm"]),
                "warm_runs": samples[label]["warm"],
            }
    finally:
        for peer in peers.values():
            peer.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warmstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presentities", type=int, default=75000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REF", help="also run git REF's code, alternating")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a node may take to serve before the run fails")
    parser.add_argument("--codec", action="store_true",
                        help="only the two formats' encode and decode CPU, in this process")
    args = parser.parse_args(argv)
    try:
        report = (codec(args.presentities, args.repeats) if args.codec
                  else run(args.presentities, args.repeats, args.baseline, args.timeout))
    except BenchError as exc:
        print(f"bench.warmstart: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
