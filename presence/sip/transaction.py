"""Sans-IO SIP transaction tables (RFC 3261 17): server response cache and non-INVITE clients.

No timer object per transaction: the server table expires its answers a second's bucket at
a time; the client table keeps a transaction's first deadline in one of two queues (every new
transaction waits the same T1, or Timer F when reliable, so each queue is in deadline order)
and later ones in a heap of (deadline, seq, record) entries; stale entries of all three are
skipped when they surface.
"""

from __future__ import annotations

import heapq
import math
import mmap
from array import array
from collections import deque
from itertools import count
from typing import Any

from .grammar import ParseError
from .parse import Request
from .via import MAGIC_COOKIE, Via

__all__ = ["ClientTransactions", "ServerTransactions"]


# A kept answer's place: (bucket serial << 48) | (offset in the bucket's bytes << 16) | length.
_SERIAL_SHIFT = 48
_OFFSET_SHIFT = 16
_LENGTH_MASK = (1 << _OFFSET_SHIFT) - 1
_OFFSET_MASK = (1 << (_SERIAL_SHIFT - _OFFSET_SHIFT)) - 1
_BUCKET_SECONDS = 1.0  # answers are kept up to this much past Timer J, to expire by the bucket
_SHRINK_BELOW = 8  # tables are copied down to size when they hold under 1/8 of their high,
_SHRINK_FROM = 4096  # once that high was more than this many answers
_CHUNK = 1 << 18  # bytes of one memory map of answers (larger than any answer: <= 65,535)


