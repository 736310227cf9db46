"""busylamp command line: run, publish, inspect, tail, dialplan.

Only long-running command bodies (`run`, and `tail` when it talks ESL or NSQ) monkey-patch with
gevent; importing this module patches nothing, so tests drive it with click's CliRunner.

Dialplan snippets for `busylamp dialplan` are looked up, in order, in: `--source DIR`, the
BUSYLAMP_DIALPLAN_DIR variable, `contrib/freeswitch-dialplan` next to this file (a source checkout
or an editable install), and `<sys.prefix>/share/busylamp/freeswitch-dialplan` (an installed
package shipping them as data files).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
from busylamp.presence.config import (
    FIELDS,
    Address,
    ConfigError,
    RunConfig,
    load_config,
    normalize_file_keys,
    parse_host_port,
)
from click.core import ParameterSource

log = logging.getLogger("busylamp")

DEFAULT_HTTP = "127.0.0.1:8080"
TAIL_EVENTS = ("CHANNEL_CALLSTATE", "CHANNEL_PROGRESS", "PRESENCE_IN", "MESSAGE_WAITING")
DIALPLAN_SUBDIR = Path("contrib") / "freeswitch-dialplan"


# --- one-line usage errors (exit 2) ------------------------------------------------------------

class OneLineUsageError(click.UsageError):
    """A usage error printed as one line: `Error: busylamp run: <message>`; exit code 2."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx else "busylamp"
        click.echo(f"Error: {where}: {self.format_message()} (see {where} --help)",
                   file=file, err=True)


class _OneLineErrors:
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except OneLineUsageError:
            raise
        except click.UsageError as err:
            raise OneLineUsageError(err.format_message(), ctx) from None


class Command(_OneLineErrors, click.Command):
    """click.Command whose parse errors are one line."""


class Group(_OneLineErrors, click.Group):
    """click.Group whose parse and unknown-command errors are one line."""

    command_class = Command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except OneLineUsageError:
            raise
        except click.UsageError as err:
            raise OneLineUsageError(err.format_message(), ctx) from None


Group.group_class = Group


class AddressType(click.ParamType):
    """HOST:PORT (also http://HOST:PORT) → presence.config.Address."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> Address:
        if isinstance(value, Address):
            return value
        text = str(value).strip().removeprefix("http://").rstrip("/")
        try:
            return parse_host_port(text)
        except ValueError:
            self.fail(f'"{value}": expected HOST:PORT', param, ctx)


ADDRESS = AddressType()
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=Group, context_settings=CONTEXT)
def main() -> None:
    """busylamp: FreeSWITCH event-socket bridge with a built-in SIP presence engine."""


def _patch_gevent() -> None:
    """Monkey-patch the process for gevent (long-running commands only, first thing they do)."""
    from gevent import monkey

    monkey.patch_all()


# --- busylamp run ------------------------------------------------------------------------------

def _run_options(command: Callable) -> Callable:
    for name in reversed(list(FIELDS)):
        meta = FIELDS[name].metadata
        default = meta["default_text"] or _default_text(name)
        text = f"{meta['help']} [default: {default}; env {meta['env']}]"
        flag = meta["flag"]
        if meta["boolean"]:
            decls = [f"{flag}/--no-{flag[2:]}", name]
            option = click.option(*decls, default=None, help=text)
        else:
            option = click.option(flag, name, multiple=meta["multiple"], help=text,
                                  metavar="VALUE")
        command = option(command)
    return command


def _default_text(name: str) -> str:
    value = getattr(RunConfig(node_id="x"), name)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


@main.command(context_settings={"max_content_width": 120})
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              envvar="BUSYLAMP_CONFIG", help="TOML file of options (keys = option names).")
@_run_options
def run(config_file: Path | None, **options: Any) -> None:
    """Run the bridge and/or the presence node (flag > BUSYLAMP_* env > --config file > default)."""
    ctx = click.get_current_context()
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    config = _resolve_config(config_file, given, os.environ)
    _patch_gevent()
    setup_logging(config.log_level, config.log_format)
    from busylamp.app.roles import run_roles

    try:
        run_roles(config)
    except ConfigError as err:
        raise OneLineUsageError(str(err), ctx) from None
    except KeyboardInterrupt:
        log.info("interrupted, stopped")


def _resolve_config(config_file: Path | None, given: dict[str, Any],
                    env: dict[str, str] | os._Environ) -> RunConfig:
    ctx = click.get_current_context()
    file_values: dict[str, Any] = {}
    label = "config file"
    try:
        if config_file is not None:
            label = str(config_file)
            file_values = normalize_file_keys(read_toml(config_file), label)
        return load_config(given, env, file_values, file_label=label,
                           hostname=socket.gethostname())
    except ConfigError as err:
        raise OneLineUsageError(str(err), ctx) from None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML config file; ConfigError (one line) when unreadable or malformed."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError("--config", "a readable TOML file", path,
                          message=f"cannot read --config {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("--config", "TOML", path,
                          message=f"invalid TOML in --config {path}: {err}") from None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    """Root logging to stderr: text or json lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def startup_summary(config: RunConfig) -> list[str]:
    """Human lines describing what `run` starts (ESL passwords hidden); `run` logs them once
    the listeners are bound, with the real addresses (app.roles)."""
    from busylamp.app.roles import startup_summary as summary

    return summary(config, None)


