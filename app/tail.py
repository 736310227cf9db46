"""`busylamp tail` wiring: the update sources it follows, each handing every update to a `show`
callback that returns True to stop.

* :func:`follow_esl`: one FreeSWITCH through greenswitch (``esl/greenswitch_tail.py``), each event
  normalized as the bridge does (``bridge/normalize.py``);
* :func:`follow_nsq`: an NSQ topic on an ephemeral channel of its own (``bridge/nsq.py``);
* :func:`follow_http`: a node's ``/tail`` NDJSON stream, read by the caller's HTTP client.

ESL and NSQ patch the process for gevent (they are long-running, greenlet-based); the HTTP tail
patches nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from urllib.parse import urlencode

import busylamp.app

TAIL_EVENTS = ("CHANNEL_CALLSTATE", "CHANNEL_PROGRESS", "PRESENCE_IN", "MESSAGE_WAITING")

# show(update, raw event headers or None) -> True to stop following
ShowUpdate = Callable[[dict, dict[str, str] | None], bool]


class TailTargetError(ValueError):
    """A --esl value greenswitch cannot connect to; the message names it and says why."""


def follow_esl(spec: str, show: ShowUpdate, *, raw: bool,
               announce: Callable[[str], None],
               skipped: Callable[[str, str], None]) -> None:
    """Follow one FreeSWITCH (`spec` = PASSWORD@HOST:PORT) until `show` says stop or Ctrl-C.

    With `raw`, `show` gets each update's event headers too and `skipped(event name, reason)`
    hears about the events that normalize to no update (HEARTBEATs aside). `announce` gets the
    one "following ..." line once the target is known good.
    """
    busylamp.app.patch_gevent()
    from busylamp.bridge.normalize import NormalizeConfig, normalize
    from busylamp.esl.greenswitch_tail import GreenswitchTail, parse_target

    try:
        target = parse_target(spec)
    except ValueError as err:
        raise TailTargetError(f'invalid --esl "{spec}": {err}') from None
    config = NormalizeConfig(domain_default=None)

    def on_event(name: str, headers: dict[str, str]) -> None:
        result = normalize(name, headers, config)
        if not result.updates and raw and name != "HEARTBEAT":
            skipped(name, str(result.skipped))
        for update in result.updates:
            if show(update, headers if raw else None):
                tail.stop()
                return

    tail = GreenswitchTail(target, TAIL_EVENTS, on_event)
    announce(f"following {target} (Ctrl-C to stop)")
    with _bare_warnings(), contextlib.suppress(KeyboardInterrupt):
        tail.run()


@contextlib.contextmanager
def _bare_warnings() -> Iterator[None]:
    """WARNING and up to stderr as bare lines, as Python prints them with no logging set up.

    A root handler of our own also stops greenswitch's root-logger calls (``logging.debug``)
    from running ``basicConfig()`` and changing how our lines look.  Kept as is when logging is
    already set up (tests).
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def follow_nsq(nsqd: Sequence[str], lookupd: Sequence[str], topic: str, show: ShowUpdate, *,
               announce: Callable[[str], None]) -> None:
    """Follow an NSQ topic (nsqd TCP addresses and/or nsqlookupd HTTP ones) on an ephemeral
    channel of this process until `show` says stop or Ctrl-C; a message that carries
    ``Updates`` (a batch) is shown update by update."""
    busylamp.app.patch_gevent()
    import gevent.event

    from busylamp.bridge.nsq import NsqConsumer, NsqLoop

    done = gevent.event.Event()

    def on_message(message: dict) -> None:
        for update in message.get("Updates", [message]) if isinstance(message, dict) else []:
            if show(update, None):
                done.set()
                return

    loop = NsqLoop()
    lookupd_http = [u if "://" in u else f"http://{u}" for u in lookupd]
    channel = f"busylamp-tail-{os.getpid()}#ephemeral"
    consumer = NsqConsumer(loop, topic, channel, on_message, nsqd_tcp=list(nsqd),
                           lookupd_http=lookupd_http)
    consumer.start()
    announce(f"following NSQ topic {topic} on channel {channel} (Ctrl-C to stop)")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    finally:
        consumer.close()
        loop.stop()


def _tail_path(presentity: str | None, package: str | None, call_id: str | None) -> str:
    """The node's ``/tail`` path, filtered on the node's side too."""
    query = urlencode({k: v for k, v in (("presentity", presentity), ("package", package),
                                         ("call_id", call_id)) if v})
    return "/tail" + (f"?{query}" if query else "")


def follow_http(stream: Callable[[str], Iterable[dict]], show: ShowUpdate, *,
                presentity: str | None = None, package: str | None = None,
                call_id: str | None = None) -> bool:
    """Follow a node's ``/tail`` through `stream` (path → NDJSON objects: the caller's HTTP
    client); True when `show` said stop, False when the node closed the stream."""
    updates = stream(_tail_path(presentity, package, call_id))
    return any(show(update, None) for update in updates)
