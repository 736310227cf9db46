"""A first real call: 1000 calls 1001 through the real FreeSWITCH; 1001's lamp follows it."""

from __future__ import annotations

from tests.sipp_util import wait_until
from tests.system.phones import Callee, CalleePlan, Caller, CallerPlan, LampWatcher, lamp


def test_call_lights_the_callee_lamp(fs, busylamp_all, tmp_path):
    node = busylamp_all
    watch = LampWatcher("1001@127.0.0.1", ("127.0.0.1", node.sip_port), tmp_path).start()
    try:
        wait_until(lambda: watch.notifies(), timeout=5)
        callee = Callee("1001", CalleePlan(ring_ms=800, answer=200), fs.sip, tmp_path).start()
        caller = Caller("1000", "1001", CallerPlan(talk_ms=1000), fs.sip, tmp_path).start()
        caller.wait(30)
        wait_until(lambda: [lamp(d) for d in watch.dialogs()][-1:] == ["idle"]
                   and len(watch.notifies()) >= 3, timeout=5)
        assert [lamp(d) for d in watch.dialogs()] == ["idle", "early", "confirmed", "idle"]
        callee.run.kill()
    finally:
        watch.stop()
