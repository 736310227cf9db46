"""A lagging node on an ephemeral channel loses updates (nsqd drops what exceeds --mem-queue-size);
it must notice the hole in the bridge's sequence, count it, and ask the bridges to resync.

Against the real nsqd of the kit, started with a 20-message memory queue."""

from __future__ import annotations

import gevent.event
import ujson

from busylamp.bridge.nsq import NsqBus, NsqLoop
from tests.node_util import running_node
from tests.nsq_kit import NsqCluster
from tests.polling import wait_until

TOPIC = "presence"
CHANNEL = "node-a#ephemeral"
MEM_QUEUE = 20
BURST = 100


def update(seq: int) -> bytes:
    user = str(1000 + seq % 50)
    return ujson.dumps({
        "Event-Name": "update", "Event-Package": "dialog", "From": f"sip:{user}@example.com",
        "From-User": user, "From-Realm": "example.com", "To": "sip:9@example.com",
        "Call-ID": f"call-{seq}", "State": "confirmed", "Expires": 600,
        "Bridge-ID": "bridge-1", "Bridge-Epoch": 1, "Sequence": seq,
    }).encode()


def test_overflowed_ephemeral_channel_is_detected_and_answered_with_a_resync(nsq_kit, tmp_path):
    nsq = NsqCluster(nsq_kit, tmp_path / "nsq", mem_queue_size=MEM_QUEUE).start()
    loop = NsqLoop()
    loop.start()
    bus = NsqBus(loop, [nsq.tcp_address], TOPIC, CHANNEL, max_in_flight=1,
                 reconnect_interval=0.2)
    release = gevent.event.Event()
    control: list[dict] = []
    try:
        with running_node() as node:
            node._control_sink = bus.publish_control

            def lagging(message: dict) -> None:
                release.wait()  # the node is busy: the channel fills up behind it
                node.on_bus_message(message)

            bus.subscribe(lagging)
            bus.subscribe_control(control.append)
            wait_until(lambda: nsq.clients(TOPIC, CHANNEL) == 1, message="consumer not there")
            nsq.pub(TOPIC, update(1))
            wait_until(lambda: nsq.channel(TOPIC, CHANNEL)["in_flight_count"] == 1,
                       message="first message not delivered")
            # one /pub each: the topic hands every message on at once, in order (an MPUB burst
            # would overflow the topic's own memory queue to disk, and nsqd then mixes the two)
            for seq in range(2, BURST + 1):
                nsq.pub(TOPIC, update(seq))
            wait_until(lambda: nsq.message_count(TOPIC) == BURST and nsq.topic(TOPIC)["depth"] == 0)
            # nsqd kept what fits in the channel's memory queue; the rest is gone, silently
            assert nsq.depth(TOPIC, CHANNEL) == MEM_QUEUE
            release.set()
            wait_until(lambda: nsq.depth(TOPIC, CHANNEL) == 0
                       and nsq.channel(TOPIC, CHANNEL)["in_flight_count"] == 0, timeout=10,
                       message="the node did not drain what the channel kept")
            kept = bus.consumers[0].received
            lost = BURST - kept
            assert kept == 1 + MEM_QUEUE and lost > 0
            assert node.state.stats.gaps == 0  # a hole shows only when a later update arrives
            nsq.pub(TOPIC, update(BURST + 1))  # the bridge goes on publishing
            wait_until(lambda: node.state.stats.gaps >= lost, timeout=10,
                       message="the node did not count the lost updates")
            assert node.state.stats.gaps == lost
            assert 'busylamp_update_gaps_total ' + str(lost) in node.metrics_text()
            wait_until(lambda: any(m.get("Event-Name") == "resync" for m in control),
                       timeout=10, message="no resync request on the control topic")
            request = next(m for m in control if m.get("Event-Name") == "resync")
            assert request["Bridge-ID"] == "bridge-1"
    finally:
        release.set()
        bus.close()
        loop.stop()
        nsq.stop()
