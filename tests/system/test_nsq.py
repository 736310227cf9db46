"""busylamp.bridge.nsq against the real nsqd and nsqlookupd of the kit (tests/nsq_kit.py), one pair per test."""

from __future__ import annotations

import uuid

import gevent
import pytest
import tornado.ioloop
import ujson

from busylamp.bridge.nsq import NsqBus, NsqConsumer, NsqPublisher
from tests.polling import wait_until


def wait_for(predicate, timeout: float = 8.0, message: str = ""):
    return wait_until(predicate, timeout, interval=0.01, message=message)


def topic_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def bodies(got: list[dict], key: str = "n") -> list:
    return [m[key] for m in got]


@pytest.mark.parametrize("via", ["nsqd", "lookupd"])
def test_publish_and_consume_in_order(nsq, loop, via):
    topic, got = topic_name(), []
    publisher = NsqPublisher(loop, [nsq.tcp_address], topic)
    publisher.start()
    for i in range(50):
        publisher.publish({"Event-Name": "update", "Sequence": i})
    wait_for(lambda: publisher.published == 50, message="nsqd did not take the 50 messages")
    assert nsq.message_count(topic) == 50
    if via == "lookupd":
        # nsqd registered the topic with nsqlookupd: the consumer finds nsqd through it
        wait_for(lambda: nsq.lookup(topic) == [nsq.tcp_address], message="topic not in lookupd")
        addresses = {"lookupd_http": [nsq.lookupd_address]}
    else:
        addresses = {"nsqd_tcp": [nsq.tcp_address]}
    consumer = NsqConsumer(loop, topic, "bridge#ephemeral", got.append, **addresses)
    consumer.start()
    wait_for(lambda: len(got) == 50, message=f"consumed {len(got)} of 50")
    assert [m["Sequence"] for m in got] == list(range(50))
    assert publisher.published == 50 and publisher.dropped == 0
    wait_for(lambda: nsq.settled(topic), message="messages left in flight")
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


def test_buffer_while_down_then_flush_in_order(nsq, loop):
    topic, got = topic_name(), []
    # a durable channel: what the publisher flushes after the restart waits there for the reader
    consumer = NsqConsumer(loop, topic, "audit", got.append, nsqd_tcp=[nsq.tcp_address],
                           reconnect_interval=0.1)
    consumer.start()
    publisher = NsqPublisher(loop, [nsq.tcp_address], topic, max_buffer=100,
                             backoff_initial=0.05, backoff_max=0.2)
    publisher.start()
    publisher.publish({"n": -1})
    wait_for(lambda: bodies(got) == [-1], message="first message not consumed")
    nsq.stop_nsqd()
    wait_for(lambda: not publisher.connected, message="publisher did not notice the outage")
    for i in range(150):
        publisher.publish({"n": i})  # never blocks
    assert publisher.dropped == 50  # oldest dropped beyond max_buffer
    assert publisher.buffered == 100
    nsq.start_nsqd()  # same ports, same data path
    wait_for(lambda: publisher.published == 101, timeout=10,
             message=f"published {publisher.published} of 101 after the restart")
    assert publisher.buffered == 0
    wait_for(lambda: len(got) == 101, timeout=10, message=f"consumed {len(got)} of 101")
    assert bodies(got) == [-1, *range(50, 150)]
    assert nsq.message_count(topic) == 100  # counted since this nsqd process started
    consumer.close()
    publisher.close()


def test_malformed_messages_are_finished_and_counted(nsq, loop):
    topic, got = topic_name(), []
    channel = "engine#ephemeral"

    def handler(message):
        if message.get("reject"):
            raise ValueError("bad update")
        got.append(message)

    publisher = NsqPublisher(loop, [nsq.tcp_address], topic)
    publisher.start()
    consumer = NsqConsumer(loop, topic, channel, handler, nsqd_tcp=[nsq.tcp_address])
    consumer.start()
    wait_for(lambda: consumer.connections == 1 and nsq.clients(topic, channel) == 1)
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", b'"a string"'):
        nsq.pub(topic, body)  # raw bodies, as any producer could publish them
    publisher.publish({"reject": True})
    publisher.publish({"ok": 1})
    wait_for(lambda: got == [{"ok": 1}], message=f"got {got}")
    assert consumer.malformed == 5
    assert consumer.errors == 0
    # nsqd's own counts: all six delivered once and FIN'd, none requeued, nothing left
    wait_for(lambda: nsq.channel(topic, channel)["in_flight_count"] == 0)
    stats = nsq.channel(topic, channel)
    assert stats["message_count"] == 6
    assert stats["requeue_count"] == 0 and stats["timeout_count"] == 0
    assert stats["depth"] == 0
    consumer.close()
    publisher.close()


