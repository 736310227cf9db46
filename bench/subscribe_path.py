"""What one SUBSCRIBE costs the sans-IO engine, without sockets (``python -m bench.subscribe_path``).

Phones as the harness's sipp phones are: phone ``i // 4`` (its own port) subscribes key ``i % 4``
to a presentity of a pool of N/4. One *round trip* is the SUBSCRIBE, its 200, the initial
NOTIFY and that NOTIFY's 200 fed back; a *retransmission* is the same SUBSCRIBE datagram again
(answered from the server transaction).

Rates are per CPU second of this process (median of ``--repeats``). For figures independent of
the machine's load, count instructions with callgrind: ``--mode`` runs one phase for N items, so
the difference of two runs (N=4000 minus N=1000, divided by 3000) is the cost of one item::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.subscribe_path --mode roundtrip --count 4000
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.engine import ok_for  # a 200 to a NOTIFY, as a phone answers
from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.history import History
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.state import PresenceState

DOMAIN = "example.com"
HOST = "10.0.0.7"


def phone_subscribe(i: int, presentity: str) -> bytes:
    """Key ``i % 4`` of phone ``i // 4``: its own Contact and port, a new dialog."""
    phone = i // 4
    port = 20000 + phone % 40000
    return (
        f"SUBSCRIBE sip:{presentity}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-{i}-1-0\r\n"
        f"From: <sip:w{phone}@{DOMAIN}>;tag={i}SIPpTag01\r\n"
        f"To: <sip:{presentity}@{DOMAIN}>\r\n"
        f"Call-ID: {i}-23401@{HOST}\r\nCSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:w{phone}@{HOST}:{port};transport=udp>\r\nMax-Forwards: 70\r\n"
        f"Event: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 3600\r\n"
        f"User-Agent: sipp\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _source(data: bytes) -> tuple[str, int]:
    return HOST, int(data.split(f"{HOST}:".encode(), 1)[1][:5])


def new_engine() -> PresenceEngine:
    """An engine as a node has it: lamp history on, one UDP contact."""
    state = PresenceState(REGISTRY, PackageOptions())
    engine = PresenceEngine(EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}), state, REGISTRY)
    history = History()
    history.attach(state, engine.counters)
    engine.observer = history
    return engine


def messages(count: int) -> list[bytes]:
    pool = max(1, count // 4)
    return [phone_subscribe(i, f"p{(i * 7919) % pool}") for i in range(count)]


def round_trips(engine: PresenceEngine, datagrams: list[bytes], now: float = 1000.0) -> None:
    """SUBSCRIBE -> 200 + initial NOTIFY -> the NOTIFY's 200, for each datagram."""
    for data in datagrams:
        source = _source(data)
        engine.receive(data, source, "udp", None, now)
        out = engine.messages_to_send()
        engine.receive(ok_for(out[1][2]), source, "udp", None, now)
        engine.messages_to_send()


def retransmissions(engine: PresenceEngine, datagrams: list[bytes], now: float = 1000.5) -> None:
    """Each datagram again, as a phone resends it when the 200 is late."""
    for data in datagrams:
        engine.receive(data, _source(data), "udp", None, now)
        engine.messages_to_send()


def measure(count: int, repeats: int) -> dict[str, float]:
    """Median round trips and retransmissions per CPU second over ``repeats`` fresh engines."""
    trips, resent = [], []
    for _ in range(repeats):
        engine, datagrams = new_engine(), messages(count)
        started = time.process_time()
        round_trips(engine, datagrams)
        middle = time.process_time()
        retransmissions(engine, datagrams)
        trips.append(count / (middle - started))
        resent.append(count / (time.process_time() - middle))
    return {"round_trips_per_cpu_s": statistics.median(trips),
            "retransmissions_per_cpu_s": statistics.median(resent)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.subscribe_path")
    parser.add_argument("--count", type=int, default=20000, help="SUBSCRIBE dialogs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=("rates", "roundtrip", "retransmit"), default="rates",
                        help="rates: timed; roundtrip/retransmit: run that phase once (for "
                             "callgrind), the retransmissions after 4,000 round trips")
    args = parser.parse_args(argv)
    if args.mode == "rates":
        for name, value in measure(args.count, args.repeats).items():
            print(f"{name}: {value:,.0f}")
        return
    warm = new_engine()
    round_trips(warm, messages(200))  # imports and first-call caches out of the count
    engine = new_engine()
    if args.mode == "roundtrip":
        round_trips(engine, messages(args.count))
    else:
        datagrams = messages(4000)
        round_trips(engine, datagrams)
        retransmissions(engine, datagrams[: args.count])


if __name__ == "__main__":
    main()
