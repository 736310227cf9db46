"""A new SUBSCRIBE refused straight from its bytes: what a 503 under overload repeats of the
request, read without :func:`~.parse.parse_message`, and that response built from it (the same
bytes as :func:`~.build.build_response` makes of the parsed request).

Everything is checked with the parser's own rules, most of it by the C code of ``str`` and
``dict``; the shapes phones send are recognised by a regular expression that admits only what
the parser accepts (and reads the same), anything else goes to the parser's own functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import repeat
from typing import NamedTuple

from .build import _top_via_for_response
from .grammar import ParseError, split_list
from .headers import _CANONICAL, CANON_CACHE, canonical_name
from .parse import MAX_CSEQ
from .uri import parse_name_addr, parse_uri
from .via import Via, parse_via

__all__ = ["PlainSubscribe", "plain_new_subscribe", "refusal"]

_SINGLE = frozenset(("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length"))

_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]+"  # grammar._TOKEN_RE
# A name-addr _parse_name_addr accepts as it stands (nothing to strip, no escapes, no spaces
# in the URI or the parameters): a quoted display name without a backslash or a run of tokens,
# a URI with a scheme in <>, header parameters ;token[=value] (no value empty).
_PLAIN_NAME_ADDR = re.compile(
    rf'(?:"[^"\\\r\n]*" ?|{_TOKEN}(?: {_TOKEN})* ?)?'
    r'<[A-Za-z][A-Za-z0-9+.-]*:[^<>"\s]*>'
    rf'(?:;{_TOKEN}(?:=[^;"\s]+)?)*'
).fullmatch
# A via-parm parse_via reads as this: SIP/2.0, an upper-case transport, one space, a host name
# or IPv4 address and a port, parameters with lower-case names and values without a space.
_PLAIN_VIA = re.compile(
    r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9._-]+)(?::([0-9]{1,5}))?"
    r"((?:;[a-z0-9.!%*_+`'~-]+(?:=[^;\"\s]+)?)*)"
).fullmatch


class PlainSubscribe(NamedTuple):
    """What a response to a plain new SUBSCRIBE repeats, as the parser would hold it."""

    top_via: Via
    vias: list[str]  # every via-parm in order (as Headers.get_all("Via") lists them)
    from_: str
    to: str
    call_id: str
    cseq: str


def plain_new_subscribe(data: bytes) -> PlainSubscribe | None:
    """The parts of ``data`` a refusal needs, when it is plainly a new (out-of-dialog) SUBSCRIBE
    that :func:`~.parse.parse_message` accepts; None for anything else, and whenever in doubt
    (the caller then takes the normal path).

    Plainly: a ``SUBSCRIBE <uri> SIP/2.0`` request line; a head ending in CRLF CRLF, CRLF
    line ends only, no folded line; exactly one To, From, Call-ID and CSeq (any spelling of
    the name, compact forms too), a Via at least, no Require; a To without a ``tag``
    parameter; a CSeq ``<n> SUBSCRIBE``. The rest is checked as the parser checks it (the
    Request-URI, every Via, From and To, Max-Forwards, Content-Length), so a message the full
    parse would answer with a 4xx (or drop) is never taken here.
    """
    if data[:10] != b"SUBSCRIBE ":
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks:
        return None  # a bare CR or LF: left alone
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or request_line[2] != "SIP/2.0":
        return None
    uri = request_line[1]
    if not uri or "<" in uri or ">" in uri or "\t" in uri:
        return None
    del lines[0]
    fields = _header_fields(lines)
    if fields is None:
        return None
    vias, single = fields
    to = single.get("To")
    from_ = single.get("From")
    call_id = single.get("Call-ID")
    cseq = single.get("CSeq")
    if to is None or from_ is None or call_id is None or cseq is None or "Require" in single:
        return None  # (Require: its 420 comes before any 503)
    to, from_, call_id, cseq = to.strip(" \t"), from_.strip(" \t"), call_id.strip(" \t"), \
        cseq.strip(" \t")
    number, _, method = cseq.partition(" ")
    if not call_id or " " in call_id or method != "SUBSCRIBE" or \
            not (number.isascii() and number.isdigit()) or len(number) > 10 or \
            int(number) > MAX_CSEQ or not _numbers_fit(single, len(data) - end - 4):
        return None
    try:
        parsed_uri = parse_uri(uri)
        if _PLAIN_NAME_ADDR(from_) is None:
            parse_name_addr(from_)
        to_params = parse_name_addr(to).params  # (memoised: a presentity's To repeats)
        parms: list[str] = []  # as Headers.get_all("Via") lists them
        for value in vias:
            parms += split_list(value)
        if not parms:
            return None
        top_via = _via(parms[0])
        for parm in parms[1:]:
            _via(parm)
    except ParseError:
        return None
    if "tag" in to_params or (parsed_uri.headers is not None and parsed_uri.scheme != "tel"):
        return None
    return PlainSubscribe(top_via, parms, from_, to, call_id, cseq)


def _header_fields(lines: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """(the Via values in order, the other headers' values by canonical name) of the header
    lines, the values not yet stripped; None for a line the parser refuses or would fold into
    the one before, and for a To, From, Call-ID, CSeq, Max-Forwards or Content-Length twice."""
    try:
        fields = dict(map(str.split, lines, repeat(":"), repeat(1)))
    except ValueError:
        return None  # a line without a colon
    if len(fields) == len(lines) and fields.keys() <= _CANONICAL:
        # the usual case, all in C: every name spelled as the parser spells it, none twice
        via = fields.pop("Via", None)
        return ([] if via is None else [via]), fields
    vias: list[str] = []
    single: dict[str, str] = {}
    for line in lines:
        if line[:1] in (" ", "\t"):
            return None  # folded
        raw_name, _, value = line.partition(":")
        name = CANON_CACHE.get(raw_name) or canonical_name(raw_name)
        if name is None:
            return None
        if name == "Via":
            vias.append(value)
        elif name in single and name in _SINGLE:
            return None
        else:
            single[name] = value
    return vias, single


def _numbers_fit(single: dict[str, str], body_size: int) -> bool:
    """Max-Forwards and Content-Length, when present, as the parser accepts them."""
    hops = single.get("Max-Forwards")
    if hops is not None:
        hops = hops.strip()
        if not (hops.isascii() and hops.isdigit()) or len(hops) > 10 or int(hops) > 255:
            return False
    length = single.get("Content-Length")
    if length is not None:
        length = length.strip()
        if not (length.isascii() and length.isdigit()) or len(length) > 10 or \
                int(length) > body_size:
            return False
    return True


def _via(text: str) -> Via:
    """``parse_via(text)``; a plain via-parm read without it (the same Via)."""
    match = _PLAIN_VIA(text)
    if match is None:
        return parse_via(text)
    transport, host, digits, ptext = match.groups()
    port = None if digits is None else int(digits)
    if port is not None and port > 65535:
        return parse_via(text)  # (raises)
    params: dict[str, str | None] = {}
    if ptext:
        for param in ptext[1:].split(";"):
            name, eq, value = param.partition("=")
            params[name] = value if eq else None
    return Via(transport, host, port, params, text)


def refusal(
    plain: PlainSubscribe, status: int, reason: str, *, to_tag: str,
    source: tuple[str, int] | None, headers: Iterable[tuple[str, str]] = (),
    server: str | None = None,
) -> bytes:
    """A final response (no body) to ``plain``, byte for byte as :func:`~.build.build_response`
    builds it for the parsed request: the top Via with received/rport for ``source`` (RFC
    3261 18.2.2, RFC 3581), the other Vias, From, To with ``to_tag``, Call-ID and CSeq as
    received, then ``headers``, Server and Content-Length."""
    lines = [f"SIP/2.0 {status} {reason}",
             "Via: " + _top_via_for_response(plain.top_via, source)]
    for parm in plain.vias[1:]:
        lines.append("Via: " + parm)
    lines += ["From: " + plain.from_, f"To: {plain.to};tag={to_tag}",
              "Call-ID: " + plain.call_id, "CSeq: " + plain.cseq]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    if server:
        lines.append("Server: " + server)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
