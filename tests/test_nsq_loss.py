"""A lagging node on an ephemeral channel loses updates (nsqd drops past --mem-queue-size); it
must notice the hole in the bridge's sequence, count it, and ask the bridges to resync."""

from __future__ import annotations

import os

import gevent.event
import pytest
import ujson

from bridge.nsq import NsqBus, NsqLoop
from tests.node_util import running_node
from tests.nsqd_double import NsqdDouble
from tests.sipp_util import wait_until

TOPIC = "presence"
CHANNEL = "node-a#ephemeral"


def update(seq: int) -> bytes:
    user = str(1000 + seq % 50)
    return ujson.dumps({
        "Event-Name": "update", "Event-Package": "dialog", "From": f"sip:{user}@example.com",
        "From-User": user, "From-Realm": "example.com", "To": "sip:9@example.com",
        "Call-ID": f"call-{seq}", "State": "confirmed", "Expires": 600,
        "Bridge-ID": "bridge-1", "Bridge-Epoch": 1, "Sequence": seq,
    }).encode()


@pytest.mark.skipif(bool(os.environ.get("NSQD_TCP_ADDRESS")),
                    reason="overflowing a broker's memory queue needs the double (or NSQD_BIN)")
def test_overflowed_ephemeral_channel_is_detected_and_answered_with_a_resync():
    double = NsqdDouble(mem_queue_size=20)
    double.start()
    loop = NsqLoop()
    loop.start()
    bus = NsqBus(loop, [double.tcp_address], TOPIC, CHANNEL, max_in_flight=1,
                 reconnect_interval=0.2)
    release = gevent.event.Event()
    try:
        with running_node() as node:
            node._control_sink = bus.publish_control

            def lagging(message: dict) -> None:
                release.wait()  # the node is busy: the channel fills up behind it
                node.on_bus_message(message)

            bus.subscribe(lagging)
            double.inject(TOPIC, update(1))
            wait_until(lambda: double.in_flight() == 1, message="first message delivered")
            for seq in range(2, 101):
                double.inject(TOPIC, update(seq))
            lost = double.dropped(TOPIC, CHANNEL)
            assert lost > 0  # nsqd's behaviour for an ephemeral channel past its memory queue
            release.set()
            kept = 100 - lost
            wait_until(lambda: bus.consumers[0].received == kept, timeout=10,
                       message="the node did not drain what the channel kept")
            assert node.state.stats.gaps == 0  # a hole shows only when a later update arrives
            double.inject(TOPIC, update(101))  # the bridge goes on publishing
            wait_until(lambda: node.state.stats.gaps >= lost, timeout=10,
                       message="the node did not count the lost updates")
            assert node.state.stats.gaps == lost
            assert 'busylamp_update_gaps_total ' + str(lost) in node.metrics_text()
            wait_until(lambda: any(b"resync" in body
                                   for body in double.published(f"{TOPIC}.control")),
                       timeout=10, message="no resync request on the control topic")
            request = ujson.loads(next(b for b in double.published(f"{TOPIC}.control")
                                       if b"resync" in b))
            assert request["Event-Name"] == "resync" and request["Bridge-ID"] == "bridge-1"
    finally:
        release.set()
        bus.close()
        loop.stop()
        double.stop()
