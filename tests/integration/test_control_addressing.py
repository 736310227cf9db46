"""Control messages as addressed: two BridgeServices (one simulated FreeSWITCH each) and a real
PresenceEngine on one MemoryBus. A sequence gap in one bridge's updates makes the engine ask for
a resync naming that bridge: only it resyncs; malformed control messages are counted and logged
once per reason."""

from __future__ import annotations

import logging

import gevent
import pytest

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.normalize import NormalizeConfig
from busylamp.bridge.service import BridgeService
from busylamp.esl.connection import EslTarget
from busylamp.esl.simulator import FreeSwitchSimulator
from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.engine.events import ControlEvent
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates
from busylamp.wire import resync_request
from tests.polling import wait_until

FAST_ESL = {"backoff_initial": 0.05, "backoff_max": 0.2, "jitter": 0.0, "dead_after": 5.0,
            "command_timeout": 2.0, "connect_timeout": 2.0}
CONTACTS = {"udp": ("192.0.2.1", 5065), "tcp": ("192.0.2.1", 5065)}


def wait_for(predicate, timeout: float = 5.0):
    return wait_until(predicate, timeout, interval=0.01)


class LossyLink:
    """Bus -> engine, dropping the updates of one bridge whose Sequence is in ``drop``."""

    def __init__(self, engine: PresenceEngine, bus: MemoryBus) -> None:
        self.engine = engine
        self.bus = bus
        self.drop: set[tuple[str, int]] = set()

    def __call__(self, message: dict) -> None:
        if (message.get("Bridge-ID"), message.get("Sequence")) in self.drop:
            return
        self.engine.apply(parse_updates(message), 1000.0)
        # as the node does: the engine's requests go to the bus once it has returned
        for event in self.engine.events():
            if isinstance(event, ControlEvent):
                self.bus.publish_control(event.control_message())


@pytest.fixture
def two_bridges():
    bus = MemoryBus()
    seen: list[dict] = []
    bus.subscribe(seen.append)
    engine = PresenceEngine(EngineConfig(contacts=CONTACTS),
                            PresenceState(REGISTRY, PackageOptions()), REGISTRY)
    link = LossyLink(engine, bus)
    bus.subscribe(link)
    sims, services = [], []
    for name in ("bridge-a", "bridge-b"):
        sim = FreeSwitchSimulator(password="pw", domain="example.com", heartbeat_interval=None)
        host, port = sim.start()
        service = BridgeService([EslTarget(host, port, "pw")], bus,
                                NormalizeConfig(domain_default="example.com"), name,
                                epoch=1, esl_options=FAST_ESL, max_timer_sleep=0.05)
        service.start()
        sims.append(sim)
        services.append(service)
    try:
        wait_for(lambda: len(snapshots(seen)) >= 2)
        yield sims, services, seen, link
    finally:
        for service in services:
            service.stop()
        for sim in sims:
            sim.stop()


def snapshots(seen: list[dict], bridge_id: str | None = None) -> list[dict]:
    return [m for m in seen if m.get("Event-Name") == "snapshot"
            and bridge_id in (None, m.get("Bridge-ID"))]


def test_a_gap_resyncs_only_the_bridge_that_lost_messages(two_bridges):
    sims, (a, b), seen, link = two_bridges
    before_a, before_b = len(snapshots(seen, "bridge-a")), len(snapshots(seen, "bridge-b"))
    # the engine misses bridge-a's next update; the one after shows the gap
    link.drop.add(("bridge-a", a.sequencer.sequence + 1))
    sims[0].originate("1001", "1002")
    wait_for(lambda: a.counters["resync_requests"] == 1)
    wait_for(lambda: len(snapshots(seen, "bridge-a")) == before_a + 1)
    gevent.sleep(0.2)  # time for a wrong resync of bridge-b to show
    assert len(snapshots(seen, "bridge-b")) == before_b
    assert b.counters["resync_not_ours"] == 1 and b.counters["resync_requests"] == 0
    assert a.counters["resync_not_ours"] == 0 and a.counters["bad_control"] == 0


def test_a_resync_without_bridge_id_reaches_every_bridge(two_bridges):
    sims, (a, b), seen, _ = two_bridges
    count = len(snapshots(seen))
    a.bus.publish_control(resync_request(reason="warm start"))
    wait_for(lambda: len(snapshots(seen)) == count + 2)
    assert a.counters["resync_requests"] == b.counters["resync_requests"] == 1
    a.bus.publish_control(resync_request(bridge_id="bridge-b", switch_id=sims[1].core_uuid))
    wait_for(lambda: len(snapshots(seen, "bridge-b")) == 3)
    assert (a.counters["resync_not_ours"], b.counters["resync_requests"]) == (1, 2)


def test_malformed_control_is_counted_and_each_reason_logged_once(two_bridges, caplog):
    _, (a, b), seen, _ = two_bridges
    count = len(snapshots(seen))
    with caplog.at_level(logging.WARNING, logger="busylamp.bridge.service"):
        for _ in range(5):
            a.bus.publish_control({"Event-Name": "resync", "Bridge-ID": ["bridge-a"]})
            a.bus.publish_control({"Event-Name": "bogus"})
        a.bus.publish_control({"Event-Name": "mwi_query", "Presentity": "<>"})
    gevent.sleep(0.1)
    assert len(snapshots(seen)) == count  # a malformed resync is no resync
    for service in (a, b):
        assert service.counters["bad_control"] == 11
        assert service.counters["resync_requests"] == 0
        assert sorted(service.bad_control_reasons.values()) == [1, 5, 5]
    rejected = [r.getMessage() for r in caplog.records if "control message rejected" in r.getMessage()]
    assert len(rejected) == 6  # three reasons, once each, per bridge
    assert any('field "Bridge-ID": must be a string' in text for text in rejected)
    assert any("Presentity is not an address" in text for text in rejected)
