"""`busylamp run` options: one dataclass, its value parsers and its cross-field checks.

Every `RunConfig` field carries `metadata={"help", "env", "flag", ...}`: the CLI builds its click
options from it (flag, `BUSYLAMP_*` variable) and the README flag table is generated from it.
Which source a value comes from (flag > environment variable > `--config` TOML file > default) is
click's own resolution, done by the CLI; this module is pure (no sockets, no files, no
environment): `load_config(raw, labels=...)` turns the raw values that were given (strings from
flags and variables, native TOML values) into a checked `RunConfig`, or raises `ConfigError`
naming the flag/variable/key (`labels`) and the accepted form.
"""

from __future__ import annotations

import ipaddress
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "BUSYLAMP_"
_NSQ_NAME = re.compile(r"^[.a-zA-Z0-9_-]{1,64}$")


class ConfigError(ValueError):
    """A bad option value: `str(err)` is one line naming the option and the accepted form."""

    def __init__(self, key: str, accepted: str, value: object = None, *,
                 message: str | None = None) -> None:
        self.key = key
        self.accepted = accepted
        self.value = value
        if message is None:
            shown = "" if value is None else f' "{value}"'
            message = f"invalid {key}{shown}: expected {accepted}"
        super().__init__(message)


class _Bad(ValueError):
    """Raised by a field parser; carries the accepted form only (the caller names the source)."""


@dataclass(frozen=True, slots=True)
class Address:
    """HOST:PORT (IPv6 hosts without brackets; `str()` adds them back)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Listen:
    """One SIP listener: transport udp|tcp, host, port."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{Address(self.host, self.port)}"


# --- value parsers: str (or a native TOML value) -> value; raise _Bad(accepted form) -------------

def parse_host_port(text: str, accepted: str = "HOST:PORT") -> Address:
    """'host:port', '[v6]:port' -> Address (port 0..65535)."""
    text = str(text).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise _Bad(accepted + " (IPv6 hosts in brackets: [::1]:PORT)")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise _Bad(accepted)
    return Address(host, int(port))


def _listen(text: str) -> Listen:
    accepted = "udp:HOST:PORT or tcp:HOST:PORT"
    transport, sep, rest = str(text).strip().partition(":")
    if not sep or transport.lower() not in ("udp", "tcp"):
        raise _Bad(accepted)
    addr = parse_host_port(rest, accepted)
    return Listen(transport.lower(), addr.host, addr.port)


def _http(text: str) -> Address | None:
    if str(text).strip().lower() in ("", "off"):
        return None
    return parse_host_port(text, 'HOST:PORT, or "off" to disable the HTTP API')


def _optional_address(text: str) -> Address | None:
    return None if str(text).strip() == "" else parse_host_port(text)


def _esl(text: str) -> str:
    accepted = "PASSWORD@HOST:PORT (or HOST:PORT for the ClueCon password)"
    password, sep, hostport = str(text).strip().rpartition("@")
    if sep and not password:
        raise _Bad(accepted)
    addr = parse_host_port(hostport, accepted)
    return f"{password if sep else 'ClueCon'}@{addr}"


def _lookupd(text: str) -> str:
    text = str(text).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    if scheme not in ("http", "https"):
        raise _Bad("HOST:PORT or http://HOST:PORT of an nsqlookupd")
    addr = parse_host_port(rest.rstrip("/"), "HOST:PORT or http://HOST:PORT of an nsqlookupd")
    return f"{scheme}://{addr}"


def _url(text: str) -> str:
    text = str(text).strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise _Bad("http://HOST:PORT of a peer busylamp node")
    parse_host_port(rest.split("/", 1)[0], "http://HOST:PORT of a peer busylamp node")
    return text.rstrip("/")


def _alias(text: str) -> tuple[str, str]:
    alias, sep, domain = str(text).strip().partition("=")
    if not sep or not alias.strip() or not domain.strip():
        raise _Bad("ALIAS=DOMAIN")
    return alias.strip().lower(), domain.strip().lower()


def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise _Bad("an IP network in CIDR form, e.g. 10.0.0.0/8 or 2001:db8::/32") from None


