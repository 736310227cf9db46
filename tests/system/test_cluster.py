"""The distributed topology, end to end: NSQ broker, presence nodes, the contrib edge, sipp phones.

Every presence node is a real ``busylamp run --role presence --bus nsq`` subprocess; the edge is
contrib/kamailio-edge/kamailio.cfg in a real Kamailio; phones are sipp over UDP through the edge.
The broker is the real nsqd + nsqlookupd of the kit (tests/nsq_kit.py), started by the tests on
their own ports and restarted by them; nodes find nsqd through nsqlookupd, as deployed. Updates
are published to NSQ, never to a node directly.

The edge hashes initial SUBSCRIBEs on the From URI; with a two-node dispatcher list the users in
``SECOND_NODE_WATCHERS`` land on the second node. The tests do not trust that: they assert where
every subscription is through each node's ``/subscriptions``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.socket
import pytest
import ujson

from tests.kamailio_util import AUTO_PORT, KamailioProcess, start_kamailio
from tests.kits import require_nsq
from tests.nsq_kit import NsqCluster
from tests.polling import wait_until
from tests.sipp_util import SippRun, free_port, parse_trace, start_sipp

REPO = Path(__file__).resolve().parents[2]
EDGE_CFG = REPO / "contrib" / "kamailio-edge" / "kamailio.cfg"
TOPIC = "presence"
DOMAIN = "busylamp.test"
NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}

pytestmark = [
    pytest.mark.kamailio,
    pytest.mark.sipp,
    pytest.mark.skipif(
        not (shutil.which("kamailio") and shutil.which("sipp")), reason="needs kamailio and sipp"
    ),
]

# From-URI hash of the edge (dispatcher algorithm 1) over a two-entry set, for sip:USER@DOMAIN.
FIRST_NODE_WATCHERS = ["alice", "bob", "erin", "grace"]
SECOND_NODE_WATCHERS = ["carol", "dave", "frank", "heidi"]


# ------------------------------------------------------------------------------------ helpers


def http_get(address: tuple[str, int], path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET over gevent sockets (the tests' greenlets keep running meanwhile)."""
    sock = gevent.socket.create_connection(address, timeout=timeout)
    try:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {address[0]}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def dialog_update(state: str, call_id: str, seq: int, user: str = "1001") -> dict:
    return {
        "Event-Name": "update", "Event-Package": "dialog", "From": f"sip:{user}@{DOMAIN}",
        "From-User": user, "From-Realm": DOMAIN, "To": f"sip:1002@{DOMAIN}",
        "Call-ID": call_id, "State": state, "Direction": "initiator", "Expires": 600,
        "Bridge-ID": "bridge-1", "Bridge-Epoch": 1, "Sequence": seq, "Switch-ID": "switch-1",
    }


def dialogs(body: str) -> list[tuple[str, str]]:
    """(id, state) of every dialog in a dialog-info body."""
    root = ET.fromstring(body)
    return [(d.get("id"), d.find("d:state", NS).text) for d in root.findall("d:dialog", NS)]


# ------------------------------------------------------------------------------------ nodes


