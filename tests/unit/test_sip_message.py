"""Parser / serializer tests on the captured SIP fixtures and hand-made edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from busylamp.presence.sip.message import (
    Headers,
    ParseError,
    Request,
    Response,
    StreamFramer,
    build_request,
    build_response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
)

SUBSCRIBE = (
    b"SUBSCRIBE sip:1000@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-abc;rport\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.4;branch=z9hG4bK-def\r\n"
    b'From: "Desk 1001" <sip:1001@example.com>;tag=ft1\r\n'
    b"To: <sip:1000@example.com>\r\n"
    b"Call-ID: cid-1@10.0.0.5\r\n"
    b"CSeq: 7 SUBSCRIBE\r\n"
    b"Contact: <sip:1001@10.0.0.5:5062>;expires=600\r\n"
    b"Record-Route: <sip:proxy1.example.com;lr>, <sip:proxy2.example.com;lr>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Event: Dialog;id=1\r\n"
    b"Accept: application/dialog-info+xml\r\n"
    b"Expires: 600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _fixture(shared: Path, name: str) -> bytes:
    return (shared / "sip" / name).read_bytes()


# ----------------------------------------------------------------- captured fixtures


def test_yealink_subscribe(fixtures_dir: Path) -> None:
    msg = parse_message(_fixture(fixtures_dir, "subscribe_dialog_yealink_t46g.txt"))
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri) == ("SUBSCRIBE", "sip:1000@10.10.20.34:5060")
    assert msg.event == ("dialog", {})
    assert msg.expires == 60
    assert msg.max_forwards == 70
    assert msg.cseq == (2, "SUBSCRIBE")
    assert msg.from_.display == "10111" and msg.from_.tag == "8643512"
    assert msg.to.tag == "4025601441"
    assert msg.vias[0].branch == "z9hG4bK2880274891"
    assert msg.vias[0].sent_by() == ("10.10.20.32", 5060)
    assert msg.contact is not None and msg.contact.uri == "sip:10111@10.10.20.32:5060"
    assert msg.headers.get_all("Accept") == ["application/dialog-info+xml"]
    assert msg.body == b""


def test_polycom_subscribe_branch_with_space_is_accepted(fixtures_dir: Path) -> None:
    # Decision: a robust server answers the real phone; the branch keeps its inner space and the
    # Via is echoed byte-for-byte (plus received/rport) so the phone can match the response.
    msg = parse_message(_fixture(fixtures_dir, "subscribe_dialog_polycom_vvx400.txt"))
    assert isinstance(msg, Request)
    via = msg.vias[0]
    assert via.branch == "z9hG4bK271d65c640 661e"
    assert via.rport is True
    assert via.host == "y.y.y.y" and via.port == 51761
    assert msg.headers.get("Supported") == ""
    assert msg.headers.get_all("Supported") == []
    assert msg.to.tag is None
    out = parse_message(build_response(msg, 200, source=("192.0.2.7", 40000), to_tag="srv1"))
    assert isinstance(out, Response)
    top = out.vias[0]
    assert top.branch == "z9hG4bK271d65c640 661e"
    assert top.rport == 40000 and top.received == "192.0.2.7"
    assert out.to.tag == "srv1"


def test_notify_fixtures_parse(fixtures_dir: Path) -> None:
    for name, length in (
        ("notify_dialog_yealink_full_confirmed.txt", 584),
        ("notify_dialog_yealink_partial_terminated.txt", 217),
    ):
        msg = parse_message(_fixture(fixtures_dir, name))
        assert isinstance(msg, Request) and msg.method == "NOTIFY"
        assert len(msg.body) == length
        assert msg.body.startswith(b"<?xml")
        assert msg.headers.get("Subscription-State", ) is not None


def test_content_length_smaller_than_body_truncates(fixtures_dir: Path) -> None:
    data = _fixture(fixtures_dir, "notify_mwi_wildix_gw.txt")  # declares 90, carries 91
    msg = parse_message(data)
    assert isinstance(msg, Request)
    assert len(msg.body) == 90
    assert msg.body.endswith(b"(1/0)\r")
    assert msg.event == ("message-summary", {})
    assert msg.uri == "sip:150@10.135.0.12;line=16172"


def test_content_length_larger_than_body_is_400(fixtures_dir: Path) -> None:
    data = _fixture(fixtures_dir, "notify_presence_freeswitch_pidf_noresource.txt")
    with pytest.raises(ParseError) as info:
        parse_message(data)  # declares 431, carries 428
    assert info.value.status == 400
    assert info.value.request is not None
    assert info.value.request.call_id == "MDcxOTc1ODZlMGFhN2M4Yjc0YmViYzYyMzdjYzVhOTk."
    fixed = data.replace(b"Content-Length: 431", b"Content-Length: 428")
    msg = parse_message(fixed)
    assert isinstance(msg, Request)
    assert msg.headers.get_all("Allow")[:3] == ["INVITE", "ACK", "BYE"]
    assert len(msg.headers.get_all("Allow-Events")) == 11
    assert msg.headers.get("Allow-Events").startswith("talk, hold")


def test_every_fixture_roundtrips_through_build_request(fixtures_dir: Path) -> None:
    for path in sorted((fixtures_dir / "sip").glob("*.txt")):
        data = path.read_bytes()
        if b"Content-Length: 431" in data:
            data = data.replace(b"Content-Length: 431", b"Content-Length: 428")
        msg = parse_message(data)
        assert isinstance(msg, Request)
        headers = [(n, v) for n, v in msg.headers.items() if n != "Content-Length"]
        again = parse_message(build_request(msg.method, msg.uri, headers, msg.body))
        assert isinstance(again, Request)
        assert list(again.headers.items())[:-1] == headers
        assert again.body == msg.body


# ----------------------------------------------------------------- headers


def test_compact_forms_and_canonical_names() -> None:
    data = (
        b"OPTIONS sip:a@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"f: <sip:b@example.com>;tag=1\r\nt: sip:a@example.com\r\ni: abc\r\n"
        b"cseq: 1 OPTIONS\r\nk: timer\r\no: presence\r\nu: dialog\r\ns: hi\r\nx: 90\r\n"
        b"e: gzip\r\nc: text/plain\r\nm: <sip:b@h>\r\nwww-authenticate: Digest x\r\n"
        b"CALL-ID2: z\r\nl: 2\r\n\r\nhi"
    )
    msg = parse_message(data)
    names = [n for n, _ in msg.headers.items()]
    assert names == [
        "Via", "From", "To", "Call-ID", "CSeq", "Supported", "Event", "Allow-Events", "Subject",
        "Session-Expires", "Content-Encoding", "Content-Type", "Contact", "WWW-Authenticate",
        "Call-Id2", "Content-Length",
    ]
    assert msg.headers.get("call-id") == "abc" and msg.headers.get("i") == "abc"
    assert "Content-Type" in msg.headers and "c" in msg.headers and "Route" not in msg.headers
    assert msg.headers.count("Via") == 1
    assert msg.body == b"hi"


def test_folding_and_multi_value_split() -> None:
    data = SUBSCRIBE.replace(b"Accept: application/dialog-info+xml\r\n",
                             b"Accept: application/dialog-info+xml,\r\n\t  application/xpidf+xml\r\n"
                             b'Contact: "a, b" <sip:x@h;p=1,2>, <sip:y@h>\r\n')
    msg = parse_message(data)
    assert msg.headers.get("Accept") == "application/dialog-info+xml, application/xpidf+xml"
    assert msg.headers.get_all("Accept") == ["application/dialog-info+xml", "application/xpidf+xml"]
    contacts = msg.headers.get_all("Contact")
    assert contacts == ["<sip:1001@10.0.0.5:5062>;expires=600", '"a, b" <sip:x@h;p=1,2>',
                        "<sip:y@h>"]
    assert msg.headers.count("Contact") == 2
    assert msg.record_routes == ["<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"]
    assert msg.headers.get_all("Event") == ["Dialog;id=1"]


def test_headers_constructor_canonicalises() -> None:
    h = Headers([("i", "x"), ("cseq", "1 A"), ("v", "a"), ("Via", "b, c")])
    assert list(h.items()) == [("Call-ID", "x"), ("CSeq", "1 A"), ("Via", "a"), ("Via", "b, c")]
    assert h.get_all("v") == ["a", "b", "c"]
    assert h.count("Via") == 2 and h.get("Unknown") is None and h.get_all("Unknown") == []


# ----------------------------------------------------------------- structured values


def test_subscribe_properties() -> None:
    msg = parse_message(SUBSCRIBE)
    assert isinstance(msg, Request)
    assert msg.event == ("dialog", {"id": "1"})
    assert msg.contact is not None and msg.contact.params == {"expires": "600"}
    assert [v.branch for v in msg.vias] == ["z9hG4bK-abc", "z9hG4bK-def"]
    assert msg.vias[1].rport is None


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


# ----------------------------------------------------------------- malformed input


@pytest.mark.parametrize("cut", [0, 1, 10, 40, 100, 200, 300, 400])
def test_truncated_input_never_crashes(cut: int) -> None:
    data = SUBSCRIBE[:cut]
    try:
        msg = parse_message(data)
    except ParseError as exc:
        assert exc.status in (400, 505, 416)
    else:
        assert isinstance(msg, Request)


def test_garbage_and_unicode_bytes() -> None:
    data = SUBSCRIBE.replace(b"Accept: application/dialog-info+xml",
                             b"X-Name: \xff\xfe caf\xc3\xa9 \x00")
    msg = parse_message(data)
    value = msg.headers.get("X-Name")
    assert value is not None and "café" in value
    assert value.encode("utf-8", "surrogateescape") == b"\xff\xfe caf\xc3\xa9 \x00"
    for junk in (b"\x00\x01\x02", b"\xff" * 50, b"SIP/2.0\r\n\r\n", b"\r\n\r\n", b"hello world",
                 b"INVITE sip:x@h SIP/2.0\r\n: novalue\r\n\r\n"):
        with pytest.raises(ParseError):
            parse_message(junk)


@pytest.mark.parametrize(
    ("old", "new", "status"),
    [
        (b"CSeq: 7 SUBSCRIBE", b"CSeq: 2147483648 SUBSCRIBE", 400),
        (b"CSeq: 7 SUBSCRIBE", b"CSeq: 7 NOTIFY", 400),
        (b"Content-Length: 0", b"Content-Length: 5", 400),
        (b"Content-Length: 0", b"Content-Length: -1", 400),
        (b"Max-Forwards: 70", b"Max-Forwards: abc", 400),
        (b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 505),
        (b"SUBSCRIBE sip:", b"SUBSCRIBE  sip:", 400),
        (b"sip:1000@example.com SIP", b"mailto:1000@example.com SIP", 416),
        (b"Call-ID: cid-1@10.0.0.5\r\n", b"Call-ID: a\r\nCall-ID: b\r\n", 400),
        (b"To: <sip:1000@example.com>", b'To: "x <sip:1000@example.com>', 400),
    ],
)
def test_request_errors(old: bytes, new: bytes, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(SUBSCRIBE.replace(old, new, 1))
    assert info.value.status == status


def test_cseq_limit_and_missing_content_length() -> None:
    msg = parse_message(SUBSCRIBE.replace(b"CSeq: 7", b"CSeq: 2147483647"))
    assert msg.cseq == (2147483647, "SUBSCRIBE")
    no_length = SUBSCRIBE.replace(b"Content-Length: 0\r\n", b"") + b"body"
    assert parse_message(no_length).body == b"body"
    with pytest.raises(ParseError):
        parse_message(no_length, stream=True)
    assert parse_message(SUBSCRIBE, stream=True).body == b""


def test_responses() -> None:
    ok = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
          b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 3 NOTIFY\r\n"
          b"Content-Length: 0\r\n\r\n")
    msg = parse_message(ok)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason, msg.cseq) == (200, "OK", (3, "NOTIFY"))
    assert msg.vias[0].branch == "z9hG4bK1" and msg.to.tag == "2"
    for bad in (b"SIP/2.0 20 OK", b"SIP/2.0 2000 OK", b"SIP/2.0 099 X", b"SIP/1.0 200 OK",
                b"SIP/2.0 abc OK"):
        with pytest.raises(ParseError):
            parse_message(ok.replace(b"SIP/2.0 200 OK", bad))
    with pytest.raises(ParseError):
        parse_message(ok.replace(b"CSeq: 3 NOTIFY\r\n", b""))


# ----------------------------------------------------------------- serialisation


def test_build_response_rfc3261_8_2_6() -> None:
    req = parse_message(SUBSCRIBE)
    assert isinstance(req, Request)
    raw = build_response(req, 202, source=("10.0.0.5", 7777), to_tag="t1",
                         headers=[("Expires", "600"), ("Contact", "<sip:pres@h>")],
                         server="busylamp")
    text = raw.decode()
    assert text.startswith("SIP/2.0 202 Accepted\r\n")
    resp = parse_message(raw)
    assert isinstance(resp, Response)
    assert [v.raw for v in resp.vias][1] == "SIP/2.0/UDP 10.0.0.4;branch=z9hG4bK-def"
    assert resp.vias[0].rport == 7777 and resp.vias[0].received is None  # same IP as sent-by
    assert resp.to.tag == "t1" and resp.from_.tag == "ft1"
    assert resp.call_id == "cid-1@10.0.0.5" and resp.cseq == (7, "SUBSCRIBE")
    assert resp.headers.get_all("Record-Route") == req.record_routes
    assert resp.headers.get("Server") == "busylamp" and resp.headers.get("Expires") == "600"
    assert resp.headers.get("Content-Length") == "0"
    # 100 Trying: no To tag, no Record-Route
    trying = parse_message(build_response(req, 100, to_tag="t1"))
    assert trying.to.tag is None and "Record-Route" not in trying.headers
    # in-dialog refresh: existing To tag kept, no Record-Route
    refresh = parse_message(SUBSCRIBE.replace(b"To: <sip:1000@example.com>",
                                              b"To: <sip:1000@example.com>;tag=old"))
    again = parse_message(build_response(refresh, 200, to_tag="new"))
    assert again.to.tag == "old" and "Record-Route" not in again.headers
    # error response: no Record-Route, body with content type
    err = parse_message(build_response(req, 489, body=b"x", content_type="text/plain"))
    assert err.reason == "Bad Event" and err.body == b"x"
    assert err.headers.get("Content-Type") == "text/plain"
    assert "Record-Route" not in err.headers
    assert build_response(req, 299).startswith(b"SIP/2.0 299 \r\n")


def test_build_response_received_for_ipv6_and_hostnames() -> None:
    req = parse_message(SUBSCRIBE.replace(b"10.0.0.5:5062;branch=z9hG4bK-abc;rport",
                                          b"[2001:db8::5]:5062;branch=z9hG4bK-abc"))
    top = parse_message(build_response(req, 200, source=("2001:db8::5", 5062))).vias[0]
    assert top.received is None and top.rport is None
    top = parse_message(build_response(req, 200, source=("2001:db8::6", 5062))).vias[0]
    assert top.received == "2001:db8::6"


def test_build_request() -> None:
    raw = build_request("NOTIFY", "sip:1001@10.0.0.5:5062",
                        [("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKn1"),
                         ("From", "<sip:1000@example.com>;tag=t1"), ("To", "<sip:1001@h>;tag=ft1"),
                         ("Call-ID", "cid"), ("CSeq", "2 NOTIFY"), ("Max-Forwards", "70"),
                         ("Event", "dialog"), ("Subscription-State", "active;expires=600"),
                         ("Content-Type", "application/dialog-info+xml")], b"<x/>")
    msg = parse_message(raw, stream=True)
    assert isinstance(msg, Request) and msg.body == b"<x/>"
    assert msg.headers.get("Content-Length") == "4"


# ----------------------------------------------------------------- stream framing


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


def test_uri_with_two_at_signs_is_rejected_but_escaped_at_is_fine():
    with pytest.raises(ParseError):
        parse_uri("sip:2000@example.com@127.0.0.1:5060")
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net" and uri.host == "example.com"
