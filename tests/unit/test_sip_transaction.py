"""Server and client transaction tables with an injected clock."""

from __future__ import annotations

import pytest

from busylamp.presence.sip import Request, parse_message
from busylamp.presence.sip.transaction import ClientTransactions, ServerTransactions

REQUEST = (
    b"SUBSCRIBE sip:1000@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5062;branch=BRANCH\r\n"
    b"From: <sip:1001@example.com>;tag=ft1\r\nTo: <sip:1000@example.com>\r\n"
    b"Call-ID: cid-1\r\nCSeq: 7 SUBSCRIBE\r\nEvent: dialog\r\nContent-Length: 0\r\n\r\n"
)


def _request(branch: str = "z9hG4bK-1", method: str = "SUBSCRIBE") -> Request:
    data = REQUEST.replace(b"BRANCH", branch.encode())
    data = data.replace(b"SUBSCRIBE", method.encode())
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def _drive(table: ClientTransactions, until: float) -> tuple[list[float], list[object]]:
    """Fire every timer up to `until`, returning the retransmission times and timeouts."""
    sent: list[float] = []
    timeouts: list[object] = []
    while (deadline := table.get_timer()) is not None and deadline <= until:
        retransmits, expired = table.handle_timer(deadline)
        sent.extend(deadline for _ in retransmits)
        timeouts.extend(expired)
    return sent, timeouts


# ----------------------------------------------------------------- server


def test_server_key_rfc3261_and_2543() -> None:
    table = ServerTransactions()
    a = table.key(_request("z9hG4bK-1"), "UDP")
    assert a == table.key(_request("z9hG4bK-1"), "udp")
    assert a != table.key(_request("z9hG4bK-2"), "udp")
    assert a != table.key(_request("z9hG4bK-1"), "tcp")
    assert table.key(_request("z9hG4bK-1", "CANCEL"), "udp") != a
    assert table.key(_request("z9hG4bK-1", "INVITE"), "udp") == table.key(
        _request("z9hG4bK-1", "ACK"), "udp")
    legacy = table.key(_request("abc123"), "udp")  # RFC 2543: no magic cookie
    assert legacy[0] == "2543" and "cid-1" in legacy and "ft1" in legacy
    bare = table.key(_request("z9hG4bK"), "udp")  # bare cookie is no transaction id
    assert bare[0] == "2543"


@pytest.mark.parametrize("method", ["SUBSCRIBE", "INVITE", "CANCEL"])
@pytest.mark.parametrize("branch", ["z9hG4bK-1", "z9hG4bKx.y", "abc123", "z9hG4bK"])
def test_branch_key_is_the_requests_key_or_none(method: str, branch: str) -> None:
    """The key a request's top Via alone gives (the raw-bytes refusal's) is key()'s, or None
    where key() needs the RFC 2543 parts."""
    request = _request(branch, method)
    expected = ServerTransactions().key(request, "UDP")
    found = ServerTransactions.branch_key(request.vias[0], method, "UDP")
    assert found == (expected if expected[0] == "3261" else None)


def _answer(status: str = "202 Accepted", branch: str = "z9hG4bK-1") -> bytes:
    return (f"SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 10.0.0.5:5062;branch={branch}\r\n"
            "Call-ID: cid-1\r\nCSeq: 7 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n").encode()


def test_server_retransmission_gets_same_bytes_until_timer_j() -> None:
    table = ServerTransactions(t1=0.5)
    key = table.key(_request(), "udp")
    assert table.lookup(key) is None and table.get_timer() is None
    table.store(key, _answer(), reliable=False, now=10.0)
    assert table.lookup(table.key(_request(), "udp")) == _answer()
    assert len(table) == 1 and table.get_timer() == pytest.approx(42.0)
    table.handle_timer(41.9)
    assert table.lookup(key) == _answer()
    table.store(key, _answer("200 OK"), reliable=False, now=20.0)  # re-stored: the first goes
    table.handle_timer(42.0)
    assert table.lookup(key) == _answer("200 OK") and table.get_timer() == pytest.approx(52.0)
    table.handle_timer(52.0)
    assert table.lookup(key) is None and len(table) == 0 and table.get_timer() is None


