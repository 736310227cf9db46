"""Results: JSON in bench/results/, a busylamp | Kamailio table in docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TOOLS = RESULTS / "tools.json"  # the last `python -m bench tools`
DOCS = REPO / "docs" / "BENCHMARKS.md"
ORDER = ("busylamp", "kamailio")
MODES = ("full", "memory", "quick", "stages")  # results sections of docs/BENCHMARKS.md, in this order


def machine() -> dict[str, object]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="latin-1") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "mem_gib": round(mem_kb / 1024 / 1024, 1), "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def load_json(paths: list[Path]) -> tuple[dict[str, dict], str]:
    """Merge the results of saved runs (later files win per server); return them + commands."""
    results: dict[str, dict] = {}
    commands = []
    for path in paths:
        payload = json.loads(Path(path).read_text())
        results.update(payload["results"])
        commands.append(payload["command"])
    return results, " ; ".join(dict.fromkeys(commands))


def write_json(results: dict[str, dict], command: str, directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{stamp}-{'-'.join(sorted(results))}.json"
    payload = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
               "machine": machine(), "results": results}
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def tool_ceilings() -> str:
    """The load tools' ceilings from the last ``python -m bench tools`` (empty if never run)."""
    try:
        t = json.loads(TOOLS.read_text())
    except (OSError, ValueError):
        return ""
    r, p = t["responder"], t["publisher"]
    return (f"- Load tools' ceilings (`{t['command']}`, {t['date']}, load "
            f"{tuple(round(x, 2) for x in t['loadavg'])}): NOTIFY responder "
            f"{r['notify_per_cpu_s']:,.0f} NOTIFY/s per CPU s ({r['notify_per_s']:,.0f}/s "
            f"wall-clock), HTTP publisher {p['publish_per_cpu_s']:,.0f} publishes/s per CPU s "
            f"({p['publish_per_s']:,.0f}/s wall-clock)")


