"""Per-lamp history, stage histograms and `busylamp why`.

Sans-IO first (the engine with an injected clock and wall clock), then end to end: a call played
by the FreeSWITCH simulator through the real bridge and node to a sipp watcher, read back with
`busylamp why`; and a lamp made stale on purpose by dropping updates on the bus.
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc

import pytest

from busylamp.bridge.bus import MemoryBus
from busylamp.bridge.origin import SkipLog
from busylamp.presence.api import serve_api
from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.histogram import BUCKETS, Histogram, StageHistograms
from busylamp.presence.history import DETAILED, ENTRY_BYTES, WATCH_BYTES, History
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.sip import parse_message
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates
from busylamp.presence.why import explain, render_text
from busylamp.wire import updates as wire_updates
from tests.polling import wait_until
from tests.sipp_util import free_port
from tests.unit.test_engine import CONTACTS, PHONE, answer, subscribe

AOR = "1001@example.com"


class Clocks:
    """The engine's monotonic clock and a wall clock 1.7e9 s ahead of it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def wall(self) -> float:
        return self.now + 1_700_000_000.0


class FakeNode:
    """What presence.why.explain reads from a node, around a bare engine."""

    def __init__(self, clocks: Clocks, **history) -> None:
        self.clocks = clocks
        self.state = PresenceState(REGISTRY, PackageOptions())
        self.engine = PresenceEngine(EngineConfig(contacts=CONTACTS), self.state, REGISTRY)
        self.history = History(wall=clocks.wall, **history)
        self.history.attach(self.state, self.engine.counters)
        self.engine.observer = self.history
        self.subscribed = 0

    def clock(self) -> float:
        return self.clocks.now

    def subscribe(self, n: int, presentity: str = AOR) -> None:
        """``n`` more watchers of ``presentity``; every initial NOTIFY answered 200."""
        for i in range(n):
            self.subscribed += 1
            k = self.subscribed
            domain = presentity.partition("@")[2]
            self.engine.receive(subscribe(presentity, watcher=f"w{i}@{domain}",
                                          call_id=f"c{k}", from_tag=f"t{k}",
                                          branch=f"z9hG4bK-s{k}"), PHONE, "udp", None,
                                self.clocks.now)
        self.answer_all()

    def answer_all(self, status: int = 200, after: float = 0.0) -> int:
        """Answer every NOTIFY sent, including the later steps of a big fan-out."""
        total = 0
        while True:
            out = self.engine.messages_to_send()
            self.history.flushed(self.clocks.now)
            self.clocks.now += after
            notifies = [m for m in (parse_message(d) for _, _, d, _ in out)
                        if getattr(m, "method", None) == "NOTIFY"]
            for notify in notifies:
                self.engine.receive(answer(notify, status), PHONE, "udp", None, self.clocks.now)
            total += len(notifies)
            if not self.engine.backlog:
                return total
            self.engine.handle_timer(self.clocks.now)

    def publish(self, **fields) -> None:
        update = {"Event-Name": "update", "Event-Package": "dialog",
                  "From": f"sip:{AOR}", "From-User": AOR.split("@")[0],
                  "From-Realm": "example.com", "To": "sip:2002@example.com",
                  "Call-ID": "call-1", "State": "early", "Expires": 120}
        update.update(fields)
        sent = self.engine.counters["notify_sent"]
        self.engine.apply(parse_updates(update), self.clocks.now)
        # as PresenceNode.publish does: the applied -> NOTIFY stage, once the NOTIFYs are out
        self.history.applied(self.clocks.now, self.clocks.now,
                             self.engine.counters["notify_sent"] - sent)


def origin(clocks: Clocks, **fields) -> dict:
    stamp = int((clocks.wall() - 0.004) * 1e6)
    return {"Switch-Event": "CHANNEL_CALLSTATE", "Unique-ID": "uuid-1",
            "Channel-Call-State": "RINGING", "Switch-ID": "core-1",
            "Event-Timestamp": stamp, "Bridge-Timestamp": stamp + 1000,
            "Bridge-ID": "b1", "Bridge-Epoch": 1, **fields}


# --- sans-IO ----------------------------------------------------------------------------------

