"""plain_new_subscribe and refusal (presence/sip/refuse.py) agree with the full parser and with
build_response: the parts read from the bytes are the parser's, the 503 is build_response's byte
for byte, and whatever is not plainly a new SUBSCRIBE the parser accepts is left to it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from busylamp.presence.sip import (
    ParseError,
    Request,
    build_response,
    parse_message,
    parse_name_addr,
    parse_via,
    plain_new_subscribe,
    refusal,
)
from busylamp.presence.sip import refuse as refuse_module
from busylamp.presence.sip.transaction import ServerTransactions
from tests import fuzz
from tests.unit.sip_samples import SUBSCRIBE as PROXIED

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def sipp(head: str = "", **replace: str) -> bytes:
    """A SUBSCRIBE as bench/scenarios/subscribe_dialog.xml sends it; ``head`` lines replace
    the default ones of the same index when given as ``replace`` (by header name)."""
    lines = {
        "start": "SUBSCRIBE sip:1001@example.com SIP/2.0",
        "Via": "Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-23401-1-0;rport",
        "From": "From: <sip:2000@example.com>;tag=23401-1",
        "To": "To: <sip:1001@example.com>",
        "Call-ID": "Call-ID: 1-23401@10.0.0.7",
        "CSeq": "CSeq: 1 SUBSCRIBE",
        "Contact": "Contact: <sip:2000@10.0.0.7:5062>",
        "Max-Forwards": "Max-Forwards: 70",
        "Event": "Event: dialog",
        "Accept": "Accept: application/dialog-info+xml",
        "Expires": "Expires: 3600",
        "User-Agent": "User-Agent: busylamp-bench",
        "Content-Length": "Content-Length: 0",
    }
    lines.update(replace)
    text = "\r\n".join(line for line in lines.values() if line is not None)
    return (text + head + "\r\n\r\n").encode("utf-8", "surrogateescape")


PLAIN = {
    "sipp": sipp(),
    "proxied, two Vias and a display name": PROXIED,
    "polycom (a branch with a space)": (FIXTURES / "sip" / "subscribe_dialog_polycom_vvx400.txt")
    .read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
    "compact names": sipp(Via="v: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-c;rport",
                          From="f: <sip:2000@example.com>;tag=c", To="t: <sip:1001@example.com>",
                          **{"Call-ID": "i: c@10.0.0.7", "Content-Length": "l: 0"}),
    "other spellings": sipp(Via="VIA: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-s",
                            To="to :<sip:1001@example.com>", **{"Call-ID": "call-id:x@y",
                                                                "CSeq": "CSEQ:  1 SUBSCRIBE"}),
    "three Via lines": sipp(Via="Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-e1;received=10.1.1.1"
                                "\r\nVia: SIP/2.0/TCP 10.0.0.7:5062;branch=z9hG4bK-p;rport=5062"
                                "\r\nv: SIP/2.0/UDP 10.0.0.8;branch=z9hG4bK-u"),
    "Vias split at commas": sipp(Via="Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-e1 , "
                                     "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-p;rport"),
    "IPv6 top Via": sipp(Via="Via: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bK-6;rport"),
    "Via spelled loosely": sipp(Via="Via: sip / 2.0 / udp  10.0.0.7:5062 ; BRANCH = z9hG4bK-l ;"
                                    " RPort"),
    "Via with received and a valued rport": sipp(
        Via="Via: SIP/2.0/UDP phone.example.com:5062;received=10.0.0.9;rport=5062;branch="
            "z9hG4bK-r;maddr=239.1.1.1;ttl=1"),
    "tag in the To display name": sipp(To='To: "tag=1;tag=2" <sip:1001@example.com>'),
    "tag in the To URI": sipp(To="To: <sip:1001@example.com;tag=x>"),
    "tag as the To user": sipp(To="To: tag <sip:tag@example.com;user=tag>;x-tag=1"),
    "To addr-spec": sipp(To="To: sip:1001@example.com"),
    "To display name escaped": sipp(To='To: "a \\"b\\" ;tag=1" <sip:1001@example.com>'),
    "From display name not in UTF-8": sipp(From='From: "B\udce4r" <sip:2000@example.com>;tag=u'),
    "From odd but parseable": sipp(From="From: Desk  1 <sip:2000@example.com> ; tag = x"),
    "tel Request-URI": sipp(start="SUBSCRIBE tel:+4930123 SIP/2.0"),
    "Request-URI params": sipp(start="SUBSCRIBE sip:1001@example.com;user=phone SIP/2.0"),
    "a body": sipp(**{"Content-Length": "Content-Length: 4"}) + b"abcd",
    "no Content-Length, no Max-Forwards": sipp(**{"Content-Length": None, "Max-Forwards": None}),
    "Require after all? no: Proxy-Require": sipp("\r\nProxy-Require: foo"),
    "empty header values": sipp("\r\nSupported:\r\nX-Empty:"),
    "Call-ID with a tab": sipp(**{"Call-ID": "Call-ID: a\tb@c"}),
}

NOT_PLAIN = {
    "in dialog": sipp(To="To: <sip:1001@example.com>;tag=abc"),
    "in dialog, TAG": sipp(To="To: <sip:1001@example.com>;TAG=abc"),
    "in dialog, spaced": sipp(To="To: <sip:1001@example.com> ; tag = abc"),
    "in dialog, addr-spec": sipp(To="To: sip:1001@example.com;tag=abc"),
    "a tag without a value": sipp(To="To: <sip:1001@example.com>;tag"),
    "Require": sipp("\r\nRequire: eventlist"),
    "Require, any spelling": sipp("\r\nrequire :eventlist"),
    "folded": sipp("\r\nX-Long: a\r\n  continued"),
    "folded with a tab": sipp(To="To: <sip:1001@example.com>\r\n\t;x=1"),
    "two To": sipp("\r\nTo: <sip:1002@example.com>"),
    "To and t": sipp("\r\nt: <sip:1001@example.com>"),
    "two From": sipp("\r\nf: <sip:2001@example.com>;tag=2"),
    "two Call-ID": sipp("\r\nCall-Id: other"),
    "two CSeq": sipp("\r\nCSeq: 2 SUBSCRIBE"),
    "two Max-Forwards": sipp("\r\nMax-Forwards: 69"),
    "two Content-Length": sipp("\r\nl: 0"),
    "no To": sipp(To=None),
    "no Via": sipp(Via=None),
    "an empty Via": sipp(Via="Via: "),
    "no Call-ID": sipp(**{"Call-ID": None}),
    "an empty Call-ID": sipp(**{"Call-ID": "Call-ID: "}),
    "a Call-ID with a space": sipp(**{"Call-ID": "Call-ID: a b"}),
    "two spaces in the Request-Line": sipp(start="SUBSCRIBE  sip:1001@example.com SIP/2.0"),
    "a space after the Request-Line": sipp(start="SUBSCRIBE sip:1001@example.com SIP/2.0 "),
    "SIP/2.1": sipp(start="SUBSCRIBE sip:1001@example.com SIP/2.1"),
    "no version": sipp(start="SUBSCRIBE sip:1001@example.com"),
    "lower-case method": sipp(start="subscribe sip:1001@example.com SIP/2.0"),
    "Request-URI in <>": sipp(start="SUBSCRIBE <sip:1001@example.com> SIP/2.0"),
    "Request-URI with headers": sipp(start="SUBSCRIBE sip:1001@example.com?Route=x SIP/2.0"),
    "Request-URI scheme unknown": sipp(start="SUBSCRIBE foo:1001 SIP/2.0"),
    "Request-URI host bad": sipp(start="SUBSCRIBE sip:1001@exa$mple.com SIP/2.0"),
    "NOTIFY": sipp(start="NOTIFY sip:1001@example.com SIP/2.0", CSeq="CSeq: 1 NOTIFY"),
    "CSeq method NOTIFY": sipp(CSeq="CSeq: 1 NOTIFY"),
    "CSeq method lower-case": sipp(CSeq="CSeq: 1 subscribe"),
    "CSeq number too large": sipp(CSeq="CSeq: 2147483648 SUBSCRIBE"),
    "CSeq number not a number": sipp(CSeq="CSeq: one SUBSCRIBE"),
    "CSeq with two spaces": sipp(CSeq="CSeq: 1  SUBSCRIBE"),
    "Max-Forwards 256": sipp(**{"Max-Forwards": "Max-Forwards: 256"}),
    "Content-Length beyond the body": sipp(**{"Content-Length": "Content-Length: 10"}),
    "Content-Length negative": sipp(**{"Content-Length": "Content-Length: -1"}),
    "From unterminated quote": sipp(From='From: "Desk <sip:2000@example.com>;tag=1'),
    "From without a URI": sipp(From="From: ;tag=1"),
    "To with an empty parameter": sipp(To="To: <sip:1001@example.com>;=x"),
    "second Via bad": sipp("\r\nVia: SIP/2.0/UDP ;branch=z9hG4bK-x"),
    "top Via port too large": sipp(Via="Via: SIP/2.0/UDP 10.0.0.7:65536;branch=z9hG4bK-p"),
    "a line without a colon": sipp("\r\nNo colon here"),
    "a header name not a token": sipp("\r\nBad Name: x"),
    "LF line ends": sipp().replace(b"\r\n", b"\n"),
    "a bare LF": sipp(Contact="Contact: <sip:2000@10.0.0.7:5062>\nX: y"),
    "a bare CR": sipp(Contact="Contact: <sip:2000@10.0.0.7:5062>\rX: y"),
    "no end of head": sipp()[:-4],
    "a response": b"SIP/2.0 200 OK\r\n" + sipp().split(b"\r\n", 1)[1],
}


@pytest.mark.parametrize("data", PLAIN.values(), ids=PLAIN.keys())
def test_the_parts_read_are_the_parsers(data: bytes) -> None:
    plain = plain_new_subscribe(data)
    request = parse_message(data)
    assert isinstance(request, Request) and request.to.tag is None
    assert plain is not None
    assert plain.top_via == request.vias[0]
    assert plain.vias == request.headers.get_all("Via")
    assert (plain.from_, plain.to, plain.call_id, plain.cseq) == tuple(
        request.headers.get(name) for name in ("From", "To", "Call-ID", "CSeq"))
    assert plain.call_id == request.call_id
    # and the transaction key the engine keeps the 503 under is the parsed request's
    key = ServerTransactions.branch_key(plain.top_via, "SUBSCRIBE", "udp")
    assert key == ServerTransactions().key(request, "udp")


@pytest.mark.parametrize("source", [("10.0.0.7", 5062), ("203.0.113.5", 40001), None])
@pytest.mark.parametrize("data", PLAIN.values(), ids=PLAIN.keys())
def test_the_refusal_is_build_responses_byte_for_byte(data: bytes, source) -> None:
    plain = plain_new_subscribe(data)
    request = parse_message(data)
    headers = [("Retry-After", "13")]
    assert refusal(plain, 503, "Overloaded", to_tag="T4g", source=source, headers=headers,
                   server="busylamp/test") == \
        build_response(request, 503, "Overloaded", source=source, to_tag="T4g",
                       headers=headers, server="busylamp/test")


@pytest.mark.parametrize("data", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_anything_else_is_left_to_the_parser(data: bytes) -> None:
    assert plain_new_subscribe(data) is None


def test_the_not_plain_cases_are_what_they_say() -> None:
    """Each case differs from a plain SUBSCRIBE in what it names, not in something else: the
    in-dialog ones and the valid oddities parse, the others the parser refuses."""
    parsed_ok = {"in dialog", "in dialog, TAG", "in dialog, spaced", "in dialog, addr-spec",
                 "a tag without a value", "Require", "Require, any spelling", "folded",
                 "folded with a tab", "a space after the Request-Line", "CSeq with two spaces", "LF line ends",
                 "a bare LF", "a bare CR", "no end of head", "NOTIFY", "a response"}
    for name, data in NOT_PLAIN.items():
        try:
            message = parse_message(data)
        except ParseError:
            assert name not in parsed_ok, name
        else:
            assert name in parsed_ok, name
            if isinstance(message, Request) and message.method == "SUBSCRIBE" and \
                    name.startswith("in dialog"):
                assert message.to.tag == "abc"


VIAS = [
    "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-1;rport",
    "SIP/2.0/UDP 10.0.0.7;rport;branch=z9hG4bK-1",
    "SIP/2.0/TCP host.example.com:5060;branch=z9hG4bK-1;received=192.0.2.1;rport=1",
    "SIP/2.0/UDP h;branch=a=b;x;x=2",
    "SIP/2.0/UDP 10.0.0.7:00000;branch=z",
    "SIP/2.0/UDP 10.0.0.7:99999;branch=z",
    "SIP/2.0/UDP 10.0.0.7:;branch=z",
    "SIP/2.0/UDP 10.0.0.7;branch=",
    "SIP/2.0/UDP 10.0.0.7;;branch=z",
    "SIP/2.0/UDP 10.0.0.7;Branch=z",
    "SIP/2.0/udp 10.0.0.7;branch=z",
    "SIP/2.0/UDP  10.0.0.7;branch=z",
    "SIP/2.0/UDP [::1]:5060;branch=z",
    'SIP/2.0/UDP h;x="a;b"',
    "SIP/2.0/UDP h;x=<a,b>",
    "SIP/2.0/UDP h;x=a b",
    "SIP/2.0/UDP h:5060:5061",
    "SIP/2.0/UDP",
    "",
]


def _same_via(text: str) -> None:
    try:
        expected = parse_via(text)
    except ParseError:
        with pytest.raises(ParseError):
            refuse_module._via(text)
        return
    assert refuse_module._via(text) == expected, text


@pytest.mark.parametrize("text", VIAS)
def test_a_via_reads_as_parse_via_reads_it(text: str) -> None:
    _same_via(text)


def test_mutated_vias_read_as_parse_via_reads_them() -> None:
    read_plainly = 0
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("refuse-via", index)
        text = fuzz.mutate(rng.choice(VIAS[:5]).encode(), rng).decode("utf-8", "surrogateescape")
        _same_via(text)
        read_plainly += refuse_module._PLAIN_VIA(text) is not None
    assert read_plainly > fuzz.cases() // 10  # (the regular expression's reading was tried)


NAME_ADDRS = [
    "<sip:2000@example.com>;tag=23401-1",
    '"Desk 1" <sip:2000@example.com>;tag=1;x',
    "Desk 1 <sip:2000@example.com;transport=udp>;tag=1",
    '"" <tel:+49;phone-context=x>',
    "Desk<sip:a@b>",
    '"a;b" <sip:a@b>;tag=x=y',
]


def test_the_plain_name_addr_shape_admits_only_what_the_parser_parses() -> None:
    matched = 0
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("refuse-name-addr", index)
        text = fuzz.mutate(rng.choice(NAME_ADDRS).encode(), rng).decode("utf-8",
                                                                          "surrogateescape")
        if refuse_module._PLAIN_NAME_ADDR(text) is not None:
            matched += 1
            parse_name_addr(text)  # must not raise
    for text in NAME_ADDRS:
        assert refuse_module._PLAIN_NAME_ADDR(text) is not None, text
        parse_name_addr(text)
    assert matched > fuzz.cases() // 10  # (the property was tried, not vacuous)


def test_mutated_subscribes_are_plain_only_when_the_parser_agrees() -> None:
    """Whatever plain_new_subscribe takes, parse_message accepts as a new SUBSCRIBE without
    Require, with the same parts; a random mix of both outcomes is seen."""
    corpus = list(PLAIN.values()) + list(NOT_PLAIN.values())
    plain_seen = 0
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("refuse-subscribe", index)
        data = fuzz.mutate(rng.choice(corpus), rng, corpus)
        plain = plain_new_subscribe(data)
        if plain is None:
            continue
        plain_seen += 1
        request = parse_message(data)
        assert isinstance(request, Request), data
        assert request.method == "SUBSCRIBE" and request.to.tag is None, data
        assert "Require" not in request.headers, data
        assert plain.top_via == request.vias[0], data
        assert plain.vias == request.headers.get_all("Via"), data
        assert (plain.from_, plain.to, plain.call_id, plain.cseq) == tuple(
            request.headers.get(name) for name in ("From", "To", "Call-ID", "CSeq")), data
        source = ("192.0.2.77", random.Random(index).randrange(1, 65536))
        assert refusal(plain, 503, "Overloaded", to_tag="t", source=source) == \
            build_response(request, 503, "Overloaded", source=source, to_tag="t"), data
    assert plain_seen > fuzz.cases() // 20
