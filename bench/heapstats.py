"""What a node's memory and pauses are made of, read inside the real process.

``bench run`` sees a node from outside (PSS, latency); this runs the same node with an entry
point (``python -m bench.heapstats node ...`` = ``busylamp ...`` plus a SIGUSR1 handler) that
writes, when signalled, CPython's allocator statistics (``sys._debugmallocstats``: arenas, the
blocks in use and free per size class, empty pools), glibc's (``mallinfo2``: the C heap in use
and free), PSS per kind of mapping (/proc/self/smaps) and every garbage collection since the
start with its pause (``gc.callbacks``). Two measurements use it:

    python -m bench.heapstats memory --watchers 75000 --rate 4000 --settle 35
        subscribe W x 4 line keys at RATE/s with sipp, wait SETTLE s (Timer J), dump.
    python -m bench.heapstats pauses --watchers 2500 --rate 2500 --seconds 6
        W x 4 subscriptions (the quick workload's 10,000 by default), then 3 fan-outs at RATE
        publishes/s: latency per repeat and the collections during them.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

OUT_ENV = "BENCH_HEAPSTATS_OUT"


# --- inside the node ------------------------------------------------------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _c_heap() -> dict[str, int]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return {}
    info = libc.mallinfo2()
    return {"heap_bytes": info.arena, "in_use": info.uordblks, "free": info.fordblks,
            "mmapped": info.hblkhd}


def _pss_by_mapping() -> dict[str, int]:
    kinds: Counter[str] = Counter()
    name = "[anon]"
    with open("/proc/self/smaps", encoding="latin-1") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else "[anon]"
            elif fields and fields[0] == "Pss:":
                kinds[name] += int(fields[1])
    return dict(kinds.most_common(6))


def _pymalloc() -> str:
    """``sys._debugmallocstats()`` (it writes to file descriptor 2), read back from a file."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return out.read().decode("latin-1")


def node_main(argv: list[str]) -> None:
    """``busylamp`` with the SIGUSR1 dump (the node's command line follows ``node``)."""
    pauses: list[tuple[float, int, float, int]] = []
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((time.monotonic(), info["generation"],
                           (time.perf_counter() - started[0]) * 1000, info["collected"]))

    gc.callbacks.append(timed)

    def dump(*_: object) -> None:
        report = {"at": time.monotonic(), "pymalloc": _pymalloc(), "c_heap": _c_heap(),
                  "pss_kb_by_mapping": _pss_by_mapping(), "gc_pauses": pauses,
                  "frozen": gc.get_freeze_count()}
        with open(os.environ[OUT_ENV], "a") as out:
            out.write(json.dumps(report) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    from busylamp.cli import main

    sys.argv = ["busylamp", *argv]
    main()


# --- the driver -----------------------------------------------------------------------------------

def _summary(text: str) -> dict[str, int]:
    """The totals of a ``sys._debugmallocstats`` text."""
    wanted = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "in_use",
              "# bytes in available blocks": "free_blocks"}
    out: dict[str, int] = {}
    for line in text.splitlines():
        for prefix, key in wanted.items():
            if line.startswith(prefix):
                out[key] = int(line.rsplit("=", 1)[1].replace(",", ""))
        if "unused pools *" in line:
            out["empty_pools_bytes"] = int(line.rsplit("=", 1)[1].replace(",", ""))
    return out


