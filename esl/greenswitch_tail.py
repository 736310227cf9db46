"""The connection of ``busylamp tail --esl``: greenswitch's public ``InboundESL``, reconnecting.

The only module that imports greenswitch.  It calls ``InboundESL(host, port, password, timeout)``,
``register_handle``, ``connect``, ``send`` and ``stop``, and reads the public attributes
``connected``, ``sock`` and ``sock_file``; ``tests/integration/test_dependency_api.py`` pins all of them.
What ``InboundESL`` lacks is added around those calls: a time limit on the handshake and on each
command (its waits have none), dead-peer detection (HEARTBEAT), reconnecting with capped backoff,
one log line per outage.  It connects over IPv4 only (``AF_INET``), so IPv6 literals are refused
by :func:`parse_target`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence

import gevent
import gevent.event
import gevent.queue
import greenswitch
import greenswitch.esl

from busylamp.esl.connection import TARGET_FORM, EslTarget
from busylamp.esl.session import Backoff

log = logging.getLogger(__name__)

IPV4_ONLY = "greenswitch connects over IPv4 only"
OUTER_HEADERS = ("Content-Length", "Content-Type")  # the frame's, merged in by greenswitch
UNDEF = "_undef_"


class _Failed(Exception):
    """This connection attempt or connection is over (the reason is the message)."""


class _AuthFailed(Exception):
    """FreeSWITCH answered the password with ``-ERR invalid``."""


def parse_target(text: str) -> EslTarget:
    """``PASSWORD@HOST:PORT`` or ``HOST:PORT``; ValueError for anything else, IPv6 included."""
    form = "PASSWORD@HOST:PORT or HOST:PORT, HOST an IPv4 address or a name"
    try:
        target = EslTarget.parse(text)
    except ValueError as err:
        raise ValueError(str(err).replace(TARGET_FORM, form)) from None
    if ":" in target.host:
        raise ValueError(f"IPv6 address {target.host} not supported ({IPV4_ONLY}); "
                         f"expected {form}")
    return target


def event_fields(headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The event name and its own headers (greenswitch has already percent-decoded them)."""
    fields = {name: ("" if value == UNDEF else value) for name, value in headers.items()
              if name not in OUTER_HEADERS}
    return fields.get("Event-Name", ""), fields


