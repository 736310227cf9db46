"""Memory per subscription, field by field, through the sans-IO engine in one process.

    python -m bench.memory_fields --subscriptions N [--keys K] [--one-port] [--top 12]
        [--rss-only] [--tree TREE]

The SUBSCRIBEs are those of the harness's sipp phones (bench/scenarios/subscribe_dialog.xml,
rows of bench/workload.py): W = N/K phones ``phone<i>`` with K line keys each, presentities
``ext<j>`` from a pool of W (K watchers each), distinct Call-IDs and From-tags; each phone has
its own Contact port (``--one-port``: every phone on one port, as bench/runner.py's single sipp).
Each initial NOTIFY is answered 200, so every subscription reaches its steady state (IDLE);
the clock advances 1/4000 s per SUBSCRIBE (the harness's rate) and, at the end, past the
server transactions' lifetime. The per-lamp history is attached at its default, as in a node.

Reported (tracemalloc: deterministic, not load-sensitive): bytes per subscription in total
(traced memory after N minus after a warm-up of N/10, over the 0.9 N in between), the largest
allocation sites of that growth (grouped by traceback), and a table of what each subscription
holds: every slot of ``Subscription`` (the distinct objects in it, their ``sys.getsizeof``
spread over the subscriptions that share them; an object met in an earlier slot counts there),
the object itself, the table's indexes and the history note.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterable
from typing import Any

from bench.engine import ok_for  # the phone's 200 to a NOTIFY
from bench.workload import DOMAIN, Workload, phone_user, presentity_user

SERVER = ("192.0.2.1", 5060)
RATE = 4000.0  # SUBSCRIBEs per second of engine clock (the harness's subscribe phase)
SETTLE = 40.0  # seconds past the last SUBSCRIBE: server transactions (64*T1) are gone


def phone_address(phone: int, one_port: bool) -> tuple[str, int]:
    """Where phone ``phone`` sends from (and is reachable at: its Contact)."""
    if one_port:
        return ("127.0.0.1", 5070)
    block, port = divmod(phone, 60_000)
    return (f"127.0.{block // 256}.{1 + block % 256}", 1025 + port)


def subscribe(row: int, phone: int, presentity: int, address: tuple[str, int]) -> bytes:
    """The SUBSCRIBE sipp sends for one CSV row (subscribe_dialog.xml, fields filled in)."""
    ip, port = address
    user, target = phone_user(phone), presentity_user(presentity)
    return (
        f"SUBSCRIBE sip:{target}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK-{row}-1-0;rport\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag=4242-{row + 1}\r\n"
        f"To: <sip:{target}@{DOMAIN}>\r\n"
        f"Call-ID: {row + 1}-4242@{ip}\r\n"
        "CSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:{user}@{ip}:{port}>\r\n"
        "Max-Forwards: 70\r\n"
        "Event: dialog\r\n"
        "Accept: application/dialog-info+xml\r\n"
        "Expires: 3600\r\n"
        "User-Agent: busylamp-bench\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def build_engine() -> tuple[Any, Any]:
    """An engine as a node builds it (amplification on, history at its default), of the tree
    ``busylamp`` is imported from (``--tree``: bench/tree.py)."""
    from busylamp.presence.engine import EngineConfig, PresenceEngine
    from busylamp.presence.history import History
    from busylamp.presence.limits import AMPLIFICATION_FACTOR
    from busylamp.presence.packages import REGISTRY
    from busylamp.presence.packages.base import PackageOptions
    from busylamp.presence.state import PresenceState

    state = PresenceState(REGISTRY, PackageOptions())
    config = EngineConfig(contacts={"udp": SERVER}, amplification_factor=AMPLIFICATION_FACTOR)
    engine = PresenceEngine(config, state, REGISTRY)
    history = History()
    history.attach(state, engine.counters, t1=config.t1, t2=config.t2)
    engine.observer = history
    return engine, history


def load(engine: Any, history: Any, workload: Workload, rows: Iterable[int],
         one_port: bool, clock: list[float]) -> None:
    """Subscribe ``rows`` of the workload, answering each initial NOTIFY with 200."""
    keys = workload.keys
    for row in rows:
        phone = row // keys
        presentity = workload.watched(phone)[row % keys]
        address = phone_address(phone, one_port)
        now = clock[0] = clock[0] + 1 / RATE
        engine.receive(subscribe(row, phone, presentity, address), address, "udp", None, now)
        out = engine.messages_to_send()
        notify = out[-1][2]
        if not notify.startswith(b"NOTIFY"):
            raise RuntimeError(f"no initial NOTIFY for row {row}: {out[-1][2][:60]!r}")
        engine.receive(ok_for(notify), address, "udp", None, now)
        engine.messages_to_send()
        if row % 1024 == 0:
            engine.handle_timer(now)
            history.flushed(now)


def settle(engine: Any, history: Any, clock: list[float]) -> None:
    """Let the server transactions expire, as they have by the time anyone reads memory."""
    now = clock[0] = clock[0] + SETTLE
    engine.handle_timer(now)
    engine.messages_to_send()
    history.flushed(now)
    gc.collect()


# -- the field table ---------------------------------------------------------------------------

def _size(value: Any, seen: set[int]) -> int:
    """getsizeof of ``value`` and of the items of a tuple, each object counted once."""
    if value is None or id(value) in seen or isinstance(value, bool):
        return 0
    if type(value) is int and -5 <= value <= 256:
        return 0  # the interpreter's small ints
    seen.add(id(value))
    size = sys.getsizeof(value)
    if type(value) is tuple:
        size += sum(_size(item, seen) for item in value)
    return size


def _note_size(note: Any, seen: set[int]) -> int:
    """The note's own objects: a ticket list and its float, not the entry it points at (the
    history's rings hold that, counted under "history rings")."""
    if note is None or id(note) in seen:
        return 0
    if type(note) is list and len(note) == 2:
        seen.add(id(note))
        return sys.getsizeof(note) + _size(note[1], seen)
    if type(note) is float:
        return _size(note, seen)
    return 0  # an entry of the rings


