"""The Via header value (RFC 3261 20.42): sent-protocol, sent-by and parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .grammar import bad, parse_hostport, split_params

__all__ = ["MAGIC_COOKIE", "Via", "parse_via"]

MAGIC_COOKIE = "z9hG4bK"
"""Prefix of an RFC 3261 branch (17.2.3); without it a transaction is matched the RFC 2543 way."""

_VIA_PROTO_RE = re.compile(r"\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+")


@dataclass(slots=True)
class Via:
    """One via-parm: transport (upper-cased), sent-by host and port, parameters, raw text."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]
    raw: str
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def rport(self) -> bool | int | None:
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        if value is None:
            return True
        return int(value) if value.isascii() and value.isdigit() else True

    @property
    def received(self) -> str | None:
        value = self.params.get("received")
        if value and value[0] == "[" and value[-1] == "]":
            return value[1:-1]
        return value

    def sent_by(self) -> tuple[str, int | None]:
        """(host, port) as sent; IPv6 host without brackets."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return host, self.port

    def serialize(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hostport}" + "".join(
            f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items()
        )


try:  # a plain Via in C (presence/sip/_values.c); _parse_via specifies it
    from busylamp.presence.sip._values import via as _via_c
except ImportError:  # not built: Python parses every Via
    _via_c = None


def parse_via(text: str) -> Via:
    """Parse one via-parm ('SIP/2.0/UDP host:port;params'); LWS tolerated around '/', ';', '='."""
    fields = _via_c(text) if _via_c is not None else None
    return Via(*fields) if fields is not None else _parse_via(text)


def _parse_via(text: str) -> Via:
    match = _VIA_PROTO_RE.match(text)
    if match is None:
        raise bad("Bad Via")
    name, version, transport = match.groups()
    rest = text[match.end() :]
    sent_by, semi, ptext = rest.partition(";")
    sent_by = sent_by.strip()
    if " " in sent_by or "\t" in sent_by:
        raise bad("Bad Via Sent-By")
    host, port = parse_hostport(sent_by, "Via")
    params = split_params(semi + ptext, "Via")
    return Via(transport.upper(), host, port, params, text.strip(), f"{name}/{version}")
