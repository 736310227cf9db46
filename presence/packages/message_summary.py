"""RFC 3842 message-summary package: Messages-Waiting / Message-Account / Voice-Message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from busylamp.presence.packages.base import PackageOptions, RenderedBody
from busylamp.wire.aor import aor_uri

if TYPE_CHECKING:
    from busylamp.presence.state import Record

__all__ = ["MessageSummaryPackage"]


class MessageSummaryPackage:
    """`message-summary`: application/simple-message-summary, not versioned.

    One record per mailbox; records never expire unless the update carries Expires
    (`default_record_expires` None). Without a record the body says ``Messages-Waiting: no``.
    """

    name = "message-summary"
    content_type = "application/simple-message-summary"
    accept = ("application/simple-message-summary",)
    default_expires = 3600
    default_record_expires: int | None = None

    def render(
        self, presentity: str, records: Sequence[Record], options: PackageOptions
    ) -> RenderedBody:
        live = [record for record in records if not record.terminated]
        if not live:
            text = f"Messages-Waiting: no\r\nMessage-Account: {aor_uri(presentity)}\r\n"
            return RenderedBody(text.encode())
        data = live[-1].data
        account = data.get("Message-Account") or aor_uri(presentity)
        text = f"Messages-Waiting: {data.get('Messages-Waiting', 'no')}\r\nMessage-Account: {account}\r\n"
        voice = data.get("MWI-Voice-Message")
        if voice:
            text += f"Voice-Message: {voice}\r\n"
        return RenderedBody(text.encode())
