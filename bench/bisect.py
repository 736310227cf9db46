"""Two git refs of busylamp back to back: the NOTIFY ceiling found by bisection and the fan-out p99.

    python -m bench.bisect OLD_REF NEW_REF [--repeats 3] [--out results.jsonl]

Each run holds the quick-mode workload (bench/runner.py QUICK: its subscriptions, each verified
by a NOTIFY), measures the p99 at the fan-out rate (``repeats`` steps of the quick config), then
climbs x1.5 from that rate until a step fails and bisects between the last good and the first
failing rate to within 2%. A step counts when every NOTIFY arrived with the right state, the
p99 stayed under the quick config's ceiling limit and the publisher achieved 95% of its rate.
The two refs run alternately (old, new, old, new, ...), each from a ``git archive`` export
(bench/servers.py ``baseline_executable``), so both see the same machine; one JSON line per run
goes to ``--out`` and the medians are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from bench import analysis
from bench.responder import Responder
from bench.runner import LOAD_CPU, QUICK, _figures, _publish_phase
from bench.servers import Busylamp, baseline_executable, free_port
from bench.sipp import run_subscribe
from bench.workload import PublishPlan, write_sipp_csv

log = logging.getLogger("bench.bisect")
cfg = QUICK
P99_LIMIT = cfg.ceiling_p99_ms


def ok(fig: dict, pres, rate: float) -> bool:
    """A step counts: every NOTIFY, right state, p99 under the limit, 95% of the rate achieved."""
    return (fig["delivery_ratio"] >= 1.0 and fig["right_state_ratio"] >= 1.0
            and fig["latency_ms_p99"] <= P99_LIMIT and pres.achieved_rate >= 0.95 * rate)


def one(name: str, exe: str) -> dict:
    """One run of one tree: subscriptions held, fan-out p99, then the ceiling by bisection."""
    work = Path(tempfile.mkdtemp(prefix=f"bisect-{name}-"))
    server = Busylamp(cpu=0, workdir=work, executable=exe)
    os.sched_setaffinity(0, {LOAD_CPU})
    server.start()
    responder = None
    out = {"server": name, "loadavg": os.getloadavg(), "steps": []}
    try:
        wl = cfg.workload
        csv_path = work / "subscribe.csv"
        write_sipp_csv(str(csv_path), wl.csv_rows())
        phone_port = free_port()
        run_subscribe(("127.0.0.1", server.sip_port), csv_path, wl.subscriptions,
                      cfg.subscribe_rate, work, local_port=phone_port, cpu=LOAD_CPU,
                      timeout=120, linger=True)
        responder = Responder(port=phone_port, cpu=LOAD_CPU)
        time.sleep(cfg.memory_settle)
        watched = wl.watched_presentities()
        plan = PublishPlan(watched)
        _, records = _publish_phase(server, responder, plan, len(watched), cfg.verify_rate,
                                    cfg, prefix="v")
        held = analysis.held_subscriptions(analysis.decode(records), tag_prefix="v")
        out["held"] = len(held)

        def step(rate):
            pres, recs = _publish_phase(server, responder, plan, int(rate * cfg.duration), rate,
                                        cfg, prefix="p")
            fig = _figures(pres, recs, held)
            fig["target_rate"] = rate
            fig["ok"] = ok(fig, pres, rate)
            out["steps"].append(fig)
            log.info("%s %.0f/s: ok=%s notify/s=%.0f p99=%.1f achieved=%.0f", name, rate,
                     fig["ok"], fig["notify_per_s"], fig["latency_ms_p99"], fig["publish_rate"])
            return fig
        fan = [step(cfg.rate) for _ in range(cfg.repeats)]
        out["fanout_p99_median"] = analysis.median([f["latency_ms_p99"] for f in fan])
        out["fanout_p50_median"] = analysis.median([f["latency_ms_p50"] for f in fan])
        # bracket: x1.5 up from the fan-out rate (or down from it), then bisect to 2%
        lo, hi = None, None
        best = max((f for f in fan if f["ok"]), key=lambda f: f["notify_per_s"], default=None)
        rate = cfg.rate
        if best:
            lo = rate
            while hi is None and rate < cfg.ceiling_max_rate:
                rate *= 1.5
                f = step(rate)
                if f["ok"]:
                    lo, best = rate, f
                else:
                    hi = rate
        else:
            hi = rate
            lo = rate / 1.5
            while lo > 200:
                f = step(lo)
                if f["ok"]:
                    best = f
                    break
                hi, lo = lo, lo / 1.5
        while hi / lo > 1.02:
            mid = (lo + hi) / 2
            f = step(mid)
            if f["ok"]:
                lo, best = mid, f
            else:
                hi = mid
        out["ceiling_rate"] = lo
        out["ceiling_notify_per_s"] = best["notify_per_s"] if best else 0.0
        out["ceiling_p99"] = best["latency_ms_p99"] if best else None
        out["describe"] = server.describe()
        return out
    finally:
        if responder is not None:
            responder.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bisect.jsonl"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    refs = {"old": args.old, "new": args.new}
    exes = {name: baseline_executable(ref) for name, ref in refs.items()}
    results: dict[str, list[dict]] = {"old": [], "new": []}
    with args.out.open("a") as fh:
        for rep in range(args.repeats):
            for name in ("old", "new"):
                res = one(name, exes[name])
                res.update(repeat=rep, ref=refs[name],
                           time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
                results[name].append(res)
                fh.write(json.dumps(res) + "\n")
                fh.flush()
                log.info("%s (%s) run %d: ceiling %.0f NOTIFY/s (publish rate %.0f/s), "
                         "fan-out p99 %.1f ms", name, refs[name], rep,
                         res["ceiling_notify_per_s"], res["ceiling_rate"],
                         res["fanout_p99_median"])
    for name in ("old", "new"):
        ceilings = [r["ceiling_notify_per_s"] for r in results[name]]
        p99s = [r["fanout_p99_median"] for r in results[name]]
        print(f"{name} {refs[name]}: ceiling median {analysis.median(ceilings):.0f} NOTIFY/s "
              f"(runs: {', '.join(f'{c:.0f}' for c in ceilings)}); fan-out p99 median "
              f"{analysis.median(p99s):.1f} ms (runs: {', '.join(f'{p:.1f}' for p in p99s)})")

if __name__ == "__main__":
    main()
