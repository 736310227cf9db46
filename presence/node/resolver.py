"""Thin gevent adapter: host names of NOTIFY destinations looked up off the event loop.

The engine asks for names (``PresenceEngine.names_to_resolve``); this looks each up with a
deadline, at most ``max_in_flight`` at a time (the rest wait in a bounded queue), keeps answers —
addresses and failures alike — for ``ttl`` seconds, and calls ``on_result(name, address or
None)``. Lookups go to the system resolver through gevent's resolver (a thread pool: the loop
never blocks), or, with ``server``, straight to that DNS server over c-ares.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable

import gevent
import gevent.pool

log = logging.getLogger(__name__)

__all__ = ["Resolver"]


class Resolver:
    """Bounded, cached, deadline-bound name lookups for the presence node."""

    def __init__(self, on_result: Callable[[str, str | None], None], *,
                 server: tuple[str, int] | None = None, timeout: float = 2.0,
                 max_in_flight: int = 16, ttl: float = 60.0, max_queue: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_result = on_result
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.ttl = ttl
        self.max_queue = max_queue
        self.clock = clock
        self.in_flight = 0
        self.counters = {"resolved": 0, "failed": 0, "timeout": 0, "cached": 0, "overflow": 0}
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._queue: deque[str] = deque()
        self._group = gevent.pool.Group()
        self._backend = _backend(server, timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def lookup(self, name: str) -> None:
        """Resolve ``name``; ``on_result`` is called with the answer (at once when cached)."""
        cached = self._cache.get(name)
        if cached is not None:
            if cached[1] > self.clock():
                self.counters["cached"] += 1
                self.on_result(name, cached[0])
                return
            del self._cache[name]
        if self.in_flight < self.max_in_flight:
            self._start(name)
        elif len(self._queue) < self.max_queue:
            self._queue.append(name)
        else:
            self.counters["overflow"] += 1
            self.on_result(name, None)

    def close(self) -> None:
        self._queue.clear()
        self._group.kill(block=False)

    def _start(self, name: str) -> None:
        self.in_flight += 1
        self._group.spawn(self._run, name)

    def _run(self, name: str) -> None:
        address: str | None = None
        deadline = gevent.Timeout(self.timeout)
        deadline.start()
        try:
            infos = self._backend.getaddrinfo(name, None, 0, socket.SOCK_DGRAM)
            address = _pick(infos)
            self.counters["resolved" if address else "failed"] += 1
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            self.counters["timeout"] += 1
        except (OSError, UnicodeError, ValueError):
            self.counters["failed"] += 1
        finally:
            deadline.close()
            self.in_flight -= 1
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[name] = (address, self.clock() + self.ttl)
        try:
            self.on_result(name, address)
        except Exception:
            log.exception("handling the lookup of %s failed", name)
        while self._queue and self.in_flight < self.max_in_flight:
            self._start(self._queue.popleft())


def _pick(infos: list) -> str | None:
    """The first IPv4 address (the usual SIP listener), else the first address at all."""
    for family, _, _, _, sockaddr in infos:
        if family == socket.AF_INET:
            return sockaddr[0]
    return infos[0][4][0] if infos else None


def _backend(server: tuple[str, int] | None, timeout: float):
    if server is None:
        return gevent.get_hub().resolver
    from gevent.resolver.ares import Resolver as AresResolver

    host, port = server
    # c-ares's own timeout is longer: the deadline in Resolver._run is the one that counts
    return AresResolver(use_environ=False, servers=[host], udp_port=port, tcp_port=port,
                        timeout=timeout + 1.0, tries=1)
