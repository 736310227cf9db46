"""bridge.nsq against the NSQ double (or a real nsqd via NSQD_TCP_ADDRESS/NSQLOOKUPD_HTTP_ADDRESS)."""

from __future__ import annotations

import os
import uuid

import gevent
import pytest
import tornado.ioloop

from bridge.nsq import NsqBus, NsqConsumer, NsqLoop, NsqPublisher
from tests.sipp_util import wait_until

REAL = bool(os.environ.get("NSQD_TCP_ADDRESS"))
needs_double = pytest.mark.skipif(
    REAL, reason="restarts or overflows the broker: only with the double (starting NSQD_BIN is not implemented)")


def wait_for(predicate, timeout: float = 8.0):
    return wait_until(predicate, timeout, interval=0.01)


@pytest.fixture
def loop():
    nsq_loop = NsqLoop()
    nsq_loop.start()
    yield nsq_loop
    nsq_loop.stop()


def topic_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def test_publish_and_consume_in_order(nsq_endpoints, loop):
    nsqd, _, _ = nsq_endpoints
    topic, got = topic_name(), []
    publisher = NsqPublisher(loop, [nsqd], topic)
    publisher.start()
    for i in range(50):
        publisher.publish({"Event-Name": "update", "Sequence": i})
    consumer = NsqConsumer(loop, topic, "bridge#ephemeral", got.append, nsqd_tcp=[nsqd])
    consumer.start()
    wait_for(lambda: len(got) == 50)
    assert [m["Sequence"] for m in got] == list(range(50))
    assert publisher.published == 50 and publisher.dropped == 0
    consumer.close()
    publisher.close()


def test_tornado_loop_and_greenlets_progress_together(loop):
    ticks = {"tornado": 0, "gevent": 0}

    def tornado_tick():
        ticks["tornado"] += 1

    def gevent_ticker():
        while True:
            ticks["gevent"] += 1
            gevent.sleep(0.005)

    periodic = loop.run(lambda: tornado.ioloop.PeriodicCallback(tornado_tick, 5))
    loop.call(periodic.start)
    worker = gevent.spawn(gevent_ticker)
    try:
        wait_for(lambda: ticks["tornado"] >= 20 and ticks["gevent"] >= 20, timeout=3)
    finally:
        loop.call(periodic.stop)
        worker.kill()


@needs_double
def test_buffer_while_down_then_flush_in_order(nsq_endpoints, loop):
    nsqd, _, double = nsq_endpoints
    topic = topic_name()
    publisher = NsqPublisher(loop, [nsqd], topic, max_buffer=100, backoff_initial=0.05, backoff_max=0.2)
    publisher.start()
    publisher.publish({"n": -1})
    wait_for(lambda: double.published(topic))
    double.stop_tcp()
    wait_for(lambda: not publisher.connected)
    for i in range(150):
        publisher.publish({"n": i})  # never blocks
    assert publisher.dropped == 50  # oldest dropped beyond max_buffer
    double.start()
    wait_for(lambda: len(double.published(topic)) == 101)
    assert double.published(topic)[1:] == [b'{"n":%d}' % i for i in range(50, 150)]
    assert publisher.buffered == 0
    publisher.close()


def test_malformed_messages_are_finished_and_counted(nsq_endpoints, loop):
    nsqd, _, double = nsq_endpoints
    topic, got = topic_name(), []

    def handler(message):
        if message.get("reject"):
            raise ValueError("bad update")
        got.append(message)

    publisher = NsqPublisher(loop, [nsqd], topic)
    publisher.start()
    consumer = NsqConsumer(loop, topic, "engine#ephemeral", handler, nsqd_tcp=[nsqd])
    consumer.start()
    wait_for(lambda: consumer.connections == 1)
    raw = [b"{not json", b"[1, 2]"] if double is not None else []  # raw bytes: double only
    for body in raw:
        double.inject(topic, body)
    publisher.publish({"reject": True})
    publisher.publish({"ok": 1})
    wait_for(lambda: got == [{"ok": 1}])
    assert consumer.malformed == len(raw) + 1
    if double is not None:
        wait_for(lambda: double.in_flight() == 0)
        assert double.channel_depth(topic, "engine#ephemeral") == 0
        assert b"REQ" not in double.commands
    consumer.close()
    publisher.close()


@needs_double
@pytest.mark.parametrize("via", ["nsqd", "lookupd"])
def test_consumer_survives_broker_restart(nsq_endpoints, loop, via):
    nsqd, lookupd, double = nsq_endpoints
    topic, got = topic_name(), []
    publisher = NsqPublisher(loop, [nsqd], topic, backoff_initial=0.05, backoff_max=0.2)
    publisher.start()
    publisher.publish({"n": 0})
    wait_for(lambda: double.published(topic))
    addresses = {"nsqd_tcp": [nsqd]} if via == "nsqd" else {"lookupd_http": [lookupd]}
    consumer = NsqConsumer(loop, topic, "engine#ephemeral", got.append, reconnect_interval=0.1,
                           lookupd_poll_interval=1, **addresses)
    consumer.start()
    wait_for(lambda: got == [{"n": 0}])
    double.restart(downtime=0.2)
    publisher.publish({"n": 1})
    wait_for(lambda: got == [{"n": 0}, {"n": 1}])
    consumer.close()
    publisher.close()


def test_nsq_bus_updates_and_control_topics(nsq_endpoints, loop):
    nsqd, _, _ = nsq_endpoints
    topic = topic_name()
    bus = NsqBus(loop, [nsqd], topic, "node1#ephemeral")
    updates, control = [], []
    bus.subscribe(updates.append)
    bus.subscribe_control(control.append)
    wait_for(lambda: all(c.connections for c in bus.consumers))
    bus.publish({"Event-Name": "update", "Call-ID": "c1"})
    bus.publish_control({"Event-Name": "resync", "Switch-ID": "*"})
    wait_for(lambda: updates and control)
    assert updates == [{"Event-Name": "update", "Call-ID": "c1"}]
    assert control == [{"Event-Name": "resync", "Switch-ID": "*"}]
    assert bus.control_topic == f"{topic}.control"
    bus.close()