def _nsq_name(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        name = str(text).strip()
        base = name.removesuffix("#ephemeral")
        if not _NSQ_NAME.match(base) or len(name) > 64:
            raise _Bad(f"an NSQ {what} name: 1-64 of [.a-zA-Z0-9_-], optional #ephemeral")
        return name
    return parse


def _host_name(text: str) -> str:
    name = str(text).strip().lower()
    if not name or not re.fullmatch(r"[a-z0-9.\-\[\]:]+", name):
        raise _Bad("a host name such as busylamp.example.com")
    return name


def _text(text: str) -> str:
    return str(text)


def _optional_text(text: str) -> str | None:
    return str(text) or None


def _node_id(text: str) -> str | None:
    text = str(text).strip()
    if text and not _NSQ_NAME.match(text):
        raise _Bad("1-64 of [.a-zA-Z0-9_-]")
    return text or None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise _Bad(" or ".join(choices) if len(choices) < 3
                       else ", ".join(choices[:-1]) + " or " + choices[-1])
        return value
    return parse


def _integer(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise _Bad(f"an integer >= {minimum}")
        try:
            number = value if isinstance(value, int) else int(str(value).strip())
        except ValueError:
            raise _Bad(f"an integer >= {minimum}") from None
        if number < minimum:
            raise _Bad(f"an integer >= {minimum}")
        return number
    return parse


def _float(value: Any, form: str) -> float:
    """``value`` as a finite float (a TOML number or text), else _Bad naming ``form``."""
    if isinstance(value, bool):
        raise _Bad(form)
    try:
        number = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except ValueError:
        raise _Bad(form) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _Bad(form)
    return number


def _fraction(value: Any) -> float:
    """A number from 0 to 1 (a share of something)."""
    number = _float(value, "a number from 0 to 1")
    if not 0.0 <= number <= 1.0:
        raise _Bad("a number from 0 to 1")
    return number


def _seconds(minimum: float, *, inclusive: bool = False) -> Callable[[Any], float]:
    form = f"a number of seconds {'>=' if inclusive else '>'} {minimum:g}"

    def parse(value: Any) -> float:
        number = _float(value, form)
        if number < minimum or (number == minimum and not inclusive):
            raise _Bad(form)
        return number
    return parse


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (or a TOML boolean)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Bad("true or false (also yes/no, on/off, 1/0)")


def _meta(name: str, help_text: str, parse: Callable[[Any], Any], *, multiple: bool = False,
          boolean: bool = False, default_text: str | None = None) -> dict[str, Any]:
    return {
        "help": help_text,
        "env": ENV_PREFIX + name.upper(),
        "flag": "--" + name.replace("_", "-"),
        "parse": parse,
        "multiple": multiple,
        "boolean": boolean,
        "default_text": default_text,
    }


def _default_sip() -> list[Listen]:
    return [Listen("udp", "0.0.0.0", 5065), Listen("tcp", "0.0.0.0", 5065)]


@dataclass(slots=True)
class RunConfig:
    """Everything `busylamp run` can be told; see each field's metadata["help"]."""

    role: str = field(default="all", metadata=_meta(
        "role", "what this process runs: all (bridge + presence), bridge or presence",
        _choice("all", "bridge", "presence")))
    sip: list[Listen] = field(default_factory=_default_sip, metadata=_meta(
        "sip", "SIP listener transport:HOST:PORT (repeatable)", _listen, multiple=True,
        default_text="udp:0.0.0.0:5065, tcp:0.0.0.0:5065"))
    sip_tcp_max_connections: int = field(default=10000, metadata=_meta(
        "sip_tcp_max_connections", "SIP TCP connections at most (also kept below the open-file "
        "limit); one more takes the place of the oldest that carries no subscription, or is "
        "closed", _integer(1)))
    sip_tcp_max_per_source: int = field(default=256, metadata=_meta(
        "sip_tcp_max_per_source", "SIP TCP connections from one IP address at most (same rule)",
        _integer(1)))
    sip_tcp_unused_timeout: float = field(default=60.0, metadata=_meta(
        "sip_tcp_unused_timeout", "seconds a SIP TCP connection that carries no subscription may "
        "stay silent before it is closed", _seconds(0)))
    sip_tcp_idle_timeout: float = field(default=3600.0, metadata=_meta(
        "sip_tcp_idle_timeout", "seconds any SIP TCP connection may stay silent before it is "
        "closed", _seconds(0)))
    sip_tcp_message_timeout: float = field(default=10.0, metadata=_meta(
        "sip_tcp_message_timeout", "seconds a SIP message may take to arrive complete over TCP "
        "from its first byte; later the connection is closed", _seconds(0)))
    dns_server: Address | None = field(default=None, metadata=_meta(
        "dns_server", "DNS server HOST:PORT for the host names in Contacts and routes (unset: "
        "the system resolver, in a thread pool)", _optional_address, default_text="system"))
    dns_timeout: float = field(default=2.0, metadata=_meta(
        "dns_timeout", "seconds a host-name lookup may take; a name that does not resolve in "
        "time ends the subscriptions that need it", _seconds(0)))
    dns_max_lookups: int = field(default=16, metadata=_meta(
        "dns_max_lookups", "host-name lookups in flight at most (more wait in a queue)",
        _integer(1)))
    dns_cache_ttl: float = field(default=60.0, metadata=_meta(
        "dns_cache_ttl", "seconds a looked-up address (or a failed lookup) is reused",
        _seconds(0, inclusive=True)))
    advertise: Address | None = field(default=None, metadata=_meta(
        "advertise", "HOST:PORT put in Contact/Via when the listen address is not reachable "
        "(NAT, 0.0.0.0)", _optional_address, default_text="the listen address"))
    http: Address | None = field(default_factory=lambda: Address("127.0.0.1", 8080), metadata=_meta(
        "http", 'HTTP API HOST:PORT ("off" disables it)', _http, default_text="127.0.0.1:8080"))
    http_token: str | None = field(default=None, metadata=_meta(
        "http_token", "bearer token required by the HTTP API (required off loopback)",
        _optional_text, default_text="none"))
    http_allowed_host: list[str] = field(default_factory=list, metadata=_meta(
        "http_allowed_host", "host name the HTTP API answers without the token besides "
        "localhost, IP literals and the --http host (repeatable; other names get 403: DNS "
        "rebinding)", _host_name, multiple=True, default_text="none"))
    http_max_connections: int = field(default=256, metadata=_meta(
        "http_max_connections", "open HTTP API connections at most; one more gets 503 and is "
        "closed", _integer(1)))
    http_request_timeout: float = field(default=10.0, metadata=_meta(
        "http_request_timeout", "seconds an HTTP request may take to arrive complete (head and "
        "body) from its first byte, or a new connection's first request from the connect; "
        "later: 408 and closed", _seconds(0)))
    esl: list[str] = field(default_factory=lambda: ["ClueCon@127.0.0.1:8021"], metadata=_meta(
        "esl", "FreeSWITCH event socket PASSWORD@HOST:PORT (repeatable)", _esl, multiple=True))
    bus: str = field(default="memory", metadata=_meta(
        "bus", "how bridge and presence talk: memory (one process) or nsq",
        _choice("memory", "nsq")))
    nsqd: list[Address] = field(default_factory=list, metadata=_meta(
        "nsqd", "nsqd TCP HOST:PORT to publish/consume (repeatable)", parse_host_port,
        multiple=True, default_text="none"))
    lookupd: list[str] = field(default_factory=list, metadata=_meta(
        "lookupd", "nsqlookupd HTTP address to discover nsqd (repeatable)", _lookupd,
        multiple=True, default_text="none"))
    topic: str = field(default="presence", metadata=_meta(
        "topic", "NSQ topic of presence updates (control messages use TOPIC.control)",
        _nsq_name("topic")))
    channel: str | None = field(default=None, metadata=_meta(
        "channel", "NSQ channel this node consumes", _nsq_name("channel"),
        default_text="NODE_ID#ephemeral"))
    max_in_flight: int = field(default=200, metadata=_meta(
        "max_in_flight", "NSQ messages in flight per consumer", _integer(1)))
    nsq_reconnect_interval: float = field(default=2.0, metadata=_meta(
        "nsq_reconnect_interval", "seconds between nsqd reconnect attempts", _seconds(0)))
    nsq_output_buffer_timeout: float = field(default=0.05, metadata=_meta(
        "nsq_output_buffer_timeout", "longest time nsqd holds updates for this node before "
        "sending them (nsqd's default, 0.25, delays a lone update by up to that; nsqd's floor: "
        "its --min-output-buffer-timeout, 0.025)", _seconds(0.025, inclusive=True)))
    lookupd_poll_interval: float = field(default=10.0, metadata=_meta(
        "lookupd_poll_interval", "seconds between nsqlookupd queries", _seconds(0)))
    node_id: str | None = field(default=None, metadata=_meta(
        "node_id", "name of this node in logs, metrics and NSQ channel names", _node_id,
        default_text="HOSTNAME-SIPPORT"))
    peer: list[str] = field(default_factory=list, metadata=_meta(
        "peer", "URL of another busylamp node's HTTP API to sync state from (repeatable)", _url,
        multiple=True, default_text="none"))
    min_expires: int = field(default=60, metadata=_meta(
        "min_expires", "shortest SUBSCRIBE Expires accepted (shorter: 423 Interval Too Brief)",
        _integer(0)))
    max_expires: int = field(default=3600, metadata=_meta(
        "max_expires", "longest SUBSCRIBE Expires granted (longer ones are cut down)", _integer(1)))
    default_expires: int | None = field(default=None, metadata=_meta(
        "default_expires", "Expires granted to a SUBSCRIBE without one (unset: the event "
        "package's own default, 3600 for dialog, message-summary and presence, cut to "
        "--max-expires)", _integer(1), default_text="per package"))
    domain_alias: dict[str, str] = field(default_factory=dict, metadata=_meta(
        "domain_alias", "ALIAS=DOMAIN: treat presentities @ALIAS as @DOMAIN (repeatable)", _alias,
        multiple=True, default_text="none"))
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=_meta(
            "trusted", "CIDR whose SUBSCRIBEs are accepted; none = accept all (repeatable)", _cidr,
            multiple=True, default_text="none"))
    cross_domain: bool = field(default=False, metadata=_meta(
        "cross_domain", "allow watchers to subscribe to presentities of another domain",
        parse_bool, boolean=True))
    nat_send_to_source: bool = field(default=False, metadata=_meta(
        "nat_send_to_source", "send NOTIFYs to the SUBSCRIBE's source address instead of its "
        "Contact/route (phones behind NAT without an edge proxy)", parse_bool, boolean=True))
    edge: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, metadata=_meta(
            "edge", "CIDR of edge proxies (e.g. contrib/kamailio-edge): for a SUBSCRIBE from one, "
            "the per-source limits and --require-registration use the address the edge received "
            "it from (the Via below the edge's own), and NOTIFYs may go through it (repeatable)",
            _cidr, multiple=True, default_text="none"))
    max_subscriptions: int = field(default=1_000_000, metadata=_meta(
        "max_subscriptions", "subscriptions this node holds at most; a new one beyond gets 503 "
        "with Retry-After", _integer(1)))
    max_subscriptions_per_source: int = field(default=1000, metadata=_meta(
        "max_subscriptions_per_source", "subscriptions from one IP address (behind --edge: one "
        "phone's address) at most; more get 403", _integer(1)))
    max_subscriptions_per_watcher: int = field(default=200, metadata=_meta(
        "max_subscriptions_per_watcher", "subscriptions of one watcher AOR (From user@domain) at "
        "most; more get 403", _integer(1)))
    subscribe_rate: float = field(default=50.0, metadata=_meta(
        "subscribe_rate", "initial SUBSCRIBEs per second from one IP address (behind --edge: one "
        "phone's address), a token bucket; 0 = no limit", _seconds(0, inclusive=True)))
    subscribe_burst: int = field(default=500, metadata=_meta(
        "subscribe_burst", "initial SUBSCRIBEs one IP address may send at once (the bucket size "
        "of --subscribe-rate)", _integer(1)))
    subscribe_rate_action: str = field(default="reject", metadata=_meta(
        "subscribe_rate_action", "over --subscribe-rate: reject (503 with Retry-After) or drop "
        "(no answer); through an --edge always 480 with Retry-After (the edge must not fail "
        "over)", _choice("reject", "drop")))
    max_pending_notifies: int = field(default=100_000, metadata=_meta(
        "max_pending_notifies", "NOTIFY transactions awaiting an answer at most; beyond, fan-out "
        "waits and new SUBSCRIBEs get 503 with Retry-After", _integer(1)))
    shed_backlog: float = field(default=0.9, metadata=_meta(
        "shed_backlog", "once the UDP receive queue being read has stayed at least this full "
        "for 2 s (a fraction of its buffer; the kernel's count runs up to 0.25 high), new "
        "SUBSCRIBEs get 503 with Retry-After instead of queueing until the kernel drops "
        "datagrams, answers to NOTIFYs among them; the same once the kernel has been dropping "
        "datagrams for 2 s (0 = never)", _fraction))
    fanout_batch: int = field(default=500, metadata=_meta(
        "fanout_batch", "NOTIFYs built in one step of a fan-out before SIP input is read again",
        _integer(1)))
    notify_any_target: bool = field(default=False, metadata=_meta(
        "notify_any_target", "send NOTIFYs to any Contact/route (default: only to the SUBSCRIBE's "
        "source IP address or through an --edge)", parse_bool, boolean=True))
    require_registration: bool = field(default=False, metadata=_meta(
        "require_registration", "accept an initial SUBSCRIBE only from a watcher with a live "
        "registration at a switch from the SUBSCRIBE's address (or the phone's address an "
        "--edge vouches for); set it on bridges (they pass the registrations on) and nodes",
        parse_bool, boolean=True))
    t1: float = field(default=0.5, metadata=_meta(
        "t1", "SIP timer T1 (RTT estimate) in seconds", _seconds(0)))
    t2: float = field(default=4.0, metadata=_meta(
        "t2", "SIP timer T2 (longest retransmit interval) in seconds", _seconds(0)))
    timer_f: float = field(default=32.0, metadata=_meta(
        "timer_f", "seconds before an unanswered NOTIFY times out (Timer F)", _seconds(0)))
    force_dummy_dialog: bool = field(default=False, metadata=_meta(
        "force_dummy_dialog", "send one terminated dummy dialog instead of an empty dialog-info",
        parse_bool, boolean=True))
    force_single_dialog: bool = field(default=False, metadata=_meta(
        "force_single_dialog", "put only the most interesting dialog in a dialog-info NOTIFY",
        parse_bool, boolean=True))
    pickup_prefix: str = field(default="**", metadata=_meta(
        "pickup_prefix", "dial prefix for call pickup put in ringing dialogs' remote target",
        _text))
    initiator_ringing_state: str = field(default="confirmed", metadata=_meta(
        "initiator_ringing_state", "dialog state shown on the caller's own lamp while it rings",
        _choice("confirmed", "early")))
    esl_backoff_max: float = field(default=30.0, metadata=_meta(
        "esl_backoff_max", "longest wait in seconds between ESL reconnect attempts", _seconds(0)))
    esl_dead_after: float = field(default=60.0, metadata=_meta(
        "esl_dead_after", "seconds without any ESL traffic before the connection is dropped",
        _seconds(0)))
    esl_warmup: float = field(default=5.0, metadata=_meta(
        "esl_warmup", "with a bridge in the process: longest time in seconds new SUBSCRIBEs get "
        "503 after start, until every switch gave its first snapshot or failed a first connect "
        "(0 = serve at once)", _seconds(0, inclusive=True)))
    log_level: str = field(default="info", metadata=_meta(
        "log_level", "debug, info, warning or error", _choice("debug", "info", "warning", "error")))
    log_format: str = field(default="text", metadata=_meta(
        "log_format", "text or json (one object per line)", _choice("text", "json")))
    status_interval: float = field(default=60.0, metadata=_meta(
        "status_interval", "seconds between status log lines (0 = off)",
        _seconds(0, inclusive=True)))
    shutdown: str = field(default="terminate", metadata=_meta(
        "shutdown", "on stop: terminate (NOTIFY terminated;reason=deactivated) or drop",
        _choice("terminate", "drop")))
    shutdown_notify_rate: int = field(default=500, metadata=_meta(
        "shutdown_notify_rate", "NOTIFYs per second sent when terminating at shutdown",
        _integer(1)))
    shutdown_timeout: float = field(default=10.0, metadata=_meta(
        "shutdown_timeout", "longest time in seconds spent terminating subscriptions at shutdown; "
        "the rest are dropped (their phones move at their next refresh)",
        _seconds(0, inclusive=True)))
    history: int = field(default=32, metadata=_meta(
        "history", "changes kept per presentity for `busylamp why` (0 = off)", _integer(0)))
    history_memory: int = field(default=128, metadata=_meta(
        "history_memory", "MiB the per-presentity histories may use in all; beyond it the "
        "histories of the presentities changed longest ago are dropped first", _integer(1)))

    def __post_init__(self) -> None:
        if self.node_id is None:
            port = self.sip[0].port if self.sip else 0
            self.node_id = default_node_id(platform.node(), port)
        if self.channel is None:
            self.channel = f"{self.node_id}#ephemeral"


