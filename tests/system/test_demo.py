"""`busylamp demo` in-process: simulator -> bridge -> engine -> SIP watchers, headless."""

from __future__ import annotations

import io
import time

from busylamp.app.demo.lamps import LampState
from busylamp.app.demo.run import run_demo
from busylamp.app.demo.scenario import Step, Timeline, office_timeline
from busylamp.app.demo.view import Lamp, LampView


def test_demo_headless_lamps_follow_the_office():
    out = io.StringIO()
    started = time.monotonic()
    result = run_demo(headless=True, speed=5.0, out=out)
    assert time.monotonic() - started < 12
    assert not result.interrupted
    assert result.steps_played == len(office_timeline())
    # States come from the watchers' NOTIFYs: at least one NOTIFY per state seen.
    assert result.lamps["1002"] == ["idle", "ringing", "busy", "idle"]
    assert result.lamps["MWI 1004"] == ["no", "yes", "no"]
    assert result.lamps["park 701"] == ["idle", "busy", "idle"]
    assert result.lamps["1001"] == ["idle", "busy", "ringing", "busy", "idle"]  # call waiting
    assert result.lamps["1004"][:3] == ["idle", "ringing", "idle"]  # not answered: voicemail
    for label, states in result.lamps.items():
        assert result.notifies[label] >= len(states), label
    text = out.getvalue()
    assert "\x1b[" not in text  # headless: a plain transcript
    assert ">> 1001 calls 1002" in text
    assert "1002      ringing  (NOTIFY #2)" in text
    assert "MWI 1004  message waiting (1 new, 0 old)" in text
    assert text.count("[subscription ended: timeout]") == 8  # every watcher unsubscribed


class _InterruptingOut(io.StringIO):
    """A terminal where Ctrl-C is pressed when a given caption is shown."""

    def __init__(self, at: str) -> None:
        super().__init__()
        self.at = at

    def write(self, text: str) -> int:
        if self.at and self.at in text:
            self.at = ""
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_cleanly_and_unsubscribes():
    out = _InterruptingOut(">> 1002 answers")
    result = run_demo(headless=True, speed=10.0, out=out)
    assert result.interrupted
    assert result.steps_played < len(office_timeline())
    assert result.lamps["1002"] == ["idle", "ringing"]
    text = out.getvalue()
    assert "interrupted: stopping" in text
    assert text.count("[subscription ended: timeout]") == 8


def test_timeline_scales_and_repeats():
    steps = [Step(1.0, "a", lambda o: None), Step(3.0, "b", lambda o: None)]
    once = Timeline(steps, start=100.0, speed=2.0)
    assert once.get_timer() == 100.5
    assert once.due(100.4) == []
    assert [s.caption for s in once.due(101.5)] == ["a", "b"]
    assert once.get_timer() is None and once.end() == 100.0 + 4.0 / 2
    looping = Timeline(steps, start=0.0, speed=1.0, repeat=True)
    assert [s.caption for s in looping.due(9.5)] == ["a", "b", "a", "b", "a"]
    assert looping.get_timer() == 11.0 and looping.played == 5


def test_live_view_redraws_in_place():
    out = io.StringIO()
    lamps = [Lamp("1001", ("dialog", "1001@x")), Lamp("MWI 1001", ("message-summary", "1001@x"))]
    view = LampView(lamps, out, live=True)
    view.begin("title")
    view.lamp_changed(("dialog", "1001@x"), LampState("dialog", "1001@x", "ringing",
                                                      notify_count=2), 1.0)
    frames = out.getvalue().split("\x1b[3F")  # cursor up over 2 lamps + caption line
    assert len(frames) == 2
    assert "\x1b[5;33m" in frames[1] and "ringing" in frames[1]  # blinking yellow
    assert "waiting for first NOTIFY" in frames[0]


def test_demo_command_runs_headless_in_a_subprocess():
    """`busylamp demo --headless` from the console script, as a newcomer types it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("busylamp", path=str(Path(sys.executable).parent)) or "busylamp"
    done = subprocess.run([exe, "demo", "--headless", "--speed", "8"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "demo finished:" in done.stdout
    assert "1002" in done.stdout and "ringing" in done.stdout
    assert "Traceback" not in done.stderr