def field_table(engine: Any, history: Any) -> list[tuple[str, int, int, float]]:
    """(what, distinct objects, bytes in all, bytes per subscription) rows."""
    table = engine.subscriptions
    subs = list(table)
    count = len(subs)
    rows: list[tuple[str, int, int, float]] = []
    seen: set[int] = {id(engine.packages[name]) for name in engine.packages}

    def row(what: str, distinct: int, total: int) -> None:
        rows.append((what, distinct, total, total / count))

    row("Subscription object", count, sum(sys.getsizeof(s) for s in subs))
    for name in _slots(type(subs[0])):
        distinct: set[int] = set()
        total = 0
        for sub in subs:
            value = getattr(sub, name)
            distinct.add(id(value))
            total += _note_size(value, seen) if name == "note" else _size(value, seen)
        row(f"slot {name}", len(distinct), total)
    for label, size, distinct in _index_sizes(table):
        row(label, distinct, size)
    ring_bytes = sum(sys.getsizeof(r) + sum(_entry_size(e) for e in r)
                     for r in history.rings.values()) + sys.getsizeof(history.rings)
    row(f"history rings ({history.entries} entries, cap {history.max_bytes >> 20} MiB)",
        len(history.rings), ring_bytes)
    return rows


def _slots(cls: type) -> list[str]:
    return [name for klass in reversed(cls.__mro__) for name in getattr(klass, "__slots__", ())
            if name != "__weakref__"]


def _entry_size(entry: list) -> int:
    seen: set[int] = set()
    return sys.getsizeof(entry) + sum(_size(v, seen) for v in entry if type(v) is not str)


def _index_sizes(table: Any) -> list[tuple[str, int, int]]:
    """What each index of the table costs (whatever layout the table has)."""
    out = []
    for name, value in sorted(vars(table).items()) if hasattr(table, "__dict__") else []:
        out.append((f"table.{name}", *_container(value)))
    for name in getattr(type(table), "__slots__", ()):
        out.append((f"table.{name}", *_container(getattr(table, name))))
    return out


def _container(value: Any) -> tuple[int, int]:
    """(bytes, objects) of a container and the containers and tuple keys inside it (not the
    subscriptions, strings or numbers it points at: those are counted with their slots)."""
    size, objects = sys.getsizeof(value), 1
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is tuple:
                size += sys.getsizeof(key)
            if isinstance(item, dict | list | tuple | set):
                inner, n = _container(item)
                size, objects = size + inner, objects + n
            elif type(item) is int and not -5 <= item <= 256:
                size += sys.getsizeof(item)
    elif isinstance(value, list | set) and value and isinstance(next(iter(value)), list | dict):
        for item in value:
            inner, n = _container(item)
            size, objects = size + inner, objects + n
    return size, objects


