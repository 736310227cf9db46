"""One benchmark run against one server: subscribe, verify, fan out, probe SUBSCRIBE/s.

Phases (the server pinned to core 0, sipp/responder/publisher pinned to core 1):
1. subscribe: sipp subscribes the W*K line keys from one UDP port and answers each initial NOTIFY;
2. verify: the responder takes over that port; one publish per watched presentity; a
   subscription is *held* when its verification NOTIFY arrived (sipp's counters are not trusted);
3. fan-out: publishes at the set rate for the set time (repeated), early -> confirmed -> terminated;
4. ceiling (optional): the fan-out at rising publish rates until delivery or latency breaks;
5. SUBSCRIBE/s: ladders of sipp runs at rising rates; the highest clean rate, median of repeats.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import analysis
from bench.publisher import PublishResult, publish
from bench.responder import Responder
from bench.servers import Kamailio, Server, free_port
from bench.sipp import SippResult, run_subscribe
from bench.workload import DOMAIN, PublishPlan, Workload, write_sipp_csv

log = logging.getLogger(__name__)
LOAD_CPU = 1


@dataclass(slots=True)
class RunConfig:
    watchers: int = 2500
    keys: int = 4
    pool: int = 0
    rate: float = 2500.0          # publishes/s in the fan-out phase
    duration: float = 3.0         # seconds per fan-out repeat
    repeats: int = 3              # fan-out repeats and SUBSCRIBE/s ladders
    subscribe_rate: float = 4000.0
    verify_rate: float = 2500.0
    probe_start: float = 3000.0   # first rung of the SUBSCRIBE/s ladder
    probe_seconds: float = 1.0    # length of each rung
    probe_step: float = 1.3
    probe_max_rungs: int = 14
    ceiling: bool = False
    ceiling_step: float = 1.5
    ceiling_max_rate: float = 40000.0
    ceiling_p99_ms: float = 250.0  # a step with a worse p99 does not count as sustained
    overload: tuple[float, ...] = ()  # after the ceiling: fan-out at these multiples of it
    memory_settle: float = 6.0     # wait after the subscribe phase before reading memory
    memory_only: bool = False      # subscribe + verify + memory; no fan-out, no ladders
    connections: int = 64        # publisher connections, one request in flight each
    depth: int = 1                # requests in flight per connection (> 1: HTTP pipelining)
    settle: float = 1.5           # quiet time that ends a phase
    kamailio_children: int = 1
    kamailio_shm_mb: int = 1024
    mode: str = "quick"

    @property
    def workload(self) -> Workload:
        return Workload(self.watchers, self.keys, self.pool)


QUICK = RunConfig()
FULL = RunConfig(watchers=75000, duration=15.0, repeats=3, subscribe_rate=4000.0,
                 probe_start=4000.0, probe_seconds=3.0, ceiling=True, kamailio_shm_mb=4096,
                 memory_settle=35.0, mode="full")


@dataclass(slots=True)
class ServerResult:
    server: dict[str, object]
    config: dict[str, object]
    subscribe: dict[str, object] = field(default_factory=dict)
    held: int = 0
    memory: dict[str, object] = field(default_factory=dict)
    fanout: list[dict[str, float]] = field(default_factory=list)
    fanout_median: dict[str, float] = field(default_factory=dict)
    ceiling: list[dict[str, float]] = field(default_factory=list)
    overload: list[dict[str, float]] = field(default_factory=list)
    subscribe_ladders: list[list[dict[str, object]]] = field(default_factory=list)
    clean_subscribe_per_s: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    udp_rcvbuf_errors: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)


def udp_rcvbuf_errors() -> int:
    """System-wide UDP RcvbufErrors counter (every socket on the box)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("RcvbufErrors")])