def test_server_answers_of_one_second_share_a_bucket_and_go_together() -> None:
    table = ServerTransactions(t1=0.5)
    keys = [table.key(_request(f"z9hG4bK-{n}"), "udp") for n in range(3)]
    for n, key in enumerate(keys):  # Timer J ends at 42.1, 42.6 and 43.05
        table.store(key, _answer(branch=f"z9hG4bK-{n}"), reliable=False, now=(10.1, 10.6, 11.05)[n])
    assert [table.lookup(k) for k in keys] == [_answer(branch=f"z9hG4bK-{n}") for n in range(3)]
    assert table.get_timer() == 43.0  # kept up to a second past Timer J, never less
    table.handle_timer(43.0)
    assert table.lookup(keys[0]) is None and table.lookup(keys[1]) is None
    assert table.lookup(keys[2]) is not None and table.get_timer() == 44.0


def test_server_hit_must_be_the_requests_own_answer() -> None:
    """A hash collision (forced here by planting another answer's place) answers nothing."""
    table = ServerTransactions(t1=0.5)
    mine, other = table.key(_request("z9hG4bK-1"), "udp"), table.key(_request("z9hG4bK-2"), "udp")
    table.store(other, _answer(branch="z9hG4bK-2"), reliable=False, now=1.0)
    table._by_key[hash(mine)] = table._by_key[hash(other)]
    assert table.lookup(mine) is None and table.lookup(other) is not None
    data = REQUEST.replace(b"BRANCH", b"z9hG4bK-1")
    planted = table.fingerprint(data, ("10.0.0.5", 5062))
    table._by_print[planted] = table._by_key[hash(other)]
    assert table.lookup_exact(planted, data) is not None  # same Call-ID: indistinguishable
    assert table.lookup_exact(planted, data.replace(b"cid-1", b"cid-9")) is None


def test_server_exact_fingerprint_kept_and_dropped_with_its_transaction() -> None:
    table = ServerTransactions(t1=0.5)
    data = REQUEST.replace(b"BRANCH", b"z9hG4bK-1")
    key = table.key(_request(), "udp")
    print_a = table.fingerprint(data, ("10.0.0.5", 5062))
    assert print_a == table.fingerprint(bytes(bytearray(data)), ("10.0.0.5", 5062))
    assert print_a != table.fingerprint(data, ("10.0.0.6", 5062))
    assert print_a != table.fingerprint(data + b"x", ("10.0.0.5", 5062))
    table.store(key, _answer(), reliable=False, now=10.0, fingerprint=print_a)
    assert table.lookup_exact(print_a, data) == _answer()
    table.store(key, _answer("200 OK"), reliable=False, now=20.0)  # re-stored, no fingerprint
    table.handle_timer(42.0)  # the first entry's Timer J: its fingerprint goes with it
    assert table.lookup_exact(print_a, data) is None and table.lookup(key) == _answer("200 OK")
    table.handle_timer(52.0)
    assert table.lookup(key) is None and table.get_timer() is None


def test_server_tables_shrink_to_size_after_a_burst() -> None:
    table = ServerTransactions(t1=0.5)
    keys = [("3261", "udp", f"z9hG4bK-{n}", ("10.0.0.5", 5062), "SUBSCRIBE") for n in range(5000)]
    for n, key in enumerate(keys):
        table.store(key, _answer(branch=key[2]), reliable=False, now=10.0 + n / 1000)
    burst = table._by_key
    table.store(("3261", "udp", "z9hG4bK-late", ("10.0.0.5", 5062), "SUBSCRIBE"),
                _answer(branch="z9hG4bK-late"), reliable=False, now=20.0)
    table.handle_timer(15.0 + table.timer_j)  # the burst's answers are gone, one is left
    assert len(table) == 1 and table._by_key is not burst and table._high == 1
    assert table.lookup(("3261", "udp", "z9hG4bK-late", ("10.0.0.5", 5062), "SUBSCRIBE"))


def test_server_reliable_not_kept() -> None:
    table = ServerTransactions()
    key = table.key(_request(), "tcp")
    table.store(key, _answer(), reliable=True, now=0.0)
    assert table.lookup(key) is None and len(table) == 0 and table.get_timer() is None


# ----------------------------------------------------------------- client


def test_client_retransmit_schedule_until_timer_f() -> None:
    table = ClientTransactions(t1=0.5, t2=4.0)
    table.start("b1", b"NOTIFY", ("10.0.0.5", 5062), reliable=False, now=0.0, owner="sub1")
    assert table.get_timer() == 0.5
    sent, timeouts = _drive(table, 100.0)
    gaps = [b - a for a, b in zip([0.0, *sent], sent, strict=False)]
    assert gaps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(g == 4.0 for g in gaps[3:])
    assert sent[-1] < 32.0
    assert timeouts == ["sub1"]
    assert table.retransmissions == len(sent) == 10
    assert len(table) == 0 and table.get_timer() is None


