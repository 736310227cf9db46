"""The admin API's read-only views of a node (NodeControl): subscriptions, presentities,
health, metrics, history, snapshot. Reads only: nothing here changes the engine or the state."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from busylamp.presence.metrics import render_metrics
from busylamp.presence.packages import REGISTRY
from busylamp.presence.snapshots import record_rows


def _record_view(record, now: float) -> dict:
    expires_at = getattr(record, "expires_at", None)
    return {
        "id": record.record_id,
        "data": dict(record.data),
        "expires_in": None if expires_at is None else max(0, int(expires_at - now)),
        "switch_id": record.switch_id,
        "bridge_id": record.bridge_id,
        "sequence": record.sequence,
    }


class AdminViews:
    """Read-only admin views (a mixin of PresenceNode)."""

    def subscriptions(
        self, *, presentity: str | None, watcher: str | None, event: str | None,
        cursor: str | None, limit: int,
    ) -> tuple[list[dict], str | None]:
        offset = int(cursor) if cursor and cursor.isascii() and cursor.isdigit() else 0
        offset = min(offset, 2**40)  # islice takes at most sys.maxsize
        now = self.clock()
        it = self.engine.iter_subscriptions(presentity, watcher, event)
        page = list(itertools.islice(it, offset, offset + limit + 1))  # the skip runs in C
        rows = [sub.as_dict(now) for sub in page[:limit]]
        return rows, (str(offset + limit) if len(page) > limit else None)

    def presentity(self, aor: str) -> dict | None:
        found = False
        result: dict = {"presentity": aor, "packages": {}}
        now = self.clock()
        for name in REGISTRY:
            records = self.state.records(name, aor)
            watchers = self.engine.subscriptions.watcher_count(name, aor)
            if not records and not watchers:
                continue
            found = True
            result["packages"][name] = {
                "watchers": watchers,
                "records": [_record_view(r, now) for r in records],
                "body": self.state.body(name, aor).for_version(0).decode("utf-8", "replace"),
            }
        return result if found else None

    def history_report(self, aor: str) -> dict:
        """``busylamp why``: the lamp, its timeline and likely causes (presence/why.py)."""
        from busylamp.presence.why import explain

        return explain(self, aor)

    def health(self) -> tuple[bool, dict]:
        return self.ready, {
            "node_id": self.node_id,
            "ready": self.ready,
            "uptime": int(time.time() - self.started_at),
            "subscriptions": len(self.engine.subscriptions),
            "listeners": [f"{t}:{h}:{p}" for t, (h, p) in self.listeners],
        }

    def metrics_text(self) -> str:
        return render_metrics(self)

    def snapshot(self) -> Iterator[dict]:
        yield {"marks": {k: list(v) for k, v in self.state.marks().items()}}
        yield from self.state.export()

    def snapshot_rows(self) -> Iterator[dict | list]:
        """``GET /snapshot`` in rows (presence/snapshots.py): the marks, then lists of rows."""
        yield {"marks": {k: list(v) for k, v in self.state.marks().items()}}
        yield from record_rows(self.state, self.clock())
