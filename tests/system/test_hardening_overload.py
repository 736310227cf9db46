"""SUBSCRIBE overload: a node whose UDP receive queue is past ``--shed-backlog`` refuses new
SUBSCRIBEs with 503 and a spread Retry-After instead of taking on work it cannot finish before
the phones retransmit; once the queue drained it accepts again.

The queue is real: sipp sends a burst while the test holds the node's only OS thread (a blocking
``time.sleep``, so no greenlet reads the socket), then lets the node read it.
"""

from __future__ import annotations

import logging
import time

from busylamp.presence.limits import Limits
from busylamp.presence.node.transport import receive_queue_fill
from tests.node_util import running_node, sip_address
from tests.polling import wait_until
from tests.sipp_util import parse_trace, start_sipp
from tests.system.phones import _OK_TO_REQUEST

CALLS = 200

# One initial SUBSCRIBE per call: a 503 ends the call; a 200 is followed by the initial NOTIFY.
SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="subscribe under overload">
  <send retrans="500">
    <![CDATA[
      SUBSCRIBE sip:1001@example.com SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:w[call_number]@example.com>;tag=[pid]T[call_number]
      To: <sip:1001@example.com>
      Call-ID: [call_id]
      CSeq: 1 SUBSCRIBE
      Contact: <sip:w[call_number]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Event: dialog
      Expires: 600
      Content-Length: 0

    ]]>
  </send>
  <recv response="503" optional="true" next="done"/>
  <recv response="200"/>
  <recv request="NOTIFY"/>
""" + _OK_TO_REQUEST + """  <label id="done"/>
</scenario>
"""


def hold_until_queued(sock, deadline_s: float = 10.0) -> float:
    """Block the whole process (no greenlet runs) until sipp's burst sits in the node's receive
    queue: the fill has grown and then stayed the same across two reads 50 ms apart."""
    deadline = time.monotonic() + deadline_s
    last = -1.0
    while time.monotonic() < deadline:
        fill = receive_queue_fill(sock)
        if fill > 0 and fill == last:
            return fill
        last = fill
        time.sleep(0.05)  # blocking on purpose: the node must not read meanwhile
    raise AssertionError("sipp's burst never settled in the node's receive queue")


def test_a_full_receive_queue_sheds_new_subscribes_with_503_then_accepts_again(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="busylamp.presence.node.node")
    with running_node(limits=Limits(shed_backlog=1e-9, shed_after=0.0, retry_after=10)) as node:
        scenario = tmp_path / "overload.xml"
        scenario.write_text(SCENARIO)
        sipp = start_sipp(scenario, sip_address(node), tmp_path / "sipp", calls=CALLS,
                          rate=4000, extra=["-l", str(CALLS), "-rp", "1000"])
        fill = hold_until_queued(node.transports._udp[0].sock)
        assert fill > 0
        assert sipp.wait() == 0, sipp.errors()
        refused = node.engine.counters["limit_overload"]
        accepted = len(node.engine.subscriptions)
        # every phone got an answer: refused while the queue behind the batch was not empty,
        # accepted from the batch that drained it on
        assert refused >= 64 and accepted >= 1 and refused + accepted == CALLS
        answers = [m for m in parse_trace(sipp.messages_log()) if m.received and m.status == 503]
        assert len({a.header("Call-ID") for a in answers}) == refused
        for answer in answers:
            assert answer.start_line.endswith("503 Overloaded")
            assert 10 <= int(answer.header("Retry-After")) < 20
        assert len({a.header("Retry-After") for a in answers}) > 1  # spread, not one wave
        warnings = [r for r in caplog.records if "new SUBSCRIBEs get 503" in r.getMessage()]
        assert len(warnings) == 1
        # drained: the next burst's first SUBSCRIBE is accepted at once
        wait_until(lambda: node.transports.backlog == 0.0 and not node.engine.overloaded)
        assert 'busylamp_subscribe_limited_total{limit="overload"} ' + str(refused) in \
            node.metrics_text()
