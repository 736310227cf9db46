"""Everything busylamp asks of pynsq, in one file: Writer and Reader subclasses and log filters.

The rest of the code base imports pynsq only through here, so a pynsq release that changes
what we rely on breaks one file (and tests/integration/test_dependency_api.py says which name is gone).

Reader: followed through each connection's public ``on("ready")``/``on("close")`` events, as
``Reader.connect_to_nsqd`` returns the connection.  Writer: ``Writer.connect_to_nsqd`` creates
the connection inside, returns nothing and wires its ready/close events only to the Writer's own
``_on_connection_ready``/``_on_connection_close``, so :class:`ObservedWriter` overrides those two
(and nothing else private); see README "Dependencies".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import nsq
import tornado.iostream

log = logging.getLogger("busylamp.bridge.nsq")  # the outage lines belong to the NSQ transport

REFUSALS = (b"E_BAD_MESSAGE", b"E_BAD_BODY", b"E_BAD_TOPIC")  # sending again cannot help


class _RefusedConnectFilter(logging.Filter):
    """Drop pynsq's traceback for a refused connect (tornado logs it as "Exception in callback"
    from ``AsyncConn._connect_callback``): the publisher and consumer log each outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(exc, tornado.iostream.StreamClosedError)
            and "_connect_callback" in record.getMessage()
        )


class _ClosedSendFilter(logging.Filter):
    """Drop pynsq's traceback for a publish that met a connection nsqd had just closed
    (``Writer._pub``: "failed to send"): the publisher puts the batch back, sends it after the
    reconnect and logs the outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(exc, tornado.iostream.StreamClosedError)
            and "failed to send" in record.getMessage()
        )


def quiet_pynsq_logs() -> None:
    """pynsq logs every (re)connect attempt at INFO: keep its WARNINGs and errors only (our own
    code logs one line per outage) unless debug logging is on, and drop the tracebacks of a
    refused connect and of a publish on a connection nsqd just closed. Idempotent."""
    pynsq = logging.getLogger("nsq")
    if pynsq.level == logging.NOTSET and not logging.getLogger().isEnabledFor(logging.DEBUG):
        pynsq.setLevel(logging.WARNING)
    tornado_app = logging.getLogger("tornado.application")
    if not any(isinstance(f, _RefusedConnectFilter) for f in tornado_app.filters):
        tornado_app.addFilter(_RefusedConnectFilter())
    writer = logging.getLogger("nsq.writer")  # a logger's filters see only its own records
    if not any(isinstance(f, _ClosedSendFilter) for f in writer.filters):
        writer.addFilter(_ClosedSendFilter())


def is_error(data: Any) -> bool:
    """Whether a publish callback's ``data`` is pynsq's error (not nsqd's ``OK``)."""
    return isinstance(data, nsq.Error)


def is_refusal(error: Any) -> bool:
    """Whether ``error`` is nsqd's error frame about the messages themselves (too big, bad
    topic), as opposed to a connection that failed."""
    if type(error) is not nsq.Error or not error.args:
        return False
    text = error.args[0]
    return isinstance(text, bytes) and text.startswith(REFUSALS)


class ObservedWriter(nsq.Writer):
    """pynsq Writer that reports connection readiness/closure and backs off its reconnects
    (``reconnect_interval``, a public constructor argument pynsq reads at each close)."""

    def __init__(self, nsqd: list[str], on_ready: Callable[[], None],
                 on_close: Callable[[str, bool], None], backoff_initial: float,
                 backoff_max: float, **kwargs: Any) -> None:
        self._on_ready = on_ready
        self._on_close = on_close
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        super().__init__(nsqd, reconnect_interval=backoff_initial, **kwargs)

    def _on_connection_ready(self, conn: Any, **kwargs: Any) -> None:
        super()._on_connection_ready(conn, **kwargs)
        self.reconnect_interval = self._backoff_initial
        self._on_ready()

    def _on_connection_close(self, conn: Any, **kwargs: Any) -> None:
        # ``live``: not a duplicate connection pynsq dropped because another one won
        self._on_close(conn.id, self.conns.get(conn.id) is conn)
        super()._on_connection_close(conn, **kwargs)
        self.reconnect_interval = min(self.reconnect_interval * 2, self._backoff_max)

    def connected_other_than(self, conn_id: str) -> bool:
        """Whether a connection other than ``conn_id`` is up."""
        return any(c.connected() for c in self.conns.values() if c.id != conn_id)

    def shutdown(self) -> None:
        """Close every connection and (practically) never reconnect."""
        for conn in list(self.conns.values()):
            conn.close()
        self.reconnect_interval = 1e9


class PlainReader(nsq.Reader):
    """pynsq's Reader exactly as shipped: the benchmark's ceiling for a consumer (its
    ``message_handler`` returning True FINs the message)."""


class BoundedReader(nsq.Reader):
    """pynsq Reader with a short, bounded reconnect to direct nsqd addresses.

    pynsq reconnects direct nsqd connections only after 15 s and throttles attempts to one per
    10 s; the bridge wants to be back within ``reconnect_interval`` after an nsqd restart. It
    listens to each connection's public ``ready``/``close`` events (registered after pynsq's
    own handlers, so they run after them).
    """

    def __init__(self, reconnect_interval: float, **kwargs: Any) -> None:
        self._reconnect_interval = reconnect_interval
        self._closing = False
        self._outage = False
        super().__init__(**kwargs)

    def connect_to_nsqd(self, host: str, port: int) -> Any:
        self.connection_attempts.pop(f"{host}:{port}", None)
        if self._closing:
            return None
        conn = super().connect_to_nsqd(host, port)
        if conn is not None:  # the connect itself completes later, in the loop
            conn.on("ready", self._ready)
            conn.on("close", self._closed)
        return conn

    def _ready(self, conn: Any, **kwargs: Any) -> None:
        if self._outage and self.conns.get(conn.id) is conn:
            self._outage = False
            log.info("nsqd %s:%s back: consuming %s/%s again", conn.host, conn.port,
                     self.topic, self.channel)

    def _closed(self, conn: Any, **kwargs: Any) -> None:
        if not self._closing and not self.conns and not self._outage:
            self._outage = True
            log.warning("nsqd %s:%s unreachable: consumer of %s/%s retrying every %.1fs",
                        conn.host, conn.port, self.topic, self.channel, self._reconnect_interval)
        if not self._closing and f"{conn.host}:{conn.port}" in self.nsqd_tcp_addresses:
            self.io_loop.call_later(self._reconnect_interval, self._retry, conn.host, conn.port)

    def _retry(self, host: str, port: int) -> None:
        if self._closing or f"{host}:{port}" in self.conns:
            return
        self.connect_to_nsqd(host, port)  # a refused connect closes too: that schedules the next

    @property
    def connections(self) -> int:
        return len(self.conns)

    def close(self) -> None:
        self._closing = True
        super().close()
