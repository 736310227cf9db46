"""Batched UDP system calls: ``recvmmsg``/``sendmmsg`` (C extension ``_mmsg``) or a fallback.

:class:`DatagramBatcher` moves many datagrams per system call on a non-blocking UDP socket.
Where the extension is not built (``python -m busylamp.presence.node.buildext``) or ``batched=False``, the
same methods loop over ``recvfrom``/``sendto``, so callers never see the difference. Neither
method blocks: ``recv`` returns what is queued (possibly nothing), ``send`` reports what the
kernel took before its buffer filled. Addresses are ``(host, port)`` tuples of IP literals.
"""

from __future__ import annotations

import socket

try:
    from . import _mmsg
except ImportError:  # not built: the fallback below
    _mmsg = None

__all__ = ["BATCH", "DatagramBatcher", "batching_available"]

BATCH = 64  # datagrams per receive call


def batching_available() -> bool:
    """True when the recvmmsg/sendmmsg extension is built."""
    return _mmsg is not None


class DatagramBatcher:
    """recvmmsg/sendmmsg (or recvfrom/sendto) on one non-blocking UDP socket."""

    def __init__(self, sock: socket.socket, bufsize: int = 65536, batch: int = BATCH,
                 batched: bool | None = None) -> None:
        self.sock = sock
        self.bufsize = bufsize
        self.batch = batch
        self.batched = _mmsg is not None and (batched is None or batched)
        self.family = int(sock.family)  # gevent's property builds an enum on every read

    def recv(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Up to ``batch`` queued datagrams with their sources; [] when none is queued.
        A datagram longer than ``bufsize`` comes back truncated to ``bufsize`` bytes."""
        if self.batched:
            return _mmsg.recv_batch(self.sock.fileno(), self.batch, self.bufsize)
        out = []
        recvfrom, size = self.sock.recvfrom, self.bufsize
        for _ in range(self.batch):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                break
            out.append((data, (addr[0], addr[1])))
        return out

    def send(self, items: list[tuple[bytes, tuple[str, int]]]) -> tuple[int, int]:
        """Send from the front of ``items``; returns (taken, failed): ``taken`` items were
        consumed (sent, or refused for good: ``failed`` of them); the rest met a full socket
        buffer and are to be sent again once the socket is writable."""
        if self.batched:
            return _mmsg.send_batch(self.sock.fileno(), self.family, items)
        taken = failed = 0
        sendto = self.sock.sendto
        for data, dest in items:
            try:
                sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, ValueError, TypeError, OverflowError):
                failed += 1
            taken += 1
        return taken, failed
