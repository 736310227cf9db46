"""busylamp.esl.simulator: the fake FreeSWITCH speaks mod_event_socket byte for byte.

Also keeps tests/fixtures/esl_synth/ up to date: run
``.venv/bin/python -m tests.integration.test_esl_simulator`` to regenerate the synthesized frames.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.socket
import pytest

from busylamp.esl.protocol import EVENT_PLAIN, EslEvent, EslFrame, FrameParser, parse_event
from busylamp.esl.simulator import CHANNEL_COLUMNS, FreeSwitchSimulator

SYNTH = Path(__file__).resolve().parents[1] / "fixtures" / "esl_synth"
SUBSCRIBE = "event plain CHANNEL_CALLSTATE CHANNEL_PROGRESS PRESENCE_IN MESSAGE_WAITING"


class RawClient:
    """A bare socket + FrameParser, to see exactly what the simulator writes."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = gevent.socket.create_connection(address, timeout=2)
        self.parser = FrameParser()
        self.frames: list[EslFrame] = []
        self.raw = b""

    def next(self, timeout: float = 2.0) -> EslFrame:
        with gevent.Timeout(timeout):
            while not self.frames:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("closed")
                self.raw += data
                self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    def command(self, text: str) -> EslFrame:
        self.sock.sendall(text.encode() + b"\n\n")
        return self.next()

    def login(self, password: str = "ClueCon") -> None:
        assert self.next().content_type == "auth/request"
        assert self.command(f"auth {password}").headers["Reply-Text"] == "+OK accepted"

    def events(self, n: int) -> list[EslEvent]:
        out = []
        for _ in range(n):
            event = parse_event(self.next())
            assert event is not None
            out.append(event)
        return out

    def closed(self, timeout: float = 2.0) -> bool:
        with gevent.Timeout(timeout):
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.raw += data
                self.frames.extend(self.parser.feed(data))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sim() -> Iterator[FreeSwitchSimulator]:
    simulator = FreeSwitchSimulator(heartbeat_interval=None)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def client(sim: FreeSwitchSimulator) -> Iterator[RawClient]:
    c = RawClient((sim.host, sim.port))
    c.login()
    assert c.command(SUBSCRIBE).headers["Reply-Text"] == "+OK event listener enabled plain"
    yield c
    c.close()


def test_auth_request_and_bye_are_byte_exact(sim: FreeSwitchSimulator,
                                             fixtures_dir: Path) -> None:
    esl = fixtures_dir / "esl"
    c = RawClient((sim.host, sim.port))
    c.login()
    c.sock.sendall(b"exit\n\n")
    assert c.closed()
    expected = b"".join((esl / name).read_bytes() for name in (
        "auth_request.txt", "command_reply_auth_ok.txt", "command_reply_bye.txt"))
    assert c.raw.startswith(expected)
    # current mod_event_socket.c (send_disconnect) writes Content-Type before Content-Length;
    # the older capture has them the other way round: same headers, same 67-byte body
    [real] = FrameParser().feed((esl / "disconnect_notice.txt").read_bytes())
    assert c.raw[len(expected):] == (b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
                                     + real.body)
    assert c.frames[-1] == real
    assert sim.connections == 1


def test_wrong_password_is_refused_and_disconnected(sim: FreeSwitchSimulator) -> None:
    c = RawClient((sim.host, sim.port))
    assert c.next().content_type == "auth/request"
    reply = c.command("auth wrong")
    assert reply.headers == {"Content-Type": "command/reply", "Reply-Text": "-ERR invalid"}
    assert c.closed()
    assert c.frames[-1].content_type == "text/disconnect-notice"
    assert sim.auth_failures == 1
    assert "auth <hidden>" in sim.commands


def test_only_subscribed_events_are_sent(sim: FreeSwitchSimulator) -> None:
    c = RawClient((sim.host, sim.port))
    c.login()
    c.command("event plain MESSAGE_WAITING")
    call = sim.originate("1001", "1002")
    sim.leave_voicemail("1001", new=2, saved=1)
    [mwi] = c.events(1)
    assert mwi.name == "MESSAGE_WAITING"
    h = mwi.headers
    assert (h["MWI-Messages-Waiting"], h["MWI-Message-Account"], h["MWI-Voice-Message"]) == (
        "yes", "1001@example.com", "2/1 (0/0)")
    sim.hangup(call)
    c.close()


