"""The overloaded engine's 503 for a new SUBSCRIBE built from the raw bytes
(``Dispatcher._shed_plain``, presence/sip/refuse.py): the same answer, counters and stored
transaction as the full path's ``_shed``; everything else still goes the full path."""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import re
from collections.abc import Iterator

import pytest

from busylamp.presence.engine import dispatch
from busylamp.presence.sip import Request, Response, parse_message
from tests import fuzz
from tests.conftest import FIXTURES
from tests.unit.test_engine import PHONE, Harness, answer, subscribe
from tests.unit.test_fuzz import make_engine, sip_corpus
from tests.unit.test_sip_refuse import NOT_PLAIN, PLAIN

_real_parse = dispatch.parse_message


@contextlib.contextmanager
def full_path() -> Iterator[None]:
    """The engine as before the raw-bytes refusal: every datagram through parse_message."""
    cheap = dispatch.plain_new_subscribe
    dispatch.plain_new_subscribe = lambda data: None
    try:
        yield
    finally:
        dispatch.plain_new_subscribe = cheap


class Parses:
    """Counts parse_message calls of the engine (monkeypatched in dispatch)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, allowed: bool = True) -> None:
        self.count = 0
        self.allowed = allowed
        monkeypatch.setattr(dispatch, "parse_message", self)

    def __call__(self, data: bytes, **kwargs):
        if not self.allowed:
            raise AssertionError("parse_message called for a SUBSCRIBE the cheap path sheds")
        self.count += 1
        return _real_parse(data, **kwargs)


@pytest.fixture
def fixed_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every To tag the dispatcher makes is 'T4g', so two answers compare byte for byte."""
    monkeypatch.setattr(dispatch, "new_tag", lambda: "T4g")


def overloaded(**config) -> Harness:
    h = Harness(**config)
    h.engine.overloaded = True
    return h


def raw(h: Harness, data: bytes, source=PHONE, now: float | None = None) -> list[bytes]:
    h.engine.receive(data, source, "udp", None, h.clock.now if now is None else now)
    return [out[2] for out in h.engine.messages_to_send()]


def both_ways(data: bytes, source=PHONE, **config) -> tuple[list[bytes], list[bytes], Harness,
                                                               Harness]:
    """The answers of a fresh overloaded engine with the cheap path, and of one without it."""
    cheap, full = overloaded(**config), overloaded(**config)
    answers = raw(cheap, data, source)
    with full_path():
        expected = raw(full, data, source)
    return answers, expected, cheap, full


@pytest.mark.parametrize("data", PLAIN.values(), ids=PLAIN.keys())
def test_the_cheap_503_is_the_full_paths_503(data: bytes, monkeypatch) -> None:
    parses = Parses(monkeypatch)
    answers, expected, cheap, full = both_ways(data, source=("203.0.113.5", 40001))
    assert parses.count == 1  # the full path's only
    (mine,), (theirs,) = answers, expected
    got, want = parse_message(mine), parse_message(theirs)
    assert isinstance(got, Response) and isinstance(want, Response)
    assert (got.status, got.reason) == (want.status, want.reason) == (503, "Overloaded")
    assert got.headers.get_all("Via") == want.headers.get_all("Via")
    assert [v.raw for v in got.vias] == [v.raw for v in want.vias]
    for name in ("From", "Call-ID", "CSeq", "Retry-After", "Server", "Content-Length"):
        assert got.headers.get(name) == want.headers.get(name), name
    assert got.to.uri == want.to.uri and got.to.display == want.to.display
    assert {k: v for k, v in got.to.params.items() if k != "tag"} == \
        {k: v for k, v in want.to.params.items() if k != "tag"}
    assert got.to.tag and want.to.tag and got.to.tag != want.to.tag  # each a new tag
    # and byte for byte, the tags apart
    assert mine.replace(got.to.tag.encode(), b"T") == theirs.replace(want.to.tag.encode(), b"T")
    assert cheap.engine.counters.as_dict() == full.engine.counters.as_dict()
    counters = cheap.engine.counters
    assert (counters["sip_requests_received"], counters["limit_overload"],
            counters["subscribe_rejected"]) == (1, 1, 1)


