"""The presence engine on real sockets with sipp as the phone, over UDP and TCP."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.node_util import publish, running_node, settled, sip_address
from tests.polling import wait_until
from tests.sipp_scenarios import Watcher
from tests.sipp_util import start_sipp

pytestmark = pytest.mark.sipp

NS = {"d": "urn:ietf:params:xml:ns:dialog-info", "p": "urn:ietf:params:xml:ns:pidf"}
PRESENTITY = "1001@example.com"


def dialog(state: str, call_id: str = "call-1", user: str = "1001") -> dict:
    return {
        "Event-Name": "update", "Event-Package": "dialog",
        "From": f"sip:{user}@example.com", "From-User": user, "From-Realm": "example.com",
        "To": "sip:1002@example.com", "To-User": "1002", "To-Realm": "example.com",
        "Call-ID": call_id, "State": state, "Direction": "recipient", "Expires": 600,
    }


def states(notify) -> list[tuple[str, str]]:
    root = ET.fromstring(notify.body)
    return [(d.get("id"), d.find("d:state", NS).text) for d in root.findall("d:dialog", NS)]


def version(notify) -> int:
    return int(ET.fromstring(notify.body).get("version"))


def run_watcher(tmp_path, node, watcher: Watcher, transport: str):
    scenario = watcher.write(tmp_path / "watcher.xml")
    return start_sipp(scenario, sip_address(node), tmp_path / "sipp", transport=transport)


def subscribed(node, presentity=PRESENTITY, package="dialog", count=1):
    return lambda: (
        len(node.engine.subscriptions.watchers(package, presentity)) == count
        and settled(node, presentity, package)
    )


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dialog_states_reach_the_phone_in_order(tmp_path, transport):
    with running_node() as node:
        watcher = Watcher(PRESENTITY).subscribe().notify(count=4).unsubscribe().notify()
        sipp = run_watcher(tmp_path, node, watcher, transport)
        wait_until(subscribed(node), message="subscription with answered initial NOTIFY")
        for state in ("early", "confirmed", "terminated"):
            publish(node, dialog(state))
            wait_until(lambda: settled(node, PRESENTITY), message=f"NOTIFY {state} answered")
        assert sipp.wait() == 0, sipp.errors()
        notifies = sipp.received("NOTIFY")
        assert len(notifies) == 5
        initial, early, confirmed, terminated, final = notifies
        assert states(initial) == []
        assert [states(n) for n in (early, confirmed, terminated)] == [
            [("call-1", "early")], [("call-1", "confirmed")], [("call-1", "terminated")]
        ]
        n = version(initial)
        assert [version(x) for x in (early, confirmed, terminated)] == [n + 1, n + 2, n + 3]
        cseqs = [int(x.header("CSeq").split()[0]) for x in notifies]
        assert cseqs == sorted(set(cseqs))
        assert initial.header("Subscription-State").startswith("active;expires=")
        assert final.header("Subscription-State") == "terminated;reason=timeout"
        assert len(node.engine.subscriptions) == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_calls_are_both_in_one_body(tmp_path, transport):
    with running_node() as node:
        watcher = Watcher(PRESENTITY).subscribe().notify(count=2).unsubscribe().notify()
        sipp = run_watcher(tmp_path, node, watcher, transport)
        wait_until(subscribed(node))
        publish(node, dialog("early", "call-a"), dialog("confirmed", "call-b"))
        wait_until(lambda: settled(node, PRESENTITY))
        assert sipp.wait() == 0, sipp.errors()
        body = sipp.received("NOTIFY")[1]
        assert sorted(states(body)) == [("call-a", "early"), ("call-b", "confirmed")]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_message_waiting_yes_then_no(tmp_path, transport):
    with running_node() as node:
        watcher = Watcher(PRESENTITY, event="message-summary",
                          accept="application/simple-message-summary")
        watcher.subscribe().notify(count=3).unsubscribe().notify()
        sipp = run_watcher(tmp_path, node, watcher, transport)
        wait_until(subscribed(node, package="message-summary"))
        for waiting, new in (("yes", 2), ("no", 0)):
            publish(node, {
                "Event-Name": "update", "Event-Package": "message-summary",
                "From-User": "1001", "From-Realm": "example.com",
                "Messages-Waiting": waiting, "Messages-New": new, "Messages-Saved": 1,
            })
            wait_until(lambda: settled(node, PRESENTITY, "message-summary"))
        assert sipp.wait() == 0, sipp.errors()
        bodies = [n.body for n in sipp.received("NOTIFY")]
        assert bodies[0].startswith("Messages-Waiting: no")
        assert bodies[1].startswith("Messages-Waiting: yes")
        assert "Voice-Message: 2/1" in bodies[1]
        assert bodies[2].startswith("Messages-Waiting: no")
        assert all(n.header("Content-Type") == "application/simple-message-summary"
                   for n in sipp.received("NOTIFY"))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_presence_open_and_closed(tmp_path, transport):
    with running_node() as node:
        watcher = Watcher(PRESENTITY, event="presence", accept="application/pidf+xml")
        watcher.subscribe().notify(count=3).unsubscribe().notify()
        sipp = run_watcher(tmp_path, node, watcher, transport)
        wait_until(subscribed(node, package="presence"))
        for state in ("closed", "open"):
            publish(node, {
                "Event-Name": "update", "Event-Package": "presence", "From-User": "1001",
                "From-Realm": "example.com", "To-User": "1001", "State": state,
                "Call-ID": "presence-1",
            })
            wait_until(lambda: settled(node, PRESENTITY, "presence"))
        assert sipp.wait() == 0, sipp.errors()
        notifies = sipp.received("NOTIFY")
        basics = [ET.fromstring(n.body).find(".//p:basic", NS).text for n in notifies[1:3]]
        assert basics == ["closed", "open"]
        assert ET.fromstring(notifies[1].body).get("entity") == "sip:1001@example.com"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_refresh_gets_notify_and_new_expiry(tmp_path, transport):
    with running_node() as node:
        watcher = Watcher(PRESENTITY).subscribe(expires=120).notify().refresh(expires=90)
        watcher.notify().unsubscribe().notify()
        sipp = run_watcher(tmp_path, node, watcher, transport)
        assert sipp.wait() == 0, sipp.errors()
        notifies = sipp.received("NOTIFY")
        assert [n.header("Subscription-State") for n in notifies] == [
            "active;expires=120", "active;expires=90", "terminated;reason=timeout"
        ]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_expiry_with_short_max_expires(tmp_path, transport):
    with running_node(min_expires=1, max_expires=2) as node:
        watcher = Watcher(PRESENTITY).subscribe(expires=3600).notify(count=2)
        sipp = run_watcher(tmp_path, node, watcher, transport)
        assert sipp.wait() == 0, sipp.errors()
        notifies = sipp.received("NOTIFY")
        assert notifies[0].header("Subscription-State") == "active;expires=2"
        assert notifies[1].header("Subscription-State") == "terminated;reason=timeout"
        wait_until(lambda: len(node.engine.subscriptions) == 0)


def test_watcher_answering_481_is_removed(tmp_path):
    with running_node() as node:
        watcher = Watcher(PRESENTITY).subscribe().notify(answer=481)
        sipp = run_watcher(tmp_path, node, watcher, "udp")
        assert sipp.wait() == 0, sipp.errors()
        wait_until(lambda: len(node.engine.subscriptions) == 0)
        assert node.engine.counters["subscriptions_removed_notify_rejected"] == 1
        publish(node, dialog("early"))
        assert node.engine.counters["notify_sent"] == 1


def test_watcher_that_never_answers_gets_retransmissions_then_is_removed(tmp_path):
    with running_node(t1=0.05, t2=0.2, timer_f=1.5) as node:
        # sipp takes the initial NOTIFY and its retransmissions and never answers any of them
        watcher = Watcher(PRESENTITY).subscribe().notify(answer=None).pause(2500)
        sipp = run_watcher(tmp_path, node, watcher, "udp")
        wait_until(lambda: node.engine.counters["subscriptions_removed_notify_timeout"] == 1,
                   timeout=10)
        sipp.wait()
        assert len(node.engine.subscriptions) == 0
        assert node.engine.client_transactions.retransmissions >= 5
        received = sipp.received("NOTIFY")
        assert len(received) >= 5  # the same NOTIFY again and again, on the wire
        assert len({n.header("Via") for n in received}) == 1


def test_readme_blf_watcher_scenario_works_as_documented(tmp_path):
    """contrib/sipp/blf-watcher.xml with the README's keys: SUBSCRIBE, NOTIFYs, unsubscribe."""
    from tests.conftest import REPO

    with running_node() as node:
        sipp = start_sipp(REPO / "contrib" / "sipp" / "blf-watcher.xml", sip_address(node),
                          tmp_path / "sipp",
                          keys={"presentity": PRESENTITY, "watcher": "2000@example.com"})
        wait_until(subscribed(node))
        sub = node.engine.subscriptions.watchers("dialog", PRESENTITY)[0]
        assert sub.target.startswith("sip:127.0.0.1:")
        for i, state in enumerate(("early", "confirmed", "terminated", "early")):
            publish(node, dialog(state, call_id=f"call-{i}"))
            wait_until(lambda: settled(node, PRESENTITY))
        assert sipp.wait() == 0, sipp.errors()
        final = sipp.received("NOTIFY")[-1]
        assert final.header("Subscription-State") == "terminated;reason=timeout"
