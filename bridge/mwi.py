"""The bridge's mailbox book: which mailboxes to (re)query with MESSAGE_QUERY, and when.

Sans-IO with an injected clock; :class:`bridge.service.BridgeService` drives it from one greenlet.

* A presence node claims a mailbox (``mwi_query``) when its first message-summary watcher comes,
  and releases it (``mwi_forget``) when its last one leaves; a mailbox no node claims is
  forgotten (MESSAGE_WAITING events still reach the nodes, it is just no longer queried or
  replayed on reconnect). The claims of a node that died without releasing them stay until the
  bridge restarts; ``max_mailboxes`` bounds them.
* Queries are coalesced (one per mailbox and switch within ``requery_after`` seconds, whoever
  asks) and paced by a token bucket (``rate`` a second, ``burst`` at once); the queue is bounded.
* The replay on (re)connect covers the remembered mailboxes only, at most ``max_replay`` of them,
  through the same pacing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class _Mailbox:
    __slots__ = ("claims", "queried")

    def __init__(self) -> None:
        self.claims: set[str] = set()  # node ids with a watcher of this mailbox
        self.queried: dict[object, float] = {}  # switch key -> when last queued


class MailboxBook:
    """Mailboxes worth querying, the queue of MESSAGE_QUERYs owed, and its pacing."""

    def __init__(self, *, rate: float = 20.0, burst: int = 100, requery_after: float = 60.0,
                 max_mailboxes: int = 100_000, max_queue: int = 10_000,
                 max_replay: int = 10_000) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self.requery_after = requery_after
        self.max_mailboxes = max_mailboxes
        self.max_queue = max_queue
        self.max_replay = max_replay
        self._boxes: dict[str, _Mailbox] = {}
        self._queue: OrderedDict[tuple[str, object], None] = OrderedDict()
        self._tokens = self.burst
        self._refilled: float | None = None
        self.counters = {"coalesced": 0, "queue_full": 0, "book_full": 0, "forgotten": 0}

    # -- what is known ------------------------------------------------------------------------

    def __contains__(self, mailbox: object) -> bool:
        return mailbox in self._boxes

    def __len__(self) -> int:
        return len(self._boxes)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._boxes))

    def _entry(self, mailbox: str) -> _Mailbox | None:
        box = self._boxes.get(mailbox)
        if box is None:
            if len(self._boxes) >= self.max_mailboxes:
                self.counters["book_full"] += 1
                return None
            box = self._boxes[mailbox] = _Mailbox()
        return box

    def claim(self, mailbox: str, node: str, now: float, switches: list[object]) -> int:
        """A node watches ``mailbox``: remember it while claimed and queue a query to each of
        ``switches`` unless one was queued within ``requery_after``; returns how many queued."""
        box = self._entry(mailbox)
        if box is None:
            return 0
        box.claims.add(node)
        return sum(self._enqueue(mailbox, box, switch, now) for switch in switches)

    def release(self, mailbox: str, node: str, now: float) -> None:
        """``node`` has no watcher of ``mailbox`` any more."""
        box = self._boxes.get(mailbox)
        if box is not None:
            box.claims.discard(node)
            if not box.claims:
                del self._boxes[mailbox]
                self.counters["forgotten"] += 1

    # -- queries ------------------------------------------------------------------------------

    def _enqueue(self, mailbox: str, box: _Mailbox, switch: object, now: float) -> bool:
        last = box.queried.get(switch)
        if (last is not None and now - last < self.requery_after) or \
                (mailbox, switch) in self._queue:
            self.counters["coalesced"] += 1
            return False
        if len(self._queue) >= self.max_queue:
            self.counters["queue_full"] += 1
            return False
        box.queried[switch] = now
        self._queue[(mailbox, switch)] = None
        return True

    def replay(self, switch: object, now: float) -> int:
        """A switch (re)connected: queue a query for each remembered mailbox (at most
        ``max_replay``); returns how many were queued."""
        queued = 0
        for mailbox, box in list(self._boxes.items())[: self.max_replay]:
            box.queried.pop(switch, None)  # a new connection: what it was asked before is gone
            queued += self._enqueue(mailbox, box, switch, now)
        return queued

    def due(self, now: float) -> list[tuple[str, object]]:
        """(mailbox, switch) queries to send now, as the bucket allows."""
        if self._refilled is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        out: list[tuple[str, object]] = []
        while self._queue and self._tokens >= 1.0:
            key, _ = self._queue.popitem(last=False)
            out.append(key)
            self._tokens -= 1.0
        return out

    def next_due(self, now: float) -> float | None:
        """When :meth:`due` will next have something to give; None when the queue is empty."""
        if not self._queue:
            return None
        if self._tokens >= 1.0:
            return now
        return now + (1.0 - self._tokens) / self.rate

    @property
    def queued(self) -> int:
        return len(self._queue)

    def forget_switch(self, switch: object) -> None:
        """A switch went away: drop its queued queries."""
        for key in [k for k in self._queue if k[1] == switch]:
            del self._queue[key]
