"""SIP URIs (sip:, sips:, tel:) and name-addr / addr-spec values (From, To, Contact, Route)."""

from __future__ import annotations

from dataclasses import dataclass

from .grammar import ParseError, bad, match_scheme, parse_hostport, split_params

__all__ = ["NameAddr", "SipUri", "parse_name_addr", "parse_uri"]


@dataclass(slots=True)
class SipUri:
    """A parsed sip:/sips:/tel: URI; IPv6 hosts keep their brackets, params are lower-cased."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str | None

    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            if self.host:
                out.append("@")
        out.append(self.host_port() if self.host else "")
        for name, value in self.params.items():
            out.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers is not None:
            out += ["?", self.headers]
        return "".join(out)


_MEMO_MAX = 8192
_uri_memo: dict[str, SipUri] = {}
_name_addr_memo: dict[str, NameAddr] = {}

try:  # plain values in C (presence/sip/_values.c); _parse_uri and _parse_name_addr specify them
    from busylamp.presence.sip._values import name_addr as _name_addr_c
    from busylamp.presence.sip._values import sip_uri as _sip_uri_c
except ImportError:  # not built: Python parses every value
    _name_addr_c = _sip_uri_c = None


def parse_uri(text: str) -> SipUri:
    """Parse a sip:/sips:/tel: URI. ParseError(416) for other schemes, ParseError(400) if bad.

    Memoised (a phone's Contact, a presentity's URI repeat across dialogs and requests): the
    result is shared, so callers treat it as read-only."""
    found = _uri_memo.get(text)
    if found is not None:
        return found
    fields = _sip_uri_c(text) if _sip_uri_c is not None else None
    return _remember(_uri_memo, text, SipUri(*fields) if fields is not None else _parse_uri(text))


def _remember(memo: dict, text: str, parsed):
    """Keep ``parsed`` as ``memo``'s entry for ``text`` (the table starts afresh when full)."""
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[text] = parsed
    return parsed


def _parse_uri(text: str) -> SipUri:
    scheme, colon, rest = text.partition(":")
    if not colon or not match_scheme(scheme):
        raise bad("Bad URI")
    scheme_l = scheme.lower()
    if any(ch in text for ch in " \t\r\n<>"):
        raise bad("Bad URI")
    if scheme_l == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise bad("Bad tel URI")
        return SipUri("tel", number, None, "", None, split_params(";" + ptext, "URI")
                      if ptext else {}, None)
    if scheme_l not in ("sip", "sips"):
        raise ParseError("Unsupported URI Scheme", 416)
    if rest.partition("?")[0].count("@") > 1:
        raise bad("Bad URI")  # "@" may appear in the user part only escaped (%40)
    at = rest.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, hostpart = rest[:at], rest[at + 1 :]
        user, pcolon, pwd = userinfo.partition(":")
        if not user:
            raise bad("Bad URI User")
        password = pwd if pcolon else None
    else:
        hostpart = rest
    hostpart, qmark, headers = hostpart.partition("?")
    hostport, semi, ptext = hostpart.partition(";")
    host, port = parse_hostport(hostport, "URI")
    params = split_params(";" + ptext, "URI") if semi else {}
    return SipUri(scheme_l, user, password, host, port, params, headers if qmark else None)


@dataclass(slots=True)
class NameAddr:
    """A name-addr or addr-spec: display name, URI text and header-field parameters."""

    display: str | None
    uri: str
    params: dict[str, str | None]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.display is not None:
            quoted = self.display.replace("\\", "\\\\").replace('"', '\\"')
            head = f'"{quoted}" <{self.uri}>'
        else:
            head = f"<{self.uri}>"
        return head + "".join(
            f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items()
        )


def _unquote(text: str) -> tuple[str, int]:
    """Unescape a quoted string starting at text[0] == '"'; return (content, index after it)."""
    close = text.find('"', 1)
    if close > 0 and "\\" not in text[:close]:
        return text[1:close], close + 1
    out: list[str] = []
    i = 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise bad("Unbalanced Quotes In Display Name")


def parse_name_addr(text: str) -> NameAddr:
    """Parse name-addr ('"Name" <uri>;params') or addr-spec ('uri;params', params belong to the
    header field, RFC 3261 20.10). Memoised like :func:`parse_uri` (To, Contact, Record-Route
    repeat): the result is shared, so callers treat it as read-only."""
    found = _name_addr_memo.get(text)
    if found is not None:
        return found
    fields = _name_addr_c(text) if _name_addr_c is not None else None
    return _remember(_name_addr_memo, text,
                     NameAddr(*fields) if fields is not None else _parse_name_addr(text))


def _parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    if not text:
        raise bad("Empty Address")
    display: str | None = None
    if text[0] == '"':
        display, end = _unquote(text)
        if not text[end:].lstrip().startswith("<"):
            raise bad("Bad Address")
        lt = text.index("<", end)
    else:
        lt = text.find("<")
        semi = text.find(";")
        if lt >= 0 and (semi < 0 or lt < semi):
            display = text[:lt].strip() or None
        else:
            lt = -1
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise bad("Unterminated <> In Address")
        uri = text[lt + 1 : gt].strip()
        ptext = text[gt + 1 :]
    else:
        uri, semi, ptext = text.partition(";")
        uri = uri.strip()
        ptext = semi + ptext
    if not uri or " " in uri or "\t" in uri:
        raise bad("Bad Address URI")
    if uri != "*" and not match_scheme(uri.partition(":")[0]):
        raise bad("Bad Address URI")
    return NameAddr(display, uri, split_params(ptext, "Address"))
