"""RFC 4235 dialog event package: one full-state dialog-info document per presentity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from busylamp.presence.packages.base import (
    PackageOptions,
    RenderedBody,
    as_uri,
    needs_escape,
    xml_escape,
)
from busylamp.wire.aor import aor_uri

if TYPE_CHECKING:
    from busylamp.presence.state import Record

__all__ = ["DialogPackage", "SINGLE_DIALOG_PRIORITY", "DUMMY_DIALOG_ID"]

# force_single_dialog keeps the most interesting dialog: ringing first (so it can be picked up).
SINGLE_DIALOG_PRIORITY = {"early": 0, "confirmed": 1, "proceeding": 2, "trying": 3, "terminated": 4}
DUMMY_DIALOG_ID = "busylamp-idle"

_HEAD = b'<?xml version="1.0"?>\n<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="'


def record_state(record: Record) -> str:
    """The dialog state to render: terminated once the record is terminated."""
    return "terminated" if record.terminated else record.data.get("State", "terminated")


class DialogPackage:
    """`dialog`: application/dialog-info+xml, versioned per subscription.

    Records without Expires live `default_record_expires` seconds (12 h): a safety net so a lost
    terminated update cannot light a lamp forever; snapshots and resyncs correct sooner.
    """

    name = "dialog"
    content_type = "application/dialog-info+xml"
    accept = ("application/dialog-info+xml",)
    default_expires = 3600
    default_record_expires: int | None = 43200

    def render(
        self, presentity: str, records: Sequence[Record], options: PackageOptions
    ) -> RenderedBody:
        entity = xml_escape(aor_uri(presentity))
        chosen = list(records)
        if options.force_single_dialog and len(chosen) > 1:
            best = min(
                range(len(chosen)),
                key=lambda i: (SINGLE_DIALOG_PRIORITY.get(record_state(chosen[i]), 5), -i),
            )
            chosen = [chosen[best]]
        parts = [f'" state="full" entity="{entity}"']
        if chosen:
            parts.append(">\n")
            parts.extend(_dialog_xml(record) for record in chosen)
            parts.append("</dialog-info>\n")
        elif options.force_dummy_dialog:
            parts.append(
                f'>\n<dialog id="{DUMMY_DIALOG_ID}" direction="recipient">'
                "<state>terminated</state></dialog>\n</dialog-info>\n"
            )
        else:
            parts.append("/>\n")
        return RenderedBody(_HEAD, "".join(parts).encode(), True)


def _dialog_xml(record: Record) -> str:
    data = record.data
    get = data.get
    values = (get("Call-ID", record.record_id), get("From-Tag"), get("To-Tag"), get("Direction"),
              get("From"), get("From-User"), get("From-URI"), get("To"), get("To-User"),
              get("To-URI"))
    if needs_escape("".join([v for v in values if v])):
        values = tuple(xml_escape(v) if v else v for v in values)  # (the rare case)
    call_id, local_tag, remote_tag, direction, from_, from_user, from_uri, to, to_user, to_uri = \
        values
    attrs = f'id="{call_id}" call-id="{call_id}"'
    if local_tag:
        attrs += f' local-tag="{local_tag}"'
    if remote_tag:
        attrs += f' remote-tag="{remote_tag}"'
    if direction:
        attrs += f' direction="{direction}"'
    local = _participant("local", from_, from_user, from_uri)
    remote = _participant("remote", to, to_user, to_uri)
    return f"<dialog {attrs}><state>{record_state(record)}</state>{local}{remote}</dialog>\n"


def _participant(tag: str, identity: str | None, display: str | None, target: str | None) -> str:
    """A participant from values already escaped for XML."""
    inner = ""
    if identity:
        shown = f' display="{display}"' if display else ""
        inner = f"<identity{shown}>{as_uri(identity)}</identity>"
    if target:
        inner += f'<target uri="{as_uri(target)}"/>'
    return f"<{tag}>{inner}</{tag}>" if inner else ""