def test_handler_failure_requeues_with_a_delay(nsq, loop):
    topic, attempts = topic_name(), []
    channel = "engine#ephemeral"

    def failing(message):
        attempts.append(message)
        raise RuntimeError("handler bug")

    consumer = NsqConsumer(loop, topic, channel, failing, nsqd_tcp=[nsq.tcp_address])
    consumer.start()
    wait_for(lambda: nsq.clients(topic, channel) == 1)
    nsq.pub(topic, ujson.dumps({"n": 1}).encode())
    # REQ with pynsq's backoff delay: nsqd holds the message as deferred, not in flight
    wait_for(lambda: (nsq.channel(topic, channel) or {}).get("deferred_count") == 1,
             message=f"channel {nsq.channel(topic, channel)}")
    stats = nsq.channel(topic, channel)
    assert stats["requeue_count"] == 1 and stats["in_flight_count"] == 0
    assert consumer.errors == 1 and len(attempts) == 1
    consumer.close()


@pytest.mark.parametrize("via", ["nsqd", "lookupd"])
def test_consumer_and_publisher_survive_nsqd_restart(nsq, loop, via):
    topic, got = topic_name(), []
    publisher = NsqPublisher(loop, [nsq.tcp_address], topic, backoff_initial=0.05,
                             backoff_max=0.2)
    publisher.start()
    publisher.publish({"n": 0})
    wait_for(lambda: publisher.published == 1)
    if via == "nsqd":
        addresses = {"nsqd_tcp": [nsq.tcp_address]}
    else:
        wait_for(lambda: nsq.lookup(topic), message="topic not in lookupd")
        addresses = {"lookupd_http": [nsq.lookupd_address]}
    consumer = NsqConsumer(loop, topic, "engine#ephemeral", got.append, reconnect_interval=0.1,
                           lookupd_poll_interval=1, **addresses)
    consumer.start()
    wait_for(lambda: bodies(got) == [0])
    nsq.restart_nsqd(downtime=0.2)
    # the ephemeral channel died with nsqd: what is published before the consumer is back waits
    # in the topic (a topic without channels keeps its messages) and arrives when it resubscribes
    for n in (1, 2, 3):
        publisher.publish({"n": n})
    wait_for(lambda: bodies(got) == [0, 1, 2, 3], timeout=10, message=f"got {bodies(got)}")
    wait_for(lambda: consumer.connections == 1)
    publisher.publish({"n": 4})
    wait_for(lambda: bodies(got) == [0, 1, 2, 3, 4], message=f"got {bodies(got)}")
    consumer.close()
    publisher.close()


def test_nsq_bus_updates_and_control_topics(nsq, loop):
    topic = topic_name()
    bus = NsqBus(loop, [nsq.tcp_address], topic, "node1#ephemeral")
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
    assert nsq.message_count(topic) == 1 and nsq.message_count(bus.control_topic) == 1
    bus.close()


def test_message_over_max_msg_size_is_refused_by_nsqd(nsq, loop):
    """nsqd refuses a body over --max-msg-size (1 MiB by default) and closes the connection:
    the publisher must not resend it forever, nor lose the messages behind it."""
    topic, got = topic_name(), []
    consumer = NsqConsumer(loop, topic, "engine#ephemeral", got.append,
                           nsqd_tcp=[nsq.tcp_address])
    consumer.start()
    wait_for(lambda: consumer.connections == 1)
    publisher = NsqPublisher(loop, [nsq.tcp_address], topic, backoff_initial=0.05,
                             backoff_max=0.2)
    publisher.start()
    publisher.publish({"n": 1})
    publisher.publish({"n": 2, "pad": "x" * (1 << 20)})
    publisher.publish({"n": 3})
    wait_for(lambda: bodies(got) == [1, 3], timeout=10, message=f"got {bodies(got)}")
    assert publisher.refused == 1


