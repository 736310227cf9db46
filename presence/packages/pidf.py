"""RFC 3863 PIDF with RFC 4480 RPID activities: one tuple per presentity.

State map (update `State` -> basic status, RPID activity, note); when several records exist
the busiest one (highest rank) wins, ties going to the most recently updated record:

| State                                      | basic  | activity          | note          | rank |
|--------------------------------------------|--------|-------------------|---------------|------|
| open, online, available, terminated        | open   | -                 | Available     | 0    |
| closed, offline                            | closed | -                 | Offline       | 1    |
| away                                       | open   | rpid:away         | Away          | 2    |
| early                                      | open   | rpid:busy         | Ringing       | 3    |
| busy                                       | open   | rpid:busy         | Busy          | 4    |
| confirmed, on-the-phone                    | open   | rpid:on-the-phone | On the Phone  | 5    |
| dnd                                        | open   | rpid:busy         | Do Not Disturb| 6    |

No record (idle): basic open, note Available, no activity. Kamailio sends no body for an
unknown presentity, but BLF phones want a document, and a user with no calls is available.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from busylamp.presence.packages.base import PackageOptions, RenderedBody, xml_escape
from busylamp.wire.aor import aor_uri

if TYPE_CHECKING:
    from busylamp.presence.state import Record

__all__ = ["PidfPackage", "PRESENCE_MAP"]

# State -> (basic, rpid activity or "", note, rank)
PRESENCE_MAP: dict[str, tuple[str, str, str, int]] = {
    "open": ("open", "", "Available", 0),
    "online": ("open", "", "Available", 0),
    "available": ("open", "", "Available", 0),
    "terminated": ("open", "", "Available", 0),
    "closed": ("closed", "", "Offline", 1),
    "offline": ("closed", "", "Offline", 1),
    "away": ("open", "away", "Away", 2),
    "early": ("open", "busy", "Ringing", 3),
    "busy": ("open", "busy", "Busy", 4),
    "confirmed": ("open", "on-the-phone", "On the Phone", 5),
    "on-the-phone": ("open", "on-the-phone", "On the Phone", 5),
    "dnd": ("open", "busy", "Do Not Disturb", 6),
}
_IDLE = PRESENCE_MAP["available"]


class PidfPackage:
    """`presence`: application/pidf+xml, not versioned.

    Records without Expires live `default_record_expires` seconds (12 h), like dialog records.
    """

    name = "presence"
    content_type = "application/pidf+xml"
    accept = ("application/pidf+xml",)
    default_expires = 3600
    default_record_expires: int | None = 43200

    def render(
        self, presentity: str, records: Sequence[Record], options: PackageOptions
    ) -> RenderedBody:
        chosen = _IDLE
        for record in records:
            if record.terminated:
                continue
            mapped = PRESENCE_MAP.get(record.data.get("State", ""), _IDLE)
            if mapped[3] >= chosen[3]:
                chosen = mapped
        basic, activity, note, _rank = chosen
        person = ""
        if activity:
            person = (
                f'<dm:person id="p1"><rpid:activities><rpid:{activity}/></rpid:activities>'
                f"<dm:note>{note}</dm:note></dm:person>\n"
            )
        text = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<presence xmlns="urn:ietf:params:xml:ns:pidf"'
            ' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
            ' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"'
            f' entity="{xml_escape(aor_uri(presentity))}">\n'
            f'<tuple id="t1"><status><basic>{basic}</basic></status><note>{note}</note></tuple>\n'
            f"{person}</presence>\n"
        )
        return RenderedBody(text.encode())
