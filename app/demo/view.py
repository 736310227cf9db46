"""The demo's terminal view: one line per lamp, as the watchers see it.

On a TTY the lamp lines are redrawn in place (ANSI cursor moves, coloured symbols, ringing
blinks); otherwise, or when headless, every change is appended as a plain transcript line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from busylamp.app.demo.lamps import LampKey, LampState

RESET = "\x1b[0m"
COLOURS = {
    "idle": "\x1b[32m",  # green
    "ringing": "\x1b[5;33m",  # blinking yellow
    "busy": "\x1b[31m",  # red
    "held": "\x1b[34m",  # blue
    "yes": "\x1b[5;31m",  # blinking red: message waiting
    "no": "\x1b[32m",
    "open": "\x1b[32m",
    "closed": "\x1b[90m",
}
WORDS = {
    "idle": "idle",
    "ringing": "ringing",
    "busy": "busy",
    "held": "on hold",
    "yes": "message waiting",
    "no": "no messages",
    "open": "available",
    "closed": "offline",
    "unknown": "waiting for first NOTIFY",
}


@dataclass(frozen=True, slots=True)
class Lamp:
    """A lamp on the demo's panel: what it watches and how it is labelled."""

    label: str
    key: LampKey


def describe(lamp: LampState) -> str:
    """The state words of one lamp (what a transcript line says)."""
    words = WORDS.get(lamp.state, lamp.state)
    if lamp.event == "message-summary" and lamp.waiting is not None:
        words += f" ({lamp.new_messages} new, {lamp.old_messages} old)"
    elif lamp.event == "dialog" and lamp.dialogs > 1:
        words += f" ({lamp.dialogs} calls)"
    elif lamp.note:
        words += f" ({lamp.note})"
    if lamp.subscription_state.startswith("terminated"):
        reason = lamp.subscription_state.partition("reason=")[2].split(";", 1)[0]
        words += f" [subscription ended{': ' + reason if reason else ''}]"
    elif lamp.subscription_state.startswith(("rejected", "timeout")):
        words += f" [{lamp.subscription_state}]"
    return words


class LampView:
    """Renders lamp changes to ``out``: live panel on a TTY, transcript lines otherwise."""

    def __init__(self, lamps: list[Lamp], out: TextIO, *, live: bool) -> None:
        self.lamps = lamps
        self.out = out
        self.live = live
        self.states: dict[LampKey, LampState] = {
            lamp.key: LampState(lamp.key[0], lamp.key[1]) for lamp in lamps
        }
        self.caption = ""
        self._drawn = False
        self._width = max(len(lamp.label) for lamp in lamps) if lamps else 0

    def begin(self, title: str) -> None:
        self._write(title + "\n")
        if self.live:
            self._draw()

    def lamp_changed(self, key: LampKey, state: LampState, elapsed: float) -> None:
        if key not in self.states:
            return
        self.states[key] = state
        if self.live:
            self._draw()
        else:
            label = next(lamp.label for lamp in self.lamps if lamp.key == key)
            self._write(f"[{elapsed:6.2f}s] {label:<{self._width}}  {describe(state)}"
                        f"  (NOTIFY #{state.notify_count})\n")

    def step(self, caption: str, elapsed: float) -> None:
        self.caption = caption
        if self.live:
            self._draw()
        else:
            self._write(f"[{elapsed:6.2f}s] >> {caption}\n")

    def finish(self, message: str) -> None:
        self.caption = message
        if self.live:
            self._draw()
        else:
            self._write(message + "\n")

    def _draw(self) -> None:
        lines = [self._line(lamp) for lamp in self.lamps]
        lines.append(f"  >> {self.caption}" if self.caption else "")
        head = f"\x1b[{len(lines)}F" if self._drawn else ""
        self._drawn = True
        self._write(head + "".join(f"\x1b[2K{line}\n" for line in lines))

    def _line(self, lamp: Lamp) -> str:
        state = self.states[lamp.key]
        colour = COLOURS.get(state.state, "\x1b[90m")
        symbol = "\u25a0" if lamp.key[0] == "message-summary" else "\u25cf"
        return (f"  {colour}{symbol}{RESET} {lamp.label:<{self._width}}  {describe(state)}"
                f"  \x1b[90m#{state.notify_count}{RESET}")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
