"""The prebuilt 200 (build_ok with response_tail) and the reworked build_response give, byte for
byte, what build_response gave before them (kept below as the reference), over the fixtures,
the torture messages, SUBSCRIBE variations and mutated messages; and the engine answers an
ordinary SUBSCRIBE, and its refresh, through build_ok's one-string path."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.engine import dispatch as dispatch_module
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.sip import Headers, ParseError, Request, Response, parse_message
from busylamp.presence.sip import build as build_module
from busylamp.presence.sip.build import REASONS, build_ok, build_response, response_tail
from busylamp.presence.sip.via import Via
from busylamp.presence.state import PresenceState
from tests import fuzz
from tests.unit.sip_samples import SUBSCRIBE as PROXIED
from tests.unit.test_sip_refuse import NOT_PLAIN, PLAIN, sipp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# -- the reference: build_response as it was before build_ok (5cd200e), unchanged ------------

def _reference_top_via(via: Via, source: tuple[str, int] | None) -> str:
    if source is None:
        return via.raw
    ip, port = source[0], source[1]
    changed = False
    params = dict(via.params)
    if via.sent_by()[0] != ip:
        params["received"] = ip
        changed = True
    if "rport" in params and params["rport"] is None:
        params["rport"] = str(port)
        changed = True
    if not changed:
        return via.raw
    return Via(via.transport, via.host, via.port, params, via.raw, via.protocol).serialize()


def reference_response(
    request: Request, status: int, reason: str | None = None, *,
    source: tuple[str, int] | None = None, to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
    content_type: str | None = None, server: str | None = None,
) -> bytes:
    """build_response of 5cd200e, line for line."""
    index = request.headers._index
    vias = request.headers.get_all("Via")
    lines = [f"SIP/2.0 {status} {reason if reason is not None else REASONS.get(status, '')}"]
    if vias:
        lines.append("Via: " + _reference_top_via(request._top_via(), source))
        lines.extend("Via: " + v for v in vias[1:])
    from_value = index.get("From", [""])[0]
    to_value = index.get("To", [""])[0]
    lines.append("From: " + from_value)
    has_tag = False
    if to_value:
        try:
            has_tag = request.to.tag is not None
        except ParseError:
            has_tag = True
    if to_tag and status > 100 and not has_tag:
        to_value = f"{to_value};tag={to_tag}"
    lines.append("To: " + to_value)
    lines.append("Call-ID: " + index.get("Call-ID", [""])[0])
    lines.append("CSeq: " + index.get("CSeq", [""])[0])
    if request.method == "SUBSCRIBE" and 100 < status < 300 and not has_tag:
        lines.extend("Record-Route: " + rr for rr in request.headers.get_all("Record-Route"))
    lines.extend(f"{name}: {value}" for name, value in headers)
    if server:
        lines.append("Server: " + server)
    if body and content_type:
        lines.append("Content-Type: " + content_type)
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


# -- the corpus: every request that parses, or that a 4xx can be addressed to ------------------

def addressable(data: bytes) -> Request | None:
    """The request in ``data`` as the engine would answer it (parsed, or the request of its
    ParseError), or None (a response, or nothing to address)."""
    try:
        message = parse_message(data)
    except ParseError as exc:
        return exc.request
    return message if isinstance(message, Request) else None


def _vary(via: str = "Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v;rport", **more: str) -> bytes:
    return sipp(Via=via, **more)


VARIATIONS = {
    "no rport": _vary("Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v"),
    "rport with a value": _vary("Via: SIP/2.0/UDP 10.0.0.7:5062;rport=5062;branch=z9hG4bK-v"),
    "rport first": _vary("Via: SIP/2.0/UDP 10.0.0.7:5062;rport;branch=z9hG4bK-v"),
    "received already": _vary("Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v;received=1.2.3.4"),
    "received and rport": _vary("Via: SIP/2.0/UDP h.example.com;received=1.2.3.4;rport;"
                                "branch=z9hG4bK-v"),
    "host name Via": _vary("Via: SIP/2.0/TCP phone.example.com:5062;branch=z9hG4bK-v;rport"),
    "IPv6 Via": _vary("Via: SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bK-v;rport"),
    "IPv6 Via, no port": _vary("Via: SIP/2.0/UDP [2001:db8::7];branch=z9hG4bK-v"),
    "two Via lines": _vary("Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-e;rport\r\n"
                           "Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v;rport"),
    "two Vias, one line": _vary("Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-e,"
                                "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v;rport"),
    "a Via with a trailing comma": _vary("Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v ,"),
    "compact Via": _vary("v: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-v;rport"),
    "compact everything": _vary("v: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-c;rport",
                                From="f: <sip:2000@example.com>;tag=c",
                                To="t: <sip:1001@example.com>",
                                **{"Call-ID": "i: c@10.0.0.7", "Content-Length": "l: 0"}),
    "To with a tag": _vary(To="To: <sip:1001@example.com>;tag=have"),
    "To with a bare tag": _vary(To="To: <sip:1001@example.com>;tag"),
    "To addr-spec with a tag": _vary(To="To: sip:1001@example.com;tag=have"),
    "one Record-Route": _vary(**{"User-Agent": "Record-Route: <sip:p1.example;lr>"}),
    "Record-Routes": _vary(**{"User-Agent": "Record-Route: <sip:p1.example;lr>, <sip:p2;lr>\r\n"
                                            "Record-Route: <sip:p3.example;lr>"}),
    "Record-Route and a To tag": _vary(To="To: <sip:1001@example.com>;tag=have",
                                       **{"User-Agent": "Record-Route: <sip:p1.example;lr>"}),
    "proxied (two Vias, Record-Routes)": PROXIED,
    "not UTF-8 in From": _vary(From='From: "B\udce4r" <sip:2000@example.com>;tag=u'),
    "NOTIFY": _vary(start="NOTIFY sip:1001@example.com SIP/2.0", CSeq="CSeq: 4 NOTIFY"),
    "OPTIONS with Record-Route": _vary(start="OPTIONS sip:1001@example.com SIP/2.0",
                                       CSeq="CSeq: 4 OPTIONS",
                                       **{"User-Agent": "Record-Route: <sip:p1.example;lr>"}),
}


def _fixture_messages() -> Iterator[tuple[str, bytes]]:
    for path in sorted((FIXTURES / "sip").glob("*.txt")):
        yield f"sip/{path.name}", path.read_bytes()
    for path in sorted((FIXTURES / "sip-torture").glob("rfc*/*.dat")):
        yield str(path.relative_to(FIXTURES)), path.read_bytes()


CORPUS = dict(_fixture_messages())
CORPUS.update({f"refuse: {name}": data for name, data in {**PLAIN, **NOT_PLAIN}.items()})
CORPUS.update({f"variation: {name}": data for name, data in VARIATIONS.items()})
REQUESTS = {name: request for name, data in CORPUS.items()
            if (request := addressable(data)) is not None}

SOURCES = [None, ("10.0.0.7", 5062), ("203.0.113.5", 40001), ("2001:db8::7", 5062),
           ("192.0.2.9", 5060)]
TAILS = [((), None), ((), "busylamp/test"),
         ((("Expires", "3600"), ("Contact", "<sip:192.0.2.1:5065;transport=udp>"),
           ("Allow-Events", "dialog, message-summary, presence")), "busylamp/1.0")]


def test_the_corpus_is_what_it_claims() -> None:
    """Fixtures, torture messages and variations are all in; most are answerable."""
    torture = [name for name in REQUESTS if name.startswith("sip-torture/")]
    assert len(torture) >= 40
    assert all(f"variation: {name}" in REQUESTS for name in VARIATIONS)
    assert any(name.startswith("sip/") for name in REQUESTS)


@pytest.mark.parametrize("name", REQUESTS)
def test_build_ok_is_build_response_byte_for_byte(name: str) -> None:
    request = REQUESTS[name]
    for source in SOURCES:
        for to_tag in ("T4g", None, ""):
            for headers, server in TAILS:
                expected = reference_response(request, 200, source=source, to_tag=to_tag,
                                              headers=headers, server=server)
                assert build_ok(request, source, to_tag, response_tail(headers, server)) == \
                    expected, (name, source, to_tag)
                assert build_response(request, 200, source=source, to_tag=to_tag,
                                      headers=headers, server=server) == expected


STATUSES = [(100, None), (180, "Ringing"), (202, None), (299, None), (400, "Bad Via"),
            (481, "Subscription does not exist"), (489, None), (503, "Overloaded"), (999, None)]


@pytest.mark.parametrize("name", REQUESTS)
def test_build_response_is_the_old_one_byte_for_byte(name: str) -> None:
    request = REQUESTS[name]
    for source in SOURCES:
        for status, reason in STATUSES:
            for extra in ({}, {"headers": [("Retry-After", "5"), ("X-Ä", "ü")],
                               "server": "busylamp"},
                          {"body": b"<x/>", "content_type": "application/xml"},
                          {"body": b"no type"}):
                assert build_response(request, status, reason, source=source, to_tag="t1",
                                      **extra) == \
                    reference_response(request, status, reason, source=source, to_tag="t1",
                                       **extra), (name, status, source)


def test_requests_made_by_hand_take_the_general_path() -> None:
    """No parsed views cached, no Via, no To: still what the reference makes."""
    headers = Headers([("v", "SIP/2.0/UDP 10.0.0.7;branch=z9hG4bK-h;rport"),
                       ("f", "<sip:a@b>;tag=1"), ("t", "<sip:c@d>"), ("i", "h@1"),
                       ("CSeq", "1 SUBSCRIBE"), ("Record-Route", "<sip:p;lr>")])
    bare = Headers([("From", "<sip:a@b>;tag=1"), ("Call-ID", "h@2"), ("CSeq", "1 SUBSCRIBE")])
    blank_via = Headers([("Via", " "), ("To", "<sip:c@d>"), ("CSeq", "1 OPTIONS")])
    for table in (headers, bare, blank_via):
        for method in ("SUBSCRIBE", "OPTIONS"):
            request = Request(method, "sip:c@d", table, b"")
            for source in SOURCES:
                tail = response_tail([("Expires", "60")], "s")
                assert build_ok(request, source, "x", tail) == reference_response(
                    request, 200, source=source, to_tag="x", headers=[("Expires", "60")],
                    server="s")


def test_mutated_requests_answer_as_before() -> None:
    """Mutations of the corpus: whatever can be answered is answered as the reference does."""
    corpus = list(CORPUS.values())
    answered = 0
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("build-ok", index)
        request = addressable(fuzz.mutate(rng.choice(corpus), rng, corpus))
        if request is None:
            continue
        answered += 1
        source = rng.choice(SOURCES)
        headers, server = rng.choice(TAILS)
        expected = reference_response(request, 200, source=source, to_tag="m",
                                      headers=headers, server=server)
        assert build_ok(request, source, "m", response_tail(headers, server)) == expected
        assert build_response(request, 200, source=source, to_tag="m", headers=headers,
                              server=server) == expected
        assert build_response(request, 400, "Bad", source=source, to_tag="m") == \
            reference_response(request, 400, "Bad", source=source, to_tag="m")
    assert answered > fuzz.cases() // 4


def test_the_top_via_is_left_alone_unless_something_is_added() -> None:
    """The same string object when neither received nor rport is added (no copy, no join)."""
    request = REQUESTS["variation: no rport"]
    via = request._top_via()
    assert build_module._top_via_for_response(via, ("10.0.0.7", 1)) is via.raw
    assert build_module._top_via_for_response(via, ("10.0.0.8", 1)).endswith(
        ";received=10.0.0.8")


# -- the engine takes the fast path ------------------------------------------------------------

PHONE = ("10.0.0.7", 5062)


def _engine() -> PresenceEngine:
    state = PresenceState(REGISTRY, PackageOptions())
    return PresenceEngine(EngineConfig(contacts={"udp": ("192.0.2.1", 5065)}), state, REGISTRY)


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count build_ok, build_response and build_ok's general path as the engine calls them."""
    calls = {"build_ok": 0, "build_response": 0, "general": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(dispatch_module, "build_ok", counted("build_ok", build_ok))
    monkeypatch.setattr(dispatch_module, "build_response",
                        counted("build_response", build_response))
    monkeypatch.setattr(build_module, "_dialog_fields",
                        counted("general", build_module._dialog_fields))
    return calls


def test_an_ordinary_subscribe_and_its_refresh_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = _engine()
    calls = _spy(monkeypatch)
    data = sipp(Via="Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-fast;rport")
    engine.receive(data, PHONE, "udp", None, 1000.0)
    out = engine.messages_to_send()
    assert calls == {"build_ok": 1, "build_response": 0, "general": 0}
    ok = out[0][2]
    request = parse_message(data)
    response = parse_message(ok)
    assert isinstance(response, Response) and response.status == 200
    tag = response.to.tag
    assert ok == reference_response(
        request, 200, source=PHONE, to_tag=tag, server=engine._server_header,
        headers=[("Expires", "3600"), ("Contact", "<sip:192.0.2.1:5065;transport=udp>"),
                 ("Allow-Events", engine._allow_events)])
    assert response.vias[0].rport == 5062
    # the retransmission gets the stored 200, built once
    engine.receive(data, PHONE, "udp", None, 1000.5)
    assert engine.messages_to_send()[0][2] == ok and calls["build_ok"] == 1
    # the refresh: To tag kept, the new expiry's tail
    refresh = sipp(Via="Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-fast2;rport",
                   To=f"To: <sip:1001@example.com>;tag={tag}", CSeq="CSeq: 2 SUBSCRIBE",
                   Expires="Expires: 600")
    engine.receive(refresh, PHONE, "udp", None, 1001.0)
    again = engine.messages_to_send()[0][2]
    assert calls == {"build_ok": 2, "build_response": 0, "general": 0}
    assert again == reference_response(
        parse_message(refresh), 200, source=PHONE, to_tag="ignored",
        server=engine._server_header,
        headers=[("Expires", "600"), ("Contact", "<sip:192.0.2.1:5065;transport=udp>"),
                 ("Allow-Events", engine._allow_events)])


def test_a_proxied_subscribe_is_answered_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Vias and Record-Routes: build_ok's general path, the same bytes as the reference."""
    engine = _engine()
    calls = _spy(monkeypatch)
    engine.receive(PROXIED, ("10.0.0.5", 5062), "udp", None, 1000.0)
    ok = engine.messages_to_send()[0][2]
    assert calls == {"build_ok": 1, "build_response": 0, "general": 1}
    response = parse_message(ok)
    assert response.status == 200
    assert response.headers.get_all("Record-Route") == \
        ["<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"]
    assert ok == reference_response(
        parse_message(PROXIED), 200, source=("10.0.0.5", 5062), to_tag=response.to.tag,
        server=engine._server_header,
        headers=[("Expires", "600"), ("Contact", "<sip:192.0.2.1:5065;transport=udp>"),
                 ("Allow-Events", engine._allow_events)])


def test_the_tails_are_kept_per_transport_and_expiry() -> None:
    engine = _engine()
    first = engine._ok_tail("udp", 3600)
    assert engine._ok_tail("udp", 3600) is first
    assert engine._ok_tail("udp", 600) != first
    assert first == response_tail(engine._ok_headers("udp", 3600), engine._server_header)
    for expires in range(1000):
        engine._ok_tail("udp", expires)
    assert len(engine._ok_tails) <= 256


def test_top_via_for_response_is_the_serialized_copy_for_random_vias() -> None:
    """received set in its place (else last) and an empty rport filled, as a copy of the
    parameters put through Via.serialize would give, for thousands of random Vias."""
    import random

    from busylamp.presence.sip.build import _top_via_for_response
    from busylamp.presence.sip.via import Via, parse_via

    def reference(via: Via, source: tuple[str, int]) -> str:
        params = dict(via.params)
        host = via.host[1:-1] if via.host.startswith("[") else via.host
        changed = False
        if host != source[0]:
            params["received"] = source[0]
            changed = True
        if "rport" in params and params["rport"] is None:
            params["rport"] = str(source[1])
            changed = True
        if not changed:
            return via.raw
        return Via(via.transport, via.host, via.port, params, via.raw, via.protocol).serialize()

    rnd = random.Random(11)
    hosts = ["10.0.0.7", "10.0.0.8", "[2001:db8::1]", "h.example.com"]
    names = ["branch", "rport", "received", "ttl", "maddr", "x"]
    for _ in range(5_000):
        params = [rnd.choice(names) + rnd.choice(["", "=1", "=10.0.0.9"])
                  for _ in range(rnd.randint(0, 4))]
        port = rnd.choice(["", ":5062"])
        text = f"SIP/2.0/UDP {rnd.choice(hosts)}{port}" + "".join(";" + p for p in params)
        via = parse_via(text)
        source = (rnd.choice(["10.0.0.7", "2001:db8::1", "10.0.0.8"]), rnd.choice([5062, 5999]))
        assert _top_via_for_response(via, source) == reference(via, source), (text, source)
