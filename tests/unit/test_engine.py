"""The presence engine without sockets: SIP bytes in, responses and NOTIFYs out, injected clock."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

import pytest

from busylamp.presence.engine import (
    EngineConfig,
    Event,
    ForgetMailbox,
    PresenceEngine,
    RequestResync,
    ResolveName,
    SubscriptionEnded,
    WatchMailbox,
)
from busylamp.presence.packages import REGISTRY
from busylamp.presence.packages.base import PackageOptions
from busylamp.presence.sip import Request, Response, parse_message
from busylamp.presence.state import PresenceState
from busylamp.presence.updates import parse_updates

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
PHONE = ("10.0.0.7", 5062)
CONTACTS = {"udp": ("192.0.2.1", 5065), "tcp": ("192.0.2.1", 5065)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def subscribe(
    presentity: str = "1001@example.com",
    *,
    watcher: str = "2000@example.com",
    event: str | None = "dialog",
    expires: int | None = 3600,
    call_id: str = "cid-1@phone",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    cseq: int = 1,
    branch: str = "z9hG4bK-b1",
    accept: str | None = "application/dialog-info+xml",
    contact: str = "sip:2000@10.0.0.7:5062",
    transport: str = "UDP",
    extra: str = "",
) -> bytes:
    lines = [
        f"SUBSCRIBE sip:{presentity} SIP/2.0",
        f"Via: SIP/2.0/{transport} 10.0.0.7:5062;branch={branch};rport",
        f"From: <sip:{watcher}>;tag={from_tag}",
        f"To: <sip:{presentity}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} SUBSCRIBE",
        f"Contact: <{contact}>",
        "Max-Forwards: 70",
    ]
    if event:
        lines.append(f"Event: {event}")
    if accept:
        lines.append(f"Accept: {accept}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(notify: Request, status: int = 200) -> bytes:
    h = notify.headers
    lines = [f"SIP/2.0 {status} Whatever"]
    lines += [f"Via: {v}" for v in h.get_all("Via")]
    lines += [
        f"From: {h.get('From')}",
        f"To: {h.get('To')}",
        f"Call-ID: {h.get('Call-ID')}",
        f"CSeq: {h.get('CSeq')}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Harness:
    def __init__(self, **config) -> None:
        self.clock = Clock()
        options = PackageOptions()
        self.state = PresenceState(REGISTRY, options)
        self.seen: list[Event] = []  # every event drained so far
        self.engine = PresenceEngine(
            EngineConfig(contacts=CONTACTS, **config), self.state, REGISTRY
        )

    def events(self) -> list[Event]:
        """The engine's events since the last call (also kept in ``seen``)."""
        new = self.engine.events()
        self.seen += new
        return new

    @property
    def control(self) -> list[dict]:
        """The control-bus messages the node would have published so far."""
        self.events()
        return [e.control_message() for e in self.seen
                if isinstance(e, (RequestResync, WatchMailbox, ForgetMailbox))]

    def names_to_resolve(self) -> list[str]:
        return [e.name for e in self.events() if isinstance(e, ResolveName)]

    def send(self, data: bytes, source=PHONE, transport: str = "udp", conn_id=None):
        self.engine.receive(data, source, transport, conn_id, self.clock.now)
        return self.out()

    def out(self) -> list[tuple[str, tuple, Request | Response, int | None]]:
        return [
            (t, dest, parse_message(data), conn)
            for t, dest, data, conn in self.engine.messages_to_send()
        ]

    def publish(self, *objs: dict):
        self.engine.apply(parse_updates(list(objs)), self.clock.now)
        return self.out()

    def tick(self, seconds: float):
        self.clock.now += seconds
        self.engine.handle_timer(self.clock.now)
        return self.out()

    def subscribe_ok(self, **kw) -> tuple[Response, Request]:
        out = self.send(subscribe(**kw))
        assert [type(m) for _, _, m, _ in out] == [Response, Request], out
        return out[0][2], out[1][2]


