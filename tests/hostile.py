"""A raw SIP peer for the hardening tests: hand-made (hostile) bytes out, everything back in.

sipp is the legitimate phone of the suite; this is the attacker, who sends what no phone would.
"""

from __future__ import annotations

import socket

from tests.polling import wait_until


class RawPeer:
    """A UDP (or TCP) socket on ``host`` that sends bytes and collects every message back."""

    def __init__(self, transport: str = "udp", target: tuple[str, int] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.transport = transport
        self.target = target
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((host, 0))
        else:
            assert target is not None
            self.sock = socket.create_connection(target, timeout=5)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self._stream = b""

    def send(self, data: bytes, target: tuple[str, int] | None = None) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, target or self.target)
        else:
            self.sock.sendall(data)

    def poll(self) -> list[bytes]:
        while True:
            try:
                chunk = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            if self.transport == "udp":
                self.messages.append(chunk)
                continue
            if not chunk:
                break
            self._stream += chunk
        while self.transport != "udp" and b"\r\n\r\n" in self._stream:
            head, _, rest = self._stream.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(rest) < length:
                break
            self.messages.append(head + b"\r\n\r\n" + rest[:length])
            self._stream = rest[length:]
        return self.messages

    def wait_for(self, predicate, timeout: float = 5.0, message: str = "") -> list[bytes]:
        wait_until(lambda: predicate(self.poll()), timeout=timeout, message=message)
        return self.messages

    def close(self) -> None:
        self.sock.close()


def status(message: bytes) -> int | None:
    first = message.split(b"\r\n", 1)[0].split(b" ")
    return int(first[1]) if first[0] == b"SIP/2.0" else None


def method(message: bytes) -> str | None:
    first = message.split(b" ", 1)[0]
    return None if first.startswith(b"SIP/") else first.decode()


def header(message: bytes, name: str) -> str | None:
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode("utf-8", "replace")
    return None


def subscribe(peer: RawPeer, *, presentity: str = "1001@example.com", call_id: str = "hostile-1",
              contact: str | None = None, extra: str = "", from_tag: str = "att1",
              transport: str = "UDP", cseq: int = 1, branch: str | None = None,
              expires: int = 600) -> bytes:
    contact = contact if contact is not None else f"<sip:6666@127.0.0.1:{peer.port}>"
    lines = [
        f"SUBSCRIBE sip:{presentity} SIP/2.0",
        f"Via: SIP/2.0/{transport} 127.0.0.1:{peer.port};branch={branch or 'z9hG4bK-' + call_id}"
        f"-{cseq};rport",
        f"From: <sip:6666@example.com>;tag={from_tag}",
        f"To: <sip:{presentity}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} SUBSCRIBE",
        f"Contact: {contact}",
        "Max-Forwards: 70",
        "Event: dialog",
        f"Expires: {expires}",
    ]
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def options(peer: RawPeer, n: int, transport: str = "UDP") -> bytes:
    return (
        f"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{peer.port};branch=z9hG4bK-ping-{n}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: ping-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answers_until_ping(peer: RawPeer, payload: bytes, n: int, timeout: float = 5.0
                       ) -> list[bytes]:
    """Send ``payload``, then an OPTIONS ping; return everything received before the ping's 200.

    The node handles one peer's messages in order, so whatever it answers to ``payload`` (and any
    NOTIFY it starts right away) is on the wire before the ping's answer: what is absent here was
    never sent, proven without a sleep.
    """
    start = len(peer.poll())
    peer.send(payload)
    peer.send(options(peer, n, peer.transport.upper()))
    call_id = f"ping-{n}".encode()

    def pinged(messages: list[bytes]) -> bool:
        return any(call_id in m and status(m) == 200 for m in messages[start:])

    messages = peer.wait_for(pinged, timeout, "no answer to the OPTIONS ping")
    seen = messages[start:]
    cut = next(i for i, m in enumerate(seen) if call_id in m)
    return seen[:cut] + seen[cut + 1:]



def reply(request: bytes, code: int = 200) -> bytes:
    """A response to ``request`` built from its own Via, From, To, Call-ID and CSeq."""
    lines = [f"SIP/2.0 {code} Whatever"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        lines.append(f"{name}: {header(request, name)}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