class GreenswitchTail:
    """Follows ``events`` on one FreeSWITCH through ``greenswitch.InboundESL`` until :meth:`stop`.

    :meth:`run` blocks the calling greenlet and calls ``on_event(name, headers)`` from it (never
    from greenswitch's greenlets); HEARTBEAT is always subscribed and delivered too.
    """

    def __init__(self, target: EslTarget, events: Sequence[str],
                 on_event: Callable[[str, dict[str, str]], None], *,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, jitter: float = 0.2,
                 dead_after: float = 60.0, command_timeout: float = 5.0,
                 connect_timeout: float = 5.0, exit_timeout: float = 1.0, poll: float = 0.25,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.target = target
        self.events = list(dict.fromkeys([*(e for e in events if e), "HEARTBEAT"]))
        self.on_event = on_event
        self.backoff = Backoff(backoff_initial, backoff_max, jitter, rng)
        self.dead_after = dead_after
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.exit_timeout = exit_timeout  # a live switch answers ``exit`` at once; Ctrl-C waits no longer
        self.poll = poll
        self.clock = clock
        self.connections = 0  # successful logins so far
        self.callback_errors = 0
        self._callback_log_at = 0.0
        self._stopping = gevent.event.Event()

    def stop(self) -> None:
        """Make :meth:`run` return (safe from ``on_event`` and from other greenlets)."""
        self._stopping.set()

    def run(self) -> None:
        """Connect, subscribe, deliver; reconnect with capped backoff; return after :meth:`stop`."""
        outage_logged = auth_logged = False
        while not self._stopping.is_set():
            try:
                conn, queue = self._open()
            except _AuthFailed:
                if not auth_logged:
                    log.error("auth failed for %s: check --esl PASSWORD@HOST:PORT", self.target)
                    auth_logged = True
                self._stopping.wait(self.backoff.longest())
                continue
            except (OSError, _Failed, greenswitch.esl.NotConnectedError) as exc:
                if not outage_logged:
                    log.warning("cannot connect to FreeSWITCH at %s: %s (retrying)", self.target,
                                exc or type(exc).__name__)
                    outage_logged = True
                self._stopping.wait(self.backoff.next_delay())
                continue
            self.connections += 1
            if outage_logged or auth_logged:
                log.info("connected to FreeSWITCH at %s", self.target)
            outage_logged = auth_logged = False
            self.backoff.reset()
            reason = None
            try:
                reason = self._pump(conn, queue)
            finally:  # None: KeyboardInterrupt (Ctrl-C); say exit then too
                self._close(conn, polite=reason in (None, "stopped"))
            if self._stopping.is_set():
                break
            log.warning("lost FreeSWITCH connection to %s: %s (reconnecting)", self.target, reason)
            outage_logged = True
            self._stopping.wait(self.backoff.next_delay())

    # -- one connection ------------------------------------------------------------------------

    def _open(self) -> tuple[greenswitch.InboundESL, gevent.queue.Queue]:
        """TCP connect, authenticate, subscribe, each within its time limit; raises on failure."""
        conn = greenswitch.InboundESL(self.target.host, self.target.port, self.target.password,
                                      timeout=self.connect_timeout)
        queue: gevent.queue.Queue = gevent.queue.Queue()

        def enqueue(event: greenswitch.esl.ESLEvent) -> None:  # runs in greenswitch's greenlet
            queue.put(event.headers)

        for name in (*self.events, "DISCONNECT"):
            conn.register_handle(name, enqueue)
        try:
            limit = gevent.Timeout(self.connect_timeout,
                                   _Failed(f"no login within {self.connect_timeout:g}s"))
            with limit:
                try:
                    conn.connect()
                except ValueError:  # what authenticate() raises for -ERR invalid
                    raise _AuthFailed from None
            reply = self._command(conn, "event plain " + " ".join(self.events))
            text = reply.headers.get("Reply-Text", "")
            if not text.startswith("+OK"):
                raise _Failed(f"event subscription refused: {text or 'no reply text'}")
        except BaseException:
            self._close(conn, polite=False)
            raise
        return conn, queue

    def _command(self, conn: greenswitch.InboundESL, command: str) -> greenswitch.esl.ESLEvent:
        """``send`` with a time limit (greenswitch's own waits forever)."""
        what = command.split(" ", 1)[0]
        with gevent.Timeout(self.command_timeout,
                            _Failed(f"no reply to {what!r} within {self.command_timeout:g}s")):
            return conn.send(command)

    def _pump(self, conn: greenswitch.InboundESL, queue: gevent.queue.Queue) -> str:
        """Deliver events until stopped or the connection ends; why it ended."""
        last = self.clock()
        while not self._stopping.is_set():
            try:
                headers = queue.get(timeout=self.poll)
            except gevent.queue.Empty:
                if not conn.connected:
                    return "connection closed"
                if self.clock() - last > self.dead_after:
                    return f"nothing received for {self.dead_after:g}s, not even a HEARTBEAT"
                continue
            last = self.clock()
            if headers.get("Content-Type") == "text/disconnect-notice":
                return "disconnect notice"
            name, fields = event_fields(headers)
            try:
                self.on_event(name, fields)
            except Exception:
                self._callback_failed(name)
        return "stopped"

    def _callback_failed(self, name: str) -> None:
        """Log a failing ``on_event`` (the first time, then at most every 10 s); go on."""
        self.callback_errors += 1
        now = self.clock()
        if self.callback_errors == 1 or now - self._callback_log_at >= 10.0:
            self._callback_log_at = now
            log.exception("tail on_event failed (%s); further failures are logged at most "
                          "every 10s", name)

    def _close(self, conn: greenswitch.InboundESL, polite: bool) -> None:
        """``stop()`` (``exit`` first when polite); never hangs on a dead or half-open peer."""
        if polite and conn.connected:
            with contextlib.suppress(gevent.Timeout, _Failed):
                with gevent.Timeout(min(self.exit_timeout, self.command_timeout), _Failed("exit")):
                    conn.stop()
                return
        sock = getattr(conn, "sock", None)
        if sock is None:
            return
        # stop() joins the reader, which only ends at EOF: make it one, whatever the peer does
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        if getattr(conn, "sock_file", None) is None:  # connect() failed before starting them
            sock.close()
            return
        try:
            with gevent.Timeout(self.command_timeout, _Failed("stop")):
                conn.stop()
        except _Failed:
            log.debug("greenswitch stop() did not finish for %s", self.target)
            sock.close()

