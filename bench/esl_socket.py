"""Events/s through ``esl.connection.EslClient`` over loopback TCP (socket, session, callback).

A minimal server in the same process answers auth, ``event plain`` and ``api``, then writes
``events`` prebuilt CHANNEL_CALLSTATE frames in one go; the clock runs from that write until the
client's ``on_event`` has seen them all.  Wall time and this process's CPU time are both given:
on a shared machine the CPU rate is the steadier number.
"""

from __future__ import annotations

import time
from typing import Any


def esl_client_throughput(events: int = 200_000, timeout: float = 300.0) -> dict[str, Any]:
    import gevent
    import gevent.event
    import gevent.server

    from bench.pipeline import _frames
    from busylamp.esl.connection import EslClient, EslTarget

    data = _frames(events)
    go = gevent.event.Event()
    done = gevent.event.Event()
    seen = [0]

    def serve(sock: Any, _address: Any) -> None:
        sock.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n\n" in buf:
                command, buf = buf.split(b"\n\n", 1)
                if command.startswith(b"auth "):
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
                elif command.startswith(b"event "):
                    sock.sendall(b"Content-Type: command/reply\n"
                                 b"Reply-Text: +OK event listener enabled plain\n\n")
                elif command.startswith(b"api "):
                    sock.sendall(b"Content-Type: api/response\nContent-Length: 5\n\nbench")
                    go.wait()
                    sock.sendall(data)
                else:
                    sock.sendall(b"Content-Type: command/reply\nReply-Text: +OK bye\n\n")
                    return

    def on_event(_event: Any) -> None:
        seen[0] += 1
        if seen[0] == events:
            done.set()

    server = gevent.server.StreamServer(("127.0.0.1", 0), serve)
    server.start()
    client = EslClient(EslTarget("127.0.0.1", server.server_port, "ClueCon"),
                       ["CHANNEL_CALLSTATE"], on_event)
    client.start()
    try:
        deadline = time.monotonic() + 10.0
        while client.state != "connected":
            if time.monotonic() > deadline:
                raise RuntimeError("the bench client did not connect")
            gevent.sleep(0.01)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        go.set()
        done.wait(timeout)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        client.stop()
        server.stop()
    return {"events": seen[0], "bytes": len(data), "seconds": wall,
            "events_per_s": seen[0] / wall, "events_per_cpu_s": seen[0] / max(cpu, 1e-9)}
