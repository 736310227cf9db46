"""The benchmark workload, as plain data: who watches whom, what gets published.

W phones (distinct SIP users ``phone<i>``) with K line keys each subscribe to presentities
``ext<j>`` drawn from a pool of P. Key ``k`` of phone ``i`` watches presentity
``(i * K + k) % P``: every presentity gets the same number of watchers (W*K/P when P divides
W*K) and a phone never watches one presentity twice (K <= P).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

DOMAIN = "bench.local"
DIALOG_CYCLE = ("early", "confirmed", "terminated")
# Expires per published state: a ringing call, a call in progress, an ended call that is kept
# briefly (Kazoo's omnipresence kept terminated dialogs 10 s) and then expires.
PUBLISH_EXPIRES = {"early": 120, "confirmed": 3600, "terminated": 10}


@dataclass(frozen=True, slots=True)
class Workload:
    """Shape of one run: watchers, keys per watcher, presentity pool."""

    watchers: int
    keys: int = 4
    pool: int = 0

    def __post_init__(self) -> None:
        if self.watchers < 1 or self.keys < 1:
            raise ValueError("watchers and keys must be >= 1")
        if self.pool_size < self.keys:
            raise ValueError("pool must hold at least K presentities")

    @property
    def pool_size(self) -> int:
        """P; 0 means one presentity per watcher (each presentity then has K watchers)."""
        return self.pool or self.watchers

    @property
    def subscriptions(self) -> int:
        return self.watchers * self.keys

    def watched(self, watcher: int) -> list[int]:
        """Presentity indexes on the K keys of phone ``watcher``."""
        return [(watcher * self.keys + k) % self.pool_size for k in range(self.keys)]

    def watcher_counts(self) -> list[int]:
        """Number of subscriptions per presentity index."""
        counts = [0] * self.pool_size
        for w in range(self.watchers):
            for p in self.watched(w):
                counts[p] += 1
        return counts

    def watched_presentities(self) -> list[int]:
        """Presentity indexes that have at least one watcher, ascending."""
        return [p for p, n in enumerate(self.watcher_counts()) if n]

    def csv_rows(self) -> Iterator[str]:
        """sipp -inf rows: ``watcher;presentity;domain``, one per subscription."""
        for w in range(self.watchers):
            for p in self.watched(w):
                yield f"{phone_user(w)};{presentity_user(p)};{DOMAIN}"


def phone_user(index: int) -> str:
    return f"phone{index}"


def presentity_user(index: int) -> str:
    return f"ext{index}"


def presentity_index(user: str) -> int | None:
    """Inverse of :func:`presentity_user`; None for users outside the pool."""
    if user.startswith("ext") and user[3:].isdigit():
        return int(user[3:])
    return None


def write_sipp_csv(path: str, rows: Iterator[str]) -> int:
    """Write a sequential sipp injection file; returns the number of rows."""
    count = 0
    with open(path, "w", encoding="ascii") as out:
        out.write("SEQUENTIAL\n")
        for row in rows:
            out.write(row)
            out.write("\n")
            count += 1
    return count


def dialog_update(presentity: int, state: str, tag: str, call: int = 0) -> dict[str, object]:
    """A Kazoo/pua_json dialog update for call number ``call`` of one presentity.

    Every call has its own Call-ID (a terminated dialog is never revived), so a presentity holds
    its current call plus the terminated ones that have not expired yet. ``tag`` goes into
    From-Tag, rendered as the dialog's ``local-tag``; the responder records it as a cross-check.
    """
    user = presentity_user(presentity)
    peer = f"peer{presentity}"
    return {
        "Event-Category": "presence",
        "Event-Name": "update",
        "Event-Package": "dialog",
        "From": f"sip:{user}@{DOMAIN}",
        "From-User": user,
        "From-Realm": DOMAIN,
        "To": f"sip:{peer}@{DOMAIN}",
        "To-User": peer,
        "To-Realm": DOMAIN,
        "Call-ID": f"bench-{presentity}-{call}",
        "From-Tag": tag,
        "To-Tag": f"r{presentity}",
        "State": state,
        "Direction": "initiator",
        "Expires": PUBLISH_EXPIRES[state],
    }


class PublishPlan:
    """Round-robin over presentities; each publish advances that presentity's call state."""

    def __init__(self, presentities: list[int], first_seq: int = 0) -> None:
        if not presentities:
            raise ValueError("nothing to publish: no watched presentity")
        self.presentities = presentities
        self._next = 0
        self._seq = first_seq
        self._step = {p: 0 for p in self.presentities}

    def next(self) -> tuple[int, int, str, int]:
        """Return (seq, presentity, state, call number) of the next publish."""
        p = self.presentities[self._next]
        self._next = (self._next + 1) % len(self.presentities)
        call, phase = divmod(self._step[p], len(DIALOG_CYCLE))
        self._step[p] += 1
        seq = self._seq
        self._seq += 1
        return seq, p, DIALOG_CYCLE[phase], call

    @property
    def next_seq(self) -> int:
        return self._seq
