"""``busylamp demo``: simulated FreeSWITCH -> real bridge -> real engine -> real SIP watchers.

Everything runs in this process on loopback, ephemeral ports: the FreeSWITCH simulator plays the
office timeline, the bridge (over a real event socket) publishes onto an in-memory bus, the
presence node answers SUBSCRIBEs over UDP, and :class:`~app.demo.useragent.WatcherUA` lamps
are drawn from the NOTIFYs it receives. gevent APIs are used explicitly, so this works with or
without ``gevent.monkey.patch_all()`` (the CLI patches before calling :func:`run_demo`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import gevent

from busylamp.app.demo.lamps import LampKey, LampState
from busylamp.app.demo.scenario import (
    DOMAIN,
    MAILBOX,
    PARK_SLOT,
    USERS,
    Office,
    Timeline,
    office_timeline,
)
from busylamp.app.demo.useragent import WatcherUA
from busylamp.app.demo.view import Lamp, LampView
from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.normalize import NormalizeConfig
from busylamp.bridge.service import BridgeService
from busylamp.esl.connection import EslTarget
from busylamp.esl.simulator import FreeSwitchSimulator
from busylamp.presence.engine import EngineConfig
from busylamp.presence.node import PresenceNode

SETUP_TIMEOUT = 10.0
FAST_ESL = {"backoff_initial": 0.05, "backoff_max": 1.0, "jitter": 0.0,
            "command_timeout": 2.0, "connect_timeout": 2.0}


class DemoError(RuntimeError):
    """The demo could not set itself up (a part did not come up in time)."""


@dataclass
class DemoResult:
    """What the watchers saw: per lamp label, the states in NOTIFY order (repeats collapsed)."""

    lamps: dict[str, list[str]] = field(default_factory=dict)
    notifies: dict[str, int] = field(default_factory=dict)
    steps_played: int = 0
    elapsed: float = 0.0
    interrupted: bool = False


def demo_lamps() -> list[Lamp]:
    """BLF keys 1001..1006, the park slot and 1004's message-waiting lamp."""
    lamps = [Lamp(user, ("dialog", f"{user}@{DOMAIN}")) for user in USERS]
    lamps.append(Lamp(f"park {PARK_SLOT}", ("dialog", f"park+{PARK_SLOT}@{DOMAIN}")))
    lamps.append(Lamp(f"MWI {MAILBOX}", ("message-summary", f"{MAILBOX}@{DOMAIN}")))
    return lamps


def run_demo(*, duration: float | None = None, headless: bool = False, speed: float = 1.0,
             out: TextIO = sys.stdout) -> DemoResult:
    """Play the office (once, or repeatedly for ``duration`` seconds) and return what the
    watchers saw. Ctrl-C ends it cleanly (watchers unsubscribe, every part stops)."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    lamps = demo_lamps()
    label_of = {lamp.key: lamp.label for lamp in lamps}
    live = not headless and _is_tty(out)
    view = LampView(lamps, out, live=live)
    result = DemoResult(lamps={lamp.label: [] for lamp in lamps},
                        notifies={lamp.label: 0 for lamp in lamps})
    started = time.monotonic()

    def on_change(key: LampKey, state: LampState) -> None:
        label = label_of.get(key)
        if label is None:
            return
        result.notifies[label] = state.notify_count
        seen = result.lamps[label]
        if state.state != "unknown" and (not seen or seen[-1] != state.state):
            seen.append(state.state)
        view.lamp_changed(key, state, time.monotonic() - started)

    parts = _Parts()
    try:
        parts.start(on_change)
        view.begin(f"busylamp demo: SIP watchers on {_addr(parts.watcher.address)} subscribe "
                   f"to the engine on {_addr(parts.node_address)}; Ctrl-C ends")
        for lamp in lamps:
            parts.watcher.subscribe(lamp.key[1], lamp.key[0])
        _wait(lambda: all(s.notify_count for s in parts.watcher.lamps.values()),
              "the watchers got no first NOTIFY")
        _play(Office(parts.sim), view, result, speed, duration, started)
        view.finish("demo finished")
    except KeyboardInterrupt:
        result.interrupted = True
        view.finish("interrupted: stopping")
    finally:
        result.elapsed = time.monotonic() - started
        parts.stop()
    return result


def _play(office: Office, view: LampView, result: DemoResult, speed: float,
          duration: float | None, started: float) -> None:
    begin = time.monotonic()
    timeline = Timeline(office_timeline(), begin, speed, repeat=duration is not None)
    end_at = begin + duration if duration is not None else None
    while True:
        now = time.monotonic()
        for step in timeline.due(now):
            view.step(step.caption, now - started)
            step.action(office)
        deadline = timeline.get_timer()
        stop_at = end_at if end_at is not None else timeline.end()
        if deadline is None or deadline >= stop_at:
            gevent.sleep(max(0.0, stop_at - time.monotonic()))
            break
        gevent.sleep(max(0.0, deadline - time.monotonic()))
    result.steps_played = timeline.played


class _Parts:
    """The running pieces, started in dependency order and stopped in reverse."""

    def __init__(self) -> None:
        self.sim = FreeSwitchSimulator(domain=DOMAIN, heartbeat_interval=None)
        self.bus = MemoryBus()
        self.node: PresenceNode | None = None
        self.bridge: BridgeService | None = None
        self.watcher: WatcherUA | None = None
        self.node_address: tuple[str, int] = ("127.0.0.1", 0)

    def start(self, on_change: Callable[[LampKey, LampState], None]) -> None:
        host, port = self.sim.start()
        self.node = PresenceNode(EngineConfig(contacts={"udp": ("127.0.0.1", 0)}),
                                 node_id="demo", on_control=self.bus.publish_control)
        self.node_address = self.node.listen("udp", "127.0.0.1", 0)
        self.node.reconfigure(EngineConfig(contacts={"udp": self.node_address}))
        self.bus.subscribe(self.node.on_bus_message)
        self.node.start()
        self.bridge = BridgeService([EslTarget(host, port, self.sim.password)], self.bus,
                                    NormalizeConfig(domain_default=DOMAIN), bridge_id="demo",
                                    esl_options=FAST_ESL)
        self.bridge.start()
        _wait(lambda: self.bridge.counters["snapshots"] > 0,
              "the bridge did not connect to the simulated FreeSWITCH")
        self.watcher = WatcherUA("127.0.0.1", 0, self.node_address, "demo-watcher", DOMAIN,
                                 on_change=on_change)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.bridge is not None:
            self.bridge.stop()
        if self.node is not None:
            self.node.stop()
        self.sim.stop()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = SETUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"{what} within {timeout:.0f}s")
        gevent.sleep(0.01)


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _addr(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