def dialog_update(state: str, call_id: str = "call-1", presentity=("1001", "example.com"), **kw):
    user, realm = presentity
    update = {
        "Event-Name": "update", "Event-Package": "dialog",
        "From": f"sip:{user}@{realm}", "From-User": user, "From-Realm": realm,
        "To": "sip:1002@example.com", "To-User": "1002", "To-Realm": realm,
        "Call-ID": call_id, "State": state, "Direction": "initiator", "Expires": 600,
    }
    update.update(kw)
    return update


def dialogs(notify: Request) -> list[tuple[str, str]]:
    root = ET.fromstring(notify.body)
    return [
        (d.get("id"), d.find("d:state", NS).text) for d in root.findall("d:dialog", NS)
    ]


def version(notify: Request) -> int:
    return int(ET.fromstring(notify.body).get("version"))


def test_initial_subscribe_gets_200_then_full_state_notify():
    h = Harness()
    ok, notify = h.subscribe_ok()
    assert ok.status == 200
    assert ok.to.tag
    assert ok.headers.get("Expires") == "3600"
    assert ok.headers.get("Contact") == "<sip:192.0.2.1:5065;transport=udp>"
    assert notify.method == "NOTIFY"
    assert notify.uri == "sip:2000@10.0.0.7:5062"
    assert notify.from_.tag == ok.to.tag
    assert notify.to.tag == "ft1"
    assert notify.headers.get("Event") == "dialog"
    assert notify.headers.get("Subscription-State") == "active;expires=3600"
    assert notify.headers.get("Content-Type") == "application/dialog-info+xml"
    root = ET.fromstring(notify.body)
    assert root.get("state") == "full"
    assert root.get("entity") == "sip:1001@example.com"
    assert version(notify) == 0 and dialogs(notify) == []
    assert len(h.engine.subscriptions) == 1


def test_retransmitted_subscribe_gets_same_response_and_no_second_subscription():
    h = Harness()
    data = subscribe()
    h.engine.receive(data, PHONE, "udp", None, h.clock.now)
    first = h.engine.messages_to_send()
    h.engine.receive(data, PHONE, "udp", None, h.clock.now + 0.5)
    again = h.engine.messages_to_send()
    assert len(first) == 2 and len(again) == 1
    assert again[0][2] == first[0][2]
    assert len(h.engine.subscriptions) == 1


def test_retransmission_resent_unchanged_is_answered_before_any_parsing(monkeypatch):
    from busylamp.presence.engine import dispatch

    h = Harness()
    data = subscribe()
    h.engine.receive(data, PHONE, "udp", None, h.clock.now)
    first = h.engine.messages_to_send()

    def no_parse(*args, **kwargs):
        raise AssertionError("a datagram resent unchanged was parsed again")

    monkeypatch.setattr(dispatch, "parse_message", no_parse)
    h.engine.receive(bytes(data), PHONE, "udp", None, h.clock.now + 0.5)
    again = h.engine.messages_to_send()
    assert again == [("udp", PHONE, first[0][2], None)]
    assert h.engine.counters["sip_retransmissions_received"] == 1
    assert h.engine.counters["sip_requests_received"] == 2
    # the same bytes from another address are another request: parsed (here: refused by the stub)
    with pytest.raises(AssertionError, match="parsed again"):
        h.engine.receive(data, ("10.0.0.8", 5062), "udp", None, h.clock.now + 0.6)


def test_retransmission_with_other_bytes_still_matches_its_transaction():
    h = Harness()
    data = subscribe()
    h.engine.receive(data, PHONE, "udp", None, h.clock.now)
    first = h.engine.messages_to_send()
    # same transaction (branch, sent-by, method), bytes differ: found by the RFC 3261 key
    changed = data.replace(b"Max-Forwards: 70", b"Max-Forwards: 69")
    assert changed != data
    h.engine.receive(changed, PHONE, "udp", None, h.clock.now + 0.5)
    assert h.engine.messages_to_send() == [("udp", PHONE, first[0][2], None)]
    assert len(h.engine.subscriptions) == 1


