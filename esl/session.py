"""Inbound event-socket session, sans-IO: bytes in, bytes and events out, timers on a given clock.

The session never touches a socket or a clock of its own.  The driver feeds what it read with
``receive_data(data, now)``, writes what ``data_to_send()`` returns, calls ``handle_timer(now)``
once ``now`` reaches ``get_timer()`` and reads the outcome with ``next_events()``.

Life of a session: the server greets with ``auth/request``; the session answers ``auth
<password>`` by itself.  ``+OK accepted`` -> :class:`Authenticated`; anything else ->
:class:`AuthFailed` then :class:`Closed`.  Commands (``send_command``) are answered in the order
they were sent (mod_event_socket handles one socket's commands one at a time), so replies
(``command/reply`` and ``api/response``) are matched first in, first out.  Every command ends in
exactly one of :class:`CommandReply`, :class:`CommandTimedOut` or :class:`CommandFailed`; a command
that timed out keeps its place in the queue, so its late reply is dropped rather than handed to
the next command.  No byte from the server for ``dead_after`` seconds (HEARTBEAT, subscribed by
``subscribe``, comes every 20 s) -> :class:`DeadPeer` then :class:`Closed`.
"""

from __future__ import annotations

import heapq
import random as _random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from busylamp.esl.protocol import EVENT_PLAIN, EslEvent, EslFrame, FrameParser, parse_event

AUTH_OK = "+OK accepted"


# -- events the session hands out -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Authenticated:
    """The server accepted the password: commands may be sent."""


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """The server refused the password (``reply`` is its Reply-Text); a Closed follows."""

    reply: str


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The reply frame to command ``command_id`` (``command/reply`` or ``api/response``)."""

    command_id: int
    frame: EslFrame


@dataclass(frozen=True, slots=True)
class CommandTimedOut:
    """No reply to ``command_id`` by its deadline; a late reply will be dropped."""

    command_id: int
    command: str


@dataclass(frozen=True, slots=True)
class CommandFailed:
    """The session closed before ``command_id`` was answered."""

    command_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class EventReceived:
    """A ``text/event-plain`` event."""

    event: EslEvent


@dataclass(frozen=True, slots=True)
class CorruptFrames:
    """``count`` frames could not be parsed and were skipped."""

    count: int


@dataclass(frozen=True, slots=True)
class DisconnectNotice:
    """``text/disconnect-notice`` without linger: the server is closing; a Closed follows."""


@dataclass(frozen=True, slots=True)
class DeadPeer:
    """Nothing received for ``idle`` seconds; a Closed follows."""

    idle: float


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over (always the last event); the driver closes the socket."""

    reason: str


SessionEvent = (Authenticated | AuthFailed | CommandReply | CommandTimedOut | CommandFailed
                | EventReceived | CorruptFrames | DisconnectNotice | DeadPeer | Closed)


