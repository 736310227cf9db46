"""esl/_eventhead.c against its Python fallback (esl.protocol._parse_head): the same headers,
or the same refusal, for real events and for thousands of mutated ones."""

from __future__ import annotations

import random
from pathlib import Path
from urllib.parse import unquote

import pytest

from busylamp.esl import protocol
from busylamp.esl.protocol import EVENT_PLAIN, FrameParser
from tests.extensions import require_built_extension

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# what makes a header line interesting to a parser
PIECES = [b"\r", b"\n", b":", b": ", b"::", b" ", b"%", b"%4", b"%41", b"%C3%A9", b"%C3", b"%zz",
          b"%0A", b"%3A%20", b"\xff", b"\xc3", b"\xe2\x82\xac", b"_undef_", b"\x00", b"\t"]


@pytest.fixture
def parse_head_c():
    if protocol._parse_head_c is None:
        require_built_extension("esl/_eventhead.c")
    return protocol._parse_head_c


def _bodies() -> list[bytes]:
    bodies = []
    for path in sorted((FIXTURES / "esl").glob("*.txt")) + sorted((FIXTURES / "esl_synth").glob("*.txt")):
        for frame in FrameParser().feed(path.read_bytes()):
            if frame.content_type == EVENT_PLAIN:
                bodies.append(frame.body)
    assert len(bodies) >= 20
    return bodies


def _head_end(raw: bytes) -> int:
    end = raw.find(b"\n\n")
    if end < 0:
        end = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
    return end


def _both(parse_head_c, raw: bytes, cache_max: int = 8192) -> tuple[object, object]:
    end = _head_end(raw)
    in_c = parse_head_c(raw, end, {}, unquote, cache_max)
    in_python = protocol._parse_head(raw[:end].decode("utf-8", "replace"))
    return in_c, in_python


def test_real_events_parse_alike(parse_head_c) -> None:
    for raw in _bodies():
        in_c, in_python = _both(parse_head_c, raw)
        assert in_c is not None and in_c == in_python


def test_mutated_events_parse_or_fail_alike(parse_head_c) -> None:
    rng = random.Random(4235)
    bodies = _bodies()
    refused = accepted = 0
    for _ in range(6000):
        raw = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw) + 1)
            if rng.random() < 0.7:
                raw[at:at] = rng.choice(PIECES)
            else:
                del raw[at:at + rng.randint(1, 8)]
        in_c, in_python = _both(parse_head_c, bytes(raw), cache_max=rng.choice((1, 4, 8192)))
        assert in_c == in_python, bytes(raw)
        if in_c is None:
            refused += 1
        else:
            accepted += 1
    assert refused > 300 and accepted > 3000  # both outcomes were exercised


def test_the_cache_is_filled_bounded_and_cleared(parse_head_c) -> None:
    cache: dict[str, str] = {}
    raw = b"Event-Name: X\nA: a%20b\nB: c%20d\nC: e%20f\n\n"
    headers = parse_head_c(raw, raw.index(b"\n\n"), cache, unquote, 2)
    assert headers == {"Event-Name": "X", "A": "a b", "B": "c d", "C": "e f"}
    assert cache == {"e%20f": "e f"}  # cleared when it held 2, then filled again
    seen = []
    again = parse_head_c(raw, raw.index(b"\n\n"), {"a%20b": "cached"}, seen.append, 8192)
    assert again["A"] == "cached" and seen == ["c%20d", "e%20f"]  # a miss only calls unquote


def test_bad_arguments_raise(parse_head_c) -> None:
    with pytest.raises(TypeError):
        parse_head_c("text", 1, {}, unquote, 1)
    with pytest.raises(ValueError):
        parse_head_c(b"A: b", 5, {}, unquote, 1)
    with pytest.raises(ZeroDivisionError):  # an error in unquote comes through
        parse_head_c(b"A: %41", 6, {}, lambda value: 1 / 0, 1)
    assert parse_head_c(b"A: b", 0, {}, unquote, 1) is None


def test_names_long_foreign_and_past_the_kept_ones_parse_alike(parse_head_c) -> None:
    """Names are kept in a table of 2,048 (ASCII, up to 64 bytes): names longer, not ASCII, or
    past what the table holds are made each time, and read the same."""
    lines = [b"Event-Name: X", b"N" * 65 + b": long", "Nämé: x".encode(), b"\xffName: y"]
    lines += [b"variable_v%d: %d" % (i, i) for i in range(5000)]
    raw = b"\n".join(lines) + b"\n\n"
    for _ in range(2):  # made, then found (or made again)
        in_c, in_python = _both(parse_head_c, raw)
        assert in_c == in_python and len(in_c) == 5004  # type: ignore[arg-type]
