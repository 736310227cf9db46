"""Housekeeping off the hot path: the cyclic garbage collector kept out of the latency, and the
kernel's UDP drop counter read for the overload check."""

from __future__ import annotations

import gc
import logging

import gevent

log = logging.getLogger(__name__)

GC_FREEZE_GROWTH = 2_000  # freeze the heap again after this many new subscriptions,
HISTORY_FREEZE_GROWTH = 2_000  # or this many new history entries

# Often enough that the young generations stay small: at 10,000 NOTIFYs a second the history
# alone adds 10,000 long-lived lists a second, and every automatic collection of the older
# young generation walks all of them since the last freeze (2 s of them: 2-5 ms, and 10-45 ms
# when the oldest unfrozen generation was collected; bench: docs/BENCHMARKS.md)
HOUSEKEEPING_INTERVAL = 0.5


def freeze_due(subscriptions_changed: int, history_added: int) -> bool:
    """Whether enough long-lived objects were made since the last freeze to freeze again."""
    return (abs(subscriptions_changed) >= GC_FREEZE_GROWTH
            or history_added >= HISTORY_FREEZE_GROWTH)


def freeze_heap(subscriptions: int) -> None:
    """Collect the young generations, then move every tracked object to the permanent one."""
    gc.collect(1)  # let young garbage go first, not into the permanent generation
    gc.freeze()
    if log.isEnabledFor(logging.DEBUG):
        # counting the permanent generation walks all of it: ~30 ms at 3M objects, so only
        # when someone reads it (at 300k subscriptions, every tick, it was the fan-out's p99)
        log.debug("gc: froze the heap at %d subscriptions (%d objects permanent)",
                  subscriptions, gc.get_freeze_count())


class Housekeeping:
    """The housekeeping greenlet (a mixin of PresenceNode)."""

    def _housekeeping(self) -> None:
        """Keep the cyclic garbage collector out of the latency: subscriptions, records and
        their strings are long-lived and acyclic (refcounting frees them), but a full collection
        would still walk all of them — a pause that grows with the table. After each bulk growth
        the heap is frozen (``gc.freeze``): later collections only walk younger objects."""
        frozen_at = 0
        history_at = 0  # the per-lamp history is long-lived and acyclic too
        while not self._stopping:
            gevent.sleep(HOUSEKEEPING_INTERVAL)
            self._on_drops(self.transports.udp_drops())  # input lost for long: shed (node.py)
            count = len(self.engine.subscriptions)
            if freeze_due(count - frozen_at, self.history.added - history_at):
                freeze_heap(count)
                frozen_at = count
                history_at = self.history.added
