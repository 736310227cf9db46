"""``busylamp why AOR``: one presentity's lamp, its history as a timeline, and likely causes.

:func:`explain` builds a JSON-able report from a running node (what ``GET
/presentities/AOR/history`` returns); :func:`render_text` prints it for an operator. The report:

- ``lamps``: the current lamp per package (what the records say now) and its watcher count;
- ``watchers``: per watcher (first :data:`WATCHERS_SHOWN`), the last NOTIFY it was sent and
  whether it answered;
- ``timeline``: per history entry, in order: the FreeSWITCH event, the bridge, the update and
  its effect, the NOTIFYs and their answers (the first watchers one by one, the rest counted),
  with the sequence gaps of the bridges in between;
- ``causes``: when the lamp is unknown, unwatched or maybe stale, what the node recorded that
  explains it (skipped events naming the user, a near-miss domain, no subscription, a gap).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from busylamp.presence.history import DETAILED, Entry, History, Watch
from busylamp.wire.aor import normalize_aor

__all__ = ["WATCHERS_SHOWN", "explain", "render_text", "render_item"]

WATCHERS_SHOWN = 20
_REASONS = {200: "OK", 202: "Accepted", 404: "Not Found", 408: "Request Timeout",
            481: "Subscription Does Not Exist", 486: "Busy Here", 489: "Bad Event",
            500: "Server Internal Error", 503: "Service Unavailable"}


def explain(node: Any, aor: str) -> dict[str, Any]:
    """The report for ``aor`` (user@domain) from ``node`` (a presence.node.PresenceNode)."""
    history: History = node.history
    user, _, host = aor.strip().removeprefix("sip:").partition("@")
    aor = normalize_aor(user, host, node.engine.config.domain_aliases)
    now = node.clock()
    report: dict[str, Any] = {
        "presentity": aor,
        "generated_at": history.to_wall(now) if history.rings else history.wall(),
        "lamps": _lamps(node, aor),
        "watchers": [],
        "watchers_total": 0,
        "timeline": [],
        "causes": [],
    }
    subs = list(node.engine.iter_subscriptions(presentity=aor))
    report["watchers_total"] = len(subs)
    report["watchers"] = [_watcher(history, sub, now) for sub in subs[:WATCHERS_SHOWN]]
    entries = history.ring(aor)
    report["timeline"] = _timeline(history, entries)
    report["causes"] = _causes(node, aor, entries, subs, report)
    return report


# --- lamps ------------------------------------------------------------------------------------

def _lamps(node: Any, aor: str) -> list[dict[str, Any]]:
    lamps = []
    for package in sorted(node.engine.packages):
        records = [r for r in node.state.records(package, aor) if not r.terminated]
        watchers = node.engine.subscriptions.watcher_count(package, aor)
        if not records and not watchers and not node.history.latest(package, aor):
            continue
        lamps.append({"package": package, "lamp": _lamp(package, records),
                      "watchers": watchers,
                      "records": [{"id": r.record_id, **r.data} for r in records]})
    return lamps


def _lamp(package: str, records: list) -> str:
    if package == "dialog":
        states = [r.data.get("State") for r in records]
        if "confirmed" in states:
            return "lit (confirmed: in a call)"
        if "early" in states or "trying" in states or "proceeding" in states:
            return "blinking (early: ringing)"
        return "dark (no call)"
    if package == "message-summary":
        if records and records[-1].data.get("Messages-Waiting") == "yes":
            voice = records[-1].data.get("MWI-Voice-Message")
            return "lit (messages waiting" + (f": {voice})" if voice else ")")
        return "dark (no messages waiting)"
    states = sorted({r.data.get("State") for r in records if r.data.get("State")})
    return ", ".join(states) if states else "no presence state (closed)"


# --- watchers ---------------------------------------------------------------------------------

def _watcher(history: History, sub: Any, now: float) -> dict[str, Any]:
    note, sent_at = history.told(sub)
    row: dict[str, Any] = {"watcher": sub.remote_uri, "package": sub.package.name,
                           "transport": sub.transport, "in_flight": sub.inflight is not None,
                           "version": sub.version - 1 if sub.version else None}
    watch = note.watch_of(sub) if note is not None else None
    if watch is not None:
        row.update(told_at=_wall(history, note, watch.sent_at), answer=watch.status,
                   answered_at=_wall(history, note, watch.answered_at))
    elif sent_at is not None:
        row.update(told_at=_wall(history, note, sent_at), answer=None, answered_at=None)
    else:
        row.update(told_at=None, answer=None, answered_at=None)
    row["told"] = _entry_summary(note) if note is not None else None
    row["acknowledged"] = sub.inflight is None and (row["answer"] is None
                                                    or 200 <= row["answer"] < 300)
    return row


def _entry_summary(entry: Entry) -> str:
    what = f"{entry.package} {entry.state}" if entry.state else entry.package
    return f"{what} ({entry.kind} #{entry.id})"


# --- timeline ---------------------------------------------------------------------------------

def _timeline(history: History, entries: list[Entry]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    gaps = list(history.gaps)
    previous = None
    for entry in entries:
        while gaps and gaps[0].at <= entry.at:
            _gap_item(items, gaps.pop(0), entries)
        items.extend(_entry_items(history, entry, previous))
        previous = entry.origin
    for gap in gaps:
        _gap_item(items, gap, entries)
    return items


def _gap_item(items: list, gap: Any, entries: list[Entry]) -> None:
    if not entries or gap.at < entries[0].at:
        return  # older than this lamp's history
    missing = gap.last - gap.first + 1
    items.append({"id": f"gap-{gap.bridge}-{gap.epoch}-{gap.first}", "at": gap.wall,
                  "kind": "gap", "bridge": gap.bridge, "first": gap.first, "last": gap.last,
                  "text": f"bridge {gap.bridge}: {missing} update(s) lost on the bus "
                          f"(sequence {gap.first}..{gap.last}); resync requested"})


def _entry_items(history: History, entry: Entry, previous: tuple | None) -> list[dict[str, Any]]:
    """The items of one entry; the event line is left out when the previous entry (the other
    update of the same event: dialog, then presence) already showed it."""
    base = f"{entry.id}"
    items: list[dict[str, Any]] = []
    bridge_id, epoch, sequence, switch_id, expires = entry.stamp or (None,) * 5
    if entry.origin is not None:
        event, unique_id, call_state, event_ts, bridge_ts = entry.origin
        same = previous is not None and previous[:4] == entry.origin[:4]
        if (event is not None or event_ts is not None) and not same:
            parts = [f"FreeSWITCH {event or 'event'}"]
            if call_state:
                parts.append(call_state)
            if unique_id:
                parts.append(f"channel {unique_id}")
            if switch_id:
                parts.append(f"switch {switch_id}")
            items.append({"id": base + ".esl", "at": _micros(event_ts), "kind": "esl",
                          "event": event, "unique_id": unique_id, "call_state": call_state,
                          "switch_id": switch_id, "text": " ".join(parts)})
        if bridge_ts is not None:
            items.append({"id": base + ".bridge", "at": _micros(bridge_ts), "kind": "bridge",
                          "bridge": bridge_id, "epoch": epoch, "sequence": sequence,
                          "text": f"bridge {bridge_id} published sequence {sequence} "
                                  f"(epoch {epoch})"})
    item: dict[str, Any] = {"id": base + ".update", "at": entry.wall, "kind": entry.kind,
                            "package": entry.package, "state": entry.state,
                            "record": entry.record, "effect": entry.effect,
                            "bridge": bridge_id, "epoch": epoch, "sequence": sequence}
    if entry.kind == "update":
        stamp = f" from {bridge_id} #{sequence}" if bridge_id else ""
        item["text"] = (f"{entry.package} update {entry.state} call-id {entry.record}{stamp}"
                        f"{'' if expires is None else f' expires {expires}s'}: {entry.effect}")
    elif entry.kind == "snapshot":
        item["text"] = (f"{entry.package} snapshot of switch {switch_id} "
                        f"{entry.state or ''} {entry.record or ''}: {entry.effect}")
    elif entry.kind == "expired":
        item["text"] = f"{entry.package} record expired (no refresh arrived): NOTIFY follows"
    else:
        watch = entry.watches()[0] if entry.who else None
        item["text"] = (f"{entry.package} SUBSCRIBE from "
                        f"{watch.watcher if watch else 'a watcher'}: {entry.effect}")
    items.append(item)
    detailed = entry.watches()
    for n, watch in enumerate(detailed):
        items.extend(_watch_items(history, watch, f"{base}.w{n}"))
    rest = entry.watchers - len(detailed)
    if rest > 0:
        codes = Counter(entry.answers_by_code())
        for watch in detailed:
            if watch.status is not None:
                codes[watch.status] -= 1
        answers = ", ".join(f"{n} x {_code(c)}" for c, n in sorted(codes.items()) if n > 0)
        timed = entry.lat_min <= entry.lat_max
        span = (f", in {entry.lat_min * 1000:.1f}-{entry.lat_max * 1000:.1f} ms"
                if timed else "")
        items.append({"id": f"{base}.rest", "at": entry.wall, "kind": "notifies",
                      "watchers": rest, "answers": {str(c): n for c, n in codes.items() if n > 0},
                      "latency_ms": [round(entry.lat_min * 1000, 3),
                                     round(entry.lat_max * 1000, 3)] if timed else None,
                      "text": f"and {rest} more watchers ({entry.coalesced} merged behind a "
                              f"NOTIFY in flight): answers {answers or 'none yet'}{span}"})
    return items


def _watch_items(history: History, watch: Watch, base: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    version = "" if watch.version is None else f" version {watch.version}"
    if watch.sent_at is None:
        items.append({"id": base + ".pending", "at": _wall(history, watch.entry, None),
                      "kind": "notify", "watcher": watch.watcher, "coalesced": True,
                      "text": f"NOTIFY to {watch.watcher} waits for the one in flight "
                              "(changes merged)"})
        return items
    merged = " (merged: sent after the one in flight)" if watch.coalesced else ""
    items.append({"id": base + ".notify", "at": _wall(history, watch.entry, watch.sent_at),
                  "kind": "notify", "watcher": watch.watcher, "version": watch.version,
                  "coalesced": watch.coalesced,
                  "text": f"NOTIFY to {watch.watcher}{version}{merged}"})
    if watch.status is not None:
        retrans = history.retransmissions(watch)
        waited = ((watch.answered_at or 0.0) - watch.sent_at) * 1000
        again = f", {retrans} retransmission(s)" if retrans else ""
        text = (f"{_code(watch.status)} from {watch.watcher} after {waited:.1f} ms{again}"
                if watch.status else f"no answer from {watch.watcher} (timed out{again})")
        items.append({"id": base + ".answer", "at": _wall(history, watch.entry, watch.answered_at),
                      "kind": "answer", "watcher": watch.watcher, "status": watch.status,
                      "retransmissions": retrans, "text": text})
    return items


def _wall(history: History, entry: Entry | None, at: float | None) -> float | None:
    """Engine time -> wall clock, with the offset recorded with the entry (so one entry's
    times stay in order however the wall clock was slewed since); None: the entry's time."""
    if entry is None or not entry.id:
        return history.to_wall(at)
    return entry.wall + ((at - entry.at) if at is not None else 0.0)