def test_timeline_names_event_update_notify_and_answer_in_order():
    clocks = Clocks()
    node = FakeNode(clocks)
    node.subscribe(2)
    clocks.now += 1
    node.publish(**origin(clocks, Sequence=1))
    assert node.answer_all(after=0.012) == 2
    report = explain(node, AOR)
    update_items = [i for i in report["timeline"] if not i["id"].startswith(("1.", "2."))]
    assert [i["kind"] for i in update_items] == [
        "esl", "bridge", "update", "notify", "answer", "notify", "answer"]
    esl, bridge, update, notify, ok = update_items[:5]
    assert esl["event"] == "CHANNEL_CALLSTATE" and esl["unique_id"] == "uuid-1"
    assert esl["call_state"] == "RINGING" and esl["switch_id"] == "core-1"
    assert bridge["sequence"] == 1 and update["effect"] == "applied"
    assert update["state"] == "early" and notify["version"] == 1
    assert ok["status"] == 200 and ok["at"] - notify["at"] == pytest.approx(0.012, abs=1e-5)
    assert esl["at"] < bridge["at"] < update["at"] <= notify["at"] < ok["at"]
    assert report["lamps"][0]["lamp"].startswith("blinking")
    assert all(w["answer"] == 200 and w["acknowledged"] for w in report["watchers"])
    assert report["causes"] == []
    text = render_text(report)
    assert "FreeSWITCH CHANNEL_CALLSTATE RINGING channel uuid-1" in text
    assert "200 OK from sip:w0@example.com after 12.0 ms" in text
    # the stages: the bridge's clock 3 ms after the event, the node's 3 ms after the bridge
    stages = node.history.stages
    assert stages["bridge_to_applied"].count == 1
    assert stages["notify_to_answer"].count == 4  # 2 initial + 2 for the update
    assert stages["applied_to_notify"].count == 2


def test_effects_older_tombstone_expired_and_snapshot():
    clocks = Clocks()
    node = FakeNode(clocks)
    node.publish(**origin(clocks, Sequence=5))
    node.publish(**origin(clocks, Sequence=4, State="confirmed"))       # reordered on the bus
    node.publish(**origin(clocks, Sequence=6, State="terminated", Expires=20))
    node.publish(**origin(clocks, Sequence=7, State="confirmed"))       # after it ended
    node.publish(**{"Call-ID": "call-2", "State": "confirmed", "Expires": 5})
    clocks.now += 6
    node.engine.handle_timer(clocks.now)
    snapshot = {"Event-Name": "snapshot", "Switch-ID": "core-1", "Bridge-ID": "b1",
                "Bridge-Epoch": 1, "Sequence": 8, "Updates": []}
    node.publish(**{"Call-ID": "call-3", "State": "confirmed", "Switch-ID": "core-1"})
    node.engine.apply(parse_updates(snapshot), clocks.now)
    effects = [(e.kind, e.effect) for e in node.history.ring(AOR)]
    assert effects == [
        ("update", "applied"),
        ("update", "ignored: older than the record (bridge, epoch, sequence)"),
        ("update", "applied: terminated"),
        ("update", "ignored: the record already ended (tombstone)"),
        ("update", "applied"),
        ("expired", "expired: Expires ran out"),
        ("update", "applied"),
        ("snapshot", "terminated: missing from the switch's snapshot"),
    ]


def test_thirty_six_thousand_watchers_cost_what_nine_do():
    sizes = {}
    for watchers in (9, 36_000):
        clocks = Clocks()
        node = FakeNode(clocks)
        node.subscribe(watchers)
        node.publish()
        node.answer_all(after=0.002)
        entry = node.history.ring(AOR)[-1]
        assert entry.kind == "update" and entry.watchers == watchers
        assert len(entry.watches()) == DETAILED
        assert entry.answers_by_code() == {200: watchers}
        sizes[watchers] = _deep_size(entry)
        report = explain(node, AOR)
        rest = [i for i in report["timeline"] if i["kind"] == "notifies"]
        assert rest[-1]["watchers"] == watchers - DETAILED
        assert rest[-1]["answers"] == {"200": watchers - DETAILED}
    assert sizes[36_000] == sizes[9]


