"""`busylamp tail`: follow presence updates live (node HTTP API, FreeSWITCH ESL or NSQ) and print
them; the sources themselves are wired in ``busylamp.app.tail``."""

from __future__ import annotations

import json
import sys
import time

import click
from click.core import ParameterSource

from busylamp.app.tail import TailTargetError, follow_esl, follow_http, follow_nsq
from busylamp.commands.base import ADDRESS, Command, OneLineUsageError, json_option
from busylamp.commands.httpclient import DEFAULT_HTTP, NodeClient, token_option
from busylamp.presence.config import Address, parse_host_port

STATE_COLOURS = {"early": "yellow", "confirmed": "red", "terminated": "green", "yes": "red",
                 "no": "green", "open": "green", "closed": "bright_black"}


def format_update(update: dict) -> str:
    """One human line: time, presentity, package, state, direction, call-id (ANSI colour; click
    strips it when stdout is not a terminal)."""
    from busylamp.presence.api import update_fields  # gevent and the HTTP server: lazily

    presentity, package, state, direction, call_id = update_fields(update)
    stamp = time.strftime("%H:%M:%S")
    state_text = click.style(f"{state or '-':<10}", fg=STATE_COLOURS.get(state.lower()))
    who = click.style(f"{presentity or '-':<28}", bold=True)
    return f"{stamp} {who} {package or '-':<15} {state_text} {direction or '-':<9} {call_id or '-'}"


class UpdatePrinter:
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


def _to_stderr(line: str) -> None:
    click.echo(line, err=True)


@click.command(cls=Command)
@click.option("--http", "http_address", type=ADDRESS, envvar="BUSYLAMP_HTTP",
              help=f"Stream applied updates from a node's HTTP API [default {DEFAULT_HTTP}; "
              "env BUSYLAMP_HTTP].")
@token_option
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
@json_option
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
    printer = UpdatePrinter(as_json, count, presentity, package, call_id)
    if esl:
        try:
            follow_esl(esl, printer.show, raw=raw, announce=_to_stderr,
                       skipped=lambda name, why: _to_stderr(f"{name}: skipped ({why})"))
        except TailTargetError as err:
            raise OneLineUsageError(str(err), ctx) from None
    elif nsqd or lookupd:
        follow_nsq([str(a) for a in nsqd], lookupd, topic, printer.show, announce=_to_stderr)
    else:
        client = NodeClient(http_address or parse_host_port(DEFAULT_HTTP), http_token)
        if not follow_http(lambda path: client.stream(path, timeout=60.0), printer.show,
                           presentity=presentity, package=package, call_id=call_id):
            raise click.ClickException(f"http://{client.address} closed the stream "
                                       "(node stopped?)")
