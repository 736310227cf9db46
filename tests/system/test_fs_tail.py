"""``busylamp tail --esl`` against the real FreeSWITCH: real events as they come, and a restart."""

from __future__ import annotations

import json
import signal
import wave

from tests.polling import wait_until
from tests.system.freeswitch import DOMAIN, originate
from tests.system.test_cli_subprocess import Proc


def test_tail_raw_shows_real_events_as_they_come(fs, tmp_path):
    tail = Proc.start(["tail", "--esl", fs.esl, "--raw", "--presentity", f"1007@{DOMAIN}"],
                      tmp_path, "tail")
    try:
        wait_until(lambda: "following" in tail.stderr, timeout=10, message=tail.stderr)
        calls: list[str] = []

        def shown() -> bool:
            # tail says nothing when it has subscribed: place a call until one shows up
            if not calls or len(calls) < 5 and calls[-1] not in tail.stdout:
                calls.append(originate(fs, "9196", presence_user="1007"))
                return False
            return calls[-1] in tail.stdout

        wait_until(shown, timeout=20, interval=0.5, message=f"nothing shown:\n{tail.stderr}")
        text = tail.stdout
        # the update line, then the event's own headers, percent-decoded as FreeSWITCH meant them
        assert f"Unique-ID: {calls[-1]}" in text
        assert f"Channel-Presence-ID: {DOMAIN}" not in text
        assert f"Channel-Presence-ID: 1007@{DOMAIN}" in text
        assert "Channel-Call-State: ACTIVE" in text
        assert "%40" not in text
        fs.api(f"uuid_kill {calls[-1]}")
        wait_until(lambda: "Channel-Call-State: HANGUP" in tail.stdout, timeout=10,
                   message=tail.stdout[-2000:])
    finally:
        tail.kill()
        fs.api("hupall")


def test_tail_json_raw_carries_update_and_event(fs, tmp_path):
    fs.api(f"vm_delete 1008@{DOMAIN}")  # before tail listens: its "no" is not what we look for
    tail = Proc.start(["tail", "--esl", fs.esl, "--raw", "--json", "--package", "message-summary"],
                      tmp_path, "tail")
    try:
        wait_until(lambda: "following" in tail.stderr, timeout=10, message=tail.stderr)
        wav = tmp_path / "message.wav"
        with wave.open(str(wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(b"\0\0" * 800)
        sent = []

        def shown() -> bool:
            if len(sent) < 5 and '"yes"' not in tail.stdout:
                sent.append(fs.api(f"vm_inject 1008@{DOMAIN} {wav}"))
            return '"yes"' in tail.stdout

        wait_until(shown, timeout=20, interval=0.5, message=f"nothing shown:\n{tail.stderr}")
        line = next(json.loads(text) for text in tail.stdout.splitlines() if '"yes"' in text)
        assert line["update"]["Presentity"] == f"sip:1008@{DOMAIN}"
        assert line["update"]["Messages-Waiting"] == "yes"
        assert line["update"]["Messages-New"] >= 1
        assert line["event"]["Event-Name"] == "MESSAGE_WAITING"
        assert line["event"]["MWI-Message-Account"] == f"1008@{DOMAIN}"
    finally:
        tail.kill()
        fs.api(f"vm_delete 1008@{DOMAIN}")


def test_tail_follows_freeswitch_through_a_crash_and_restart(fs, tmp_path):
    """One line for the outage, events again once the switch is back, exit 0 on Ctrl-C."""
    tail = Proc.start(["tail", "--esl", fs.esl, "--json", "--presentity", f"1009@{DOMAIN}"],
                      tmp_path, "tail")
    calls: list[str] = []

    def shown() -> bool:
        # tail says nothing when it has (re)subscribed: place calls until one shows up
        if not calls or calls[-1] not in tail.stdout:
            calls.append(originate(fs, "9196", presence_user="1009"))
        return calls[-1] in tail.stdout

    try:
        wait_until(lambda: "following" in tail.stderr, timeout=10, message=tail.stderr)
        wait_until(shown, timeout=20, interval=0.5, message=f"nothing shown:\n{tail.stderr}")
        fs.kill()  # a crash: no disconnect notice, the socket just ends
        wait_until(lambda: "lost FreeSWITCH connection" in tail.stderr, timeout=10,
                   message=tail.stderr)
        fs.start()
        calls.append(originate(fs, "9196", presence_user="1009"))  # then more until one shows
        wait_until(shown, timeout=60, interval=0.5,
                   message=f"nothing shown after the restart:\n{tail.stderr}")
        err = tail.stderr
        assert err.count("lost FreeSWITCH connection") == 1, err
        assert err.count("cannot connect to FreeSWITCH") <= 1, err
        assert "Traceback" not in err
        tail.proc.send_signal(signal.SIGINT)
        assert tail.wait(timeout=10) == 0, tail.stderr
        assert "Traceback" not in tail.stderr
    finally:
        tail.kill()
        fs.api("hupall")
