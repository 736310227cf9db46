"""A small seeded mutation fuzzer for the suite (tests/unit/test_fuzz.py): no dependency, reproducible.

Every case is derived from (seed, target, index) alone, so one failing case can be replayed on its
own: the failure message prints the seed and index, and ``BUSYLAMP_FUZZ_SEED`` /
``BUSYLAMP_FUZZ_CASES`` choose the seed and the number of cases per target.
"""

from __future__ import annotations

import os
import random
from typing import Any

DEFAULT_CASES = 2000

# Bytes and tokens that parsers trip over: separators, escapes, huge numbers, odd whitespace.
INTERESTING = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b":",
    b";", b",", b"<", b">", b"\"", b"\\", b"%", b"%00", b"%zz", b"[", b"]", b"@", b" ", b"\t",
    b"0", b"-1", b"4294967296", b"99999999999999999999", b"1e999", b"sip:", b"sips:", b"tel:",
    b";lr", b";transport=tcp", b";transport=tls", b";tag=", b";branch=z9hG4bK", b";rport=",
    b";received=", b"Content-Length: 99999\r\n", b"Content-Length: -5\r\n", b"Expires: 0\r\n",
    b"Event: message-summary\r\n", b"Event: presence\r\n", b"Record-Route: <sip:1.2.3.4;lr>\r\n",
    b"Via: SIP/2.0/UDP 10.0.0.1;received=10.9.9.9\r\n", b"To: <sip:a@b>;tag=x\r\n", b"[::1]",
    b"255.255.255.255", b"0.0.0.0", b"A" * 300, b"{", b"}", b"null", b"true",
]


def seed() -> int:
    return int(os.environ.get("BUSYLAMP_FUZZ_SEED", "20261202"))


def cases() -> int:
    return int(os.environ.get("BUSYLAMP_FUZZ_CASES", str(DEFAULT_CASES)))


def rng_for(target: str, index: int, base: int | None = None) -> random.Random:
    return random.Random(f"{seed() if base is None else base}:{target}:{index}")


def mutate(data: bytes, rng: random.Random, corpus: list[bytes] = ()) -> bytes:
    """1 to 4 random edits: flips, deletions, insertions, duplicated or swapped lines, splices
    with another corpus member, truncation."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        pos = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip a byte
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # delete a run
            del out[pos:pos + rng.randint(1, 16)]
        elif kind == 2:  # insert an interesting token
            out[pos:pos] = rng.choice(INTERESTING)
        elif kind == 3:  # random bytes
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 4:  # duplicate a line
            lines = bytes(out).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            out = bytearray(b"\r\n".join(lines))
        elif kind == 5:  # swap two lines
            lines = bytes(out).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            out = bytearray(b"\r\n".join(lines))
        elif kind == 6 and corpus:  # splice with another sample
            other = rng.choice(corpus)
            out = out[:pos] + bytearray(other[rng.randrange(len(other) + 1):])
        elif kind == 7:  # truncate
            out = out[:pos]
        else:  # repeat a slice
            end = min(len(out), pos + rng.randint(1, 64))
            out[pos:pos] = out[pos:end] * rng.randint(2, 20)
    return bytes(out)


def mutate_json(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """A structurally mutated copy of a JSON value: keys dropped or renamed, values replaced by
    other types, strings with odd characters, deep nesting, huge numbers."""
    weird: list[Any] = [None, True, False, 0, -1, 2**63, 2**70, 1e308, float("1e-300"), "", "x" * 5000,
                        "\ud800", "\x00", "sip:a@b", "1001@", "@", "yes", "no", [], {}, [[[[]]]],
                        {"a": {"b": {}}}, "\u202e", "0" * 40, "-5", "confirmed", "early"]
    if isinstance(value, dict):
        out = dict(value)
        for _ in range(rng.randint(1, 3)):
            choice = rng.randrange(5)
            keys = list(out)
            if choice == 0 and keys:
                out.pop(rng.choice(keys))
            elif choice == 1 and keys:
                key = rng.choice(keys)
                out[key] = rng.choice(weird) if rng.random() < 0.7 else \
                    mutate_json(out[key], rng, depth + 1)
            elif choice == 2 and keys:
                key = rng.choice(keys)
                out[key.lower() if rng.random() < 0.5 else key + " "] = out.pop(key)
            elif choice == 3:
                out[rng.choice(["Expires", "State", "Messages-New", "Updates", "Call-ID",
                                "Event-Package", "Direction", "X-" + str(rng.randrange(9))])] = \
                    rng.choice(weird)
            elif keys and depth < 3:
                key = rng.choice(keys)
                out[key] = mutate_json(out[key], rng, depth + 1)
        return out
    if isinstance(value, list):
        out_list = list(value)
        if out_list and rng.random() < 0.5:
            i = rng.randrange(len(out_list))
            out_list[i] = mutate_json(out_list[i], rng, depth + 1)
        else:
            out_list.append(rng.choice(weird))
        return out_list
    return rng.choice(weird)
