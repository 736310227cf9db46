"""Stream framing: cut a TCP byte stream into whole SIP messages by Content-Length."""

from __future__ import annotations

from .grammar import ParseError

__all__ = ["StreamFramer"]


class StreamFramer:
    """TCP framing by Content-Length (mandatory on streams, RFC 3261 18.3).

    CRLF keep-alives between messages are skipped; each CRLFCRLF ping (RFC 5626) increments
    `pings` so the transport can answer with a CRLF pong."""

    __slots__ = ("max_buffer", "pings", "_buf")

    def __init__(self, max_buffer: int = 65536):
        self.max_buffer = max_buffer
        self.pings = 0
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):
                if buf.startswith(b"\r\n\r\n"):
                    self.pings += 1
                    del buf[:4]
                    continue
                if buf in (b"\r", b"\r\n", b"\r\n\r"):
                    break  # wait for the rest of a possible ping
                del buf[: 2 if buf.startswith(b"\r\n") else 1]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_buffer:
                    raise ParseError("Message Too Large", 413)
                break
            total = end + 4 + self._content_length(bytes(buf[:end]))
            if total > self.max_buffer:
                raise ParseError("Message Too Large", 413)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @staticmethod
    def _content_length(head: bytes) -> int:
        found: int | None = None
        for line in head.split(b"\r\n")[1:]:
            colon = line.find(b":")
            if colon <= 0 or line[:1] in (b" ", b"\t"):
                continue
            name = line[:colon].strip().lower()
            if name == b"content-length" or name == b"l":
                value = line[colon + 1 :].strip()
                if not value.isdigit() or len(value) > 10 or found is not None:
                    raise ParseError("Bad Content-Length")
                found = int(value)
        if found is None:
            raise ParseError("Missing Content-Length")
        return found
