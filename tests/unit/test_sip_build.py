"""Serialisation: build_response (RFC 3261 8.2.6) and build_request."""

from __future__ import annotations

from pathlib import Path

from busylamp.presence.sip import (
    Request,
    Response,
    build_request,
    build_response,
    parse_message,
)
from tests.unit.sip_samples import SUBSCRIBE


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
