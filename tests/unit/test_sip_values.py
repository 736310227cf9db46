"""presence/sip/_values.c against its Python specification (uri.py's _parse_uri and
_parse_name_addr, via.py's _parse_via): for every URI, name-addr and Via of the torture messages
and captures, and for mutants of them, the C parser gives the same fields, or None and leaves
the value to Python (which also gives any 400)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from busylamp.presence.sip import parse, uri, via
from busylamp.presence.sip.grammar import ParseError, split_list
from tests.extensions import require_built_extension
from tests.unit.sip_samples import SUBSCRIBE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ADDRESS_HEADERS = ("From", "To", "Contact", "Route", "Record-Route", "Reply-To", "Refer-To")
# what makes a URI, name-addr or Via interesting to a parser
PIECES = [" ", "  ", "\t", '"', "\\", "<", ">", ";", "=", ":", "@", "[", "]", "?", ",", "/",
          "*", "é", "\x00", "\x1c", "sip:", "sips:", "tel:", "SIP/2.0/", "UDP ", ";tag=",
          ";branch=z9hG4bK", ";rport", "99999", "65536", ":0", "[::1]", "%40", "'", "~", "a"]
OBJECT = {"sip_uri": uri.SipUri, "name_addr": uri.NameAddr, "via": via.Via}
SPEC = {"sip_uri": uri._parse_uri, "name_addr": uri._parse_name_addr, "via": via._parse_via}


@pytest.fixture
def values():
    try:
        from busylamp.presence.sip import _values
    except ImportError:
        require_built_extension("presence/sip/_values.c")
    return _values


def _corpus() -> dict[str, list[str]]:
    """Every Via, address and URI in the torture messages and captures (as the parser reads
    them), and a few hand-picked shapes."""
    found: dict[str, list[str]] = {"sip_uri": [], "name_addr": [], "via": []}
    messages = [p.read_bytes() for p in sorted((FIXTURES / "sip-torture").glob("rfc*/*.dat"))]
    messages += [p.read_bytes() for p in sorted((FIXTURES / "sip").glob("*.txt"))]
    assert len(messages) >= 61
    for data in messages + [SUBSCRIBE]:
        try:
            msg = parse.parse_message(data)
        except ParseError as exc:
            msg = exc.request
            if msg is None:
                continue
        if isinstance(msg, parse.Request):
            found["sip_uri"].append(msg.uri)
        for value in msg.headers.get_all("Via"):
            found["via"] += split_list(value)
        for name in ADDRESS_HEADERS:
            for value in msg.headers.get_all(name):
                found["name_addr"] += split_list(value)
    for value in list(found["name_addr"]):
        with contextlib.suppress(ParseError):
            found["sip_uri"].append(uri._parse_name_addr(value).uri)
    found["sip_uri"] += ["sip:w1@example.com", "SIPS:a:@h.x:5;Transport=TCP;lr", "sip:h:65535",
                         "sip:a;b=c@h", "sip:h;x=a=b", "sip:%61@h", "tel:+1-201-555-0123"]
    found["name_addr"] += ['"Bob" <sip:b@x>;tag=1', 'Bob  Smith <sip:b@x> ; tag = 2 ;lr',
                           "sip:x@y;tag=1", "*", " <sip:a@b> ", '"" <sip:a@b>', "a\"b <sip:c>"]
    found["via"] += ["SIP/2.0/UDP 10.0.0.7:20123;branch=z9hG4bK-1;rport", "SIP/2.0/tcp h  ",
                     "sip/2.0/Udp h ;received=1.2.3.4", "X;Y/2/Z h", "SIP/2.0/UDP h;"]
    return found


def _mutants(seeds: list[str], count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        text = rnd.choice(seeds)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randint(0, len(text))
            roll = rnd.random()
            if roll < 0.45:
                text = text[:at] + rnd.choice(PIECES) + text[at:]
            elif roll < 0.75:
                text = text[:at] + text[at + rnd.randint(1, 6):]
            else:
                text = text[:at] + rnd.choice(PIECES) + text[at + 1:]
        out.append(text)
    return out


def _fields(parsed: object) -> list[tuple[object, type]]:
    """The object's fields with their types (a '5' is not a 5; a dict's order counts)."""
    values = [getattr(parsed, name) for name in parsed.__slots__]
    return [(list(v.items()) if isinstance(v, dict) else v, type(v)) for v in values]


@pytest.mark.parametrize("kind", ["sip_uri", "name_addr", "via"])
def test_c_agrees_with_python_where_it_answers(values, kind: str) -> None:
    seeds = _corpus()[kind]
    fast_parse, spec, make = getattr(values, kind), SPEC[kind], OBJECT[kind]
    answered = 0
    for text in seeds + _mutants(seeds, 30_000, len(kind)):
        fast = fast_parse(text)
        if fast is None:
            continue
        answered += 1
        try:
            expected = spec(text)
        except ParseError as exc:
            raise AssertionError(f"C took {text!r}, which Python refuses ({exc.reason})") from None
        assert _fields(make(*fast)) == _fields(expected), text
    assert answered > 5_000  # the plain shape is common among the mutants too


@pytest.mark.parametrize("kind", ["sip_uri", "name_addr", "via"])
def test_the_corpus_is_mostly_plain(values, kind: str) -> None:
    """The values phones send take the C path (the point of it); the odd ones do not."""
    seeds = _corpus()[kind]
    taken = sum(getattr(values, kind)(text) is not None for text in seeds)
    assert taken > len(seeds) // 2, (taken, len(seeds))


@pytest.mark.parametrize(("kind", "text"), [
    ("sip_uri", "tel:+1-201-555-0123"), ("sip_uri", "sip:[2001:db8::1]:5060"),
    ("sip_uri", "sip:a@b?subject=x"), ("sip_uri", 'sip:a@b;x="y"'), ("sip_uri", "sip:a@b@c"),
    ("sip_uri", "sip:é@b"), ("sip_uri", "sip:h:99999"), ("sip_uri", "http://x"),
    ("name_addr", '"B\\"ob" <sip:b@x>'), ("name_addr", "<sip:a@b>;x=\"q\""),
    ("name_addr", "<sip:a@b"), ("name_addr", "\t<sip:a@b>"), ("name_addr", "<1sip:a>"),
    ("via", " SIP/2.0/UDP h"), ("via", "SIP / 2.0/UDP h"), ("via", "SIP/2.0/UDP [::1]:5060"),
    ("via", "SIP/2.0/UDP a b"), ("via", "SIP/2.0/UDP h;branch="), ("via", "SIP/2.0/UDP"),
])
def test_the_uncommon_is_left_to_python(values, kind: str, text: str) -> None:
    assert getattr(values, kind)(text) is None


def test_parse_uri_and_parse_via_use_c_for_a_plain_value(values, monkeypatch) -> None:
    def refuse(text: str) -> None:
        raise AssertionError("the Python parser ran")

    monkeypatch.setattr(uri, "_parse_uri", refuse)
    monkeypatch.setattr(uri, "_parse_name_addr", refuse)
    monkeypatch.setattr(via, "_parse_via", refuse)
    monkeypatch.setattr(uri, "_uri_memo", {})
    monkeypatch.setattr(uri, "_name_addr_memo", {})
    assert uri.parse_uri("sip:w9@example.com:5062").port == 5062
    assert uri.parse_name_addr("<sip:w9@example.com>;tag=9").tag == "9"
    assert via.parse_via("SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-9").branch == "z9hG4bK-9"
    with pytest.raises(AssertionError):
        uri.parse_uri("tel:+12015550123")  # (the uncommon does go there)


def _views(data: bytes) -> list[object]:
    """What the engine reads of a message: each view's fields, or the 400 it raises."""
    try:
        msg = parse.parse_message(data)
    except ParseError as exc:
        return ["message", exc.reason]
    out: list[object] = []
    for view in (lambda: msg.from_, lambda: msg.to, lambda: msg.contact, lambda: msg.vias,
                 lambda: uri.parse_uri(msg.uri) if isinstance(msg, parse.Request) else None):
        try:
            got = view()
        except ParseError as exc:
            out.append(("error", exc.reason, exc.status))
            continue
        items = got if isinstance(got, list) else [got]
        out.append([None if item is None else _fields(item) for item in items])
    return out


def test_what_the_engine_reads_is_the_same_with_and_without_c(
    values, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeds = [SUBSCRIBE, SUBSCRIBE.replace(b"Desk 1001", b"Desk\\\" 1001"),
             SUBSCRIBE.replace(b"10.0.0.5:5062;", b"[2001:db8::5]:5062;")]
    rnd = random.Random(7)
    cases = []
    for _ in range(6_000):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randint(0, len(data))
            piece = rnd.choice(PIECES).encode("utf-8", "surrogateescape")
            data[at:at + rnd.randint(0, 2)] = piece
        cases.append(bytes(data))
    monkeypatch.setattr(uri, "_uri_memo", {})
    monkeypatch.setattr(uri, "_name_addr_memo", {})
    with_c = [_views(data) for data in cases]
    monkeypatch.setattr(uri, "_uri_memo", {})
    monkeypatch.setattr(uri, "_name_addr_memo", {})
    monkeypatch.setattr(uri, "_sip_uri_c", None)
    monkeypatch.setattr(uri, "_name_addr_c", None)
    monkeypatch.setattr(via, "_via_c", None)
    without = [_views(data) for data in cases]
    for data, fast, slow in zip(cases, with_c, without, strict=True):
        assert fast == slow, data
