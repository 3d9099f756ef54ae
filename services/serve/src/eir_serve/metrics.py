"""Prometheus metrics, one registry per app (no global state between apps or tests).

Under ``eirserve --workers N`` every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen by that variable when
the library is imported), and ``/metrics`` in any worker reads them all: counters and histograms
are summed over the workers, the queue depth is the sum over the live ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("eir_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "eir_request_seconds",
            "request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # The series of one model version carry its name and version (labels); a version's series
        # go when it is released (``ModelMetrics.release``), so many swaps do not pile them up.
        self.batch_size = Histogram(
            "eir_batch_size",
            "items per forward pass",
            ["model", "version"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.queue_depth = Gauge(
            "eir_queue_depth",
            "items waiting for a forward pass",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.items = Counter(
            "eir_predicted_items_total", "items predicted", ["model", "version"], registry=self.registry
        )
        # Diffusion models: the step loop of sampler.py (one forward pass per step for every request in flight).
        self.sampling_steps = Counter(
            "eir_sampling_steps_total", "forward passes of the diffusion step loop", registry=self.registry
        )
        self.sampling_rows = Histogram(
            "eir_sampling_step_rows",
            "rows per forward pass of the step loop (batch occupancy; guidance takes two rows per item)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.sampling_active = Gauge(
            "eir_sampling_requests_active",
            "requests whose samples are being stepped",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.sampling_queue_seconds = Histogram(
            "eir_sampling_queue_seconds",
            "time from a request's arrival to its first step",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.model_swaps = Counter(
            "eir_model_swaps_total",
            "versions loaded after the start (--model-control poll or explicit): ok, or failed to load",
            ["model", "result"],
            registry=self.registry,
        )
        self.model_versions_loaded = Gauge(
            "eir_model_versions_loaded",
            "versions in memory: those served and those swapped out but still finishing requests",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.model_ready = Gauge(
            "eir_model_ready",
            "1 for each model version that answers requests",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.sampling_cancelled = Counter(
            "eir_sampling_cancelled_total",
            "requests dropped from the step loop because their client went away or their deadline passed",
            registry=self.registry,
        )

    def for_model(self, model: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, model, version)

    def render(self) -> bytes:
        """The Prometheus text of this process, or of all worker processes in multiprocess mode."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(registry)


class ModelMetrics:
    """What one model version's service records: its own series (bound to its labels), and the
    server-wide ones of the diffusion step loop (reached through this object unchanged)."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.server = metrics
        self.labels = (model, version)
        self.items = metrics.items.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def set_ready(self, ready: bool) -> None:
        self.server.model_ready.labels(*self.labels).set(1 if ready else 0)

    def release(self) -> None:
        """Drop this version's series (it is no longer served)."""
        for metric in (self.server.items, self.server.batch_size, self.server.queue_depth, self.server.model_ready):
            try:
                metric.remove(*self.labels)
            except KeyError:  # never recorded
                pass


class MetricsMiddleware:
    """Counts every request by route template and status, and times it (pure ASGI)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "(unmatched)"
            self.metrics.requests.labels(path, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)
