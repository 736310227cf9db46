"""The fast path for responses: status and top Via branch read straight from the bytes."""

from __future__ import annotations

__all__ = ["sniff_response", "sniff_response_py"]

_SNIFF_VIA = (b"\r\nVia:", b"\r\nv:")


def sniff_response_py(data: bytes) -> tuple[int, str] | None:
    """(status, top Via branch) of a response, read straight from the bytes, or None.

    The fast path for the answers to our own NOTIFYs (the bulk of all traffic): no header table,
    no structured parsing. Returns None (the caller then runs :func:`parse_message`) unless the
    message is plainly a ``SIP/2.0`` response with a 3-digit status and a top Via in its canonical
    or compact spelling carrying a ``branch`` parameter.
    """
    if data[:8] != b"SIP/2.0 " or len(data) < 12 or data[11:12] not in (b" ", b"\r"):
        return None
    code = data[8:11]
    if not code.isdigit():
        return None
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    via_at = -1
    for marker in _SNIFF_VIA:
        at = data.find(marker, 0, head_end)
        if at >= 0 and (via_at < 0 or at < via_at):
            via_at = at
    if via_at < 0:
        return None
    line_end = data.find(b"\r\n", via_at + 2)
    line = data[via_at + 2 : line_end if line_end >= 0 else head_end]
    comma = line.find(b",")
    if comma >= 0:
        line = line[:comma]  # several Via values on one line: the first is the top one
    at = line.find(b";branch=")
    if at < 0:
        return None
    value = line[at + 8 :]
    for stop in (b";", b" ", b"\t"):
        cut = value.find(stop)
        if cut >= 0:
            value = value[:cut]
    if not value:
        return None
    return int(code), value.decode("ascii", "replace")


try:  # the same scan in C (presence/sip/_scan.c); sniff_response_py is the specification
    from busylamp.presence.sip._scan import sniff_response as _sniff_response_c
except ImportError:  # not built
    _sniff_response_c = None
sniff_response = _sniff_response_c or sniff_response_py
