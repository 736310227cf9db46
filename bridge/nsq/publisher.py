"""Publishing to one NSQ topic: ordered MPUB batches from a bounded buffer, in the loop."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import ujson

from busylamp.bridge.nsq.loop import NsqLoop
from busylamp.bridge.pynsq_adapter import ObservedWriter, is_error, is_refusal

__all__ = ["MAX_MSG_SIZE", "MPUB_BATCH", "MPUB_MAX_BYTES", "NsqPublisher"]

log = logging.getLogger(__name__)

MPUB_BATCH = 500
MPUB_MAX_BYTES = 1 << 20  # bodies per MPUB, well under nsqd's --max-body-size (5 MiB default)
MAX_MSG_SIZE = 1 << 20  # nsqd's --max-msg-size default: it refuses a bigger body


class NsqPublisher:
    """Non-blocking, ordered publisher; buffers (bounded) while nsqd is unreachable.

    ``publish`` serializes with ujson and appends to a deque; the tornado loop sends the queue
    with MPUB, one batch in flight at a time, so order is kept. A failed batch goes back to the
    front of the queue and is sent again after the reconnect. When the buffer is full the OLDEST
    message is dropped and counted (``dropped``): for presence, newer state matters more, and
    the engine turns the Sequence gap into a resync. A message over ``max_msg_size`` (nsqd's
    ``--max-msg-size``) is never queued, and a batch nsqd refuses for its content is not sent
    again: both are logged and counted (``refused``).
    """

    def __init__(self, loop: NsqLoop, nsqd: list[str], topic: str, max_buffer: int = 10000,
                 backoff_initial: float = 0.5, backoff_max: float = 15.0,
                 max_msg_size: int = MAX_MSG_SIZE) -> None:
        self.loop = loop
        self.nsqd = list(nsqd)
        self.topic = topic
        self.max_buffer = max_buffer
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.dropped = 0
        self.published = 0
        self.connected = False
        self._queue: deque[bytes] = deque()
        self._in_flight: list[bytes] | None = None
        self.refused = 0
        self.max_msg_size = max_msg_size
        self._writer: ObservedWriter | None = None
        self._scheduled = False
        self._outage = False
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Create the pynsq Writer in the loop: idempotent, from any greenlet, and no caller
        waits for it (only, once, for the loop greenlet itself to run); what is published
        meanwhile is queued and sent once connected."""
        if self._started:
            return
        self.loop.start()
        if not self._started:
            self._started = True
            self.loop.call(self._create)

    def _create(self) -> None:
        if self._writer is None and not self._closed:
            # pynsq connects from its own _run callback
            self._writer = ObservedWriter(self.nsqd, self._connected, self._disconnected,
                                          self.backoff_initial, self.backoff_max)

    @property
    def buffered(self) -> int:
        return len(self._queue) + len(self._in_flight or ())

    def publish(self, message: dict[str, Any]) -> None:
        """Queue one message; never blocks, never raises for broker trouble."""
        body = ujson.dumps(message).encode()
        if len(body) > self.max_msg_size:
            self.refused += 1
            log.error("not publishing a %d-byte message to %s: nsqd takes at most %d bytes",
                      len(body), self.topic, self.max_msg_size)
            return
        self._queue.append(body)
        while len(self._queue) + len(self._in_flight or ()) > self.max_buffer and self._queue:
            self._queue.popleft()
            self.dropped += 1
        if not self._scheduled and self.loop.running:
            self._scheduled = True
            self.loop.call(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        writer = self._writer
        if writer is None or self._in_flight is not None or not self._queue or not self.connected:
            return
        batch = [self._queue.popleft()]
        size = len(batch[0])
        while self._queue and len(batch) < MPUB_BATCH and size + len(self._queue[0]) <= MPUB_MAX_BYTES:
            size += len(self._queue[0])
            batch.append(self._queue.popleft())
        self._in_flight = batch
        writer.mpub(self.topic, batch, callback=self._on_sent)

    def _on_sent(self, conn: Any, data: Any) -> None:
        batch, self._in_flight = self._in_flight or [], None
        if is_refusal(data):
            self.refused += len(batch)
            log.error("nsqd refused %d messages for %s (%s): not sending them again",
                      len(batch), self.topic, data)
            self._flush()
            return
        if is_error(data):
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.max_buffer:
                self._queue.popleft()
                self.dropped += 1
            self._mark_outage(str(data))
            return
        self.published += len(batch)
        self._flush()

    def _mark_outage(self, reason: str) -> None:
        if not self._outage:
            self._outage = True
            log.warning("nsqd %s unreachable (%s): buffering up to %d messages",
                        ",".join(self.nsqd), reason, self.max_buffer)

    def _connected(self) -> None:
        self.connected = True
        if self._outage:
            self._outage = False
            log.info("nsqd %s back: flushing %d buffered messages", ",".join(self.nsqd), len(self._queue))
        self._flush()

    def _disconnected(self, conn_id: str, live: bool) -> None:
        if self._closed:
            self.connected = False
            return  # our own close: not an outage
        if not live and self.connected:
            return  # a duplicate connection pynsq dropped because another one won
        self.connected = bool(self._writer and self._writer.connected_other_than(conn_id))
        if not self.connected:
            self._mark_outage(f"connection {conn_id} closed")

    def close(self) -> None:
        """Close the connections (in the loop, after a pending ``_create``)."""
        self._closed = True
        if self.loop.running:
            self.loop.call(self._shutdown)

    def _shutdown(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown()
