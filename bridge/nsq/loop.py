"""The one tornado/asyncio loop of the process, run inside one greenlet, for pynsq.

pynsq runs on a tornado IOLoop. :class:`NsqLoop` owns the ONE asyncio/tornado loop of the process
and runs it inside one dedicated greenlet. The asyncio loop is built on
``gevent.selectors.GeventSelector``, so its wait for I/O yields to the gevent hub whether or not
the process is monkey-patched: tornado callbacks and gevent greenlets progress together (while
the loop is busy, it visits the hub once per ``HUB_SLICE`` rather than per iteration). Every
pynsq Writer/Reader is created and used inside that loop (``NsqLoop.call`` schedules a function
into it; gevent code hands data over through plain Python objects, the same OS thread).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.selectors
import tornado.ioloop

from busylamp.bridge.pynsq_adapter import quiet_pynsq_logs

__all__ = ["HUB_SLICE", "NsqLoop"]

HUB_SLICE = 0.001  # s: the longest the busy loop runs ready callbacks without visiting the hub


class _SlicedSelector(gevent.selectors.GeventSelector):
    """GeventSelector whose non-blocking polls visit the gevent hub once per ``HUB_SLICE``.

    asyncio polls with timeout 0 on every iteration that has callbacks ready: pynsq resolves a
    future (one iteration) per frame header and per frame, and each GeventSelector poll switches
    to the hub and back. Within a slice such a poll answers "nothing ready" at once instead: the
    ready callbacks run, tornado reads and writes its sockets inline meanwhile, and the hub (the
    other greenlets, the readiness of the loop's sockets) still gets a turn once per slice, or
    after the iteration that outlasts it. A poll that may block is always a real one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._slice_end = 0.0

    def select(self, timeout: float | None = None) -> list:
        if timeout is not None and timeout <= 0:
            now = time.monotonic()
            if now < self._slice_end:
                return []
            self._slice_end = now + HUB_SLICE
        else:
            self._slice_end = 0.0  # after a wait, the next busy stretch starts at the hub
        return super().select(timeout)


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
        loop = asyncio.SelectorEventLoop(_SlicedSelector())
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
