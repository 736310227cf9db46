"""Voicemail MWI against the real FreeSWITCH: mod_voicemail's MESSAGE_WAITING and MESSAGE_QUERY.

A mailbox changes with ``vm_inject`` / ``vm_delete`` (the kit README's way); a watcher subscribed
to busylamp with ``Event: message-summary`` sees the counts. Each test uses its own mailbox (the
switch, and so its voicemail storage, is shared by the module).
"""

from __future__ import annotations

import re
import time
import wave
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.system.freeswitch import DOMAIN, PHONES_DOC, FreeSwitch
from tests.system.phones import LampWatcher, NotifySink, SteadyWatcher, message_summary
from tests.system.test_cli_subprocess import run_node


@pytest.fixture(scope="module")
def message_wav(tmp_path_factory) -> Path:
    """One second of silence, 8 kHz mono: a voicemail to inject."""
    path = tmp_path_factory.mktemp("vm") / "message.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000)
    return path


def mwi_watcher(node, mailbox: str, tmp_path: Path) -> LampWatcher:
    return SteadyWatcher(f"{mailbox}@{DOMAIN}", ("127.0.0.1", node.sip_port), tmp_path,
                       event="message-summary", watcher=f"{mailbox}@{DOMAIN}").start()


def summaries(watch: LampWatcher) -> list[tuple[str | None, str | None]]:
    """(Messages-Waiting, Voice-Message) of each NOTIFY, in order."""
    out = []
    for notify in watch.notifies():
        fields = message_summary(notify.body)
        out.append((fields.get("messages-waiting"), fields.get("voice-message")))
    return out


def counts(voice_message: str | None) -> str | None:
    """``1/0 (0/0)`` or ``1/0`` -> ``1/0``: new/old, what every form agrees on."""
    return voice_message.split()[0] if voice_message else None


def inject(fs, mailbox: str, wav: Path) -> None:
    assert fs.api(f"vm_inject {mailbox}@{DOMAIN} {wav}").startswith("+OK")


def delete_all(fs, mailbox: str) -> None:
    assert fs.api(f"vm_delete {mailbox}@{DOMAIN}").startswith("+OK")


def test_vm_inject_and_delete_drive_the_mwi_lamp(fs, busylamp_all, message_wav, tmp_path):
    watch = mwi_watcher(busylamp_all, "1001", tmp_path)
    try:
        wait_until(lambda: watch.notifies(), timeout=10, message="no first NOTIFY")
        started = time.time()
        inject(fs, "1001", message_wav)
        wait_until(lambda: summaries(watch)[-1][0] == "yes", timeout=10,
                   message=f"no yes after vm_inject: {summaries(watch)}")
        print(f"vm_inject -> NOTIFY yes {watch.notifies()[-1].at - started:.3f}s")
        assert counts(summaries(watch)[-1][1]) == "1/0"

        inject(fs, "1001", message_wav)
        wait_until(lambda: counts(summaries(watch)[-1][1]) == "2/0", timeout=10,
                   message=f"second message not counted: {summaries(watch)}")

        started = time.time()
        delete_all(fs, "1001")
        wait_until(lambda: summaries(watch)[-1][0] == "no", timeout=10,
                   message=f"no 'no' after vm_delete: {summaries(watch)}")
        print(f"vm_delete -> NOTIFY no {watch.notifies()[-1].at - started:.3f}s")
        assert counts(summaries(watch)[-1][1]) == "0/0"
    finally:
        watch.stop()


def test_subscribing_to_a_mailbox_nobody_published_gets_its_count(fs, message_wav, tmp_path):
    """The message is left while busylamp is not running; the phone's SUBSCRIBE makes busylamp
    ask mod_voicemail (MESSAGE_QUERY), whose answer is the count."""
    delete_all(fs, "1002")
    inject(fs, "1002", message_wav)
    try:
        with run_node(tmp_path / "busylamp", "--esl", fs.esl, role="all",
                      ready_timeout=15) as node:
            started = time.time()
            watch = mwi_watcher(node, "1002", tmp_path)
            try:
                wait_until(lambda: summaries(watch) and summaries(watch)[-1][0] == "yes",
                           timeout=10, message=f"the count never came: {summaries(watch)}")
                print(f"SUBSCRIBE -> NOTIFY yes {watch.notifies()[-1].at - started:.3f}s "
                      f"(NOTIFYs: {summaries(watch)})")
                assert counts(summaries(watch)[-1][1]) == "1/0"
            finally:
                watch.stop()
    finally:
        delete_all(fs, "1002")