def test_retransmission_after_timer_j_is_a_new_request():
    h = Harness(t1=0.5)
    data = subscribe(expires=3600)
    h.engine.receive(data, PHONE, "udp", None, h.clock.now)
    first = h.engine.messages_to_send()
    h.clock.now += 32.1  # Timer J (64*T1) over: the response is no longer kept
    h.engine.handle_timer(h.clock.now)
    h.engine.messages_to_send()
    h.engine.receive(data, PHONE, "udp", None, h.clock.now)
    again = h.engine.messages_to_send()
    assert again[0][2] != first[0][2]  # answered anew (a new To-tag), not from the cache
    assert h.engine.counters["sip_retransmissions_received"] == 0


def test_overloaded_engine_refuses_new_subscribes_only():
    h = Harness()
    _, notify = h.subscribe_ok()  # a dialog from before the overload
    h.send(answer(notify))
    h.engine.overloaded = True
    refused = [h.send(subscribe(call_id=f"cid-{i}", from_tag=f"t{i}", branch=f"z9hG4bK-o{i}"))
               for i in range(20)]
    assert all(len(out) == 1 and out[0][2].status == 503 for out in refused)
    assert {out[0][2].reason for out in refused} == {"Overloaded"}
    delays = {int(out[0][2].headers.get("Retry-After")) for out in refused}
    assert all(10 <= d < 20 for d in delays) and len(delays) > 1
    assert h.engine.counters["limit_overload"] == 20 and len(h.engine.subscriptions) == 1
    # the existing dialog is still served: its refresh gets 200 and a NOTIFY
    tag = next(iter(h.engine.subscriptions)).tag
    out = h.send(subscribe(to_tag=tag, cseq=2, branch="z9hG4bK-r"))
    assert [m.status if isinstance(m, Response) else m.method for _, _, m, _ in out] == \
        [200, "NOTIFY"]
    h.engine.overloaded = False
    h.subscribe_ok(call_id="cid-after", from_tag="ta", branch="z9hG4bK-after")
    assert len(h.engine.subscriptions) == 2


def test_overload_503_for_a_call_id_not_in_utf8():
    """The Retry-After spread sums the Call-ID's bytes as received, UTF-8 or not (it raised
    UnicodeEncodeError for a Call-ID the parser had decoded with surrogate escapes)."""
    h = Harness()
    h.engine.overloaded = True
    data = subscribe(call_id="cid-\xe9").replace("cid-\xe9".encode(), b"cid-\xe9")
    (_, _, response, _), = h.send(data)
    assert (response.status, response.reason) == (503, "Overloaded")
    assert response.headers.get("Retry-After") == str(10 + sum(b"cid-\xe9") % 10)


def test_state_changes_notify_in_order_with_growing_version_and_cseq():
    h = Harness()
    _, notify = h.subscribe_ok()
    h.send(answer(notify))
    seen = []
    for state in ("early", "confirmed", "terminated"):
        out = h.publish(dialog_update(state))
        assert len(out) == 1
        notify = out[0][2]
        seen.append((version(notify), dialogs(notify), notify.cseq[0]))
        h.send(answer(notify))
    assert seen == [
        (1, [("call-1", "early")], 2),
        (2, [("call-1", "confirmed")], 3),
        (3, [("call-1", "terminated")], 4),
    ]


def test_one_notify_in_flight_changes_coalesce_to_latest():
    h = Harness()
    _, initial = h.subscribe_ok()
    # initial NOTIFY not answered yet: updates must not produce overlapping NOTIFYs
    assert h.publish(dialog_update("early")) == []
    assert h.publish(dialog_update("confirmed")) == []
    out = h.send(answer(initial))
    assert len(out) == 1
    assert dialogs(out[0][2]) == [("call-1", "confirmed")]
    assert version(out[0][2]) == 1


