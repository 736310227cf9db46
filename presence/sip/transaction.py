"""Sans-IO SIP transaction tables (RFC 3261 17): server response cache and non-INVITE clients.

Each table keeps one heap of (deadline, seq, key-or-record) entries with lazy deletion: stale
entries are skipped when they surface, so there is no timer object per transaction.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any

from .grammar import ParseError
from .parse import Request
from .via import MAGIC_COOKIE

__all__ = ["ClientTransactions", "ServerTransactions"]


class ServerTransactions:
    """Remembers the final response sent per request so retransmissions get the same bytes."""

    def __init__(self, t1: float = 0.5):
        self.timer_j = 64 * t1
        self._responses: dict[tuple, tuple[bytes, float]] = {}
        # (hash of the request's bytes, source) -> (response, expires): a UDP retransmission is
        # the same datagram again (RFC 3261 17.1.2.2), so it is answered before any parsing
        self._exact: dict[tuple, tuple[bytes, float]] = {}
        self._heap: list[tuple[float, int, tuple, tuple | None]] = []
        self._seq = count()

    @staticmethod
    def fingerprint(data: bytes, source: tuple[str, int]) -> tuple:
        """What identifies a datagram resent unchanged from the same address: its bytes' hash
        (keyed per process, so not predictable from outside) and length, and the source."""
        return hash(data), len(data), source

    def key(self, request: Request, transport: str) -> tuple:
        """RFC 3261 17.2.3 key (branch, sent-by, method; ACK matches its INVITE); requests without
        a magic-cookie branch use the RFC 2543 key (Call-ID, From tag, CSeq, top Via)."""
        via = request.vias[0]
        method = "INVITE" if request.method == "ACK" else request.method
        branch = via.branch
        if branch and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
            return ("3261", transport.lower(), branch, via.sent_by(), method)
        try:
            from_tag = request.from_.tag
        except ParseError:
            from_tag = None
        number = request.cseq[0]
        return ("2543", transport.lower(), request.call_id, from_tag, number, method, via.raw)

    def lookup(self, key: tuple) -> bytes | None:
        entry = self._responses.get(key)
        return entry[0] if entry is not None else None

    def lookup_exact(self, fingerprint: tuple) -> bytes | None:
        """The response sent to the datagram with this :meth:`fingerprint`, if still kept."""
        entry = self._exact.get(fingerprint)
        return entry[0] if entry is not None else None

    def store(self, key: tuple, response: bytes, reliable: bool, now: float,
              fingerprint: tuple | None = None) -> None:
        """Keep `response` for Timer J (64*T1) over UDP, by transaction key and, when given, by
        the request datagram's fingerprint; reliable transports keep nothing."""
        if reliable:
            self._responses.pop(key, None)
            return
        expires = now + self.timer_j
        self._responses[key] = (response, expires)
        if fingerprint is not None:
            self._exact[fingerprint] = (response, expires)
        heapq.heappush(self._heap, (expires, next(self._seq), key, fingerprint))

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            expires, _, key, _ = heap[0]
            entry = self._responses.get(key)
            if entry is not None and entry[1] == expires:
                return
            heapq.heappop(heap)

    def get_timer(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, _, key, fingerprint = heapq.heappop(heap)
            entry = self._responses.get(key)
            if entry is not None and entry[1] == expires:
                del self._responses[key]
            if fingerprint is not None:
                entry = self._exact.get(fingerprint)
                if entry is not None and entry[1] == expires:
                    del self._exact[fingerprint]

    def __len__(self) -> int:
        return len(self._responses)


class _ClientTransaction:
    __slots__ = ("branch", "data", "dest", "reliable", "owner", "interval", "next_send",
                 "deadline", "due")

    def __init__(self, branch: str, data: bytes, dest: object, reliable: bool, owner: object,
                 interval: float, next_send: float, deadline: float):
        self.branch = branch
        self.data = data
        self.dest = dest
        self.reliable = reliable
        self.owner = owner
        self.interval = interval
        self.next_send = next_send
        self.deadline = deadline
        self.due = min(next_send, deadline)


class ClientTransactions:
    """Non-INVITE client transactions (RFC 3261 17.1.2) for the NOTIFYs the engine sends.

    Timer E starts at T1 and doubles up to T2 (every T2 once a provisional arrived); Timer F
    (default 64*T1) times the transaction out. Reliable transports only run Timer F."""

    def __init__(self, t1: float = 0.5, t2: float = 4.0, timer_f: float | None = None):
        self.t1 = t1
        self.t2 = t2
        self.timer_f = 64 * t1 if timer_f is None else timer_f
        self.retransmissions = 0
        self._records: dict[str, _ClientTransaction] = {}
        self._heap: list[tuple[float, int, _ClientTransaction]] = []
        self._seq = count()

    def start(self, branch: str, data: bytes, dest: object, reliable: bool, now: float,
              owner: object) -> None:
        """Track a request just sent (the caller sends the first copy itself)."""
        next_send = float("inf") if reliable else now + self.t1
        record = _ClientTransaction(branch, data, dest, reliable, owner, self.t1, next_send,
                                    now + self.timer_f)
        self._records[branch] = record
        self._push(record)

    def _push(self, record: _ClientTransaction) -> None:
        heapq.heappush(self._heap, (record.due, next(self._seq), record))

    def destination(self, branch: str) -> Any:
        """The ``dest`` a live transaction's request was sent to, or None for an unknown branch."""
        record = self._records.get(branch)
        return None if record is None else record.dest

    def on_response(self, branch: str, status: int, now: float) -> object | None:
        """Final response: end the transaction and return its owner. Provisional: switch Timer E
        to T2 and return None. Unknown branch: None."""
        record = self._records.get(branch)
        if record is None:
            return None
        if status < 200:
            record.interval = self.t2
            return None
        del self._records[branch]
        return record.owner

    def cancel(self, branch: str) -> None:
        self._records.pop(branch, None)

    def _live(self, record: _ClientTransaction, due: float) -> bool:
        return self._records.get(record.branch) is record and record.due == due

    def handle_timer(self, now: float) -> tuple[list[tuple[Any, bytes]], list[Any]]:
        """Return (retransmissions as (dest, data), owners of timed-out transactions)."""
        retransmits: list[tuple[Any, bytes]] = []
        timeouts: list[Any] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, record = heapq.heappop(heap)
            if not self._live(record, due):
                continue
            if now >= record.deadline:
                del self._records[record.branch]
                timeouts.append(record.owner)
                continue
            retransmits.append((record.dest, record.data))
            self.retransmissions += 1
            record.interval = min(record.interval * 2, self.t2)
            record.next_send = max(record.next_send, now) + record.interval
            record.due = min(record.next_send, record.deadline)
            self._push(record)
        return retransmits, timeouts

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and not self._live(heap[0][2], heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._records)
