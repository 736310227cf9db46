"""bridge/normalize.py remembers split_aor's answers: the same answers, a bounded memory."""

from __future__ import annotations

import pytest

from busylamp.bridge import normalize as norm

TEXTS = ["sip:1001@Example.com;transport=udp", "<sips:park+5901@pbx.example:5061>", "1002",
         "bad user@example.com", "sip:@example.com", "[2001:db8::1]", "u@[2001:db8::1]:5060",
         "", "sip:a\r\n@b", "x@y"]


@pytest.mark.parametrize("default", [None, "default.example"])
def test_remembered_answers_equal_fresh_ones(default: str | None) -> None:
    norm._AORS.clear()
    for _ in range(2):  # first computed, then remembered
        for text in TEXTS:
            expected = norm._split_aor(text, default) if text else None
            assert norm.split_aor(text, default) == expected


def test_the_memory_is_bounded() -> None:
    norm._AORS.clear()
    for i in range(norm._AORS_MAX * 2 + 5):
        assert norm.split_aor(f"u{i}@example.com", None) == (f"u{i}", "example.com")
        assert len(norm._AORS) <= norm._AORS_MAX
    # the domain default is part of the key: the same text can name two presentities
    assert norm.split_aor("1001", "a.example") == ("1001", "a.example")
    assert norm.split_aor("1001", "b.example") == ("1001", "b.example")