def test_two_calls_to_one_presentity_are_both_in_the_body():
    h = Harness()
    _, notify = h.subscribe_ok()
    h.send(answer(notify))
    out = h.publish(dialog_update("early", "call-a"), dialog_update("confirmed", "call-b"))
    assert sorted(dialogs(out[0][2])) == [("call-a", "early"), ("call-b", "confirmed")]


def test_refresh_gets_200_and_immediate_notify():
    h = Harness()
    ok, notify = h.subscribe_ok()
    h.send(answer(notify))
    h.clock.now += 100
    out = h.send(subscribe(to_tag=ok.to.tag, cseq=2, branch="z9hG4bK-b2", expires=600))
    assert out[0][2].status == 200 and out[0][2].headers.get("Expires") == "600"
    assert out[1][2].headers.get("Subscription-State") == "active;expires=600"
    assert version(out[1][2]) == 1


def test_unsubscribe_sends_terminated_and_removes():
    h = Harness()
    ok, notify = h.subscribe_ok()
    h.send(answer(notify))
    out = h.send(subscribe(to_tag=ok.to.tag, cseq=2, branch="z9hG4bK-b2", expires=0))
    assert out[0][2].status == 200
    assert out[1][2].headers.get("Subscription-State") == "terminated;reason=timeout"
    assert len(h.engine.subscriptions) == 0
    # a later refresh of that dialog is unknown
    out = h.send(subscribe(to_tag=ok.to.tag, cseq=3, branch="z9hG4bK-b3"))
    assert out[0][2].status == 481


def test_fetch_out_of_dialog_expires_zero():
    h = Harness()
    h.publish(dialog_update("confirmed"))
    out = h.send(subscribe(expires=0))
    assert out[0][2].status == 200
    notify = out[1][2]
    assert notify.headers.get("Subscription-State") == "terminated;reason=timeout"
    assert dialogs(notify) == [("call-1", "confirmed")]
    assert len(h.engine.subscriptions) == 0


def test_expiry_sends_terminated_timeout():
    h = Harness(min_expires=10, max_expires=60)
    ok, notify = h.subscribe_ok(expires=3600)
    assert ok.headers.get("Expires") == "60"  # clamped to max
    h.send(answer(notify))
    assert h.tick(59) == []
    out = h.tick(2)
    assert len(out) == 1
    assert out[0][2].headers.get("Subscription-State") == "terminated;reason=timeout"
    assert len(h.engine.subscriptions) == 0


def test_min_expires_gives_423_but_never_for_zero():
    h = Harness(min_expires=300)
    out = h.send(subscribe(expires=60))
    assert out[0][2].status == 423
    assert out[0][2].headers.get("Min-Expires") == "300"
    out = h.send(subscribe(expires=0, branch="z9hG4bK-zero"))
    assert out[0][2].status == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "header"),
    [
        ({"event": "conference"}, 489, "Allow-Events"),
        ({"event": None}, 489, "Allow-Events"),
        ({"accept": "text/plain"}, 406, "Accept"),
        ({"to_tag": "nosuchtag"}, 481, None),
        ({"extra": "Require: foo"}, 420, "Unsupported"),
    ],
)
def test_rejections(kwargs, status, header):
    h = Harness()
    out = h.send(subscribe(**kwargs))
    assert len(out) == 1
    resp = out[0][2]
    assert resp.status == status
    if header:
        assert resp.headers.get(header)
    assert len(h.engine.subscriptions) == 0


def test_other_methods():
    h = Harness()
    invite = subscribe().replace(b"SUBSCRIBE sip:", b"INVITE sip:", 1).replace(
        b"1 SUBSCRIBE", b"1 INVITE")
    assert h.send(invite)[0][2].status == 405
    assert "SUBSCRIBE" in h.send(invite.replace(b"z9hG4bK-b1", b"z9hG4bK-x"))[0][2].headers.get("Allow")
    options = subscribe(branch="z9hG4bK-o").replace(b"SUBSCRIBE sip:", b"OPTIONS sip:", 1).replace(
        b"1 SUBSCRIBE", b"1 OPTIONS")
    resp = h.send(options)[0][2]
    assert resp.status == 200 and "dialog" in resp.headers.get("Allow-Events")
    weird = subscribe(branch="z9hG4bK-w").replace(b"SUBSCRIBE sip:", b"FROBNICATE sip:", 1).replace(
        b"1 SUBSCRIBE", b"1 FROBNICATE")
    assert h.send(weird)[0][2].status == 501


