"""Prometheus metrics: one registry per app so that tests can build many apps.

Besides the service's own series, each registry has the standard ``process_*`` and
``python_*`` collectors. No ``_created`` series are exported (they double the number of
series for little use). Request labels are bounded: a path that is not a route and a
method that is not a standard one are each counted as ``other``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from app.serving.batcher import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
VALUE_BUCKETS = tuple(4**i for i in range(2, 13))
FRACTION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
REQUEST_LABELS = ("route", "method", "status")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServiceMetrics:
    def __init__(self) -> None:
        # A process-wide switch in prometheus_client, set where the registry is made.
        disable_created_metrics()  # type: ignore[no-untyped-call,unused-ignore]  # untyped upstream
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter("convewma_requests_total", "HTTP requests", REQUEST_LABELS, registry=r)
        self.latency = Histogram(
            "convewma_request_duration_seconds",
            "HTTP request latency",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "convewma_queue_wait_seconds",
            "time the oldest request of a batch waited",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_time = Histogram(
            "convewma_forward_seconds", "time of one batched forward", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_series = Histogram(
            "convewma_batch_series", "series per batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_values = Histogram(
            "convewma_batch_values", "values per batch", buckets=VALUE_BUCKETS, registry=r
        )
        self.padding = Histogram(
            "convewma_batch_padding_fraction",
            "share of a batch tensor that is padding",
            buckets=FRACTION_BUCKETS,
            registry=r,
        )
        self.batches = Counter("convewma_batches_total", "batches run", ["outcome"], registry=r)
        self.queue_values = Gauge("convewma_queue_values", "values waiting for a batch", registry=r)
        self.queue_depth = Gauge("convewma_queue_depth", "request pieces waiting for a batch", registry=r)
        self.in_flight = Gauge("convewma_batches_in_flight", "batches being computed", registry=r)
        self.inflight_bytes = Gauge(
            "convewma_inflight_bytes", "memory reserved by requests in flight", registry=r
        )
        self.in_progress = Gauge("convewma_requests_in_progress", "/smooth requests admitted", registry=r)
        self.model = Info("convewma_model", "the loaded model", registry=r)

    def observe_batch(self, stats: BatchStats) -> None:
        self.queue_wait.observe(stats.queue_wait_s)
        self.forward_time.observe(stats.forward_s)
        self.batch_series.observe(stats.series)
        self.batch_values.observe(stats.values)
        self.padding.observe(1.0 - stats.values / stats.padded_values if stats.padded_values else 0.0)
        self.batches.labels("error" if stats.failed else "ok").inc()


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by route, method and status (pure ASGI, no buffering)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Both keys are required in an HTTP scope (ASGI spec); only their values are bounded.
        route = scope["path"] if scope["path"] in self.routes else "other"
        method = scope["method"] if scope["method"] in METHODS else "other"
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            labels = (route, method, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
