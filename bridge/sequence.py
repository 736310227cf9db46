"""Ordering fields on every outgoing bridge message (see docs/architecture.md)."""

from __future__ import annotations

from typing import Any


class Sequencer:
    """Stamps Bridge-ID, Bridge-Epoch and a per-(bridge, epoch) Sequence (+1 per message)."""

    def __init__(self, bridge_id: str, epoch: int) -> None:
        self.bridge_id = bridge_id
        self.epoch = int(epoch)
        self.sequence = 0

    def stamp(self, message: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of ``message`` carrying the next Sequence (the input is left alone)."""
        self.sequence += 1
        stamped = dict(message)
        stamped["Bridge-ID"] = self.bridge_id
        stamped["Bridge-Epoch"] = self.epoch
        stamped["Sequence"] = self.sequence
        return stamped
