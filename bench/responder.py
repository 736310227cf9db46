"""NOTIFY responder: the phones' Contact after the subscribe phase.

Answers every NOTIFY with 200 OK (Via/From/To/Call-ID/CSeq copied) and records
``(recv_time, call_id, presentity_user, state, version, local_tag)``. It runs in its own process
(:class:`Responder`), drains the socket in batches and is driven over a pipe: ``dump`` returns
and clears the records, ``stop`` ends it. :func:`measure_ceiling` blasts NOTIFYs at it to show
it is not the bottleneck.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import select
import socket
import time
from multiprocessing.connection import Connection

RCVBUF = 64 * 1024 * 1024
_KEEP = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}
_STATE = re.compile(rb"<state[^>]*>\s*([A-Za-z-]+)\s*</state>")
_VERSION = re.compile(rb'<dialog-info[^>]*?\sversion="(\d+)"')
_TAG = re.compile(rb'local-tag="([^"]*)"')
_FROM_USER = re.compile(rb"sips?:([^@;>]+)@")

Record = tuple[float, bytes, bytes, bytes, int, bytes]


def answer_notify(data: bytes, now: float) -> tuple[bytes | None, Record | None]:
    """Build the 200 OK for a NOTIFY and the record of what it carried.

    Returns (None, None) for anything that is not a NOTIFY request.
    """
    if not data.startswith(b"NOTIFY "):
        return None, None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = [b"SIP/2.0 200 OK"]
    call_id = from_user = b""
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon].strip().lower()
        if name in _KEEP:
            kept.append(line)
            if name in (b"call-id", b"i"):
                call_id = line[colon + 1 :].strip()
            elif name in (b"from", b"f"):
                m = _FROM_USER.search(line, colon)
                if m:
                    from_user = m.group(1)
    kept.append(b"Content-Length: 0\r\n\r\n")
    m = _STATE.search(body)
    state = m.group(1) if m else b""
    m = _VERSION.search(body)
    version = int(m.group(1)) if m else -1
    m = _TAG.search(body)
    tag = m.group(1) if m else b""
    return b"\r\n".join(kept), (now, call_id, from_user, state, version, tag)


def raise_rcvbuf(sock: socket.socket, size: int = RCVBUF) -> int:
    """Raise SO_RCVBUF (forced past rmem_max when root); returns the size obtained."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def serve(sock: socket.socket, control: Connection, record: bool = True) -> None:
    """Answer NOTIFYs on ``sock`` until ``stop`` arrives on ``control``."""
    sock.setblocking(False)
    records: list[Record] = []
    clock = time.monotonic
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    answered = send_errors = 0
    while True:
        ready, _, _ = select.select([sock, control], [], [], 1.0)
        if sock in ready:
            for _ in range(20000):
                try:
                    data, addr = recvfrom(65535)
                except BlockingIOError:
                    break
                reply, rec = answer_notify(data, clock())
                if reply is None:
                    continue
                try:
                    sendto(reply, addr)
                    answered += 1
                except OSError:
                    send_errors += 1
                if record:
                    records.append(rec)
        if control in ready:
            cmd = control.recv()
            if cmd == "dump":
                control.send((answered, records))
                records = []
            elif cmd == "stop":
                control.send((answered, records))
                return


def _run(port: int, control: Connection, cpu: int | None, record: bool) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raise_rcvbuf(sock)
    sock.bind(("127.0.0.1", port))
    control.send(sock.getsockname()[1])
    serve(sock, control, record)


class Responder:
    """The responder process, bound to 127.0.0.1:``port`` (0 = ephemeral)."""

    def __init__(self, port: int = 0, cpu: int | None = None, record: bool = True) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_run, args=(port, child, cpu, record), daemon=True)
        self._proc.start()
        if not self._conn.poll(10):
            raise RuntimeError("responder did not start")
        self.port: int = self._conn.recv()

    def dump(self) -> tuple[int, list[Record]]:
        """Return (answered so far, records since the last dump)."""
        self._conn.send("dump")
        return self._conn.recv()

    def stop(self) -> tuple[int, list[Record]]:
        self._conn.send("stop")
        result = self._conn.recv()
        self._proc.join(10)
        return result


def _blast(port: int, count: int, cpu: int | None, window: int, out: Connection) -> None:
    """Closed loop: keep ``window`` NOTIFYs unanswered; report (answered, seconds)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    raise_rcvbuf(sock)
    sock.settimeout(2.0)
    body = (
        b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
        b'version="7" state="full" entity="sip:ext1@bench.local"><dialog id="c" call-id="c" '
        b'local-tag="p42" direction="initiator"><state>confirmed</state></dialog></dialog-info>'
    )
    template = (
        b"NOTIFY sip:phone1@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK%%d\r\n"
        b"From: <sip:ext1@bench.local>;tag=a\r\nTo: <sip:phone1@bench.local>;tag=b\r\n"
        b"Call-ID: %%d@bench\r\nCSeq: 1 NOTIFY\r\nEvent: dialog\r\n"
        b"Subscription-State: active;expires=3600\r\nContent-Type: application/dialog-info+xml\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )
    dest = ("127.0.0.1", port)
    sent = answered = 0
    t0 = time.perf_counter()
    while sent < min(window, count):
        sock.sendto(template % (sent, sent), dest)
        sent += 1
    while answered < sent:
        try:
            sock.recv(65535)
        except TimeoutError:
            break  # a lost datagram: stop here, the rate so far stands
        answered += 1
        if sent < count:
            sock.sendto(template % (sent, sent), dest)
            sent += 1
    out.send((answered, time.perf_counter() - t0))


def measure_ceiling(count: int = 200_000, responder_cpu: int | None = 1,
                    blaster_cpu: int | None = 0, window: int = 500) -> dict[str, float]:
    """NOTIFYs/s the responder answers and records, fed by a closed-loop sender on another core.

    The sender keeps ``window`` NOTIFYs unanswered, so nothing is dropped and the figure is the
    slower of the two loops (both are Python; the sender does less work per message).
    """
    responder = Responder(cpu=responder_cpu)
    ctx = mp.get_context("fork")
    mine, theirs = ctx.Pipe()
    blaster = ctx.Process(target=_blast, args=(responder.port, count, blaster_cpu, window, theirs),
                          daemon=True)
    blaster.start()
    answered, seconds = mine.recv() if mine.poll(300) else (0, 0.0)
    blaster.join(10)
    responder.stop()
    return {"sent": float(count), "answered": float(answered),
            "notify_per_s": answered / seconds if seconds else 0.0}
