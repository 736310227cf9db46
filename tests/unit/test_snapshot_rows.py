"""A peer snapshot in record rows (presence/snapshots.py): what a peer exports, what a warm-starting
node accepts, and how it names what it refuses; sans-IO with an explicit clock."""

from __future__ import annotations

import pytest
import ujson

from busylamp.presence import snapshots
from busylamp.presence.packages import REGISTRY
from busylamp.presence.snapshots import RowError, parse_rows, record_rows
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_update


def _state() -> PresenceState:
    state = PresenceState(REGISTRY)
    head = {"Event-Name": "update", "Presentity": "sip:1001@example.com",
            "Presentity-User": "1001", "Presentity-Realm": "example.com", "Bridge-ID": "b1", "Bridge-Epoch": 7, "Switch-ID": "sw1"}
    updates = [
        {**head, "Event-Package": "dialog", "From": "sip:1001@example.com",
         "To": "sip:1002@example.com", "Call-ID": "c1", "State": "confirmed",
         "Direction": "initiator", "Expires": 600, "Sequence": 1},
        {**head, "Event-Package": "dialog", "From": "sip:1001@example.com",
         "To": "sip:1003@example.com", "Call-ID": "c2", "State": "early", "Expires": 60,
         "Sequence": 2},
        {**head, "Event-Package": "dialog", "From": "sip:1001@example.com",
         "To": "sip:1003@example.com", "Call-ID": "c2", "State": "terminated", "Sequence": 3},
        {**head, "Event-Package": "presence", "State": "open", "Expires": 3600, "Sequence": 4},
        {"Event-Name": "update", "Event-Package": "message-summary",
         "Presentity": "sip:1002@example.com", "Presentity-User": "1002",
         "Presentity-Realm": "example.com", "Messages-Waiting": "yes",
         "MWI-Voice-Message": "2/1"},
    ]
    for update in updates:
        state.apply(parse_update(update), 100.0)
    return state


def _records(state: PresenceState) -> dict:
    return {(r.package, r.presentity, r.record_id): (r.data, r.expires_at, r.switch_id,
                                                     r.bridge_id, r.bridge_epoch, r.sequence)
            for key in state.presentities() for r in state.records(*key) if not r.terminated}


def test_rows_carry_every_live_record_and_rebuild_the_same_state():
    peer = _state()
    lines = [ujson.loads(ujson.dumps(line)) for line in record_rows(peer, now=130.0)]
    assert len(lines) == 1 and len(lines[0]) == 3  # the ended call (a tombstone) stays home
    rows = {tuple(row[:3]): row for row in lines[0]}
    assert rows["dialog", "1001@example.com", "c1"][4:] == [570, "sw1", "b1", 7, 1]
    assert rows["message-summary", "1002@example.com", "mwi"][4:] == [None, None, None, None,
                                                                        None]
    node = PresenceState(REGISTRY)
    updates, errors = parse_rows(lines[0])
    assert errors == []
    for update in updates:
        node.apply(update, 30.0, track_gaps=False)  # the new node's clock: 100 s behind
    mine, theirs = _records(node), _records(peer)
    assert mine.keys() == theirs.keys()
    for key, (data, expires_at, *stamps) in mine.items():
        their_data, their_expires_at, *their_stamps = theirs[key]
        assert (data, stamps) == (their_data, their_stamps)
        assert (expires_at is None) == (their_expires_at is None)
        if expires_at is not None:  # the lifetime left at export, on the node's clock
            assert expires_at == 30.0 + (their_expires_at - 130.0)
    for package, presentity in (("presence", "1001@example.com"),
                                ("message-summary", "1002@example.com")):
        assert node.body(package, presentity).for_version(1) == \
            peer.body(package, presentity).for_version(1)


def test_rows_come_in_lines_of_at_most_rows_per_line(monkeypatch):
    monkeypatch.setattr(snapshots, "ROWS_PER_LINE", 2)
    lines = list(record_rows(_state(), now=100.0))
    assert [len(line) for line in lines] == [2, 1]


GOOD = ["presence", "1001@example.com", "presence", {"State": "open"}, 60, "sw1", "b1", 1, 5]


@pytest.mark.parametrize(("row", "says"), [
    ("not a row", "an array of 9 fields"),
    (GOOD[:8], "an array of 9 fields"),
    (["voicemail", *GOOD[1:]], "unknown package 'voicemail'"),
    ([["presence"], *GOOD[1:]], "unknown package ['presence']"),
    ([*GOOD[:3], {"State": ["open"]}, *GOOD[4:]], "allowed values"),
    ([*GOOD[:1], "", *GOOD[2:]], "non-empty strings"),
    ([*GOOD[:3], ["State", "open"], *GOOD[4:]], "data must be a non-empty object"),
    ([*GOOD[:3], {"State": 1}, *GOOD[4:]], "allowed values"),
    ([*GOOD[:3], {"State": "open", "Note": 1}, *GOOD[4:]], "data values must be strings"),
    ([*GOOD[:3], {"State": "open", "Note": "a\r\nVia: x"}, *GOOD[4:]], "control character"),
    ([*GOOD[:3], {"State": "open", "Note": "\ud800"}, *GOOD[4:]], "lone surrogate"),
    ([*GOOD[:3], {"State": "open", "Note": "x" * 1025}, *GOOD[4:]], "longer than 1024"),
    ([*GOOD[:3], {"State": "sleeping"}, *GOOD[4:]], "'State' missing or not one of"),
    ([*GOOD[:2], "c9", *GOOD[3:]], "record id 'c9' does not match"),
    ([*GOOD[:4], 1.5, *GOOD[5:]], "integers or null"),
    ([*GOOD[:7], True, GOOD[8]], "integers or null"),
    ([*GOOD[:8], 2**63], "integers or null"),
    ([*GOOD[:5], 7, *GOOD[6:]], "strings or null"),
    (["dialog", "1001@example.com", "c1", {"Call-ID": "c1", "State": "early"}, *GOOD[4:]],
     "'From' missing"),
    (["message-summary", "1001@example.com", "mwi", {"Messages-Waiting": "maybe",
                                                     "Message-Account": "sip:1001@x"}, *GOOD[4:]],
     "'Messages-Waiting' missing or not one of"),
])
def test_a_malformed_row_is_refused_by_name_and_its_neighbours_kept(row, says):
    updates, errors = parse_rows([GOOD, row, [*GOOD[:1], "1002@example.com", *GOOD[2:]]])
    assert [u.presentity for u in updates] == ["1001@example.com", "1002@example.com"]
    assert len(errors) == 1 and errors[0].startswith("row 1: ") and says in errors[0]


def test_a_line_that_is_not_a_list_of_rows_is_an_error():
    with pytest.raises(RowError, match="expected a JSON array of rows, got dict"):
        parse_rows({"marks": {}})
