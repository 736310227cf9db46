"""Inbound event-socket client over greenswitch, with reconnect, timeouts and dead-peer detection.

``_Session`` subclasses ``greenswitch.esl.InboundESL`` (its ``authenticate`` and ``send`` command
API are kept) and replaces the readline parser with one ``recv(65536)`` loop feeding
``FrameParser``.  ``EslClient`` owns one supervisor greenlet that reconnects forever.
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
from greenswitch.esl import InboundESL, NotConnectedError

from esl.protocol import EVENT_PLAIN, EslEvent, EslFrame, FrameParser, parse_event

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


class _Session(InboundESL):
    """One TCP connection: greenswitch's connect/auth/send API on top of FrameParser."""

    def __init__(self, target: EslTarget, on_frame_event: Callable[[EslEvent], None],
                 on_corrupt: Callable[[int], None], connect_timeout: float,
                 dead_after: float) -> None:
        super().__init__(target.host, target.port, target.password, timeout=connect_timeout)
        self._on_event = on_frame_event
        self._on_corrupt = on_corrupt
        self._dead_after = dead_after
        self._parser = FrameParser()
        self._send_lock = gevent.lock.Semaphore()
        self.closed = gevent.event.Event()
        self.close_reason = ""
        self.sock: gevent.socket.socket | None = None

    def connect(self) -> None:
        """TCP connect (IPv4/IPv6, keepalive), wait for auth/request, authenticate."""
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)
        sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(pysocket, name):
                sock.setsockopt(pysocket.IPPROTO_TCP, getattr(pysocket, name), value)
        sock.settimeout(self._dead_after)
        self.sock = sock
        self.connected = True
        self._receive_events_greenlet = gevent.spawn(self.receive_events)
        if not self._auth_request_event.wait(self.timeout):
            self.close(f"no auth/request within {self.timeout:.1f}s")
            raise EslError(self.close_reason)
        if not self.connected:
            raise EslError(self.close_reason or "closed before auth/request")
        try:
            self.authenticate()
        except ValueError:
            self.close("auth failed")
            raise EslAuthError("-ERR invalid") from None

    def send(self, data: str, timeout: float | None = None) -> EslFrame:  # type: ignore[override]
        """Send one command and wait for its reply frame (FIFO)."""
        if not self.connected or self.sock is None:
            raise EslError("not connected")
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        with self._send_lock:
            self._commands_sent.append(result)
            try:
                self.sock.sendall((data + "\n\n").encode("utf-8"))
            except OSError as exc:
                self.close(f"send failed: {exc}")
        try:
            return result.get(timeout=timeout if timeout is not None else self.timeout)
        except gevent.Timeout:
            raise EslError(f"timeout waiting for reply to {data.split(' ', 1)[0]!r}") from None
        except NotConnectedError as exc:
            raise EslError(str(exc) or "connection lost") from None

    def receive_events(self) -> None:
        """Reader greenlet: recv → FrameParser → replies to waiters, events to the callback."""
        reason = "closed by server"
        sock = self.sock
        parser = self._parser
        try:
            while self.connected:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    reason = f"no data for {self._dead_after:g}s (dead peer)"
                    break
                except OSError as exc:
                    reason = f"read failed: {exc}"
                    break
                if not data:
                    break
                before = parser.corrupt_frames
                frames = parser.feed(data)
                if parser.corrupt_frames != before:
                    self._on_corrupt(parser.corrupt_frames - before)
                for frame in frames:
                    self._dispatch(frame)
        finally:
            self.close(reason)

    def _dispatch(self, frame: EslFrame) -> None:
        ctype = frame.content_type
        if ctype == EVENT_PLAIN:
            event = parse_event(frame)
            if event is None:
                self._on_corrupt(1)
            else:
                self._on_event(event)
        elif ctype in ("command/reply", "api/response"):
            if self._commands_sent:
                self._commands_sent.pop(0).set(frame)
        elif ctype == "auth/request":
            self._auth_request_event.set()
        elif ctype == "text/disconnect-notice":
            if frame.headers.get("Content-Disposition") != "linger":
                self.close_reason = "disconnect notice"
        elif ctype == "text/rude-rejection":
            self.close("rejected by server ACL: " + frame.body.decode("utf-8", "replace").strip())

    def close(self, reason: str = "closed") -> None:
        """Idempotent: fail pending commands, close the socket, signal ``closed``."""
        if self.closed.is_set():
            return
        self.connected = False
        self.close_reason = self.close_reason or reason
        pending, self._commands_sent = self._commands_sent, []
        for result in pending:
            result.set_exception(NotConnectedError(self.close_reason))
        self._auth_request_event.set()
        if self.sock is not None:
            self.sock.close()
        self.closed.set()

    def stop(self) -> None:
        """Polite ``exit`` when possible, then close."""
        if self.connected:
            with contextlib.suppress(EslError):
                self.send("exit", timeout=min(1.0, self.timeout))
        self.close("stopped")


