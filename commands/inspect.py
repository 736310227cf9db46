"""`busylamp inspect subscriptions|presentity|stats`: a node's state over its HTTP API, as
tables or --json."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import click

from busylamp.commands.base import Group, json_option
from busylamp.commands.httpclient import NodeClient, http_options
from busylamp.commands.promtext import parse_metrics
from busylamp.presence.config import Address


@click.group(cls=Group)
def inspect() -> None:
    """Read a node's state over its HTTP API (tables, or --json)."""


@inspect.command("subscriptions")
@click.option("--presentity", help="Only subscriptions to this USER@DOMAIN.")
@click.option("--watcher", help="Only subscriptions of this watcher (USER@DOMAIN).")
@click.option("--event", help="Only this event package (dialog, message-summary, presence).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Rows per page.")
@click.option("--cursor", help="Continue from a previous page's next_cursor.")
@click.option("--all", "everything", is_flag=True, help="Every row (streamed NDJSON).")
@json_option
@http_options
def inspect_subscriptions(presentity: str | None, watcher: str | None, event: str | None,
                          limit: int, cursor: str | None, everything: bool, as_json: bool,
                          http_address: Address, http_token: str | None) -> None:
    """List SIP subscriptions held by the node."""
    query = {k: v for k, v in (("presentity", presentity), ("watcher", watcher),
                               ("event", event)) if v}
    client = NodeClient(http_address, http_token)
    if everything:
        rows = list(client.stream("/subscriptions?" + urlencode({**query, "format": "ndjson"}),
                                  timeout=60.0))
        next_cursor = None
    else:
        query.update({"limit": str(limit), **({"cursor": cursor} if cursor else {})})
        _, page = client.get_json("/subscriptions?" + urlencode(query))
        rows, next_cursor = page.get("subscriptions", []), page.get("next_cursor")
    if as_json:
        click.echo(json.dumps({"subscriptions": rows, "next_cursor": next_cursor}, indent=2))
        return
    click.echo(format_table(rows) if rows else "no subscriptions")
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}")


@inspect.command("presentity")
@click.argument("aor", metavar="USER@DOMAIN")
@json_option
@http_options
def inspect_presentity(aor: str, as_json: bool, http_address: Address,
                       http_token: str | None) -> None:
    """Show one presentity: its records per package and its watchers."""
    client = NodeClient(http_address, http_token)
    status, body = client.request("GET", "/presentities/" + quote(aor, safe="@:"))
    if status == 404:
        raise click.ClickException(f"unknown presentity {aor} at http://{http_address}")
    if status != 200:
        raise client.api_error(status, body)
    data = json.loads(body)
    click.echo(json.dumps(data, indent=2) if as_json else format_mapping(data))


@inspect.command("stats")
@json_option
@http_options
def inspect_stats(as_json: bool, http_address: Address, http_token: str | None) -> None:
    """Health and metrics of the node."""
    client = NodeClient(http_address, http_token)
    _, health = client.get_json("/health", ok=(200, 503))
    status, body = client.request("GET", "/metrics")
    if status != 200:
        raise client.api_error(status, body)
    metrics = parse_metrics(body.decode("utf-8", "replace"))
    if as_json:
        click.echo(json.dumps({"health": health, "metrics": metrics}, indent=2))
        return
    click.echo(format_mapping(health))
    if metrics:
        click.echo()
        click.echo(format_table([{"metric": k, "value": f"{v:g}"} for k, v in metrics.items()]))


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
