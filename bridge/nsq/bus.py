"""The bus (bridge/bus.py's protocol) over NSQ: one publisher and consumer per topic."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from busylamp.bridge.nsq.consumer import NsqConsumer
from busylamp.bridge.nsq.loop import NsqLoop
from busylamp.bridge.nsq.publisher import NsqPublisher
from busylamp.wire import control_topic

__all__ = ["NsqBus"]


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
        self.control_topic = control_topic(topic)
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