def test_rings_are_bounded_and_the_oldest_presentities_go_first():
    clocks = Clocks()
    node = FakeNode(clocks, per_presentity=4, max_bytes=10 * ENTRY_BYTES)
    for user in ("a", "b", "c"):
        for i in range(6):
            node.publish(**{"From-User": user, "Call-ID": f"{user}{i}"})
            clocks.now += 1
    history = node.history
    assert [len(history.ring(f"{u}@example.com")) for u in "abc"] == [0, 4, 4]
    assert history.entries == 8 and history.dropped_rings == 1
    node.publish(**{"From-User": "b", "Call-ID": "b9"})  # b is now the freshest
    node.publish(**{"From-User": "d", "Call-ID": "d1"})
    node.publish(**{"From-User": "d", "Call-ID": "d2"})
    node.publish(**{"From-User": "d", "Call-ID": "d3"})
    assert history.ring("c@example.com") == [] and len(history.ring("b@example.com")) == 4


def measure_entry_bytes(watchers: int, presentities: int = 20) -> float:
    """Bytes per history entry once the records are gone (only the history holds anything):
    updates of ``presentities`` presentities, 32 each, every one notifying ``watchers``."""
    clocks = Clocks()
    node = FakeNode(clocks)
    for p in range(presentities):
        node.subscribe(watchers, f"u{p}@example.com")
    node.history.rings.clear()
    node.history.entries = 0
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for p in range(presentities):
        for i in range(32):
            node.publish(**origin(clocks, **{
                "From-User": f"u{p}", "Call-ID": f"c{p}-{i}", "Unique-ID": f"uuid-{p}-{i}",
                "Sequence": 32 * p + i, "State": "terminated", "Expires": 1}))
            node.answer_all()
    clocks.now += 5
    node.engine.handle_timer(clocks.now)  # the tombstones go; the history stays
    node.engine.messages_to_send()
    # what wire.updates remembers of the updates' strings (a bounded, process-wide table of
    # ~2 MB at most) is not the history's: let it go before counting
    wire_updates._CLEAN.clear()
    wire_updates._AORS.clear()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert node.state.presentity_count() == 0 and len(node.engine.client_transactions) == 0
    assert node.history.entries == presentities * 32
    return (after - before) / node.history.entries


def test_memory_per_entry_is_within_the_budget_used_for_the_cap():
    """Measures what docs/BENCHMARKS.md reports: bytes per entry and per full ring of 32."""
    bare = measure_entry_bytes(0)
    detailed = measure_entry_bytes(DETAILED)
    print(f"history: {bare:.0f} B per entry without watchers, {detailed:.0f} B with "
          f"{DETAILED} watchers detailed; a full ring of 32: {bare * 32 / 1024:.1f} .. "
          f"{detailed * 32 / 1024:.1f} KiB")
    assert bare <= ENTRY_BYTES and (detailed - bare) / DETAILED <= WATCH_BYTES


def test_histogram_buckets_and_skew():
    hist = Histogram()
    hist.observe(0.00005)
    hist.observe(0.0001)   # le="0.0001" includes it
    hist.observe(3.0)
    hist.observe(-0.2)     # the other machine's clock is ahead
    hist.observe_many(20.0, 2)
    assert hist.skew == 1 and hist.count == 5
    cumulative = dict(hist.cumulative())
    assert cumulative["0.0001"] == 2 and cumulative["5"] == 3 and cumulative["10"] == 3
    assert cumulative["+Inf"] == 5
    assert BUCKETS[0] == 0.0001 and BUCKETS[-1] == 10.0
    assert hist.quantile(0.5) == 5.0


def test_stage_metrics_text():
    from busylamp.presence.metrics import PREFIX, MetricWriter

    stages = StageHistograms()
    stages["notify_to_answer"].observe(0.003)
    stages["esl_to_bridge"].observe(-1.0)
    metric = MetricWriter()
    stages.render(metric, metric.lines, PREFIX)
    text = "\n".join(metric.lines)
    assert '# TYPE busylamp_stage_seconds histogram' in text
    assert 'busylamp_stage_seconds_bucket{stage="notify_to_answer",le="0.0025"} 0' in text
    assert 'busylamp_stage_seconds_bucket{stage="notify_to_answer",le="0.005"} 1' in text
    assert 'busylamp_stage_seconds_count{stage="notify_to_answer"} 1' in text
    assert 'busylamp_stage_clock_skew_total{stage="esl_to_bridge"} 1' in text


