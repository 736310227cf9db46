"""`busylamp publish`: send one presence update to a node's HTTP API or to nsqd."""

from __future__ import annotations

import json
from typing import Any

import click

from busylamp.commands.base import ADDRESS, Command, OneLineUsageError
from busylamp.commands.httpclient import NodeClient, http_options
from busylamp.commands.nsqpub import nsq_publish_once
from busylamp.presence.config import Address
from busylamp.wire.names import DIALOG_STATES, DIRECTIONS, MESSAGE_SUMMARY, PACKAGES, UPDATE


@click.command(cls=Command)
@click.option("--package", type=click.Choice(list(PACKAGES)),
              default="dialog", show_default=True, help="Event package of the update.")
@click.option("--presentity", metavar="USER@DOMAIN", help="Whose lamp/mailbox/status changes.")
@click.option("--state", help="dialog: early|confirmed|terminated|trying|proceeding; "
              "presence: open|closed|busy|away|dnd|on-the-phone|...")
@click.option("--direction", type=click.Choice(list(DIRECTIONS)),
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
@http_options
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
    client = NodeClient(http_address, http_token)
    status, answer = client.request("POST", "/publish", body)
    if status >= 300:
        raise client.api_error(status, answer)
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
        "Event-Name": UPDATE, "Event-Package": package, "From": f"sip:{presentity}",
        "From-User": user, "From-Realm": realm,
    }
    if package == MESSAGE_SUMMARY:
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
    if call_id and package == MESSAGE_SUMMARY:
        update["Call-ID"] = call_id
    if expires is not None:
        update["Expires"] = expires
    return update
