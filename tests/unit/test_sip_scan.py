"""presence/sip/_scan.c against its Python specification: the same response sniff, and the same
head split (or a refusal that leaves the message to the Python parser), for the torture messages,
the captured fixtures and thousands of mutants of them; parse_message the same either way."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from busylamp.presence.sip import parse, sniff
from busylamp.presence.sip.grammar import ParseError
from busylamp.presence.sip.headers import CANON_CACHE
from tests.extensions import require_built_extension
from tests.unit.sip_samples import SUBSCRIBE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# what makes a SIP head interesting to a scanner
PIECES = [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b":", b" ", b"\t", b",", b";", b";branch=",
          b";branch=z9hG4bK", b"\r\nVia:", b"\r\nv:", b"\r\n ", b"\r\nX-Odd:", b"\r\nBad Name:",
          b"\xff", b"\xc3", b"\xe2\x82\xac", b"\x00", b"SIP/2.0 ", b"9", b"Via", b"v"]
ANSWER = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5065;branch=z9hG4bK3c0c.27ae;rport\r\n"
          b"From: <sip:p0@example.com>;tag=gm8_kzBM\r\nTo: <sip:w0@example.com>;tag=0SIPpTag01\r\n"
          b"Call-ID: 0-23401@10.0.0.7\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def scan():
    try:
        from busylamp.presence.sip import _scan
    except ImportError:
        require_built_extension("presence/sip/_scan.c")
    return _scan


def _messages() -> list[bytes]:
    found = [p.read_bytes() for p in sorted((FIXTURES / "sip-torture").glob("rfc*/*.dat"))]
    found += [p.read_bytes() for p in sorted((FIXTURES / "sip").glob("*.txt"))]
    assert len(found) >= 61
    return found + [SUBSCRIBE, ANSWER]


def _mutants(seeds: list[bytes], count: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            at = rnd.randint(0, len(data))
            roll = rnd.random()
            if roll < 0.45:
                data[at:at] = rnd.choice(PIECES)
            elif roll < 0.75:
                del data[at:at + rnd.randint(1, 8)]
            else:
                data[at:at + 1] = rnd.choice(PIECES)
        out.append(bytes(data))
    return out


def _python_split(data: bytes, stream: bool) -> tuple | None:
    """What parse.py's Python functions make of a head, in split_head's terms (None when they
    find an error, which split_head must then also leave to them)."""
    lines, body_at = parse._split_head(data, stream)
    if not lines or not lines[0]:
        return None
    items, error = parse._parse_headers(lines[1:])
    if error is not None:
        return None
    return lines[0], items, parse.Headers._from_canonical(items)._index, body_at


def _outcome(data: bytes, stream: bool) -> tuple:
    try:
        msg = parse.parse_message(data, stream=stream)
    except ParseError as exc:
        req = exc.request
        return ("error", exc.reason, exc.status,
                None if req is None else (req.method, req.uri, list(req.headers.items())))
    first = (msg.method, msg.uri) if isinstance(msg, parse.Request) else (msg.status, msg.reason)
    return ("ok", type(msg).__name__, first, list(msg.headers.items()), msg.body)


def test_sniff_agrees_with_python_on_messages_and_mutants(scan) -> None:
    seeds = _messages()
    answers = [m for m in seeds if m.startswith(b"SIP/2.0 ")] + [ANSWER] * 20
    for data in seeds + _mutants(answers, 20_000, 1) + _mutants(seeds, 5_000, 2):
        assert scan.sniff_response(data) == sniff.sniff_response_py(data), data


def test_split_head_agrees_with_python_where_it_answers(scan) -> None:
    seeds = _messages()
    for data in seeds:  # the Python parser fills the name cache, as in a node
        _python_split(data, False)
    answered = 0
    for data in seeds + _mutants(seeds, 20_000, 3):
        fast = scan.split_head(data, CANON_CACHE)
        if fast is None:
            continue
        answered += 1
        for stream in (False, True):
            assert fast == _python_split(data, stream), data
    assert answered > 5_000  # most mutants keep the common shape


def test_split_head_leaves_the_uncommon_to_python(scan) -> None:
    head = SUBSCRIBE.split(b"\r\n\r\n")[0]
    assert scan.split_head(SUBSCRIBE, CANON_CACHE) is not None
    for data in (
        b"\r\n" + SUBSCRIBE,  # leading CRLF
        head + b"\r\n",  # no blank line
        SUBSCRIBE.replace(b"\r\n", b"\n"),  # LF only
        SUBSCRIBE.replace(b"\r\nCSeq:", b"\r\n  folded\r\nCSeq:"),
        SUBSCRIBE.replace(b"\r\nCSeq:", b"\r\nNo colon here\r\nCSeq:"),
        SUBSCRIBE.replace(b"\r\nCSeq:", b"\r\nX-Never-Seen-Before-7f3a: 1\r\nCSeq:"),
    ):
        assert scan.split_head(data, CANON_CACHE) is None, data
    assert scan.split_head(SUBSCRIBE, {}) is None  # a name the cache does not know yet


@pytest.mark.parametrize("stream", [False, True])
def test_parse_message_is_the_same_with_and_without_the_c_split(
    scan, monkeypatch: pytest.MonkeyPatch, stream: bool,
) -> None:
    seeds = _messages()
    cases = seeds + _mutants(seeds, 4_000, 4 + stream)
    with_c = [_outcome(data, stream) for data in cases]
    monkeypatch.setattr(parse, "_split_head_c", None)
    without = [_outcome(data, stream) for data in cases]
    for data, fast, slow in zip(cases, with_c, without, strict=True):
        assert fast == slow, data


def test_an_ordinary_subscribe_takes_the_c_split(scan, monkeypatch: pytest.MonkeyPatch) -> None:
    parse.parse_message(SUBSCRIBE)  # the header names are in the cache now

    def python_split(data: bytes, stream: bool) -> None:
        raise AssertionError("the Python head split ran")

    monkeypatch.setattr(parse, "_split_head", python_split)
    monkeypatch.setattr(parse, "_parse_headers", python_split)
    assert parse.parse_message(SUBSCRIBE).method == "SUBSCRIBE"
    with pytest.raises(AssertionError):
        parse.parse_message(b"\r\n" + SUBSCRIBE)  # (the uncommon head does go there)
