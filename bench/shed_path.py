"""What one SUBSCRIBE refused while overloaded costs the sans-IO engine, without sockets.

An engine as a node has it (bench/subscribe_path.py), ``overloaded`` set as the node sets it
when its UDP receive queue is full: N distinct initial SUBSCRIBEs as sipp sends them
(bench/scenarios/subscribe_dialog.xml: own Call-ID, branch and From tag each, ``;rport``, phones
on their own ports watching a pool of 500 presentities), each answered 503 and the answer
drained. ``--accept`` runs the same SUBSCRIBEs with the engine not overloaded (each gets its 200
and initial NOTIFY): the path the overload check must not slow.

Count instructions with callgrind; the difference of two runs (N=3000 minus N=1000, divided by
2000) is the cost of one SUBSCRIBE, the set-up and warm-up dropping out (a fixed hash seed makes
the counts repeat exactly)::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.shed_path --subscribes 3000    # and --subscribes 1000

The difference includes the harness's own share, making the N datagrams (``--generate-only``
measures it) and the feeding loop. ``--full-parse`` takes the refusal through parse_message as
before the raw-bytes refusal (presence/sip/refuse.py); ``--tree DIR`` measures another checkout
(``git archive REF | tar -x -C DIR``, bench/tree.py; copy the built ``*.so`` in too) with this
harness. ``--timed`` prints SUBSCRIBEs per CPU second instead (noisy on a shared host).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE / "bench":
    del sys.path[0]  # bench/bisect.py must not stand for the standard library's bisect

DOMAIN = "example.com"
HOST = "10.0.0.7"
PRESENTITIES = 500  # the BLF keys the phones watch: their To and Request-URI repeat
PID = 23401  # sipp's [pid], in its branches, From tags and Call-IDs


def sipp_subscribe(i: int) -> bytes:
    """Call ``i`` of a sipp running bench/scenarios/subscribe_dialog.xml from its own port."""
    port = 20000 + (i // 4) % 40000
    presentity = f"p{(i * 7919) % PRESENTITIES}"
    return (
        f"SUBSCRIBE sip:{presentity}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-{PID}-{i}-0;rport\r\n"
        f"From: <sip:w{i // 4}@{DOMAIN}>;tag={PID}-{i}\r\n"
        f"To: <sip:{presentity}@{DOMAIN}>\r\n"
        f"Call-ID: {i}-{PID}@{HOST}\r\nCSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:w{i // 4}@{HOST}:{port}>\r\nMax-Forwards: 70\r\n"
        f"Event: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 3600\r\n"
        f"User-Agent: busylamp-bench\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def source_of(data: bytes) -> tuple[str, int]:
    return HOST, int(data.split(f"{HOST}:".encode(), 1)[1][:5])


def new_engine(overloaded: bool):
    """An engine as a node has it (lamp history on, one UDP contact), overloaded or not."""
    from busylamp.presence.engine import EngineConfig, PresenceEngine
    from busylamp.presence.history import History
    from busylamp.presence.packages import REGISTRY
    from busylamp.presence.packages.base import PackageOptions
    from busylamp.presence.state import PresenceState

    state = PresenceState(REGISTRY, PackageOptions())
    engine = PresenceEngine(EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}), state, REGISTRY)
    history = History()
    history.attach(state, engine.counters)
    engine.observer = history
    engine.overloaded = overloaded
    return engine


def feed(engine, datagrams: list[bytes], now: float = 1000.0) -> int:
    """Each datagram in, its answers drained; the number of answers."""
    drain = getattr(engine, "messages_to_send", None) or engine.datagrams_to_send
    answers = 0
    for data in datagrams:
        engine.receive(data, source_of(data), "udp", None, now)
        answers += len(drain())
    return answers


def run(subscribes: int, accept: bool, timed: bool, generate_only: bool = False
        ) -> dict[str, object]:
    warm = new_engine(not accept)
    # imports, first-call caches and the memo of the presentities' URIs out of the count
    feed(warm, [sipp_subscribe(i) for i in range(10**6, 10**6 + PRESENTITIES)])
    engine = new_engine(not accept)
    datagrams = [sipp_subscribe(i) for i in range(subscribes)]
    if generate_only:  # the harness's own share of the difference: making the datagrams
        return {"subscribes": subscribes, "answers": 0}
    cpu = time.process_time()
    answers = feed(engine, datagrams)
    cpu = time.process_time() - cpu
    counters = engine.counters
    expected = (counters["subscribe_accepted"] if accept else counters["limit_overload"])
    if expected != subscribes:
        raise SystemExit(f"{expected} of {subscribes} SUBSCRIBEs went the measured way")
    return {"subscribes": subscribes, "answers": answers,
            "subscribes_per_cpu_s": round(subscribes / cpu) if timed and cpu else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shed_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribes", type=int, default=3000)
    parser.add_argument("--accept", action="store_true",
                        help="not overloaded: every SUBSCRIBE accepted (200 + NOTIFY)")
    parser.add_argument("--full-parse", action="store_true",
                        help="refuse through parse_message, without the raw-bytes refusal")
    parser.add_argument("--generate-only", action="store_true",
                        help="make the datagrams, feed none (the harness's share, to subtract)")
    parser.add_argument("--tree", help="source tree to measure (default: this checkout)")
    parser.add_argument("--timed", action="store_true")
    args = parser.parse_args(argv)
    from bench.tree import print_result, tool_setup

    tool_setup(args.tree)
    if args.full_parse:
        from busylamp.presence.engine import dispatch

        if hasattr(dispatch, "plain_new_subscribe"):
            dispatch.plain_new_subscribe = lambda data: None
    print_result(run(args.subscribes, args.accept, args.timed, args.generate_only))


if __name__ == "__main__":
    main()
