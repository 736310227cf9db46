"""``/tail``: readers of the applied updates, each with a bounded queue."""

from __future__ import annotations

from collections.abc import Iterable

import gevent.queue

from busylamp.presence.updates import Snapshot, Update
from busylamp.wire.names import SNAPSHOT

TAIL_QUEUE_MAX = 10_000


class TailSubscription:
    """One `/tail` reader: a bounded queue of applied update objects (oldest dropped when full)."""

    def __init__(self, readers: set[TailSubscription]) -> None:
        self._readers = readers  # the node's: closing leaves it
        self._queue: gevent.queue.Queue = gevent.queue.Queue(maxsize=TAIL_QUEUE_MAX)
        self.dropped = 0

    def put(self, message: dict) -> None:
        try:
            self._queue.put_nowait(message)
        except gevent.queue.Full:
            self.dropped += 1

    def get(self, timeout: float | None = None) -> dict | None:
        try:
            return self._queue.get(timeout=timeout)
        except gevent.queue.Empty:
            return None

    def close(self) -> None:
        self._readers.discard(self)


class Tails:
    """The node's tail readers (a mixin of PresenceNode)."""

    _tails: set[TailSubscription]

    def tail(self) -> TailSubscription:
        tail = TailSubscription(self._tails)
        self._tails.add(tail)
        return tail

    def _to_tails(self, items: Iterable[Update | Snapshot]) -> None:
        """Hand applied updates (a snapshot as one line) to every tail reader."""
        for item in items:
            raw = item.raw if isinstance(item, Update) else {"Event-Name": SNAPSHOT,
                                                             "Switch-ID": item.switch_id}
            for tail in list(self._tails):
                tail.put(raw)