def test_client_retransmits_carry_destination_and_bytes() -> None:
    table = ClientTransactions()
    table.start("b1", b"DATA", ("h", 1), reliable=False, now=0.0, owner=1)
    assert table.handle_timer(0.4) == ([], [])
    assert table.handle_timer(0.5) == ([(("h", 1), b"DATA")], [])


def test_client_provisional_switches_to_t2() -> None:
    table = ClientTransactions(t1=0.5, t2=4.0)
    table.start("b1", b"N", "dest", reliable=False, now=0.0, owner="o")
    table.handle_timer(0.5)  # next at 1.5
    assert table.on_response("b1", 180, 0.7) is None
    assert table.get_timer() == 1.5
    sent, _ = _drive(table, 14.0)
    assert sent == [1.5, 5.5, 9.5, 13.5]


def test_client_final_response_stops_and_returns_owner() -> None:
    table = ClientTransactions()
    table.start("b1", b"N", "dest", reliable=False, now=0.0, owner="o1")
    table.start("b2", b"N", "dest", reliable=False, now=0.0, owner="o2")
    assert table.on_response("b1", 200, 0.1) == "o1"
    assert table.on_response("b1", 200, 0.2) is None  # retransmitted final: unknown now
    assert table.on_response("nope", 200, 0.2) is None
    assert len(table) == 1
    sent, timeouts = _drive(table, 100.0)
    assert timeouts == ["o2"] and len(sent) == 10


def test_client_reliable_only_timer_f() -> None:
    table = ClientTransactions(t1=0.5, timer_f=10.0)
    table.start("b1", b"N", "dest", reliable=True, now=5.0, owner="o")
    assert table.get_timer() == 15.0
    sent, timeouts = _drive(table, 100.0)
    assert sent == [] and timeouts == ["o"] and table.retransmissions == 0


def test_client_cancel() -> None:
    table = ClientTransactions()
    table.start("b1", b"N", "dest", reliable=False, now=0.0, owner="o")
    table.cancel("b1")
    table.cancel("unknown")
    assert len(table) == 0 and table.get_timer() is None
    assert table.handle_timer(100.0) == ([], [])


def test_client_late_timer_does_not_burst() -> None:
    table = ClientTransactions(t1=0.5, t2=4.0)
    table.start("b1", b"N", "dest", reliable=False, now=0.0, owner="o")
    retransmits, _ = table.handle_timer(3.0)  # woke up late: one retransmission, not several
    assert len(retransmits) == 1
    assert table.get_timer() == 4.0


def test_client_first_deadlines_in_start_order_and_a_clock_that_went_back() -> None:
    """New transactions wait in start order (their first deadline is start + T1, or + Timer F
    when reliable); one started at an earlier clock than the last still fires on time."""
    table = ClientTransactions(t1=0.5, t2=4.0, timer_f=32.0)
    table.start("u1", b"1", "d", reliable=False, now=10.0, owner="u1")
    table.start("r1", b"2", "d", reliable=True, now=10.0, owner="r1")
    table.start("u2", b"3", "d", reliable=False, now=5.0, owner="u2")  # the clock went back
    table.start("r2", b"4", "d", reliable=True, now=4.0, owner="r2")
    assert table.get_timer() == 5.5
    assert table.handle_timer(5.5) == ([("d", b"3")], [])
    assert table.on_response("u2", 200, 5.6) == "u2"
    assert table.get_timer() == 10.5
    assert table.handle_timer(10.5) == ([("d", b"1")], [])
    assert table.on_response("u1", 200, 10.6) == "u1"
    assert table.get_timer() == 36.0
    assert table.handle_timer(36.0) == ([], ["r2"])
    assert table.get_timer() == 42.0
    assert table.handle_timer(42.0) == ([], ["r1"])
    assert table.get_timer() is None and len(table) == 0


def test_client_answered_transactions_leave_the_queue_without_firing() -> None:
    table = ClientTransactions(t1=0.5)
    for i in range(1000):
        table.start(f"b{i}", b"N", "d", reliable=False, now=i / 1000, owner=i)
    for i in range(999):
        assert table.on_response(f"b{i}", 200, 0.9) == i
    assert table.get_timer() == 0.999 + 0.5  # the answered ones were skipped
    assert table.handle_timer(1.6) == ([("d", b"N")], [])
