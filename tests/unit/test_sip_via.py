"""Via header values."""

from __future__ import annotations

import pytest

from busylamp.presence.sip import ParseError, parse_via


def test_via_parsing() -> None:
    v = parse_via("SIP/2.0/TCP [2001:db8::9:1]:5070;branch=z9hG4bKx;received=[2001:db8::2];rport=9")
    assert (v.transport, v.host, v.port) == ("TCP", "[2001:db8::9:1]", 5070)
    assert v.sent_by() == ("2001:db8::9:1", 5070)
    assert v.received == "2001:db8::2" and v.rport == 9
    assert parse_via("SIP/2.0/UDP h;received=2001:db8::2").received == "2001:db8::2"
    assert parse_via("sip/2.0/udp h").transport == "UDP"
    for bad in ("SIP/2.0/UDP", "SIP/2.0 h", "SIP/2.0/UDP h;;", "SIP/2.0/UDP h:port", "garbage"):
        with pytest.raises(ParseError):
            parse_via(bad)
