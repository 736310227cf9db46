"""Turn what the publisher sent and what the responder received into figures (pure functions).

A NOTIFY is matched to the last publish of the same (presentity, state) sent before the NOTIFY
arrived. Consecutive publishes of one (presentity, state) are a whole call cycle apart (three
publishes of that presentity), far more than any latency accepted as sustained. The dialog's
``local-tag`` (the publish's From-Tag) is only a cross-check: Kamailio's single-dialog selection
shows the *oldest* unexpired terminated call, so its tag names an earlier publish; disagreements
are counted as ``tag_mismatch``. Duplicates (a retransmitted NOTIFY answered twice) are counted
once, keyed by (Call-ID, version). Only the first NOTIFY of a subscription for a given publish
counts as delivered (and gives the latency); later ones carrying the same state are ``extra``
(Kamailio, for one, notifies every watcher again when an expired record is swept).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.publisher import Sent
from bench.responder import Record
from bench.workload import presentity_index


@dataclass(frozen=True, slots=True)
class Notify:
    t: float
    call_id: str
    presentity: int | None
    state: str
    version: int
    tag: str


def decode(records: Iterable[Record]) -> list[Notify]:
    """Decode raw responder records, dropping duplicates of the same (Call-ID, version)."""
    seen: set[tuple[str, int, str, str]] = set()
    out = []
    for t, call_id, user, state, version, tag in records:
        n = Notify(t, call_id.decode("latin-1"), presentity_index(user.decode("latin-1")),
                   state.decode("latin-1"), version, tag.decode("latin-1"))
        key = (n.call_id, n.version, n.tag if n.version < 0 else "", n.state if n.version < 0 else "")
        if key in seen:
            continue
        seen.add(key)
        out.append(n)
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def held_subscriptions(notifies: Iterable[Notify], tag_prefix: str = "v") -> dict[str, int]:
    """Call-ID -> presentity of every subscription that got a verification NOTIFY.

    When the server renders no local-tag, any NOTIFY of the verification phase counts.
    """
    held: dict[str, int] = {}
    for n in notifies:
        if n.presentity is None:
            continue
        if n.tag and not n.tag.startswith(tag_prefix):
            continue
        held[n.call_id] = n.presentity
    return held


@dataclass(slots=True)
class FanoutFigures:
    publishes: int
    publish_rate: float
    expected: int
    delivered: int
    delivery_ratio: float
    right_state_ratio: float
    notify_per_s: float
    latency_ms_p50: float
    latency_ms_p99: float
    latency_ms_max: float
    tag_mismatch: int
    extra: int
    unmatched: int

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}


def fanout(sent: Sequence[Sent], notifies: Sequence[Notify], held: dict[str, int],
           publish_rate: float, tag_prefix: str = "p") -> FanoutFigures:
    """Figures for one fan-out phase.

    ``sent``: (seq, presentity, state, send time) of every publish that was answered 2xx.
    ``held``: subscriptions verified before the phase (Call-ID -> presentity).
    """
    watchers: dict[int, int] = {}
    for p in held.values():
        watchers[p] = watchers.get(p, 0) + 1
    expected = sum(watchers.get(p, 0) for _, p, _, _ in sent)
    by_state: dict[tuple[int, str], list[tuple[float, int]]] = {}
    last_state: dict[int, tuple[float, str]] = {}
    for seq, p, state, t in sent:
        by_state.setdefault((p, state), []).append((t, seq))
        if p not in last_state or t >= last_state[p][0]:
            last_state[p] = (t, state)
    for times in by_state.values():
        times.sort()

    latencies: list[float] = []
    tag_mismatch = unmatched = delivered = extra = 0
    last_delivered = 0.0
    seen: set[tuple[str, int]] = set()
    final: dict[str, tuple[int, float, str]] = {}
    for n in notifies:
        if n.call_id not in held:
            continue
        times = by_state.get((n.presentity, n.state), []) if n.presentity is not None else []
        i = bisect.bisect_right(times, (n.t, float("inf")))
        if i:
            t_sent, seq = times[i - 1]
            if (n.call_id, seq) in seen:
                extra += 1
            else:
                seen.add((n.call_id, seq))
                delivered += 1
                last_delivered = max(last_delivered, n.t)
                latencies.append(n.t - t_sent)
                if n.tag and n.tag != f"{tag_prefix}{seq}":
                    tag_mismatch += 1
        else:
            unmatched += 1
        prev = final.get(n.call_id)
        if prev is None or (n.version, n.t) >= (prev[0], prev[1]):
            final[n.call_id] = (n.version, n.t, n.state)

    judged = right = 0
    for call_id, p in held.items():
        if p not in last_state:
            continue
        judged += 1
        got = final.get(call_id)
        if got is not None and got[2] == last_state[p][1]:
            right += 1

    latencies.sort()
    first_send = min((t for *_, t in sent), default=0.0)
    last_recv = last_delivered or first_send  # extra NOTIFYs do not stretch the window
    span = last_recv - first_send
    return FanoutFigures(
        publishes=len(sent),
        publish_rate=publish_rate,
        expected=expected,
        delivered=delivered,
        delivery_ratio=delivered / expected if expected else 0.0,
        right_state_ratio=right / judged if judged else 0.0,
        notify_per_s=delivered / span if span > 0 else 0.0,
        latency_ms_p50=percentile(latencies, 50) * 1000,
        latency_ms_p99=percentile(latencies, 99) * 1000,
        latency_ms_max=(latencies[-1] * 1000) if latencies else float("nan"),
        tag_mismatch=tag_mismatch,
        extra=extra,
        unmatched=unmatched,
    )


def median(values: Sequence[float]) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