def _code(status: int) -> str:
    if not status:
        return "timeout"
    return f"{status} {_REASONS.get(status, '')}".rstrip()


def _micros(value: Any) -> float | None:
    try:
        return int(value) / 1e6
    except (TypeError, ValueError):
        return None


# --- causes -----------------------------------------------------------------------------------

def _causes(node: Any, aor: str, entries: list[Entry], subs: list,
            report: dict[str, Any]) -> list[str]:
    causes: list[str] = []
    user, _, domain = aor.partition("@")
    updates = [e for e in entries if e.kind in ("update", "snapshot")]
    has_state = any(lamp["records"] for lamp in report["lamps"])
    if not updates and not has_state:
        causes.append(f"no update for {aor} reached this node"
                      + (" since its history began" if entries else ""))
        for source in node.history.skip_sources:
            skipped = source.matching(user)
            if skipped:
                reasons = Counter(s.reason for s in skipped)
                last = skipped[-1]
                causes.append(
                    f"the bridge skipped {len(skipped)} event(s) naming {user}: "
                    + ", ".join(f"{n} x {r}" for r, n in reasons.most_common())
                    + f" (last: {last.event} at {_clock(last.wall)}"
                    + (f", channel {last.unique_id}" if last.unique_id else "") + ")"
                    + (": set presence_id on that leg in the dialplan"
                       if "no presence id" in reasons else ""))
    for other, what in _near_misses(node, user, domain):
        # aliases map the domain phones SUBSCRIBE to onto the one the updates carry
        phones, carried = (domain, other.partition("@")[2]) if what == "has updates" else (
            other.partition("@")[2], domain)
        causes.append(f"{other} {what}: phones and FreeSWITCH name the domain differently; "
                      f"if they mean the same, map it with --domain-alias {phones}={carried}")
    if not subs:
        causes.append(f"no subscription: no phone watches {aor} on this node (its SUBSCRIBEs "
                      "go elsewhere, or were refused)")
    stale = _gap_after_last_update(node.history, updates)
    if stale is not None:
        causes.append(f"possibly stale: bridge {stale.bridge} lost {stale.last - stale.first + 1}"
                      f" update(s) (sequence {stale.first}..{stale.last}) after this lamp's "
                      "last update, and no snapshot has arrived since")
    return causes


