"""NSQ consumer throughput beside pynsq's own ceiling, against one real nsqd.

Each measured reader gets a topic of its own, filled beforehand with the same ``updates`` dialog
updates (MPUB batches, so the producer is outside the timed window). Then, on the process's one
:class:`~busylamp.bridge.nsq.NsqLoop`:

* ``bare``: a plain pynsq Reader (``PlainReader``) whose handler does nothing; pynsq FINs each
  message. What the library itself costs: the ceiling of any consumer built on it.
* ``bare-asyncio`` (only when asked for): the same bare Reader on a stock asyncio loop in a
  thread of its own, no gevent: pynsq without the cost of sharing a loop with gevent.
* ``busylamp``: :class:`~busylamp.bridge.nsq.NsqConsumer` (ujson decode + object check) with a
  handler that validates each dict with ``parse_update``, as a node does.

A rate is the messages over the seconds from the reader's start to its last message (the
connect, IDENTIFY and SUB included: a few ms).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.workload import dialog_update

MAX_IN_FLIGHT = 2500  # RDY of both readers


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def nsqd_address(nsqd: str | None, mem_queue: int) -> Iterator[str]:
    """``nsqd`` as given, else an nsqd started from PATH or the test kit (stopped on exit)."""
    if nsqd is not None:
        yield nsqd
        return
    from tests.kits import find_nsq

    kit = find_nsq()
    binary = shutil.which("nsqd") or (str(kit.nsqd) if kit is not None else None)
    if binary is None:
        raise SystemExit("no nsqd: give --nsqd HOST:PORT, put nsqd on PATH or set TESTKIT_NSQ")
    tcp, http = _free_tcp_port(), _free_tcp_port()
    data = tempfile.mkdtemp(prefix="bench-nsqd-")
    proc = subprocess.Popen([binary, f"--tcp-address=127.0.0.1:{tcp}",
                             f"--http-address=127.0.0.1:{http}", f"--data-path={data}",
                             f"--mem-queue-size={mem_queue}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"127.0.0.1:{tcp}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def _fill(loop: Any, nsqd: str, topic: str, updates: int) -> int:
    """Publish ``updates`` dialog updates to ``topic`` (MPUB batches); the count nsqd took."""
    import gevent

    from busylamp.bridge.nsq import NsqPublisher

    publisher = NsqPublisher(loop, [nsqd], topic, max_buffer=updates + 1)
    publisher.start()
    for i in range(updates):
        publisher.publish(dialog_update(i % 1000, "confirmed", f"n{i}"))
    deadline = time.monotonic() + 120
    while publisher.published < updates and time.monotonic() < deadline:
        gevent.sleep(0.05)
    publisher.close()
    return publisher.published


def _drain(count: Callable[[], int], updates: int, timeout: float = 120.0) -> dict[str, float]:
    """Until ``count()`` reaches ``updates`` (polled from a greenlet): the wall seconds and this
    process's CPU seconds (user + system), so a wait on nsqd shows beside work here."""
    import gevent

    t0, c0 = time.perf_counter(), time.process_time()
    deadline = time.monotonic() + timeout
    while count() < updates and time.monotonic() < deadline:
        gevent.sleep(0.005)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def _bare(loop: Any, nsqd: str, topic: str, updates: int, **options: int) -> dict[str, Any]:
    from busylamp.bridge.pynsq_adapter import PlainReader

    seen = 0

    def handler(message: Any) -> bool:
        nonlocal seen
        seen += 1
        return True

    reader: list[Any] = []
    loop.call(lambda: reader.append(PlainReader(
        message_handler=handler, topic=topic, channel="bench", nsqd_tcp_addresses=[nsqd],
        max_in_flight=MAX_IN_FLIGHT, **options)))
    took = _drain(lambda: seen, updates)
    loop.run(lambda: reader[0].close())
    return {"consumed": seen, **took, "updates_per_s": seen / took["seconds"]}