def default_node_id(hostname: str, sip_port: int) -> str:
    """HOSTNAME-SIPPORT made safe for NSQ channel names (<= 54 chars, room for #ephemeral)."""
    suffix = f"-{sip_port}"
    safe = re.sub(r"[^.a-zA-Z0-9_-]", "-", hostname.split(".")[0]) or "busylamp"
    return safe[: 54 - len(suffix)] + suffix


FIELDS = {f.name: f for f in fields(RunConfig)}


def split_list(text: str) -> list[str]:
    """A list given as one string (environment variable, TOML string): comma-separated, blanks
    skipped."""
    return [part for part in str(text).split(",") if part.strip()]


def _parse_field(name: str, raw: Any, label: str) -> Any:
    """One field's value from its raw form (a string, a TOML value, or a list of them for a
    repeatable field); ConfigError naming `label` (the flag, variable or file key) when bad."""
    meta = FIELDS[name].metadata
    parse = meta["parse"]
    try:
        if meta["multiple"]:
            items = raw if isinstance(raw, list | tuple) else split_list(raw)
            values = []
            for item in items:
                try:
                    values.append(parse(item))
                except _Bad as err:
                    raise ConfigError(label, str(err), item) from None
            return dict(values) if name == "domain_alias" else values
        if isinstance(raw, list | dict):
            raise _Bad("a single value")
        return parse(raw)
    except _Bad as err:
        raise ConfigError(label, str(err), raw) from None


