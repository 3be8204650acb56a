"""Prometheus metrics of one server: requests by route and status, latency, batch sizes, queue depth.

Each app gets its own registry (several apps in one process, as in tests, do not collide). With
several worker processes, `PROMETHEUS_MULTIPROC_DIR` is set by `serve()` and /metrics aggregates all.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

KNOWN_ROUTES = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/predict", "/openapi.json"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter("dlforge_requests_total", "HTTP requests by route and status code.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("dlforge_request_duration_seconds", "HTTP request latency (whole request).",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("dlforge_batch_size", "Rows per forward pass.", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.inference = Histogram("dlforge_inference_duration_seconds", "Seconds per batch (encode + forward + decode).",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("dlforge_queue_depth", "Requests waiting for a batch.", registry=self.registry,
                                 **({"multiprocess_mode": "livesum"} if multiproc else {}))
        self.rejected = Counter("dlforge_rejected_total", "Requests refused before inference, by reason.",
                                ["reason"], registry=self.registry)
        # The labelled children, looked up once per (route, status): prometheus_client's labels() validates and
        # locks on every call, a few microseconds per request.
        self._counts: dict[tuple[str, int], object] = {}
        self._latency: dict[str, object] = {}

    def record_request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: its count by (route, status) and its latency."""
        counter = self._counts.get((route, status))
        if counter is None:
            counter = self._counts[(route, status)] = self.requests.labels(route, str(status))
        counter.inc()
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = self.latency.labels(route)
        latency.observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.inference.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every response by route and status and times it; unknown paths share one label (bounded cardinality)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else ("/static" if path.startswith("/static/") else "other")
        status = 500
        started = time.perf_counter()

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.record_request(route, status, time.perf_counter() - started)
