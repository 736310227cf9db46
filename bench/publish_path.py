"""The node's publish path end to end, in one process, for instruction counts on a shared host.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.publish_path --publishes 4000          # and --publishes 1000

One publish = (instructions of the 4,000 run - those of the 1,000 run) / 3,000: an HTTP/1.1
request on a keep-alive connection (as `bench/c/publisher.c` sends it, the harness's
dialog updates: each presentity's calls go early, confirmed, terminated in turn) read, checked, parsed
and applied by a running node, its NOTIFYs sent over UDP to the phone's socket, their 200s read
back, the 202 written; the phone's side (reading the NOTIFY, building the 200) is counted too,
the same for any node version. The set-up (a node with ``--presentities`` x ``--keys`` dialog
subscriptions from one phone socket) is the same in both runs and drops out of the difference.

Run with ``--tree REF_DIR`` to measure another checkout (``git archive REF | tar -x -C DIR``)
with this harness. ``--timed`` prints publishes per CPU second instead (noisy on a shared host).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE / "bench":
    del sys.path[0]  # bench/bisect.py must not stand for the standard library's bisect


def _request(body: bytes, port: int) -> bytes:
    return (b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))


def _answer_notifies(phone: socket.socket, ok_for, want: int) -> int:
    """Read NOTIFYs off ``phone`` and answer each with 200 until ``want`` were answered."""
    import gevent.socket

    got = 0
    while got < want:
        gevent.socket.wait_read(phone.fileno())
        while True:
            try:
                data, addr = phone.recvfrom(65536)
            except BlockingIOError:
                break
            if data.startswith(b"NOTIFY "):
                phone.sendto(ok_for(data), addr)
                got += 1
    return got


def loopback_node():
    """A started PresenceNode with UDP SIP on a free loopback port: (node, port)."""
    from busylamp.presence.engine import EngineConfig
    from busylamp.presence.node import PresenceNode

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", port)}, max_expires=3600))
    node.listen("udp", "127.0.0.1", port)
    node.start()
    return node, port


def run(publishes: int, presentities: int, keys: int, timed: bool) -> dict:
    import gevent
    import gevent.socket
    import ujson

    from bench.engine import DOMAIN as ENGINE_DOMAIN
    from bench.engine import _subscribe, ok_for
    from bench.workload import DOMAIN, PublishPlan, dialog_update, presentity_user
    from busylamp.presence.api import serve_api

    node, port = loopback_node()
    api = serve_api("127.0.0.1", 0, node, None)
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.setblocking(False)
    phone_port = phone.getsockname()[1]
    # the phone's SUBSCRIBEs (bench/engine.py's, addressed from this socket)
    for i in range(presentities * keys):
        data = _subscribe(i, presentity_user(i % presentities)).replace(
            b"10.0.0.7:5062", b"127.0.0.1:%d" % phone_port).replace(
            b"@%s" % ENGINE_DOMAIN.encode(), b"@%s" % DOMAIN.encode())
        phone.sendto(data, ("127.0.0.1", port))
        if i % 32 == 31:
            _answer_notifies(phone, ok_for, 32)
    _answer_notifies(phone, ok_for, presentities * keys % 32)
    held = len(node.engine.subscriptions)
    conn = gevent.socket.create_connection(("127.0.0.1", api.server_port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    plan = PublishPlan(list(range(presentities)))  # the harness's: calls cycle per presentity
    bodies = []
    for _ in range(publishes):
        seq, presentity, state, call = plan.next()
        bodies.append(ujson.dumps(dialog_update(presentity, state, f"t{seq}", call)).encode())
    requests = [_request(body, api.server_port) for body in bodies]
    del bodies
    cpu = time.process_time()
    answered = 0
    for data in requests:
        conn.sendall(data)
        answered += _answer_notifies(phone, ok_for, keys)
        reply = b""
        while not reply.endswith(b"}"):
            reply += conn.recv(65536)
        if not reply.startswith(b"HTTP/1.1 202"):
            raise SystemExit(f"publish refused: {reply[:200]!r}")
    cpu = time.process_time() - cpu
    conn.close()
    api.stop(timeout=1)
    node.stop()
    gevent.sleep(0)
    return {"held": held, "publishes": publishes, "notifies_answered": answered,
            "publishes_per_cpu_s": round(publishes / cpu) if timed and cpu else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.publish_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--publishes", type=int, default=4000)
    parser.add_argument("--presentities", type=int, default=500)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--tree", help="source tree to measure (default: this checkout)")
    parser.add_argument("--timed", action="store_true")
    args = parser.parse_args(argv)
    from bench.tree import print_result, tool_setup

    tool_setup(args.tree)
    print_result(run(args.publishes, args.presentities, args.keys, args.timed))


if __name__ == "__main__":
    main()
