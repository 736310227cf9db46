"""RFC 4475 / RFC 5118 torture messages against the parser, driven by sip-torture/INDEX.tsv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from busylamp.presence.sip import (
    ParseError,
    Request,
    Response,
    build_response,
    parse_message,
)

# Invalid per the RFC, but INDEX.tsv allows a robust element to process them; we accept them.
ROBUST_ACCEPTS = {
    "rfc4475/trws.dat",  # trailing SP after SIP-Version is stripped
    "rfc4475/baddate.dat",  # Date is never interpreted
    "rfc4475/regbadct.dat",  # Contact is parsed only when used: '?' part then is header params
    "rfc4475/badaspec.dat",  # spaces inside <> stripped
    "rfc4475/baddn.dat",  # unquoted display name with a comma accepted
}
# Semantically odd requests that must still parse (the engine answers them, never 400).
SEMANTIC_ACCEPTS = {
    "rfc4475/badbranch.dat", "rfc4475/unksm2.dat", "rfc4475/bext01.dat", "rfc4475/invut.dat",
    "rfc4475/regaut01.dat", "rfc4475/bcast.dat", "rfc4475/zeromf.dat", "rfc4475/cparam01.dat",
    "rfc4475/cparam02.dat", "rfc4475/regescrt.dat", "rfc4475/sdp01.dat", "rfc4475/inv2543.dat",
}
EXPECTED_STATUS = {
    "rfc4475/badvers.dat": 505,
    "rfc4475/unkscm.dat": 416,
    "rfc4475/novelsc.dat": 416,
}


# every test here runs with the C head split and with the Python one (tests/unit/conftest.py)
pytestmark = pytest.mark.usefixtures("head_split", "value_parse")


def _index(root: Path) -> list[dict[str, str]]:
    with (root / "INDEX.tsv").open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _rows() -> list[dict[str, str]]:
    from tests.conftest import FIXTURES

    root = FIXTURES / "sip-torture"
    return _index(root) if root.is_dir() else []


ROWS = _rows()


def test_index_covers_every_file(fixtures_dir: Path) -> None:
    root = fixtures_dir / "sip-torture"
    listed = {row["file"] for row in _index(root)}
    on_disk = {str(p.relative_to(root)) for p in root.glob("rfc*/*.dat")}
    assert listed <= on_disk
    assert len(listed) == 61
    assert ROBUST_ACCEPTS | SEMANTIC_ACCEPTS | set(EXPECTED_STATUS) <= listed


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_torture_message(row: dict[str, str], fixtures_dir: Path) -> None:
    name = row["file"]
    data = (fixtures_dir / "sip-torture" / name).read_bytes()
    assert len(data) == int(row["bytes"])
    kind = Request if row["kind"] == "request" else Response
    expect_ok = (
        row["validity"] == "valid" or name in ROBUST_ACCEPTS or name in SEMANTIC_ACCEPTS
    )
    if expect_ok:
        message = parse_message(data)
        assert isinstance(message, kind)
        message.call_id  # noqa: B018 - structured views must work on accepted messages
        assert message.cseq[0] >= 0
        assert message.vias
        if isinstance(message, Request):
            assert message.cseq[1] == message.method
            response = build_response(message, 200, source=("192.0.2.99", 5060))
            reparsed = parse_message(response)
            assert isinstance(reparsed, Response) and reparsed.status == 200
            assert reparsed.call_id == message.call_id
            assert len(reparsed.vias) == len(message.vias)
        return
    with pytest.raises(ParseError) as info:
        parse_message(data)
    error = info.value
    assert error.status == EXPECTED_STATUS.get(name, 400)
    if kind is Request and error.request is not None:
        answer = build_response(error.request, error.status, error.reason)
        assert answer.startswith(f"SIP/2.0 {error.status} {error.reason}\r\n".encode())
        call_id = error.request.headers.get("Call-ID")
        assert f"\r\nCall-ID: {call_id}\r\n".encode() in answer


def test_badvers_and_scheme_errors_are_answerable(fixtures_dir: Path) -> None:
    root = fixtures_dir / "sip-torture" / "rfc4475"
    for name, status in (("badvers.dat", 505), ("unkscm.dat", 416), ("novelsc.dat", 416)):
        with pytest.raises(ParseError) as info:
            parse_message((root / name).read_bytes())
        assert info.value.status == status
        assert info.value.request is not None
        answer = parse_message(build_response(info.value.request, status))
        assert isinstance(answer, Response) and answer.status == status


def test_bad_responses_raise(fixtures_dir: Path) -> None:
    root = fixtures_dir / "sip-torture" / "rfc4475"
    for name in ("bigcode.dat", "scalarlg.dat"):
        with pytest.raises(ParseError):
            parse_message((root / name).read_bytes())


def test_dblreq_is_register_with_empty_body(fixtures_dir: Path) -> None:
    message = parse_message((fixtures_dir / "sip-torture/rfc4475/dblreq.dat").read_bytes())
    assert isinstance(message, Request)
    assert message.method == "REGISTER"
    assert message.body == b""
    assert message.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_wsinv_structured_values(fixtures_dir: Path) -> None:
    message = parse_message((fixtures_dir / "sip-torture/rfc4475/wsinv.dat").read_bytes())
    assert isinstance(message, Request)
    assert message.to.uri == "sip:vivekg@chair-dnrc.example.com"
    assert message.to.tag == "1918181833n"
    assert message.from_.display == 'J Rosenberg \\"'
    assert message.from_.tag == "98asjd8"
    assert message.cseq == (9, "INVITE")
    assert message.max_forwards == 68
    assert [(v.transport, v.host, v.branch) for v in message.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert message.contact is not None
    assert message.contact.display == 'Quoted string ""'
    assert message.contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert message.headers.get("Subject") == ""
    assert message.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert len(message.body) == 150


def test_rejected_requests_that_cannot_be_addressed(fixtures_dir: Path) -> None:
    root = fixtures_dir / "sip-torture" / "rfc4475"
    for name in ("insuf.dat", "badinv01.dat"):
        with pytest.raises(ParseError) as info:
            parse_message((root / name).read_bytes())
        assert info.value.status == 400
        assert info.value.request is None, name


def test_repeated_single_headers_are_answered_400_from_the_first_values(
    fixtures_dir: Path,
) -> None:
    """RFC 4475 3.3.8 wants a 400 for multi01; the first From/To/Call-ID/CSeq address it."""
    with pytest.raises(ParseError) as info:
        parse_message((fixtures_dir / "sip-torture" / "rfc4475" / "multi01.dat").read_bytes())
    assert info.value.status == 400
    request = info.value.request
    assert request is not None
    response = build_response(request, 400, info.value.reason, source=("192.0.2.25", 5060))
    assert response.startswith(b"SIP/2.0 400 ")
    assert b"Call-ID: multi01.98asdh@192.0.2.1\r\n" in response
