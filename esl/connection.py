"""Inbound event-socket client: gevent at the edges of the sans-IO :class:`esl.session.EslSession`.

Per :class:`EslClient`: one supervisor greenlet (connect, handshake, ``on_connect``, wait for the
end, back off, again, forever).  Per connection: one reader greenlet (``recv`` -> session) and
one timer greenlet that sleeps until ``session.get_timer()`` (woken when a command brings the
deadline forward) and calls ``handle_timer``.  Commands are written by the greenlet that issues
them and wait on an ``AsyncResult`` the session's outcome event settles: a reply, a timeout, or
the end of the connection, so ``api()`` never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket as pysocket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import gevent
import gevent.event
import gevent.lock
import gevent.socket

from busylamp.esl.protocol import EslEvent, EslFrame
from busylamp.esl.session import (
    Authenticated,
    AuthFailed,
    Backoff,
    Closed,
    CommandFailed,
    CommandReply,
    CommandTimedOut,
    CorruptFrames,
    EslSession,
    EventReceived,
)

log = logging.getLogger(__name__)

TARGET_FORM = "PASSWORD@HOST:PORT, HOST:PORT or [IPv6]:PORT"


class EslError(Exception):
    """A command failed: timeout, not connected, or the connection died while waiting."""


class EslAuthError(EslError):
    """The server answered ``-ERR invalid`` to ``auth``."""


@dataclass(frozen=True)
class EslTarget:
    host: str
    port: int
    password: str

    @classmethod
    def parse(cls, text: str) -> EslTarget:
        """``PASSWORD@HOST:PORT``, ``HOST:PORT`` (password ClueCon) or ``[::1]:8021``."""
        password, at, hostport = text.rpartition("@")
        if not at:
            password = "ClueCon"
        if hostport.startswith("["):
            host, close, rest = hostport[1:].partition("]")
            if not close or not rest.startswith(":"):
                raise ValueError(f"bad ESL target {text!r}: expected {TARGET_FORM}")
            port_text = rest[1:]
        else:
            host, colon, port_text = hostport.rpartition(":")
            if not colon or ":" in host:
                raise ValueError(f"bad ESL target {text!r}: expected {TARGET_FORM}")
        if not host or not password:
            raise ValueError(f"bad ESL target {text!r}: expected {TARGET_FORM}")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad ESL target {text!r}: expected {TARGET_FORM}") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad ESL target {text!r}: port out of range; expected {TARGET_FORM}")
        return cls(host, port, password)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Connection:
    """One TCP connection driving one :class:`EslSession`: a reader and a timer greenlet."""

    def __init__(self, client: EslClient, sock: gevent.socket.socket) -> None:
        self.sock = sock
        self.client = client
        self.clock = client.clock
        self.session = EslSession(client.target.password, self.clock(),
                                  dead_after=client.dead_after, auth_timeout=client.connect_timeout,
                                  command_timeout=client.command_timeout)
        self.auth: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self.closed = gevent.event.Event()
        self.close_reason = ""
        self._waiters: dict[int, gevent.event.AsyncResult] = {}
        self._send_lock = gevent.lock.Semaphore()
        self._wake = gevent.event.Event()
        self._reader = gevent.spawn(self._read)
        self._timer = gevent.spawn(self._run_timer)

    @property
    def connected(self) -> bool:
        return self.session.state == "authenticated"

    def command(self, send: Callable[[EslSession, float], int], what: str,
                timeout: float | None) -> EslFrame:
        """Queue a command with ``send(session, now)``, write it, wait for its outcome."""
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        with self._send_lock:
            if not self.connected:
                raise EslError(f"not connected ({self.close_reason or self.session.state})")
            command_id = send(self.session, self.clock())
            self._waiters[command_id] = result
            self._wake.set()  # the timer may have to wake sooner for this one
            self._write_locked()
        self._process()
        limit = self.client.command_timeout if timeout is None else timeout
        try:  # the session settles every command; the margin only guards against a bug
            return result.get(timeout=limit + 5.0)
        except gevent.Timeout:
            raise EslError(f"timeout waiting for reply to {what!r}") from None

    def close(self, reason: str) -> None:
        """Idempotent: end the session, fail pending commands, close the socket."""
        self.session.close(reason)
        self._process()

    def stop(self) -> None:
        """Polite ``exit`` when possible, then close."""
        if self.connected:
            with contextlib.suppress(EslError):
                self.command(lambda s, now: s.send_command("exit", now, 1.0), "exit",
                             min(1.0, self.client.command_timeout))
        self.close("stopped")

    # -- greenlets -----------------------------------------------------------------------------

    def _read(self) -> None:
        sock, session, clock = self.sock, self.session, self.clock
        try:
            while not session.closed:
                try:
                    data = sock.recv(65536)
                except OSError as exc:
                    session.connection_lost(f"read failed: {exc}")
                    break
                session.receive_data(data, clock())
                self._process()
        finally:
            session.connection_lost("reader stopped")  # no-op unless killed
            self._process()

    def _run_timer(self) -> None:
        session, clock, wake = self.session, self.clock, self._wake
        while True:
            wake.clear()
            deadline = session.get_timer()
            if deadline is None:
                return
            now = clock()
            if now >= deadline:
                session.handle_timer(now)
                self._process()
            else:
                wake.wait(deadline - now)

    # -- session output ------------------------------------------------------------------------

    def _write_locked(self) -> None:
        data = self.session.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.session.connection_lost(f"send failed: {exc}")

    def _process(self) -> None:
        """Act on the session's events; write what it wants written."""
        session = self.session
        if session.wants_to_send:  # the answer to auth/request (commands write their own)
            with self._send_lock:
                self._write_locked()
        client = self.client
        for event in session.next_events():
            kind = type(event)
            if kind is EventReceived:
                client._handle_event(event.event)
            elif kind is CommandReply:
                waiter = self._waiters.pop(event.command_id, None)
                if waiter is not None:
                    waiter.set(event.frame)
            elif kind is CommandTimedOut:
                client.counters["command_timeouts"] += 1
                waiter = self._waiters.pop(event.command_id, None)
                if waiter is not None:
                    waiter.set_exception(
                        EslError(f"timeout waiting for reply to {event.command!r}"))
            elif kind is CommandFailed:
                waiter = self._waiters.pop(event.command_id, None)
                if waiter is not None:
                    waiter.set_exception(EslError(event.reason or "connection lost"))
            elif kind is CorruptFrames:
                client.counters["corrupt_frames"] += event.count
            elif kind is Authenticated:
                self.auth.set(True)
            elif kind is AuthFailed:
                self.auth.set_exception(EslAuthError(event.reply or "-ERR invalid"))
            elif kind is Closed:
                self._closed(event.reason)

    def _closed(self, reason: str) -> None:
        self.close_reason = reason
        if not self.auth.ready():
            self.auth.set_exception(EslError(reason))
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed.set()
        self._wake.set()


