"""contrib/freeswitch-dialplan: every snippet is a well-formed FreeSWITCH include with BLF set up."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIALPLAN = REPO / "contrib" / "freeswitch-dialplan"
SNIPPETS = sorted(DIALPLAN.rglob("*.xml"))
BY_NAME = {p.name: p for p in SNIPPETS}

# Applications that put a phone's call on a lamp and so need a presence_id on the right leg.
PRESENCE_APPS = {"bridge", "intercept", "valet_park"}


def _extensions(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall("extension")


def _actions(extension: ET.Element) -> list[ET.Element]:
    return [a for c in extension.findall("condition") for a in c.findall("action")]


def _sets_presence_id(extension: ET.Element) -> bool:
    return any(
        a.get("application") in ("set", "export") and a.get("data", "").startswith("presence_id=")
        for a in _actions(extension)
    )


def test_snippets_exist_in_the_conf_relative_layout():
    assert SNIPPETS, "no snippets found"
    for path in SNIPPETS:
        assert path.relative_to(DIALPLAN).parts[:2] == ("dialplan", "default"), path
    readme = (DIALPLAN / "README.md").read_text()
    for path in SNIPPETS:
        assert path.name in readme, f"{path.name} not documented in README.md"


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.name)
def test_snippet_is_a_freeswitch_include(path):
    text = path.read_text()
    # The FreeSWITCH pre-processor pastes includes into the parent document: no XML declaration.
    assert not text.lstrip().startswith("<?xml"), path
    root = ET.fromstring(text)
    assert root.tag == "include"
    extensions = _extensions(path)
    assert extensions, "an include without extensions"
    assert all(child.tag == "extension" for child in root), "only extensions at the top level"
    for extension in extensions:
        assert extension.get("name", "").startswith("busylamp_")
        conditions = extension.findall("condition")
        assert conditions
        for condition in conditions:
            if condition.get("expression") is not None:
                assert condition.get("field"), "an expression needs a field"
                re.compile(condition.get("expression"))
            for action in condition.findall("action"):
                assert action.get("application"), "an action without application"
        assert _actions(extension), f"{extension.get('name')} does nothing"
    assert "<!--" in text, "snippets are commented"


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.name)
def test_presence_id_is_set_where_a_lamp_is_involved(path):
    for extension in _extensions(path):
        for action in _actions(extension):
            app, data = action.get("application"), action.get("data", "")
            if app not in PRESENCE_APPS or (app == "bridge" and "sofia/gateway/" in data):
                continue
            if app == "bridge" and "loopback/app=voicemail:" in data:
                # A caller leaving a message lights no lamp of the mailbox owner (nothing to pick up)
                assert "presence_id" not in data, data
                continue
            if app == "valet_park":
                # Slot presence comes from mod_valet_parking; it needs the domain in the lot name.
                assert data.split()[0].endswith("@${domain_name}"), data
                continue
            in_leg = re.match(r"^[{\[](?:[^=]+=[^,]*,)*presence_id=[^,@]+@\$\{domain_name\}[,}\]]", data)
            assert in_leg or _sets_presence_id(extension), (extension.get("name"), data)


def test_local_extension_bridge_carries_the_callee_presence_id():
    (extension,) = _extensions(BY_NAME["10_busylamp_local_extension.xml"])
    bridges = [a.get("data") for a in _actions(extension) if a.get("application") == "bridge"]
    assert bridges[0] == (
        "{presence_id=${dialed_extension}@${domain_name}}user/${dialed_extension}@${domain_name}"
    )
    # The voicemail fallback leg carries no presence id: it would blink the callee's lamp as
    # ringing and pickable while the caller leaves a message.
    assert bridges[1].startswith("loopback/app=voicemail:"), bridges
    # No ringback: FreeSWITCH must not send the caller early media the callee did not send.
    assert not any(a.get("data", "").startswith("ringback=") for a in _actions(extension))
    # The uuid the ** intercept looks up must be stored by the same extension.
    hashes = [a.get("data") for a in _actions(extension) if a.get("application") == "hash"]
    assert "insert/${domain_name}-last_dial_ext/${dialed_extension}/${uuid}" in hashes


def test_caller_presence_continues_and_does_not_override():
    (extension,) = _extensions(BY_NAME["00_busylamp_presence.xml"])
    assert extension.get("continue") == "true"
    fields = {c.get("field"): c.get("expression") for c in extension.findall("condition")}
    assert fields["${presence_id}"] == "^$"
    assert _sets_presence_id(extension)
    # inline: set while the dialplan is hunted, so a second inclusion of the file (the top of the
    # context and default/*.xml) sees it and does not set it again
    (action,) = _actions(extension)
    assert action.get("inline") == "true"


def test_intercept_matches_the_blf_pickup_target():
    (extension,) = _extensions(BY_NAME["20_busylamp_intercept.xml"])
    (condition,) = extension.findall("condition")
    pattern = re.compile(condition.get("expression"))
    assert pattern.match("**1001").group(1) == "1001"
    assert pattern.match("1001") is None


def test_valet_slots_and_voicemail_numbers_match():
    ask, slot = _extensions(BY_NAME["30_busylamp_valet_park.xml"])
    slot_re = re.compile(slot.find("condition").get("expression"))
    assert slot_re.match("7001") and slot_re.match("7099")
    assert slot_re.match("7000") is None
    check, any_box, deposit = _extensions(BY_NAME["40_busylamp_voicemail.xml"])
    assert re.match(deposit.find("condition").get("expression"), "*981001").group(1) == "1001"
    any_re = any_box.find("condition").get("expression")
    assert re.match(any_re, "*98") and re.match(any_re, "*981001") is None
    assert re.match(check.find("condition").get("expression"), "4000")
    apps = {a.get("application") for a in _actions(check) + _actions(deposit)}
    assert apps >= {"voicemail"}