def test_unknown_lamp_names_skipped_events_near_miss_domain_and_no_subscription():
    clocks = Clocks()
    node = FakeNode(clocks)
    skips = SkipLog(wall=clocks.wall)
    node.history.skip_sources.append(skips)
    skips.add("CHANNEL_CALLSTATE", {"Channel-Name": "sofia/internal/1003@example.com",
                                    "Unique-ID": "u-9", "Caller-Username": "1003"},
              "no presence id")
    skips.add("CHANNEL_CALLSTATE", {"Caller-Destination-Number": "1004"}, "no presence id")
    node.publish(**{"From-User": "1003", "From-Realm": "10.0.0.5"})
    report = explain(node, "1003@example.com")
    assert report["lamps"] == [] and report["timeline"] == []
    causes = "\n".join(report["causes"])
    assert "no update for 1003@example.com reached this node" in causes
    assert "skipped 1 event(s) naming 1003: 1 x no presence id" in causes
    assert "channel u-9" in causes and "presence_id" in causes
    assert "1003@10.0.0.5 has updates" in causes and "--domain-alias example.com=10.0.0.5" in causes
    assert "no subscription" in causes
    assert "likely causes" in render_text(report)
    # watched, but under another domain than the updates use
    node.subscribe(1, "1005@pbx.local")
    causes = "\n".join(explain(node, "1005@example.com")["causes"])
    assert "1005@pbx.local is watched" in causes
    assert "--domain-alias pbx.local=example.com" in causes


def test_coalesced_notify_is_marked_and_answered_later():
    clocks = Clocks()
    node = FakeNode(clocks)
    node.subscribe(1)
    node.publish()
    first = node.engine.messages_to_send()           # early in flight, unanswered
    node.history.flushed(clocks.now)
    node.publish(State="confirmed")                    # merged behind it
    clocks.now += 0.01
    notify = parse_message(first[0][2])
    node.engine.receive(answer(notify), PHONE, "udp", None, clocks.now)
    assert node.answer_all(after=0.005) == 1
    confirmed = node.history.ring(AOR)[-1]
    assert confirmed.state == "confirmed" and confirmed.coalesced == 1
    watch = confirmed.watches()[0]
    assert watch.coalesced and watch.status == 200
    assert watch.answered_at - watch.sent_at == pytest.approx(0.005)
    text = render_text(explain(node, AOR))
    assert "(merged: sent after the one in flight)" in text


# --- end to end: simulator -> bridge -> node -> sipp, and `busylamp why` -----------------------

pytestmark_sipp = pytest.mark.sipp