def test_notify_answered_481_removes_subscription():
    h = Harness()
    _, notify = h.subscribe_ok()
    assert h.send(answer(notify, 481)) == []
    assert len(h.engine.subscriptions) == 0
    assert h.publish(dialog_update("early")) == []


def test_notify_timeout_retransmits_then_removes():
    h = Harness(t1=0.5, t2=4.0)
    _, notify = h.subscribe_ok()
    retransmits = 0
    for _ in range(80):
        deadline = h.engine.get_timer()
        assert deadline is not None
        h.clock.now = deadline
        h.engine.handle_timer(h.clock.now)
        sent = h.out()
        retransmits += sum(1 for *_, m, _c in sent if isinstance(m, Request))
        if len(h.engine.subscriptions) == 0:
            break
    assert len(h.engine.subscriptions) == 0
    assert retransmits == 10  # 0.5 1 2 4 4 4 4 4 4 4 within 32 s (RFC 3261 17.1.2.2)
    assert h.engine.counters["subscriptions_removed_notify_timeout"] == 1


def test_tcp_watcher_gets_notify_on_its_connection():
    h = Harness()
    out = h.send(subscribe(transport="TCP", contact="sip:2000@10.0.0.7:5062;transport=tcp"),
                 transport="tcp", conn_id=42)
    (t1, _, resp, c1), (t2, dest, notify, c2) = out
    assert (t1, c1) == ("tcp", 42)
    assert (t2, c2) == ("tcp", 42) and notify.headers.get("Via").startswith("SIP/2.0/TCP")
    # no retransmission over a reliable transport
    h.clock.now += 5
    h.engine.handle_timer(h.clock.now)
    assert h.out() == []


def test_record_route_becomes_route_set_of_notify():
    h = Harness()
    rr = "Record-Route: <sip:10.9.9.9:5060;lr>"
    out = h.send(subscribe(extra=rr), source=("10.9.9.9", 5060))
    resp, notify = out[0][2], out[1][2]
    assert resp.headers.get("Record-Route") == "<sip:10.9.9.9:5060;lr>"
    assert notify.headers.get("Route") == "<sip:10.9.9.9:5060;lr>"
    assert notify.uri == "sip:2000@10.0.0.7:5062"
    assert out[1][1] == ("10.9.9.9", 5060)


def test_nat_send_to_source():
    h = Harness(nat_send_to_source=True)
    out = h.send(subscribe(), source=("203.0.113.9", 40000))
    assert out[1][1] == ("203.0.113.9", 40000)


def test_trusted_and_cross_domain_and_aliases():
    h = Harness(trusted=(ipaddress.ip_network("10.1.0.0/16"),))
    assert h.send(subscribe())[0][2].status == 403
    h = Harness()
    assert h.send(subscribe(watcher="2000@other.org"))[0][2].status == 403
    h = Harness(cross_domain=True)
    assert h.send(subscribe(watcher="2000@other.org"))[0][2].status == 200
    h = Harness(domain_aliases={"10.0.0.5": "example.com"})
    _, notify = h.subscribe_ok(presentity="1001@10.0.0.5", watcher="2000@10.0.0.5")
    h.send(answer(notify))
    out = h.publish(dialog_update("early"))
    assert dialogs(out[0][2]) == [("call-1", "early")]


