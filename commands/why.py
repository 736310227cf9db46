"""`busylamp why USER@DOMAIN`: why a lamp is lit (or dark), from the node's per-presentity
history (rendered by ``presence.why``)."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import click

from busylamp.commands.base import Command, json_option
from busylamp.commands.httpclient import NodeClient, http_options
from busylamp.presence.config import Address
from busylamp.presence.why import render_item, render_text


@click.command(cls=Command)
@click.argument("aor", metavar="USER@DOMAIN")
@json_option
@click.option("--follow", is_flag=True, help="Keep printing the timeline as it happens.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="With --follow: seconds between polls of the node.")
@click.option("--count", type=click.IntRange(min=1), hidden=True,
              help="With --follow: stop after this many polls (tests).")
@http_options
def why(aor: str, as_json: bool, follow: bool, interval: float, count: int | None,
        http_address: Address, http_token: str | None) -> None:
    """Why is this lamp lit (or dark)? The lamp per package, what each watcher was last told,
    and the timeline: FreeSWITCH event -> update -> NOTIFY -> answer; likely causes when the
    presentity is unknown, unwatched or maybe stale."""
    if "@" not in aor:
        raise click.BadParameter("expected USER@DOMAIN", param_hint="AOR")
    path = "/presentities/" + quote(aor.removeprefix("sip:"), safe="@:") + "/history"
    client = NodeClient(http_address, http_token)
    _, report = client.get_json(path)
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
        _, report = client.get_json(path)
        for item in report["timeline"]:
            key = item["id"] + str(item.get("at"))
            if key in seen:
                continue
            seen.add(key)
            click.echo(json.dumps(item) if as_json else render_item(item))
