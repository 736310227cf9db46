"""Concurrency stress of bridge.nsq against the real nsqd: publishers and consumers are created
lazily from many greenlets at once (and from inside a consumer's handler, in the loop greenlet)
while nsqd restarts. No message may be lost and no greenlet may die."""

from __future__ import annotations

import random
import uuid

import gevent
import pytest

from bridge.nsq import NsqBus, NsqLoop
from tests.sipp_util import wait_until

GREENLETS = 20
PER_GREENLET = 25
UPDATES = 300
RESTARTS = 2


@pytest.mark.parametrize("seed", [1, 2])
def test_lazy_start_from_many_greenlets_while_nsqd_restarts(nsq, seed):
    rng = random.Random(seed)
    topic = f"stress_{uuid.uuid4().hex[:8]}"
    loop = NsqLoop()  # not started: the first greenlets to publish or subscribe start it, together
    # a durable channel: nsqd keeps its messages across the restarts (an ephemeral one would not)
    bus = NsqBus(loop, [nsq.tcp_address], topic, "stress", reconnect_interval=0.1)
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
            nsq.restart_nsqd(downtime=0.1)

    # all at once: every one of them reaches the lazy start before the loop greenlet has run
    workers = [gevent.spawn(control_sender, g) for g in range(GREENLETS)]
    workers += [gevent.spawn_later(rng.random() * 0.05, bus.subscribe, on_update),
                gevent.spawn_later(rng.random() * 0.05, bus.subscribe_control, on_control),
                gevent.spawn(update_sender), gevent.spawn(restarter)]
    try:
        gevent.joinall(workers, timeout=30)
        dead = [w for w in workers if not w.successful()]
        assert not dead, [repr(w.exception) for w in dead]
        assert loop._greenlet is not None and not loop._greenlet.dead
        wait_until(lambda: len(updates) == UPDATES, timeout=20,
                   message=f"{UPDATES - len(updates)} updates lost")
        wait_until(lambda: control >= sent_control, timeout=20,
                   message=f"{len(sent_control - control)} control messages lost")
        assert updates == set(range(UPDATES))
        assert control == sent_control
        assert len(sent_control) == GREENLETS * PER_GREENLET + UPDATES // 10
        for publisher in (bus.publisher, bus.control_publisher):
            assert publisher.dropped == 0 and getattr(publisher, "refused", 0) == 0
    finally:
        bus.close()
        loop.stop()