def test_message_summary_and_presence_packages():
    h = Harness()
    _, notify = h.subscribe_ok(event="message-summary",
                               accept="application/simple-message-summary")
    assert notify.headers.get("Content-Type") == "application/simple-message-summary"
    assert b"Messages-Waiting: no" in notify.body
    assert h.control == [{"Event-Name": "mwi_query", "Presentity": "1001@example.com"}]
    h.send(answer(notify))
    out = h.publish({
        "Event-Name": "update", "Event-Package": "message-summary", "From-User": "1001",
        "From-Realm": "example.com", "Messages-Waiting": "yes", "Messages-New": 2,
        "Messages-Saved": 1,
    })
    assert b"Messages-Waiting: yes" in out[0][2].body
    assert b"Voice-Message: 2/1" in out[0][2].body


def test_malformed_request_gets_400_and_garbage_is_dropped():
    h = Harness()
    bad = subscribe().replace(b"Expires: 3600", b"Expires: soon")
    out = h.send(bad)
    assert len(out) == 1 and out[0][2].status == 400
    assert len(h.engine.subscriptions) == 0
    assert h.send(b"\x00\xff garbage \r\n\r\n") == []
    assert h.engine.counters["sip_malformed"] == 2


def test_shutdown_terminates_with_deactivated():
    h = Harness()
    _, notify = h.subscribe_ok()
    h.send(answer(notify))
    assert h.engine.terminate_all("deactivated", h.clock.now) == 1
    out = h.out()
    assert out[0][2].headers.get("Subscription-State") == "terminated;reason=deactivated"


def test_malformed_input_is_logged_at_a_rate_limit(caplog):
    h = Harness()
    with caplog.at_level("WARNING", logger="busylamp.presence.engine"):
        for _ in range(50):
            h.send(b"garbage\r\n\r\n")
        h.tick(61)
        h.send(b"more garbage\r\n\r\n")
    warnings = [r for r in caplog.records if "malformed SIP" in r.getMessage()]
    assert len(warnings) == 2
    assert "50 malformed since the last report" in warnings[1].getMessage()


def test_sequence_gap_is_counted_and_asks_the_bridges_to_resync():
    h = Harness()
    base = {"Bridge-ID": "b1", "Bridge-Epoch": 7}
    h.publish({**dialog_update("early", "c1"), **base, "Sequence": 1})
    h.publish({**dialog_update("early", "c2"), **base, "Sequence": 2})
    assert h.control == []
    h.publish({**dialog_update("early", "c3"), **base, "Sequence": 6})  # 3, 4, 5 were lost
    assert h.state.stats.gaps == 3
    assert h.control == [{"Event-Name": "resync", "Switch-ID": "*", "Bridge-ID": "b1",
                          "Reason": "sequence gap"}]


def test_subscribe_without_expires_gets_the_package_default_within_bounds():
    h = Harness(max_expires=600)
    ok, _ = h.subscribe_ok(expires=None)
    assert ok.headers.get("Expires") == "600"  # dialog's 3600, cut to --max-expires
    h = Harness(default_expires=120)
    ok, _ = h.subscribe_ok(expires=None)
    assert ok.headers.get("Expires") == "120"


def test_host_name_destination_waits_for_its_lookup():
    h = Harness()
    out = h.send(subscribe(contact="sip:2000@phone.example:5062"))
    assert [m.status for _, _, m, _ in out] == [200]  # the NOTIFY waits for the address
    assert h.names_to_resolve() == ["phone.example"]
    h.publish(dialog_update("early"))  # coalesced into the NOTIFY that goes once resolved
    h.engine.resolved("phone.example", "10.0.0.9", h.clock.now)
    (transport, dest, notify, _), = h.out()
    assert dest == ("10.0.0.9", 5062) and dialogs(notify) == [("call-1", "early")]
    # its answer must come from the resolved address
    assert h.send(answer(notify), source=("10.0.0.9", 5062)) == []
    assert h.engine.subscriptions.watchers("dialog", "1001@example.com")[0].inflight is None