class EslClient:
    """Keeps one inbound ESL connection alive, subscribed to ``events``, forever."""

    def __init__(self, target: EslTarget, events: Sequence[str],
                 on_event: Callable[[EslEvent], None], *,
                 on_connect: Callable[[EslClient], None] | None = None,
                 on_disconnect: Callable[[EslClient, str], None] | None = None,
                 on_connect_failed: Callable[[EslClient, str], None] | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, jitter: float = 0.2,
                 dead_after: float = 60.0, command_timeout: float = 5.0,
                 connect_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.target = target
        names = [e for e in events if e]
        if "HEARTBEAT" not in names and "ALL" not in names:
            names.append("HEARTBEAT")
        self.events = names
        self.on_event = on_event
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_connect_failed = on_connect_failed
        self.backoff = Backoff(backoff_initial, backoff_max, jitter, rng)
        self.dead_after = dead_after
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.state = "disconnected"
        self.core_uuid: str | None = None
        self.counters = {"events": 0, "corrupt_frames": 0, "reconnects": 0,
                         "connect_failures": 0, "command_timeouts": 0, "callback_errors": 0}
        self._connection: _Connection | None = None
        self._supervisor: gevent.Greenlet | None = None
        self._stopping = False
        self._callback_log_at = 0.0

    # -- public API -----------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor is None:
            self._stopping = False
            self._supervisor = gevent.spawn(self._run)

    def stop(self) -> None:
        """Say ``exit`` if connected, close the socket, end the supervisor."""
        self._stopping = True
        connection = self._connection
        if connection is not None:
            connection.stop()
        if self._supervisor is not None:
            self._supervisor.kill(block=True, timeout=2.0)
            self._supervisor = None
        if self._connection is not None:  # one the supervisor was opening when killed
            self._connection.close("stopped")
            self._connection = None
        self.state = "stopped"

    def api(self, command: str, timeout: float | None = None) -> str:
        """Run ``api <command>``; the response body as text."""
        frame = self._command(f"api {command}", timeout)
        return frame.body.decode("utf-8", "replace")

    def send_event(self, name: str, headers: Mapping[str, str], body: str | None = None) -> str:
        """``sendevent NAME`` with headers (values must not contain newlines); the Reply-Text."""
        lines = [f"sendevent {name}"]
        for key, value in headers.items():
            if "\n" in key or "\n" in value or "\r" in value:
                raise ValueError(f"header {key!r} contains a newline")
            lines.append(f"{key}: {value}")
        command = "\n".join(lines)
        if body:
            command += f"\nContent-Length: {len(body.encode('utf-8'))}\n\n{body}"
        frame = self._command(command, None)
        reply = frame.headers.get("Reply-Text", "")
        if reply.startswith("-ERR"):
            raise EslError(f"sendevent {name}: {reply}")
        return reply

    # -- internals ------------------------------------------------------------------------

    def _command(self, command: str, timeout: float | None) -> EslFrame:
        connection = self._connection
        if connection is None or not connection.connected:
            raise EslError(f"not connected to {self.target}")
        what = command.split(" ", 1)[0].split("\n", 1)[0]
        return connection.command(lambda s, now: s.send_command(command, now, timeout), what,
                                  timeout)

    def _handle_event(self, event: EslEvent) -> None:
        self.counters["events"] += 1
        if self.core_uuid is None:
            self.core_uuid = event.headers.get("Core-UUID")
        try:
            self.on_event(event)
        except Exception:
            self.counters["callback_errors"] += 1
            now = self.clock()
            if now - self._callback_log_at >= 10.0 or self.counters["callback_errors"] == 1:
                self._callback_log_at = now
                log.exception("ESL on_event callback failed (%s); further failures are "
                              "logged at most every 10s", event.name)

    def _open(self) -> _Connection:
        """TCP connect (IPv4/IPv6, keepalive), authenticate, subscribe; raises on failure."""
        sock = gevent.socket.create_connection((self.target.host, self.target.port),
                                               timeout=self.connect_timeout)
        sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)
        sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(pysocket, name):
                sock.setsockopt(pysocket.IPPROTO_TCP, getattr(pysocket, name), value)
        sock.settimeout(None)  # the session's timers decide when a silent peer is dead
        connection = _Connection(self, sock)
        self._connection = connection
        try:  # the session's auth timeout settles it; the margin only guards against a bug
            connection.auth.get(timeout=self.connect_timeout + 5.0)
        except gevent.Timeout:
            connection.close(f"no auth within {self.connect_timeout:g}s")
            raise EslError(connection.close_reason) from None
        connection.command(lambda s, now: s.subscribe(self.events, now), "event", None)
        return connection

    def _run(self) -> None:
        outage_logged = False
        auth_logged = False
        ever_connected = False
        while not self._stopping:
            if self.state != "auth_failed":  # stays auth_failed until a login succeeds
                self.state = "connecting"
            try:
                connection = self._open()
            except EslAuthError:
                self.counters["connect_failures"] += 1
                self._drop_connection("auth failed")
                self.state = "auth_failed"
                if not auth_logged:
                    log.error("auth failed for %s: check --esl PASSWORD@HOST:PORT", self.target)
                    auth_logged = True
                self._connect_failed("auth failed")
                gevent.sleep(self.backoff.longest())
                continue
            except (OSError, EslError) as exc:
                self.counters["connect_failures"] += 1
                self._drop_connection(str(exc))
                self.state = "disconnected"
                if not outage_logged:
                    log.warning("cannot connect to FreeSWITCH at %s: %s (retrying)",
                                self.target, exc or type(exc).__name__)
                    outage_logged = True
                self._connect_failed(str(exc) or type(exc).__name__)
                gevent.sleep(self.backoff.next_delay())
                continue
            if ever_connected:
                self.counters["reconnects"] += 1
            if outage_logged or auth_logged:
                log.info("connected to FreeSWITCH at %s", self.target)
            ever_connected = True
            outage_logged = auth_logged = False
            self.backoff.reset()
            self.core_uuid = None
            self._learn_core_uuid()
            self.state = "connected"
            if self.on_connect is not None:
                try:
                    self.on_connect(self)
                except Exception:
                    log.exception("ESL on_connect callback failed")
            connection.closed.wait()
            if self._stopping:
                break
            reason = connection.close_reason
            self.state = "disconnected"
            log.warning("lost FreeSWITCH connection to %s: %s (reconnecting)", self.target, reason)
            outage_logged = True
            if self.on_disconnect is not None:
                try:
                    self.on_disconnect(self, reason)
                except Exception:
                    log.exception("ESL on_disconnect callback failed")
            gevent.sleep(self.backoff.next_delay())
        self.state = "stopped"

    def _connect_failed(self, reason: str) -> None:
        if self.on_connect_failed is not None:
            try:
                self.on_connect_failed(self, reason)
            except Exception:
                log.exception("ESL on_connect_failed callback failed")

    def _drop_connection(self, reason: str) -> None:
        if self._connection is not None:
            self._connection.close(reason)

    def _learn_core_uuid(self) -> None:
        try:
            text = self.api("global_getvar core_uuid").strip()
        except EslError:
            return
        if text and not text.startswith("-ERR"):
            self.core_uuid = text
