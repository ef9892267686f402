"""app/serving/metrics.py on its own: the exported families (names, types, help, buckets),
what one batch adds to them, and the request middleware's labels and timings, read back
through prometheus_client's own text format and parser."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.serving.batcher import BatchStats
from app.serving.metrics import RequestMetricsMiddleware, ServiceMetrics

ROUTES = frozenset({"/smooth", "/healthz"})
LATENCY = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]

# The service's families as a scrape shows them: name, type, help, histogram bounds (without +Inf).
FAMILIES: dict[str, tuple[str, str, list[float] | None]] = {
    "convewma_requests": ("counter", "HTTP requests", None),
    "convewma_request_duration_seconds": ("histogram", "HTTP request latency", LATENCY),
    "convewma_queue_wait_seconds": ("histogram", "time the oldest request of a batch waited", LATENCY),
    "convewma_forward_seconds": ("histogram", "time of one batched forward", LATENCY),
    "convewma_batch_series": ("histogram", "series per batch", [2.0**i for i in range(13)]),
    "convewma_batch_values": ("histogram", "values per batch", [4.0**i for i in range(2, 13)]),
    "convewma_batch_padding_fraction": (
        "histogram",
        "share of a batch tensor that is padding",
        [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0],
    ),
    "convewma_batches": ("counter", "batches run", None),
    "convewma_queue_values": ("gauge", "values waiting for a batch", None),
    "convewma_queue_depth": ("gauge", "request pieces waiting for a batch", None),
    "convewma_batches_in_flight": ("gauge", "batches being computed", None),
    "convewma_inflight_bytes": ("gauge", "memory reserved by requests in flight", None),
    "convewma_requests_in_progress": ("gauge", "/smooth requests admitted", None),
    "convewma_model_info": ("gauge", "the loaded model", None),
}


class Scrape:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        }

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample named ``name`` with exactly ``labels``; None if there is none."""
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None


def stats(**overrides: Any) -> BatchStats:
    base: dict[str, Any] = {
        "series": 3,
        "values": 75,
        "padded_values": 100,
        "queue_wait_s": 0.003,
        "forward_s": 0.02,
        "failed": False,
    }
    base.update(overrides)
    return BatchStats(**base)


def test_every_service_family_has_its_name_type_help_and_buckets():
    metrics = ServiceMetrics()
    metrics.requests.labels("/smooth", "POST", "200").inc()
    metrics.latency.labels("/smooth", "POST", "200").observe(0.01)
    metrics.batches.labels("ok").inc()
    metrics.model.info({"version": "v"})
    families = Scrape(metrics).families
    ours = {name: f for name, f in families.items() if name.startswith("convewma_")}
    assert set(ours) == set(FAMILIES)
    for name, (kind, documentation, bounds) in FAMILIES.items():
        family = ours[name]
        assert (family.type, family.documentation) == (kind, documentation), name
        if bounds is not None:
            les = [float(s.labels["le"]) for s in family.samples if s.name == f"{name}_bucket"]
            assert les == [*bounds, math.inf], name
    assert {"process_cpu_seconds_total", "python_info", "python_gc_objects_collected_total"} <= {
        s.name for f in families.values() for s in f.samples
    }
    assert not [s.name for f in families.values() for s in f.samples if s.name.endswith("_created")]
    request = [s for s in ours["convewma_requests"].samples]
    assert [(s.name, s.labels, s.value) for s in request] == [
        ("convewma_requests_total", {"route": "/smooth", "method": "POST", "status": "200"}, 1.0)
    ]
    assert [(s.labels, s.value) for s in ours["convewma_batches"].samples] == [({"outcome": "ok"}, 1.0)]
    assert [s.labels for s in ours["convewma_model_info"].samples] == [{"version": "v"}]


