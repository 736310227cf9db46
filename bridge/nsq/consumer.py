"""Consuming one NSQ topic/channel: decode each body to a dict and hand it on, in the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import ujson

from busylamp.bridge.nsq.loop import NsqLoop
from busylamp.bridge.pynsq_adapter import BoundedReader

__all__ = ["NsqConsumer"]

log = logging.getLogger(__name__)


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
                 on_malformed: Callable[[str], None] | None = None,
                 output_buffer_size: int | None = None,
                 output_buffer_timeout: int | None = None) -> None:
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
        # nsqd's buffering towards this consumer (IDENTIFY; None: pynsq's 16 KiB / 250 ms):
        # nsqd writes when the buffer fills or the timeout ticks, so at a low rate a message
        # waits up to the timeout, and at a high rate a bigger buffer means fewer writes
        self.output_buffer = {k: v for k, v in (("output_buffer_size", output_buffer_size),
                                                ("output_buffer_timeout", output_buffer_timeout))
                              if v is not None}
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
            lookupd_poll_jitter=0.0, max_tries=self.max_tries, **self.output_buffer,
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
