"""Concurrency stress of bridge.nsq against the real nsqd: publishers and consumers are created
lazily from many greenlets at once (and from inside a consumer's handler, in the loop greenlet)
while nsqd restarts. No message may be lost and no greenlet may die.

The scenario runs twice: in this process, and in a child process monkey-patched the way
``busylamp run`` patches itself (where the warm-start failure against the real nsqd was seen),
while this process restarts nsqd under it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest

from busylamp.bridge.nsq import NsqBus, NsqLoop
from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
GREENLETS = 20
PER_GREENLET = 25
UPDATES = 300
RESTARTS = 2


def run_scenario(nsqd: str, seed: int, restart: Callable[[], None] | None) -> dict:
    """Publish updates and control messages from many greenlets while consumers start; return
    what was lost and what died (``restart``: restarts nsqd, or None when someone else does)."""
    rng = random.Random(seed)
    topic = f"stress_{uuid.uuid4().hex[:8]}"
    loop = NsqLoop()  # not started: the first greenlets to publish or subscribe start it, together
    # a durable channel: nsqd keeps its messages across the restarts (an ephemeral one would not)
    bus = NsqBus(loop, [nsqd], topic, "stress", reconnect_interval=0.1)
    for publisher in (bus.publisher, bus.control_publisher):
        publisher.backoff_initial, publisher.backoff_max = 0.05, 0.2
    updates: set[int] = set()
    control: set[tuple] = set()
    sent_control: set[tuple] = set()

    def on_update(message: dict) -> None:
        updates.add(message["n"])
        if message["n"] % 10 == 0:  # from the loop greenlet: its first call may start the publisher
            key = ("handler", message["n"], 0)
            sent_control.add(key)
            bus.publish_control({"k": list(key)})

    def on_control(message: dict) -> None:
        control.add(tuple(message["k"]))

    def control_sender(g: int) -> None:
        for i in range(PER_GREENLET):
            key = ("greenlet", g, i)
            sent_control.add(key)
            bus.publish_control({"k": list(key)})
            gevent.sleep(rng.random() * 0.01)

    def update_sender() -> None:
        for n in range(UPDATES):
            bus.publish({"n": n})
            gevent.sleep(rng.random() * 0.004)

    def restarter() -> None:
        for _ in range(RESTARTS):
            gevent.sleep(0.2 + rng.random() * 0.2)
            restart()

    # all at once: every one of them reaches the lazy start before the loop greenlet has run
    workers = [gevent.spawn(control_sender, g) for g in range(GREENLETS)]
    workers += [gevent.spawn_later(rng.random() * 0.05, bus.subscribe, on_update),
                gevent.spawn_later(rng.random() * 0.05, bus.subscribe_control, on_control),
                gevent.spawn(update_sender)]
    if restart is not None:
        workers.append(gevent.spawn(restarter))
    try:
        gevent.joinall(workers, timeout=30)
        dead = [repr(w.exception) if w.dead else "still running" for w in workers
                if not w.successful()]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(updates) < UPDATES
                                               or not control >= sent_control):
            gevent.sleep(0.02)
        return {
            "dead": dead,
            "loop_alive": loop._greenlet is not None and not loop._greenlet.dead,
            "lost_updates": sorted(set(range(UPDATES)) - updates),
            "lost_control": len(sent_control - control),
            "unknown_control": len(control - sent_control),
            "sent_control": len(sent_control),
            "dropped": bus.publisher.dropped + bus.control_publisher.dropped,
            "refused": getattr(bus.publisher, "refused", 0)
            + getattr(bus.control_publisher, "refused", 0),
        }
    finally:
        bus.close()
        loop.stop()


def check(result: dict) -> None:
    assert result["dead"] == [] and result["loop_alive"], result
    assert result["lost_updates"] == [] and result["lost_control"] == 0, result
    assert result["unknown_control"] == 0
    assert result["sent_control"] == GREENLETS * PER_GREENLET + UPDATES // 10
    assert result["dropped"] == 0 and result["refused"] == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_lazy_start_from_many_greenlets_while_nsqd_restarts(nsq, seed):
    check(run_scenario(nsq.tcp_address, seed, lambda: nsq.restart_nsqd(downtime=0.1)))


def test_same_in_a_monkey_patched_process_as_busylamp_runs(nsq, tmp_path):
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import json, sys\n"
            "from tests.system.test_nsq_stress import run_scenario\n"
            "print(json.dumps(run_scenario(sys.argv[1], 3, None)))\n")
    err = tmp_path / "child.err"
    with open(err, "wb") as stderr:
        child = subprocess.Popen([sys.executable, "-c", code, nsq.tcp_address], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=stderr)
    try:
        # restarts while the child's greenlets start the loop, publish and subscribe
        wait_until(lambda: nsq.message_count_all() > 0 or child.poll() is not None, 15,
                   message="the child published nothing")
        for _ in range(RESTARTS):
            nsq.restart_nsqd(downtime=0.1)
            gevent.sleep(0.2)  # the outage and the traffic between restarts, not a wait
        wait_until(lambda: child.poll() is not None, 60, message="child did not finish")
        out = child.stdout.read().decode()
        assert child.returncode == 0, err.read_text()
        check(json.loads(out.strip().splitlines()[-1]))
        assert "Traceback" not in err.read_text(), err.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        child.stdout.close()