def test_overloaded_engine_sheds_new_subscribes_without_parsing_them(monkeypatch) -> None:
    h = Harness()
    _, notify = h.subscribe_ok()
    h.send(answer(notify))
    h.engine.overloaded = True
    Parses(monkeypatch, allowed=False)
    refused = [raw(h, subscribe(call_id=f"cid-{i}", from_tag=f"t{i}", branch=f"z9hG4bK-o{i}"))
               for i in range(20)]
    assert all(len(out) == 1 and out[0].startswith(b"SIP/2.0 503 Overloaded\r\n")
               for out in refused)
    delays = {int(parse_message(out[0]).headers.get("Retry-After")) for out in refused}
    assert all(10 <= d < 20 for d in delays) and len(delays) > 1
    counters = h.engine.counters
    assert counters["limit_overload"] == 20 and counters["subscribe_rejected"] == 20
    assert counters["sip_requests_received"] == 21  # and the first SUBSCRIBE
    assert len(h.engine.subscriptions) == 1


def test_a_refresh_while_overloaded_still_gets_200_and_a_notify(monkeypatch) -> None:
    h = Harness()
    ok, notify = h.subscribe_ok()
    h.send(answer(notify))
    h.engine.overloaded = True
    parses = Parses(monkeypatch)
    out = h.send(subscribe(to_tag=ok.to.tag, cseq=2, branch="z9hG4bK-refresh"))
    assert [m.status if isinstance(m, Response) else m.method for _, _, m, _ in out] == \
        [200, "NOTIFY"]
    assert parses.count == 1  # the refresh, the full path
    assert h.engine.counters["limit_overload"] == 0


FALLBACKS = {
    "Require": (subscribe(extra="Require: foo"), 420, "Bad Extension"),
    "an empty Require": (subscribe(extra="Require: "), 503, "Overloaded"),
    "folded": (subscribe(extra="X-Long: a\r\n continued"), 503, "Overloaded"),
    "two To": (subscribe(extra="t: <sip:1002@example.com>"), 400, "Multiple To"),
    "two Call-IDs": (subscribe(extra="Call-ID: again"), 400, "Multiple Call-ID"),
    "malformed first line": (subscribe().replace(b"SIP/2.0\r\n", b"SIP/2.0 x\r\n", 1), 400,
                             "Bad Request-Line"),
    "SIP/3.0": (subscribe().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505,
                "Version Not Supported"),
    "a tag without a value": (subscribe().replace(b"To: <sip:1001@example.com>",
                                                  b"To: <sip:1001@example.com>;tag"), 503,
                              "Overloaded"),
    "an RFC 2543 branch": (subscribe(branch="1234"), 503, "Overloaded"),
    "a bare LF": (subscribe(extra="X-A: 1\nX-B: 2"), 503, "Overloaded"),
    "in dialog, no such dialog": (subscribe(to_tag="nosuch"), 481,
                                  "Subscription does not exist"),
}


@pytest.mark.parametrize(("data", "status", "reason"), FALLBACKS.values(), ids=FALLBACKS.keys())
def test_what_is_not_plain_goes_the_full_path(data, status, reason, monkeypatch, fixed_tags):
    parses = Parses(monkeypatch)
    answers, expected, cheap, full = both_ways(data)
    assert parses.count == 2  # both engines parsed it
    assert answers == expected
    assert cheap.engine.counters.as_dict() == full.engine.counters.as_dict()
    (response,) = [parse_message(a) for a in answers]
    assert (response.status, response.reason) == (status, reason)


