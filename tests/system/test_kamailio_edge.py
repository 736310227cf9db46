"""contrib/kamailio-edge/kamailio.cfg against real Kamailio, with sipp as phones and nodes.

sipp plays the presence nodes (answer SUBSCRIBE 200, then send an in-dialog NOTIFY back along the
Record-Route; `-aa` answers the dispatcher's OPTIONS pings) and the phones (UDP and TCP).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kamailio_util import AUTO_PORT, free_port, start_kamailio, wait_until

REPO = Path(__file__).resolve().parents[2]
EDGE_CFG = REPO / "contrib" / "kamailio-edge" / "kamailio.cfg"

pytestmark = [
    pytest.mark.kamailio,
    pytest.mark.sipp,
    pytest.mark.skipif(
        not (shutil.which("kamailio") and shutil.which("sipp")), reason="needs kamailio and sipp"
    ),
]

# Watchers used for hashing; with two nodes the dispatcher's From-URI hash spreads them over both.
WATCHERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
# Those the hash puts on the second entry of a two-node set (Kamailio's From-URI hash is stable).
SECOND_ENTRY_WATCHERS = {"carol", "dave", "frank", "heidi"}

NODE_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="fake busylamp presence node">
  <recv request="SUBSCRIBE" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="to"/>
      <ereg regexp=".*" search_in="hdr" header="Event:" assign_to="event"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]node[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Record-Route:]
Contact: <sip:node@[local_ip]:[local_port]>
Expires: 600
Content-Length: 0

]]></send>
  <pause milliseconds="50"/>
  <send retrans="500"><![CDATA[
NOTIFY [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
[routes]
From:[$to];tag=[pid]node[call_number]
To:[$from]
Call-ID: [call_id]
CSeq: 1 NOTIFY
Contact: <sip:node@[local_ip]:[local_port]>
Event:[$event]
Subscription-State: active;expires=600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

_PHONE_SUBSCRIBE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone subscribes through the edge">
  <send retrans="500"><![CDATA[
SUBSCRIBE sip:1001@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@busylamp.test>;tag=[pid]ph[call_number]
To: <sip:1001@busylamp.test>
Call-ID: [call_id]
CSeq: 1 SUBSCRIBE
Contact: <sip:[field0]@[field1]>
Event: dialog
Accept: application/dialog-info+xml
Expires: 600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" rrs="true"/>
  <recv request="NOTIFY"/>
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

PHONE_XML = _PHONE_SUBSCRIBE + "</scenario>\n"

# Subscribe, then refresh in-dialog after the test has killed the node: the edge must say 481.
PHONE_REFRESH_XML = _PHONE_SUBSCRIBE + """  <pause milliseconds="1500"/>
  <send retrans="500"><![CDATA[
SUBSCRIBE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
[routes]
From: <sip:[field0]@busylamp.test>;tag=[pid]ph[call_number]
To: <sip:1001@busylamp.test>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 SUBSCRIBE
Contact: <sip:[field0]@[field1]>
Event: dialog
Expires: 600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="481"/>
</scenario>
"""

REGISTRAR_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="fake registrar">
  <recv request="REGISTER"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]reg[call_number]
[last_Call-ID:]
[last_CSeq:]
[last_Contact:]
Content-Length: 0

]]></send>
</scenario>
"""

PHONE_REGISTER_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="phone registers through the edge">
  <send retrans="500"><![CDATA[
REGISTER sip:busylamp.test SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[field0]@busylamp.test>;tag=[pid]ph[call_number]
To: <sip:[field0]@busylamp.test>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:[field0]@[field1]>
Expires: 600
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def _messages(path: Path, direction: str) -> list[str]:
    """SIP messages a sipp `-trace_msg` file shows as `direction` ("received" or "sent")."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    blocks = re.split(r"^-{20,}.*$", text, flags=re.M)
    found = []
    for block in blocks:
        head, _, message = block.strip().partition("\n")
        if direction in head:
            found.append(message.strip())
    return found


def _header(message: str, name: str) -> list[str]:
    return re.findall(rf"^{name}:\s*(.*?)\s*$", message, flags=re.M | re.I)


@dataclass
class SippAgent:
    """A sipp process in server mode (presence node or registrar) with its message log."""

    name: str
    port: int
    process: subprocess.Popen
    message_file: Path

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    def received(self, method: str) -> list[str]:
        return [m for m in _messages(self.message_file, "received") if m.startswith(method + " ")]

    def watchers(self) -> list[str]:
        """From users of the SUBSCRIBEs this node received, in order."""
        return [
            re.search(r"sip:([^@]+)@", _header(m, "From")[0]).group(1)
            for m in self.received("SUBSCRIBE")
        ]

    def got_notify_answer(self) -> bool:
        return any(
            m.startswith("SIP/2.0 200") and re.search(r"^CSeq: 1 NOTIFY", m, re.M)
            for m in _messages(self.message_file, "received")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)


def _start_agent(tmp_path: Path, name: str, scenario: str) -> SippAgent:
    port = free_port()
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "scenario.xml").write_text(scenario)
    message_file = workdir / "messages.log"
    process = subprocess.Popen(
        ["sipp", "-sf", "scenario.xml", "-i", "127.0.0.1", "-p", str(port), "-t", "u1",
         "-aa", "-nostdin", "-trace_msg", "-message_file", str(message_file)],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent = SippAgent(name, port, process, message_file)

    def bound() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"sipp {name} exited with {process.returncode}")
        rows = Path("/proc/net/udp").read_text().splitlines()[1:]
        return any(int(r.split()[1].rsplit(":", 1)[1], 16) == port for r in rows)

    wait_until(bound, 5.0, what=f"sipp {name} to bind")
    return agent


@dataclass
class PhoneRun:
    returncode: int
    message_file: Path

    def received(self) -> list[str]:
        return _messages(self.message_file, "received")


def _phone_popen(tmp_path: Path, edge_port: int, watchers: list[str], *,
                 contact: str | None = None, scenario: str = PHONE_XML,
                 transport: str = "u1", tag: str = "phone"):
    port = free_port()
    workdir = tmp_path / f"{tag}-{port}"
    workdir.mkdir()
    (workdir / "scenario.xml").write_text(scenario)
    contact = contact or f"127.0.0.1:{port}"
    (workdir / "rows.csv").write_text(
        "SEQUENTIAL\n" + "".join(f"{watcher};{contact}\n" for watcher in watchers)
    )
    message_file = workdir / "messages.log"
    process = subprocess.Popen(
        ["sipp", "-sf", "scenario.xml", "-i", "127.0.0.1", "-p", str(port),
         "-t", transport, "-inf", "rows.csv", "-m", str(len(watchers)), "-l", "1",
         "-nostdin", "-timeout", "15s", "-timeout_error", "-recv_timeout", "6000",
         "-trace_msg", "-message_file", str(message_file), f"127.0.0.1:{edge_port}"],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, message_file


def run_phone(tmp_path: Path, edge_port: int, watchers: list[str], **kwargs) -> PhoneRun:
    """Run sipp as a phone: one SUBSCRIBE call per watcher, in order, one at a time.

    The Contact is the phone's own address unless `contact` ("host:port[;params]") is given.
    """
    process, message_file = _phone_popen(tmp_path, edge_port, watchers, **kwargs)
    try:
        returncode = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return PhoneRun(returncode, message_file)


@pytest.fixture
def cleanup():
    items: list = []
    yield items
    for item in reversed(items):
        item.stop()


def _edge(tmp_path: Path, cleanup: list, node_uris: list[str], **defines):
    ds_list = tmp_path / "dispatcher.list"
    ds_list.write_text("".join(f"1 {uri}\n" for uri in node_uris))
    base = {
        "PHONES_PORT": AUTO_PORT,
        "INSIDE_PORT": AUTO_PORT,
        "DS_LIST_FILE": str(ds_list),
        "DS_PING_INTERVAL": 1,
        "FR_TIMER": 1000,
        "CHILDREN": 2,
        "TCP_CHILDREN": 2,
    }
    base.update(defines)
    kam = start_kamailio(EDGE_CFG, base, tmp_path)
    cleanup.append(kam)
    return kam


def _nodes(tmp_path: Path, cleanup: list, count: int) -> list[SippAgent]:
    nodes = [_start_agent(tmp_path, f"node{i}", NODE_XML) for i in range(count)]
    cleanup.extend(nodes)
    return nodes


def test_udp_phone_subscribe_is_record_routed_and_notify_comes_back(tmp_path, cleanup):
    (node,) = _nodes(tmp_path, cleanup, 1)
    kam = _edge(tmp_path, cleanup, [node.uri])

    run = run_phone(tmp_path, kam.ports["PHONES_PORT"], ["alice"])

    assert run.returncode == 0, kam.log()[-3000:]
    (subscribe,) = node.received("SUBSCRIBE")
    routes = _header(subscribe, "Record-Route")
    assert routes == [
        f"<sip:127.0.0.1:{kam.ports['INSIDE_PORT']};r2=on;lr;ftag={_ftag(subscribe)}>",
        f"<sip:127.0.0.1:{kam.ports['PHONES_PORT']};r2=on;lr;ftag={_ftag(subscribe)}>",
    ]
    # The NOTIFY reached the phone through the edge, with the edge's Via on top.
    (notify,) = [m for m in run.received() if m.startswith("NOTIFY ")]
    assert f"127.0.0.1:{kam.ports['PHONES_PORT']}" in _header(notify, "Via")[0]


def _ftag(message: str) -> str:
    return re.search(r";tag=([^;\s>]+)", _header(message, "From")[0]).group(1)


def test_tcp_phone_with_unreachable_contact_gets_notify_over_its_connection(tmp_path, cleanup):
    (node,) = _nodes(tmp_path, cleanup, 1)
    kam = _edge(tmp_path, cleanup, [node.uri])
    dead_port = free_port()  # nothing listens here: a Contact the edge cannot connect to

    run = run_phone(
        tmp_path, kam.ports["PHONES_PORT"],
        ["tcpphone"], contact=f"127.0.0.1:{dead_port};transport=tcp", transport="t1",
    )

    assert run.returncode == 0, kam.log()[-3000:]
    (subscribe,) = node.received("SUBSCRIBE")
    # TCP outside, UDP inside: two Record-Routes, the phone-facing one says transport=tcp.
    inside, outside = _header(subscribe, "Record-Route")
    assert f":{kam.ports['INSIDE_PORT']};r2=on;lr" in inside
    assert f":{kam.ports['PHONES_PORT']};transport=tcp;r2=on;lr" in outside
    assert _header(subscribe, "Via")[0].startswith("SIP/2.0/UDP")
    assert ";alias=127.0.0.1~" in _header(subscribe, "Contact")[0]
    assert any(m.startswith("NOTIFY ") for m in run.received())


def test_watcher_hash_spreads_phones_and_keeps_each_phone_on_one_node(tmp_path, cleanup):
    nodes = _nodes(tmp_path, cleanup, 2)
    kam = _edge(tmp_path, cleanup, [n.uri for n in nodes])
    rows = WATCHERS * 2  # every watcher subscribes twice

    run = run_phone(tmp_path, kam.ports["PHONES_PORT"], rows)

    assert run.returncode == 0, kam.log()[-3000:]
    seen = [n.watchers() for n in nodes]
    assert sorted(seen[0] + seen[1]) == sorted(rows)
    for watcher in WATCHERS:
        assert (watcher in seen[0]) != (watcher in seen[1]), watcher
        assert max(s.count(watcher) for s in seen) == 2
    assert set(seen[1]) == SECOND_ENTRY_WATCHERS


def test_node_marked_down_by_pings_is_skipped(tmp_path, cleanup):
    # The dead node is the second entry: SECOND_ENTRY_WATCHERS hash to it.
    (live,) = _nodes(tmp_path, cleanup, 1)
    dead_uri = f"sip:127.0.0.1:{free_port()}"
    kam = _edge(tmp_path, cleanup, [live.uri, dead_uri])
    kam.wait_for_log(rf"presence node down: {re.escape(dead_uri)}", timeout=6)
    offset = len(kam.log())
    listing = kam.rpc("dispatcher.list")
    assert re.search(rf"URI: {re.escape(dead_uri)}\s+FLAGS: IP", listing), listing

    run = run_phone(tmp_path, kam.ports["PHONES_PORT"], WATCHERS)

    assert run.returncode == 0, kam.log()[-3000:]
    assert sorted(live.watchers()) == sorted(WATCHERS)
    # No SUBSCRIBE waited for the dead node and failed over: the pings had already taken it out.
    assert "did not answer" not in kam.log()[offset:]


def test_dead_node_refresh_gets_481_and_phone_resubscribes_to_live_node(tmp_path, cleanup):
    nodes = _nodes(tmp_path, cleanup, 2)
    kam = _edge(tmp_path, cleanup, [n.uri for n in nodes])
    edge_port = kam.ports["PHONES_PORT"]

    process, message_file = _phone_popen(
        tmp_path, edge_port, ["alice"], scenario=PHONE_REFRESH_XML, tag="refresh"
    )
    try:
        holder = wait_until(
            lambda: next((n for n in nodes if n.got_notify_answer()), None), 8.0,
            what="the first subscription to be established",
        )
        holder.stop()  # the node dies before the phone's refresh
        assert process.wait(timeout=15) == 0, kam.log()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    replies = [m for m in _messages(message_file, "received") if m.startswith("SIP/2.0 481")]
    assert replies and re.search(r"^CSeq: 2 SUBSCRIBE", replies[0], re.M)

    (survivor,) = [n for n in nodes if n is not holder]
    run = run_phone(tmp_path, edge_port, ["alice"])
    assert run.returncode == 0, kam.log()[-3000:]
    assert survivor.watchers() == ["alice"]


def test_register_is_forwarded_to_the_registrar(tmp_path, cleanup):
    (node,) = _nodes(tmp_path, cleanup, 1)
    registrar = _start_agent(tmp_path, "registrar", REGISTRAR_XML)
    cleanup.append(registrar)
    kam = _edge(tmp_path, cleanup, [node.uri], REGISTRAR_URI=registrar.uri)

    run = run_phone(
        tmp_path, kam.ports["PHONES_PORT"], ["alice"], scenario=PHONE_REGISTER_XML,
    )

    assert run.returncode == 0, kam.log()[-3000:]
    (register,) = registrar.received("REGISTER")
    assert f"127.0.0.1:{kam.ports['INSIDE_PORT']}" in _header(register, "Via")[0]
    assert node.received("REGISTER") == []
