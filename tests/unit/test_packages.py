"""Body rendering of the dialog, message-summary and presence packages."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from busylamp.presence.packages import REGISTRY, PackageOptions, RenderedBody
from busylamp.presence.packages.base import as_uri, needs_escape, xml_escape
from busylamp.presence.packages.dialog import DUMMY_DIALOG_ID, _dialog_xml, record_state
from busylamp.presence.packages.pidf import PRESENCE_MAP
from busylamp.presence.state import Record
from busylamp.presence.updates import PRESENCE_STATES

DI = "{urn:ietf:params:xml:ns:dialog-info}"
PIDF = "{urn:ietf:params:xml:ns:pidf}"
DM = "{urn:ietf:params:xml:ns:pidf:data-model}"
RPID = "{urn:ietf:params:xml:ns:pidf:rpid}"
OPTIONS = PackageOptions()


def rec(
    call_id: str, state: str = "confirmed", *, terminated: bool = False, **extra: str
) -> Record:
    data = {
        "Call-ID": call_id,
        "From": "sip:1001@example.com",
        "From-URI": "sip:1001@example.com",
        "To": "sip:1002@example.com",
        "To-URI": "sip:1002@example.com",
        "State": state,
    }
    data.update({k.replace("_", "-"): v for k, v in extra.items()})
    return Record("dialog", "1001@example.com", call_id, data, None, terminated=terminated)


def render_dialog(records: list[Record], options: PackageOptions = OPTIONS) -> RenderedBody:
    return REGISTRY["dialog"].render("1001@example.com", records, options)


def dialogs(body: RenderedBody, version: int = 0) -> tuple[ET.Element, list[ET.Element]]:
    root = ET.fromstring(body.for_version(version))
    return root, root.findall(f"{DI}dialog")


# --- RenderedBody -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 9, 10, 12345])
def test_version_splicing(version: int) -> None:
    body = render_dialog([rec("c1")])
    data = body.for_version(version)
    assert body.versioned
    assert body.length(version) == len(data)
    assert f'version="{version}" state="full"'.encode() in data
    assert ET.fromstring(data).get("version") == str(version)
    assert data.startswith(body.prefix) and data.endswith(body.suffix)
    assert body.prefix.endswith(b'version="')


def test_unversioned_body() -> None:
    body = RenderedBody(b"abc")
    assert body.for_version(5) == b"abc" and body.length(123) == 3 and not body.versioned


def test_registry() -> None:
    assert set(REGISTRY) == {"dialog", "message-summary", "presence"}
    expected = {
        "dialog": "application/dialog-info+xml",
        "message-summary": "application/simple-message-summary",
        "presence": "application/pidf+xml",
    }
    for name, package in REGISTRY.items():
        assert package.name == name
        assert package.content_type == expected[name]
        assert package.content_type in package.accept
        assert package.default_expires == 3600
    assert REGISTRY["message-summary"].default_record_expires is None


# --- dialog -------------------------------------------------------------------------------


def test_dialog_exact_bytes() -> None:
    body = render_dialog(
        [
            rec(
                "c1",
                "early",
                From_Tag="ft",
                To_Tag="tt",
                Direction="recipient",
                From_User="1001",
                To_User="Bob",
                To_URI="sip:**1001@example.com",
            )
        ]  # fmt: skip
    )
    assert body.for_version(3) == (
        b'<?xml version="1.0"?>\n'
        b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full"'
        b' entity="sip:1001@example.com">\n'
        b'<dialog id="c1" call-id="c1" local-tag="ft" remote-tag="tt" direction="recipient">'
        b"<state>early</state>"
        b'<local><identity display="1001">sip:1001@example.com</identity>'
        b'<target uri="sip:1001@example.com"/></local>'
        b'<remote><identity display="Bob">sip:1002@example.com</identity>'
        b'<target uri="sip:**1001@example.com"/></remote></dialog>\n'
        b"</dialog-info>\n"
    )


def test_dialog_unknown_attributes_omitted() -> None:
    record = Record("dialog", "1001@example.com", "c9", {"Call-ID": "c9", "State": "trying"}, None)
    _root, [dlg] = dialogs(render_dialog([record]))
    assert dict(dlg.attrib) == {"id": "c9", "call-id": "c9"}
    assert dlg.find(f"{DI}local") is None and dlg.find(f"{DI}remote") is None
    _root, [dlg] = dialogs(render_dialog([rec("c1", From="1001@example.com")]))
    identity = dlg.find(f"{DI}local/{DI}identity")
    assert identity is not None and identity.text == "sip:1001@example.com"
    assert identity.get("display") is None


def test_dialog_several_calls_and_terminated() -> None:
    root, found = dialogs(
        render_dialog([rec("c1"), rec("c2", "early"), rec("c3", terminated=True)])
    )
    assert root.get("state") == "full" and root.get("entity") == "sip:1001@example.com"
    assert [(d.get("id"), d.findtext(f"{DI}state")) for d in found] == [
        ("c1", "confirmed"),
        ("c2", "early"),
        ("c3", "terminated"),
    ]


def test_dialog_escaping() -> None:
    nasty = "a&b<c>\"d'é☎"
    record = rec(nasty, From_User=nasty, To=f"sip:{nasty}@example.com",
                 To_URI=f"sip:x@example.com;p={nasty}", From_Tag=nasty)  # fmt: skip
    body = REGISTRY["dialog"].render('we"ird&<@example.com', [record], OPTIONS)
    data = body.for_version(1)
    root = ET.fromstring(data)
    assert root.get("entity") == "sip:we%22ird&%3C@example.com"  # a URI: user re-escaped
    dlg = root.find(f"{DI}dialog")
    assert dlg is not None
    assert dlg.get("id") == nasty and dlg.get("call-id") == nasty and dlg.get("local-tag") == nasty
    assert dlg.find(f"{DI}local/{DI}identity").get("display") == nasty  # type: ignore[union-attr]
    assert dlg.findtext(f"{DI}remote/{DI}identity") == f"sip:{nasty}@example.com"
    assert dlg.find(f"{DI}remote/{DI}target").get("uri") == f"sip:x@example.com;p={nasty}"  # type: ignore[union-attr]
    assert "é☎".encode() in data
    assert b"&amp;" in data and b"&lt;" in data and b"&quot;" in data


def _reference_dialog_xml(record: Record) -> str:
    """The dialog element with every value escaped on its own: what _dialog_xml must equal."""
    data = record.data
    call_id = xml_escape(data.get("Call-ID", record.record_id))
    attrs = [f'id="{call_id}"', f'call-id="{call_id}"']
    for attr, key in (("local-tag", "From-Tag"), ("remote-tag", "To-Tag"),
                      ("direction", "Direction")):
        if data.get(key):
            attrs.append(f'{attr}="{xml_escape(data[key])}"')

    def party(tag: str, identity: str | None, display: str | None, target: str | None) -> str:
        inner = ""
        if identity:
            shown = f' display="{xml_escape(display)}"' if display else ""
            inner += f"<identity{shown}>{xml_escape(as_uri(identity))}</identity>"
        if target:
            inner += f'<target uri="{xml_escape(as_uri(target))}"/>'
        return f"<{tag}>{inner}</{tag}>" if inner else ""

    local = party("local", data.get("From"), data.get("From-User"), data.get("From-URI"))
    remote = party("remote", data.get("To"), data.get("To-User"), data.get("To-URI"))
    return (f"<dialog {' '.join(attrs)}><state>{record_state(record)}</state>"
            f"{local}{remote}</dialog>\n")


def test_dialog_element_escapes_each_value_as_the_reference_does() -> None:
    rnd = random.Random(7)
    alphabet = ["a", "1", "&", "<", ">", '"', "'", "é", "☎", ":", "sip:", "SIPS:", "tel:", ""]
    keys = ("Call-ID", "From-Tag", "To-Tag", "Direction", "From", "From-User", "From-URI", "To",
            "To-User", "To-URI")
    for _ in range(3_000):
        data = {key: "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 4)))
                for key in keys if rnd.random() < 0.8}
        record = Record("dialog", "1001@example.com", "rid&<", {**data, "State": "early"}, None,
                        terminated=rnd.random() < 0.2)
        assert _dialog_xml(record) == _reference_dialog_xml(record), data


def test_needs_escape_is_whether_xml_escape_changes_the_text() -> None:
    rnd = random.Random(8)
    for _ in range(5_000):
        text = "".join(rnd.choice("ab&<>\"'é ") for _ in range(rnd.randint(0, 6)))
        assert needs_escape(text) == (xml_escape(text) != text)


def test_dialog_idle_and_dummy() -> None:
    body = render_dialog([])
    root, found = dialogs(body, 4)
    assert found == [] and root.get("version") == "4" and root.get("state") == "full"
    assert body.for_version(4).endswith(b'entity="sip:1001@example.com"/>\n')
    _root, [dummy] = dialogs(render_dialog([], PackageOptions(force_dummy_dialog=True)))
    assert dummy.get("id") == DUMMY_DIALOG_ID and dummy.get("direction") == "recipient"
    assert dummy.findtext(f"{DI}state") == "terminated"
    _root, [real] = dialogs(render_dialog([rec("c1")], PackageOptions(force_dummy_dialog=True)))
    assert real.get("id") == "c1"


@pytest.mark.parametrize(
    ("states", "winner"),
    [
        (["confirmed", "early", "trying"], "early"),
        (["trying", "proceeding", "confirmed"], "confirmed"),
        (["trying", "proceeding"], "proceeding"),
        (["terminated", "trying"], "trying"),
        (["confirmed", "confirmed"], "confirmed"),
    ],
)
def test_force_single_dialog(states: list[str], winner: str) -> None:
    records = [rec(f"c{i}", state) for i, state in enumerate(states)]
    _root, found = dialogs(render_dialog(records, PackageOptions(force_single_dialog=True)))
    assert len(found) == 1
    assert found[0].findtext(f"{DI}state") == winner
    # ties go to the most recently changed record (the last one)
    expected_id = max(i for i, state in enumerate(states) if state == winner)
    assert found[0].get("id") == f"c{expected_id}"


def test_force_single_dialog_terminated_flag_counts_as_terminated() -> None:
    records = [rec("c1", "early", terminated=True), rec("c2", "trying")]
    _root, [only] = dialogs(render_dialog(records, PackageOptions(force_single_dialog=True)))
    assert only.get("id") == "c2"


# --- message-summary ----------------------------------------------------------------------


def mwi(data: dict[str, str], *, terminated: bool = False) -> Record:
    return Record("message-summary", "1001@example.com", "mwi", data, None, terminated=terminated)


def test_message_summary_bodies() -> None:
    package = REGISTRY["message-summary"]
    body = package.render(
        "1001@example.com",
        [
            mwi(
                {
                    "Messages-Waiting": "yes",
                    "Message-Account": "sip:1001@example.com",
                    "MWI-Voice-Message": "2/1 (0/0)",
                }
            )
        ],  # fmt: skip
        OPTIONS,
    )
    assert not body.versioned
    assert body.for_version(9) == (
        b"Messages-Waiting: yes\r\nMessage-Account: sip:1001@example.com\r\n"
        b"Voice-Message: 2/1 (0/0)\r\n"
    )
    no_counts = package.render(
        "1001@example.com",
        [mwi({"Messages-Waiting": "no", "Message-Account": "sip:vm@x"})],
        OPTIONS,
    )
    assert no_counts.for_version(0) == b"Messages-Waiting: no\r\nMessage-Account: sip:vm@x\r\n"
    idle = package.render("1001@example.com", [], OPTIONS)
    assert idle.for_version(0) == (
        b"Messages-Waiting: no\r\nMessage-Account: sip:1001@example.com\r\n"
    )
    gone = package.render("1001@example.com", [mwi({"Messages-Waiting": "yes"}, terminated=True)],
                          OPTIONS)  # fmt: skip
    assert gone == idle


# --- presence (PIDF) ----------------------------------------------------------------------


def pres(state: str, call_id: str = "c1", *, terminated: bool = False) -> Record:
    return Record("presence", "1001@example.com", call_id, {"State": state}, None,
                  terminated=terminated)  # fmt: skip


def pidf(records: list[Record], presentity: str = "1001@example.com") -> ET.Element:
    body = REGISTRY["presence"].render(presentity, records, OPTIONS)
    assert not body.versioned
    return ET.fromstring(body.for_version(0))


def summary(root: ET.Element) -> tuple[str | None, list[str], str | None]:
    activities = root.find(f"{DM}person/{RPID}activities")
    names = [child.tag.replace(RPID, "") for child in activities] if activities is not None else []
    return (
        root.findtext(f"{PIDF}tuple/{PIDF}status/{PIDF}basic"),
        names,
        root.findtext(f"{PIDF}tuple/{PIDF}note"),
    )


def test_pidf_idle_is_open_available() -> None:
    root = pidf([])
    assert root.get("entity") == "sip:1001@example.com"
    assert summary(root) == ("open", [], "Available")
    assert len(root.findall(f"{PIDF}tuple")) == 1


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("confirmed", ("open", ["on-the-phone"], "On the Phone")),
        ("on-the-phone", ("open", ["on-the-phone"], "On the Phone")),
        ("early", ("open", ["busy"], "Ringing")),
        ("busy", ("open", ["busy"], "Busy")),
        ("dnd", ("open", ["busy"], "Do Not Disturb")),
        ("away", ("open", ["away"], "Away")),
        ("offline", ("closed", [], "Offline")),
        ("closed", ("closed", [], "Offline")),
        ("online", ("open", [], "Available")),
        ("terminated", ("open", [], "Available")),
    ],
)
def test_pidf_states(state: str, expected: tuple) -> None:
    assert summary(pidf([pres(state)])) == expected


def test_pidf_map_covers_every_accepted_state() -> None:
    assert set(PRESENCE_MAP) == set(PRESENCE_STATES)


def test_pidf_busiest_record_wins_and_tombstones_ignored() -> None:
    records = [pres("available", "a"), pres("confirmed", "b"), pres("early", "c")]
    assert summary(pidf(records))[2] == "On the Phone"
    records = [pres("dnd", "a", terminated=True), pres("offline", "b")]
    assert summary(pidf(records)) == ("closed", [], "Offline")


def test_pidf_entity_escaped() -> None:
    root = pidf([], presentity="a&b c@example.com")
    assert root.get("entity") == "sip:a&b%20c@example.com"


def test_helpers() -> None:
    assert xml_escape('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
    assert as_uri("1001@x") == "sip:1001@x"
    assert as_uri("SIPS:1001@x") == "SIPS:1001@x"
    assert as_uri("tel:+1") == "tel:+1"
