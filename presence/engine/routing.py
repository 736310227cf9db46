"""Where a dialog's NOTIFYs go: the checked route set, destination address, transport and stream
connection of a new or refreshed dialog, and the Request-URI/Route lines of a NOTIFY."""

from __future__ import annotations

import functools
import ipaddress

from busylamp.presence.engine.config import SENDABLE_TRANSPORTS
from busylamp.presence.sip import (
    ParseError,
    Request,
    SipUri,
    is_token,
    parse_name_addr,
    parse_uri,
)

AWAITING_ADDRESS = "dns"  # Subscription.inflight while its destination's name is looked up


class Unresolved(tuple):
    """A destination (name, port) whose name is still to be resolved: its subscription's next
    NOTIFY waits for :meth:`PresenceEngine.resolved` instead of going out."""

    __slots__ = ()


def _hostport(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


@functools.lru_cache(maxsize=4096)
def _dialog_uri(text: str, what: str) -> SipUri:
    """``text`` parsed, when it can stand in a NOTIFY as Request-URI or Route: a ``sip:`` or
    ``sips:`` URI without headers. Cached (a phone's keys subscribe with one Contact): the
    result is shared, so callers only read it."""
    try:
        uri = parse_uri(text)
    except ParseError:
        raise ParseError(f"Bad {what} URI") from None
    if uri.scheme not in ("sip", "sips"):
        raise ParseError(f"{what} is not a SIP URI")
    if uri.headers is not None:
        raise ParseError(f"Headers in {what} URI")
    if uri.port == 0:
        raise ParseError(f"Bad {what} port")
    return uri


def _sendable(uri: SipUri, what: str) -> None:
    """Raise ParseError unless this node can send to ``uri`` (a first hop): no TLS, SCTP, WS."""
    if uri.scheme == "sips":
        raise ParseError(f"SIPS {what} needs TLS, which this node does not offer", 416)
    out = uri.params.get("transport")
    if out is not None and out.lower() not in SENDABLE_TRANSPORTS:
        raise ParseError(f"{what} transport {out} not offered by this node")


@functools.lru_cache(maxsize=4096)
def _unreachable(address: str, source_ip: str) -> str | None:
    """Why NOTIFYs may not go to ``address`` for a SUBSCRIBE from ``source_ip``, or None: never to
    an unspecified, multicast or broadcast address, and to a loopback address only for a sender
    on this host (a remote sender must not aim NOTIFYs at this host's local services). Cached:
    phones repeat their addresses."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_multicast or address == "255.255.255.255":
        return "an unspecified, multicast or broadcast address"
    if ip.is_loopback:
        try:
            local = ipaddress.ip_address(source_ip).is_loopback
        except ValueError:
            local = False
        if not local:
            return "a loopback address"
    return None


def _reachable(dest: tuple[str, int], source: tuple[str, int], what: str) -> None:
    """Raise ParseError when ``dest`` (an address, not a name) is one NOTIFYs may not go to."""
    if dest.__class__ is Unresolved:
        return
    reason = _unreachable(dest[0], source[0])
    if reason is not None:
        raise ParseError(f"{what} points at {reason}")


@functools.lru_cache(maxsize=4096)
def _ip_address(host: str) -> str | None:
    """A URI host that is an IP address, as a socket wants it: without brackets and in its one
    canonical text (so responses, whose source the kernel spells canonically, match it); None
    for a name. Cached: phones repeat their addresses."""
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _valid_uri(text: str) -> bool:
    """Whether ``text`` parses as a URI (a From or To that a NOTIFY will carry back). Cached:
    a phone's From and a presentity's To repeat across dialogs."""
    try:
        parse_uri(text)
    except ParseError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _routed(route: tuple[str, ...], target: str) -> tuple[str, str]:
    """(Request-URI, Route header lines) of a NOTIFY in a dialog with a route set.

    Strict routing (RFC 3261 12.2.1.1) when the first route has no ``lr``: it becomes the
    Request-URI and the remote target goes last. Cached: a phone's dialogs share both inputs.
    """
    first = parse_name_addr(route[0]).uri
    if "lr" in parse_uri(first).params:
        return target, "".join(f"Route: {r}\r\n" for r in route)
    return first, "".join(f"Route: {r}\r\n" for r in route[1:]) + f"Route: <{target}>\r\n"


class Routing:
    """Destination routing of the engine's dialogs (a mixin of PresenceEngine)."""

    def _dialog_target(
        self, req: Request, contact: str, source: tuple[str, int], transport: str,
        conn_id: int | None,
    ) -> tuple[tuple[str, ...] | None, tuple[str, int], str, int | None]:
        """The checked route set and destination of a new dialog's NOTIFYs.

        Raises ParseError (with the status and reason to answer) when anything a NOTIFY would
        be built from is unusable: a tag that is no token, a From or To URI that would not fit
        in ``<...>``, a Contact or route entry that is no SIP URI, or a first hop (the first
        route, else the Contact) this node cannot send to: ``sips:`` or ``transport=tls`` need
        TLS, which it has not. Behind a proxy the Contact may be anything the proxy can reach.
        """
        if not is_token(req.from_.tag or ""):
            raise ParseError("Bad From tag")
        if not _valid_uri(req.from_.uri):
            raise ParseError("Bad From URI")
        if not _valid_uri(req.to.uri):
            raise ParseError("Bad To URI")
        target = _dialog_uri(contact, "Contact")
        route: list[str] = []
        first: SipUri | None = None
        for value in req.record_routes:
            try:
                entry = parse_name_addr(value)
            except ParseError:
                raise ParseError("Bad Record-Route") from None
            uri = _dialog_uri(entry.uri, "Record-Route")
            if first is None:
                first = uri
            route.append(str(entry))
        what = "Record-Route" if first else "Contact"
        _sendable(first or target, what)
        dest, out, out_conn = self._destination(target, first, source, transport, conn_id)
        _reachable(dest, source, what)
        return (tuple(route) or None), dest, out, out_conn

    def _destination(
        self, contact: SipUri, route: SipUri | None, source: tuple[str, int],
        transport: str, conn_id: int | None,
    ) -> tuple[tuple[str, int], str, int | None]:
        """Where this dialog's NOTIFYs go: (address, transport, stream connection to reuse).

        The first route when there is a route set (loose or strict), else the Contact; a watcher
        that subscribed over a stream gets its NOTIFYs over that same connection while it is open
        (the transport falls back to connecting to the address). ``--nat-send-to-source`` sends to
        the address the SUBSCRIBE came from.
        """
        if self.config.nat_send_to_source:
            return source, transport, conn_id
        uri = route or contact
        out = (uri.params.get("transport") or "").lower()
        if not out:
            out = transport if route is None else "udp"
        if out not in self.config.contacts:
            out = transport
        address = _ip_address(uri.host)
        if address is None:  # a name: resolved when the first NOTIFY is due, off the loop
            reuse = out != "udp" and out == transport and route is None
            return Unresolved((uri.host, uri.port or 5060)), out, conn_id if reuse else None
        dest = (address, uri.port or 5060)
        reuse = out != "udp" and out == transport and (route is None or dest == source)
        return dest, out, conn_id if reuse else None
