"""A resync of a big switch, end to end: the project's ESL simulator with 20,000 live calls
(40,000 channels, a ~38 MB ``show channels as json`` answer), the bridge, the real nsqd and a
presence node. The snapshot travels in parts (nsqd refuses bodies over 1 MiB) and the node
applies it as one: nothing changes until the last part is in, then every lamp is right."""

from __future__ import annotations

import time
import uuid

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.normalize import NormalizeConfig
from busylamp.bridge.nsq import NsqBus, NsqLoop
from busylamp.bridge.service import BridgeService
from busylamp.esl.connection import EslTarget
from busylamp.esl.simulator import FreeSwitchSimulator
from busylamp.presence.updates import parse_updates
from tests.node_util import running_node
from tests.polling import wait_until

DOMAIN = "example.com"
CALLS = 20_000


def ghost(switch_id: str) -> dict:
    """A call the node believes in but the switch no longer has: the snapshot must end it."""
    return {"Event-Name": "update", "Event-Package": "dialog", "From": f"sip:ghost@{DOMAIN}",
            "From-User": "ghost", "From-Realm": DOMAIN, "To": f"sip:9@{DOMAIN}",
            "Call-ID": "ghost-call", "State": "confirmed", "Expires": 600,
            "Switch-ID": switch_id}


def states(node, user: str) -> dict[str, str]:
    return {r.record_id: r.data.get("State")
            for r in node.state.records("dialog", f"{user}@{DOMAIN}") if not r.terminated}


arrivals_at: list[float] = []


def spy_on_assembly(node) -> tuple[list[tuple[int, int, bool]], list[int]]:
    """Per part as it arrives: (part index, live dialog records, ghost still live); and the
    size of every snapshot the state applied."""
    arrivals: list[tuple[int, int, bool]] = []
    applied: list[int] = []
    arrivals_at.clear()
    add, apply_snapshot = node.engine.snapshots.add, node.state.apply_snapshot

    def add_spy(part, now):
        arrivals_at.append(time.monotonic())
        arrivals.append((part.part, node.state.stats.records["dialog"],
                         bool(states(node, "ghost"))))
        return add(part, now)

    def apply_spy(snap, now):
        applied.append(len(snap.updates))
        return apply_snapshot(snap, now)

    node.engine.snapshots.add = add_spy
    node.state.apply_snapshot = apply_spy
    return arrivals, applied


def test_resync_of_20000_calls_over_the_real_nsqd_is_applied_as_one(nsq):
    sim = FreeSwitchSimulator(domain=DOMAIN, heartbeat_interval=None)
    answered: dict[int, bool] = {}
    for i in range(CALLS):
        call = sim.originate(f"a{i}", f"b{i}")
        if i % 3:
            sim.answer(call)
        answered[i] = bool(i % 3)
    leg_ids = {leg.uuid for leg in sim.channels}
    host, port = sim.start()
    topic = f"big_{uuid.uuid4().hex[:8]}"
    loop = NsqLoop()
    loop.start()
    node_bus = NsqBus(loop, [nsq.tcp_address], topic, "node#ephemeral")
    bridge_bus = NsqBus(loop, [nsq.tcp_address], topic, "bridge#ephemeral")
    service = None
    try:
        with running_node() as node:
            node.publish(parse_updates([ghost(sim.core_uuid)]))
            arrivals, applied = spy_on_assembly(node)
            node_bus.subscribe(node.on_bus_message)
            wait_until(lambda: nsq.clients(topic, "node#ephemeral") == 1, 10,
                       message="node not consuming")
            started = time.monotonic()
            service = BridgeService([EslTarget(host, port, "ClueCon")], bridge_bus,
                                    NormalizeConfig(), bridge_id="bridge-1")
            service.start()  # on connect: show channels as json -> snapshot parts -> nsqd
            wait_until(lambda: node.engine.snapshots.counters["assembled"] == 1, 120,
                       interval=0.1, message=f"{len(arrivals)} parts arrived, not assembled")
            elapsed = time.monotonic() - started
            first_part = arrivals_at[0] - started if arrivals_at else 0.0

            parts = service.counters["snapshot_parts"]
            assert parts > 1 and len(arrivals) == parts
            assert bridge_bus.publisher.refused == 0 and bridge_bus.publisher.dropped == 0
            assert nsq.message_count(topic) == parts
            # applied as one: before the last part nothing changed (the ghost still lit)
            assert all(count == 1 and lit for _, count, lit in arrivals)
            assert applied == [4 * CALLS]  # dialog + presence record per leg, in one go
            assert sorted(index for index, _, _ in arrivals) == list(range(parts))
            # every lamp right: each leg's dialog in its call's state, the ghost gone
            assert states(node, "ghost") == {}
            wrong = []
            ringing_caller = NormalizeConfig().initiator_ringing_state
            for i in range(CALLS):
                # a ringing caller shows the configured initiator state, a ringing callee early
                for user, ringing in ((f"a{i}", ringing_caller), (f"b{i}", "early")):
                    want = "confirmed" if answered[i] else ringing
                    got = states(node, user)
                    if list(got.values()) != [want] or not set(got) <= leg_ids:
                        wrong.append((user, got, want))
            assert not wrong, wrong[:5]
            assert node.state.stats.records["dialog"] == 2 * CALLS
            assert node.state.stats.gaps == 0
            print(f"\n{CALLS} calls: {parts} parts; bridge start -> first part at the node "
                  f"{first_part:.1f} s, -> applied {elapsed:.1f} s")
    finally:
        if service is not None:
            service.stop()
        node_bus.close()
        bridge_bus.close()
        loop.stop()
        sim.stop()


def test_the_memory_bus_carries_the_same_parts():
    sim = FreeSwitchSimulator(domain=DOMAIN, heartbeat_interval=None)
    for i in range(200):
        sim.answer(sim.originate(f"a{i}", f"b{i}"))
    host, port = sim.start()
    bus = MemoryBus()
    try:
        with running_node() as node:
            node.publish(parse_updates([ghost(sim.core_uuid)]))
            arrivals, applied = spy_on_assembly(node)
            bus.subscribe(node.on_bus_message)
            service = BridgeService([EslTarget(host, port, "ClueCon")], bus, NormalizeConfig(),
                                    bridge_id="bridge-1", snapshot_part_bytes=20_000)
            service.start()
            try:
                wait_until(lambda: node.engine.snapshots.counters["assembled"] == 1, 10)
            finally:
                service.stop()
            assert len(arrivals) == service.counters["snapshot_parts"] > 1
            assert all(count == 1 and lit for _, count, lit in arrivals)
            assert applied == [4 * 200]
            assert states(node, "ghost") == {} and states(node, "a7") and states(node, "b7")
            metrics = node.metrics_text()
            assert "busylamp_snapshots_assembled_total 1\n" in metrics
            assert "busylamp_snapshots_pending 0\n" in metrics
    finally:
        sim.stop()
