"""The embedded default's ESL -> engine path whole, in one process: what `busylamp run` does with
each event between its ESL socket and the engine, for instruction counts on a shared host.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.embedded_path --events 4000          # and --events 1000

One event = (instructions of the 4,000 run - those of the 1,000 run) / 3,000: the bench stream's
CHANNEL_CALLSTATE frames (bench/pipeline.py) framed and parsed (`esl.protocol`), handed to
`BridgeService.handle_event` (normalize, origin fields, call table, Sequence, Bridge-Timestamp),
published on the `MemoryBus`, taken by `PresenceNode.on_bus_message` (parse_update, the node's
publish: queued NOTIFY answers read first, engine.apply, flush) of a running node with UDP SIP
and no watchers. Where `python -m bench.pipeline` times the stages alone, this adds the
bridge's and the node's own work per event. The ESL socket and session are left out
(`python -m bench esl-socket` times those). ``--timed`` prints events per CPU second instead
(noisy on a shared host); ``--tree DIR`` measures another checkout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == HERE / "bench":
    del sys.path[0]  # bench/bisect.py must not stand for the standard library's bisect


GENERATED = 4000


def _frame_starts(data: bytes):
    """Offsets of the frames of the bench stream (each starts with its Content-Length line)."""
    at = 0
    while at < len(data):
        yield at
        head_end = data.index(b"\n\n", at)
        length = int(data[at + 16:data.index(b"\n", at)])
        at = head_end + 2 + length


def run(events: int, timed: bool) -> dict:
    import gevent

    from bench.pipeline import DOMAIN, _frames
    from bench.publish_path import loopback_node
    from busylamp.bridge.bus import MemoryBus
    from busylamp.bridge.normalize import NormalizeConfig
    from busylamp.bridge.service import BridgeService
    from busylamp.esl.protocol import FrameParser, parse_event

    node, _ = loopback_node()
    bus = MemoryBus()
    bus.subscribe(node.on_bus_message)
    bridge = BridgeService([], bus, NormalizeConfig(domain_default=DOMAIN), "bench")
    # the same stream is made whatever ``events`` is (its making then drops out of the
    # difference of two runs), and cut after the first ``events`` frames
    data = _frames(max(events, GENERATED))
    starts = [*_frame_starts(data), len(data)]
    data = data[:starts[events]]
    chunks = [data[i:i + 16384] for i in range(0, len(data), 16384)]
    del data
    parser = FrameParser()
    cpu = time.process_time()
    handled = 0
    for chunk in chunks:
        for frame in parser.feed(chunk):
            event = parse_event(frame)
            if event is not None:
                bridge.handle_event(event, None)
                handled += 1
    cpu = time.process_time() - cpu
    applied = node.engine.counters["updates_applied"]
    node.stop()
    gevent.sleep(0)
    if handled != events or applied != bridge.counters["published"] or bus.handler_errors:
        raise SystemExit(f"lost: {handled} events handled, {bridge.counters['published']} "
                         f"published, {applied} applied, {bus.handler_errors} handler errors")
    return {"events": handled, "updates_applied": applied,
            "events_per_cpu_s": round(handled / cpu) if timed and cpu else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embedded_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--tree", help="source tree to measure (default: this checkout)")
    parser.add_argument("--timed", action="store_true")
    args = parser.parse_args(argv)
    from bench.tree import print_result, tool_setup

    tool_setup(args.tree)
    print_result(run(args.events, args.timed))


if __name__ == "__main__":
    main()