def test_unresolvable_name_ends_the_subscription_and_a_refresh_follows_the_new_name():
    h = Harness()
    h.send(subscribe(contact="sip:2000@gone.example"))
    h.send(subscribe(call_id="cid-2", from_tag="ft2", branch="z9hG4bK-b3",
                     contact="sip:2000@moves.example"))
    assert h.names_to_resolve() == ["gone.example", "moves.example"]
    h.engine.resolved("gone.example", None, h.clock.now)
    assert h.out() == []
    assert h.engine.counters["subscriptions_removed_unresolvable"] == 1
    sub, = h.engine.subscriptions
    out = h.send(subscribe(call_id="cid-2", from_tag="ft2", to_tag=sub.tag, cseq=2,
                           branch="z9hG4bK-b2", contact="sip:2000@10.0.0.8:5070"))
    assert [m.status for _, _, m, _ in out] == [200]
    h.engine.resolved("moves.example", "10.0.0.9", h.clock.now)  # stale: the target moved on
    (_, dest, notify, _), = h.out()
    assert dest == ("10.0.0.8", 5070)


def test_response_from_another_address_is_ignored():
    h = Harness()
    _, notify = h.subscribe_ok()
    assert h.send(answer(notify, 481), source=("10.6.6.6", 5062)) == []
    assert len(h.engine.subscriptions) == 1
    assert h.engine.counters["notify_responses_wrong_source"] == 1
    h.send(answer(notify, 481))
    assert len(h.engine.subscriptions) == 0


def test_target_refresh_to_an_unusable_contact_is_refused_and_the_dialog_goes_on():
    h = Harness()
    resp, notify = h.subscribe_ok()
    h.send(answer(notify))
    tag = resp.to.tag
    for n, contact in enumerate(("tel:+15550100", "sips:2000@10.0.0.7", "sip:x@10.0.0.7?a=b")):
        out = h.send(subscribe(to_tag=tag, cseq=2 + n, branch=f"z9hG4bK-r{n}", contact=contact))
        assert [m.status for _, _, m, _ in out] in ([400], [416])
    sub, = h.engine.subscriptions
    assert sub.target == "sip:2000@10.0.0.7:5062" and sub.dest == ("10.0.0.7", 5062)
    out = h.send(subscribe(to_tag=tag, cseq=9, branch="z9hG4bK-r9"))
    assert [type(m) for _, _, m, _ in out] == [Response, Request]


def test_a_remote_sender_cannot_aim_notifies_at_loopback_even_through_dns():
    h = Harness()
    out = h.send(subscribe(contact="sip:2000@127.0.0.1:11211"))
    assert [(m.status, m.reason) for _, _, m, _ in out] == [
        (400, "Contact points at a loopback address")]
    h.send(subscribe(branch="z9hG4bK-b2", contact="sip:2000@rebind.example"))
    h.out()
    h.engine.resolved("rebind.example", "127.0.0.1", h.clock.now)
    assert h.out() == [] and len(h.engine.subscriptions) == 0
    assert h.engine.counters["subscriptions_removed_unresolvable"] == 1


def test_events_are_typed_queued_and_drained_once():
    h = Harness()
    _, notify = h.subscribe_ok()
    h.send(answer(notify))
    [sub] = h.engine.subscriptions
    assert h.events() == []  # a subscription that starts asks nothing of the node
    assert h.engine.terminate_all("deactivated", h.clock.now) == 1
    assert h.events() == [SubscriptionEnded(sub.tag, "dialog", "1001@example.com",
                                            sub.watcher, "shutdown")]
    assert h.events() == [] and h.engine.counters["subscriptions_removed_shutdown"] == 1


def test_a_mailbox_is_claimed_by_its_first_watcher_and_released_by_its_last():
    h = Harness()
    _, notify = h.subscribe_ok(event="message-summary",
                               accept="application/simple-message-summary")
    h.send(answer(notify))
    assert h.control == [{"Event-Name": "mwi_query", "Presentity": "1001@example.com"}]
    h.engine.terminate_all("deactivated", h.clock.now)
    assert h.control[1:] == [{"Event-Name": "mwi_forget", "Presentity": "1001@example.com"}]
