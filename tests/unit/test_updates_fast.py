"""The fast path of update validation (wire/updates.py:_parse_plain) against the general one:
whatever the fast path accepts, the general path accepts with the same `Update`; the bridge's
own updates take the fast path; anything unusual is left to the general path."""

from __future__ import annotations

import random

import pytest

from busylamp.wire import updates as wire_updates
from busylamp.wire.updates import (
    UpdateError,
    dialog_update,
    message_summary_update,
    parse_update,
    presence_update,
)
from tests.extensions import require_built_extension


@pytest.fixture(autouse=True, params=["c", "python"])
def value_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the value check in C (wire/_plain.c) and in Python."""
    if request.param == "python":
        monkeypatch.setattr(wire_updates, "_plain_values", wire_updates._plain_values_py)
    elif wire_updates._plain_values is wire_updates._plain_values_py:
        require_built_extension("wire/_plain.c")
    return request.param


def _stamped(update: dict, sequence: int) -> dict:
    return {**update, "Bridge-ID": "b1", "Bridge-Epoch": 3, "Sequence": sequence,
            "Switch-ID": "core-1", "Event-Timestamp": 1_700_000_000_000_000}


def _samples() -> list[dict]:
    dialog = dialog_update(user="1001", domain="Example.COM", call_id="c-1", state="early",
                           direction="recipient", remote="5551000", expires=120,
                           remote_target="sip:**1001@example.com", from_tag="a", to_tag="b")
    presence = presence_update(user="1001", domain="example.com", call_id="c-1",
                               state="confirmed", expires=600)
    bare = {"Event-Name": "Update", "Event-Package": "PRESENCE", "From-User": "u",
            "From-Realm": "r.example", "State": "Away"}
    return [_stamped(dialog, 7), _stamped(presence, 8), dialog, presence, bare]


ODD_VALUES: list[object] = [
    None, "", 0, 7, -1, 2**31, 2**63, 2**64, True, 1.5, float("nan"), [], {}, ["x"],
    {"k": "\ud800"}, "x" * 1025, "x" * 600, "a\x01b", "a\x7fb", "caf\u00e9", "\ud800", "12",
    " 12", "-3", "+4", "00012", "9" * 20, "EARLY", "Terminated", "initiator", "bogus",
    "update", "snapshot", "dialog", "message-summary", "sip:x@y", "trying",
]


def _mutants(rng: random.Random, count: int) -> list[dict]:
    base = _samples()
    keys = sorted({key for sample in base for key in sample} | {"Presentity", "Direction"})
    out = []
    for _ in range(count):
        obj = dict(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys)
            value = rng.choice(ODD_VALUES)
            if value is None and rng.random() < 0.5:
                obj.pop(key, None)
            else:
                obj[key] = value
        if rng.random() < 0.05:
            obj[rng.choice([1, "caf\u00e9", "\udc00"])] = "x"  # odd keys
        out.append(obj)
    return out


def _general(obj: dict) -> object:
    try:
        return wire_updates._parse_general(obj)
    except UpdateError as exc:
        return exc


def test_the_bridges_own_updates_take_the_fast_path() -> None:
    for sample in _samples():
        fast = wire_updates._parse_plain(sample)
        assert fast == wire_updates._parse_general(sample)
        assert parse_update(sample) == fast


@pytest.mark.parametrize("sample", [
    {"Event-Name": "snapshot", "Switch-ID": "s", "Updates": []},
    message_summary_update(user="1001", domain="example.com", waiting="yes",
                           voice_message="1/2"),
    {**_samples()[0], "To-User": 1002},  # ints in string fields are left to the general path
    {**_samples()[0], "Expires": "-5"},
    {**_samples()[0], "Pad": "x" * 1000},  # long in all
])
def test_what_the_fast_path_leaves_to_the_general_one(sample: dict) -> None:
    with pytest.raises(wire_updates._Unusual):
        wire_updates._parse_plain(sample)
    general = _general(sample)
    assert not isinstance(general, UpdateError)
    assert parse_update(sample) == general


def test_the_fast_path_never_accepts_what_the_general_one_would_not() -> None:
    rng = random.Random(1913)
    taken = 0
    for obj in _mutants(rng, 6000):
        general = _general(obj)
        try:
            fast = wire_updates._parse_plain(obj)
        except wire_updates._Unusual:
            fast = None
        if fast is not None:
            taken += 1
            assert fast == general, obj
        # parse_update gives the general path's answer either way, error message included
        try:
            result: object = parse_update(obj)
        except UpdateError as exc:
            result = exc
        if isinstance(general, UpdateError):
            assert isinstance(result, UpdateError) and str(result) == str(general), obj
        else:
            assert result == general, obj
    assert 500 < taken < 6000  # both paths were exercised


def test_errors_keep_their_index_through_parse_updates() -> None:
    good = _samples()[0]
    bad = {**good, "State": "ringing"}
    with pytest.raises(UpdateError) as info:
        wire_updates.parse_updates([good, bad])
    assert info.value.index == 1 and info.value.field == "State"


@pytest.mark.parametrize("value_check", ["c"], indirect=True)
def test_the_value_check_in_c_and_in_python_agree(value_check: str) -> None:
    """Verdicts and what is remembered as clean, for the mutants, with a small clean set that
    keeps being emptied."""
    in_c, in_python = wire_updates._plain_values, wire_updates._plain_values_py
    clean_c: set[str] = set()
    clean_py: set[str] = set()
    rng = random.Random(3842)
    verdicts = set()
    for obj in _mutants(rng, 6000) + _samples():
        verdict = in_c(obj, clean_c, wire_updates._INT_FIELDS, 1024, 50)
        assert verdict == in_python(obj, clean_py, wire_updates._INT_FIELDS, 1024, 50), obj
        assert clean_c == clean_py, obj
        verdicts.add(verdict)
    assert verdicts == {True, False}
    with pytest.raises(TypeError):
        in_c([], clean_c, wire_updates._INT_FIELDS, 1024, 50)