class EslSession:
    """One inbound ESL connection's protocol state; see the module docstring."""

    def __init__(self, password: str, now: float, *, dead_after: float = 60.0,
                 auth_timeout: float = 5.0, command_timeout: float = 5.0,
                 parser: FrameParser | None = None) -> None:
        self.password = password
        self.dead_after = dead_after
        self.command_timeout = command_timeout
        self.state = "awaiting_auth_request"  # -> authenticating -> authenticated -> closed
        self.close_reason = ""
        self._parser = parser or FrameParser()
        self._out: list[bytes] = []
        self._events: list[SessionEvent] = []
        self._last_receive = now
        self._auth_timeout = auth_timeout
        self._auth_deadline: float | None = now + auth_timeout
        self._next_id = 0
        # FIFO of (command id, command word) awaiting a reply; None id: the session's own auth
        self._waiting: deque[tuple[int | None, str]] = deque()
        self._live: dict[int, str] = {}  # ids without an outcome yet
        self._deadlines: list[tuple[float, int]] = []  # heap; entries of finished ids are stale

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket (b"" means the server closed it)."""
        if self.state == "closed":
            return
        if not data:
            self.connection_lost("closed by server")
            return
        self._last_receive = now
        parser = self._parser
        before = parser.corrupt_frames
        frames = parser.feed(data)
        if parser.corrupt_frames != before:
            self._events.append(CorruptFrames(parser.corrupt_frames - before))
        for frame in frames:
            self._handle_frame(frame)
            if self.state == "closed":
                return

    def send_command(self, command: str, now: float, timeout: float | None = None) -> int:
        """Queue ``command`` (no trailing blank line); its id for the outcome events."""
        if self.state != "authenticated":
            raise RuntimeError(f"cannot send a command in state {self.state}")
        self._next_id += 1
        command_id = self._next_id
        word = command.split(" ", 1)[0].split("\n", 1)[0]
        self._waiting.append((command_id, word))
        self._live[command_id] = word
        deadline = now + (self.command_timeout if timeout is None else timeout)
        heapq.heappush(self._deadlines, (deadline, command_id))
        self._out.append(command.encode("utf-8") + b"\n\n")
        return command_id

    def subscribe(self, events: Sequence[str], now: float, timeout: float | None = None) -> int:
        """``event plain ...`` for ``events`` plus HEARTBEAT (the dead-peer detection's tick)."""
        names = [e for e in events if e]
        if "HEARTBEAT" not in names and "ALL" not in names:
            names.append("HEARTBEAT")
        return self.send_command("event plain " + " ".join(names), now, timeout)

    def connection_lost(self, reason: str) -> None:
        """The transport failed or closed: fail what is pending, end the session."""
        self._close(reason)

    def close(self, reason: str = "closed") -> None:
        """End the session from our side (the driver then closes the socket)."""
        self._close(reason)

    # -- timers --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next absolute time ``handle_timer`` has work to do; None once closed."""
        if self.state == "closed":
            return None
        deadline = self._last_receive + self.dead_after
        if self._auth_deadline is not None:
            deadline = min(deadline, self._auth_deadline)
        heap = self._deadlines
        while heap and heap[0][1] not in self._live:
            heapq.heappop(heap)
        if heap:
            deadline = min(deadline, heap[0][0])
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fire whatever is due at ``now``: auth timeout, command timeouts, dead peer."""
        if self.state == "closed":
            return
        if self._auth_deadline is not None and now >= self._auth_deadline:
            what = "auth/request" if self.state == "awaiting_auth_request" else "reply to auth"
            self._close(f"no {what} within {self._auth_timeout:.1f}s")
            return
        idle = now - self._last_receive
        if idle >= self.dead_after:
            self._events.append(DeadPeer(idle))
            self._close(f"no data for {self.dead_after:g}s (dead peer)")
            return
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, command_id = heapq.heappop(heap)
            word = self._live.pop(command_id, None)
            if word is not None:  # keeps its place in _waiting: its late reply is dropped
                self._events.append(CommandTimedOut(command_id, word))

    # -- output --------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write, in order (b"" when none)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def next_events(self) -> list[SessionEvent]:
        """Everything that happened since the last call, in order."""
        events = self._events
        if not events:
            return events
        self._events = []
        return events

    @property
    def wants_to_send(self) -> bool:
        return bool(self._out)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def pending_commands(self) -> int:
        return len(self._live)

    # -- internals -----------------------------------------------------------------------------

    def _handle_frame(self, frame: EslFrame) -> None:
        ctype = frame.content_type
        if ctype == EVENT_PLAIN:
            event = parse_event(frame)
            self._events.append(CorruptFrames(1) if event is None else EventReceived(event))
        elif ctype == "command/reply" or ctype == "api/response":
            self._handle_reply(frame)
        elif ctype == "auth/request":
            if self.state == "awaiting_auth_request":
                self.state = "authenticating"
                self._waiting.append((None, "auth"))
                self._out.append(f"auth {self.password}\n\n".encode())
        elif ctype == "text/disconnect-notice":
            if frame.headers.get("Content-Disposition") != "linger":
                self._events.append(DisconnectNotice())
                self._close("disconnect notice")
        elif ctype == "text/rude-rejection":
            text = frame.body.decode("utf-8", "replace").strip()
            self._close("rejected by server ACL: " + text)

    def _handle_reply(self, frame: EslFrame) -> None:
        if not self._waiting:
            return  # a reply nobody asked for
        command_id, _word = self._waiting.popleft()
        if command_id is None:  # our auth
            reply = frame.headers.get("Reply-Text", "")
            if reply == AUTH_OK:
                self.state = "authenticated"
                self._auth_deadline = None
                self._events.append(Authenticated())
            else:
                self._events.append(AuthFailed(reply))
                self._close("auth failed")
            return
        if self._live.pop(command_id, None) is not None:
            self._events.append(CommandReply(command_id, frame))

    def _close(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.close_reason = reason
        for command_id in list(self._live):
            self._events.append(CommandFailed(command_id, reason))
        self._live.clear()
        self._waiting.clear()
        self._deadlines.clear()
        self._out.clear()
        self._events.append(Closed(reason))


class Backoff:
    """Reconnect delays: capped exponential with +/- ``jitter`` (a fraction), pure.

    ``random`` returns a float in [0, 1) (inject a fixed one in tests).
    """

    def __init__(self, initial: float, maximum: float, jitter: float = 0.2,
                 random: Callable[[], float] = _random.random) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.jitter = jitter
        self.random = random
        self._current = initial

    def next_delay(self) -> float:
        """The delay before the next attempt; the one after is twice as long (up to the cap)."""
        delay = self._current
        self._current = min(self._current * 2, self.maximum)
        return self.jittered(delay)

    def longest(self) -> float:
        """The capped delay, jittered (after a refused password: retrying sooner cannot help)."""
        return self.jittered(self.maximum)

    def reset(self) -> None:
        """A connection succeeded: start again from ``initial``."""
        self._current = self.initial

    def jittered(self, delay: float) -> float:
        return delay * (1 + self.jitter * (2 * self.random() - 1))