@dataclass
class Node:
    """One ``busylamp run --role presence --bus nsq`` subprocess."""

    name: str
    sip_port: int
    http_port: int
    log_path: Path
    process: subprocess.Popen

    @property
    def http(self) -> tuple[str, int]:
        return "127.0.0.1", self.http_port

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.sip_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}:\n"
                                 f"{self.log()[-3000:]}")

    def get_json(self, path: str) -> tuple[int, object]:
        status, body = http_get(self.http, path)
        return status, ujson.loads(body) if body.strip() else None

    def ready(self) -> bool:
        self.check_alive()
        try:
            return self.get_json("/health")[0] == 200
        except OSError:
            return False

    def subscribed_watchers(self, presentity: str) -> set[str]:
        """Users of the watchers this node holds a subscription of for ``presentity``."""
        status, body = self.get_json(f"/subscriptions?presentity={presentity}&limit=1000")
        assert status == 200, body
        return {re.sub(r"^sips?:", "", row["watcher"]).split("@")[0]
                for row in body["subscriptions"]}

    def states(self, presentity: str) -> dict[str, str]:
        """Call-ID -> dialog state of the records this node holds for ``presentity``."""
        status, body = self.get_json(f"/presentities/{presentity}")
        if status == 404:
            return {}
        records = body["packages"].get("dialog", {}).get("records", [])
        return {r["id"]: r["data"].get("State") for r in records}

    def metric(self, name: str, **labels: str) -> float:
        status, body = http_get(self.http, "/metrics")
        assert status == 200
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = rf"^{name}\{{{wanted}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
        match = re.search(pattern, body.decode(), flags=re.M)
        assert match, f"no {name}{{{wanted}}} in /metrics"
        return float(match.group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                wait_until(lambda: self.process.poll() is not None, timeout)
            except AssertionError:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Cluster:
    """Broker + edge + presence nodes; ``start_node`` adds one (all stopped at teardown)."""

    tmp_path: Path
    broker: NsqCluster
    node_ports: list[tuple[int, int]]
    edge: KamailioProcess | None = None
    nodes: list[Node] = field(default_factory=list)
    sipps: list[SippRun] = field(default_factory=list)

    @property
    def edge_address(self) -> tuple[str, int]:
        assert self.edge is not None
        return "127.0.0.1", self.edge.ports["PHONES_PORT"]

    def start_node(self, index: int, *extra: str) -> Node:
        sip_port, http_port = self.node_ports[index]
        name = f"node{index + 1}"
        log_path = self.tmp_path / f"{name}.log"
        args = [
            sys.executable, "-c", "from busylamp import cli; cli.main(prog_name=\"busylamp\")", "run", "--role", "presence",
            # as deployed: publish to the nearest nsqd, consume what nsqlookupd finds
            "--bus", "nsq", "--nsqd", self.broker.tcp_address, "--topic", TOPIC,
            "--lookupd", f"http://{self.broker.lookupd_address}", "--lookupd-poll-interval", "1",
            "--node-id", name, "--sip", f"udp:127.0.0.1:{sip_port}",
            "--http", f"127.0.0.1:{http_port}", "--t1", "0.1", "--timer-f", "2",
            "--max-expires", "600", "--default-expires", "600", "--min-expires", "1", "--status-interval", "0",
            "--nsq-reconnect-interval", "0.2", "--shutdown-notify-rate", "20", *extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUSYLAMP_")}
        env["PYTHONPATH"] = str(REPO)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        node = Node(name, sip_port, http_port, log_path, process)
        self.nodes.append(node)
        return node

    def start_edge(self, entries: int) -> KamailioProcess:
        dispatcher = self.tmp_path / "dispatcher.list"
        dispatcher.write_text("".join(f"1 sip:127.0.0.1:{sip}\n"
                                      for sip, _ in self.node_ports[:entries]))
        self.edge = start_kamailio(EDGE_CFG, {
            "PHONES_PORT": AUTO_PORT, "INSIDE_PORT": AUTO_PORT, "DS_LIST_FILE": str(dispatcher),
            # one UDP worker per socket: a node's 200 and its first NOTIFY reach the phone in
            # order (with more workers the NOTIFY may overtake the 200, which RFC 6665 allows
            # but these scripted phones do not expect)
            "DS_PING_INTERVAL": 1, "FR_TIMER": 1000, "CHILDREN": 1, "TCP_CHILDREN": 1,
            "LOG_LEVEL": 2,
        }, self.tmp_path)
        return self.edge

    def edge_sees_up(self, node: Node) -> bool:
        """Whether the edge's dispatcher has ``node`` active (pinged and answering)."""
        text = self.edge.rpc("dispatcher.list")
        match = re.search(re.escape(node.uri) + r"\s+FLAGS:\s*(\w+)", text)
        return bool(match) and match.group(1).startswith("A")

    def publish(self, *updates: dict) -> None:
        for update in updates:
            self.broker.pub(TOPIC, ujson.dumps(update).encode())

    def both_consume(self, count: int) -> bool:
        return len(self.broker.channels(TOPIC)) >= count

    def phone(self, name: str, scenario: str) -> SippRun:
        path = self.tmp_path / f"{name}.xml"
        path.write_text(scenario)
        run = start_sipp(path, self.edge_address, self.tmp_path / f"sipp-{name}",
                         keys={"watcher": name}, timeout=20)
        self.sipps.append(run)
        return run

    def close(self) -> None:
        for run in self.sipps:
            run.kill()
        for node in self.nodes:
            node.stop(signal.SIGKILL)
        if self.edge is not None:
            self.edge.stop()
        self.broker.stop()


@contextmanager
def _cluster(tmp_path: Path, nodes: int, entries: int) -> Iterator[Cluster]:
    broker = NsqCluster(require_nsq(), tmp_path / "nsq")
    broker.start()
    broker.create_topic(TOPIC)  # the bridges' topic: nodes find its nsqd through nsqlookupd
    wait_until(lambda: broker.lookup(TOPIC) == [broker.tcp_address], 10,
               message="nsqlookupd does not know the topic")
    ports = []
    while len(ports) < entries:
        pair = (free_port(), free_port())
        if len(set(pair) | {p for pp in ports for p in pp}) == 2 * len(ports) + 2:
            ports.append(pair)
    cluster = Cluster(tmp_path, broker, ports)
    try:
        cluster.start_edge(entries)
        started = [cluster.start_node(i) for i in range(nodes)]
        wait_until(lambda: all(n.ready() for n in started), 20, message="nodes not ready")
        # each node's warm start asked the bridges for a resync on the control topic, and
        # nothing died on the way (a warm start once failed there against the real nsqd)
        wait_until(lambda: broker.message_count(f"{TOPIC}.control") == nodes, 10,
                   message="not every node published its warm-start resync request")
        for node in started:
            assert "Traceback" not in node.log() and "warm start done" in node.log(), node.log()
        wait_until(lambda: cluster.both_consume(nodes), 10, message="nodes not consuming")
        wait_until(lambda: all(cluster.edge_sees_up(n) for n in started), 10,
                   message="edge does not see the nodes up")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two presence nodes behind the edge, consuming the broker."""
    with _cluster(tmp_path, nodes=2, entries=2) as running:
        yield running


# ------------------------------------------------------------------------------------ phones

_SUBSCRIBE = """  <send retrans="200"><![CDATA[
SUBSCRIBE sip:{presentity} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[watcher]@{domain}>;tag=[pid]{tag}[call_number]
To: <sip:{presentity}>
Call-ID: [call_id]
CSeq: {cseq} SUBSCRIBE
Contact: <sip:[watcher]@[local_ip]:[local_port]>
Event: dialog
Accept: application/dialog-info+xml
Expires: 600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" rrs="true"/>
"""

_REFRESH = """  <send retrans="200"><![CDATA[
SUBSCRIBE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From: <sip:[watcher]@{domain}>;tag=[pid]a[call_number]
To: <sip:{presentity}>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 SUBSCRIBE
Contact: <sip:[watcher]@[local_ip]:[local_port]>
Event: dialog
Expires: 600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="481"/>
"""

_NOTIFY_OK = """  <recv request="NOTIFY"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""


def phone_xml(*steps: str, presentity: str = f"1001@{DOMAIN}") -> str:
    """A phone scenario from steps: "subscribe", "resubscribe" (new dialog, same Call-ID, sipp
    needs it), "notify", "refresh481" (in-dialog refresh answered 481), "pause:MS"."""
    body = []
    for step in steps:
        if step == "subscribe":
            body.append(_SUBSCRIBE.format(presentity=presentity, domain=DOMAIN, tag="a", cseq=1))
        elif step == "resubscribe":
            body.append(_SUBSCRIBE.format(presentity=presentity, domain=DOMAIN, tag="b", cseq=3))
        elif step == "notify":
            body.append(_NOTIFY_OK)
        elif step == "refresh481":
            body.append(_REFRESH.format(presentity=presentity, domain=DOMAIN))
        elif step.startswith("pause:"):
            body.append(f'  <pause milliseconds="{int(step[6:])}"/>\n')
        else:
            raise ValueError(step)
    return ('<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="phone">\n'
            + "".join(body) + "</scenario>\n")


def received_at(run: SippRun, pattern: str) -> list[float]:
    """Wall-clock times (sipp's trace stamps) of received messages whose text matches."""
    blocks = re.findall(r"^-{5,} \S+ \d\d:(\d\d):(\d\d\.\d+)\n\w+ message received[^\n]*\n(.*?)(?=^-{5,} |\Z)",
                        run.messages_log(), flags=re.S | re.M)
    return [int(m) * 60 + float(sec) for m, sec, text in blocks if re.search(pattern, text)]


def notifies(run: SippRun) -> list:
    return [m for m in parse_trace(run.messages_log()) if m.received and m.method == "NOTIFY"]


def finish(runs: dict[str, SippRun], timeout: float = 20.0) -> None:
    for name, run in runs.items():
        assert run.wait(timeout) == 0, f"phone {name} failed:\n{run.errors()}"


def placement(cluster: Cluster, presentity: str = f"1001@{DOMAIN}") -> list[set[str]]:
    return [n.subscribed_watchers(presentity) if n.process.poll() is None else set()
            for n in cluster.nodes]


# ------------------------------------------------------------------------------------ tests


def test_subscriptions_spread_and_one_update_reaches_every_watcher(cluster):
    cluster.publish(dialog_update("early", "call-1", 1))
    wait_until(lambda: all(n.states(f"1001@{DOMAIN}") == {"call-1": "early"}
                           for n in cluster.nodes), 5, message="update not on both nodes")
    watchers = FIRST_NODE_WATCHERS + SECOND_NODE_WATCHERS
    runs = {w: cluster.phone(w, phone_xml("subscribe", "notify", "notify")) for w in watchers}
    wait_until(lambda: sum(len(p) for p in placement(cluster)) == len(watchers), 10,
               message="not every phone subscribed")
    first, second = placement(cluster)
    assert first == set(FIRST_NODE_WATCHERS) and second == set(SECOND_NODE_WATCHERS)

    cluster.publish(dialog_update("confirmed", "call-1", 2))
    finish(runs)
    for name, run in runs.items():
        initial, update = (n.body for n in notifies(run))
        assert dialogs(initial) == [("call-1", "early")], name
        assert dialogs(update) == [("call-1", "confirmed")], name


def test_killed_node_phones_move_through_the_edge_and_survivor_misses_nothing(cluster):
    cluster.publish(dialog_update("early", "call-2", 1))
    wait_until(lambda: all(n.states(f"1001@{DOMAIN}") for n in cluster.nodes), 5)
    survivor, victim = cluster.nodes
    # survivor's phones: initial NOTIFY, then the update published after the kill
    stay = {w: cluster.phone(w, phone_xml("subscribe", "notify", "notify"))
            for w in FIRST_NODE_WATCHERS[:2]}
    # victim's phones: refresh after the kill -> 481 from the edge -> new SUBSCRIBE -> survivor
    move = {w: cluster.phone(w, phone_xml("subscribe", "notify", "pause:2500", "refresh481",
                                          "resubscribe", "notify"))
            for w in SECOND_NODE_WATCHERS[:2]}
    wait_until(lambda: placement(cluster) == [set(stay), set(move)], 10,
               message=f"placement {placement(cluster)}")
    wait_until(lambda: all(len(notifies(r)) == 1 for r in {**stay, **move}.values()), 5)

    victim.stop(signal.SIGKILL)
    cluster.publish(dialog_update("confirmed", "call-2", 2))
    finish({**stay, **move})

    for name, run in stay.items():
        assert [dialogs(n.body) for n in notifies(run)] == [
            [("call-2", "early")], [("call-2", "confirmed")]], name
    for name, run in move.items():
        # the second NOTIFY comes from the survivor, carrying the update sent while it moved
        assert [dialogs(n.body) for n in notifies(run)] == [
            [("call-2", "early")], [("call-2", "confirmed")]], name
    assert survivor.subscribed_watchers(f"1001@{DOMAIN}") == set(stay) | set(move)


def test_sigterm_node_deactivates_its_phones_which_move_at_once(cluster):
    cluster.publish(dialog_update("early", "call-3", 1))
    wait_until(lambda: all(n.states(f"1001@{DOMAIN}") for n in cluster.nodes), 5)
    survivor, stopping = cluster.nodes
    move = {w: cluster.phone(w, phone_xml("subscribe", "notify", "notify", "resubscribe",
                                          "notify"))
            for w in SECOND_NODE_WATCHERS}
    wait_until(lambda: placement(cluster)[1] == set(move), 10,
               message=f"placement {placement(cluster)}")
    wait_until(lambda: all(len(notifies(r)) == 1 for r in move.values()), 5)

    stopping.stop(signal.SIGTERM)
    finish(move)
    assert stopping.process.returncode == 0, stopping.log()[-3000:]
    for name, run in move.items():
        first, deactivated, fresh = notifies(run)
        assert deactivated.header("subscription-state").replace(" ", "").startswith(
            "terminated;reason=deactivated"), name
        assert fresh.header("subscription-state").startswith("active"), name
        assert dialogs(fresh.body) == [("call-3", "early")], name
    assert survivor.subscribed_watchers(f"1001@{DOMAIN}") == set(move)
    # rate-limited: 20 NOTIFY/s go out in batches of 2 every 0.1 s, so 4 phones span >= 0.1 s
    stamps = [t for run in move.values()
              for t in received_at(run, r"Subscription-State: terminated;reason=deactivated")]
    assert len(stamps) == 4 and max(stamps) - min(stamps) >= 0.09


def test_late_node_first_notifies_carry_state_published_before_it_started(tmp_path):
    with _cluster(tmp_path, nodes=2, entries=3) as cluster:
        cluster.publish(dialog_update("confirmed", "call-4", 1, user="1004"),
                        dialog_update("early", "call-5", 1, user="1005"))
        wait_until(lambda: all(n.states(f"1005@{DOMAIN}") for n in cluster.nodes), 5)
        late = cluster.start_node(2, "--peer", f"http://127.0.0.1:{cluster.nodes[0].http_port}")
        wait_until(late.ready, 20, message="late node not ready")
        wait_until(lambda: cluster.edge_sees_up(late), 10, message="edge does not use late node")
        names = [f"w{i}" for i in range(12)]
        runs = {w: cluster.phone(w, phone_xml("subscribe", "notify",
                                              presentity=f"1004@{DOMAIN}")) for w in names}
        finish(runs)
        on_late = late.subscribed_watchers(f"1004@{DOMAIN}")
        assert on_late, "the edge sent no phone to the late node"
        for name, run in runs.items():
            assert dialogs(notifies(run)[0].body) == [("call-4", "confirmed")], name
        assert late.states(f"1005@{DOMAIN}") == {"call-5": "early"}


def test_malformed_bus_messages_are_finished_and_counted(cluster):
    cluster.broker.pub(TOPIC, b"{not json")
    cluster.broker.pub(TOPIC, b'{"Event-Name": "update", "Event-Package": "dialog"}')
    cluster.publish(dialog_update("early", "call-6", 1))
    wait_until(lambda: all(n.states(f"1001@{DOMAIN}") == {"call-6": "early"}
                           for n in cluster.nodes), 5, message="good update not applied")
    for node in cluster.nodes:
        # both counted: the undecodable body and the JSON that is no valid update
        assert node.metric("busylamp_publishes_total", outcome="malformed_bus") == 2
    wait_until(lambda: cluster.broker.settled(TOPIC), 5, message="messages left in flight")


def test_consumption_resumes_after_nsqd_restart(cluster):
    cluster.publish(dialog_update("early", "call-7", 1))
    wait_until(lambda: all(n.states(f"1001@{DOMAIN}") for n in cluster.nodes), 5)
    cluster.broker.restart_nsqd(downtime=0.3)
    wait_until(lambda: cluster.both_consume(2), 10, message="nodes did not come back to nsqd")
    cluster.publish(dialog_update("confirmed", "call-7", 2))
    wait_until(lambda: all(n.states(f"1001@{DOMAIN}") == {"call-7": "confirmed"}
                           for n in cluster.nodes), 5, message="update after restart lost")
    for node in cluster.nodes:
        assert "Traceback" not in node.log(), node.log()