def cpu_jiffies(path: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """Per CPU: (steal, total) in jiffies since boot, from ``/proc/stat``. Steal is the time
    the hypervisor ran something else while this virtual CPU wanted to run."""
    out: dict[int, tuple[int, int]] = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu":
                continue
            values = [int(v) for v in rest.split()]
            # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
            out[int(name[3:])] = (values[7] if len(values) > 7 else 0, sum(values[:8]))
    return out


def steal_percent(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
                  cpu: int) -> float | None:
    """The share of ``cpu``'s time between two :func:`cpu_jiffies` samples that was stolen."""
    if cpu not in before or cpu not in after:
        return None
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * (after[cpu][0] - before[cpu][0]) / total if total > 0 else None


def _collect(responder: Responder, settle: float, limit: float = 60.0) -> list:
    """Records until nothing arrived for ``settle`` seconds (at most ``limit``)."""
    records: list = []
    quiet_since = time.monotonic()
    deadline = quiet_since + limit
    while time.monotonic() < deadline:
        time.sleep(min(0.25, settle))
        _, batch = responder.dump()
        if batch:
            records.extend(batch)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            break
    return records


def _publish_phase(server: Server, responder: Responder, plan: PublishPlan, count: int,
                   rate: float, cfg: RunConfig, prefix: str) -> tuple[PublishResult, list]:
    responder.dump()
    counted = server.counters()
    jiffies = cpu_jiffies()
    cpu0 = server.cpu_seconds()
    res = publish(("127.0.0.1", server.http_port), plan, count, rate,
                  connections=cfg.connections, path=server.publish_path, tag_prefix=prefix,
                  depth=cfg.depth)
    records = _collect(responder, cfg.settle)
    res.server_cpu = server.cpu_seconds() - cpu0
    jiffies_after = cpu_jiffies()
    server_core = (None if server.cpu is None
                   else steal_percent(jiffies, jiffies_after, server.cpu))
    res.steal_percent = {"server_core": server_core,
                         "tools_core": steal_percent(jiffies, jiffies_after, LOAD_CPU)}
    after = server.counters()
    res.server_counts = {key: after[key] - counted[key] for key in after if key in counted}
    return res, records


def _figures(pres: PublishResult, records: list, held: dict[str, int]) -> dict[str, float]:
    """The fan-out figures of one step, plus the server's CPU seconds and NOTIFYs per CPU s."""
    fig = analysis.fanout(pres.sent, analysis.decode(records), held,
                          pres.achieved_rate).as_dict()
    fig["http_non_2xx"] = len(pres.sent) - pres.ok
    fig["server_cpu_s"] = pres.server_cpu
    fig["notify_per_cpu_s"] = fig["delivered"] / pres.server_cpu if pres.server_cpu else 0.0
    fig.update({f"server_{key}": value for key, value in pres.server_counts.items()})
    fig.update({f"steal_pct_{key}": value for key, value in pres.steal_percent.items()
                if value is not None})
    return fig


def _subscribe_ladder(server: Server, cfg: RunConfig, workdir: Path, ladder: int,
                      start: float) -> list[SippResult]:
    """The highest clean SUBSCRIBE rate, found as the issue asks for ceilings: sipp runs at
    rates rising by ``probe_step`` from ``start`` (falling, when ``start`` is not clean) until
    one clean and one unclean rate bracket it, then bisection between the two until they are
    within 2% (``probe_max_rungs`` runs at most). Every run is returned; the best is the
    highest achieved rate of a clean one."""
    rungs: list[SippResult] = []

    def probe(rate: float) -> bool:
        rung = len(rungs)
        calls = max(100, int(rate * cfg.probe_seconds))
        csv_path = workdir / f"probe_{ladder}_{rung}.csv"
        write_sipp_csv(str(csv_path), (f"probe{ladder}x{rung}x{i};rp{ladder}x{rung}x{i};{DOMAIN}"
                                       for i in range(calls)))
        res = run_subscribe(("127.0.0.1", server.sip_port), csv_path, calls, rate, workdir,
                            cpu=LOAD_CPU, name=f"probe_{ladder}_{rung}", recv_timeout_ms=4000)
        rungs.append(res)
        ok = res.clean and res.rate >= 0.9 * rate
        log.info("subscribe ladder %d rate %.0f: %d ok %d failed %d retrans -> %.0f/s (%s)",
                 ladder, rate, res.successful, res.failed, res.retransmissions, res.rate,
                 "clean" if ok else "not clean")
        return ok

    low = high = None  # offered rates: the highest clean, the lowest not clean
    rate = start
    going_up = probe(rate)
    if going_up:
        low = rate
    else:
        high = rate
    while (low is None or high is None) and len(rungs) < cfg.probe_max_rungs:
        rate = rate * cfg.probe_step if going_up else rate / cfg.probe_step
        if probe(rate):
            low = rate
        else:
            high = rate
    while low is not None and high is not None and high > low * 1.02 \
            and len(rungs) < cfg.probe_max_rungs:
        rate = (low + high) / 2
        if probe(rate):
            low = rate
        else:
            high = rate
    return rungs


def run_server(server: Server, cfg: RunConfig, workdir: Path) -> ServerResult:
    """The whole run against one started-here server; the server is stopped at the end."""
    t_start = time.monotonic()
    os.sched_setaffinity(0, {LOAD_CPU})
    workload = cfg.workload
    result = ServerResult(server={}, config=asdict(cfg), loadavg=os.getloadavg())
    drops = result.udp_rcvbuf_errors
    mark = [udp_rcvbuf_errors()]

    def phase_done(name: str) -> None:
        now = udp_rcvbuf_errors()
        drops[name] = now - mark[0]
        mark[0] = now

    server.start()
    responder = None
    try:
        result.server = server.describe()
        mem0 = server.memory()
        cpu0 = server.cpu_seconds()

        # 1. subscribe
        csv_path = workdir / "subscribe.csv"
        write_sipp_csv(str(csv_path), workload.csv_rows())
        phone_port = free_port()
        sub = run_subscribe(("127.0.0.1", server.sip_port), csv_path, workload.subscriptions,
                            cfg.subscribe_rate, workdir, local_port=phone_port, cpu=LOAD_CPU,
                            timeout=max(120, 3 * workload.subscriptions / cfg.subscribe_rate),
                            linger=True)
        result.subscribe = {**asdict(sub), "rate": sub.rate, "clean": sub.clean}
        cpu1 = server.cpu_seconds()
        phase_done("subscribe")
        # the responder answers on the phones' port from now on (late retransmissions too)
        responder = Responder(port=phone_port, cpu=LOAD_CPU)
        # transactions of the subscribe phase (SUBSCRIBE and initial NOTIFY) expire first
        time.sleep(cfg.memory_settle)
        mem1 = server.memory()

        # 2. verify
        watched = workload.watched_presentities()
        plan = PublishPlan(watched)
        vres, records = _publish_phase(server, responder, plan, len(watched),
                                       cfg.verify_rate, cfg, prefix="v")
        held = analysis.held_subscriptions(analysis.decode(records), tag_prefix="v")
        result.held = len(held)
        cpu2 = server.cpu_seconds()
        phase_done("verify")
        grown = {k: mem1[k] - mem0[k] for k in mem0}
        result.memory = {
            "before_kb": mem0, "after_subscribe_kb": mem1, "grown_kb": grown,
            "bytes_per_subscription": {
                k: (v * 1024 / result.held if result.held else float("nan"))
                for k, v in grown.items()},
            "verify_http_statuses": vres.statuses,
        }

        if cfg.memory_only:
            result.cpu_seconds = {"subscribe": cpu1 - cpu0, "verify": cpu2 - cpu1,
                                  "total": server.cpu_seconds() - cpu0}
            return result

        # 3. fan-out at the set rate, repeated
        count = int(cfg.rate * cfg.duration)
        cpu_fan = 0.0
        for rep in range(cfg.repeats):
            c0 = server.cpu_seconds()
            pres, records = _publish_phase(server, responder, plan, count, cfg.rate, cfg,
                                           prefix="p")
            cpu_fan += server.cpu_seconds() - c0
            fig = _figures(pres, records, held)
            fig["repeat"] = rep
            result.fanout.append(fig)
            log.info("fan-out %d at %.0f/s: %s", rep, cfg.rate, fig)
        result.fanout_median = {
            k: analysis.median([f[k] for f in result.fanout]) for k in result.fanout[0]
            if all(k in f for f in result.fanout)}
        phase_done("fanout")

        # 4. ceiling
        if cfg.ceiling:
            rate = cfg.rate * cfg.ceiling_step
            while rate <= cfg.ceiling_max_rate:
                count = int(rate * cfg.duration)
                pres, records = _publish_phase(server, responder, plan, count, rate, cfg,
                                               prefix="p")
                fig = _figures(pres, records, held)
                fig["target_rate"] = rate
                result.ceiling.append(fig)
                log.info("ceiling at %.0f/s: %s", rate, fig)
                if (fig["delivery_ratio"] < 1.0 or fig["right_state_ratio"] < 1.0
                        or fig["latency_ms_p99"] > cfg.ceiling_p99_ms
                        or pres.achieved_rate < 0.95 * rate):
                    break
                rate *= cfg.ceiling_step
            phase_done("ceiling")

            # 4b. overload: offered publishes at multiples of the sustained rate (collapse?)
            steps = [*result.fanout, *result.ceiling]
            good = [f for f in steps if f["delivery_ratio"] >= 1.0
                    and f["right_state_ratio"] >= 1.0 and f["latency_ms_p99"] <= cfg.ceiling_p99_ms]
            base = max((f["publish_rate"] for f in good), default=0.0)
            for factor in cfg.overload if base else ():
                rate = base * factor
                count = int(rate * cfg.duration)
                try:
                    pres, records = _publish_phase(server, responder, plan, count, rate, cfg,
                                                   prefix="p")
                except (TimeoutError, ConnectionError) as exc:
                    result.overload.append({"factor": factor, "target_rate": rate,
                                            "error": str(exc)})
                    continue
                fig = _figures(pres, records, held)
                fig.update(factor=factor, target_rate=rate)
                result.overload.append(fig)
                log.info("overload x%.1f at %.0f/s: %s", factor, rate, fig)
            phase_done("overload")

        # 5. clean SUBSCRIBE/s
        cpu3 = server.cpu_seconds()
        best: list[float] = []
        start = cfg.probe_start
        for ladder in range(cfg.repeats):
            rungs = _subscribe_ladder(server, cfg, workdir, ladder, start)
            result.subscribe_ladders.append(
                [{**asdict(r), "rate": r.rate, "clean": r.clean} for r in rungs])
            clean = [r.rate for r in rungs if r.clean]
            best.append(max(clean, default=0.0))
            if best[-1]:
                start = max(cfg.probe_start / 4, best[-1] / cfg.probe_step)
        result.clean_subscribe_per_s = analysis.median(best)
        phase_done("subscribe_ladders")
        result.cpu_seconds = {
            "subscribe": cpu1 - cpu0, "verify": cpu2 - cpu1, "fanout": cpu_fan,
            "total": server.cpu_seconds() - cpu0, "probes": server.cpu_seconds() - cpu3,
        }
    finally:
        if responder is not None:
            responder.stop()
        server.stop()
        phase_done("teardown")
        result.wall_seconds = time.monotonic() - t_start
    return result


def make_server(name: str, cfg: RunConfig, workdir: Path) -> Server:
    from bench.servers import Busylamp

    if name == "kamailio":
        return Kamailio(cpu=0, workdir=workdir, children=cfg.kamailio_children,
                        shm_mb=cfg.kamailio_shm_mb)
    if name == "busylamp":
        return Busylamp(cpu=0, workdir=workdir)
    if name.startswith("busylamp@"):
        from bench.servers import baseline_executable

        return Busylamp(cpu=0, workdir=workdir, executable=baseline_executable(name[9:]))
    raise ValueError(f"unknown server {name!r}")