def test_one_batch_is_recorded_in_each_of_its_histograms():
    metrics = ServiceMetrics()
    metrics.observe_batch(stats())
    metrics.observe_batch(stats(series=1, values=16, padded_values=16, failed=True))
    scrape = Scrape(metrics)
    assert scrape.value("convewma_batches_total", outcome="ok") == 1
    assert scrape.value("convewma_batches_total", outcome="error") == 1
    assert scrape.value("convewma_batch_series_sum") == 4
    assert scrape.value("convewma_batch_series_bucket", le="2.0") == 1
    assert scrape.value("convewma_batch_values_sum") == 91
    assert scrape.value("convewma_batch_values_bucket", le="16.0") == 1
    assert scrape.value("convewma_queue_wait_seconds_sum") == pytest.approx(0.006)
    assert scrape.value("convewma_queue_wait_seconds_bucket", le="0.0025") == 0
    assert scrape.value("convewma_queue_wait_seconds_bucket", le="0.005") == 2
    assert scrape.value("convewma_forward_seconds_sum") == pytest.approx(0.04)
    assert scrape.value("convewma_forward_seconds_bucket", le="0.025") == 2
    # 25 of 100 values are padding, then none.
    assert scrape.value("convewma_batch_padding_fraction_sum") == 0.25
    assert scrape.value("convewma_batch_padding_fraction_bucket", le="0.0") == 1
    assert scrape.value("convewma_batch_padding_fraction_bucket", le="0.3") == 2


def test_a_batch_with_no_padded_tensor_counts_as_no_padding():
    metrics = ServiceMetrics()
    metrics.observe_batch(stats(series=0, values=0, padded_values=0, failed=True))  # failed before a tensor
    scrape = Scrape(metrics)
    assert scrape.value("convewma_batch_padding_fraction_count") == 1
    assert scrape.value("convewma_batch_padding_fraction_sum") == 0.0
    assert scrape.value("convewma_batch_padding_fraction_bucket", le="0.0") == 1


# -- the request middleware ------------------------------------------------------------------------


async def answering(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers 200 after 20 ms; 404 on a path starting /missing; raises on /boom."""
    if scope["type"] != "http":
        scope["seen"] = True
        return
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    await asyncio.sleep(0.02)
    status = 404 if scope["path"].startswith("/missing") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def request(metrics: ServiceMetrics, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = RequestMetricsMiddleware(answering, metrics, ROUTES)  # type: ignore[arg-type]
    scope = {"type": "http", "method": method, "path": path}
    with contextlib.suppress(RuntimeError):  # /boom: the error goes on to the server, once counted
        asyncio.run(middleware(scope, receive, send))
    return sent


def test_requests_are_counted_and_timed_by_route_method_and_status():
    metrics = ServiceMetrics()
    request(metrics, "POST", "/smooth")
    request(metrics, "POST", "/smooth")
    request(metrics, "GET", "/healthz")
    sent = request(metrics, "GET", "/missing/x")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # passed on
    scrape = Scrape(metrics)
    post = {"route": "/smooth", "method": "POST", "status": "200"}
    assert scrape.value("convewma_requests_total", **post) == 2
    assert scrape.value("convewma_requests_total", route="/healthz", method="GET", status="200") == 1
    assert scrape.value("convewma_requests_total", route="other", method="GET", status="404") == 1
    assert scrape.value("convewma_request_duration_seconds_count", **post) == 2
    took = scrape.value("convewma_request_duration_seconds_sum", **post)
    assert took is not None
    assert 0.04 <= took < 1.0  # two requests of 20 ms each
    assert scrape.value("convewma_request_duration_seconds_bucket", le="0.01", **post) == 0
    assert scrape.value("convewma_request_duration_seconds_bucket", le="30.0", **post) == 2


@pytest.mark.parametrize(
    ("method", "path", "labels"),
    [
        ("BREW", "/healthz", {"route": "/healthz", "method": "other", "status": "200"}),
        ("get", "/healthz", {"route": "/healthz", "method": "other", "status": "200"}),
        ("DELETE", "/smooth/", {"route": "other", "method": "DELETE", "status": "200"}),
        ("HEAD", "/boom", {"route": "other", "method": "HEAD", "status": "500"}),
    ],
    ids=["unknown method", "lower-case method", "path not a route", "no response: 500"],
)
def test_label_values_are_bounded_and_an_unanswered_request_is_a_500(method, path, labels):
    metrics = ServiceMetrics()
    request(metrics, method, path)
    scrape = Scrape(metrics)
    assert scrape.value("convewma_requests_total", **labels) == 1
    assert scrape.value("convewma_request_duration_seconds_count", **labels) == 1
    counted = [s for s in scrape.families["convewma_requests"].samples]
    assert len(counted) == 1


def test_other_scopes_pass_through_uncounted():
    metrics = ServiceMetrics()
    scope: dict[str, Any] = {"type": "lifespan"}

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: dict[str, Any]) -> None:
        pass

    asyncio.run(RequestMetricsMiddleware(answering, metrics, ROUTES)(scope, nothing, ignore))  # type: ignore[arg-type]
    assert scope["seen"]
    assert Scrape(metrics).families["convewma_requests"].samples == []