def test_call_scenario_events(sim: FreeSwitchSimulator, client: RawClient) -> None:
    call = sim.originate("1001", "1002", early_media=True)
    events = client.events(10)
    got = [(e.name, e.headers["Unique-ID"], e.headers["Channel-Call-State"]) for e in events]
    a, b = call.a.uuid, call.b.uuid
    # as real FreeSWITCH 1.11 with busylamp's dialplan (tests/system): the A leg's RINGING comes
    # before the dialplan set its presence_id (inline), then PRESENCE_IN "CS_ROUTING" has it, and
    # its CHANNEL_PROGRESS (the 180 passed on) too
    assert got == [
        ("CHANNEL_CALLSTATE", a, "RINGING"), ("PRESENCE_IN", a, "RINGING"),
        ("CHANNEL_PROGRESS", b, "DOWN"),
        ("CHANNEL_CALLSTATE", b, "RINGING"), ("PRESENCE_IN", b, "RINGING"),
        ("CHANNEL_PROGRESS", a, "RINGING"),
        ("CHANNEL_CALLSTATE", b, "EARLY"), ("PRESENCE_IN", b, "EARLY"),
        ("CHANNEL_CALLSTATE", a, "EARLY"), ("PRESENCE_IN", a, "EARLY"),
    ]
    ring_a = events[0].headers
    assert ring_a["Call-Direction"] == "inbound" and "Channel-Presence-ID" not in ring_a
    assert ring_a["Original-Channel-Call-State"] == "DOWN" and ring_a["Answer-State"] == "ringing"
    routing_a = events[1].headers
    assert (routing_a["status"], routing_a["from"]) == ("CS_ROUTING", "1001@example.com")
    assert routing_a["presence-call-info-state"] == "alerting"
    assert routing_a["Presence-Calling-Function"] == "check_presence"
    progress_a = events[5].headers
    assert progress_a["Channel-Presence-ID"] == "1001@example.com"
    assert progress_a["Event-Calling-Function"] == "switch_channel_perform_mark_ring_ready_value"
    ring_b = events[3].headers
    assert ring_b["Call-Direction"] == "outbound" and ring_b["Channel-Presence-ID"] == "1002@example.com"
    assert ring_b["Other-Type"] == "originator" and ring_b["Other-Leg-Unique-ID"] == a
    assert ring_b["Channel-Call-UUID"] == a
    assert events[4].headers["presence-call-info-state"] == "progressing"
    assert events[6].headers["Answer-State"] == "early"
    seqs = [int(e.headers["Event-Sequence"]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10

    sim.answer(call)
    answered = client.events(4)
    assert [e.headers["Channel-Call-State"] for e in answered] == ["ACTIVE"] * 4
    assert answered[2].headers["Other-Type"] == "originatee"
    assert answered[2].headers["Answer-State"] == "answered"
    sim.hold(call)
    held = client.events(2)
    assert held[0].headers["Channel-Call-State"] == "HELD"
    assert held[1].headers["presence-call-info-state"] == "held"
    sim.unhold(call)
    assert client.events(2)[0].headers["Original-Channel-Call-State"] == "HELD"
    sim.hangup(call)
    gone = client.events(4)
    assert [e.headers["Channel-Call-State"] for e in gone] == ["HANGUP"] * 4
    assert gone[0].headers["Hangup-Cause"] == "NORMAL_CLEARING"
    assert gone[0].headers["Answer-State"] == "hangup"
    assert gone[1].headers["presence-call-info-state"] == "idle"
    assert sim.channels == []


def test_park_as_mod_valet_parking_does(sim: FreeSwitchSimulator, client: RawClient) -> None:
    """As FreeSWITCH 1.11 parks (tests/system/test_fs_parking.py): the parked leg keeps the
    caller's presence id; CUSTOM valet_parking::info names lot, slot and the parked channel;
    mod_valet_parking's PRESENCE_IN names the lot and the slot; valet_info lists the slot."""
    client.command("event plain CHANNEL_CALLSTATE PRESENCE_IN CUSTOM valet_parking::info")
    call = sim.park("1001", "5901", lot="lot1@example.com")
    events = client.events(7)
    assert {e.headers.get("Channel-Presence-ID") for e in events if e.name != "PRESENCE_IN"
            or "proto" not in e.headers} == {"1001@example.com"}
    (hold,) = [e for e in events if e.name == "CUSTOM"]
    assert (hold.headers["Event-Subclass"], hold.headers["Action"], hold.headers["Valet-Extension"],
            hold.headers["Valet-Lot-Name"], hold.headers["Unique-ID"]) == (
        "valet_parking::info", "hold", "5901", "lot1@example.com", call.a.uuid)
    park = [(e.headers["from"], e.headers["force-status"]) for e in events
            if e.headers.get("proto") == "park"]
    assert park == [("lot1@example.com", "Active (1 caller)"), ("5901@example.com", "Holding")]
    assert call.b is None
    info = client.command("api valet_info").body.decode()
    assert f'<extension uuid="{call.a.uuid}">5901</extension>' in info
    sim.hangup(call)
    actions = [e.headers.get("Action") for e in client.events(5) if e.name == "CUSTOM"]
    assert actions == ["exit"]
    assert "<extension" not in client.command("api valet_info").body.decode()


def test_show_channels_as_json(sim: FreeSwitchSimulator, client: RawClient) -> None:
    empty = client.command("api show channels as json")
    assert empty.content_type == "api/response"
    assert empty.body == b'{"row_count": 0}\n'
    assert client.command("api show channels").body == b"\n0 total.\n"
    call = sim.originate("1001", "1002")
    client.events(6)
    data = json.loads(client.command("api show channels as json").body)
    assert data["row_count"] == 2
    assert [list(row) for row in data["rows"]] == [list(CHANNEL_COLUMNS)] * 2
    a, b = data["rows"]
    assert (a["uuid"], a["direction"], a["presence_id"], a["callstate"]) == (
        call.a.uuid, "inbound", "1001@example.com", "RINGING")
    assert (b["uuid"], b["direction"], b["call_uuid"]) == (call.b.uuid, "outbound", call.a.uuid)
    assert all(isinstance(v, str) for v in a.values())
    plain = client.command("api show channels").body.decode()
    assert plain.endswith("\n\n2 total.\n") and plain.startswith("uuid,direction,created,")


def test_global_getvar_and_unknown_api(sim: FreeSwitchSimulator, client: RawClient) -> None:
    assert client.command("api global_getvar core_uuid").body.decode() == sim.core_uuid
    assert client.command("api nosuch thing").body == b"-ERR nosuch Command not found!\n"
    assert client.command("bogus").headers["Reply-Text"] == "-ERR command not found"


def test_sendevent_message_query_answers_with_message_waiting(
        sim: FreeSwitchSimulator, client: RawClient) -> None:
    sim.mailboxes["1001@example.com"] = (3, 0)
    reply = client.command("sendevent MESSAGE_QUERY\nMessage-Account: sip:1001@example.com")
    assert reply.headers["Reply-Text"].startswith("+OK ")
    [mwi] = client.events(1)
    assert mwi.headers["MWI-Message-Account"] == "sip:1001@example.com"
    assert mwi.headers["MWI-Messages-Waiting"] == "yes"
    assert mwi.headers["MWI-Voice-Message"] == "3/0 (0/0)"
    client.command("sendevent MESSAGE_QUERY\nMessage-Account: sip:1009@example.com")
    [none] = client.events(1)
    assert none.headers["MWI-Messages-Waiting"] == "no"
    assert "MWI-Voice-Message" not in none.headers
    assert sim.commands[-1] == "sendevent MESSAGE_QUERY"


def test_sendevent_custom_with_body_is_delivered(sim: FreeSwitchSimulator) -> None:
    c = RawClient((sim.host, sim.port))
    c.login()
    c.command("event plain CUSTOM my::thing")
    body = "line1\nline2"
    reply = c.command(f"sendevent CUSTOM\nEvent-Subclass: my::thing\nX-A: 1\n"
                      f"Content-Length: {len(body)}\n\n{body}")
    assert reply.headers["Reply-Text"].startswith("+OK")
    [event] = c.events(1)
    assert event.name == "CUSTOM" and event.headers["X-A"] == "1" and event.body == body
    c.close()


def test_drop_silent_and_replay(sim: FreeSwitchSimulator, client: RawClient,
                                fixtures_dir: Path) -> None:
    stream = fixtures_dir / "esl" / "streams" / "fsock_test_data_2012.txt"
    sim.replay_file(stream)
    data = stream.read_bytes()
    with gevent.Timeout(2):
        while len(client.raw) < len(data):
            client.raw += client.sock.recv(65536)
    assert client.raw.endswith(data)
    sim.go_silent()
    sim.leave_voicemail("1001")
    with pytest.raises(gevent.Timeout):
        client.next(timeout=0.2)
    sim.drop_connections()
    assert client.closed()


def test_restart_changes_core_uuid(sim: FreeSwitchSimulator, client: RawClient) -> None:
    old = sim.core_uuid
    sim.originate("1001", "1002")
    sim.restart()
    assert sim.core_uuid != old and sim.channels == []
    assert client.closed()


def test_header_set_covers_the_real_capture(sim: FreeSwitchSimulator, client: RawClient,
                                            fixtures_dir: Path) -> None:
    real = parse_event(FrameParser().feed(
        (fixtures_dir / "esl" / "channel_callstate_ringing.txt").read_bytes())[0])
    sim.originate("1001", "1002")
    ours = client.events(1)[0]
    assert real is not None
    assert list(real.headers)[:19] == list(ours.headers)[:19]
    missing = set(real.headers) - set(ours.headers)
    assert missing == set()


# -- synthesized fixtures -------------------------------------------------------------------


def synth_frames() -> dict[str, bytes]:
    """Run a deterministic scenario on the simulator; the raw frames it sends, by file name."""
    ticks = itertools.count()
    ids = itertools.count(1)
    sim = FreeSwitchSimulator(
        core_uuid="6f2f3a7e-0c1d-4e55-9a3b-5d1c2b7e9f00", hostname="fs1", heartbeat_interval=None,
        clock=lambda: 1_767_225_600.0 + next(ticks) * 0.25,
        new_uuid=lambda: f"00000000-0000-4000-8000-{next(ids):012d}")
    sim.start()
    c = RawClient((sim.host, sim.port))
    try:
        c.login()
        c.command("event plain CHANNEL_CALLSTATE PRESENCE_IN MESSAGE_WAITING")
        call = sim.originate("1001", "1002", early_media=True)
        frames = [c.next() for _ in range(8)]
        sim.answer(call)
        frames += [c.next() for _ in range(4)]
        sim.hold(call)
        frames += [c.next() for _ in range(2)]
        sim.unhold(call)
        frames += [c.next() for _ in range(2)]
        sim.hangup(call)
        frames += [c.next() for _ in range(4)]
        sim.leave_voicemail("1001", new=2, saved=1)
        frames.append(c.next())
    finally:
        c.close()
        sim.stop()

    def wire(frame: EslFrame) -> bytes:
        return b"Content-Length: %d\nContent-Type: %s\n\n" % (
            len(frame.body), frame.content_type.encode()) + frame.body

    a_leg = call.a.uuid
    picks = {
        "channel_callstate_early.txt": frames[6],     # A leg RINGING -> EARLY
        "channel_callstate_active.txt": frames[10],   # A leg EARLY -> ACTIVE, bridged
        "channel_callstate_held.txt": frames[12],
        "channel_callstate_unheld.txt": frames[14],
        "channel_callstate_hangup.txt": frames[16],
        "presence_in_early.txt": frames[5],           # B leg, outbound, progressing
        "message_waiting.txt": frames[20],
    }
    for name, frame in picks.items():
        assert frame.content_type == EVENT_PLAIN
        event = parse_event(frame)
        assert event is not None
        if name.startswith("channel_callstate"):
            assert event.name == "CHANNEL_CALLSTATE" and event.headers["Unique-ID"] == a_leg
    return {name: wire(frame) for name, frame in picks.items()}


def test_synth_fixtures_are_up_to_date() -> None:
    fresh = synth_frames()
    for name, data in fresh.items():
        path = SYNTH / name
        assert path.is_file(), f"{name} missing: run python -m tests.integration.test_esl_simulator"
        assert path.read_bytes() == data, f"{name} stale: run python -m tests.integration.test_esl_simulator"
    states = {name: parse_event(FrameParser().feed(data)[0]) for name, data in fresh.items()}
    assert states["channel_callstate_held.txt"].headers["Channel-Call-State"] == "HELD"
    assert states["channel_callstate_unheld.txt"].headers["Channel-Call-State"] == "UNHELD"
    assert states["channel_callstate_active.txt"].headers["Other-Type"] == "originatee"
    assert states["presence_in_early.txt"].name == "PRESENCE_IN"


if __name__ == "__main__":
    SYNTH.mkdir(parents=True, exist_ok=True)
    for file_name, payload in synth_frames().items():
        (SYNTH / file_name).write_bytes(payload)
        print("wrote", SYNTH / file_name)
