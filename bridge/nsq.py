"""NSQ transport for the bus: pynsq (tornado) driven from gevent.

pynsq runs on a tornado IOLoop. :class:`NsqLoop` owns the ONE asyncio/tornado loop of the process
and runs it inside one dedicated greenlet. The asyncio loop is built on
``gevent.selectors.GeventSelector``, so its wait for I/O yields to the gevent hub whether or not
the process is monkey-patched: tornado callbacks and gevent greenlets progress together. Every
pynsq Writer/Reader is created and used inside that loop (``NsqLoop.call`` schedules a function
into it with ``add_callback``; gevent code hands data over through plain Python objects, the
same OS thread). No greenlet waits for work done in the loop: publishers and consumers are
created there on first use (``start`` only schedules it), so any greenlet may publish first.
pynsq itself is reached through ``bridge/pynsq_adapter.py`` only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
import gevent.selectors
import tornado.ioloop
import ujson
from busylamp.bridge.pynsq_adapter import (
    BoundedReader,
    ObservedWriter,
    is_error,
    is_refusal,
    quiet_pynsq_logs,
)

log = logging.getLogger(__name__)

MPUB_BATCH = 500
MPUB_MAX_BYTES = 1 << 20  # bodies per MPUB, well under nsqd's --max-body-size (5 MiB default)
MAX_MSG_SIZE = 1 << 20  # nsqd's --max-msg-size default: it refuses a bigger body


class NsqLoop:
    """The single tornado loop of the process, running in one greenlet."""

    def __init__(self) -> None:
        self.io_loop: tornado.ioloop.IOLoop | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._started = gevent.event.Event()
        self._asyncio_loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout: float = 5.0) -> None:
        """Start the loop greenlet (idempotent); every caller returns once the loop runs."""
        if self._greenlet is None:
            quiet_pynsq_logs()
            self._greenlet = gevent.spawn(self._run)
        if gevent.getcurrent() is not self._greenlet and not self._started.wait(timeout):
            raise RuntimeError("tornado loop did not start")

    def _run(self) -> None:
        loop = asyncio.SelectorEventLoop(gevent.selectors.GeventSelector())
        self._asyncio_loop = loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._on_started)
        try:
            loop.run_forever()
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _on_started(self) -> None:
        self.io_loop = tornado.ioloop.IOLoop.current()
        self._started.set()

    @property
    def running(self) -> bool:
        return self._asyncio_loop is not None

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` inside the tornado loop (soon, not now)."""
        if self._asyncio_loop is None:
            raise RuntimeError("NsqLoop not started")
        # Not IOLoop.add_callback: asyncio tracks the running loop per OS thread, so from another
        # greenlet tornado would pick the no-wakeup call_soon and the loop could sleep on.
        self._asyncio_loop.call_soon_threadsafe(fn, *args)

    def run(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn()`` inside the loop and wait for its result (from a greenlet; for tools and
        tests: the bus itself never waits for the loop).

        Called from the loop's own greenlet (a consumer's handler publishing, say a resync
        request), ``fn`` runs right away: waiting there for the loop would wait forever.
        """
        if gevent.getcurrent() is self._greenlet:
            return fn()
        result = gevent.event.AsyncResult()

        def wrapper() -> None:
            try:
                result.set(fn())
            except Exception as exc:
                result.set_exception(exc)

        self.call(wrapper)
        return result.get(timeout=timeout)

    def stop(self) -> None:
        loop, self._asyncio_loop = self._asyncio_loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
            self._greenlet = None
        self.io_loop = None
        self._started.clear()


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


class NsqConsumer:
    """Consumes one topic/channel and hands decoded dicts to ``on_message`` (in the loop greenlet).

    Every message is FIN'd once ``on_message`` returns. Malformed JSON, a non-object, or
    ``on_message`` raising ValueError -> FIN and ``malformed`` += 1 (a bad message is never
    requeued). Any other exception -> REQ (pynsq gives up after ``max_tries``), ``errors`` += 1.
    """

    def __init__(self, loop: NsqLoop, topic: str, channel: str,
                 on_message: Callable[[dict[str, Any]], None], nsqd_tcp: Iterable[str] = (),
                 lookupd_http: Iterable[str] = (), max_in_flight: int = 200,
                 lookupd_poll_interval: int = 15, reconnect_interval: float = 1.0,
                 max_tries: int = 5,
                 on_malformed: Callable[[str], None] | None = None) -> None:
        self.loop = loop
        self.on_malformed = on_malformed
        self.topic = topic
        self.channel = channel
        self.on_message = on_message
        self.nsqd_tcp = list(nsqd_tcp)
        self.lookupd_http = list(lookupd_http)
        if not self.nsqd_tcp and not self.lookupd_http:
            raise ValueError("NsqConsumer needs nsqd_tcp or lookupd_http addresses")
        self.max_in_flight = max_in_flight
        self.lookupd_poll_interval = int(max(1, lookupd_poll_interval))
        self.reconnect_interval = reconnect_interval
        self.max_tries = max_tries
        self.received = 0
        self.malformed = 0
        self.errors = 0
        self._reader: BoundedReader | None = None
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Create the pynsq Reader in the loop: idempotent, from any greenlet, and no caller
        waits for it (only, once, for the loop greenlet itself to run)."""
        if self._started:
            return
        self.loop.start()
        if not self._started:
            self._started = True
            self.loop.call(self._create)

    def _create(self) -> None:
        if self._reader is not None or self._closed:
            return
        self._reader = BoundedReader(
            self.reconnect_interval,
            message_handler=self._handle, topic=self.topic, channel=self.channel,
            nsqd_tcp_addresses=self.nsqd_tcp or None, lookupd_http_addresses=self.lookupd_http or None,
            max_in_flight=self.max_in_flight, lookupd_poll_interval=self.lookupd_poll_interval,
            lookupd_poll_jitter=0.0, max_tries=self.max_tries,
        )

    @property
    def connections(self) -> int:
        return self._reader.connections if self._reader is not None else 0

    def _handle(self, message: Any) -> bool:
        self.received += 1
        try:
            data = ujson.loads(message.body)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            # the handler never sees it: report it so the node's metrics count it too
            self.malformed += 1
            log.debug("undecodable message on %s/%s: %s", self.topic, self.channel, exc)
            if self.on_malformed is not None:
                self.on_malformed(str(exc))
            return True
        try:
            self.on_message(data)
        except ValueError as exc:
            self.malformed += 1
            log.debug("malformed message on %s/%s: %s", self.topic, self.channel, exc)
            return True
        except Exception:
            self.errors += 1
            log.exception("message handler failed on %s/%s", self.topic, self.channel)
            return False
        return True

    def close(self) -> None:
        """Stop consuming (in the loop, after a pending ``_create``)."""
        self._closed = True
        if self.loop.running:
            self.loop.call(self._shutdown)

    def _shutdown(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


class NsqBus:
    """Bus over NSQ: updates on ``topic``, control messages on ``<topic>.control``.

    ``subscribe``/``subscribe_control`` create one consumer each on ``channel`` (callers choose
    it, e.g. ``<node-id>#ephemeral``); handlers run in the tornado loop greenlet, so they must be
    quick (hand over to a queue for slow work).
    """

    def __init__(self, loop: NsqLoop, nsqd_tcp: list[str], topic: str, channel: str,
                 lookupd_http: Iterable[str] = (), max_buffer: int = 10000,
                 consumer_nsqd_tcp: Iterable[str] | None = None, **consumer_kwargs: Any) -> None:
        self.loop = loop
        self.topic = topic
        self.control_topic = f"{topic}.control"
        self.channel = channel
        self.lookupd_http = list(lookupd_http)
        self.consumer_nsqd_tcp = list(consumer_nsqd_tcp if consumer_nsqd_tcp is not None else
                                      ([] if self.lookupd_http else nsqd_tcp))
        self.consumer_kwargs = consumer_kwargs
        self.publisher = NsqPublisher(loop, nsqd_tcp, self.topic, max_buffer=max_buffer)
        self.control_publisher = NsqPublisher(loop, nsqd_tcp, self.control_topic, max_buffer=max_buffer)
        self.consumers: list[NsqConsumer] = []

    def publish(self, message: dict[str, Any]) -> None:
        self.publisher.start()  # idempotent, never waits: safe from any greenlet
        self.publisher.publish(message)

    def publish_control(self, message: dict[str, Any]) -> None:
        self.control_publisher.start()
        self.control_publisher.publish(message)

    def _consume(self, topic: str, handler: Callable[[dict[str, Any]], None],
                 on_malformed: Callable[[str], None] | None = None) -> NsqConsumer:
        consumer = NsqConsumer(self.loop, topic, self.channel, handler,
                               nsqd_tcp=self.consumer_nsqd_tcp, lookupd_http=self.lookupd_http,
                               on_malformed=on_malformed, **self.consumer_kwargs)
        consumer.start()
        self.consumers.append(consumer)
        return consumer

    def subscribe(self, handler: Callable[[dict[str, Any]], None],
                  on_malformed: Callable[[str], None] | None = None) -> None:
        """Consume updates; ``on_malformed`` hears of bodies that are not a JSON object."""
        self._consume(self.topic, handler, on_malformed)

    def subscribe_control(self, handler: Callable[[dict[str, Any]], None]) -> None:
        self._consume(self.control_topic, handler)

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.close()
        self.publisher.close()
        self.control_publisher.close()