class _Bucket:
    """The answers whose Timer J ends in one second, end to end in anonymous memory maps of
    their own (not the C heap, where a burst's worth would leave holes among long-lived
    allocations), and the hashes that point at them, for their removal when the bucket goes."""

    __slots__ = ("serial", "deadline", "chunks", "fill", "keys", "prints")

    def __init__(self, serial: int, deadline: float):
        self.serial = serial
        self.deadline = deadline
        self.chunks: list[mmap.mmap] = []
        self.fill = _CHUNK  # room left in the last chunk: none yet
        self.keys = array("q")
        self.prints = array("q")

    def put(self, answer: bytes) -> int:
        """Copy ``answer`` in; its position (chunk index * _CHUNK + offset)."""
        length = len(answer)
        if self.fill + length > _CHUNK:
            self.chunks.append(mmap.mmap(-1, _CHUNK))
            self.fill = 0
        start = self.fill
        self.chunks[-1][start:start + length] = answer
        self.fill = start + length
        return (len(self.chunks) - 1) * _CHUNK + start

    def get(self, position: int, length: int) -> bytes:
        start = position % _CHUNK
        return self.chunks[position // _CHUNK][start:start + length]

    def release(self) -> None:
        for chunk in self.chunks:
            chunk.close()  # back to the system now, not when the collector gets to it
        self.chunks.clear()


class ServerTransactions:
    """Remembers the final response sent per request so retransmissions get the same bytes.

    Over UDP an answer is kept for Timer J (64*T1, RFC 3261 17.2.2). At thousands of
    SUBSCRIBEs a second that is over a hundred thousand answers at once, all short-lived
    among the long-lived subscriptions: kept as small Python objects (or in the C heap) they
    would leave the allocators' pools fragmented once they go. So the answers of each second
    share memory maps and two hash arrays, freed together, and the tables map a hash of the
    transaction key (and of the datagram) to the answer's place: one integer per entry. A hit
    is checked against the answer (it must carry the request's branch or Call-ID), so a hash
    collision can never answer one request with another's response."""

    def __init__(self, t1: float = 0.5):
        self.timer_j = 64 * t1
        self._by_key: dict[int, int] = {}
        # hash of (request bytes, source) -> place: a UDP retransmission is the same datagram
        # again (RFC 3261 17.1.2.2), so it is answered before any parsing
        self._by_print: dict[int, int] = {}
        self._buckets: deque[_Bucket] = deque()
        self._serials = count(1)
        self._high = 0  # the most answers kept at once since the tables were last sized

    @staticmethod
    def fingerprint(data: bytes, source: tuple[str, int]) -> int:
        """What identifies a datagram resent unchanged from the same address: the hash of its
        bytes and source (keyed per process, so not predictable from outside)."""
        return hash((data, source))

    @staticmethod
    def branch_key(via: Via, method: str, transport: str) -> tuple | None:
        """The RFC 3261 17.2.3 key (branch, sent-by, method) of a request with this top Via (an
        ACK's ``method`` given as INVITE), or None when its branch has no magic cookie."""
        branch = via.branch
        if branch and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
            return ("3261", transport.lower(), branch, via.sent_by(), method)
        return None

    def key(self, request: Request, transport: str) -> tuple:
        """RFC 3261 17.2.3 key (:meth:`branch_key`; ACK matches its INVITE); requests without
        a magic-cookie branch use the RFC 2543 key (Call-ID, From tag, CSeq, top Via)."""
        via = request.vias[0]
        method = "INVITE" if request.method == "ACK" else request.method
        key = self.branch_key(via, method, transport)
        if key is not None:
            return key
        try:
            from_tag = request.from_.tag
        except ParseError:
            from_tag = None
        number = request.cseq[0]
        return ("2543", transport.lower(), request.call_id, from_tag, number, method, via.raw)

    def _answer(self, place: int | None) -> bytes | None:
        buckets = self._buckets
        if place is None or not buckets:
            return None
        index = (place >> _SERIAL_SHIFT) - buckets[0].serial  # the live serials run on
        if not 0 <= index < len(buckets):
            return None
        return buckets[index].get((place >> _OFFSET_SHIFT) & _OFFSET_MASK, place & _LENGTH_MASK)

    def lookup(self, key: tuple) -> bytes | None:
        """The response kept for the transaction ``key``, if any."""
        answer = self._answer(self._by_key.get(hash(key)))
        # both key forms hold, third, a value every answer repeats: the branch or the Call-ID
        if answer is None or key[2].encode() not in answer:
            return None
        return answer

    def lookup_exact(self, fingerprint: int, data: bytes) -> bytes | None:
        """The response sent to the datagram ``data`` with this :meth:`fingerprint`, if kept."""
        answer = self._answer(self._by_print.get(fingerprint))
        if answer is None:
            return None
        start = answer.find(b"\r\nCall-ID: ")
        if start < 0:
            return None
        start += 11
        end = answer.find(b"\r\n", start)
        return answer if end > start and answer[start:end] in data else None

    def store(self, key: tuple, response: bytes, reliable: bool, now: float,
              fingerprint: int | None = None) -> None:
        """Keep ``response`` for Timer J over UDP, by transaction key and, when given, by the
        request datagram's fingerprint; reliable transports keep nothing."""
        hashed = hash(key)
        if reliable:
            self._by_key.pop(hashed, None)
            return
        length = len(response)
        if length > _LENGTH_MASK:
            return  # larger than any datagram: never an answer over UDP
        bucket = self._bucket(now + self.timer_j)
        place = ((bucket.serial << _SERIAL_SHIFT) | (bucket.put(response) << _OFFSET_SHIFT)
                 | length)
        self._by_key[hashed] = place
        if len(self._by_key) > self._high:
            self._high = len(self._by_key)
        bucket.keys.append(hashed)
        if fingerprint is not None:
            self._by_print[fingerprint] = place
            bucket.prints.append(fingerprint)

    def _bucket(self, expires: float) -> _Bucket:
        buckets = self._buckets
        if buckets and buckets[-1].deadline >= expires:
            return buckets[-1]  # (a clock that went back keeps answers a little longer)
        deadline = math.ceil(expires / _BUCKET_SECONDS) * _BUCKET_SECONDS
        bucket = _Bucket(next(self._serials), deadline)
        buckets.append(bucket)
        return bucket

    def get_timer(self) -> float | None:
        return self._buckets[0].deadline if self._buckets else None

    def handle_timer(self, now: float) -> None:
        buckets = self._buckets
        while buckets and buckets[0].deadline <= now:
            bucket = buckets.popleft()
            serial = bucket.serial
            for table, hashes in ((self._by_key, bucket.keys), (self._by_print, bucket.prints)):
                for hashed in hashes:
                    place = table.get(hashed)
                    if place is not None and place >> _SERIAL_SHIFT == serial:
                        del table[hashed]
            bucket.release()
        if self._high > _SHRINK_FROM and len(self._by_key) * _SHRINK_BELOW < self._high:
            # a dict keeps the table of its largest size: once a burst is over, copy the few
            # answers left into tables their size and give the burst's back
            self._by_key, self._by_print = dict(self._by_key), dict(self._by_print)
            self._high = len(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)


_NEVER = math.inf


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
        self.due = next_send if next_send < deadline else deadline


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
        # first deadlines: now + T1 (UDP) and now + Timer F (reliable), in the order started
        self._first = deque[_ClientTransaction]()
        self._first_reliable = deque[_ClientTransaction]()
        self._heap: list[tuple[float, int, _ClientTransaction]] = []  # every later deadline
        self._seq = count()

    def start(self, branch: str, data: bytes, dest: object, reliable: bool, now: float,
              owner: object) -> None:
        """Track a request just sent (the caller sends the first copy itself)."""
        deadline = now + self.timer_f
        if reliable:
            record = _ClientTransaction(branch, data, dest, True, owner, self.t1, _NEVER,
                                        deadline)
            queue = self._first_reliable
        else:
            record = _ClientTransaction(branch, data, dest, False, owner, self.t1, now + self.t1,
                                        deadline)
            queue = self._first
        self._records[branch] = record
        if queue and queue[-1].due > record.due:  # the clock went back: out of order
            self._push(record)
        else:
            queue.append(record)

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
        records = self._records
        for queue in (self._first, self._first_reliable):
            while queue and queue[0].due <= now:
                record = queue.popleft()
                if records.get(record.branch) is record:  # (a queued record keeps its due)
                    self._expire(record, now, retransmits, timeouts)
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, record = heapq.heappop(heap)
            if self._live(record, due):
                self._expire(record, now, retransmits, timeouts)
        return retransmits, timeouts

    def _expire(self, record: _ClientTransaction, now: float,
                retransmits: list[tuple[Any, bytes]], timeouts: list[Any]) -> None:
        """``record``'s deadline passed: Timer F ends it, else Timer E sends it again."""
        if now >= record.deadline:
            del self._records[record.branch]
            timeouts.append(record.owner)
            return
        retransmits.append((record.dest, record.data))
        self.retransmissions += 1
        record.interval = min(record.interval * 2, self.t2)
        record.next_send = max(record.next_send, now) + record.interval
        record.due = min(record.next_send, record.deadline)
        self._push(record)

    def get_timer(self) -> float | None:
        records = self._records
        earliest = None
        for queue in (self._first, self._first_reliable):
            while queue and records.get(queue[0].branch) is not queue[0]:
                queue.popleft()
            if queue and (earliest is None or queue[0].due < earliest):
                earliest = queue[0].due
        heap = self._heap
        while heap and not self._live(heap[0][2], heap[0][0]):
            heapq.heappop(heap)
        if heap and (earliest is None or heap[0][0] < earliest):
            earliest = heap[0][0]
        return earliest

    def __len__(self) -> int:
        return len(self._records)
