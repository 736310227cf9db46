"""HTTP publisher: one JSON update per POST, paced, over keep-alive HTTP/1.1 connections.

The C tool ``bench/c/publisher.c`` does the sending; this wrapper writes the publish plan for it
and reads back what was sent. Each connection carries at most ``depth`` requests in flight (1 unless pipelining); a publish
is sent on the first idle connection once it is due (``start + i / rate``). If the server falls
behind, publishes go out as fast as connections free up and the achieved rate shows it.
:func:`measure_ceiling` runs it unpaced against a trivial HTTP sink of its own.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.cbuild import tool
from bench.workload import PublishPlan

Sent = tuple[int, int, str, float]  # seq, presentity, state, send time (monotonic)


@dataclass(slots=True)
class PublishResult:
    sent: list[Sent] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the server spent on this phase (set by the runner)
    # what the server's own counters say it did in this phase (Server.counters; by the runner)
    server_counts: dict[str, float] = field(default_factory=dict)
    # the share of each core's time the hypervisor stole in this phase (by the runner)
    steal_percent: dict[str, float | None] = field(default_factory=dict)

    @property
    def achieved_rate(self) -> float:
        span = self.finished - self.started
        return len(self.sent) / span if span > 0 else 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def publish(address: tuple[str, int], plan: PublishPlan, count: int, rate: float,
            connections: int = 4, path: str = "/publish", tag_prefix: str = "p",
            cpu: int | None = None, depth: int = 1) -> PublishResult:
    """Send ``count`` updates from ``plan`` at ``rate`` per second (<= 0: unpaced); wait for
    every answer. ``depth`` > 1 pipelines that many requests per connection."""
    steps = [plan.next() for _ in range(count)]
    with tempfile.TemporaryDirectory(prefix="bench-publisher-") as tmp:
        plan_path, out_path = Path(tmp) / "plan", Path(tmp) / "out"
        plan_path.write_text("".join(f"{seq} {pres} {state} {call}\n"
                                     for seq, pres, state, call in steps), encoding="ascii")
        proc = subprocess.run(_pinned([str(tool("publisher")), address[0], str(address[1]), path,
                                       repr(float(rate)), str(max(1, connections)), tag_prefix,
                                       str(plan_path), str(out_path), str(max(1, depth))], cpu),
                              capture_output=True, text=True, check=False)
        if proc.returncode == 3:
            raise TimeoutError("server stopped answering HTTP publishes")
        if proc.returncode == 4:
            raise ConnectionError("server closed a keep-alive connection")
        if proc.returncode:
            raise RuntimeError(f"publisher failed ({proc.returncode}): {proc.stderr.strip()}")
        result = PublishResult()
        for line in out_path.read_text(encoding="ascii").splitlines():
            kind, *rest = line.split()
            if kind == "S":
                seq, pres, state, _ = steps[int(rest[0])]
                result.sent.append((seq, pres, state, float(rest[1])))
            elif kind == "C":
                result.statuses[int(rest[0])] = int(rest[1])
            elif kind == "T":
                result.started, result.finished = float(rest[0]), float(rest[1])
                result.errors = int(rest[2])
    return result


def measure_ceiling(count: int = 300_000, connections: int = 16, publisher_cpu: int | None = 1,
                    sink_cpu: int | None = 0) -> dict[str, float]:
    """Publishes/s of the unpaced publisher against the C HTTP sink on another core, and per CPU
    second of the publisher (its ceiling on a core of its own)."""
    import resource

    sink = subprocess.Popen(_pinned([str(tool("publisher")), "--sink"], sink_cpu),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = publish(("127.0.0.1", port), PublishPlan(list(range(1000))), count, 0.0,
                      connections=connections, cpu=publisher_cpu)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        sink.terminate()
        sink.wait(10)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"sent": float(len(res.sent)), "ok": float(res.ok),
            "seconds": res.finished - res.started, "publisher_cpu_s": cpu,
            "publish_per_s": res.achieved_rate,
            "publish_per_cpu_s": len(res.sent) / cpu if cpu else 0.0}
