"""The bus between bridges and engines: a Protocol and the in-process implementation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]


class Bus(Protocol):
    """Updates/snapshots flow bridge -> engines; resync/mwi_query flow engines -> bridges."""

    def publish(self, message: dict[str, Any]) -> None: ...

    def subscribe(self, handler: Handler) -> None: ...

    def publish_control(self, message: dict[str, Any]) -> None: ...

    def subscribe_control(self, handler: Handler) -> None: ...


class MemoryBus:
    """In-process bus: hands the dicts over as objects, synchronous fan-out in subscribe order.

    A handler that raises is logged and skipped; the publisher never sees the exception.
    """

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._control_handlers: list[Handler] = []
        self.handler_errors = 0

    def publish(self, message: dict[str, Any]) -> None:
        self._fan_out(self._handlers, message)

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def publish_control(self, message: dict[str, Any]) -> None:
        self._fan_out(self._control_handlers, message)

    def subscribe_control(self, handler: Handler) -> None:
        self._control_handlers.append(handler)

    def _fan_out(self, handlers: list[Handler], message: dict[str, Any]) -> None:
        for handler in list(handlers):
            try:
                handler(message)
            except Exception:
                self.handler_errors += 1
                log.exception("bus handler %r failed", handler)
