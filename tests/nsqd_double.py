"""A gevent NSQ broker double (test equipment, never product code).

Written from the published NSQ TCP protocol spec (nsq.io/clients/tcp_protocol_spec.html): the
client sends the magic ``"  V2"``, then newline-terminated commands, some followed by a 4-byte
big-endian size and a body. The server answers with frames: 4-byte size, 4-byte frame type
(0 response, 1 error, 2 message) and data; a message is 8-byte timestamp (ns), 2-byte attempts,
16-byte hex id and the body. Supported: IDENTIFY (``OK`` or a JSON feature answer when
``feature_negotiation`` is asked), SUB, RDY, FIN, REQ, TOUCH, NOP, PUB, MPUB, CLS, heartbeats
(``_heartbeat_`` every negotiated ``heartbeat_interval``; a client missing two in a row is
closed), ephemeral channels (deleted with their last client), a bounded ``mem_queue_size`` per
channel (messages beyond it are dropped and counted, as nsqd does for ephemeral channels), and an
nsqlookupd-style ``GET /lookup?topic=`` HTTP endpoint.
"""

from __future__ import annotations

import contextlib
import json
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import gevent
import gevent.lock
import gevent.pywsgi
import gevent.server
import gevent.socket

FRAME_RESPONSE, FRAME_ERROR, FRAME_MESSAGE = 0, 1, 2


@dataclass(eq=False)
class _Message:
    id: bytes
    body: bytes
    timestamp: int
    attempts: int = 0


@dataclass(eq=False)
class _Client:
    sock: gevent.socket.socket
    lock: gevent.lock.Semaphore = field(default_factory=gevent.lock.Semaphore)
    channel: _Channel | None = None
    rdy: int = 0
    in_flight: dict[bytes, _Message] = field(default_factory=dict)
    heartbeat_ms: int = 30000
    last_seen: float = field(default_factory=time.monotonic)
    closed: bool = False

    def send_frame(self, frame_type: int, data: bytes) -> None:
        if self.closed:
            return
        try:
            with self.lock:
                self.sock.sendall(struct.pack(">ii", len(data) + 4, frame_type) + data)
        except OSError:
            self.closed = True


@dataclass(eq=False)
class _Channel:
    name: str
    mem_queue_size: int
    queue: deque[_Message] = field(default_factory=deque)
    clients: list[_Client] = field(default_factory=list)
    dropped: int = 0

    @property
    def ephemeral(self) -> bool:
        return self.name.endswith("#ephemeral")

    def put(self, message: _Message) -> None:
        if len(self.queue) >= self.mem_queue_size:
            self.dropped += 1
            return
        self.queue.append(message)
        self.deliver()

    def deliver(self) -> None:
        while self.queue:
            ready = [c for c in self.clients if not c.closed and len(c.in_flight) < c.rdy]
            if not ready:
                return
            client = min(ready, key=lambda c: len(c.in_flight))
            message = self.queue.popleft()
            message.attempts += 1
            client.in_flight[message.id] = message
            header = struct.pack(">qh", message.timestamp, message.attempts)
            client.send_frame(FRAME_MESSAGE, header + message.id + message.body)


@dataclass(eq=False)
class _Topic:
    name: str
    channels: dict[str, _Channel] = field(default_factory=dict)
    pending: deque[_Message] = field(default_factory=deque)  # kept until the first channel


