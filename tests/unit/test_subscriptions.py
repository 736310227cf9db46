"""The subscription table's memory-saving layout: shared values, per-presentity watcher lists,
expiry seconds, and what a subscription costs through the engine (tracemalloc)."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest

from busylamp.presence.engine import EngineConfig, PresenceEngine
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.sip import parse_message
from busylamp.presence.state import PresenceState
from busylamp.presence.subscriptions import (
    SHARED_GENERATION,
    SMALL_WATCHERS,
    Subscription,
    SubscriptionTable,
    new_tag,
)
from tests.unit.test_engine import CONTACTS, answer, subscribe

pytestmark = pytest.mark.unit


def make(presentity: str = "1001@example.com", *, n: int = 0, expires_at: float = 3600.0,
         package: str = "dialog", local_uri: str | None = None) -> Subscription:
    """A subscription as the engine builds it, with strings of its own (not interned)."""
    phone = f"sip:{'phone'}{n}@example.com"
    return Subscription(
        tag=new_tag(), call_id=f"{n}-cid@phone", remote_tag=f"ft{n}",
        package=REGISTRY[package], presentity="".join(presentity),
        local_uri=local_uri or "".join(("sip:", presentity)), remote_uri=phone,
        target=phone, route=None, transport="udp", dest=("10.0.0.7", 5062 + n),
        conn_id=None, remote_cseq=1, expires_at=expires_at, source=("10.0.0.7", 5062 + n),
        watcher=f"phone{n}@example.com",
    )


def test_shared_gives_one_object_for_equal_values_and_stays_bounded():
    table = SubscriptionTable()
    first = table.shared("".join(("sip:2000@", "example.com")))
    again = "".join(("sip:2000@", "example.com"))
    assert again is not first and table.shared(again) is first
    for i in range(5 * SHARED_GENERATION):
        table.shared(f"value-{i}")
    assert len(table._shared) + len(table._shared_old) <= 2 * SHARED_GENERATION
    recent = f"value-{5 * SHARED_GENERATION - 1}"
    assert table.shared("".join(("value-", recent[6:]))) is not recent  # a new object...
    kept = table.shared(recent)
    assert table.shared("".join(("value-", recent[6:]))) is kept  # ...but one, while recent
    # seen again within a generation, a value moves to the newer one and stays shared
    table.shared(old := "".join(("x", "1")))
    for i in range(SHARED_GENERATION + 1):
        table.shared(f"other-{i}")
    assert table.shared("".join(("x", "1"))) is old


def test_watchers_of_a_presentity_share_its_strings():
    table = SubscriptionTable()
    first, second = make(n=1), make(n=2)
    other_uri = make(n=3, local_uri="sip:1001@example.com;user=phone")
    assert first.presentity is not second.presentity
    for sub in (first, second, other_uri):
        table.add(sub)
    assert second.presentity is first.presentity and second.local_uri is first.local_uri
    assert other_uri.presentity is first.presentity
    assert other_uri.local_uri == "sip:1001@example.com;user=phone"  # a different To URI stays


@pytest.mark.parametrize("count", [1, SMALL_WATCHERS, SMALL_WATCHERS + 5])
def test_watcher_index_add_remove_in_list_and_dict_form(count):
    table = SubscriptionTable()
    subs = [make(n=i) for i in range(count)]
    presence = make("1002@example.com", n=99, package="presence")
    for sub in subs + [presence]:
        table.add(sub)
    assert table.watchers("dialog", "1001@example.com") == subs
    assert table.watcher_count("dialog", "1001@example.com") == count
    assert table.watchers("dialog", "1002@example.com") == []
    assert sorted(table.watched()) == [("dialog", "1001@example.com"),
                                       ("presence", "1002@example.com")]
    assert table.counts_by_package() == {"dialog": count, "presence": 1}
    assert table.remove(subs[0]) and not table.remove(subs[0])
    assert table.watchers("dialog", "1001@example.com") == subs[1:]
    for sub in subs[1:]:
        table.remove(sub)
    assert table.watcher_count("dialog", "1001@example.com") == 0
    assert list(table.watched()) == [("presence", "1002@example.com")]
    assert table._watchers == {"presence": {"1002@example.com": [presence]}}


def test_expiry_is_the_next_whole_second_one_float_per_second():
    table = SubscriptionTable()
    early, late, whole = make(n=1, expires_at=100.25), make(n=2, expires_at=100.75), \
        make(n=3, expires_at=100.0)
    for sub in (early, late, whole):
        table.add(sub)
    assert early.expires_at == late.expires_at == 101.0 and early.expires_at is late.expires_at
    assert whole.expires_at == 100.0
    assert table.next_expiry() == 101.0
    assert table.pop_expired(101.0) == [whole]  # due strictly after its second
    assert table.pop_expired(101.99) == []
    assert table.pop_expired(102.0) == [early, late]
    assert table._seconds == {} and len(table) == 0
    table.add(sub := make(n=4, expires_at=200.5))
    table.refresh(sub, 300.1)
    assert sub.expires_at == 301.0
    assert table.pop_expired(250.0) == []  # the old bucket came due: the sub moved on
    assert table.pop_expired(302.0) == [sub]


def _engine() -> PresenceEngine:
    return PresenceEngine(EngineConfig(contacts=CONTACTS, amplification_factor=3.0),
                          PresenceState(REGISTRY, PackageOptions()), REGISTRY)


def _load(engine: PresenceEngine, rows: range, now: float) -> None:
    """Phones of 4 line keys each (the bench's workload), each initial NOTIFY answered."""
    for row in rows:
        phone, key = divmod(row, 4)
        source = ("10.0.0.7", 2000 + phone)
        engine.receive(subscribe(f"ext{(phone * 4 + key) % 1000}@example.com",
                                 watcher=f"phone{phone}@example.com", call_id=f"{row}@ph",
                                 from_tag=f"t{row}", branch=f"z9hG4bK-{row}",
                                 contact=f"sip:phone{phone}@10.0.0.7:{2000 + phone}"),
                       source, "udp", None, now)
        notify = engine.messages_to_send()[-1][2]
        engine.receive(answer(parse_message(notify)), source, "udp", None, now)
        engine.messages_to_send()


def forget_parse_memos() -> None:
    """Empty the bounded, process-wide memos of parsed URIs, AORs and address checks (a few MB
    at most, whatever the table's size): they are not the table's memory."""
    from busylamp.presence.engine import policy, routing
    from busylamp.presence.sip import uri
    from busylamp.wire import aor

    uri._uri_memo.clear()
    uri._name_addr_memo.clear()
    aor._memo.clear()
    for cached in (routing._dialog_uri, routing._valid_uri, routing._ip_address,
                   routing._unreachable, routing._routed, policy._accepts_types):
        cached.cache_clear()


def test_a_subscription_costs_few_blocks_in_steady_state():
    """2,000 more subscriptions (1,000 presentities, phones of 4 keys; without the history,
    which its own cap bounds): allocated blocks and tracemalloc bytes per subscription. Before
    the table kept one float per expiry second, reset the verified budget, bounded its shared
    values and listed small watcher sets: 7.5 blocks and 839 bytes; now 5.5 and 768 (the
    bytes include the resizes of the table's dicts, which a long run spreads thinner)."""
    engine = _engine()
    _load(engine, range(2000), 1000.0)  # the table's dicts past their first resizes
    engine.handle_timer(1040.0)  # the stored 200 OKs expire
    forget_parse_memos()
    gc.collect()
    tracemalloc.start()
    try:
        blocks, before = sys.getallocatedblocks(), tracemalloc.get_traced_memory()[0]
        _load(engine, range(2000, 4000), 1040.0)
        engine.handle_timer(1080.0)
        forget_parse_memos()
        gc.collect()
        blocks = sys.getallocatedblocks() - blocks
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    subs = list(engine.subscriptions)
    assert len(subs) == 4000 and all(sub.budget == 0 and sub.verified for sub in subs)
    assert len({id(sub.expires_at) for sub in subs}) == 2  # two loads, two seconds
    assert blocks / 2000 < 6.0, blocks / 2000
    assert grown / 2000 < 830, grown / 2000


def test_origin_is_the_source_address_unless_an_edge_named_another():
    table = SubscriptionTable()
    direct = make(n=1)
    behind = Subscription(
        tag=new_tag(), call_id="c@edge", remote_tag="t", package=REGISTRY["dialog"],
        presentity="1001@example.com", local_uri="sip:1001@example.com",
        remote_uri="sip:2000@example.com", target="sip:2000@192.0.2.9:5060", route=None,
        transport="udp", dest=("192.0.2.9", 5060), conn_id=None, remote_cseq=1,
        expires_at=3600.0, source=("192.0.2.9", 5060), origin="10.1.1.1",
        watcher="2000@example.com")
    assert direct.origin == "10.0.0.7" and len(direct.source) == 2
    assert behind.origin == "10.1.1.1" and behind.source[:2] == ("192.0.2.9", 5060)
    assert behind.as_dict(0.0)["source"] == "192.0.2.9:5060"
    table.add(direct)
    table.add(behind)
    assert table.per_origin == {"10.0.0.7": 1, "10.1.1.1": 1}
    table.remove(behind)
    assert table.per_origin == {"10.0.0.7": 1}


def test_tags_are_twelve_token_characters_unrepeated():
    tags = [new_tag() for _ in range(3000)]  # across batches
    assert len(set(tags)) == len(tags)
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert all(len(tag) == 12 and set(tag) <= alphabet for tag in tags)