# --- HTTP client helpers -----------------------------------------------------------------------

class NodeUnreachable(click.ClickException):
    """The node's HTTP API could not be reached (exit 1)."""


def _request(address: Address, method: str, path: str, token: str | None,
             body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError as err:
        raise _unreachable(address, err) from None
    finally:
        conn.close()


def _unreachable(address: Address, err: BaseException) -> NodeUnreachable:
    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return NodeUnreachable(f"cannot reach the busylamp HTTP API at http://{address}: {reason} "
                           "(is `busylamp run` up? check --http)")


def _api_error(status: int, body: bytes, address: Address) -> click.ClickException:
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()
    if status == 401:
        message += " (pass --http-token or set BUSYLAMP_HTTP_TOKEN)"
    return click.ClickException(f"http://{address} answered {status}: {message}")


def _get_json(address: Address, path: str, token: str | None,
              ok: Iterable[int] = (200,)) -> tuple[int, Any]:
    status, body = _request(address, "GET", path, token)
    if status not in ok:
        raise _api_error(status, body, address)
    return status, json.loads(body)


def _http_options(command: Callable) -> Callable:
    command = click.option("--http-token", envvar="BUSYLAMP_HTTP_TOKEN", metavar="TOKEN",
                           help="Bearer token of the node's HTTP API [env BUSYLAMP_HTTP_TOKEN].")(
        command)
    return click.option("--http", "http_address", type=ADDRESS, default=DEFAULT_HTTP,
                        envvar="BUSYLAMP_HTTP", show_default=True,
                        help="HTTP API of the node [env BUSYLAMP_HTTP].")(command)


# --- busylamp publish --------------------------------------------------------------------------

DIALOG_STATES = ("early", "confirmed", "terminated", "trying", "proceeding")


@main.command()
@click.option("--package", type=click.Choice(["dialog", "message-summary", "presence"]),
              default="dialog", show_default=True, help="Event package of the update.")
@click.option("--presentity", metavar="USER@DOMAIN", help="Whose lamp/mailbox/status changes.")
@click.option("--state", help="dialog: early|confirmed|terminated|trying|proceeding; "
              "presence: open|closed|busy|away|dnd|on-the-phone|...")
@click.option("--direction", type=click.Choice(["initiator", "recipient"]),
              help="dialog direction.")
@click.option("--call-id", help="Call-ID (one record per Call-ID) [default: busylamp-cli-AOR].")
@click.option("--expires", type=click.IntRange(min=0), help="Seconds the record lives.")
@click.option("--to", "to", metavar="URI", help="Remote party [default: the presentity].")
@click.option("--from-uri", metavar="URI", help="Local target URI [default: sip:PRESENTITY].")
@click.option("--to-uri", metavar="URI", help="Remote target URI [default: --to].")
@click.option("--waiting", type=click.Choice(["yes", "no"]),
              help="message-summary: Messages-Waiting [default: yes when --new > 0].")
@click.option("--new", "new", type=click.IntRange(min=0), help="message-summary: new messages.")
@click.option("--saved", type=click.IntRange(min=0), default=0, help="message-summary: saved.")
@click.option("--urgent", type=click.IntRange(min=0), default=0, help="message-summary: urgent.")
@click.option("--urgent-saved", type=click.IntRange(min=0), default=0,
              help="message-summary: urgent saved.")
@click.option("--account", metavar="URI", help="message-summary: Message-Account "
              "[default: sip:PRESENTITY].")
@click.option("--from-file", type=click.File("rb"), metavar="FILE",
              help="Send this JSON (object or array, '-' = stdin) as is instead.")
@click.option("--nsqd", type=ADDRESS, help="Publish to this nsqd (TCP) instead of the HTTP API.")
@click.option("--topic", default="presence", show_default=True, help="NSQ topic (with --nsqd).")
@_http_options
def publish(package: str, presentity: str | None, state: str | None, direction: str | None,
            call_id: str | None, expires: int | None, to: str | None, from_uri: str | None,
            to_uri: str | None, waiting: str | None, new: int | None, saved: int, urgent: int,
            urgent_saved: int, account: str | None, from_file: Any, nsqd: Address | None,
            topic: str, http_address: Address, http_token: str | None) -> None:
    """Send one presence update to a node (HTTP API) or to NSQ; print the answer."""
    ctx = click.get_current_context()
    if from_file is not None:
        body = from_file.read()
    else:
        update = build_update(ctx, package, presentity, state, direction, call_id, expires, to,
                              from_uri, to_uri, waiting, new, saved, urgent, urgent_saved,
                              account)
        body = json.dumps(update).encode()
    if nsqd is not None:
        answer = nsq_publish_once(nsqd, topic, body)
        click.echo(f"nsqd {nsqd}: {answer}")
        return
    status, answer = _request(http_address, "POST", "/publish", http_token, body)
    if status >= 300:
        raise _api_error(status, answer, http_address)
    click.echo(answer.decode("utf-8", "replace"))


def build_update(ctx: click.Context, package: str, presentity: str | None, state: str | None,
                 direction: str | None, call_id: str | None, expires: int | None,
                 to: str | None, from_uri: str | None, to_uri: str | None, waiting: str | None,
                 new: int | None, saved: int, urgent: int, urgent_saved: int,
                 account: str | None) -> dict[str, Any]:
    """The pua_json-style update dict for `busylamp publish` options."""
    if not presentity or presentity.count("@") != 1 or presentity.startswith("@") \
            or presentity.endswith("@"):
        raise OneLineUsageError(f'invalid --presentity "{presentity or ""}": expected '
                                "USER@DOMAIN", ctx)
    presentity = presentity.removeprefix("sip:")
    user, realm = presentity.split("@")
    update: dict[str, Any] = {
        "Event-Name": "update", "Event-Package": package, "From": f"sip:{presentity}",
        "From-User": user, "From-Realm": realm,
    }
    if package == "message-summary":
        if waiting is None and new is None:
            raise OneLineUsageError("message-summary needs --waiting yes|no or --new N", ctx)
        update["Messages-Waiting"] = waiting or ("yes" if new else "no")
        update["Message-Account"] = account or f"sip:{presentity}"
        if new is not None:
            update.update({"Messages-New": new, "Messages-Saved": saved,
                           "Messages-Urgent": urgent, "Messages-Urgent-Saved": urgent_saved})
    else:
        if not state:
            accepted = " or ".join(DIALOG_STATES) if package == "dialog" else "a presence state"
            raise OneLineUsageError(f"--package {package} needs --state ({accepted})", ctx)
        if package == "dialog" and state.lower() not in DIALOG_STATES:
            raise OneLineUsageError(f'invalid --state "{state}": expected '
                                    + ", ".join(DIALOG_STATES), ctx)
        remote = to or f"sip:{presentity}"
        remote_user = remote.removeprefix("sip:").split("@")[0]
        update.update({"To": remote, "To-User": remote_user, "State": state.lower(),
                       "Call-ID": call_id or f"busylamp-cli-{presentity}"})
        if package == "dialog":
            update["From-URI"] = from_uri or f"sip:{presentity}"
            update["To-URI"] = to_uri or remote
            if direction:
                update["Direction"] = direction
    if call_id and package == "message-summary":
        update["Call-ID"] = call_id
    if expires is not None:
        update["Expires"] = expires
    return update


def nsq_publish_once(address: Address, topic: str, body: bytes, timeout: float = 5.0) -> str:
    """PUB one message to nsqd over its TCP protocol (V2) and return nsqd's answer ("OK")."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            sock.sendall(b"  V2" + b"PUB %s\n" % topic.encode() + struct.pack(">l", len(body))
                         + body)
            reader = sock.makefile("rb")
            while True:
                header = reader.read(8)
                if len(header) < 8:
                    raise ConnectionError("nsqd closed the connection")
                size, frame_type = struct.unpack(">lL", header)
                data = reader.read(size - 4)
                if frame_type == 0 and data == b"_heartbeat_":
                    sock.sendall(b"NOP\n")
                    continue
                if frame_type == 1:
                    raise click.ClickException(f"nsqd {address} refused the message: "
                                               f"{data.decode('utf-8', 'replace')}")
                return data.decode("utf-8", "replace")
    except OSError as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise click.ClickException(f"cannot reach nsqd at {address}: {reason} "
                                   "(check --nsqd HOST:PORT, the TCP port)") from None


# --- busylamp inspect --------------------------------------------------------------------------

@main.group()
def inspect() -> None:
    """Read a node's state over its HTTP API (tables, or --json)."""


def _json_option(command: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")(command)


@inspect.command("subscriptions")
@click.option("--presentity", help="Only subscriptions to this USER@DOMAIN.")
@click.option("--watcher", help="Only subscriptions of this watcher (USER@DOMAIN).")
@click.option("--event", help="Only this event package (dialog, message-summary, presence).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Rows per page.")
@click.option("--cursor", help="Continue from a previous page's next_cursor.")
@click.option("--all", "everything", is_flag=True, help="Every row (streamed NDJSON).")
@_json_option
@_http_options
def inspect_subscriptions(presentity: str | None, watcher: str | None, event: str | None,
                          limit: int, cursor: str | None, everything: bool, as_json: bool,
                          http_address: Address, http_token: str | None) -> None:
    """List SIP subscriptions held by the node."""
    query = {k: v for k, v in (("presentity", presentity), ("watcher", watcher),
                               ("event", event)) if v}
    if everything:
        rows = list(_stream_lines(http_address, "/subscriptions?" + urlencode(
            {**query, "format": "ndjson"}), http_token, timeout=60.0))
        next_cursor = None
    else:
        query.update({"limit": str(limit), **({"cursor": cursor} if cursor else {})})
        _, page = _get_json(http_address, "/subscriptions?" + urlencode(query), http_token)
        rows, next_cursor = page.get("subscriptions", []), page.get("next_cursor")
    if as_json:
        click.echo(json.dumps({"subscriptions": rows, "next_cursor": next_cursor}, indent=2))
        return
    click.echo(format_table(rows) if rows else "no subscriptions")
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}")


@inspect.command("presentity")
@click.argument("aor", metavar="USER@DOMAIN")
@_json_option
@_http_options
def inspect_presentity(aor: str, as_json: bool, http_address: Address,
                       http_token: str | None) -> None:
    """Show one presentity: its records per package and its watchers."""
    status, body = _request(http_address, "GET", "/presentities/" + quote(aor, safe="@:"),
                            http_token)
    if status == 404:
        raise click.ClickException(f"unknown presentity {aor} at http://{http_address}")
    if status != 200:
        raise _api_error(status, body, http_address)
    data = json.loads(body)
    click.echo(json.dumps(data, indent=2) if as_json else format_mapping(data))


@inspect.command("stats")
@_json_option
@_http_options
def inspect_stats(as_json: bool, http_address: Address, http_token: str | None) -> None:
    """Health and metrics of the node."""
    _, health = _get_json(http_address, "/health", http_token, ok=(200, 503))
    status, body = _request(http_address, "GET", "/metrics", http_token)
    if status != 200:
        raise _api_error(status, body, http_address)
    metrics = parse_metrics(body.decode("utf-8", "replace"))
    if as_json:
        click.echo(json.dumps({"health": health, "metrics": metrics}, indent=2))
        return
    click.echo(format_mapping(health))
    if metrics:
        click.echo()
        click.echo(format_table([{"metric": k, "value": f"{v:g}"} for k, v in metrics.items()]))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {sample name with labels: value} (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.rpartition("}") if "}" in line else line.partition(" ")
        if "}" in line:
            name += "}"
        try:
            samples[name.strip()] = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
    return samples


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as an aligned text table (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(columns)]
    out = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in cells]
    return "\n".join(out)


def format_mapping(data: dict, indent: str = "") -> str:
    """A dict for humans: scalars as `key: value`, lists of dicts as tables."""
    out = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(f"{indent}{key}:")
            out.extend(indent + "  " + line for line in format_table(value).splitlines())
        elif isinstance(value, dict) and value:
            out.append(f"{indent}{key}:")
            out.append(format_mapping(value, indent + "  "))
        else:
            out.append(f"{indent}{key}: {_cell(value)}")
    return "\n".join(out)


# --- busylamp tail -----------------------------------------------------------------------------

def _stream_lines(address: Address, path: str, token: str | None,
                  timeout: float) -> Iterator[dict]:
    """GET an NDJSON stream and yield its objects (blank heartbeat lines skipped)."""
    conn = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
        except OSError as err:
            raise _unreachable(address, err) from None
        if response.status != 200:
            raise _api_error(response.status, response.read(), address)
        while True:
            try:
                line = response.readline()
            except TimeoutError:
                raise click.ClickException(f"no data from http://{address} for {timeout:g} s "
                                           "(not even a heartbeat); giving up") from None
            except OSError as err:
                raise _unreachable(address, err) from None
            if not line:
                return
            if line.strip():
                yield json.loads(line)
    finally:
        conn.close()


STATE_COLOURS = {"early": "yellow", "confirmed": "red", "terminated": "green", "yes": "red",
                 "no": "green", "open": "green", "closed": "bright_black"}


def format_update(update: dict, *, when: float | None = None) -> str:
    """One human line: time, presentity, package, state, direction, call-id (ANSI colour; click
    strips it when stdout is not a terminal)."""
    from busylamp.presence.api import update_fields

    presentity, package, state, direction, call_id = update_fields(update)
    stamp = time.strftime("%H:%M:%S", time.localtime(when or time.time()))
    state_text = click.style(f"{state or '-':<10}", fg=STATE_COLOURS.get(state.lower()))
    who = click.style(f"{presentity or '-':<28}", bold=True)
    return f"{stamp} {who} {package or '-':<15} {state_text} {direction or '-':<9} {call_id or '-'}"


@main.command()
@click.option("--http", "http_address", type=ADDRESS, envvar="BUSYLAMP_HTTP",
              help=f"Stream applied updates from a node's HTTP API [default {DEFAULT_HTTP}; "
              "env BUSYLAMP_HTTP].")
@click.option("--http-token", envvar="BUSYLAMP_HTTP_TOKEN", metavar="TOKEN",
              help="Bearer token of the node's HTTP API [env BUSYLAMP_HTTP_TOKEN].")
@click.option("--esl", metavar="PW@HOST:PORT", help="Connect to FreeSWITCH and show the updates "
              "its events normalize to (IPv4 or a host name: greenswitch has no IPv6).")
@click.option("--raw", is_flag=True, help="With --esl: print each event's headers too.")
@click.option("--nsqd", type=ADDRESS, multiple=True, help="Consume the NSQ topic from this nsqd.")
@click.option("--lookupd", multiple=True, metavar="HTTP", help="Find nsqd via this nsqlookupd.")
@click.option("--topic", default="presence", show_default=True, help="NSQ topic.")
@click.option("--presentity", help="Only this USER@DOMAIN.")
@click.option("--package", help="Only this event package.")
@click.option("--call-id", help="Only this Call-ID.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many updates.")
@_json_option
def tail(http_address: Address | None, http_token: str | None, esl: str | None, raw: bool,
         nsqd: tuple[Address, ...], lookupd: tuple[str, ...], topic: str,
         presentity: str | None, package: str | None, call_id: str | None, count: int | None,
         as_json: bool) -> None:
    """Follow presence updates live (node HTTP API, FreeSWITCH ESL or NSQ)."""
    ctx = click.get_current_context()
    http_given = ctx.get_parameter_source("http_address") == ParameterSource.COMMANDLINE
    sources = [name for name, on in (("--http", http_given), ("--esl", esl),
                                     ("--nsqd/--lookupd", nsqd or lookupd)) if on]
    if len(sources) > 1:
        raise OneLineUsageError(f"choose one source, not {' and '.join(sources)}", ctx)
    if raw and not esl:
        raise OneLineUsageError("--raw needs --esl (event headers exist only there)", ctx)
    printer = _UpdatePrinter(as_json, count, presentity, package, call_id)
    if esl:
        _tail_esl(ctx, esl, raw, printer)
    elif nsqd or lookupd:
        _tail_nsq(nsqd, lookupd, topic, printer)
    else:
        address = http_address or parse_host_port(DEFAULT_HTTP)
        query = urlencode({k: v for k, v in (("presentity", presentity), ("package", package),
                                             ("call_id", call_id)) if v})
        for update in _stream_lines(address, "/tail" + (f"?{query}" if query else ""),
                                    http_token, timeout=60.0):
            if printer.show(update):
                return
        raise click.ClickException(f"http://{address} closed the stream (node stopped?)")


class _UpdatePrinter:
    """Filters and prints updates; `show` returns True once --count updates were printed."""

    def __init__(self, as_json: bool, count: int | None, presentity: str | None,
                 package: str | None, call_id: str | None) -> None:
        self.as_json, self.remaining = as_json, count
        self.filters = (presentity, package, call_id)

    def show(self, update: dict, raw_headers: dict | None = None) -> bool:
        from busylamp.presence.api import update_matches

        if not update_matches(update, *self.filters):
            return False
        if self.as_json:
            line = dict(update)
            if raw_headers is not None:
                line = {"update": update, "event": raw_headers}
            click.echo(json.dumps(line, ensure_ascii=False))
        else:
            click.echo(format_update(update))
            for name, value in (raw_headers or {}).items():
                click.echo(f"    {name}: {value}")
        sys.stdout.flush()
        if self.remaining is not None:
            self.remaining -= 1
            return self.remaining <= 0
        return False


def _tail_esl(ctx: click.Context, spec: str, raw: bool, printer: _UpdatePrinter) -> None:
    """Follow one FreeSWITCH through greenswitch (esl/greenswitch_tail.py), normalized here."""
    _patch_gevent()
    from busylamp.bridge.normalize import NormalizeConfig, normalize
    from busylamp.esl.greenswitch_tail import GreenswitchTail, parse_target

    try:
        target = parse_target(spec)
    except ValueError as err:
        raise OneLineUsageError(f'invalid --esl "{spec}": {err}', ctx) from None
    config = NormalizeConfig(domain_default=None)

    def on_event(name: str, headers: dict[str, str]) -> None:
        result = normalize(name, headers, config)
        if not result.updates and raw and name != "HEARTBEAT":
            click.echo(f"{name}: skipped ({result.skipped})", err=True)
        for update in result.updates:
            if printer.show(update, headers if raw else None):
                tail.stop()
                return

    tail = GreenswitchTail(target, TAIL_EVENTS, on_event)
    click.echo(f"following {target} (Ctrl-C to stop)", err=True)
    with _bare_warnings(), contextlib.suppress(KeyboardInterrupt):
        tail.run()


@contextlib.contextmanager
def _bare_warnings() -> Iterator[None]:
    """WARNING and up to stderr as bare lines, as Python prints them with no logging set up.

    A root handler of our own also stops greenswitch's root-logger calls (``logging.debug``)
    from running ``basicConfig()`` and changing how our lines look.  Kept as is when logging is
    already set up (tests).
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _tail_nsq(nsqd: tuple[Address, ...], lookupd: tuple[str, ...], topic: str,
              printer: _UpdatePrinter) -> None:
    _patch_gevent()
    import gevent.event
    from busylamp.bridge.nsq import NsqConsumer, NsqLoop

    done = gevent.event.Event()

    def on_message(message: dict) -> None:
        for update in message.get("Updates", [message]) if isinstance(message, dict) else []:
            if printer.show(update):
                done.set()
                return

    loop = NsqLoop()
    lookupd_http = [u if "://" in u else f"http://{u}" for u in lookupd]
    channel = f"busylamp-tail-{os.getpid()}#ephemeral"
    consumer = NsqConsumer(loop, topic, channel, on_message, nsqd_tcp=[str(a) for a in nsqd],
                           lookupd_http=lookupd_http)
    consumer.start()
    click.echo(f"following NSQ topic {topic} on channel {channel} (Ctrl-C to stop)", err=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    finally:
        consumer.close()
        loop.stop()


# --- busylamp dialplan -------------------------------------------------------------------------

@main.group()
def dialplan() -> None:
    """FreeSWITCH dialplan snippets that set presence_id for busylamp."""


def dialplan_source(explicit: Path | None = None) -> Path:
    """The snippet folder: --source, BUSYLAMP_DIALPLAN_DIR, the checkout, then share/busylamp."""
    candidates = [explicit] if explicit else []
    if os.environ.get("BUSYLAMP_DIALPLAN_DIR"):
        candidates.append(Path(os.environ["BUSYLAMP_DIALPLAN_DIR"]))
    candidates += [Path(__file__).resolve().parent / DIALPLAN_SUBDIR,
                   Path(sys.prefix) / "share" / "busylamp" / "freeswitch-dialplan"]
    for folder in candidates:
        if folder.is_dir() and snippet_files(folder):
            return folder
    raise click.ClickException("no dialplan snippets found (looked in "
                               + ", ".join(str(c) for c in candidates) + "); pass --source DIR")


def snippet_files(folder: Path) -> list[Path]:
    """Snippet paths relative to `folder` (README.md and hidden files skipped), sorted."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and p.name != "README.md"
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


_SOURCE = click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path),
                       help="Snippet folder [default: the one shipped with busylamp].")


