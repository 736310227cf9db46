"""Warming up before serving: buffering the bus during a warm start from a peer
(presence/node/warmstart.py fetches it), and the ESL warm-up."""

from __future__ import annotations

import contextlib
import gc
import logging
import time

import gevent
import gevent.event

from busylamp.presence.node.warmstart import PeerError, stream_snapshot
from busylamp.presence.snapshots import parse_rows
from busylamp.presence.updates import Update, UpdateError, parse_update
from busylamp.wire import resync_request

log = logging.getLogger(__name__)


class Warming:
    """Warm start and ESL warm-up (a mixin of PresenceNode)."""

    def prepare_warm_start(self) -> None:
        """Stop accepting SUBSCRIBEs and start buffering bus messages (call before the bus runs)."""
        self.ready = False
        self.engine.accepting = False
        if self._warm_buffer is None:
            self._warm_buffer = []

    def prepare_esl_warmup(self) -> None:
        """Answer new SUBSCRIBEs 503 (Retry-After) until :meth:`finish_esl_warmup`: right after a
        start the state holds no calls yet, and an idle lamp followed by the real one ~20 ms later
        is a wrong lamp (the bridge in this process is about to send its first snapshots)."""
        self.ready = False
        self.engine.accepting = False

    def finish_esl_warmup(self, first_round: gevent.event.Event, timeout: float) -> bool:
        """Serve once ``first_round`` is set (every switch answered or failed once), at the latest
        after ``timeout`` seconds; True when the switches were heard in time."""
        started = time.monotonic()
        heard = bool(first_round.wait(timeout))
        self.engine.accepting = True
        self.ready = True
        log.info("serving SUBSCRIBEs: %s after %.2fs",
                 "every switch's first snapshot (or failed connect) in" if heard
                 else "--esl-warmup ran out", time.monotonic() - started)
        return heard

    def warm_start(
        self, peers: list[str], *, token: str | None = None, resync: bool = False,
        resync_wait: float = 3.0,
    ) -> dict:
        """Fill the state before accepting SUBSCRIBEs (see presence/node/warmstart.py for the order).

        Buffers bus messages, imports the first reachable peer's snapshot (records, then its
        bridge marks), optionally asks the bridges to resync and waits ``resync_wait`` for their
        snapshots, then applies the buffer on top and starts accepting. Returns what happened.
        """
        self.prepare_warm_start()
        report: dict = {"peer": None, "records": 0, "skipped": 0, "buffered": 0}
        started = time.monotonic()
        try:
            collecting = gc.isenabled()
            # every object the import makes is long-lived (frozen below): a collection during it
            # would only walk them again, and cost ~40% of the import's CPU at 100k records
            gc.disable()
            try:
                for peer in peers:
                    try:
                        report.update(self._import_peer(peer, token))
                        report["peer"] = peer
                        break
                    except PeerError as exc:
                        log.warning("warm start: %s; trying the next source", exc)
            finally:
                if collecting:
                    gc.enable()
            report["import_seconds"] = round(time.monotonic() - started, 3)
            if resync or report["peer"] is None and peers:
                self._on_control(resync_request(reason="warm start"))
                gevent.sleep(resync_wait)
        finally:
            buffered, self._warm_buffer = self._warm_buffer or [], None
            report["buffered"] = len(buffered)
            for message in buffered:
                with contextlib.suppress(UpdateError):  # counted as bus_malformed
                    self.on_bus_message(message)
            self.engine.accepting = True
            self.ready = True
            gc.collect(1)
            gc.freeze()  # the imported state is long-lived: keep it out of later collections
        log.info("warm start done: %s", report)
        return report

    def _import_peer(self, peer: str, token: str | None) -> dict:
        """Apply a peer's snapshot: record rows (refused rows are counted and the first is
        logged), or, from an older peer, update objects parsed like bus messages."""
        now = self.clock()
        records = skipped = 0
        marks: dict = {}
        apply = self.state.apply
        for index, item in enumerate(stream_snapshot(peer, token, rows=True)):
            if index == 0 and type(item) is dict and set(item) == {"marks"}:
                marks = item["marks"] or {}
                continue
            if type(item) is list:
                updates, errors = parse_rows(item)
                for update in updates:
                    apply(update, now, track_gaps=False)
                records += len(updates)
                if errors:
                    if not skipped:
                        log.warning("warm start: refused from peer %s: snapshot line %d, %s%s",
                                    peer, index + 1, errors[0],
                                    " (and more rows; counted as skipped)" if len(errors) > 1
                                    else "")
                    skipped += len(errors)
                gevent.sleep(0)  # a big snapshot must not starve the SIP readers
                continue
            try:
                update = parse_update(item)
            except UpdateError:
                skipped += 1
                continue
            if isinstance(update, Update):
                apply(update, now, track_gaps=False)
                records += 1
                if records % 1000 == 0:
                    gevent.sleep(0)
        self.state.import_marks(_marks(marks, peer))
        return {"records": records, "skipped": skipped}


def _marks(marks: object, peer: str) -> dict[str, tuple[int, int]]:
    """A peer's bridge marks {Bridge-ID: [epoch, sequence]}; PeerError when malformed."""
    try:
        return {str(k): (int(v[0]), int(v[1])) for k, v in marks.items()}  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        raise PeerError(f"peer {peer}: malformed marks {str(marks)[:200]}") from None
