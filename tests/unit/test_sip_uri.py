"""SIP URIs and name-addrs."""

from __future__ import annotations

import pytest

from busylamp.presence.sip import ParseError, parse_name_addr, parse_uri


def test_name_addr_forms() -> None:
    a = parse_name_addr('"Alice \\"A\\"" <sip:alice@example.com;transport=tcp>;tag=x;lr')
    assert a.display == 'Alice "A"' and a.uri == "sip:alice@example.com;transport=tcp"
    assert a.params == {"tag": "x", "lr": None} and a.tag == "x"
    b = parse_name_addr("sip:bob@example.com;tag=88;user=phone")  # addr-spec: params -> header
    assert b.display is None and b.uri == "sip:bob@example.com" and b.tag == "88"
    assert b.params == {"tag": "88", "user": "phone"}
    c = parse_name_addr("Bob <sip:bob@example.com>")
    assert c.display == "Bob" and c.uri == "sip:bob@example.com"
    assert parse_name_addr(str(a)) == a
    for bad in ('"open <sip:x@h>', "<sip:x@h", "", "<>", "<sip:x@h> junk", "<sip:x@h>;=1"):
        with pytest.raises(ParseError):
            parse_name_addr(bad)


def test_uri_parsing() -> None:
    u = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=x")
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips", "alice", "secret", "[2001:db8::1]", 5061)
    assert u.params == {"transport": "tcp", "lr": None} and u.headers == "subject=x"
    assert str(u) == "sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=x"
    assert u.host_port() == "[2001:db8::1]:5061"
    assert parse_uri("sip:[2001:db8::10:5070]").port is None
    assert parse_uri("sip:example.com").host_port() == "example.com"
    assert parse_uri("tel:+15551234;phone-context=x").user == "+15551234"
    with pytest.raises(ParseError) as info:
        parse_uri("http://example.com")
    assert info.value.status == 416
    for bad in ("sip:2001:db8::10", "sip:", "sip:a@", "sip:host:99999", "sip:a b@h", "nocolon",
                "sip:[zz::1]", "sip:@host"):
        with pytest.raises(ParseError) as info:
            parse_uri(bad)
        assert info.value.status == 400, bad


def test_uri_with_two_at_signs_is_rejected_but_escaped_at_is_fine():
    with pytest.raises(ParseError):
        parse_uri("sip:2000@example.com@127.0.0.1:5060")
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net" and uri.host == "example.com"