@pytest.mark.sipp
def test_why_after_a_simulated_call(tmp_path):
    from tests.node_util import settled, sip_address
    from tests.sipp_scenarios import Watcher
    from tests.sipp_util import start_sipp
    from tests.system.test_cli_subprocess import busylamp
    from tests.system.test_e2e_esl import bridge_to, office, record_state

    window_start = time.time()
    with office() as (sim, address, node, bus), bridge_to(node, address, bus) as service:
        node.history.skip_sources.append(service.skip_log)
        service.event_latency = node.history.stages["esl_to_bridge"]
        api = serve_api("127.0.0.1", free_port(), node, None)
        try:
            presentity = "1002@example.com"
            watcher = Watcher(presentity).subscribe().notify(count=4)
            sipp = start_sipp(watcher.write(tmp_path / "w.xml"), sip_address(node),
                              tmp_path / "s")
            wait_until(lambda: len(node.engine.subscriptions) == 1 and settled(node, presentity))
            call = sim.originate("1001", "1002")
            wait_until(lambda: record_state(node, presentity) == ["early"]
                       and settled(node, presentity))
            sim.answer(call)
            wait_until(lambda: record_state(node, presentity) == ["confirmed"]
                       and settled(node, presentity))
            sim.hangup(call)
            assert sipp.wait() == 0, sipp.errors()
            wait_until(lambda: settled(node, presentity))
            http = f"127.0.0.1:{api.server_port}"
            code, out, err = busylamp("why", presentity, "--json", "--http", http,
                                      workdir=tmp_path / "cli")
            assert code == 0, err
            code, text, err = busylamp("why", presentity, "--http", http,
                                       workdir=tmp_path / "cli")
            assert code == 0, err
            metrics = node.metrics_text()
        finally:
            api.stop()
    window_end = time.time()
    report = json.loads(out)
    timeline = report["timeline"]
    for item in timeline:
        assert window_start <= item["at"] <= window_end, item
    dialog = [i for i in timeline if i.get("package", "dialog") == "dialog"]
    chain = _first_chain(dialog, "early")
    assert [i["kind"] for i in chain] == ["esl", "bridge", "update", "notify", "answer"]
    esl, bridge, update, notify, ok = chain
    assert esl["event"] == "CHANNEL_CALLSTATE" and esl["unique_id"] == call.b.uuid
    assert esl["call_state"] in ("RINGING", "EARLY")
    assert update["effect"] == "applied" and update["record"] == call.b.uuid
    assert notify["watcher"] == "sip:2000@example.com" and ok["status"] == 200
    assert [i["at"] for i in chain] == sorted(i["at"] for i in chain)
    states = [i["state"] for i in dialog if i["kind"] == "update"]
    assert states == ["early", "confirmed", "terminated"]
    assert report["lamps"][0]["lamp"] == "dark (no call)"
    assert "CHANNEL_CALLSTATE" in text and "200 OK from sip:2000@example.com" in text
    for stage in ("esl_to_bridge", "bridge_to_applied", "applied_to_notify",
                  "notify_to_answer", "subscribe_to_notify"):
        count = _sample(metrics, f'busylamp_stage_seconds_count{{stage="{stage}"}}')
        assert count and count >= 1, stage


@pytest.mark.sipp
def test_an_update_lost_on_the_bus_shows_as_a_gap_on_the_stale_lamp(tmp_path):
    from busylamp.esl.simulator import FreeSwitchSimulator
    from tests.node_util import running_node
    from tests.system.test_e2e_esl import bridge_to, record_state

    sim = FreeSwitchSimulator(domain="example.com")
    address = sim.start()
    window_start = time.time()
    try:
        with running_node() as node:
            bus = MemoryBus()
            dropped: list[dict] = []

            def lossy(message: dict) -> None:
                if message.get("State") == "confirmed" and message.get("From-User") == "1002":
                    dropped.append(message)  # lost on the bus
                    return
                node.on_bus_message(message)

            bus.subscribe(lossy)  # no control link: no resync repairs the lamp
            with bridge_to(node, address, bus):
                presentity = "1002@example.com"
                call = sim.originate("1001", "1002")
                wait_until(lambda: record_state(node, presentity) == ["early"])
                sim.answer(call)
                wait_until(lambda: len(dropped) == 2)   # dialog and presence of the callee
                other = sim.originate("1003", "1004")   # the next update reveals the gap
                wait_until(lambda: node.state.stats.gaps >= 2)
                report = node.history_report(presentity)
                sim.hangup(other)
    finally:
        sim.stop()
    window_end = time.time()
    assert record_state(node, presentity) == ["early"]   # stale: the call was answered
    kinds = [(i["kind"], i.get("state")) for i in report["timeline"]
             if i["kind"] in ("update", "gap") and i.get("package", "dialog") == "dialog"]
    assert kinds[0] == ("update", "early") and kinds[-1] == ("gap", None)
    gap = report["timeline"][-1]
    assert gap["last"] - gap["first"] + 1 >= 2 and "lost on the bus" in gap["text"]
    assert window_start <= gap["at"] <= window_end
    assert any(c.startswith("possibly stale: bridge") for c in report["causes"])
    assert "possibly stale" in render_text(report)


def _first_chain(items: list[dict], state: str) -> list[dict]:
    """The items of the first update entry whose state is ``state``."""
    update = next(i for i in items if i["kind"] == "update" and i["state"] == state)
    entry = update["id"].split(".")[0]
    return [i for i in items if i["id"].split(".")[0] == entry]


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return None


