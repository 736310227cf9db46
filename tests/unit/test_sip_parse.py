"""parse_message and the header table on the captured SIP fixtures and hand-made edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from busylamp.presence.sip import (
    Headers,
    ParseError,
    Request,
    Response,
    build_response,
    parse_message,
)
from tests.unit.sip_samples import SUBSCRIBE

# every test here runs with the C head split and with the Python one (tests/unit/conftest.py)
pytestmark = pytest.mark.usefixtures("head_split", "value_parse")


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


def test_a_line_without_a_colon_is_refused_whatever_was_seen_before() -> None:
    """The parse does not depend on the messages before it: a line that is only a header name
    (one the name cache knows from an earlier message) is still a bad header line."""
    parse_message(SUBSCRIBE)  # "Accept" and "Expires" are known names now
    end = b"Content-Length: 0\r\n"
    for line in (b"Accept\r\n", b"Expires\r\n"):
        with pytest.raises(ParseError, match="Bad Header Line"):
            parse_message(SUBSCRIBE.replace(end, line + end))