def _near_misses(node: Any, user: str, domain: str) -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    wanted = user.lower()
    for presentity in node.history.presentities():
        u, _, d = presentity.partition("@")
        if (u.lower() == wanted and d.lower() != domain.lower()
                and any(e.kind != "subscribe" for e in node.history.ring(presentity))):
            found.setdefault(presentity, "has updates")
    for _package, presentity in node.state.presentities():
        u, _, d = presentity.partition("@")
        if u.lower() == wanted and d.lower() != domain.lower():
            found[presentity] = "has updates"
    for _package, presentity in node.engine.subscriptions.watched():
        u, _, d = presentity.partition("@")
        if u.lower() == wanted and d.lower() != domain.lower():
            found.setdefault(presentity, "is watched")
    return sorted(found.items())


def _gap_after_last_update(history: History, updates: list[Entry]) -> Any:
    if not updates:
        return None
    last = updates[-1]
    if last.kind == "snapshot":
        return None
    for gap in reversed(history.gaps):
        if gap.at >= last.at:
            return gap
    return None


# --- text -------------------------------------------------------------------------------------

def _clock(at: float | None) -> str:
    if at is None:
        return "--:--:--.---"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def render_item(item: dict[str, Any]) -> str:
    return f"  {_clock(item.get('at'))}  {item['kind']:<9} {item['text']}"


