"""Unguessable tokens (branches, tags) from the OS CSPRNG, drawn in batches.

One ``os.urandom`` call serves 512 tokens of 64 bits each, so a NOTIFY's branch costs a string
slice, not a system call. The pool is discarded in a forked child (it would repeat the parent's).
"""

from __future__ import annotations

import os

__all__ = ["token64"]

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


def _reset() -> None:
    global _pool, _pos
    _pool, _pos = "", 0


os.register_at_fork(after_in_child=_reset)
