"""FreeSWITCH event-socket wire format, sans-IO.

Framing (mod_event_socket.c): a header block of ``Name: value`` lines ended by an empty line;
``Content-Length: N`` means N body bytes follow.  ``text/event-plain`` bodies hold a serialized
event (switch_event.c ``switch_event_serialize``): one ``Name: url-encoded-value`` line per header,
``_undef_`` for an empty value, then either an empty line or ``Content-Length: M``, an empty line
and M bytes of inner body.

Decisions: a line's name ends at its first ``": "`` (at its first ``":"`` when it has none; a line
with no colon or no name refuses the event), trailing CRs are cut; values are percent-decoded per
line after splitting (a ``%0A`` stays inside its value);
``_undef_`` is decoded to ``""`` so that ``encode_event`` / ``parse_event`` round-trip; a repeated
header name keeps its last value; the inner ``Content-Length`` is framing and is not kept as a
header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

try:  # the header lines in C (esl/_eventhead.c); _parse_head below does the same in Python
    from busylamp.esl._eventhead import parse_head as _parse_head_c
except ImportError:  # not built here
    _parse_head_c = None

MAX_FRAME = 4 * 1024 * 1024  # header blocks and event bodies
# ``api`` reply bodies: ``show channels as json`` of a switch with tens of thousands of channels
# (~1 kB each) runs to tens of MB. Still bounded, so a broken peer cannot grow the buffer forever.
MAX_REPLY = 256 * 1024 * 1024
API_RESPONSE = "api/response"
UNDEF = "_undef_"
EVENT_PLAIN = "text/event-plain"

_UNSAFE = set(b"\r\n #%&+:;<=>?@[\\]^`{|}\"")
_HEX_UPPER = set(b"0123456789ABCDEF")
# byte -> its serialized form, as switch_url_encode writes it (uppercase hex)
# encoded value -> decoded value; dates, addresses and channel names repeat across events
_DECODED: dict[str, str] = {}
_DECODED_MAX = 8192
# the header block of an event frame as mod_event_socket writes it
_EVENT_HEAD = re.compile(rb"Content-Length: ([0-9]{1,9})\nContent-Type: text/event-plain")
_ENCODE_TABLE = [
    f"%{b:02X}" if (b < 0x20 or b > 0x7E or b in _UNSAFE) else chr(b) for b in range(256)
]


@dataclass(slots=True)
class EslFrame:
    """One outer frame: its header block and its Content-Length body (b"" when none)."""

    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


@dataclass(slots=True)
class EslEvent:
    """A parsed ``text/event-plain`` event."""

    name: str
    headers: dict[str, str]
    body: str | None
    raw: bytes


class FrameParser:
    """Incremental LF framer.  ``feed`` never raises; bad header blocks are skipped and counted.

    A body may be ``max_frame`` bytes, an ``api/response`` body ``max_reply`` (the answer to
    ``show channels as json`` grows with the switch); anything longer is counted corrupt.
    """

    __slots__ = ("_buf", "_pending", "max_frame", "max_reply", "corrupt_frames")

    def __init__(self, max_frame: int = MAX_FRAME, max_reply: int = MAX_REPLY) -> None:
        self._buf = bytearray()
        self._pending: tuple[dict[str, str], int] | None = None
        self.max_frame = max_frame
        self.max_reply = max(max_reply, max_frame)  # api/response bodies only
        self.corrupt_frames = 0

    def feed(self, data: bytes) -> list[EslFrame]:
        buf = self._buf
        buf += data
        frames: list[EslFrame] = []
        while True:
            if self._pending is not None:
                headers, need = self._pending
                if len(buf) < need:
                    break
                frames.append(EslFrame(headers, bytes(buf[:need])))
                del buf[:need]
                self._pending = None
                continue
            start = 0
            size = len(buf)
            while start < size and buf[start] in (10, 13):  # stray blank lines between frames
                start += 1
            end = buf.find(b"\n\n", start)
            if end < 0:
                if start:
                    del buf[:start]
                if len(buf) > self.max_frame:  # a header block that never ends
                    self.corrupt_frames += 1
                    buf.clear()
                break
            plain = _EVENT_HEAD.fullmatch(buf, start, end)  # how every event frame starts
            if plain is not None:
                length = int(plain[1])
                body_at = end + 2
                if length > self.max_frame:
                    del buf[:body_at]
                    self.corrupt_frames += 1
                    continue
                headers = {"Content-Length": plain[1].decode(), "Content-Type": EVENT_PLAIN}
                if len(buf) - body_at >= length:  # the body is here too: the frame at once
                    frames.append(EslFrame(headers, bytes(buf[body_at:body_at + length])))
                    del buf[: body_at + length]
                else:
                    del buf[:body_at]
                    self._pending = (headers, length)
                continue
            block = bytes(buf[start:end])
            del buf[: end + 2]
            headers = _parse_header_block(block)
            if headers is None or len(block) > self.max_frame:
                self.corrupt_frames += 1
                continue
            length_text = headers.get("Content-Length")
            if length_text is None:
                frames.append(EslFrame(headers, b""))
                continue
            try:
                length = int(length_text)
            except ValueError:
                length = -1
            limit = self.max_reply if headers["Content-Type"] == API_RESPONSE else self.max_frame
            if length < 0 or length > limit:
                self.corrupt_frames += 1
                continue
            self._pending = (headers, length)
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)


def _parse_header_block(block: bytes) -> dict[str, str] | None:
    """Outer header block -> dict, or None when a line is not ``Name: value`` or Content-Type lacks."""
    headers: dict[str, str] = {}
    for raw_line in block.decode("utf-8", "replace").split("\n"):
        line = raw_line.rstrip("\r")
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name or "\t" in name:
            return None
        headers[name] = value.strip()
    if "Content-Type" not in headers:
        return None
    return headers


def parse_event(frame: EslFrame) -> EslEvent | None:
    """Parse a ``text/event-plain`` frame; None when it is not a well-formed event."""
    raw = frame.body
    end = raw.find(b"\n\n")
    if end < 0:
        end = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
    if _parse_head_c is not None:
        headers = _parse_head_c(raw, end, _DECODED, unquote, _DECODED_MAX)
    else:
        headers = _parse_head(raw[:end].decode("utf-8", "replace"))
    if headers is None:
        return None
    return _finish_event(headers, raw, end)


def _parse_head(head: str) -> dict[str, str] | None:
    """The event's header lines -> dict, values decoded; None when a line has no name.

    Per line: trailing CRs cut, the name ends at the first ``": "`` (at the first ``":"`` when the
    line has none), ``%XX`` decoded, ``_undef_`` read as ``""``. esl/_eventhead.c does the same in C.
    """
    if not head:
        return None
    headers: dict[str, str] | None = None
    if "\r" not in head:
        # Serialized values are url-encoded, so ": " only ever separates a name from its value
        try:
            headers = dict(line.split(": ", 1) for line in head.split("\n"))  # type: ignore[misc]
        except ValueError:  # a line without ": "
            headers = None
        if headers is not None and "" in headers:
            return None
    if headers is None:
        headers = {}
        for raw_line in head.split("\n"):
            line = raw_line.rstrip("\r")
            name, sep, value = line.partition(": ")
            if not sep:
                name, sep, value = line.partition(":")
            if not sep or not name:
                return None
            headers[name] = value
    cache = _DECODED
    for key, value in headers.items():
        if "%" in value:
            decoded = cache.get(value)
            if decoded is None:
                if len(cache) >= _DECODED_MAX:
                    cache.clear()
                decoded = cache[value] = unquote(value)
            headers[key] = decoded
        elif value == UNDEF:
            headers[key] = ""
    return headers


def _finish_event(headers: dict[str, str], raw: bytes, end: int) -> EslEvent | None:
    """Check the name, cut the inner body."""
    name = headers.get("Event-Name")
    if not name:
        return None
    body: str | None = None
    length_text = headers.pop("Content-Length", None)
    if length_text is not None:
        try:
            length = int(length_text)
        except ValueError:
            return None
        start = end + 2
        if length < 0 or start + length > len(raw):
            return None
        body = raw[start:start + length].decode("utf-8", "replace")
    return EslEvent(name, headers, body, raw)


def url_encode(value: str) -> str:
    """``switch_url_encode`` (no double encoding: an existing ``%XX`` with uppercase hex is kept)."""
    data = value.encode("utf-8")
    if not any(b < 0x20 or b > 0x7E or b in _UNSAFE for b in data):
        return value
    out: list[str] = []
    table = _ENCODE_TABLE
    n = len(data)
    for i, b in enumerate(data):
        if b == 0x25 and i + 2 < n and data[i + 1] in _HEX_UPPER and data[i + 2] in _HEX_UPPER:
            out.append("%")
        else:
            out.append(table[b])
    return "".join(out)


def serialize_event(headers: Mapping[str, str], body: str | None = None) -> bytes:
    """The event text ``switch_event_serialize(..., encode=TRUE)`` produces."""
    parts = [f"{name}: {url_encode(value) or UNDEF}\n" for name, value in headers.items()]
    if body:
        data = body.encode("utf-8")
        parts.append(f"Content-Length: {len(data)}\n\n")
        return "".join(parts).encode("utf-8") + data
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_event(headers: Mapping[str, str], body: str | None = None) -> bytes:
    """A whole ``text/event-plain`` frame as mod_event_socket sends it (Content-Length first)."""
    payload = serialize_event(headers, body)
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(payload) + payload


def encode_frame(headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """An outer frame (command/reply, api/response, ...); Content-Length is added for a body."""
    head = "".join(f"{name}: {value}\n" for name, value in headers.items())
    if body:
        head += f"Content-Length: {len(body)}\n"
    return (head + "\n").encode("utf-8") + body
