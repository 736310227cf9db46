"""What busylamp relies on in its pinned dependencies is still there (fails on a breaking release).

pynsq is used from bridge/pynsq_adapter.py only; these are the names and signatures it calls,
plus the one wiring it depends on: ``Writer.connect_to_nsqd`` routing a connection's ready/close
events to the two methods ``ObservedWriter`` overrides.  greenswitch is used from
esl/greenswitch_tail.py only (``busylamp tail --esl``): the public ``InboundESL`` calls and
attributes it relies on, and the behaviour it builds on, checked against the simulator.
"""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import re

import gevent
import greenswitch
import greenswitch.esl
import nsq
import pytest

from busylamp.esl.simulator import FreeSwitchSimulator

ROOT = pathlib.Path(__file__).resolve().parents[2]


def params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_pynsq_writer_api() -> None:
    assert params(nsq.Writer.__init__)[:3] == ["self", "nsqd_tcp_addresses", "reconnect_interval"]
    assert params(nsq.Writer.mpub) == ["self", "topic", "msg", "callback"]
    for name in ("_on_connection_ready", "_on_connection_close"):
        assert params(getattr(nsq.Writer, name)) == ["self", "conn", "kwargs"]
    source = inspect.getsource(nsq.Writer.connect_to_nsqd)
    assert re.search(r"\.on\(['\"]ready['\"], self\._on_connection_ready\)", source)
    assert re.search(r"\.on\(['\"]close['\"], self\._on_connection_close\)", source)
    assert callable(nsq.AsyncConn.connected) and callable(nsq.AsyncConn.close)
    assert issubclass(nsq.Error, Exception)


def test_pynsq_reader_api() -> None:
    wanted = {"message_handler", "topic", "channel", "nsqd_tcp_addresses",
              "lookupd_http_addresses", "max_in_flight", "lookupd_poll_interval",
              "lookupd_poll_jitter", "max_tries"}
    assert wanted <= set(params(nsq.Reader.__init__))
    assert params(nsq.Reader.connect_to_nsqd) == ["self", "host", "port"]
    assert "return conn" in inspect.getsource(nsq.Reader.connect_to_nsqd)
    assert params(nsq.AsyncConn.on)[:3] == ["self", "name", "callback"]
    assert callable(nsq.Reader.close)


def test_pynsq_instance_attributes() -> None:
    loop = asyncio.new_event_loop()

    async def build() -> tuple[object, object]:
        writer = nsq.Writer(["127.0.0.1:1"], reconnect_interval=1.0)
        reader = nsq.Reader(message_handler=lambda m: True, topic="t", channel="c",
                            nsqd_tcp_addresses=["127.0.0.1:1"], max_in_flight=1)
        return writer, reader

    try:
        writer, reader = loop.run_until_complete(build())
    finally:
        loop.close()
    for name in ("conns", "reconnect_interval", "io_loop"):
        assert hasattr(writer, name), name
    for name in ("conns", "connection_attempts", "nsqd_tcp_addresses", "io_loop", "topic",
                 "channel"):
        assert hasattr(reader, name), name


def test_greenswitch_inbound_api() -> None:
    inbound = greenswitch.InboundESL
    assert params(inbound.__init__) == ["self", "host", "port", "password", "timeout"]
    assert params(inbound.register_handle) == ["self", "name", "handler"]
    assert params(inbound.connect) == ["self"]
    assert params(inbound.send) == ["self", "data"]
    assert params(inbound.stop) == ["self"]
    assert issubclass(greenswitch.esl.NotConnectedError, Exception)
    assert params(greenswitch.esl.ESLEvent.__init__) == ["self", "data"]
    assert greenswitch.InboundESL("127.0.0.1", 1, "pw", timeout=1).connected is False


def test_greenswitch_inbound_behaviour_the_tail_adapter_relies_on() -> None:
    """Handlers by Event-Name and for DISCONNECT, decoded headers, ValueError for a wrong
    password, and the ``connected``/``sock``/``sock_file`` attributes."""
    simulator = FreeSwitchSimulator(password="pw", heartbeat_interval=None)
    host, port = simulator.start()
    try:
        with gevent.Timeout(10):
            wrong = greenswitch.InboundESL(host, port, "nope", timeout=2)
            with pytest.raises(ValueError):
                wrong.connect()
            wrong.sock.close()

            conn = greenswitch.InboundESL(host, port, "pw", timeout=2)
            seen: list[dict[str, str]] = []
            gone: list[dict[str, str]] = []
            conn.register_handle("CHANNEL_CALLSTATE", lambda event: seen.append(event.headers))
            conn.register_handle("DISCONNECT", lambda event: gone.append(event.headers))
            conn.connect()
            assert conn.connected is True and conn.sock is not None and conn.sock_file is not None
            reply = conn.send("event plain CHANNEL_CALLSTATE")
            assert reply.headers["Reply-Text"].startswith("+OK")
            simulator.originate("100", "200")
            while not seen:
                gevent.sleep(0.01)
            assert seen[0]["Event-Name"] == "CHANNEL_CALLSTATE"
            # percent-decoded: sent as sofia%2Finternal%2F100%40...
            assert seen[0]["Channel-Name"].startswith("sofia/internal/100@")
            conn.stop()
            assert conn.connected is False and gone  # exit answered with a disconnect notice
    finally:
        simulator.stop()


def test_only_the_adapters_import_pynsq_and_greenswitch() -> None:
    importers = {}
    for path in ROOT.glob("**/*.py"):
        parts = set(path.relative_to(ROOT).parts)
        # not ours to check: the venv, and build folders (bench/build holds baseline exports)
        if parts & {".venv", "build"} or path.name == "test_dependency_api.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import nsq|from nsq)\b", text, re.MULTILINE):
            importers.setdefault("nsq", []).append(path.relative_to(ROOT).as_posix())
        if re.search(r"^\s*(import greenswitch|from greenswitch)\b", text, re.MULTILINE):
            importers.setdefault("greenswitch", []).append(path.relative_to(ROOT).as_posix())
    assert importers.get("nsq") == ["bridge/pynsq_adapter.py"]
    assert importers.get("greenswitch") == ["esl/greenswitch_tail.py"]


def test_pins_are_compatible_release() -> None:
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert re.search(r"^\s*greenswitch~=\d", setup, re.MULTILINE)
    assert re.search(r"^\s*pynsq~=\d", setup, re.MULTILINE)
