"""The HTTP API of a ``--role bridge`` process: ``/health`` and ``/metrics`` only.

A bridge next to a FreeSWITCH has stages of its own to scrape (``esl_to_bridge``), its event
sockets and its NSQ publisher; every other endpoint of the node API answers 404 here.
"""

from __future__ import annotations

import time
from typing import Any

from busylamp.app.metrics import bridge_metrics, nsq_metrics
from busylamp.presence.api import HttpError, serve_api
from busylamp.presence.histogram import StageHistograms
from busylamp.presence.metrics import PREFIX, MetricWriter

__all__ = ["BridgeControl", "serve_bridge_http"]


class BridgeControl:
    """The API's NodeControl for a bridge-only process."""

    def __init__(self, service: Any, bus: Any, node_id: str) -> None:
        self.service = service
        self.node_id = node_id
        self.started_at = time.time()
        self.stages = StageHistograms(["esl_to_bridge"])
        service.event_latency = self.stages["esl_to_bridge"]
        self.renderers = [bridge_metrics(service)]
        if hasattr(bus, "publisher"):
            self.renderers.append(nsq_metrics(bus))

    def health(self) -> tuple[bool, dict]:
        clients = {f"{c.target.host}:{c.target.port}": c.state for c in self.service.clients}
        return True, {"node_id": self.node_id, "role": "bridge",
                      "uptime": int(time.time() - self.started_at), "esl": clients}

    def metrics_text(self) -> str:
        metric = MetricWriter()
        for render in self.renderers:
            render(metric)
        self.stages.render(metric, metric.lines, PREFIX)
        return "\n".join(metric.lines) + "\n"

    def _absent(self, *args: Any, **kwargs: Any) -> Any:
        raise HttpError("404 Not Found", "a bridge serves /health and /metrics only")

    publish = subscriptions = presentity = tail = snapshot = _absent


def serve_bridge_http(config: Any, service: Any, bus: Any) -> Any:
    """Start the bridge's HTTP API on ``--http`` (same token rules as a node's)."""
    control = BridgeControl(service, bus, config.node_id or "busylamp")
    return serve_api(config.http.host, config.http.port, control, config.http_token)