def _deep_size(entry) -> int:
    seen = set()
    total = 0
    stack = [entry]
    import sys

    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (int, float, str)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__slots__") and obj.__class__.__name__ in ("Entry", "Watch"):
            stack.extend(getattr(obj, s) for s in obj.__slots__
                         if s not in ("entry", "stage", "subs") and hasattr(obj, s))
    return total


@pytest.mark.sipp
def test_a_bridge_process_serves_health_and_its_stage_metrics(nsq, tmp_path):
    from busylamp.esl.simulator import FreeSwitchSimulator
    from tests.system.test_cli_subprocess import http_get, metric, run_node

    nsqd = nsq.tcp_address
    sim = FreeSwitchSimulator(domain="example.com")
    host, port = sim.start()
    try:
        with run_node(tmp_path, "--esl", f"ClueCon@{host}:{port}", "--nsqd", nsqd,
                      role="bridge", bus="nsq") as node:
            status, body = http_get(node.http_port, "/health")
            assert status == 200 and json.loads(body)["role"] == "bridge"
            wait_until(lambda: json.loads(http_get(node.http_port, "/health")[1])["esl"]
                       == {f"{host}:{port}": "connected"})
            sim.originate("1001", "1002")
            count = 'busylamp_stage_seconds_count{stage="esl_to_bridge"}'
            wait_until(lambda: (metric(node.http_port, count) or 0) >= 2)
            assert metric(node.http_port, 'busylamp_bridge_updates_published_total{kind="event"}')
            assert http_get(node.http_port, "/subscriptions")[0] == 404
    finally:
        sim.stop()


def test_why_follow_prints_what_happens_next(tmp_path):
    from tests.node_util import publish, running_node
    from tests.system.test_cli_subprocess import Proc, busylamp

    with running_node() as node:
        api = serve_api("127.0.0.1", free_port(), node, None)
        http = f"127.0.0.1:{api.server_port}"
        try:
            code, out, err = busylamp("why", AOR, "--http", http, workdir=tmp_path)
            assert code == 0, err
            assert "no update for 1001@example.com reached this node" in out
            assert "no subscription" in out
            follow = Proc.start(["why", AOR, "--follow", "--interval", "0.05", "--count", "400",
                                 "--http", http], tmp_path, "follow")
            try:
                wait_until(lambda: "likely causes" in follow.stdout, timeout=8)
                publish(node, {"Event-Name": "update", "Event-Package": "dialog",
                               "From": f"sip:{AOR}", "From-User": "1001",
                               "From-Realm": "example.com", "To": "sip:2002@example.com",
                               "Call-ID": "follow-1", "State": "confirmed",
                               "Switch-Event": "CHANNEL_CALLSTATE", "Unique-ID": "follow-1"})
                wait_until(lambda: "dialog update confirmed call-id follow-1" in follow.stdout,
                           timeout=8)
                assert "FreeSWITCH CHANNEL_CALLSTATE channel follow-1" in follow.stdout
            finally:
                follow.kill()
            code, _, err = busylamp("why", "nobody", "--http", http, workdir=tmp_path)
            assert code == 2 and "USER@DOMAIN" in err
        finally:
            api.stop()


def test_history_zero_detaches_the_hooks():
    from busylamp.presence.engine import EngineConfig as Config
    from busylamp.presence.node import PresenceNode

    off = PresenceNode(Config(contacts=CONTACTS), history=History(per_presentity=0))
    on = PresenceNode(Config(contacts=CONTACTS))
    assert off.engine.observer is None and on.engine.observer is on.history
    off.reconfigure(Config(contacts=CONTACTS))
    assert off.engine.observer is None
    off.transports.close()
    on.transports.close()


def test_queued_answer_times_settle_into_the_same_buckets_as_observe():
    values = [0.0, 0.0001, 0.00010001, 0.00025, 0.003, 2.5, 9.99, 10.0, 10.5, 99.0, -0.5]
    direct, queued = Histogram(), Histogram()
    for value in values:
        direct.observe(value)
    queued.pending.extend(values)
    held = queued.pending
    assert queued.cumulative() == direct.cumulative() and queued.count == direct.count
    assert queued.skew == direct.skew == 1 and queued.total == pytest.approx(direct.total)
    assert held is queued.pending and held == []  # emptied in place: the history holds it


