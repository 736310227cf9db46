"""busylamp.presence.api over a real socket, with a fake NodeControl (test equipment below).

The server runs in its own OS thread with its own gevent hub, so the tests (and the CLI tests
that import `ApiThread`/`FakeNode`) talk to it with plain blocking http.client sockets.
"""

from __future__ import annotations

import collections
import http.client
import json
import threading
import time

import gevent
import pytest

from busylamp.presence.api import is_loopback, serve_api, update_matches
from busylamp.presence.config import ConfigError

TOKEN = "s3cret"


def dialog(user: str = "100", state: str = "confirmed", call_id: str = "c1") -> dict:
    return {"Event-Name": "update", "Event-Package": "dialog", "From": f"sip:{user}@example.com",
            "From-User": user, "From-Realm": "example.com", "To": "sip:200@example.com",
            "State": state, "Call-ID": call_id, "Direction": "initiator"}


class FakeTail:
    """A tail subscription fed from any thread (deque), polled cooperatively."""

    def __init__(self, items: list[dict]) -> None:
        self.items = collections.deque(items)
        self.closed = threading.Event()

    def get(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            if self.items:
                return self.items.popleft()
            if time.monotonic() >= deadline:
                return None
            gevent.sleep(0.002)

    def close(self) -> None:
        self.closed.set()


class FakeNode:
    """NodeControl double: records publishes, serves canned rows."""

    def __init__(self, rows: int = 0) -> None:
        self.published: list[list] = []
        self.rows = [{"id": f"s{i}", "presentity": f"{100 + i % 3}@example.com",
                      "watcher": f"{200 + i}@example.com", "event": "dialog"}
                     for i in range(rows)]
        self.presentities = {"100@example.com": {"presentity": "100@example.com",
                                                 "packages": {"dialog": [{"id": "c1"}]}}}
        self.ready = True
        self.tail_items: list[dict] = []
        self.tails: list[FakeTail] = []
        self.subscription_calls = 0

    def publish(self, messages: list) -> int:
        self.published.append(messages)
        return len(messages)

    def subscriptions(self, *, presentity, watcher, event, cursor, limit):
        self.subscription_calls += 1
        rows = [r for r in self.rows if (not presentity or r["presentity"] == presentity)
                and (not watcher or r["watcher"] == watcher) and (not event or r["event"] == event)]
        start = int(cursor or 0)
        page = rows[start:start + limit]
        return page, (str(start + limit) if start + limit < len(rows) else None)

    def presentity(self, aor):
        return self.presentities.get(aor)

    def health(self):
        return self.ready, {"node_id": "fake", "subscriptions": len(self.rows)}

    def metrics_text(self):
        return ('# TYPE busylamp_notify_sent_total counter\nbusylamp_notify_sent_total 7\n'
                'busylamp_subscriptions{event="dialog"} 3\n')

    def tail(self):
        sub = FakeTail(self.tail_items)
        self.tails.append(sub)
        return sub

    def snapshot(self):
        yield {"marks": {"b1": [1, 5]}}
        yield dialog("100")
        yield dialog("101")


class ApiThread:
    """serve_api in a dedicated thread/hub; `.port`, `.stop()`."""

    def __init__(self, node, token: str | None = None, heartbeat: float = 15.0) -> None:
        self.node, self.token, self.heartbeat = node, token, heartbeat
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("API server did not start")
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            server = serve_api("127.0.0.1", 0, self.node, self.token, heartbeat=self.heartbeat)
        except BaseException as err:
            self.error = err
            self._ready.set()
            return
        self.port = server.server_port
        self._ready.set()
        while not self._stop.is_set():
            gevent.sleep(0.01)
        server.stop(timeout=1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def node():
    return FakeNode(rows=7)


@pytest.fixture
def api(node):
    server = ApiThread(node, heartbeat=0.05)
    yield server
    server.stop()


@pytest.fixture
def secured(node):
    server = ApiThread(node, token=TOKEN)
    yield server
    server.stop()


def call(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    headers = dict(headers or {})
    if method == "POST":
        headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_publish_one_update(api, node):
    status, _, body = call(api, "POST", "/publish", json.dumps(dialog()))
    assert (status, json.loads(body)) == (202, {"accepted": 1})
    [[update]] = node.published
    assert update.presentity == "100@example.com" and update.record_id == "c1"


def test_publish_array(api, node):
    status, _, body = call(api, "POST", "/publish", json.dumps([dialog("100"), dialog("101")]))
    assert (status, json.loads(body)) == (202, {"accepted": 2})
    assert [u.presentity for u in node.published[0]] == ["100@example.com", "101@example.com"]


@pytest.mark.parametrize(("payload", "needle"), [
    (b"{not json", "invalid JSON"),
    (json.dumps({**dialog(), "State": "ringing"}).encode(), 'field "State"'),
    (json.dumps({**dialog(), "Event-Package": "bogus"}).encode(), 'field "Event-Package"'),
    (json.dumps({k: v for k, v in dialog().items() if k != "To"}).encode(), '"To"'),
])
def test_publish_bad_payload_is_400_naming_the_field(api, node, payload, needle):
    status, headers, body = call(api, "POST", "/publish", payload)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert needle in json.loads(body)["error"]
    assert node.published == []


def test_publish_array_with_one_bad_item_applies_nothing(api, node):
    payload = json.dumps([dialog("100"), {**dialog("101"), "State": "bogus"}, dialog("102")])
    status, _, body = call(api, "POST", "/publish", payload)
    assert status == 400
    assert json.loads(body)["error"].startswith("item 1:")
    assert node.published == []


def test_publish_body_over_limit_is_413(api, node):
    status, headers, _ = call(api, "POST", "/publish", b"[" + b" " * (8 * 1024 * 1024))
    assert status == 413 and headers.get("Connection") == "close"
    assert node.published == []
    status, _, _ = call(api, "POST", "/publish", json.dumps(dialog()))
    assert status == 202


def test_wrong_method_is_405_with_allow(api):
    status, headers, _ = call(api, "GET", "/publish")
    assert (status, headers["Allow"]) == (405, "POST")
    status, headers, _ = call(api, "POST", "/health", b"{}")
    assert (status, headers["Allow"]) == (405, "GET")


def test_node_failure_is_500_json_not_a_traceback(api, node):
    def boom(*args, **kwargs):
        raise RuntimeError("engine broke")
    node.publish = boom
    node.metrics_text = boom
    status, _, body = call(api, "POST", "/publish", json.dumps(dialog()))
    assert status == 500 and "POST /publish failed" in json.loads(body)["error"]
    assert call(api, "GET", "/metrics")[0] == 500
    assert call(api, "GET", "/health")[0] == 200


def test_unknown_path_is_404(api):
    assert call(api, "GET", "/nope")[0] == 404


def test_bearer_token_required_except_health(secured, node):
    assert call(secured, "POST", "/publish", json.dumps(dialog()))[0] == 401
    bad = {"Authorization": "Bearer wrong"}
    assert call(secured, "GET", "/subscriptions", headers=bad)[0] == 401
    assert call(secured, "GET", "/health")[0] == 200
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert call(secured, "POST", "/publish", json.dumps(dialog()), good)[0] == 202
    assert len(node.published) == 1


def test_subscriptions_pagination_and_filters(api):
    status, _, body = call(api, "GET", "/subscriptions?limit=3")
    page = json.loads(body)
    assert status == 200 and [r["id"] for r in page["subscriptions"]] == ["s0", "s1", "s2"]
    seen = [r["id"] for r in page["subscriptions"]]
    while page["next_cursor"]:
        page = json.loads(call(api, "GET", f"/subscriptions?limit=3&cursor="
                                            f"{page['next_cursor']}")[2])
        seen += [r["id"] for r in page["subscriptions"]]
    assert seen == [f"s{i}" for i in range(7)]
    page = json.loads(call(api, "GET", "/subscriptions?presentity=101@example.com")[2])
    assert [r["id"] for r in page["subscriptions"]] == ["s1", "s4"]
    assert call(api, "GET", "/subscriptions?limit=1001")[0] == 400
    assert call(api, "GET", "/subscriptions?limit=x")[0] == 400


def test_subscriptions_ndjson_streams_every_row_in_chunks():
    node = FakeNode(rows=1203)
    server = ApiThread(node)
    try:
        status, headers, body = call(server, "GET", "/subscriptions?format=ndjson")
    finally:
        server.stop()
    lines = body.decode().splitlines()
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert [json.loads(line)["id"] for line in lines] == [f"s{i}" for i in range(1203)]
    assert node.subscription_calls == 3           # 500-row chunks


def test_presentity_found_and_unknown(api):
    status, _, body = call(api, "GET", "/presentities/100@example.com")
    assert status == 200 and json.loads(body)["packages"]["dialog"][0]["id"] == "c1"
    assert call(api, "GET", "/presentities/sip:100@example.com")[0] == 200
    assert call(api, "GET", "/presentities/999@example.com")[0] == 404
    assert call(api, "GET", "/presentities/nodomain")[0] == 400


def test_health_ready_and_not_ready(api, node):
    status, _, body = call(api, "GET", "/health")
    assert status == 200 and json.loads(body) == {"ready": True, "node_id": "fake",
                                                  "subscriptions": 7}
    node.ready = False
    assert call(api, "GET", "/health")[0] == 503


def test_metrics_content_type(api):
    status, headers, body = call(api, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"busylamp_notify_sent_total 7" in body


def test_snapshot_ndjson(api):
    status, _, body = call(api, "GET", "/snapshot")
    items = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and items[0] == {"marks": {"b1": [1, 5]}} and len(items) == 3


def _open_tail(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_tail_streams_filtered_updates_with_heartbeats_and_closes_cleanly(api, node):
    node.tail_items = [dialog("100", "early", "a"), dialog("101", "early", "b"),
                       dialog("100", "confirmed", "a")]
    conn, response = _open_tail(api, "/tail?presentity=100@example.com")
    assert response.status == 200
    got, blanks = [], 0
    while blanks < 2:                       # two heartbeats after the updates (0.05 s each)
        line = response.readline()
        if line.strip():
            got.append(json.loads(line))
        else:
            blanks += 1 if got else 0
    assert [(u["From-User"], u["State"]) for u in got] == [("100", "early"), ("100", "confirmed")]
    conn.close()
    deadline = time.monotonic() + 3
    while not node.tails[0].closed.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert node.tails[0].closed.is_set()


def test_serve_api_refuses_public_bind_without_token(node):
    with pytest.raises(ConfigError, match="--http-token"):
        serve_api("0.0.0.0", 0, node, None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.com")


def test_update_matches_filters():
    update = dialog("100", call_id="x")
    assert update_matches(update, "100@EXAMPLE.com", "dialog", "x")
    assert not update_matches(update, "101@example.com", None, None)
    assert not update_matches(update, None, "presence", None)
    assert not update_matches(update, None, None, "y")


def test_keep_alive_publish_rate(api, node):
    """Many publishes over one HTTP/1.1 connection; prints requests/s for the report."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    body = json.dumps(dialog()).encode()
    count = 2000
    started = time.perf_counter()
    for _ in range(count):
        conn.request("POST", "/publish", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 202
    elapsed = time.perf_counter() - started
    conn.close()
    assert len(node.published) == count
    print(f"keep-alive publish: {count / elapsed:.0f} requests/s")
