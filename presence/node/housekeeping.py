"""Housekeeping off the hot path: the cyclic garbage collector kept out of the latency."""

from __future__ import annotations

import gc
import logging

import gevent

log = logging.getLogger(__name__)

GC_FREEZE_GROWTH = 2_000  # freeze the heap again after this many new subscriptions

HOUSEKEEPING_INTERVAL = 2.0


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
            count = len(self.engine.subscriptions)
            if (abs(count - frozen_at) >= GC_FREEZE_GROWTH
                    or self.history.added - history_at >= 10 * GC_FREEZE_GROWTH):
                gc.collect(1)  # let young garbage go first, not into the permanent generation
                gc.freeze()
                frozen_at = count
                history_at = self.history.added
                log.debug("gc: froze the heap at %d subscriptions (%d objects permanent)",
                          count, gc.get_freeze_count())
