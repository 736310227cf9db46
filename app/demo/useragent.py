"""The watcher user agent on a gevent UDP socket: the thin I/O edge of
:class:`app.demo.watcher.WatcherCore`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import gevent.event
from gevent import socket

from busylamp.app.demo.lamps import LampKey, LampState
from busylamp.app.demo.watcher import ChangeCallback, WatcherCore

log = logging.getLogger(__name__)


class WatcherUA:
    """The watcher on a gevent UDP socket: one reader greenlet and one timer greenlet."""

    def __init__(self, local_host: str = "127.0.0.1", local_port: int = 0,
                 server: tuple[str, int] = ("127.0.0.1", 5060), user: str = "demo-watcher",
                 domain: str | None = None, *, on_change: ChangeCallback | None = None,
                 t1: float = 0.5, t2: float = 4.0, timer_f: float | None = None,
                 retry_interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.local_host = local_host
        self.local_port = local_port
        self.server = server
        self.user = user
        self.domain = domain or server[0]
        self.on_change = on_change
        self.clock = clock
        self._options = {"t1": t1, "t2": t2, "timer_f": timer_f, "retry_interval": retry_interval}
        self.core: WatcherCore | None = None
        self._sock: socket.socket | None = None
        self._wake = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None, "start() first"
        return self._sock.getsockname()[:2]

    @property
    def lamps(self) -> dict[LampKey, LampState]:
        return self.core.lamps if self.core is not None else {}

    def start(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.local_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((self.local_host, self.local_port))
        self._sock = sock
        self.core = WatcherCore(self.address, self.server, self.user, self.domain,
                                on_change=self._changed, **self._options)
        self._greenlets = [gevent.spawn(self._read_loop), gevent.spawn(self._timer_loop)]
        return self.address

    def subscribe(self, presentity: str, event: str = "dialog", expires: int = 600) -> LampKey:
        key = self._core.subscribe(presentity, event, expires, self.clock())
        self._flush()
        return key

    def refresh(self, key: LampKey) -> None:
        self._core.refresh(key, self.clock())
        self._flush()

    def unsubscribe(self, key: LampKey) -> None:
        self._core.unsubscribe(key, self.clock())
        self._flush()

    def stop(self, timeout: float = 2.0) -> None:
        """Unsubscribe everything, wait (at most ``timeout``) for the answers, close."""
        if self.core is None:
            return
        for key in list(self.core.lamps):
            self.unsubscribe(key)
        deadline = self.clock() + timeout
        while self.core.busy() and self.clock() < deadline:
            gevent.sleep(0.02)
        gevent.killall(self._greenlets, block=True, timeout=1.0)
        self._greenlets = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def _core(self) -> WatcherCore:
        if self.core is None:
            raise RuntimeError("WatcherUA.start() first")
        return self.core

    def _changed(self, key: LampKey, lamp: LampState) -> None:
        if self.on_change is not None:
            try:
                self.on_change(key, lamp)
            except Exception:
                log.exception("watcher on_change callback failed")

    def _flush(self) -> None:
        sock = self._sock
        if sock is None or self.core is None:
            return
        for dest, data in self.core.datagrams_to_send():
            try:
                sock.sendto(data, dest)
            except OSError as exc:
                log.debug("send to %s failed: %s", dest, exc)
        self._wake.set()

    def _read_loop(self) -> None:
        while self._sock is not None:
            try:
                data, source = self._sock.recvfrom(65535)
            except OSError:
                return
            self._core.receive(data, source[:2], self.clock())
            self._flush()

    def _timer_loop(self) -> None:
        while self._sock is not None:
            self._wake.clear()
            deadline = self._core.get_timer()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            self._wake.wait(timeout)
            now = self.clock()
            if deadline is not None and now >= deadline:
                self._core.handle_timer(now)
                self._flush()
