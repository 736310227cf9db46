"""In-process throughput of the sans-IO engine, without sockets: how much of a core the engine
itself costs per SUBSCRIBE and per NOTIFY transaction (`python -m bench engine`).

* SUBSCRIBE: parse, 200 OK, initial NOTIFY, for W watchers (table growing as in a bulk load).
* Fan-out: dialog updates for P presentities x K watchers; each NOTIFY's 200 OK is fed back
  (built from the NOTIFY's own headers) so transactions complete as on the wire. Reported:
  NOTIFYs built per second of apply time, responses handled per second, both combined.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates

PHONE = ("10.0.0.7", 5062)
DOMAIN = "example.com"


def _subscribe(i: int, presentity: str) -> bytes:
    watcher = f"w{i}"
    return (
        f"SUBSCRIBE sip:{presentity}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-{i};rport\r\n"
        f"From: <sip:{watcher}@{DOMAIN}>;tag=ft{i}\r\n"
        f"To: <sip:{presentity}@{DOMAIN}>\r\n"
        f"Call-ID: {i:08x}-bench@10.0.0.7\r\nCSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:{watcher}@10.0.0.7:5062>\r\nMax-Forwards: 70\r\nEvent: dialog\r\n"
        f"Accept: application/dialog-info+xml\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ok_for(notify: bytes) -> bytes:
    head = notify.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [line for line in head[1:]
            if line.split(b":", 1)[0] in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")]
    return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"


def _update(presentity: str, state: str, call_id: str) -> dict:
    return {"Event-Name": "update", "Event-Package": "dialog",
            "From": f"sip:{presentity}@{DOMAIN}", "From-User": presentity,
            "From-Realm": DOMAIN, "To": f"sip:x@{DOMAIN}", "Call-ID": call_id, "State": state,
            "Direction": "recipient", "Expires": 600}


def engine_throughput(presentities: int = 2500, keys: int = 4,
                      history: bool = True, freeze: bool = True) -> dict[str, Any]:
    """With ``history`` the per-lamp history and stage histograms are on, as in a node; with
    ``freeze`` the heap is frozen after the subscriptions are in (``gc.freeze()``, as the node's
    housekeeping does after growth), so full collections do not walk the table mid-run."""
    state = PresenceState(REGISTRY, PackageOptions())
    engine = PresenceEngine(EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}), state, REGISTRY)
    recorder = None
    if history:
        from busylamp.presence.history import History

        recorder = History()
        recorder.attach(state, engine.counters)
        engine.observer = recorder
    now = 1000.0
    watchers = presentities * keys
    messages = [_subscribe(i, f"p{i % presentities}") for i in range(watchers)]
    started = time.perf_counter()
    answers = []
    for data in messages:
        engine.receive(data, PHONE, "udp", None, now)
        out = engine.messages_to_send()
        answers.append(ok_for(out[1][2]))
    subscribe_s = time.perf_counter() - started
    for ok in answers:
        engine.receive(ok, PHONE, "udp", None, now)
    engine.messages_to_send()
    if freeze:
        gc.collect(1)
        gc.freeze()

    batches = [parse_updates(_update(f"p{p}", state_name, f"c{cycle}-{p}"))
               for cycle, state_name in enumerate(("early", "confirmed", "terminated"))
               for p in range(presentities)]
    apply_s = respond_s = 0.0
    notifies = 0
    for batch in batches:
        t0 = time.perf_counter()
        engine.apply(batch, now)
        out = engine.messages_to_send()
        if recorder is not None and recorder.pending:  # as the node does
            recorder.flushed(now)
        t1 = time.perf_counter()
        oks = [ok_for(data) for _, _, data, _ in out]
        t2 = time.perf_counter()
        for ok in oks:
            engine.receive(ok, PHONE, "udp", None, now)
        engine.messages_to_send()
        t3 = time.perf_counter()
        apply_s += t1 - t0
        respond_s += t3 - t2
        notifies += len(out)
    if freeze:
        gc.unfreeze()
    return {
        "watchers": watchers,
        "history": history,
        "gc_freeze": freeze,
        "subscribe_per_s": watchers / subscribe_s,
        "notifies": notifies,
        "notify_build_per_s": notifies / apply_s,
        "notify_response_per_s": notifies / respond_s,
        "notify_transactions_per_s": notifies / (apply_s + respond_s),
    }
