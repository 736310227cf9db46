"""Throughput of the bridge-side stages, so no stage of the path is an unknown.

* ESL: CHANNEL_CALLSTATE frames through ``esl.protocol`` (framing + event parsing), then
  ``bridge.normalize.normalize``, then ``presence.updates.parse_update`` and
  ``PresenceEngine.apply`` (no watchers: the cost of handing updates to the engine, not fan-out).
* NSQ: update dicts consumed by ``bridge.nsq.NsqConsumer`` from a real nsqd: see
  ``bench/nsq_stage.py`` (also a bare pynsq Reader, the library's ceiling).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.workload import DOMAIN

CALL_STATES = ("RINGING", "ACTIVE", "HANGUP")


def _frames(events: int) -> bytes:
    """``events`` CHANNEL_CALLSTATE frames: ringing -> active -> hangup for events/3 calls."""
    from busylamp.esl.protocol import encode_event

    core = str(uuid.uuid4())
    out = []
    for i in range(events):
        call, state = divmod(i, len(CALL_STATES))
        headers = {
            "Event-Name": "CHANNEL_CALLSTATE",
            "Core-UUID": core,
            "Event-Date-Timestamp": str(1_700_000_000_000_000 + i),
            "Event-Sequence": str(i + 1),
            "Channel-State": "CS_EXECUTE",
            "Channel-Call-State": CALL_STATES[state],
            "Original-Channel-Call-State": CALL_STATES[state - 1] if state else "DOWN",
            "Unique-ID": f"bench-{call}",
            "Call-Direction": "outbound",
            "Presence-Call-Direction": "outbound",
            "Channel-Presence-ID": f"ext{call % 1000}@{DOMAIN}",
            "Answer-State": ("ringing", "answered", "hangup")[state],
            "Caller-Caller-ID-Number": "5551000",
            "Caller-Caller-ID-Name": "Bench Caller",
            "Caller-Destination-Number": f"ext{call % 1000}",
            "Caller-Username": f"ext{call % 1000}",
            "Caller-Network-Addr": "127.0.0.1",
        }
        out.append(encode_event(headers))
    return b"".join(out)


def esl_throughput(events: int = 100_000, chunk: int = 16384) -> dict[str, Any]:
    """Events/s for: parse only; parse + normalize; parse + normalize + engine hand-off."""
    from busylamp.bridge.normalize import NormalizeConfig, normalize
    from busylamp.esl.protocol import FrameParser, parse_event
    from busylamp.presence.engine import EngineConfig, PresenceEngine
    from busylamp.presence.packages import REGISTRY, PackageOptions
    from busylamp.presence.state import PresenceState
    from busylamp.presence.updates import parse_update

    data = _frames(events)
    config = NormalizeConfig(domain_default=DOMAIN)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]

    def run(stage: int) -> tuple[float, int, int]:
        parser = FrameParser()
        engine = PresenceEngine(EngineConfig(contacts={"udp": ("127.0.0.1", 5060)}),
                                PresenceState(REGISTRY, PackageOptions()), REGISTRY)
        parsed = updates = 0
        seq = 0
        t0 = time.perf_counter()
        for piece in chunks:
            for frame in parser.feed(piece):
                event = parse_event(frame)
                if event is None:
                    continue
                parsed += 1
                if stage < 1:
                    continue
                result = normalize(event.name, event.headers, config)
                updates += len(result.updates)
                if stage < 2 or not result.updates:
                    continue
                items = []
                for u in result.updates:
                    seq += 1
                    items.append(parse_update({**u, "Bridge-ID": "bench", "Bridge-Epoch": 1,
                                               "Sequence": seq}))
                engine.apply(items, time.monotonic())
        return time.perf_counter() - t0, parsed, updates

    out: dict[str, Any] = {"events": events, "bytes": len(data)}
    for stage, name in enumerate(("parse", "parse_normalize", "parse_normalize_engine")):
        elapsed, parsed, updates = run(stage)
        out[name] = {"events_per_s": parsed / elapsed, "updates": updates,
                     "seconds": elapsed, "parsed": parsed}
    return out


def nsq_throughput(updates: int = 100_000, nsqd: str | None = None) -> dict[str, Any]:
    """Updates/s consumed (JSON decoded + validated with parse_update) through NsqConsumer
    (``bench.nsq_stage``, which also measures a bare pynsq Reader)."""
    from bench.nsq_stage import nsq_stage

    out = nsq_stage(updates, nsqd, ("busylamp",))
    return {"broker": out["broker"], **out["busylamp"]}
