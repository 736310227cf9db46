"""busylamp.esl.protocol: framing, event parsing and FreeSWITCH-style serialization."""

from __future__ import annotations

from pathlib import Path

import pytest

from busylamp.esl.protocol import (
    EVENT_PLAIN,
    EslFrame,
    FrameParser,
    encode_event,
    encode_frame,
    parse_event,
    serialize_event,
    url_encode,
)
from tests.extensions import require_built_extension

SYNTH = Path(__file__).resolve().parents[1] / "fixtures" / "esl_synth"


@pytest.fixture(autouse=True, params=["c", "python"])
def header_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the C header parser (esl/_eventhead.c) and with its Python
    fallback; tests/unit/test_esl_eventhead.py checks the two agree."""
    from busylamp.esl import protocol

    if request.param == "python":
        monkeypatch.setattr(protocol, "_parse_head_c", None)
    elif protocol._parse_head_c is None:
        require_built_extension("esl/_eventhead.c")
    return request.param


def _fixture_files(fixtures_dir: Path) -> list[Path]:
    return sorted((fixtures_dir / "esl").glob("*.txt"))


def test_every_single_frame_fixture_parses(fixtures_dir: Path) -> None:
    files = _fixture_files(fixtures_dir)
    assert len(files) >= 20
    for path in files:
        parser = FrameParser()
        frames = parser.feed(path.read_bytes())
        assert len(frames) == 1, path.name
        assert parser.corrupt_frames == 0 and parser.buffered == 0, path.name
        frame = frames[0]
        if frame.content_type == EVENT_PLAIN:
            event = parse_event(frame)
            assert event is not None, path.name
            assert event.name == event.headers["Event-Name"]
            assert event.raw == frame.body
            assert "Content-Length" not in event.headers


def test_known_control_frames(fixtures_dir: Path) -> None:
    esl = fixtures_dir / "esl"
    [auth] = FrameParser().feed((esl / "auth_request.txt").read_bytes())
    assert auth.headers == {"Content-Type": "auth/request"} and auth.body == b""
    [ok] = FrameParser().feed((esl / "command_reply_auth_ok.txt").read_bytes())
    assert ok.headers["Reply-Text"] == "+OK accepted"
    [bye] = FrameParser().feed((esl / "disconnect_notice.txt").read_bytes())
    assert bye.content_type == "text/disconnect-notice"
    assert bye.body.startswith(b"Disconnected, goodbye.") and len(bye.body) == 67


def test_callstate_values_are_decoded(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "esl" / "channel_callstate_ringing.txt").read_bytes()
    event = parse_event(FrameParser().feed(data)[0])
    assert event is not None and event.name == "CHANNEL_CALLSTATE"
    h = event.headers
    assert h["Channel-Call-State"] == "RINGING"
    assert h["Original-Channel-Call-State"] == "DOWN"
    assert h["FreeSWITCH-IPv6"] == "::1"
    assert h["Event-Date-Local"] == "2012-10-05 13:41:46"
    assert h["Channel-Name"] == "sofia/B2BUA/4986517174963@call-home.net"
    assert event.body is None


def test_2012_stream_skips_exactly_the_corrupt_frames(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "esl" / "streams" / "fsock_test_data_2012.txt").read_bytes()
    parser = FrameParser()
    frames = parser.feed(data)
    # 46 frames in the capture; frames 33-34 are the deliberately corrupted ones
    assert parser.corrupt_frames == 2
    assert len(frames) == 44
    assert parser.buffered == 0
    events = [parse_event(f) for f in frames]
    assert all(e is not None for e in events)
    names = [e.name for e in events if e is not None]
    assert names.count("CHANNEL_CALLSTATE") == 3
    # the frames after the corruption still parse: the HANGUP callstate and the final DOWN
    seqs = [int(e.headers["Event-Sequence"]) for e in events if e is not None]
    assert max(seqs) > 34296
    states = [e.headers.get("Channel-Call-State") for e in events
              if e is not None and e.name == "CHANNEL_CALLSTATE"]
    assert states == ["RINGING", "HANGUP", "DOWN"]


def test_2012_stream_byte_by_byte_gives_the_same_frames(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "esl" / "streams" / "fsock_test_data_2012.txt").read_bytes()
    whole = FrameParser().feed(data)
    parser = FrameParser()
    pieces: list[EslFrame] = []
    for i in range(len(data)):
        pieces.extend(parser.feed(data[i:i + 1]))
    assert pieces == whole
    assert parser.corrupt_frames == 2


def test_switchio_stream_control_frames(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "esl" / "streams" / "switchio_eventstream.txt").read_bytes()
    parser = FrameParser()
    frames = parser.feed(data)
    types = [f.content_type for f in frames]
    assert types[:4] == ["auth/request", "command/reply", "command/reply", "text/disconnect-notice"]
    assert frames[1].headers["Reply-Text"] == "+OK accepted"
    assert frames[2].headers["Reply-Text"] == "+OK bye"


def test_encoded_newline_stays_inside_its_value() -> None:
    body = (b"Event-Name: CUSTOM\nEvent-Subclass: test%3A%3Asdp\n"
            b"variable_switch_r_sdp: v%3D0%0Ao%3D-%201%202%20IN%20IP4%20192.0.2.1%0A\n"
            b"After: ok\n\n")
    frame = FrameParser().feed(b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body)
                               + body)[0]
    event = parse_event(frame)
    assert event is not None
    assert event.headers["variable_switch_r_sdp"] == "v=0\no=- 1 2 IN IP4 192.0.2.1\n"
    assert event.headers["After"] == "ok"
    assert event.headers["Event-Subclass"] == "test::sdp"
    assert len(event.headers) == 4


def test_api_reply_without_content_length_and_with_one() -> None:
    parser = FrameParser()
    data = (b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n"
            b"Content-Type: api/response\nContent-Length: 5\n\n+OK\n\n"
            b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
    frames = parser.feed(data)
    assert [f.content_type for f in frames] == ["command/reply", "api/response", "command/reply"]
    assert frames[0].body == b""
    assert frames[1].body == b"+OK\n\n"
    assert frames[2].headers["Reply-Text"] == "-ERR invalid"


def test_partial_feeds_hold_the_frame_until_complete() -> None:
    frame = encode_event({"Event-Name": "HEARTBEAT", "Core-UUID": "x"})
    parser = FrameParser()
    assert parser.feed(frame[:10]) == []
    assert parser.feed(frame[10:-1]) == []
    [done] = parser.feed(frame[-1:])
    assert parse_event(done).headers == {"Event-Name": "HEARTBEAT", "Core-UUID": "x"}


def test_garbage_is_skipped_and_counted() -> None:
    parser = FrameParser()
    good = encode_event({"Event-Name": "HEARTBEAT"})
    data = b"no colon here\nat all\n\n" + b"Event-Name: X\n\n" + good + b"\n\n\n" + good
    frames = parser.feed(data)
    assert parser.corrupt_frames == 2  # a non-header line; a block without Content-Type
    assert len(frames) == 2


def test_oversized_frames_are_corrupt_not_fatal() -> None:
    parser = FrameParser(max_frame=1000)
    good = encode_event({"Event-Name": "HEARTBEAT"})
    frames = parser.feed(b"Content-Type: text/event-plain\nContent-Length: 5000\n\n" + good)
    assert parser.corrupt_frames == 1
    assert len(frames) == 1
    assert parser.feed(b"X" * 1500) == []  # a header block that never ends
    assert parser.corrupt_frames == 2 and parser.buffered == 0
    assert len(parser.feed(good)) == 1


@pytest.mark.parametrize("bad", [b"", b"\n\n", b"no-colon-line\n\n", b"Core-UUID: x\n\n",
                                 b"Event-Name: X\n: nameless\n\n",
                                 b"Event-Name: X\nno colon\n\n"])
def test_bad_event_bodies_return_none(bad: bytes) -> None:
    assert parse_event(EslFrame({"Content-Type": EVENT_PLAIN}, bad)) is None


def test_url_encode_matches_switch_url_encode() -> None:
    assert url_encode("2012-10-05 13:41:46") == "2012-10-05%2013%3A41%3A46"
    assert url_encode("::1") == "%3A%3A1"
    assert url_encode("a\nb") == "a%0Ab"
    assert url_encode("100%") == "100%25"
    assert url_encode("%3A kept") == "%3A%20kept"   # no double encoding of %XX
    assert url_encode("é") == "%C3%A9"
    assert url_encode("Fri, 05 Oct") == "Fri,%2005%20Oct"


def test_encode_event_round_trip_with_body_and_undef() -> None:
    headers = {"Event-Name": "BACKGROUND_JOB", "Job-UUID": "u-1", "Empty": "",
               "Weird": "a: b\nc=d&e"}
    data = encode_event(headers, "+OK done\n")
    assert data.startswith(b"Content-Length: ")
    payload = serialize_event(headers, "+OK done\n")
    assert b"Empty: _undef_\n" in payload
    assert payload.endswith(b"Content-Length: 9\n\n+OK done\n")
    [frame] = FrameParser().feed(data)
    event = parse_event(frame)
    assert event is not None
    assert event.headers == headers
    assert event.body == "+OK done\n"
    assert event.raw == payload


def test_encode_frame_puts_content_length_after_content_type() -> None:
    assert encode_frame({"Content-Type": "api/response"}, b"ok") == (
        b"Content-Type: api/response\nContent-Length: 2\n\nok")
    assert encode_frame({"Content-Type": "auth/request"}) == b"Content-Type: auth/request\n\n"


def test_synth_fixtures_parse() -> None:
    files = sorted(SYNTH.glob("*.txt"))
    assert len(files) == 7
    for path in files:
        parser = FrameParser()
        [frame] = parser.feed(path.read_bytes())
        event = parse_event(frame)
        assert event is not None and parser.corrupt_frames == 0, path.name


def test_esl_package_imports_neither_presence_nor_bridge() -> None:
    package = Path(__file__).resolve().parents[2] / "esl"
    for path in package.glob("*.py"):
        text = path.read_text()
        for forbidden in ("presence", "bridge"):
            assert f"import {forbidden}" not in text and f"from {forbidden}" not in text, path


def test_api_replies_may_exceed_the_frame_cap_up_to_their_own_bound() -> None:
    parser = FrameParser(max_frame=1000, max_reply=10_000)
    body = b"x" * 5000
    frames = parser.feed(b"Content-Type: api/response\nContent-Length: 5000\n\n" + body)
    assert parser.corrupt_frames == 0
    assert [f.body for f in frames] == [body]
    too_big = b"Content-Type: api/response\nContent-Length: 20000\n\n"
    assert parser.feed(too_big) == [] and parser.corrupt_frames == 1
    event = b"Content-Type: text/event-plain\nContent-Length: 5000\n\n"
    assert parser.feed(event) == [] and parser.corrupt_frames == 2  # events keep max_frame


def test_oversized_event_frame_in_the_usual_header_form_is_corrupt() -> None:
    parser = FrameParser(max_frame=1000)
    good = encode_event({"Event-Name": "HEARTBEAT"})
    frames = parser.feed(b"Content-Length: 5000\nContent-Type: text/event-plain\n\n" + good)
    assert parser.corrupt_frames == 1
    assert len(frames) == 1 and parse_event(frames[0]).name == "HEARTBEAT"  # type: ignore[union-attr]


def test_values_decode_alike_whether_the_decoded_value_cache_knows_them_or_not() -> None:
    """A value decoding to text with a "%" in it, _undef_, and the cache emptied between
    events: first sight and cached sight give the same headers."""
    from busylamp.esl import protocol

    headers = {"Event-Name": "CUSTOM", "A": "50% off", "B": "", "C": "x_undef_",
               "D": "ext1@example.com", "E": "plain"}
    frame = encode_event(headers)
    for _ in range(3):  # first sight, cached, cached again
        event = parse_event(FrameParser().feed(frame)[0])
        assert event is not None and event.headers == headers
    protocol._DECODED.clear()  # as when it fills up
    event = parse_event(FrameParser().feed(frame)[0])
    assert event is not None and event.headers == headers


@pytest.mark.parametrize(("line", "name", "value"), [
    (b"Name: a: b", "Name", "a: b"),         # the name ends at the first ": "
    (b"a:b: c", "a:b", "c"),
    (b"Name:value", "Name", "value"),        # no ": " on the line: the first ":"
    (b"Name:", "Name", ""),
    (b"Name:  two", "Name", " two"),
    (b":a: b", ":a", "b"),
    (b"Name: v\r", "Name", "v"),            # trailing CRs cut
    (b"Name: v%0D", "Name", "v\r"),          # an encoded CR is the value's
    (b"Name: %E2%82%AC %ZZ 100%", "Name", "\u20ac %ZZ 100%"),
    (b"Name: \xff%41", "Name", "\ufffdA"),
    (b"Name: _undef_", "Name", ""),
    (b"Name: _undef_%20", "Name", "_undef_ "),
])
def test_one_header_line(line: bytes, name: str, value: str) -> None:
    event = parse_event(EslFrame({}, b"Event-Name: X\n" + line + b"\n\n"))
    assert event is not None and event.headers == {"Event-Name": "X", name: value}


def test_crlf_lines_read_like_lf_lines() -> None:
    event = parse_event(EslFrame({}, b"Event-Name: X\r\nA: b%20c\r\nB:d\r\n\n"))
    assert event is not None and event.headers == {"Event-Name": "X", "A": "b c", "B": "d"}
