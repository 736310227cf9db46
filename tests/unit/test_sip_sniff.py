"""sniff_response (the fast path for answers to our NOTIFYs) agrees with the full parser."""

from __future__ import annotations

import pytest

from busylamp.presence.sip import Response, parse_message, sniff
from tests.extensions import require_built_extension


@pytest.fixture(params=["c", "python"])
def sniff_response(request: pytest.FixtureRequest):
    """Every test here runs with the C scan (presence/sip/_scan.c) and with the Python one;
    tests/unit/test_sip_scan.py checks the two agree on mutants."""
    if request.param == "python":
        return sniff.sniff_response_py
    if sniff._sniff_response_c is None:
        require_built_extension("presence/sip/_scan.c")
    return sniff.sniff_response

BASE = (
    "SIP/2.0 200 OK\r\n"
    "{via}"
    "From: <sip:1001@example.com>;tag=abc\r\n"
    "To: <sip:2000@example.com>;tag=def\r\n"
    "Call-ID: x@y\r\nCSeq: 7 NOTIFY\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("via", "expected"),
    [
        ("Via: SIP/2.0/UDP 10.0.0.1:5065;branch=z9hG4bKab.1;rport=5065\r\n", "z9hG4bKab.1"),
        ("v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKab.2\r\n", "z9hG4bKab.2"),
        ("Via: SIP/2.0/UDP a;branch=z9hG4bKtop, SIP/2.0/UDP b;branch=z9hG4bKsecond\r\n",
         "z9hG4bKtop"),
        ("Via: SIP/2.0/UDP a;branch=z9hG4bKtop\r\nVia: SIP/2.0/UDP b;branch=z9hG4bKb\r\n",
         "z9hG4bKtop"),
        ("Via: SIP/2.0/TCP [::1]:5065;received=::1;branch=z9hG4bK6 ;rport\r\n", "z9hG4bK6"),
    ],
)
def test_sniff_matches_full_parse(sniff_response, via, expected):
    data = BASE.format(via=via).encode()
    assert sniff_response(data) == (200, expected)
    full = parse_message(data)
    assert isinstance(full, Response)
    assert full.vias[0].branch == expected and full.status == 200


@pytest.mark.parametrize(
    "data",
    [
        BASE.format(via="VIA: SIP/2.0/UDP a;branch=z9hG4bKx\r\n").encode(),  # unusual spelling
        BASE.format(via="Via: SIP/2.0/UDP a;rport\r\n").encode(),  # no branch
        BASE.format(via="").encode(),  # no Via at all
        b"SIP/2.0 2x0 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n",  # no end of head
        b"NOTIFY sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\n\r\n",
        b"SIP/2.0 200",
    ],
)
def test_sniff_declines_what_it_cannot_read_plainly(sniff_response, data):
    assert sniff_response(data) is None


def test_sniff_on_status_variants(sniff_response):
    data = BASE.format(via="Via: SIP/2.0/UDP a;branch=z9hG4bKq\r\n").encode()
    assert sniff_response(data.replace(b"200 OK", b"481 Call Does Not Exist")) == (481, "z9hG4bKq")
    assert sniff_response(data.replace(b"200 OK", b"180 ")) == (180, "z9hG4bKq")
