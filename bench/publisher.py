"""HTTP publisher: one JSON update per POST, paced, over keep-alive HTTP/1.1 connections.

Each connection carries at most one request in flight; a publish is sent on the first idle
connection once it is due (``start + i / rate``). If the server falls behind, publishes go out
as fast as connections free up and the achieved rate shows it.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.workload import PublishPlan, dialog_update

Sent = tuple[int, int, str, float]  # seq, presentity, state, send time (monotonic)


@dataclass(slots=True)
class PublishResult:
    sent: list[Sent] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def achieved_rate(self) -> float:
        span = self.finished - self.started
        return len(self.sent) / span if span > 0 else 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)


class _Conn:
    __slots__ = ("sock", "buf", "busy")

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""
        self.busy = False

    def take_response(self) -> int | None:
        """Pop one complete response from the buffer; return its status or None."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        total = end + 4 + length
        if len(self.buf) < total:
            return None
        self.buf = self.buf[total:]
        return int(head.split(" ", 2)[1])


def _request(host: str, path: str, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), len(body), body)
    )


def publish(address: tuple[str, int], plan: PublishPlan, count: int, rate: float,
            connections: int = 4, path: str = "/publish",
            tag_prefix: str = "p", clock: Callable[[], float] = time.monotonic) -> PublishResult:
    """Send ``count`` updates from ``plan`` at ``rate`` per second; wait for every answer."""
    host = f"{address[0]}:{address[1]}"
    conns = [_Conn(address) for _ in range(max(1, connections))]
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    result = PublishResult()
    idle = list(conns)
    in_flight = 0
    done = 0
    start = clock()
    result.started = start
    deadline_idle = None
    try:
        while done < count or in_flight:
            now = clock()
            while idle and done < count and start + done / rate <= now:
                c = idle.pop()
                seq, pres, state, call = plan.next()
                body = json.dumps(dialog_update(pres, state, f"{tag_prefix}{seq}", call),
                                  separators=(",", ":")).encode()
                t_send = clock()
                try:
                    c.sock.sendall(_request(host, path, body))
                except (BlockingIOError, OSError):
                    result.errors += 1
                    idle.append(c)
                    done += 1
                    continue
                result.sent.append((seq, pres, state, t_send))
                c.busy = True
                in_flight += 1
                done += 1
            timeout = max(0.0, start + done / rate - clock()) if done < count and idle else 1.0
            events = sel.select(timeout)
            if not events and in_flight and not idle:
                deadline_idle = deadline_idle or clock() + 10
                if clock() > deadline_idle:
                    raise TimeoutError("server stopped answering HTTP publishes")
                continue
            deadline_idle = None
            for key, _ in events:
                c = key.data
                try:
                    chunk = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise ConnectionError("server closed a keep-alive connection")
                c.buf += chunk
                while (status := c.take_response()) is not None:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    in_flight -= 1
                    c.busy = False
                    idle.append(c)
    finally:
        result.finished = clock()
        for c in conns:
            sel.unregister(c.sock)
            c.sock.close()
        sel.close()
    return result