def test_switch_still_sends_its_own_mwi_as_documented(fs, busylamp_all, message_wav, tmp_path):
    """Defect 7: with docs/phones.md's sofia settings (manage-presence=false and the rest),
    FreeSWITCH still sends an unsolicited NOTIFY message-summary to the registered phone on every
    mailbox change (mod_sofia's MESSAGE_WAITING handler is not tied to any profile setting). The
    document says so; both sources carry the same counts."""
    doc = " ".join(PHONES_DOC.read_text().split())
    assert "phones receive both" in doc
    assert "no NOTIFYs from FreeSWITCH for BLF, presence or MWI" not in doc
    delete_all(fs, "1003")
    phone = NotifySink("1003", fs.sip, tmp_path).start()
    watch = mwi_watcher(busylamp_all, "1003", tmp_path)
    try:
        wait_until(lambda: watch.notifies(), timeout=10, message="no first NOTIFY")
        inject(fs, "1003", message_wav)
        wait_until(lambda: phone.notifies("message-summary"), timeout=10,
                   message="the switch sent no MWI NOTIFY to the registered phone")
        wait_until(lambda: summaries(watch)[-1][0] == "yes", timeout=10)
        unsolicited = message_summary(phone.notifies("message-summary")[-1].body)
        assert unsolicited["messages-waiting"] == "yes"
        assert counts(unsolicited["voice-message"]) == counts(summaries(watch)[-1][1]) == "1/0"

        delete_all(fs, "1003")
        wait_until(lambda: message_summary(phone.notifies("message-summary")[-1].body)
                   .get("messages-waiting") == "no", timeout=10,
                   message="the switch sent no MWI NOTIFY for the delete")
        wait_until(lambda: summaries(watch)[-1][0] == "no", timeout=10)
    finally:
        watch.stop()
        phone.stop()


def documented_mwi_account(user: str) -> tuple[str, str]:
    """The directory ``<param>`` docs/phones.md gives to stop FreeSWITCH's own MWI, for ``user``."""
    text = PHONES_DOC.read_text()
    section = text[text.index("### FreeSWITCH's own MWI NOTIFYs"):]
    block = re.search(r"```xml\n(.*?)```", section, re.S).group(1)
    comment = re.search(r"directory/default/(\d+)\.xml", block).group(1)
    name, value = re.search(r'<param name="([^"]+)" value="([^"]*)"\s*/>', block).groups()
    return name, value.replace(comment, user)


def test_documented_mwi_account_leaves_busylamp_the_only_mwi_source(
        freeswitch_kit, message_wav, tmp_path):
    """docs/phones.md's way to stop FreeSWITCH's own MWI NOTIFYs, applied to 1004 as written:
    1004's phone gets none from the switch while busylamp still shows its mailbox; 1005, left
    as it was, still gets the switch's (sent after 1004's: mod_sofia handles MWI in order)."""
    name, value = documented_mwi_account("1004")
    switch = FreeSwitch(freeswitch_kit, tmp_path / "fs")
    user = switch.conf / "directory" / "default" / "1004.xml"
    user.write_text(user.read_text().replace(
        "<params>", f'<params>\n      <param name="{name}" value="{value}"/>', 1))
    switch.start()
    try:
        quiet = NotifySink("1004", switch.sip, tmp_path).start()
        control = NotifySink("1005", switch.sip, tmp_path).start()
        with run_node(tmp_path / "busylamp", "--esl", switch.esl, role="all",
                      ready_timeout=15) as node:
            watch = mwi_watcher(node, "1004", tmp_path)
            try:
                wait_until(lambda: watch.notifies(), timeout=10, message="no first NOTIFY")
                inject(switch, "1004", message_wav)
                inject(switch, "1005", message_wav)
                wait_until(lambda: summaries(watch)[-1][0] == "yes", timeout=10,
                           message=f"busylamp lost 1004's mailbox: {summaries(watch)}")
                assert counts(summaries(watch)[-1][1]) == "1/0"
                wait_until(lambda: control.notifies("message-summary"), timeout=10,
                           message="the switch sent 1005 no MWI NOTIFY")
                assert quiet.notifies("message-summary") == []
            finally:
                watch.stop()
        quiet.stop()
        control.stop()
    finally:
        switch.stop()