class NsqdDouble:
    """In-process nsqd + nsqlookupd double; every socket on 127.0.0.1, ephemeral ports."""

    def __init__(self, mem_queue_size: int = 10000, host: str = "127.0.0.1") -> None:
        self.host = host
        self.mem_queue_size = mem_queue_size
        self.tcp_port = 0
        self._server: gevent.server.StreamServer | None = None
        self._http: gevent.pywsgi.WSGIServer | None = None
        self._topics: dict[str, _Topic] = {}
        self._published: dict[str, list[bytes]] = {}
        self._clients: set[_Client] = set()
        self._greenlets: set[gevent.Greenlet] = set()
        self._next_id = 0
        self.commands: list[bytes] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> tuple[str, int]:
        self._server = gevent.server.StreamServer((self.host, self.tcp_port), self._handle)
        self._server.init_socket()
        self._server.start()
        self.tcp_port = self._server.server_port
        if self._http is None:
            self._http = gevent.pywsgi.WSGIServer((self.host, 0), self._lookup_app, log=None)
            self._http.start()
        return self.host, self.tcp_port

    def stop_tcp(self) -> None:
        """Stop nsqd (close every client, forget channels) but keep lookupd answering."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for client in list(self._clients):
            self._close(client)
        for greenlet in list(self._greenlets):
            greenlet.kill(block=False)
        self._greenlets.clear()
        for topic in self._topics.values():
            topic.channels.clear()

    def stop(self) -> None:
        self.stop_tcp()
        if self._http is not None:
            self._http.stop()
            self._http = None

    def restart(self, downtime: float = 0.0) -> None:
        """Like restarting nsqd on the same port: connections dropped, in-memory queues lost."""
        self.stop_tcp()
        if downtime:
            gevent.sleep(downtime)
        self.start()

    @property
    def tcp_address(self) -> str:
        return f"{self.host}:{self.tcp_port}"

    @property
    def lookupd_address(self) -> str:
        assert self._http is not None
        return f"{self.host}:{self._http.server_port}"

    # ------------------------------------------------------------------ inspection

    def published(self, topic: str) -> list[bytes]:
        return list(self._published.get(topic, []))

    def inject(self, topic: str, body: bytes) -> None:
        self._publish(topic, body)

    def dropped(self, topic: str, channel: str) -> int:
        found = self._topics.get(topic)
        return found.channels[channel].dropped if found and channel in found.channels else 0

    def in_flight(self) -> int:
        return sum(len(c.in_flight) for c in self._clients)

    def channel_depth(self, topic: str, channel: str) -> int:
        found = self._topics.get(topic)
        return len(found.channels[channel].queue) if found and channel in found.channels else 0

    # ------------------------------------------------------------------ broker

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic(name)
        return topic

    def _publish(self, topic_name: str, body: bytes) -> None:
        self._published.setdefault(topic_name, []).append(body)
        topic = self._topic(topic_name)
        self._next_id += 1
        message_id = f"{self._next_id:016x}".encode()
        if not topic.channels:
            topic.pending.append(_Message(message_id, body, time.time_ns()))
            return
        for channel in topic.channels.values():
            channel.put(_Message(message_id, body, time.time_ns()))

    def _subscribe(self, client: _Client, topic_name: str, channel_name: str) -> None:
        topic = self._topic(topic_name)
        channel = topic.channels.get(channel_name)
        if channel is None:
            channel = topic.channels[channel_name] = _Channel(channel_name, self.mem_queue_size)
            while topic.pending:
                channel.put(topic.pending.popleft())
        channel.clients.append(client)
        client.channel = channel

    def _close(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.discard(client)
        client.closed = True
        channel = client.channel
        if channel is not None:
            if client in channel.clients:
                channel.clients.remove(client)
            for message in client.in_flight.values():
                channel.queue.appendleft(message)
            client.in_flight.clear()
            if channel.ephemeral and not channel.clients:
                for topic in self._topics.values():
                    if topic.channels.get(channel.name) is channel:
                        del topic.channels[channel.name]
            else:
                channel.deliver()
        for action in (lambda: client.sock.shutdown(gevent.socket.SHUT_RDWR), client.sock.close):
            with contextlib.suppress(OSError):
                action()

    # ------------------------------------------------------------------ connection

    def _handle(self, sock: gevent.socket.socket, address) -> None:
        client = _Client(sock)
        self._clients.add(client)
        reader = sock.makefile("rb")
        beat = gevent.spawn(self._heartbeats, client)
        self._greenlets.add(beat)
        try:
            if reader.read(4) != b"  V2":
                client.send_frame(FRAME_ERROR, b"E_BAD_PROTOCOL bad magic")
                return
            while not client.closed:
                line = reader.readline()
                if not line:
                    return
                client.last_seen = time.monotonic()
                if not self._command(client, reader, line.rstrip(b"\n").rstrip(b"\r")):
                    return
        except OSError:
            return
        finally:
            beat.kill(block=False)
            self._greenlets.discard(beat)
            self._close(client)

    def _heartbeats(self, client: _Client) -> None:
        while not client.closed:
            interval = client.heartbeat_ms / 1000.0
            if interval <= 0:
                return
            gevent.sleep(interval)
            if time.monotonic() - client.last_seen > 2 * interval + 0.5:
                self._close(client)  # missed two heartbeats, as nsqd does
                return
            client.send_frame(FRAME_RESPONSE, b"_heartbeat_")

    @staticmethod
    def _read_body(reader) -> bytes:
        size = struct.unpack(">i", reader.read(4))[0]
        return reader.read(size)

    def _command(self, client: _Client, reader, line: bytes) -> bool:
        parts = line.split(b" ")
        name = parts[0]
        self.commands.append(name)
        if name == b"IDENTIFY":
            data = json.loads(self._read_body(reader) or b"{}")
            if "heartbeat_interval" in data:
                client.heartbeat_ms = int(data["heartbeat_interval"])
            if data.get("feature_negotiation"):
                answer = {
                    "max_rdy_count": 2500, "version": "1.3.0-double", "max_msg_timeout": 900000,
                    "msg_timeout": 60000, "tls_v1": False, "deflate": False, "snappy": False,
                    "auth_required": False, "heartbeat_interval": client.heartbeat_ms,
                    "sample_rate": 0, "output_buffer_size": 16384, "output_buffer_timeout": 250,
                }
                client.send_frame(FRAME_RESPONSE, json.dumps(answer).encode())
            else:
                client.send_frame(FRAME_RESPONSE, b"OK")
        elif name == b"SUB" and len(parts) == 3:
            self._subscribe(client, parts[1].decode(), parts[2].decode())
            client.send_frame(FRAME_RESPONSE, b"OK")
        elif name == b"RDY" and len(parts) == 2:
            client.rdy = int(parts[1])
            if client.channel:
                client.channel.deliver()
        elif name == b"FIN" and len(parts) == 2:
            if client.in_flight.pop(parts[1], None) is None:
                client.send_frame(FRAME_ERROR, b"E_FIN_FAILED FIN failed")
            elif client.channel:
                client.channel.deliver()
        elif name == b"REQ" and len(parts) == 3:
            message = client.in_flight.pop(parts[1], None)
            if message is None:
                client.send_frame(FRAME_ERROR, b"E_REQ_FAILED REQ failed")
            elif client.channel:
                client.channel.queue.append(message)
                client.channel.deliver()
        elif name in (b"TOUCH", b"NOP"):
            pass  # TOUCH only extends the timeout (not modelled); NOP answers a heartbeat
        elif name == b"PUB" and len(parts) == 2:
            self._publish(parts[1].decode(), self._read_body(reader))
            client.send_frame(FRAME_RESPONSE, b"OK")
        elif name == b"MPUB" and len(parts) == 2:
            body = self._read_body(reader)
            count = struct.unpack(">i", body[:4])[0]
            offset, messages = 4, []
            for _ in range(count):
                size = struct.unpack(">i", body[offset:offset + 4])[0]
                messages.append(body[offset + 4:offset + 4 + size])
                offset += 4 + size
            for message in messages:
                self._publish(parts[1].decode(), message)
            client.send_frame(FRAME_RESPONSE, b"OK")
        elif name == b"CLS":
            client.rdy = 0
            client.send_frame(FRAME_RESPONSE, b"CLOSE_WAIT")
        else:
            client.send_frame(FRAME_ERROR, b"E_INVALID invalid command")
            return False
        return True

    # ------------------------------------------------------------------ nsqlookupd

    def _lookup_app(self, environ, start_response):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        topic = (query.get("topic") or [""])[0]
        if environ.get("PATH_INFO") != "/lookup" or topic not in self._topics:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"message":"TOPIC_NOT_FOUND"}']
        body = {
            "channels": list(self._topics[topic].channels),
            "producers": [{
                "remote_address": f"{self.host}:{self.tcp_port}", "hostname": "nsqd-double",
                "broadcast_address": self.host, "tcp_port": self.tcp_port, "http_port": 0,
                "version": "1.3.0-double",
            }],
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
