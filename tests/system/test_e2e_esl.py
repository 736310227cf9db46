"""End to end: simulated FreeSWITCH → ESL bridge → memory bus → engine → sipp watchers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import contextmanager

import pytest

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.normalize import NormalizeConfig
from busylamp.bridge.service import BridgeService
from busylamp.esl.connection import EslTarget
from busylamp.esl.simulator import FreeSwitchSimulator
from tests.node_util import running_node, settled, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp

pytestmark = pytest.mark.sipp
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
DOMAIN = "example.com"


@contextmanager
def bridge_to(node, sim_address, bus: MemoryBus, bridge_id: str = "bridge-1"):
    host, port = sim_address
    service = BridgeService(
        [EslTarget(host, port, "ClueCon")], bus, NormalizeConfig(), bridge_id=bridge_id,
        esl_options={"backoff_initial": 0.05, "backoff_max": 0.2},
    )
    service.start()
    try:
        wait_until(lambda: service.clients[0].state == "connected", message="ESL connected")
        yield service
    finally:
        service.stop()


@contextmanager
def office():
    sim = FreeSwitchSimulator(domain=DOMAIN)
    address = sim.start()
    try:
        with running_node() as node:
            bus = MemoryBus()
            bus.subscribe(node.on_bus_message)
            node._control_sink = bus.publish_control
            yield sim, address, node, bus
    finally:
        sim.stop()


def dialog_states(notify) -> list[str]:
    root = ET.fromstring(notify.body)
    return [d.find("d:state", NS).text for d in root.findall("d:dialog", NS)]


def record_state(node, presentity: str) -> list[str]:
    return [r.data.get("State") for r in node.state.records("dialog", presentity)]


def test_call_lights_callee_lamp_early_confirmed_terminated(tmp_path):
    with office() as (sim, address, node, bus), bridge_to(node, address, bus):
        presentity = f"1002@{DOMAIN}"
        watcher = Watcher(presentity).subscribe().notify(count=4).unsubscribe().notify()
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "s")
        wait_until(lambda: len(node.engine.subscriptions) == 1 and settled(node, presentity))
        call = sim.originate("1001", "1002")
        wait_until(lambda: record_state(node, presentity) == ["early"] and settled(node, presentity))
        sim.answer(call)
        wait_until(lambda: record_state(node, presentity) == ["confirmed"]
                   and settled(node, presentity))
        sim.hangup(call)
        assert sipp.wait() == 0, sipp.errors()
        seen = [dialog_states(n) for n in sipp.received("NOTIFY")]
        assert seen[:4] == [[], ["early"], ["confirmed"], ["terminated"]]
        ringing = ET.fromstring(sipp.received("NOTIFY")[1].body).find("d:dialog", NS)
        assert ringing.get("direction") == "recipient"
        # BLF pickup: the ringing dialog's remote target is FreeSWITCH's intercept extension
        target = ringing.find("d:remote/d:target", NS).get("uri")
        assert target.startswith("sip:**1002@")


def test_voicemail_lights_message_waiting(tmp_path):
    with office() as (sim, address, node, bus), bridge_to(node, address, bus):
        presentity = f"1004@{DOMAIN}"
        sim.leave_voicemail("1004", new=0, saved=0)  # the mailbox exists, nothing waiting
        wait_until(lambda: node.state.records("message-summary", presentity))
        watcher = Watcher(presentity, event="message-summary",
                          accept="application/simple-message-summary")
        watcher.subscribe().notify(count=2).unsubscribe().notify()
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "s")
        wait_until(lambda: len(node.engine.subscriptions) == 1
                   and settled(node, presentity, "message-summary"))
        sim.leave_voicemail("1004", new=2, saved=1)
        assert sipp.wait() == 0, sipp.errors()
        bodies = [n.body for n in sipp.received("NOTIFY")]
        assert bodies[0].startswith("Messages-Waiting: no")
        assert bodies[1].startswith("Messages-Waiting: yes")
        assert "Voice-Message: 2/1" in bodies[1]


def test_call_that_ended_while_the_bridge_was_down_is_terminated_by_resync(tmp_path):
    """The bridge process restarts (new epoch) and the call ended meanwhile: the snapshot
    from `show channels` turns the lamp off."""
    with office() as (sim, address, node, bus):
        presentity = f"1002@{DOMAIN}"
        with bridge_to(node, address, bus, bridge_id="bridge-a"):
            call = sim.originate("1001", "1002")
            sim.answer(call)
            wait_until(lambda: record_state(node, presentity) == ["confirmed"])
        sim.hangup(call)  # nobody listening
        assert record_state(node, presentity) == ["confirmed"]
        watcher = Watcher(presentity).subscribe().notify(count=2).unsubscribe().notify()
        sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node), tmp_path / "s")
        wait_until(lambda: len(node.engine.subscriptions) == 1 and settled(node, presentity))
        with bridge_to(node, address, bus, bridge_id="bridge-b"):
            assert sipp.wait() == 0, sipp.errors()
        seen = [dialog_states(n) for n in sipp.received("NOTIFY")]
        assert seen[0] == ["confirmed"]
        assert seen[1] == ["terminated"]


def test_call_started_while_disconnected_is_published_by_resync(tmp_path):
    with office() as (sim, address, node, bus):
        presentity = f"1002@{DOMAIN}"
        with bridge_to(node, address, bus) as service:
            sim.drop_connections()
            wait_until(lambda: service.clients[0].state != "connected", timeout=5)
            call = sim.originate("1001", "1002")
            sim.answer(call)
            wait_until(lambda: service.clients[0].state == "connected", timeout=10)
            wait_until(lambda: record_state(node, presentity) == ["confirmed"], timeout=10)
            sim.hangup(call)
            wait_until(lambda: record_state(node, presentity) in ([], ["terminated"]))


def test_warm_start_by_bridge_resync_fills_a_new_node():
    """A node that starts with no peer asks the bridges over the bus; their snapshot arrives
    (buffered during the warm-up) and the node serves the call state before accepting."""
    with office() as (sim, address, node, bus), bridge_to(node, address, bus):
        presentity = f"1002@{DOMAIN}"
        call = sim.originate("1001", "1002")
        sim.answer(call)
        wait_until(lambda: record_state(node, presentity) == ["confirmed"])
        from tests.node_util import running_node as second_node

        with second_node() as fresh:
            fresh._control_sink = bus.publish_control
            fresh.prepare_warm_start()
            bus.subscribe(fresh.on_bus_message)
            report = fresh.warm_start([], resync=True, resync_wait=1.0)
            assert report["buffered"] >= 1
            assert fresh.ready and fresh.engine.accepting
            assert record_state(fresh, presentity) == ["confirmed"]


def test_bridge_counters_appear_in_the_node_metrics():
    from busylamp.app.metrics import bridge_metrics

    with office() as (sim, address, node, bus), bridge_to(node, address, bus) as service:
        node.extra_metrics.append(bridge_metrics(service))
        call = sim.originate("1001", "1002")
        sim.hangup(call)
        wait_until(lambda: service.counters["published"] >= 4)
        text = node.metrics_text()
    host, port = address
    assert f'busylamp_esl_connected{{server="{host}:{port}"}} 1' in text
    assert "busylamp_bridge_events_total" in text
    assert 'busylamp_bridge_updates_published_total{kind="event"}' in text