TAG_ELSEWHERE = {
    "tag in the To display name": subscribe().replace(
        b"To: <sip:1001@example.com>", b'To: "x;tag=1" <sip:1001@example.com>'),
    "tag in the To URI": subscribe().replace(
        b"To: <sip:1001@example.com>", b"To: <sip:1001@example.com;tag=1>"),
    "tag as the To user": subscribe().replace(
        b"To: <sip:1001@example.com>", b"To: tag <sip:tag@example.com>;x-tag=tag"),
}


@pytest.mark.parametrize("data", TAG_ELSEWHERE.values(), ids=TAG_ELSEWHERE.keys())
def test_a_tag_elsewhere_in_to_is_no_dialog(data, monkeypatch, fixed_tags):
    """``tag`` in the display name or the URI is no To tag: the parser agrees (a new SUBSCRIBE,
    shed), and so the cheap path takes it, with the same 503."""
    assert parse_message(data).to.tag is None
    parses = Parses(monkeypatch)
    answers, expected, _, _ = both_ways(data)
    assert parses.count == 1
    assert answers == expected
    assert answers[0].startswith(b"SIP/2.0 503 Overloaded\r\n")


def test_a_resent_subscribe_gets_its_503_again(monkeypatch) -> None:
    h = overloaded()
    data = subscribe()
    (first,) = raw(h, data)
    parses = Parses(monkeypatch, allowed=False)
    assert raw(h, data, now=h.clock.now + 0.5) == [first]  # the same bytes: by fingerprint
    changed = data.replace(b"Max-Forwards: 70", b"Max-Forwards: 69")
    assert raw(h, changed, now=h.clock.now + 1.0) == [first]  # other bytes: by the key
    counters = h.engine.counters
    assert counters["sip_retransmissions_received"] == 2
    assert counters["sip_requests_received"] == 3
    assert counters["limit_overload"] == counters["subscribe_rejected"] == 1
    # the key is the parsed request's: resent once the overload is over, the full path finds
    # the 503 the cheap path stored
    h.engine.overloaded = False
    parses.allowed = True
    again = data.replace(b"Max-Forwards: 70", b"Max-Forwards: 68")
    assert raw(h, again, now=h.clock.now + 2.0) == [first]
    assert parses.count == 1 and counters["sip_retransmissions_received"] == 3
    assert len(h.engine.subscriptions) == 0


def test_a_503_the_full_path_stored_answers_the_cheap_paths_retransmission(monkeypatch):
    h = overloaded()
    data = subscribe()
    with full_path():
        (first,) = raw(h, data)
    Parses(monkeypatch, allowed=False)
    assert raw(h, data.replace(b"Expires: 3600", b"Expires: 600"), now=h.clock.now + 0.5) == \
        [first]
    assert h.engine.counters["limit_overload"] == 1


def test_warming_up_and_untrusted_sources_keep_their_answers(monkeypatch, fixed_tags) -> None:
    parses = Parses(monkeypatch)
    h = overloaded()
    h.engine.accepting = False
    (response,) = [parse_message(a) for a in raw(h, subscribe())]
    assert (response.status, response.reason) == (503, "Warming up")
    assert response.headers.get("Retry-After") == "5"
    h = overloaded(trusted=(ipaddress.ip_network("10.1.0.0/16"),))
    (response,) = [parse_message(a) for a in raw(h, subscribe())]
    assert (response.status, response.reason) == (403, "Source not trusted")
    assert h.engine.counters["sip_untrusted"] == 1 and h.engine.counters["limit_overload"] == 0
    assert parses.count == 2
    # a trusted source is shed the cheap way
    (answer_,) = raw(h, subscribe(branch="z9hG4bK-t"), source=("10.1.2.3", 5060))
    assert answer_.startswith(b"SIP/2.0 503 Overloaded\r\n") and parses.count == 2


def test_not_overloaded_nothing_changes(monkeypatch) -> None:
    parses = Parses(monkeypatch)
    h = Harness()
    ok, _ = h.subscribe_ok()
    assert ok.status == 200 and parses.count == 1