def test_a_timed_out_notify_is_shown_for_its_watcher_and_left_out_of_the_histogram():
    clocks = Clocks()
    node = FakeNode(clocks)
    node.subscribe(1)
    node.publish()
    node.engine.messages_to_send()                    # never answered
    clocks.now += 40                                   # past Timer F
    node.engine.handle_timer(clocks.now)
    entry = node.history.ring(AOR)[-1]
    watch = entry.watches()[0]
    assert entry.kind == "update" and watch.status == 0 and watch.sent_at == entry.at
    assert entry.answers_by_code() == {0: 1}
    assert node.history.stages["notify_to_answer"].count == 1  # the initial NOTIFY's answer
    assert "no answer from sip:w0@example.com (timed out" in render_text(explain(node, AOR))


class PythonHistory(History):
    """The history with its answer hook in Python only (presence/_history.c left out)."""

    __slots__ = ()
    answered = History._answered


def _answer_scenario(history: History) -> tuple[list, list, float, int]:
    """Answers on every path of the hook: a fan-out beyond DETAILED with 200s and other codes,
    a NOTIFY merged behind one in flight (a ticket), a refresh; what the history then holds."""
    clocks = Clocks()
    node = FakeNode(clocks)
    node.history = history
    history.attach(node.state, node.engine.counters)
    node.engine.observer = history
    node.subscribe(DETAILED + 3)
    node.publish()
    node.answer_all(after=0.002)
    node.publish(State="confirmed")
    node.answer_all(status=486, after=0.003)
    node.publish(State="terminated")
    first = node.engine.messages_to_send()
    node.publish(State="early", **{"Call-ID": "call-2"})  # merged behind the ones in flight
    clocks.now += 0.01
    for _, _, data, _ in first:
        node.engine.receive(answer(parse_message(data), 200), PHONE, "udp", None, clocks.now)
    node.answer_all(status=200, after=0.001)
    stage = history.stages["notify_to_answer"]
    entries = []
    for ring in history.rings.values():
        for rec in ring:
            rec = list(rec)
            rec[4] = None  # the wall time: the offset read at start
            rec[17::7] = [None] * len(rec[17::7])  # dialog tags are random (watcher URIs stay)
            entries.append(rec)
    return (entries,
            list(stage.pending) + stage.counts, stage.total, stage.skew)


def test_the_answer_hook_in_c_records_what_the_python_one_does():
    from busylamp.presence import history as module

    assert PythonHistory.answered is History._answered
    if module.Answerer is None:
        pytest.skip("python -m busylamp.presence.node.buildext not run: Python hook only")
    assert History.answered is not History._answered
    assert _answer_scenario(History(wall=Clocks().wall)) \
        == _answer_scenario(PythonHistory(wall=Clocks().wall))
    history = History()
    assert history.answered.__self__ is history  # bound like a method outside a call


def test_entries_are_left_out_of_the_cyclic_collector_when_built():
    from busylamp.presence import history as module

    clocks = Clocks()
    node = FakeNode(clocks)
    node.subscribe(3)
    node.publish(**origin(clocks))
    node.answer_all(after=0.002)
    node.publish(State="confirmed")
    node.answer_all(status=486)
    recs = [entry.rec for entry in node.history.ring(AOR)]
    assert [r[1] for r in recs] == ["subscribe"] * 3 + ["update"] * 2
    tracked = {gc.is_tracked(rec) for rec in recs}
    assert tracked == ({True} if module._untrack is None else {False})
    if module._untrack is not None:
        assert not gc.is_tracked(recs[-2][7]) and not gc.is_tracked(recs[-2][8])  # stamp, origin
        module._untrack(kept := [1, "x", (None, [])])  # holds a container: stays tracked
        assert gc.is_tracked(kept)
    # what `busylamp why` shows is the same either way
    text = render_text(explain(node, AOR))
    assert "486" in text and "CHANNEL_CALLSTATE" in text
    gc.collect()
    assert [entry.rec for entry in node.history.ring(AOR)] == recs