class _Node:
    def __init__(self, workdir: Path) -> None:
        from bench.servers import REPO, Busylamp

        launcher = workdir / "busylamp-heapstats"
        launcher.write_text(f"#!/bin/sh\nexport {OUT_ENV}={workdir / 'dumps.jsonl'}\n"
                            f"cd {REPO} && exec {REPO / '.venv/bin/python'} -m bench.heapstats "
                            f"node \"$@\"\n")
        launcher.chmod(0o755)
        self.dumps = workdir / "dumps.jsonl"
        self.server = Busylamp(cpu=0, workdir=workdir, executable=str(launcher))

    def dump(self) -> dict:
        before = self.dumps.read_text().count("\n") if self.dumps.exists() else 0
        os.kill(self.server.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = self.dumps.read_text().splitlines() if self.dumps.exists() else []
            if len(lines) > before:
                return json.loads(lines[-1])
            time.sleep(0.1)
        raise TimeoutError("the node wrote no dump")


def _subscribe(node: _Node, watchers: int, rate: float, workdir: Path) -> tuple[object, int]:
    from bench.servers import free_port
    from bench.sipp import run_subscribe
    from bench.workload import Workload, write_sipp_csv

    workload = Workload(watchers=watchers)
    write_sipp_csv(str(workdir / "subscribe.csv"), workload.csv_rows())
    port = free_port()
    result = run_subscribe(("127.0.0.1", node.server.sip_port), workdir / "subscribe.csv",
                           workload.subscriptions, rate, workdir, local_port=port, cpu=1,
                           timeout=3 * workload.subscriptions / rate + 120, linger=True)
    return result, port


def memory(watchers: int, rate: float, settle: float, workdir: Path) -> dict:
    node = _Node(workdir)
    node.server.start(60)
    try:
        time.sleep(1)
        mem0, first = node.server.memory(), node.dump()
        sipp, _ = _subscribe(node, watchers, rate, workdir)
        time.sleep(settle)
        mem1, last = node.server.memory(), node.dump()
    finally:
        node.server.stop()
    held = watchers * 4
    return {"subscriptions": held, "sipp": repr(sipp),
            "pss_per_subscription": (mem1["pss_kb"] - mem0["pss_kb"]) * 1024 / held,
            "pymalloc_before": _summary(first["pymalloc"]),
            "pymalloc_after": _summary(last["pymalloc"]),
            "c_heap_after": last["c_heap"], "pss_kb_by_mapping": last["pss_kb_by_mapping"],
            "size_classes_after": [line for line in last["pymalloc"].splitlines()
                                   if line[:5].strip().isdigit()]}


def pauses(watchers: int, rate: float, seconds: float, settle: float, workdir: Path) -> dict:
    from bench import analysis
    from bench.responder import Responder
    from bench.runner import QUICK, _publish_phase
    from bench.workload import PublishPlan, Workload

    cfg = QUICK
    node = _Node(workdir)
    node.server.start(60)
    responder = None
    out: dict = {"repeats": []}
    try:
        _, port = _subscribe(node, watchers, cfg.subscribe_rate, workdir)
        responder = Responder(port=port, cpu=1)
        time.sleep(settle)  # the subscribe phase's transactions expire first, as in bench run
        watched = Workload(watchers=watchers).watched_presentities()
        plan = PublishPlan(watched)
        _, records = _publish_phase(node.server, responder, plan, len(watched), cfg.verify_rate,
                                    cfg, prefix="v")
        held = analysis.held_subscriptions(analysis.decode(records), tag_prefix="v")
        start = node.dump()["at"]
        for _ in range(3):
            sent, records = _publish_phase(node.server, responder, plan, int(rate * seconds),
                                           rate, cfg, prefix="p")
            fig = analysis.fanout(sent.sent, analysis.decode(records), held,
                                  sent.achieved_rate).as_dict()
            out["repeats"].append({k: round(fig[k], 2) for k in (
                "delivery_ratio", "latency_ms_p50", "latency_ms_p99", "latency_ms_max")})
        during = [p for p in node.dump()["gc_pauses"] if p[0] >= start]
    finally:
        if responder is not None:
            responder.stop()
        node.server.stop()
    by_gen: dict[int, list[float]] = {}
    for _, generation, ms, _ in during:
        by_gen.setdefault(generation, []).append(ms)
    out["collections"] = {g: {"count": len(v), "total_ms": round(sum(v), 1),
                              "max_ms": round(max(v), 2)} for g, v in sorted(by_gen.items())}
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["node"]:
        node_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.heapstats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "pauses"])
    parser.add_argument("--watchers", type=int, default=None,
                        help="phones of 4 line keys (memory: 75000, pauses: 2500)")
    parser.add_argument("--rate", type=float, default=None,
                        help="SUBSCRIBE/s (memory, default 4000) or publishes/s (pauses, 2500)")
    parser.add_argument("--settle", type=float, default=35.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-heapstats-{args.what}-"))
    if args.what == "memory":
        report = memory(args.watchers or 75000, args.rate or 4000.0, args.settle, workdir)
    else:
        report = pauses(args.watchers or 2500, args.rate or 2500.0, args.seconds, args.settle,
                        workdir)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
