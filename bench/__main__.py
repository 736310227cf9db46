"""``python -m bench run|responder|esl|nsq``: the benchmark entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench import report
from bench.runner import FULL, QUICK, RunConfig, make_server, run_server

METHOD = Path(__file__).resolve().parent / "method.md"


def _config(args: argparse.Namespace) -> RunConfig:
    cfg = FULL if args.full else QUICK
    overrides = {
        "watchers": args.watchers, "keys": args.keys, "pool": args.pool, "rate": args.rate,
        "duration": args.duration, "repeats": args.repeats,
        "subscribe_rate": args.subscribe_rate, "probe_start": args.probe_start,
        "probe_seconds": args.probe_seconds, "kamailio_children": args.kamailio_children,
        "kamailio_shm_mb": args.kamailio_shm_mb, "connections": args.connections,
        "depth": args.depth,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.ceiling is not None:
        cfg = replace(cfg, ceiling=args.ceiling)
    if args.overload:
        cfg = replace(cfg, ceiling=True,
                      overload=tuple(float(x) for x in args.overload.split(",")))
    if args.memory_only:
        cfg = replace(cfg, memory_only=True, ceiling=False, mode="memory")
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    names = ["busylamp", "kamailio"] if args.server == "both" else [args.server]
    if args.baseline:  # the "before": busylamp at that git ref, run just before this checkout's
        names.insert(0, f"busylamp@{args.baseline}")
    command = "python -m bench " + shlex.join(sys.argv[1:])
    results: dict[str, dict] = {}
    for name in names:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        server = make_server(name, cfg, workdir)
        logging.info("running %s (work dir %s)", name, workdir)
        results[name] = asdict(run_server(server, cfg, workdir))
    path = report.write_json(results, command, Path(args.results_dir))
    print(report.table(results))
    print(f"\nJSON: {path}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, default=str))
    if not args.no_docs:
        report.update_docs(Path(args.docs), METHOD.read_text(), cfg.mode,
                           report.run_section(results, command))
        print(f"markdown: {args.docs}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    results, command = report.load_json([Path(p) for p in args.json])
    payload = json.loads(Path(args.json[-1]).read_text())
    print(report.table(results))
    report.update_docs(Path(args.docs), METHOD.read_text(), args.mode,
                       report.run_section(results, command, payload.get("date")))
    print(f"markdown: {args.docs}")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    """Responder ceiling, ESL path and NSQ path; written to the 'stages' docs section."""
    from bench.nsq_stage import nsq_stage
    from bench.pipeline import esl_throughput
    from bench.responder import measure_ceiling

    command = "python -m bench " + shlex.join(sys.argv[1:])
    resp = measure_ceiling(args.count)
    esl = esl_throughput(args.events)
    nsq = nsq_stage(args.updates, args.nsqd)
    m = report.machine()
    lines = [
        f"- Command: `{command}`",
        f"- Machine: {m['nproc']} cores, {m['cpu_model']}, kernel {m['kernel']}, "
        f"Python {m['python']}, load average {tuple(round(x, 2) for x in m['loadavg'])}",
        "",
        "| stage | rate |",
        "|---|---|",
        f"| NOTIFY responder (C; answer + record), fed on core 0 | "
        f"{resp['notify_per_s']:,.0f} NOTIFY/s wall, {resp['notify_per_cpu_s']:,.0f} per CPU s |",
        f"| ESL framing + event parsing | {esl['parse']['events_per_s']:,.0f} events/s |",
        f"| ESL parse + normalize | {esl['parse_normalize']['events_per_s']:,.0f} events/s |",
        f"| ESL parse + normalize + parse_update + engine.apply (no watchers; "
        f"{esl['parse_normalize_engine']['updates'] / max(1, esl['events']):.0f} updates/event) | "
        f"{esl['parse_normalize_engine']['events_per_s']:,.0f} events/s |",
        f"| NSQ consumer: decode + parse_update ({nsq['broker']}) | "
        f"{nsq['busylamp']['updates_per_s']:,.0f} updates/s |",
        f"| NSQ: bare pynsq Reader, FIN only (same {nsq['broker']}; the library's ceiling) | "
        f"{nsq['bare']['updates_per_s']:,.0f} updates/s |",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    report.write_json({"stages": {"responder": resp, "esl": esl, "nsq": nsq}}, command,
                      report.RESULTS)
    if not args.no_docs:
        report.update_docs(Path(args.docs), METHOD.read_text(), "stages", section)
    return 0


def cmd_responder(args: argparse.Namespace) -> int:
    from bench.responder import measure_ceiling

    print(json.dumps(measure_ceiling(args.count)))
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    """Ceilings of the C load tools (median of ``--repeats``), each fed by a C peer on core 0."""
    from bench.analysis import median
    from bench.publisher import measure_ceiling as publisher_ceiling
    from bench.responder import measure_ceiling as responder_ceiling

    resp = [responder_ceiling(args.count) for _ in range(args.repeats)]
    pub = [publisher_ceiling(args.publishes) for _ in range(args.repeats)]
    out = {"responder": {k: median([r[k] for r in resp]) for k in resp[0]},
           "publisher": {k: median([r[k] for r in pub]) for k in pub[0]},
           "command": "python -m bench " + shlex.join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg": os.getloadavg()}
    print(json.dumps(out))
    report.RESULTS.mkdir(parents=True, exist_ok=True)
    report.TOOLS.write_text(json.dumps(out, indent=1))  # quoted next to every run's results
    return 0


def cmd_esl(args: argparse.Namespace) -> int:
    from bench.pipeline import esl_throughput

    print(json.dumps(esl_throughput(args.events)))
    return 0


def cmd_esl_socket(args: argparse.Namespace) -> int:
    from bench.esl_socket import esl_client_throughput

    print(json.dumps(esl_client_throughput(args.events)))
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from bench.engine import engine_throughput

    print(json.dumps(engine_throughput(args.presentities, args.keys,
                                       history=args.history == "on",
                                       freeze=args.gc_freeze == "on")))
    return 0


def cmd_nsq(args: argparse.Namespace) -> int:
    from bench.nsq_stage import nsq_stage

    print(json.dumps(nsq_stage(args.updates, args.nsqd, tuple(args.only or ("bare", "busylamp")),
                               args.output_buffer_size, args.output_buffer_timeout)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="benchmark one or both presence servers")
    run.add_argument("--server", choices=["kamailio", "busylamp", "both"], default="kamailio")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small run, under 2 minutes")
    mode.add_argument("--full", action="store_true", help="300k subscriptions and ceilings")
    run.add_argument("--baseline", metavar="REF",
                     help="also run busylamp as of git REF (e.g. main), before this checkout's")
    run.add_argument("--watchers", type=int, help="W: phones (distinct SIP users)")
    run.add_argument("--keys", type=int, help="K: line keys per phone (default 4)")
    run.add_argument("--pool", type=int, help="P: presentity pool (default W)")
    run.add_argument("--rate", type=float, help="fan-out publishes per second")
    run.add_argument("--duration", type=float, help="seconds per fan-out repeat")
    run.add_argument("--repeats", type=int, help="fan-out repeats and SUBSCRIBE/s ladders")
    run.add_argument("--subscribe-rate", type=float, help="SUBSCRIBE/s of the subscribe phase")
    run.add_argument("--probe-start", type=float, help="first rung of the SUBSCRIBE/s ladder")
    run.add_argument("--probe-seconds", type=float, help="seconds per SUBSCRIBE/s rung")
    run.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=None,
                     help="raise the publish rate until delivery or state breaks")
    run.add_argument("--overload", metavar="F1,F2",
                     help="after the ceiling, offer F x its publish rate (e.g. 1.5,2)")
    run.add_argument("--memory-only", action="store_true",
                     help="only subscribe, verify and read memory (e.g. 1M subscriptions)")
    run.add_argument("--connections", type=int,
                     help="publisher keep-alive connections (one request in flight on each)")
    run.add_argument("--depth", type=int,
                     help="requests in flight per publisher connection (> 1: HTTP pipelining, "
                     "an offered load that does not wait for the server)")
    run.add_argument("--kamailio-children", type=int, help="Kamailio UDP workers (-n)")
    run.add_argument("--kamailio-shm-mb", type=int, help="Kamailio shared memory (-m)")
    run.add_argument("--results-dir", default=str(report.RESULTS))
    run.add_argument("--docs", default=str(report.DOCS))
    run.add_argument("--no-docs", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    run.add_argument("--json-out", help="also write the results dict to this file")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="rewrite docs/BENCHMARKS.md from saved JSON results")
    rep.add_argument("json", nargs="+", help="bench/results/*.json (later files win per server)")
    rep.add_argument("--mode", choices=list(report.MODES), required=True)
    rep.add_argument("--docs", default=str(report.DOCS))
    rep.set_defaults(func=cmd_report)
    stages = sub.add_parser("stages", help="responder ceiling + ESL + NSQ, into the docs")
    stages.add_argument("--count", type=int, default=1_000_000, help="NOTIFYs blasted")
    stages.add_argument("--events", type=int, default=100_000, help="ESL events")
    stages.add_argument("--updates", type=int, default=50_000, help="NSQ updates")
    stages.add_argument("--nsqd", help="host:port of a running nsqd")
    stages.add_argument("--docs", default=str(report.DOCS))
    stages.add_argument("--no-docs", action="store_true")
    stages.set_defaults(func=cmd_stages)
    resp = sub.add_parser("responder", help="NOTIFY/s ceiling of the responder itself")
    resp.add_argument("--count", type=int, default=1_000_000)
    resp.set_defaults(func=cmd_responder)
    tools = sub.add_parser("tools", help="ceilings of the C responder and publisher")
    tools.add_argument("--count", type=int, default=1_000_000, help="NOTIFYs blasted")
    tools.add_argument("--publishes", type=int, default=300_000, help="unpaced publishes")
    tools.add_argument("--repeats", type=int, default=3)
    tools.set_defaults(func=cmd_tools)
    esl = sub.add_parser("esl", help="events/s through esl.protocol + bridge.normalize")
    esl.add_argument("--events", type=int, default=100_000)
    esl.set_defaults(func=cmd_esl)
    esl_socket = sub.add_parser("esl-socket", help="events/s through EslClient over loopback TCP")
    esl_socket.add_argument("--events", type=int, default=200_000)
    esl_socket.set_defaults(func=cmd_esl_socket)
    eng = sub.add_parser("engine", help="the sans-IO engine alone: SUBSCRIBE/s, NOTIFY/s")
    eng.add_argument("--presentities", type=int, default=2500)
    eng.add_argument("--keys", type=int, default=4)
    eng.add_argument("--history", choices=("on", "off"), default="on",
                     help="per-lamp history and stage histograms (default on, as in a node)")
    eng.add_argument("--gc-freeze", choices=("on", "off"), default="on",
                     help="freeze the heap after the SUBSCRIBE phase, as a node does (default on)")
    eng.set_defaults(func=cmd_engine)
    nsq = sub.add_parser("nsq", help="updates/s through the NSQ consumer and a bare pynsq Reader")
    nsq.add_argument("--updates", type=int, default=100_000)
    nsq.add_argument("--nsqd", help="host:port of a running nsqd (default: nsqd on PATH, "
                     "else the kit's nsqd: TESTKIT_NSQ or ../shared/nsq)")
    nsq.add_argument("--only", action="append", choices=("bare", "bare-asyncio", "busylamp"),
                     help="measure this reader (repeatable; default bare and busylamp; "
                     "bare-asyncio: the bare Reader on a stock asyncio loop, no gevent)")
    nsq.add_argument("--output-buffer-size", type=int,
                     help="bytes nsqd buffers towards each reader (default pynsq's 16384)")
    nsq.add_argument("--output-buffer-timeout", type=int,
                     help="ms after which nsqd flushes that buffer (default pynsq's 250)")
    nsq.set_defaults(func=cmd_nsq)
    args = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers and tools started here are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("nsq").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