@dialplan.command("show")
@_SOURCE
def dialplan_show(source: Path | None) -> None:
    """Print the snippets with their paths relative to the FreeSWITCH conf dir."""
    folder = dialplan_source(source)
    for relative in snippet_files(folder):
        click.echo(f"==> {relative} <==")
        click.echo((folder / relative).read_text(encoding="utf-8").rstrip("\n"))
        click.echo()


@dialplan.command("install")
@click.option("--freeswitch-conf", "conf_dir", required=True,
              type=click.Path(file_okay=False, exists=True, writable=True, path_type=Path),
              help="FreeSWITCH conf dir (e.g. /etc/freeswitch).")
@click.option("--dry-run", is_flag=True, help="Show a unified diff; change nothing.")
@click.option("--force", is_flag=True, help="Replace files that differ (a backup is kept).")
@_SOURCE
def dialplan_install(conf_dir: Path, dry_run: bool, force: bool, source: Path | None) -> None:
    """Copy the snippets into the conf dir, idempotently; backups of anything replaced."""
    folder = dialplan_source(source)
    stamp = time.strftime("%Y%m%d%H%M%S")
    plan = []
    for relative in snippet_files(folder):
        new = (folder / relative).read_text(encoding="utf-8")
        dest = conf_dir / relative
        old = dest.read_text(encoding="utf-8", errors="replace") if dest.exists() else None
        plan.append((relative, dest, old, new))
    conflicts = [rel for rel, _, old, new in plan if old is not None and old != new]
    default_xml = conf_dir / DEFAULT_XML
    edits: list[str] = []
    if default_xml.is_file():
        old = default_xml.read_text(encoding="utf-8", errors="replace")
        try:
            new, edits = edit_default_xml(old)
        except DialplanEditError as exc:
            raise click.ClickException(str(exc)) from None
        plan.append((DEFAULT_XML, default_xml, old, new))
    else:
        click.echo(f"note: no {DEFAULT_XML} in {conf_dir}: include default/00_busylamp_presence.xml "
                   "at the top of your context and disable the extensions that take 1000-1019 and "
                   "**<ext> before the snippets do", err=True)
    if dry_run:
        for relative, _, old, new in plan:
            if old != new:
                click.echo("".join(difflib.unified_diff(
                    (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                    f"a/{relative}" if old is not None else "/dev/null", f"b/{relative}")),
                    nl=False)
        changes = sum(old != new for _, _, old, new in plan)
        click.echo(f"dry run: {changes} file(s) would change in {conf_dir}", err=True)
        return
    if conflicts and not force:
        raise click.ClickException(
            "these files differ from busylamp's and were left alone: "
            + ", ".join(map(str, conflicts)) + " (see --dry-run; --force replaces them and "
            "keeps a .busylamp-bak copy)")
    changed = 0
    for relative, dest, old, new in plan:
        if old == new:
            click.echo(f"unchanged  {relative}")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if old is not None:
            backup = _backup_path(dest, stamp)
            shutil.copy2(dest, backup)
            verb = "edited  " if relative == DEFAULT_XML else "replaced"
            click.echo(f"{verb}   {relative} (backup {backup.name})")
            if relative == DEFAULT_XML:
                for note in edits:
                    click.echo(f"             {note}")
        else:
            click.echo(f"installed  {relative}")
        dest.write_text(new, encoding="utf-8")
        changed += 1
    if changed:
        click.echo("now run: fs_cli -x reloadxml")
    else:
        click.echo("nothing to do: the snippets are already installed")


# The vanilla default.xml hunts its own extensions before the default/*.xml includes: these
# vanilla extensions would take the calls busylamp's snippets are written for.
VANILLA_REPLACED = {
    "Local_Extension": "dialplan/default/10_busylamp_local_extension.xml",
    "intercept-ext": "dialplan/default/20_busylamp_intercept.xml",
    "vmain": "dialplan/default/40_busylamp_voicemail.xml",
}
DEFAULT_XML = Path("dialplan") / "default.xml"
TOP_INCLUDE = '<X-PRE-PROCESS cmd="include" data="default/00_busylamp_presence.xml"/>'
VANILLA_GUARD = '<condition field="${busylamp_vanilla}" expression="^enabled$"/>'
_CONTEXT = re.compile(r'<context\s+name="default"\s*>')


class DialplanEditError(ValueError):
    """default.xml does not have the shape the install edits; the message says what to do."""


def edit_default_xml(text: str) -> tuple[str, list[str]]:
    """busylamp's edits of the vanilla ``dialplan/default.xml`` (pure, idempotent).

    Includes ``00_busylamp_presence.xml`` at the top of the ``default`` context (the caller's
    presence_id before any extension acts) and disables each vanilla extension of
    :data:`VANILLA_REPLACED` with a first condition that never holds (its text stays as it was).
    Returns the new text and one line per change.
    """
    notes: list[str] = []
    if TOP_INCLUDE not in text:
        context = _CONTEXT.search(text)
        if context is None:
            raise DialplanEditError(
                f'{DEFAULT_XML}: no <context name="default">; add {TOP_INCLUDE} as the first line '
                "of the context your phones' calls use")
        indent = "\n    "
        text = (text[:context.end()] + indent
                + "<!-- busylamp (dialplan install): the caller's presence_id first -->"
                + indent + TOP_INCLUDE + text[context.end():])
        notes.append("includes default/00_busylamp_presence.xml at the top of the context")
    for name, snippet in VANILLA_REPLACED.items():
        pattern = re.compile(rf'(<extension\s+name="{re.escape(name)}"[^>]*>)(\s*)')
        pieces: list[str] = []
        last = 0
        for match in pattern.finditer(text):
            pieces.append(text[last:match.end()])
            last = match.end()
            if text.startswith(VANILLA_GUARD, match.end()) or text.startswith("<!-- busylamp:",
                                                                                match.end()):
                continue
            indent = match.group(2) or "\n      "
            pieces.append(f"<!-- busylamp: disabled by busylamp dialplan install, {snippet} "
                          f"replaces it; delete this line and the next to enable it again -->"
                          f"{indent}{VANILLA_GUARD}{indent}")
            notes.append(f"disables vanilla extension {name} ({snippet} replaces it)")
        pieces.append(text[last:])
        text = "".join(pieces)
    return text, notes


def _backup_path(dest: Path, stamp: str) -> Path:
    backup = dest.with_name(f"{dest.name}.busylamp-bak-{stamp}")
    serial = 1
    while backup.exists():
        backup = dest.with_name(f"{dest.name}.busylamp-bak-{stamp}-{serial}")
        serial += 1
    return backup



# --- busylamp demo -----------------------------------------------------------------------------

@main.command()
@click.option("--duration", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Keep replaying the office for this long (default: play it once, ~20 s).")
@click.option("--speed", type=click.FloatRange(min=0.1, max=50), default=1.0, show_default=True,
              help="Play the scenario faster (2 = twice as fast).")
@click.option("--headless", is_flag=True,
              help="Print one line per lamp change instead of the live lamp board.")
def demo(duration: float | None, speed: float, headless: bool) -> None:
    """Watch busylamp light lamps: a simulated FreeSWITCH office, the real bridge and engine,
    and SIP watchers on loopback whose NOTIFYs drive the lamp board. No FreeSWITCH needed."""
    _patch_gevent()
    from busylamp.app.demo.run import DemoError, run_demo

    try:
        result = run_demo(duration=duration, headless=headless, speed=speed)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    changes = sum(max(0, len(states) - 1) for states in result.lamps.values())
    click.echo(f"demo finished: {changes} lamp changes seen in {sum(result.notifies.values())} "
               f"NOTIFYs over {result.elapsed:.1f} s")


# --- busylamp why ------------------------------------------------------------------------------

@main.command()
@click.argument("aor", metavar="USER@DOMAIN")
@_json_option
@click.option("--follow", is_flag=True, help="Keep printing the timeline as it happens.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="With --follow: seconds between polls of the node.")
@click.option("--count", type=click.IntRange(min=1), hidden=True,
              help="With --follow: stop after this many polls (tests).")
@_http_options
def why(aor: str, as_json: bool, follow: bool, interval: float, count: int | None,
        http_address: Address, http_token: str | None) -> None:
    """Why is this lamp lit (or dark)? The lamp per package, what each watcher was last told,
    and the timeline: FreeSWITCH event -> update -> NOTIFY -> answer; likely causes when the
    presentity is unknown, unwatched or maybe stale."""
    from busylamp.presence.why import render_item, render_text

    if "@" not in aor:
        raise click.BadParameter("expected USER@DOMAIN", param_hint="AOR")
    path = "/presentities/" + quote(aor.removeprefix("sip:"), safe="@:") + "/history"
    _, report = _get_json(http_address, path, http_token)
    if as_json and not follow:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(json.dumps(report) if as_json else render_text(report), nl=not as_json)
    if as_json:
        click.echo()
    seen = {item["id"] + str(item.get("at")) for item in report["timeline"]}
    polls = 0
    while follow and (count is None or polls < count):
        time.sleep(interval)
        polls += 1
        _, report = _get_json(http_address, path, http_token)
        for item in report["timeline"]:
            key = item["id"] + str(item.get("at"))
            if key in seen:
                continue
            seen.add(key)
            click.echo(json.dumps(item) if as_json else render_item(item))