def _same_everywhere(datagrams: list[tuple[bytes, tuple[str, int]]], make) -> int:
    """Feed ``datagrams`` to two overloaded engines, with and without the cheap path; they
    must answer alike and count alike. The number of datagrams the cheap path answered."""
    cheap, full = make(), make()
    cheap.overloaded = full.overloaded = True
    shed_cheaply = 0
    now = 1000.0
    for index, (data, source) in enumerate(datagrams):
        parsed_before = cheap.counters["limit_overload"]
        outcome = []
        for engine in (cheap, full):
            context = full_path() if engine is full else contextlib.nullcontext()
            with context:
                try:
                    engine.receive(data, source, "udp", None, now)
                    outcome.append([out[2] for out in engine.messages_to_send()])
                except Exception as exc:  # noqa: BLE001 - compared, and failed on below
                    outcome.append(repr(exc))
        assert outcome[0] == outcome[1], (index, data)
        assert not isinstance(outcome[0], str), (index, data, outcome[0])
        assert cheap.counters.as_dict() == full.counters.as_dict(), (index, data)
        shed_cheaply += cheap.counters["limit_overload"] > parsed_before and \
            dispatch.plain_new_subscribe(data) is not None
        now += 0.01
    return shed_cheaply


def _torture_rows() -> list[dict[str, str]]:
    root = FIXTURES / "sip-torture"
    if not root.is_dir():
        return []
    with (root / "INDEX.tsv").open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def as_subscribe(data: bytes) -> bytes:
    """A torture request turned SUBSCRIBE: its method and its CSeq method."""
    data = re.sub(rb"\A[^ \r\n]+ ", b"SUBSCRIBE ", data)
    return re.sub(rb"(?im)^(CSeq[ \t]*:[ \t]*\d+[ \t]+)[^ \t\r\n]+", rb"\1SUBSCRIBE", data)


@pytest.mark.skipif(not _torture_rows(), reason="shared torture fixtures not present")
def test_torture_messages_get_the_same_answers_overloaded(fixed_tags) -> None:
    """RFC 4475 / RFC 5118: every torture message, and each request turned SUBSCRIBE, gets
    the same answer from an overloaded engine with the cheap path as without it."""
    datagrams = []
    for row in _torture_rows():
        data = (FIXTURES / "sip-torture" / row["file"]).read_bytes()
        datagrams.append((data, ("192.0.2.99", 5060)))
        if row["kind"] == "request":
            datagrams.append((as_subscribe(data), ("192.0.2.99", 5060)))
            datagrams.append((as_subscribe(data), ("192.0.2.1", 5060)))
    shed = _same_everywhere(datagrams, lambda: Harness().engine)
    assert shed >= 10  # the cheap path answered some of them


def test_mutated_subscribes_get_the_same_answers_overloaded(fixed_tags) -> None:
    corpus = sip_corpus() + list(PLAIN.values()) + list(NOT_PLAIN.values())
    subscribes = [d for d in corpus if d.startswith(b"SUBSCRIBE ")]
    datagrams = []
    for index in range(fuzz.cases()):
        rng = fuzz.rng_for("shed", index)
        # a branch and Call-ID of its own (the same ones again are a retransmission)
        data = rng.choice(subscribes).replace(b"z9hG4bK", b"z9hG4bK%d-" % index).replace(
            b"Call-ID: ", b"Call-ID: %d-" % index)
        if rng.random() < 0.8:
            data = fuzz.mutate(data, rng, corpus)
        datagrams.append((data, rng.choice([PHONE, ("192.0.2.10", 5060), ("::1", 5060)])))
    shed = _same_everywhere(datagrams, make_engine)
    assert shed > fuzz.cases() // 20


def test_the_shed_answers_are_well_formed(fixed_tags) -> None:
    h = overloaded()
    for name, data in PLAIN.items():
        (answer_,) = raw(h, data)
        response = parse_message(answer_)
        assert isinstance(response, Response) and response.status == 503, name
        assert not isinstance(response, Request)
