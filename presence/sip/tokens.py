"""Unguessable tokens (branches, tags) from the OS CSPRNG, drawn in batches.

One ``os.urandom`` call serves 512 tokens, so a NOTIFY's branch or a dialog's tag costs a
string slice, not a system call. The pools are discarded in a forked child (they would repeat
the parent's).
"""

from __future__ import annotations

import base64
import os

__all__ = ["token64", "token72"]

_BATCH = 512
_pool = ""
_pos = 0


def token64() -> str:
    """16 lower-case hex digits: 64 bits from the OS CSPRNG."""
    global _pool, _pos
    pos = _pos
    if pos >= len(_pool):
        _pool = os.urandom(8 * _BATCH).hex()
        pos = 0
    _pos = pos + 16
    return _pool[pos : pos + 16]


_pool72 = ""
_pos72 = 0


def token72() -> str:
    """12 base64url characters (token characters, RFC 3261 25.1): 72 bits from the OS CSPRNG,
    a 61-byte string (the 64-byte size class; 16 hex digits take 80)."""
    global _pool72, _pos72
    pos = _pos72
    if pos >= len(_pool72):
        _pool72 = base64.urlsafe_b64encode(os.urandom(9 * _BATCH)).decode("ascii")
        pos = 0
    _pos72 = pos + 12
    return _pool72[pos : pos + 12]


def _reset() -> None:
    global _pool, _pos, _pool72, _pos72
    _pool, _pos, _pool72, _pos72 = "", 0, "", 0


os.register_at_fork(after_in_child=_reset)
