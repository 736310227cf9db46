"""busylamp.esl.session.EslSession and Backoff on an injected clock: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from busylamp.esl.protocol import encode_event, encode_frame
from busylamp.esl.session import (
    Authenticated,
    AuthFailed,
    Backoff,
    Closed,
    CommandFailed,
    CommandReply,
    CommandTimedOut,
    CorruptFrames,
    DeadPeer,
    DisconnectNotice,
    EslSession,
    EventReceived,
)

AUTH_REQUEST = encode_frame({"Content-Type": "auth/request"})
ACCEPTED = encode_frame({"Content-Type": "command/reply", "Reply-Text": "+OK accepted"})


def reply(text: str) -> bytes:
    return encode_frame({"Content-Type": "command/reply", "Reply-Text": text})


def api_response(body: bytes) -> bytes:
    return encode_frame({"Content-Type": "api/response"}, body)


def authenticated(now: float = 0.0, **kwargs: float) -> EslSession:
    session = EslSession("ClueCon", now, **kwargs)
    session.receive_data(AUTH_REQUEST, now)
    assert session.data_to_send() == b"auth ClueCon\n\n"
    session.receive_data(ACCEPTED, now)
    assert session.next_events() == [Authenticated()]
    return session


def test_auth_handshake_is_answered_by_the_session() -> None:
    session = EslSession("secret", 0.0)
    assert session.data_to_send() == b""
    session.receive_data(AUTH_REQUEST[:7], 0.1)  # split anywhere
    assert session.data_to_send() == b""
    session.receive_data(AUTH_REQUEST[7:], 0.2)
    assert session.data_to_send() == b"auth secret\n\n"
    assert session.state == "authenticating"
    session.receive_data(ACCEPTED, 0.3)
    assert session.next_events() == [Authenticated()]
    assert session.state == "authenticated"


def test_wrong_password() -> None:
    session = EslSession("wrong", 0.0)
    session.receive_data(AUTH_REQUEST, 0.0)
    session.data_to_send()
    session.receive_data(reply("-ERR invalid"), 0.0)
    assert session.next_events() == [AuthFailed("-ERR invalid"), Closed("auth failed")]
    assert session.closed and session.get_timer() is None


def test_no_auth_request_times_out_on_the_clock() -> None:
    session = EslSession("ClueCon", 10.0, auth_timeout=2.0)
    assert session.get_timer() == 12.0
    session.handle_timer(11.9)
    assert session.next_events() == []
    session.handle_timer(12.0)
    assert session.next_events() == [Closed("no auth/request within 2.0s")]


def test_no_reply_to_auth_times_out() -> None:
    session = EslSession("ClueCon", 0.0, auth_timeout=1.0)
    session.receive_data(AUTH_REQUEST, 0.5)
    session.handle_timer(1.0)
    assert session.next_events() == [Closed("no reply to auth within 1.0s")]


def test_commands_are_matched_first_in_first_out() -> None:
    session = authenticated()
    first = session.send_command("api status", 1.0)
    second = session.subscribe(["CHANNEL_CALLSTATE", "PRESENCE_IN"], 1.0)
    third = session.send_command("api show channels as json", 1.0)
    assert session.data_to_send() == (b"api status\n\n"
                                      b"event plain CHANNEL_CALLSTATE PRESENCE_IN HEARTBEAT\n\n"
                                      b"api show channels as json\n\n")
    session.receive_data(api_response(b"UP 0 years") + reply("+OK event listener enabled plain")
                         + api_response(b'{"row_count":0}'), 1.5)
    events = session.next_events()
    assert [(type(e), e.command_id) for e in events] == [(CommandReply, first),
                                                          (CommandReply, second),
                                                          (CommandReply, third)]
    assert events[0].frame.body == b"UP 0 years"
    assert events[1].frame.headers["Reply-Text"] == "+OK event listener enabled plain"
    assert session.pending_commands == 0


def test_subscribe_keeps_all_without_heartbeat() -> None:
    session = authenticated()
    session.subscribe(["ALL"], 0.0)
    assert session.data_to_send() == b"event plain ALL\n\n"


def test_commands_before_auth_are_refused() -> None:
    session = EslSession("ClueCon", 0.0)
    with pytest.raises(RuntimeError):
        session.send_command("api status", 0.0)


def test_command_timeout_keeps_fifo_alignment() -> None:
    session = authenticated(command_timeout=5.0)
    slow = session.send_command("api status", 0.0, timeout=0.1)
    later = session.send_command("api global_getvar core_uuid", 0.05)
    assert session.get_timer() == 0.1
    session.handle_timer(0.1)
    assert session.next_events() == [CommandTimedOut(slow, "api")]
    assert session.get_timer() == 5.05
    # the late reply to the first command must not be taken for the second one's
    session.receive_data(api_response(b"late status"), 0.2)
    assert session.next_events() == []
    session.receive_data(api_response(b"core-uuid"), 0.3)
    (event,) = session.next_events()
    assert isinstance(event, CommandReply) and event.command_id == later
    assert event.frame.body == b"core-uuid"
    assert session.state == "authenticated"


def test_dead_peer_after_silence_heartbeat_keeps_it_alive() -> None:
    session = authenticated(dead_after=60.0)
    assert session.get_timer() == 60.0
    heartbeat = encode_event({"Event-Name": "HEARTBEAT", "Core-UUID": "c"})
    session.receive_data(heartbeat, 50.0)
    (event,) = session.next_events()
    assert isinstance(event, EventReceived) and event.event.name == "HEARTBEAT"
    assert session.get_timer() == 110.0
    session.handle_timer(109.9)
    assert session.next_events() == []
    pending = session.send_command("api status", 100.0, timeout=30.0)
    session.handle_timer(110.0)
    assert session.next_events() == [DeadPeer(60.0), CommandFailed(pending, "no data for 60s (dead peer)"),
                                     Closed("no data for 60s (dead peer)")]


def test_events_and_corrupt_frames() -> None:
    session = authenticated()
    bad_block = b"no colon here\n\n"
    bad_event = encode_frame({"Content-Type": "text/event-plain"}, b"Core-UUID: c\n\n")  # no name
    good = encode_event({"Event-Name": "PRESENCE_IN", "from": "1001@example.com"})
    session.receive_data(bad_block + good + bad_event, 1.0)
    events = session.next_events()
    assert events[0] == CorruptFrames(1)
    assert isinstance(events[1], EventReceived) and events[1].event.headers["from"] == "1001@example.com"
    assert events[2] == CorruptFrames(1)


def test_disconnect_notice_closes_and_fails_pending() -> None:
    session = authenticated()
    pending = session.send_command("api status", 0.0)
    session.receive_data(encode_frame({"Content-Type": "text/disconnect-notice"}, b"bye\n"), 0.1)
    assert session.next_events() == [DisconnectNotice(), CommandFailed(pending, "disconnect notice"),
                                     Closed("disconnect notice")]
    session.receive_data(reply("+OK"), 0.2)  # after close: ignored
    assert session.next_events() == []


def test_linger_notice_is_not_a_disconnect() -> None:
    session = authenticated()
    session.receive_data(encode_frame({"Content-Type": "text/disconnect-notice",
                                       "Content-Disposition": "linger"}, b"linger\n"), 0.1)
    assert session.next_events() == [] and session.state == "authenticated"


def test_rude_rejection() -> None:
    session = EslSession("ClueCon", 0.0)
    session.receive_data(encode_frame({"Content-Type": "text/rude-rejection"},
                                      b"Access Denied, go away.\n"), 0.0)
    assert session.next_events() == [Closed("rejected by server ACL: Access Denied, go away.")]


def test_connection_lost_and_eof() -> None:
    session = authenticated()
    pending = session.send_command("exit", 0.0)
    session.receive_data(b"", 1.0)
    assert session.next_events() == [CommandFailed(pending, "closed by server"),
                                     Closed("closed by server")]
    session.connection_lost("again")  # idempotent
    assert session.next_events() == []
    assert session.close_reason == "closed by server"


def test_big_api_reply_in_many_pieces() -> None:
    session = authenticated()
    command = session.send_command("api show channels as json", 0.0, timeout=60.0)
    body = b"x" * (8 * 1024 * 1024)
    data = api_response(body)
    for offset in range(0, len(data), 65536):
        session.receive_data(data[offset:offset + 65536], 1.0)
    (event,) = session.next_events()
    assert isinstance(event, CommandReply) and event.command_id == command
    assert len(event.frame.body) == len(body)


def test_unsolicited_reply_is_ignored() -> None:
    session = authenticated()
    session.receive_data(reply("+OK stray"), 0.0)
    assert session.next_events() == [] and session.state == "authenticated"


def test_backoff_doubles_to_the_cap_with_injected_jitter() -> None:
    backoff = Backoff(0.5, 4.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert backoff.longest() == 4.0
    high = Backoff(1.0, 10.0, jitter=0.2, random=lambda: 1.0)
    low = Backoff(1.0, 10.0, jitter=0.2, random=lambda: 0.0)
    assert high.next_delay() == pytest.approx(1.2) and low.next_delay() == pytest.approx(0.8)
    assert high.next_delay() == pytest.approx(2.4)
