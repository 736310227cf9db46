"""Mutation fuzzing of everything that parses outside input: SIP into the sans-IO engine, ESL
frames into the framer and event parser (and the bridge's normalizer), update JSON into the
validator (and what it accepts into the engine).

Seeded and reproducible (tests/fuzz.py): ``BUSYLAMP_FUZZ_CASES`` cases per target (2,000 by
default; raise it for a longer run), ``BUSYLAMP_FUZZ_SEED`` another seed. No exception may escape,
and the engine must still answer afterwards.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest

from busylamp.bridge.normalize import NormalizeConfig, normalize
from busylamp.esl.protocol import FrameParser, parse_event
from busylamp.presence.engine import EngineConfig, PresenceEngine, ResolveName
from busylamp.presence.limits import AMPLIFICATION_FACTOR, Limits
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.sip import parse_message
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import Snapshot, UpdateError, parse_update, parse_updates
from tests import fuzz
from tests.hostile import reply

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SOURCES = [("192.0.2.10", 5060), ("192.0.2.11", 5070), ("198.51.100.1", 5060), ("::1", 5060)]


def _crlf(data: bytes) -> bytes:
    return data if b"\r\n" in data else data.replace(b"\n", b"\r\n")


def sip_corpus() -> list[bytes]:
    samples = [_crlf(p.read_bytes()) for p in sorted((FIXTURES / "sip").glob("*.txt"))]
    samples += [p.read_bytes() for p in sorted((FIXTURES / "sip-torture").rglob("*.dat"))]
    for event in ("dialog", "message-summary", "presence"):
        samples.append((
            "SUBSCRIBE sip:1001@example.com SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-seed;rport\r\n"
            "From: <sip:2000@example.com>;tag=seed\r\nTo: <sip:1001@example.com>\r\n"
            "Call-ID: seed@192.0.2.10\r\nCSeq: 1 SUBSCRIBE\r\n"
            "Contact: <sip:2000@192.0.2.10:5060>\r\nMax-Forwards: 70\r\n"
            f"Event: {event}\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode())
    assert len(samples) > 10
    return samples


def make_engine() -> PresenceEngine:
    config = EngineConfig(
        contacts={"udp": ("192.0.2.1", 5065), "tcp": ("192.0.2.1", 5065)}, min_expires=1,
        limits=Limits(max_subscriptions=500, max_per_source=200, max_per_watcher=100,
                      subscribe_rate=50.0, subscribe_burst=100, max_pending_notifies=300),
        edges=(ipaddress.ip_network("198.51.100.0/24"),), fanout_batch=7,
        notify_any_target=False, amplification_factor=AMPLIFICATION_FACTOR)
    return PresenceEngine(config, PresenceState(REGISTRY, PackageOptions()), REGISTRY)


def _failure(target: str, index: int, data: object, exc: BaseException) -> str:
    return (f"{target} case {index} (BUSYLAMP_FUZZ_SEED={fuzz.seed()}) raised {exc!r} on "
            f"{data!r:.600}")


def engine_still_answers(engine: PresenceEngine, now: float) -> None:
    options = (b"OPTIONS sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.5:5060;"
               b"branch=z9hG4bK-after\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:x@"
               b"192.0.2.1>\r\nCall-ID: after\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
               b"Content-Length: 0\r\n\r\n")
    engine.messages_to_send()
    engine.receive(options, ("203.0.113.5", 5060), "udp", None, now)
    out = engine.messages_to_send()
    assert out and out[0][2].startswith(b"SIP/2.0 200"), out


def test_sip_into_the_engine():
    corpus = sip_corpus()
    engine = make_engine()
    now = 1000.0
    sent: list[bytes] = []
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("sip", index)
        if sent and rng.random() < 0.2:  # answers to our own NOTIFYs, mangled or not
            base = reply(rng.choice(sent), rng.choice([200, 202, 404, 481, 500, 100]))
            data = fuzz.mutate(base, rng) if rng.random() < 0.7 else base
        else:
            data = fuzz.mutate(rng.choice(corpus), rng, corpus)
        source = rng.choice(SOURCES)
        transport = "tcp" if rng.random() < 0.25 else "udp"
        conn_id = rng.randrange(4) if transport == "tcp" else None
        try:
            engine.receive(data, source, transport, conn_id, now)
            for out in engine.messages_to_send():
                if out[2].startswith(b"NOTIFY"):
                    sent = (sent + [out[2]])[-50:]
            if index % 50 == 0:
                now += rng.choice([0.1, 1.0, 40.0])
                engine.handle_timer(now)
                engine.messages_to_send()
                for event in engine.events():
                    if isinstance(event, ResolveName):
                        engine.resolved(event.name, rng.choice([None, "192.0.2.10", "127.0.0.1"]),
                                        now)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(_failure("sip", index, data, exc))
    counters = engine.counters
    # the fuzzer reached past the parser: dialogs were made, refused, notified and answered
    assert counters["subscribe_accepted"] and counters["subscribe_rejected"], counters
    assert counters["notify_sent"] and counters["sip_malformed"], counters
    engine_still_answers(engine, now)


def test_messages_the_engine_sends_parse_back():
    """What fuzzed input made the engine send is itself well-formed SIP."""
    corpus = sip_corpus()
    engine = make_engine()
    for index in range(min(fuzz.cases(), 1000)):
        rng = fuzz.rng_for("sip-out", index)
        engine.receive(fuzz.mutate(rng.choice(corpus), rng, corpus), rng.choice(SOURCES[:3]),
                       "udp", None, 1000.0)
        for _, _, data, _ in engine.messages_to_send():
            if not data.startswith((b"NOTIFY", b"SIP/2.0 2")):
                continue  # an error answer echoes whatever broken header it names
            try:
                parse_message(data)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(_failure("sip-out", index, data, exc))


def esl_corpus() -> list[bytes]:
    samples = []
    for folder in ("esl", "esl_synth"):
        samples += [p.read_bytes() for p in sorted((FIXTURES / folder).glob("*.txt"))]
    assert samples
    return samples


def test_esl_frames_into_the_parser_and_normalizer():
    corpus = esl_corpus()
    config = NormalizeConfig(domain_default="example.com")
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("esl", index)
        data = b"".join(fuzz.mutate(rng.choice(corpus), rng, corpus)
                        for _ in range(rng.randint(1, 3)))
        parser = FrameParser(max_frame=1 << 20)
        try:
            pos = 0
            while pos < len(data):  # arbitrary chunking, as TCP delivers it
                step = rng.randint(1, 4096)
                for frame in parser.feed(data[pos:pos + step]):
                    event = parse_event(frame)
                    if event is not None:
                        normalize(event.name, event.headers, config)
                pos += step
        except Exception as exc:  # noqa: BLE001
            pytest.fail(_failure("esl", index, data, exc))
    # the parser still frames a good event after garbage
    parser = FrameParser()
    frames = parser.feed(b"\xff\x00garbage\n\n" + corpus[0])
    assert any(parse_event(f) is not None for f in frames)


UPDATES = [
    {"Event-Name": "update", "Event-Package": "dialog", "From": "sip:1001@example.com",
     "From-User": "1001", "From-Realm": "example.com", "To": "sip:1002@example.com",
     "Call-ID": "c1", "State": "early", "Direction": "recipient", "Expires": 600},
    {"Event-Name": "update", "Event-Package": "message-summary", "From-User": "1001",
     "From-Realm": "example.com", "Messages-Waiting": "yes", "Messages-New": 2,
     "Messages-Saved": 1},
    {"Event-Name": "update", "Event-Package": "presence", "From-User": "1001",
     "From-Realm": "example.com", "Status": "open", "Note": "Available", "Expires": 600},
    {"Event-Name": "snapshot", "Switch-ID": "sw1", "Updates": []},
]


def test_update_json_into_the_validator_and_the_engine():
    engine = make_engine()
    # watchers for every package, so accepted updates are rendered and fanned out
    for n, _event in enumerate(("dialog", "message-summary", "presence")):
        engine.receive(sip_corpus()[-3 + n].replace(b"seed", f"seed{n}".encode()),
                       SOURCES[0], "udp", None, 1000.0)
    engine.messages_to_send()
    accepted = 0
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("json", index)
        obj = fuzz.mutate_json(copy.deepcopy(rng.choice(UPDATES)), rng)
        try:
            if rng.random() < 0.3:  # through the text path, mangled at the byte level
                text = json.dumps(obj, default=str).encode("utf-8", "surrogatepass")
                items = parse_updates(fuzz.mutate(text, rng))
            else:
                items = [parse_update(obj)]
        except UpdateError:
            continue
        except Exception as exc:  # noqa: BLE001
            pytest.fail(_failure("json", index, obj, exc))
        try:
            accepted += engine.apply(items, 1000.0 + index)
            engine.handle_timer(1000.0 + index)
            engine.messages_to_send()
        except Exception as exc:  # noqa: BLE001
            pytest.fail(_failure("json-apply", index, obj, exc))
        assert all(isinstance(item, Snapshot) or item.presentity for item in items)
    assert accepted > 0  # the fuzzer reached the engine, not only the validator
    engine_still_answers(engine, 5000.0)