def _fmt(value: object, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ceiling(r: dict) -> float | None:
    """Highest NOTIFY/s with 100% delivery and right state (and p99 within the limit), over the
    fan-out, ceiling and overload steps."""
    if not r["config"].get("ceiling"):
        return None
    limit = r["config"].get("ceiling_p99_ms", math.inf)
    steps = [*r.get("fanout", []), *r.get("ceiling", []),
             *(f for f in r.get("overload", []) if "error" not in f)]
    good = [s["notify_per_s"] for s in steps
            if s["delivery_ratio"] >= 1.0 and s["right_state_ratio"] >= 1.0
            and s["latency_ms_p99"] <= limit]
    return max(good) if good else None


def _drops(r: dict) -> str:
    d = r["udp_rcvbuf_errors"]
    if isinstance(d, int):
        return str(d)
    main = sum(d.get(k, 0) for k in ("subscribe", "verify", "fanout", "ceiling"))
    return f"{main} ({d.get('subscribe_ladders', 0)} in SUBSCRIBE/s ladders)"


def _fanout_steal(r: dict) -> str | None:
    """The median fan-out step's steal on the server's core, as text (no ratio for it)."""
    value = r["fanout_median"].get("steal_pct_server_core")
    return None if value is None else f"{value:.1f}"


ROWS: list[tuple[str, Callable[[dict], object], int]] = [
    ("subscriptions requested (W x K)", lambda r: r["subscribe"]["calls"], 0),
    ("subscriptions held (verified by NOTIFY)", lambda r: r["held"], 0),
    ("subscribe phase: sipp ok / failed / retrans",
     lambda r: f"{r['subscribe']['successful']} / {r['subscribe']['failed']} / "
               f"{r['subscribe']['retransmissions']}", 0),
    ("clean SUBSCRIBE/s (median of ladders)",
     lambda r: r["clean_subscribe_per_s"] if r.get("subscribe_ladders") else None, 0),
    ("publishes/s achieved (median)", lambda r: r["fanout_median"]["publish_rate"], 0),
    ("NOTIFY/s delivered (median)", lambda r: r["fanout_median"]["notify_per_s"], 0),
    ("NOTIFY delivered per server CPU second (median)",
     lambda r: r["fanout_median"].get("notify_per_cpu_s"), 0),
    ("delivery ratio (median)", lambda r: r["fanout_median"]["delivery_ratio"], 4),
    ("extra NOTIFYs, same state again (median)", lambda r: r["fanout_median"].get("extra"), 0),
    ("right-state ratio (median)", lambda r: r["fanout_median"]["right_state_ratio"], 4),
    ("publish->NOTIFY p50 ms (median)", lambda r: r["fanout_median"]["latency_ms_p50"], 2),
    ("publish->NOTIFY p99 ms (median)", lambda r: r["fanout_median"]["latency_ms_p99"], 2),
    ("publish->NOTIFY max ms (median)", lambda r: r["fanout_median"]["latency_ms_max"], 2),
    ("CPU stolen by the hypervisor, server core, fan-out % (median)", _fanout_steal, 0),
    ("NOTIFY/s ceiling (100% delivery, right state, p99 in limit)", _ceiling, 0),
    ("PSS growth per subscription, bytes",
     lambda r: r["memory"]["bytes_per_subscription"].get("pss_kb"), 0),
    ("RSS growth per subscription, bytes",
     lambda r: r["memory"]["bytes_per_subscription"].get("rss_kb"), 0),
    ("Kamailio shm growth per subscription, bytes",
     lambda r: r["memory"]["bytes_per_subscription"].get("shm_used_kb"), 0),
    ("server CPU s: subscribe phase", lambda r: r["cpu_seconds"]["subscribe"], 2),
    ("server CPU s: fan-out phases", lambda r: r["cpu_seconds"]["fanout"], 2),
    ("server CPU s: whole run", lambda r: r["cpu_seconds"]["total"], 2),
    ("UDP receive-buffer drops, box-wide (in overload ladders)", _drops, 0),
]


def table(results: dict[str, dict]) -> str:
    names = [n for n in results if n not in ORDER] + [n for n in ORDER if n in results]
    header = "| metric | " + " | ".join(names) + " |"
    pair = names == ["busylamp", "kamailio"]
    if pair:
        header = "| metric | busylamp | Kamailio | busylamp / Kamailio |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for label, get, digits in ROWS:
        cells, raw = [], []
        for n in names:
            try:
                v = get(results[n])
            except (KeyError, TypeError, IndexError):
                v = None
            raw.append(v)
            cells.append(_fmt(v, digits))
        if all(v is None for v in raw):
            continue  # e.g. fan-out rows of a memory-only run
        if pair:
            a, b = raw
            ratio = (f"{a / b:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float)
                     and b and not math.isnan(a) and not math.isnan(b) else "")
            cells.append(ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _steal(step: dict) -> str:
    """A step's stolen CPU time, server core / tools core, in percent; blank if not measured."""
    server, tools = step.get("steal_pct_server_core"), step.get("steal_pct_tools_core")
    if server is None and tools is None:
        return ""
    return f"{_fmt(server, 1)} / {_fmt(tools, 1)}"


def steps_table(results: dict[str, dict]) -> str:
    """Every fan-out step of the ceiling search and of the overload runs, per server."""
    lines = ["| server | step | offered publishes/s | achieved publishes/s | HTTP non-2xx | "
             "NOTIFY/s delivered | per server CPU s | NOTIFYs resent | delivery ratio | "
             "right state | p99 ms | steal % (server / tools core) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        steps = [("fan-out (1st repeat)", f) for f in r.get("fanout", [])[:1]]
        steps += [("ceiling", f) for f in r.get("ceiling", [])]
        steps += [(f"overload x{f['factor']:g}", f) for f in r.get("overload", [])]
        for label, f in steps:
            if "error" in f:
                lines.append(f"| {name} | {label} | {f['target_rate']:,.0f} | {f['error']} "
                             "| | | | | | | | |")
                continue
            offered = f.get("target_rate", r["config"]["rate"])
            lines.append(
                f"| {name} | {label} | {offered:,.0f} | {f['publish_rate']:,.0f} | "
                f"{_fmt(f.get('http_non_2xx'))} | {f['notify_per_s']:,.0f} | "
                f"{_fmt(f.get('notify_per_cpu_s'))} | {_fmt(f.get('server_notify_retransmitted'))} | "
                f"{f['delivery_ratio']:.4f} | {f['right_state_ratio']:.4f} | "
                f"{_fmt(f['latency_ms_p99'], 1)} | {_steal(f)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _portable(command: str) -> str:
    """A server command line as it reads in any checkout: paths below the repo made relative,
    temporary run directories shortened."""
    command = command.replace(str(REPO_ROOT) + "/", "")
    return re.sub(r"/tmp/bench-[a-z]+-[A-Za-z0-9_]+", "RUNDIR", command)


def run_section(results: dict[str, dict], command: str, date: str | None = None) -> str:
    """Markdown for one run: command, date, machine, workload, servers, table."""
    m = machine()
    cfg = next(iter(results.values()))["config"]
    loads = {n: r.get("loadavg") for n, r in results.items() if r.get("loadavg")}
    parts = [
        f"- Command: `{command}`",
        f"- Date: {date or time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_gib']} GiB, "
        f"kernel {m['kernel']}, Python {m['python']}",
        f"- Workload: W={cfg['watchers']} phones x K={cfg['keys']} keys, pool "
        f"P={cfg['pool'] or cfg['watchers']}, subscribe phase at {cfg['subscribe_rate']:g}/s, "
        + ("memory only (no fan-out, no SUBSCRIBE/s ladders)" if cfg.get("memory_only") else
           f"fan-out {cfg['rate']:g} publishes/s x {cfg['duration']:g} s x {cfg['repeats']} "
           f"repeats, ceiling search {'on' if cfg['ceiling'] else 'off'}"),
    ]
    for name, r in results.items():
        server = r["server"]
        parts.append(f"- {name}: `{_portable(server.get('command', ''))}`"
                     + (f" ({server['version']})" if server.get("version") else ""))
    tools = tool_ceilings()
    if tools:
        parts.append(tools)
    if loads:
        parts.append("- Load average (1/5/15 min) at the start of each server's run: "
                     + ", ".join(f"{n} {tuple(round(x, 2) for x in v)}" for n, v in loads.items()))
    steps = steps_table(results) if any(r.get("ceiling") for r in results.values()) else ""
    return "\n".join([*parts, "", table(results), "", *([steps, ""] if steps else [])])


NOTES_BEGIN, NOTES_END = "<!-- notes -->", "<!-- /notes -->"


def update_docs(path: Path, method: str, mode: str, section: str) -> None:
    """Rewrite ``path``: the method, then one results section per mode (others kept)."""
    begin, end = f"<!-- bench:{mode} -->", f"<!-- /bench:{mode} -->"
    kept: dict[str, str] = {}
    if path.exists():
        text = path.read_text()
        for other in MODES:
            b, e = f"<!-- bench:{other} -->", f"<!-- /bench:{other} -->"
            if b in text and e in text:
                kept[other] = text[text.index(b):text.index(e) + len(e)]
    notes = ""
    if path.exists() and NOTES_BEGIN in text and NOTES_END in text:
        notes = text[text.index(NOTES_BEGIN):text.index(NOTES_END) + len(NOTES_END)]
    title = "Bridge stages and tool ceilings" if mode == "stages" else f"Results: {mode} mode"
    kept[mode] = f"{begin}\n## {title}\n\n{section}{end}"
    body = [method.strip(), ""]
    if notes:  # the hand-written analysis (profiles, what changed) survives regeneration
        body += [notes + "\n"]
    body += [kept[m] + "\n" for m in MODES if m in kept]
    path.write_text("\n".join(body))
