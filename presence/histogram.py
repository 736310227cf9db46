"""Latency histograms per pipeline stage, in the Prometheus text format (sans-IO).

A :class:`Histogram` has fixed bucket bounds from 100 µs to 10 s; ``observe`` costs one C
``bisect`` and two additions. The hottest stage (``notify_to_answer``, once per NOTIFY) only
appends its values to ``pending``: :meth:`Histogram.settle` sorts them and folds them into the
buckets with one bisect per bucket, before any read (the history settles them as they pile up). A negative value (the clocks of two machines disagree) is never
observed: it is counted as skew, per stage, so a drifting clock shows up instead of hiding in the
lowest bucket.

Stages (``busylamp_stage_seconds{stage=...}``):

==================  ============================================================================
stage               from -> to
==================  ============================================================================
esl_to_bridge       FreeSWITCH ``Event-Date-Timestamp`` -> the bridge received the event
bridge_to_applied   the bridge published the update -> the node applied it (across the bus)
applied_to_notify   the node applied the update -> its NOTIFYs handed to the transport
notify_to_answer    a NOTIFY sent -> its final response received
subscribe_to_notify a SUBSCRIBE received -> its initial NOTIFY handed to the transport
==================  ============================================================================
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable

__all__ = ["BUCKETS", "STAGES", "Histogram", "StageHistograms"]

BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

STAGES: dict[str, str] = {
    "esl_to_bridge": "FreeSWITCH event time -> bridge received",
    "bridge_to_applied": "bridge published -> node applied (across the bus)",
    "applied_to_notify": "update applied -> NOTIFY handed to the transport",
    "notify_to_answer": "NOTIFY sent -> final response received",
    "subscribe_to_notify": "SUBSCRIBE received -> initial NOTIFY handed to the transport",
}


class Histogram:
    """Cumulative-on-render bucket counts, sum, count and a skew counter."""

    __slots__ = ("bounds", "counts", "total", "skew", "pending")

    def __init__(self, bounds: Iterable[float] = BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf only
        self.total = 0.0
        self.skew = 0
        self.pending: list[float] = []  # observations not yet in the buckets (see settle)

    def settle(self) -> None:
        """Fold the values appended to ``pending`` into the buckets (the list is emptied in
        place: the hot path may hold it)."""
        pending = self.pending
        if not pending:
            return
        pending.sort()
        counts = self.counts
        start = previous = bisect_left(pending, 0.0)  # negative values: skew
        self.skew += start
        for i, bound in enumerate(self.bounds):
            end = bisect_right(pending, bound, previous)  # le="bound" includes it
            counts[i] += end - previous
            previous = end
        counts[-1] += len(pending) - previous
        self.total += sum(pending[start:]) if start else sum(pending)
        pending.clear()

    def observe(self, value: float) -> None:
        if value < 0.0:
            self.skew += 1
            return
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, value: float, n: int) -> None:
        """``n`` observations of the same value (one fan-out's NOTIFYs)."""
        if n <= 0:
            return
        if value < 0.0:
            self.skew += n
            return
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n

    @property
    def count(self) -> int:
        """Observations (the hot path only bumps a bucket: counted when read)."""
        self.settle()
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ``+Inf`` last."""
        self.settle()
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None when empty)."""
        count = self.count
        if not count:
            return None
        rank = q * count
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            if running >= rank:
                return bound
        return float("inf")


class StageHistograms:
    """One :class:`Histogram` per stage of :data:`STAGES`."""

    def __init__(self, stages: Iterable[str] = STAGES) -> None:
        self.stages = {name: Histogram() for name in stages}

    def __getitem__(self, name: str) -> Histogram:
        return self.stages[name]

    def render(self, metric: Callable, lines: list[str], prefix: str) -> None:
        """Append the families to a presence.metrics writer (``metric``) and its ``lines``."""
        full = prefix + "stage_seconds"
        lines.append(f"# HELP {full} Latency per pipeline stage (see presence/histogram.py).")
        lines.append(f"# TYPE {full} histogram")
        for name, hist in self.stages.items():
            hist.settle()
            for le, n in hist.cumulative():
                lines.append(f'{full}_bucket{{stage="{name}",le="{le}"}} {n}')
            lines.append(f'{full}_sum{{stage="{name}"}} {hist.total:.9g}')
            lines.append(f'{full}_count{{stage="{name}"}} {hist.count}')
        metric("stage_clock_skew_total", "counter",
               "Stage times that came out negative (clocks of two machines disagree), by stage.",
               [({"stage": name}, hist.skew) for name, hist in self.stages.items()])


def _le(bound: float) -> str:
    return f"{bound:g}"
