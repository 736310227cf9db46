"""--require-registration with a real FreeSWITCH: only a phone registered (digest auth) from the
SUBSCRIBE's address may subscribe; the registration's end closes the door again."""

from __future__ import annotations

from tests.hostile import RawPeer, answers_until_ping, status, subscribe
from tests.polling import wait_until
from tests.sipp_util import free_port
from tests.system.freeswitch import DOMAIN
from tests.system.phones import LampWatcher, register
from tests.system.test_cli_subprocess import run_node

PRESENTITY = f"1001@{DOMAIN}"
WATCHER = f"1000@{DOMAIN}"


def attempt(node, host: str = "127.0.0.1", n: list[int] = [0],  # noqa: B006
            watcher: str = WATCHER) -> int:
    """One initial SUBSCRIBE from ``watcher`` on ``host``: the final status."""
    n[0] += 1
    peer = RawPeer(target=("127.0.0.1", node.sip_port), host=host)
    try:
        request = subscribe(peer, presentity=PRESENTITY, call_id=f"reg-{n[0]}",
                            contact=f"<sip:1000@{host}:{peer.port}>")
        request = request.replace(b"sip:6666@example.com", f"sip:{watcher}".encode())
        seen = answers_until_ping(peer, request, n[0])
    finally:
        peer.close()
    return [status(m) for m in seen if status(m) and status(m) >= 200][0]


def test_only_a_watcher_registered_from_that_address_may_subscribe(fs, tmp_path):
    with run_node(tmp_path / "busylamp", "--esl", fs.esl, "--require-registration",
                  role="all", ready_timeout=15) as node:
        assert attempt(node) == 403  # 1000 has not registered
        contact_port = free_port()
        register("1000", contact_port, fs.sip, tmp_path)
        wait_until(lambda: attempt(node) == 200, timeout=10, message="registration learned")
        # the same watcher from another address is refused
        assert attempt(node, host="127.0.0.2") == 403
        # a real phone registered as 1000 watches 1001 and gets its NOTIFY
        watch = LampWatcher(PRESENTITY, ("127.0.0.1", node.sip_port), tmp_path,
                            watcher=WATCHER).start()
        try:
            wait_until(lambda: watch.notifies(), timeout=5, message="sipp watcher notified")
        finally:
            watch.stop()
        # unregistered (REGISTER with Expires: 0): no new subscriptions
        register("1000", contact_port, fs.sip, tmp_path / "unregister", expires=0)
        wait_until(lambda: attempt(node) == 403, timeout=10, message="unregistration learned")


def test_registrations_made_before_the_bridge_started_count_too(fs, tmp_path):
    """Read from ``show registrations as json`` when the bridge connects."""
    register("1002", free_port(), fs.sip, tmp_path)
    with run_node(tmp_path / "busylamp", "--esl", fs.esl, "--require-registration",
                  role="all", ready_timeout=15) as node:
        watcher = f"1002@{DOMAIN}"
        wait_until(lambda: attempt(node, watcher=watcher) == 200, timeout=10,
                   message="registration table read")
        assert attempt(node, host="127.0.0.2", watcher=watcher) == 403
