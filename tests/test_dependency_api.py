"""What busylamp relies on in its pinned dependencies is still there (fails on a breaking release).

pynsq is used from bridge/pynsq_adapter.py only; these are the names and signatures it calls,
plus the one wiring it depends on: ``Writer.connect_to_nsqd`` routing a connection's ready/close
events to the two methods ``ObservedWriter`` overrides.  greenswitch is not imported at all
(README "Dependencies" says why): esl/ must not start leaning on it again.
"""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import re

import nsq

ROOT = pathlib.Path(__file__).resolve().parent.parent


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


def test_only_the_adapter_imports_pynsq_and_nothing_imports_greenswitch() -> None:
    importers = {}
    for path in ROOT.glob("**/*.py"):
        if ".venv" in path.parts or path.name == "test_dependency_api.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import nsq|from nsq)\b", text, re.MULTILINE):
            importers.setdefault("nsq", []).append(path.relative_to(ROOT).as_posix())
        if re.search(r"^\s*(import greenswitch|from greenswitch)\b", text, re.MULTILINE):
            importers.setdefault("greenswitch", []).append(path.relative_to(ROOT).as_posix())
    assert importers.get("nsq") == ["bridge/pynsq_adapter.py"]
    assert "greenswitch" not in importers


def test_pins_are_compatible_release() -> None:
    setup = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert re.search(r"^\s*greenswitch~=\d", setup, re.MULTILINE)
    assert re.search(r"^\s*pynsq~=\d", setup, re.MULTILINE)
