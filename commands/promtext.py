"""Prometheus text exposition format, read back (``busylamp inspect stats``)."""

from __future__ import annotations


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → {sample name with labels: value} (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.rpartition("}") if "}" in line else line.partition(" ")
        if "}" in line:
            name += "}"
        try:
            samples[name.strip()] = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
    return samples
