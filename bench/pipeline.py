"""Throughput of the bridge-side stages, so no stage of the path is an unknown.

* ESL: CHANNEL_CALLSTATE frames through ``esl.protocol`` (framing + event parsing), then
  ``bridge.normalize.normalize``, then ``presence.updates.parse_update`` and
  ``PresenceEngine.apply`` (no watchers: the cost of handing updates to the engine, not fan-out).
* NSQ: update dicts consumed by ``bridge.nsq.NsqConsumer`` from a real nsqd: the one given with
  ``--nsqd``, else one started from PATH or from the test kit (``TESTKIT_NSQ``, ``../shared/nsq``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
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


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nsq_throughput(updates: int = 100_000, nsqd: str | None = None) -> dict[str, Any]:
    """Updates/s consumed (JSON decoded + validated with parse_update) through NsqConsumer."""
    import gevent
    from busylamp.bridge.nsq import NsqConsumer, NsqLoop, NsqPublisher
    from busylamp.presence.updates import parse_update

    from bench.workload import dialog_update

    proc = None
    broker = "nsqd"
    if nsqd is None:
        from tests.kits import find_nsq

        kit = find_nsq()
        binary = shutil.which("nsqd") or (str(kit.nsqd) if kit is not None else None)
        if binary is None:
            raise SystemExit("no nsqd: give --nsqd HOST:PORT, put nsqd on PATH or set TESTKIT_NSQ")
        tcp, http = _free_tcp_port(), _free_tcp_port()
        data = tempfile.mkdtemp(prefix="bench-nsqd-")
        proc = subprocess.Popen([binary, f"--tcp-address=127.0.0.1:{tcp}",
                                 f"--http-address=127.0.0.1:{http}", f"--data-path={data}",
                                 f"--mem-queue-size={updates + 1}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nsqd = f"127.0.0.1:{tcp}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    loop = NsqLoop()
    topic = f"bench_{os.getpid()}_{int(time.time())}"
    try:
        publisher = NsqPublisher(loop, [nsqd], topic, max_buffer=updates + 1)
        publisher.start()
        for i in range(updates):
            publisher.publish(dialog_update(i % 1000, "confirmed", f"n{i}"))
        deadline = time.monotonic() + 120
        while publisher.published < updates and time.monotonic() < deadline:
            gevent.sleep(0.05)
        applied = 0

        def on_message(message: dict) -> None:
            nonlocal applied
            parse_update(message)
            applied += 1

        consumer = NsqConsumer(loop, topic, "bench", on_message, nsqd_tcp=[nsqd],
                               max_in_flight=2500)
        t0 = time.perf_counter()
        consumer.start()
        while applied < updates and time.monotonic() < deadline:
            gevent.sleep(0.01)
        elapsed = time.perf_counter() - t0
        consumer.close()
        publisher.close()
        return {"broker": broker, "published": publisher.published, "consumed": applied,
                "seconds": elapsed, "updates_per_s": applied / elapsed if elapsed else 0.0}
    finally:
        loop.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
