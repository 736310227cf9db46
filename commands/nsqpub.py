"""One PUB to nsqd over its TCP protocol (V2), blocking, for ``busylamp publish --nsqd``.

Not ``busylamp.bridge.nsq.NsqPublisher``: that one is the bridge's long-lived publisher (a
tornado loop in a greenlet, buffering while nsqd is away, re-serializing dicts), so it can
neither send a ``--from-file`` body byte for byte nor report nsqd's answer or refusal, which is
what a one-shot command prints.
"""

from __future__ import annotations

import socket
import struct

import click

from busylamp.presence.config import Address

FRAME_RESPONSE, FRAME_ERROR = 0, 1


def nsq_publish_once(address: Address, topic: str, body: bytes, timeout: float = 5.0) -> str:
    """PUB one message to nsqd and return nsqd's answer ("OK"); ClickException when nsqd is
    unreachable or refuses it."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            sock.sendall(b"  V2" + b"PUB %s\n" % topic.encode() + struct.pack(">l", len(body))
                         + body)
            reader = sock.makefile("rb")
            while True:
                header = reader.read(8)
                if len(header) < 8:
                    raise ConnectionError("nsqd closed the connection")
                size, frame_type = struct.unpack(">lL", header)
                data = reader.read(size - 4)
                if frame_type == FRAME_RESPONSE and data == b"_heartbeat_":
                    sock.sendall(b"NOP\n")
                    continue
                if frame_type == FRAME_ERROR:
                    raise click.ClickException(f"nsqd {address} refused the message: "
                                               f"{data.decode('utf-8', 'replace')}")
                return data.decode("utf-8", "replace")
    except OSError as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise click.ClickException(f"cannot reach nsqd at {address}: {reason} "
                                   "(check --nsqd HOST:PORT, the TCP port)") from None