class EslClient:
    """Keeps one inbound ESL connection alive, subscribed to ``events``, forever."""

    def __init__(self, target: EslTarget, events: Sequence[str],
                 on_event: Callable[[EslEvent], None], *,
                 on_connect: Callable[[EslClient], None] | None = None,
                 on_disconnect: Callable[[EslClient, str], None] | None = None,
                 on_connect_failed: Callable[[EslClient, str], None] | None = None,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, jitter: float = 0.2,
                 dead_after: float = 60.0, command_timeout: float = 5.0,
                 connect_timeout: float = 5.0) -> None:
        self.target = target
        names = [e for e in events if e]
        if "HEARTBEAT" not in names and "ALL" not in names:
            names.append("HEARTBEAT")
        self.events = names
        self.on_event = on_event
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_connect_failed = on_connect_failed
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.dead_after = dead_after
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.state = "disconnected"
        self.core_uuid: str | None = None
        self.counters = {"events": 0, "corrupt_frames": 0, "reconnects": 0,
                         "command_timeouts": 0, "callback_errors": 0}
        self._session: _Session | None = None
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
        session = self._session
        if session is not None:
            session.stop()
        if self._supervisor is not None:
            self._supervisor.kill(block=True, timeout=2.0)
            self._supervisor = None
        if self._session is not None:  # a session the supervisor was opening when killed
            self._session.close("stopped")
            self._session = None
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
        session = self._session
        if session is None or not session.connected:
            raise EslError(f"not connected to {self.target}")
        try:
            return session.send(command, timeout if timeout is not None else self.command_timeout)
        except EslError as exc:
            if "timeout" in str(exc):
                self.counters["command_timeouts"] += 1
            raise

    def _handle_event(self, event: EslEvent) -> None:
        self.counters["events"] += 1
        if self.core_uuid is None:
            self.core_uuid = event.headers.get("Core-UUID")
        try:
            self.on_event(event)
        except Exception:
            self.counters["callback_errors"] += 1
            now = time.monotonic()
            if now - self._callback_log_at >= 10.0:
                self._callback_log_at = now
                log.exception("ESL on_event callback failed (%s); further failures are "
                              "logged at most every 10s", event.name)

    def _count_corrupt(self, n: int) -> None:
        self.counters["corrupt_frames"] += n

    def _sleep(self, delay: float) -> None:
        gevent.sleep(delay * (1 + random.uniform(-self.jitter, self.jitter)))

    def _run(self) -> None:
        backoff = self.backoff_initial
        outage_logged = False
        auth_logged = False
        ever_connected = False
        while not self._stopping:
            if self.state != "auth_failed":  # stays auth_failed until a login succeeds
                self.state = "connecting"
            session = _Session(self.target, self._handle_event, self._count_corrupt,
                               self.connect_timeout, self.dead_after)
            self._session = session
            try:
                session.connect()
                session.send("event plain " + " ".join(self.events), self.command_timeout)
            except EslAuthError:
                self.state = "auth_failed"
                if not auth_logged:
                    log.error("auth failed for %s: check --esl PASSWORD@HOST:PORT", self.target)
                    auth_logged = True
                session.close("auth failed")
                self._connect_failed("auth failed")
                self._sleep(self.backoff_max)
                continue
            except (OSError, EslError, NotConnectedError) as exc:
                session.close(str(exc))
                self.state = "disconnected"
                if not outage_logged:
                    log.warning("cannot connect to FreeSWITCH at %s: %s (retrying)",
                                self.target, exc or type(exc).__name__)
                    outage_logged = True
                self._connect_failed(str(exc) or type(exc).__name__)
                self._sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            if ever_connected:
                self.counters["reconnects"] += 1
            if outage_logged or auth_logged:
                log.info("connected to FreeSWITCH at %s", self.target)
            ever_connected = True
            outage_logged = auth_logged = False
            backoff = self.backoff_initial
            self.core_uuid = None
            self._learn_core_uuid(session)
            self.state = "connected"
            if self.on_connect is not None:
                try:
                    self.on_connect(self)
                except Exception:
                    log.exception("ESL on_connect callback failed")
            session.closed.wait()
            if self._stopping:
                break
            reason = session.close_reason
            self.state = "disconnected"
            log.warning("lost FreeSWITCH connection to %s: %s (reconnecting)", self.target, reason)
            outage_logged = True
            if self.on_disconnect is not None:
                try:
                    self.on_disconnect(self, reason)
                except Exception:
                    log.exception("ESL on_disconnect callback failed")
            self._sleep(backoff)
        self.state = "stopped"

    def _connect_failed(self, reason: str) -> None:
        if self.on_connect_failed is not None:
            try:
                self.on_connect_failed(self, reason)
            except Exception:
                log.exception("ESL on_connect_failed callback failed")

    def _learn_core_uuid(self, session: _Session) -> None:
        try:
            frame = session.send("api global_getvar core_uuid", self.command_timeout)
        except EslError:
            return
        text = frame.body.decode("utf-8", "replace").strip()
        if text and not text.startswith("-ERR"):
            self.core_uuid = text
