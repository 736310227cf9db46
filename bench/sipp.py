"""Run sipp as the phones (SUBSCRIBE scenario) and read its final statistics."""

from __future__ import annotations

import csv
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SCENARIO = SCENARIOS / "subscribe_dialog.xml"
LINGER_SCENARIO = SCENARIOS / "subscribe_dialog_linger.xml"  # +4 s per call after the NOTIFY
LINGER_SECONDS = 4.0
SOCKET_BUFFER = 4 * 1024 * 1024


@dataclass(slots=True)
class SippResult:
    """Cumulative counters from sipp's -trace_stat file (last line)."""

    target_rate: float
    calls: int
    successful: int
    failed: int
    retransmissions: int
    out_of_call: int
    dead_call: int
    elapsed: float
    returncode: int

    @property
    def clean(self) -> bool:
        """Every subscription completed, with no failure and no retransmission either way."""
        return (self.successful == self.calls and self.failed == 0
                and self.retransmissions == 0 and self.dead_call == 0)

    @property
    def rate(self) -> float:
        """Completed subscriptions per second over sipp's whole run."""
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0


def _epoch(field: str) -> float:
    # "2026-11-26\t09:52:42.840166\t1795686762.840166"
    return float(field.split("\t")[-1])


def parse_stat_file(path: Path, target_rate: float, calls: int, returncode: int) -> SippResult:
    with open(path, newline="", encoding="latin-1") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        raise RuntimeError(f"sipp wrote no statistics to {path}")
    names, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(names)}

    def num(name: str) -> int:
        return int(last[col[name]] or 0)

    return SippResult(
        target_rate=target_rate,
        calls=calls,
        successful=num("SuccessfulCall(C)"),
        failed=num("FailedCall(C)"),
        retransmissions=num("Retransmissions(C)"),
        out_of_call=num("OutOfCallMsgs(C)"),
        dead_call=num("DeadCallMsgs(C)"),
        elapsed=_epoch(last[col["CurrentTime"]]) - _epoch(last[col["StartTime"]]),
        returncode=returncode,
    )


def run_subscribe(server: tuple[str, int], csv_path: Path, calls: int, rate: float,
                  workdir: Path, local_port: int = 0, cpu: int | None = 1,
                  name: str = "subscribe", timeout: float = 600,
                  recv_timeout_ms: int = 10000, linger: bool = False) -> SippResult:
    """Subscribe ``calls`` rows of ``csv_path`` at ``rate``/s; block until sipp exits.

    ``linger`` keeps every call 4 s after the initial NOTIFY to answer its retransmissions;
    the reported elapsed time then excludes those 4 s.
    """
    stat = workdir / f"{name}_stat.csv"
    err = workdir / f"{name}_errors.log"
    for path in (stat, err):
        if path.exists():
            path.unlink()
    cmd = [
        "sipp", f"{server[0]}:{server[1]}", "-sf", str(LINGER_SCENARIO if linger else SCENARIO),
        "-inf", str(csv_path), "-i", "127.0.0.1", "-m", str(calls), "-r", f"{rate:g}",
        "-rp", "1000", "-l", str(max(1000, min(calls, int(rate * (LINGER_SECONDS + 6))))),
        "-nd", "-recv_timeout", str(recv_timeout_ms),
        "-max_recv_loops", "10000", "-max_sched_loops", "10000",
        "-buff_size", str(SOCKET_BUFFER), "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_err", "-error_file", str(err), "-nostdin",
        # answer NOTIFYs of calls sipp no longer knows with 200 (as a phone would) instead of
        # letting the server time the subscription out
        "-aa",
    ]
    if local_port:
        cmd += ["-p", str(local_port)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with open(workdir / f"{name}_screen.txt", "wb") as screen:
        proc = subprocess.run(cmd, stdout=screen, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout, cwd=workdir,
                              env={**os.environ, "TERM": "dumb"}, check=False)
    result = parse_stat_file(stat, rate, calls, proc.returncode)
    if linger:
        result.elapsed = max(0.0, result.elapsed - LINGER_SECONDS)
    return result
