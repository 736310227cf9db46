"""TCP stream framing by Content-Length."""

from __future__ import annotations

import pytest

from busylamp.presence.sip import ParseError, StreamFramer, parse_message
from tests.unit.sip_samples import SUBSCRIBE


def test_stream_framer() -> None:
    framer = StreamFramer(max_buffer=4096)
    two = SUBSCRIBE + b"\r\n\r\n" + SUBSCRIBE.replace(b"Content-Length: 0", b"l: 3") + b"abc"
    out = framer.feed(two)
    assert len(out) == 2 and out[0] == SUBSCRIBE
    assert parse_message(out[1], stream=True).body == b"abc"
    assert framer.pings == 1
    split = SUBSCRIBE.replace(b"Content-Length: 0", b"Content-Length: 4") + b"body"
    assert framer.feed(split[:30]) == [] and framer.feed(split[30:-2]) == []
    assert framer.feed(split[-2:]) == [split]
    assert framer.feed(b"\r\n") == [] and framer.feed(b"\r\n") == [] and framer.pings == 2


def test_stream_framer_errors() -> None:
    with pytest.raises(ParseError) as info:
        StreamFramer(max_buffer=100).feed(b"X" * 101)
    assert info.value.status == 413
    with pytest.raises(ParseError):
        StreamFramer().feed(SUBSCRIBE.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(ParseError):
        StreamFramer().feed(SUBSCRIBE.replace(b"Content-Length: 0", b"Content-Length: x"))
    with pytest.raises(ParseError) as info:
        StreamFramer(max_buffer=1000).feed(SUBSCRIBE.replace(b"Content-Length: 0",
                                                             b"Content-Length: 5000"))
    assert info.value.status == 413