def render_text(report: dict[str, Any]) -> str:
    """The report as an operator reads it (times UTC)."""
    lines = [f"{report['presentity']}  (times UTC, {_clock(report['generated_at'])} now)"]
    if report["lamps"]:
        for lamp in report["lamps"]:
            lines.append(f"  {lamp['package']:<16} {lamp['lamp']}; "
                         f"{lamp['watchers']} watcher(s)")
    else:
        lines.append("  no state and no watcher on this node")
    if report["watchers"]:
        lines.append("watchers (what each was last told):")
        for row in report["watchers"]:
            if row["in_flight"]:
                ack = "NOTIFY in flight, not answered yet"
            elif row["answer"] is not None:
                ack = f"answered {_code(row['answer'])} at {_clock(row['answered_at'])}"
            else:
                ack = "acknowledged" if row["acknowledged"] else "not acknowledged"
            version = "" if row["version"] is None else f" version {row['version']}"
            lines.append(f"  {row['watcher']} [{row['package']}/{row['transport']}]: "
                         f"{row['told'] or 'initial state'}{version} at "
                         f"{_clock(row['told_at'])}, {ack}")
        more = report["watchers_total"] - len(report["watchers"])
        if more > 0:
            lines.append(f"  ... and {more} more")
    if report["timeline"]:
        lines.append(f"timeline (oldest first; NOTIFYs of the first {DETAILED} watchers "
                     "shown one by one):")
        lines.extend(render_item(item) for item in report["timeline"])
    else:
        lines.append("timeline: nothing recorded for this presentity")
    if report["causes"]:
        lines.append("likely causes:")
        lines.extend(f"  - {cause}" for cause in report["causes"])
    return "\n".join(lines) + "\n"