def test_batch_refused_by_nsqd_is_counted_not_resent(nsq_kit, tmp_path, loop):
    """nsqd started with a smaller --max-msg-size than the publisher assumes: it answers the MPUB
    with E_BAD_MESSAGE and closes the connection. The publisher counts the batch as refused,
    reconnects and goes on with what follows."""
    from tests.nsq_kit import NsqCluster

    small = NsqCluster(nsq_kit, tmp_path / "small", extra_args=("--max-msg-size=1000",)).start()
    try:
        topic, got = topic_name(), []
        consumer = NsqConsumer(loop, topic, "engine#ephemeral", got.append,
                               nsqd_tcp=[small.tcp_address])
        consumer.start()
        wait_for(lambda: consumer.connections == 1)
        publisher = NsqPublisher(loop, [small.tcp_address], topic, backoff_initial=0.05,
                                 backoff_max=0.2)
        publisher.start()
        publisher.publish({"n": 1})
        wait_for(lambda: bodies(got) == [1])
        publisher.publish({"n": 2, "pad": "x" * 2000})
        wait_for(lambda: publisher.refused == 1, message="refusal not counted")
        publisher.publish({"n": 3})
        wait_for(lambda: bodies(got) == [1, 3], timeout=10, message=f"got {bodies(got)}")
        assert publisher.buffered == 0 and small.message_count(topic) == 2
        consumer.close()
        publisher.close()
    finally:
        small.stop()


def test_output_buffer_options_reach_nsqd_and_close_is_no_outage(nsq, loop, caplog):
    """nsqd accepts the consumer's output buffer (IDENTIFY: it refuses out-of-range values and the
    consumer would get nothing), order is kept; our own close logs no outage."""
    topic, got = topic_name(), []
    publisher = NsqPublisher(loop, [nsq.tcp_address], topic)
    publisher.start()
    for i in range(200):
        publisher.publish({"n": i})
    wait_for(lambda: publisher.published == 200, message="nsqd did not take the 200 messages")
    consumer = NsqConsumer(loop, topic, "bridge#ephemeral", got.append,
                           nsqd_tcp=[nsq.tcp_address], output_buffer_size=65536,
                           output_buffer_timeout=50)
    consumer.start()
    wait_for(lambda: len(got) == 200, message=f"consumed {len(got)} of 200")
    assert bodies(got) == list(range(200))
    wait_for(lambda: nsq.settled(topic), message="messages left in flight")
    caplog.clear()
    consumer.close()
    publisher.close()
    wait_for(lambda: not publisher.connected, message="publisher still connected")
    assert "unreachable" not in caplog.text


def test_a_node_asks_nsqd_to_hold_its_updates_50_ms_at_most(nsq):
    """nsqd's default output buffer timeout (250 ms) would delay a lone update by up to that:
    a node's consumer asks for --nsq-output-buffer-timeout (50 ms), and nsqd takes it (it
    refuses an IDENTIFY it cannot honour, and then no connection comes up)."""
    from busylamp.app.roles import make_bus
    from busylamp.presence.config import load_config

    topic = f"obt_{uuid.uuid4().hex[:12]}"
    config = load_config({"role": "presence", "bus": "nsq", "nsqd": [nsq.tcp_address],
                          "topic": topic}, hostname="obt")
    bus = make_bus(config)
    got: list[dict] = []
    try:
        bus.subscribe(got.append)
        (consumer,) = bus.consumers
        assert consumer.output_buffer == {"output_buffer_timeout": 50}
        wait_until(lambda: consumer.connections >= 1, timeout=8,
                   message="nsqd did not take the consumer's IDENTIFY")
        bus.publish({"Event-Name": "update", "Call-ID": "lone"})
        wait_until(lambda: got, timeout=8, message="the update never arrived")
        assert got[0]["Call-ID"] == "lone"
    finally:
        bus.close()
        bus.loop.stop()