def _bare_asyncio(loop: Any, nsqd: str, topic: str, updates: int,
                  **options: int) -> dict[str, Any]:
    import asyncio
    import threading

    from busylamp.bridge.pynsq_adapter import PlainReader

    out: dict[str, Any] = {}

    def run() -> None:
        aloop = asyncio.new_event_loop()
        asyncio.set_event_loop(aloop)
        seen = 0

        def handler(message: Any) -> bool:
            nonlocal seen
            seen += 1
            if seen == updates:
                out.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
                aloop.stop()
            return True

        aloop.call_later(120, aloop.stop)
        t0, c0 = time.perf_counter(), time.process_time()
        aloop.call_soon(lambda: out.setdefault("reader", PlainReader(
            message_handler=handler, topic=topic, channel="bench", nsqd_tcp_addresses=[nsqd],
            max_in_flight=MAX_IN_FLIGHT, **options)))
        aloop.run_forever()
        out["consumed"] = seen
        out.setdefault("seconds", time.perf_counter() - t0)
        out.setdefault("cpu_seconds", time.process_time() - c0)
        out.pop("reader").close()
        aloop.run_until_complete(asyncio.sleep(0.1))  # the close goes out
        aloop.close()
        asyncio.set_event_loop(None)

    thread = threading.Thread(target=run, name="bare-asyncio")
    thread.start()
    thread.join(150)  # the gevent side idles meanwhile: this thread is all the process does
    return {**out, "updates_per_s": out["consumed"] / out["seconds"]}


def _busylamp(loop: Any, nsqd: str, topic: str, updates: int, **options: int) -> dict[str, Any]:
    from busylamp.bridge.nsq import NsqConsumer
    from busylamp.presence.updates import parse_update

    applied = 0

    def on_message(message: dict) -> None:
        nonlocal applied
        parse_update(message)
        applied += 1

    consumer = NsqConsumer(loop, topic, "bench", on_message, nsqd_tcp=[nsqd],
                           max_in_flight=MAX_IN_FLIGHT, **options)
    consumer.start()
    took = _drain(lambda: applied, updates)
    consumer.close()
    return {"consumed": applied, **took, "updates_per_s": applied / took["seconds"],
            "malformed": consumer.malformed, "errors": consumer.errors}


def nsq_stage(updates: int = 50_000, nsqd: str | None = None,
              which: tuple[str, ...] = ("bare", "busylamp"),
              output_buffer_size: int | None = None,
              output_buffer_timeout: int | None = None) -> dict[str, Any]:
    """Updates/s of the bare pynsq Reader and of busylamp's consumer on one real nsqd (both with
    the same nsqd output buffer: pynsq's default unless given)."""
    options = {k: v for k, v in (("output_buffer_size", output_buffer_size),
                                 ("output_buffer_timeout", output_buffer_timeout))
               if v is not None}
    from busylamp.bridge.nsq import NsqLoop

    measure = {"bare": _bare, "bare-asyncio": _bare_asyncio, "busylamp": _busylamp}
    # pynsq logs our own closes at ERROR ("failed to unpack size" of the read they cut short)
    pynsq_log = logging.getLogger("nsq")
    level = pynsq_log.level
    pynsq_log.setLevel(logging.CRITICAL)
    out: dict[str, Any] = {"broker": "nsqd", "updates": updates, "options": options,
                           "loadavg": os.getloadavg()}
    with nsqd_address(nsqd, updates + 1) as address:
        loop = NsqLoop()
        loop.start()
        try:
            stamp = f"{os.getpid()}_{int(time.time())}"
            for name in which:
                topic = f"bench_{name}_{stamp}"
                published = _fill(loop, address, topic, updates)
                out[name] = {"published": published,
                             **measure[name](loop, address, topic, updates, **options)}
        finally:
            import gevent

            gevent.sleep(0.2)  # the closes run in the loop before it stops (and nsqd with it)
            loop.stop()
            pynsq_log.setLevel(level)
    return out
