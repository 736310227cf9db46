"""NOTIFY responder: the phones' Contact after the subscribe phase (C tool ``bench/c/responder.c``).

Answers every NOTIFY with 200 OK (Via/From/To/Call-ID/CSeq copied), batching receive and send
with recvmmsg/sendmmsg, and records ``(recv_time, call_id, presentity_user, state, version,
local_tag)`` to a file this wrapper reads incrementally: ``dump`` returns and clears the records,
``stop`` ends it. :func:`measure_ceiling` blasts NOTIFYs at it (a closed-loop C sender) to show
it is not the bottleneck.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from bench.cbuild import tool

Record = tuple[float, bytes, bytes, bytes, int, bytes]


def _pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def parse_records(data: bytes) -> list[Record]:
    """Records from complete responder lines (``t\\tcall_id\\tuser\\tstate\\tversion\\ttag``)."""
    out: list[Record] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        t, call_id, user, state, version, tag = line.split(b"\t")
        out.append((float(t), call_id, user, state, int(version), tag))
    return out


class Responder:
    """The C responder process, bound to 127.0.0.1:``port`` (0 = ephemeral)."""

    def __init__(self, port: int = 0, cpu: int | None = None, record: bool = True) -> None:
        self._dir = tempfile.mkdtemp(prefix="bench-responder-")
        self._path = Path(self._dir) / "records.tsv"
        self._proc = subprocess.Popen(_pinned([str(tool("responder")), str(port),
                                               str(self._path)], cpu),
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != b"port":
            self._proc.kill()
            raise RuntimeError("responder did not start")
        self.port: int = int(line[1])
        self.record = record
        self._offset = 0
        self._answered = 0
        self._file = open(self._path, "rb")  # noqa: SIM115 - read as it grows, closed by stop()

    def _read(self) -> list[Record]:
        self._file.seek(self._offset)
        data = self._file.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        records = parse_records(data[:end])
        self._answered += len(records)
        return records if self.record else []

    def cpu_seconds(self) -> float:
        """user + system CPU seconds the responder has used."""
        from bench.servers import cpu_seconds

        return cpu_seconds([self._proc.pid])

    def dump(self) -> tuple[int, list[Record]]:
        """Return (answered so far, records since the last dump)."""
        records = self._read()
        return self._answered, records

    def stop(self) -> tuple[int, list[Record]]:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(10)
        records = self._read()
        self._file.close()
        os.unlink(self._path)
        os.rmdir(self._dir)
        return self._answered, records


def measure_ceiling(count: int = 1_000_000, responder_cpu: int | None = 1,
                    blaster_cpu: int | None = 0, window: int = 20000) -> dict[str, float]:
    """NOTIFYs/s the responder answers and records, fed by a closed-loop C sender on another core.

    The sender keeps ``window`` NOTIFYs unanswered (the 64 MB receive buffer holds them, so
    nothing is dropped). ``notify_per_s`` is the wall-clock rate (the slower of the two loops,
    and on a shared machine also the wait for a core); ``notify_per_cpu_s`` is NOTIFYs answered
    and recorded per CPU second of the responder: its ceiling on a core of its own.
    """
    responder = Responder(cpu=responder_cpu, record=False)
    try:
        cpu0 = responder.cpu_seconds()
        out = subprocess.run(_pinned([str(tool("responder")), "--blast", str(responder.port),
                                      str(count), str(window)], blaster_cpu),
                             capture_output=True, check=True, timeout=300).stdout.split()
        cpu = responder.cpu_seconds() - cpu0
    finally:
        responder.stop()
    answered, seconds = int(out[0]), float(out[1])
    return {"sent": float(count), "answered": float(answered), "seconds": seconds,
            "responder_cpu_s": cpu, "notify_per_s": answered / seconds if seconds else 0.0,
            "notify_per_cpu_s": answered / cpu if cpu else 0.0}
