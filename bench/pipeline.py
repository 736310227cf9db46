"""Throughput of the bridge-side stages, so no stage of the path is an unknown.

Rates are medians of ``repeats`` passes, per wall-clock second and per CPU second
(``time.process_time``); ``python -m bench.pipeline --baseline REF`` measures git REF and this
checkout alternately in one run (before/after).

* ESL: CHANNEL_CALLSTATE frames through ``esl.protocol`` (framing + event parsing), then
  ``bridge.normalize.normalize``, then ``presence.updates.parse_update`` and
  ``PresenceEngine.apply`` (no watchers: the cost of handing updates to the engine, not fan-out).
* NSQ: update dicts consumed by ``bridge.nsq.NsqConsumer`` from a real nsqd: see
  ``bench/nsq_stage.py`` (also a bare pynsq Reader, the library's ceiling).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.servers import REPO, export_tree
from bench.workload import DOMAIN

CALL_STATES = ("RINGING", "ACTIVE", "HANGUP")


def _frames(events: int) -> bytes:
    """``events`` CHANNEL_CALLSTATE frames: ringing -> active -> hangup for events/3 calls."""
    from busylamp.esl.protocol import encode_event

    core = str(uuid.uuid4())
    out = []
    for i in range(events):
        call, state = divmod(i, len(CALL_STATES))
        headers = {
            "Event-Name": "CHANNEL_CALLSTATE",
            "Core-UUID": core,
            "Event-Date-Timestamp": str(1_700_000_000_000_000 + i),
            "Event-Sequence": str(i + 1),
            "Channel-State": "CS_EXECUTE",
            "Channel-Call-State": CALL_STATES[state],
            "Original-Channel-Call-State": CALL_STATES[state - 1] if state else "DOWN",
            "Unique-ID": f"bench-{call}",
            "Call-Direction": "outbound",
            "Presence-Call-Direction": "outbound",
            "Channel-Presence-ID": f"ext{call % 1000}@{DOMAIN}",
            "Answer-State": ("ringing", "answered", "hangup")[state],
            "Caller-Caller-ID-Number": "5551000",
            "Caller-Caller-ID-Name": "Bench Caller",
            "Caller-Destination-Number": f"ext{call % 1000}",
            "Caller-Username": f"ext{call % 1000}",
            "Caller-Network-Addr": "127.0.0.1",
        }
        out.append(encode_event(headers))
    return b"".join(out)


STAGES = ("parse", "parse_normalize", "parse_normalize_engine")


def esl_throughput(events: int = 100_000, chunk: int = 16384, repeats: int = 3) -> dict[str, Any]:
    """Events/s for: parse only; parse + normalize; parse + normalize + engine hand-off.

    Each stage runs ``repeats`` times; ``events_per_s`` (wall clock) and ``events_per_cpu_s``
    (``time.process_time``: what the cores shared with other work cannot blur) are medians.
    """
    from bench.analysis import median

    data = _frames(events)
    out: dict[str, Any] = {"events": events, "bytes": len(data), "repeats": repeats}
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for stage, name in enumerate(STAGES):
        runs = [_run_stage(chunks, stage) for _ in range(repeats)]
        parsed, updates = runs[0][2], runs[0][3]
        out[name] = {
            "events_per_s": median([parsed / wall for wall, _, _, _ in runs]),
            "events_per_cpu_s": median([parsed / cpu for _, cpu, _, _ in runs]),
            "seconds": median([wall for wall, _, _, _ in runs]),
            "cpu_seconds": median([cpu for _, cpu, _, _ in runs]),
            "updates": updates, "parsed": parsed,
        }
    return out


def _run_stage(chunks: list[bytes], stage: int) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds, events parsed, updates made) of one pass at ``stage``."""
    from busylamp.bridge.normalize import NormalizeConfig, normalize
    from busylamp.esl.protocol import FrameParser, parse_event
    from busylamp.presence.engine import EngineConfig, PresenceEngine
    from busylamp.presence.packages import REGISTRY, PackageOptions
    from busylamp.presence.state import PresenceState
    from busylamp.presence.updates import parse_update

    config = NormalizeConfig(domain_default=DOMAIN)
    parser = FrameParser()
    engine = PresenceEngine(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)}),
                            PresenceState(REGISTRY, PackageOptions()), REGISTRY)
    parsed = updates = 0
    seq = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for piece in chunks:
        for frame in parser.feed(piece):
            event = parse_event(frame)
            if event is None:
                continue
            parsed += 1
            if stage < 1:
                continue
            result = normalize(event.name, event.headers, config)
            updates += len(result.updates)
            if stage < 2 or not result.updates:
                continue
            items = []
            for u in result.updates:
                seq += 1
                items.append(parse_update({**u, "Bridge-ID": "bench", "Bridge-Epoch": 1,
                                           "Sequence": seq}))
            engine.apply(items, time.monotonic())
    return time.perf_counter() - t0, time.process_time() - c0, parsed, updates


def esl_compare(ref: str, events: int = 100_000, repeats: int = 3) -> dict[str, Any]:
    """Before/after in one run: busylamp at git ``ref`` (exported into bench/build/) and this
    checkout, alternating one pass of every stage each, ``repeats`` times, each in a fresh
    process; the medians per tree (the same bench code drives both)."""
    from bench.analysis import median

    trees = {f"busylamp@{ref}": str(export_tree(ref, "esl")), "busylamp": str(REPO)}
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, tree in trees.items():
            samples[name].append(_child_pass(tree, events))
    out: dict[str, Any] = {"events": events, "repeats": repeats, "ref": ref}
    for name, runs in samples.items():
        out[name] = {
            stage: {
                key: median([run[stage][key] for run in runs])
                for key in ("events_per_s", "events_per_cpu_s")
            }
            for stage in STAGES
        }
    return out


def _child_pass(tree: str, events: int) -> dict[str, Any]:
    """One pass (repeats=1) of every stage, run by a fresh interpreter on the code of ``tree``."""
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from bench.tree import use_tree; use_tree({tree!r}); "
            f"from bench.pipeline import esl_throughput; "
            f"print(json.dumps(esl_throughput({events}, repeats=1)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def nsq_throughput(updates: int = 100_000, nsqd: str | None = None) -> dict[str, Any]:
    """Updates/s consumed (JSON decoded + validated with parse_update) through NsqConsumer
    (``bench.nsq_stage``, which also measures a bare pynsq Reader)."""
    from bench.nsq_stage import nsq_stage

    out = nsq_stage(updates, nsqd, ("busylamp",))
    return {"broker": out["broker"], **out["busylamp"]}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.pipeline [--baseline REF] [--events N] [--repeats R]``: the ESL path's
    rates per wall and per CPU second (medians), with REF's alongside when given."""
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline", description=main.__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", metavar="REF", help="git ref to measure before this checkout")
    args = ap.parse_args(argv)
    if args.baseline:
        out = esl_compare(args.baseline, args.events, args.repeats)
        names = [f"busylamp@{args.baseline}", "busylamp"]
    else:
        out = {"busylamp": esl_throughput(args.events, repeats=args.repeats)}
        names = ["busylamp"]
    print(json.dumps(out))
    print("| stage | " + " | ".join(f"{n} per CPU s | {n} wall" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for stage in STAGES:
        cells = [f"{out[n][stage]['events_per_cpu_s']:,.0f} | {out[n][stage]['events_per_s']:,.0f}"
                 for n in names]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