# -- main --------------------------------------------------------------------------------------

def rss() -> int:
    """Resident bytes of this process now (/proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure(subscriptions: int, keys: int, one_port: bool, top: int,
            rss_only: bool = False) -> dict[str, Any]:
    workload = Workload(watchers=-(-subscriptions // keys), keys=keys)
    engine, history = build_engine()
    clock = [1000.0]
    warm = max(1, subscriptions // 10)
    if not rss_only:
        tracemalloc.start(6 if top else 1)
    started = time.process_time()
    load(engine, history, workload, range(warm), one_port, clock)
    gc.collect()
    before_bytes = tracemalloc.get_traced_memory()[0]
    before_rss = rss()
    before = tracemalloc.take_snapshot() if top else None
    load(engine, history, workload, range(warm, subscriptions), one_port, clock)
    settle(engine, history, clock)
    after_bytes = tracemalloc.get_traced_memory()[0]
    after_rss = rss()
    grown = subscriptions - warm
    sites = []
    if top and before is not None:
        after = tracemalloc.take_snapshot()
        for stat in after.compare_to(before, "traceback")[:top]:
            frames = [f"{f.filename.rsplit('/busylamp/', 1)[-1].rsplit('/wt-mem/', 1)[-1]}"
                      f":{f.lineno}" for f in stat.traceback[-3:]]
            sites.append((stat.size_diff / grown, stat.count_diff / grown, " < ".join(frames)))
        del after, before
    tracemalloc.stop()
    cpu = time.process_time() - started
    if len(engine.subscriptions) != subscriptions:
        raise RuntimeError(f"{len(engine.subscriptions)} subscriptions held, not {subscriptions}")
    rows = [] if rss_only else field_table(engine, history)
    return {"subscriptions": subscriptions, "keys": keys, "one_port": one_port,
            "per_subscription": None if rss_only else (after_bytes - before_bytes) / grown,
            "rss_per_subscription": (after_rss - before_rss) / grown, "sites": sites,
            "rows": rows, "cpu_s": cpu, "rss_mib": after_rss / 2**20,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def render(result: dict[str, Any]) -> str:
    lines = [f"subscriptions: {result['subscriptions']:,} (K={result['keys']}, "
             f"{'one port' if result['one_port'] else 'a port per phone'}), "
             f"CPU {result['cpu_s']:.0f} s, maxrss {result['maxrss_mib']:.0f} MiB"
             + (" (tracemalloc's own bookkeeping included)"
                if result["per_subscription"] is not None else ""),
             f"RSS at the end {result['rss_mib']:.0f} MiB, growth per subscription over the "
             f"last 90%: {result['rss_per_subscription']:.1f} bytes"]
    if result["per_subscription"] is not None:
        lines.append(f"tracemalloc bytes per subscription (growth over the last 90%): "
                     f"{result['per_subscription']:.1f}")
    lines.append("")
    if result["sites"]:
        lines += ["| bytes/sub | blocks/sub | allocated at (innermost last) |", "|---:|---:|---|"]
        lines += [f"| {size:.1f} | {count:.2f} | {where} |" for size, count, where in
                  result["sites"]]
        lines.append("")
    if not result["rows"]:
        return "\n".join(lines)
    lines += ["| what | distinct objects | bytes | bytes/sub |", "|---|---:|---:|---:|"]
    total = 0.0
    for what, distinct, size, per in result["rows"]:
        lines.append(f"| {what} | {distinct:,} | {size:,} | {per:.1f} |")
        total += per
    lines.append(f"| **sum (getsizeof)** | | | **{total:.1f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_fields", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--one-port", action="store_true")
    parser.add_argument("--tree", help="the busylamp source tree to measure (bench/tree.py)")
    parser.add_argument("--top", type=int, default=12,
                        help="allocation sites to list (0: no tracemalloc snapshots)")
    parser.add_argument("--rss-only", action="store_true",
                        help="no tracemalloc and no table: RSS growth and maxrss only (fast)")
    args = parser.parse_args(argv)
    if args.tree:
        from bench.tree import use_tree

        use_tree(args.tree)
    top = 0 if args.rss_only else args.top
    print(render(measure(args.subscriptions, args.keys, args.one_port, top, args.rss_only)))


if __name__ == "__main__":
    main()