def load_config(raw: Mapping[str, Any], *, labels: Mapping[str, str] | None = None,
                hostname: str | None = None) -> RunConfig:
    """A checked RunConfig from the raw values that were given (absent fields keep defaults).

    `raw` maps field names to raw values (lists for repeatable fields, or one comma-separated
    string); `labels` names where each came from for error messages (default: its flag, e.g.
    "--sip"; the CLI passes "BUSYLAMP_SIP" or "sip in FILE"). `hostname` names the node when
    --node-id is not given.
    """
    labels = labels or {}
    chosen = {name: _parse_field(name, value, labels.get(name, FIELDS[name].metadata["flag"]))
              for name, value in raw.items()}
    config = RunConfig(**chosen)
    if hostname is not None and "node_id" not in chosen:
        port = config.sip[0].port if config.sip else 0
        config.node_id = default_node_id(hostname, port)
        if "channel" not in chosen:
            config.channel = f"{config.node_id}#ephemeral"
    check(config)
    return config


def check(config: RunConfig) -> None:
    """Cross-field rules; raises ConfigError naming the flag to change."""
    if config.role != "bridge" and not config.sip:
        raise ConfigError("--sip", "at least one udp:HOST:PORT or tcp:HOST:PORT listener")
    if config.role != "presence" and not config.esl:
        raise ConfigError("--esl", "at least one PASSWORD@HOST:PORT for role " + config.role)
    if config.bus == "nsq" and not (config.nsqd or config.lookupd):
        raise ConfigError("--nsqd", "an nsqd HOST:PORT or a --lookupd address with --bus nsq")
    if config.bus == "memory" and config.role == "bridge":
        raise ConfigError("--bus", "nsq for --role bridge (an in-process bus has no engine to "
                          "feed)", config.bus)
    if config.default_expires is not None and not (
            config.min_expires <= config.default_expires <= config.max_expires):
        raise ConfigError(
            "--default-expires", f"a value between --min-expires {config.min_expires} and "
            f"--max-expires {config.max_expires}", config.default_expires)
    if config.t2 < config.t1:
        raise ConfigError("--t2", f"seconds >= --t1 ({config.t1:g})", config.t2)
    if config.http_token is not None and not config.http_token.strip():
        raise ConfigError("--http-token", "a non-empty token")


def normalize_file_keys(data: Mapping[str, Any], file_label: str) -> dict[str, Any]:
    """TOML keys as field names ('max-in-flight' and 'max_in_flight' both accepted); unknown
    keys refused. A repeatable field's value becomes a list (a string is comma-separated)."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(
                f'key "{key}" in {file_label}', "a `busylamp run` option name such as "
                "max_in_flight or sip (see busylamp run --help)")
        if FIELDS[name].metadata["multiple"] and not isinstance(value, list | tuple):
            value = split_list(value) if isinstance(value, str) else [value]
        values[name] = value
    return values

