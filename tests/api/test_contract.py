"""The HTTP contract checked by value, through the real app and its lifespan.

Expected alphas come from the raw logits in the weights file (read with ``safetensors``
alone) through the reference formula, never from the app's model; metrics are parsed
and their values asserted after known traffic; the 413, 500, 503 and 504 answers are
reached over HTTP with their bodies and headers checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import orjson
import pytest
import torch
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.serving.options import SmoothOptions
from app.serving.settings import Settings
from tests.reference import (
    SHIPPED_WEIGHTS,
    bank_reference,
    max_relative_error,
    pandas_equivalents,
    read_weights_file,
)

pytestmark = pytest.mark.anyio

SHIPPED = read_weights_file(SHIPPED_WEIGHTS)
EXPECTED_ALPHAS = SHIPPED.alphas
MODEL_VERSION = "sha256:" + hashlib.sha256(SHIPPED_WEIGHTS.read_bytes()).hexdigest()
# The service reports float32 alphas; measured against the float64 reference their
# relative error is at most 6.7e-8 (under one float32 ulp). Two ulps (2.4e-7) keep a
# margin of 3.5x and still catch an eps dropped from the formula (1e-6 relative).
ALPHA_RTOL = 2 * 2.0**-23
# float32 smoothing against the float64 reference, as README.md documents.
SMOOTH_TOLERANCE = 1e-5
MAX_BODY_BYTES = 200_000
JSON = {"content-type": "application/json"}
POLL_LIMIT = 500  # bounded waits: at most 500 polls of 10 ms


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "weights": SHIPPED_WEIGHTS,
        "device": "cpu",
        "max_series": 8,
        "max_length": 5000,
        "max_body_bytes": MAX_BODY_BYTES,
    }
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(**overrides: object) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan; an unhandled error comes back as a 500, not raised here."""
    app = create_app(settings(**overrides))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield app, http


async def post(http: httpx.AsyncClient, payload: object) -> httpx.Response:
    return await http.post("/smooth", content=orjson.dumps(payload), headers=JSON)


def assert_smoothed(series: list[list[float]], reply: dict[str, object], channels: list[int]) -> None:
    """Every value of ``reply`` against the reference with the file's alphas for ``channels``."""
    smoothed = reply["smoothed"]
    assert isinstance(smoothed, list)
    assert len(smoothed) == len(series)
    for values, got in zip(series, smoothed, strict=True):
        expected = bank_reference(
            np.array([values]), EXPECTED_ALPHAS[channels], SHIPPED.kernel_size, SHIPPED.warmup
        )[0]
        assert np.array(got).shape == expected.shape
        assert max_relative_error(np.array(got), expected) <= SMOOTH_TOLERANCE


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(POLL_LIMIT):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 5 s")


class Metrics:
    """A ``/metrics`` scrape, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (extra labels,
        such as a ``method``, are summed over); 0 when none matches."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


async def scrape(http: httpx.AsyncClient) -> Metrics:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return Metrics(response.text)


# -- alphas: from the file's logits, in the chosen order -------------------------------------


async def test_alphas_route_reports_the_alphas_of_the_weights_file():
    async with serving() as (_, http):
        data = (await http.get("/alphas")).json()
    assert data["channels"] == list(SHIPPED.channels)
    assert (data["kernel_size"], data["normalize"], data["warmup"]) == (
        SHIPPED.kernel_size,
        SHIPPED.normalize,
        SHIPPED.warmup,
    )
    assert data["model_version"] == MODEL_VERSION
    np.testing.assert_allclose(data["alphas"], EXPECTED_ALPHAS, rtol=ALPHA_RTOL, atol=0)
    dilation = int(SHIPPED.metadata.get("dilation", "1"))
    assert (data["dilation"], data["receptive_field"]) == (dilation, (SHIPPED.kernel_size - 1) * dilation + 1)
    for name in ("span", "halflife", "com", "truncated_mass"):
        expected = [pandas_equivalents(a, SHIPPED.kernel_size)[name] for a in EXPECTED_ALPHAS]
        np.testing.assert_allclose(data[name], expected, rtol=1e-12, atol=0, err_msg=name)


@pytest.mark.parametrize(
    ("requested", "indices"),
    [
        (None, [0, 1, 2, 3]),
        (["unemp", 0], [3, 0]),
        ([3, 2, 1, 0], [3, 2, 1, 0]),
        (["realint"], [1]),
        ([2, "infl"], [2, 0]),
    ],
    ids=["all", "name-and-index", "reversed", "one", "index-and-name"],
)
@pytest.mark.parametrize("warmup", [None, "adjust"])
async def test_smooth_reply_alphas_are_those_of_the_chosen_channels_in_order(requested, indices, warmup):
    series = [[1.0, -2.0, 3.5, 0.25], np.linspace(-1, 1, 40).round(3).tolist()]
    body: dict[str, object] = {"series": series}
    if requested is not None:
        body["channels"] = requested
    if warmup is not None:
        body["warmup"] = warmup
    async with serving() as (_, http):
        response = await post(http, body)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["channels"] == [SHIPPED.channels[i] for i in indices]
    np.testing.assert_allclose(reply["alphas"], EXPECTED_ALPHAS[indices], rtol=ALPHA_RTOL, atol=0)
    assert reply["model_version"] == MODEL_VERSION
    for values, got in zip(series, reply["smoothed"], strict=True):
        expected = bank_reference(np.array([values]), EXPECTED_ALPHAS[indices], 32, warmup or SHIPPED.warmup)[
            0
        ]
        assert max_relative_error(np.array(got), expected) <= SMOOTH_TOLERANCE


# -- metrics: values after known traffic ---------------------------------------------------------


async def test_metrics_count_known_traffic_exactly():
    rng = np.random.default_rng(7)
    ragged = [rng.normal(size=100).round(4).tolist(), rng.normal(size=25).round(4).tolist()]
    single = [[1.0, 2.0, 3.0]]
    even = rng.normal(size=(3, 10)).round(4).tolist()
    async with serving() as (_, http):
        # Sent one at a time: on an idle server each request is one batch of its own.
        for series in (ragged, single, even):
            response = await post(http, {"series": series})
            assert response.status_code == 200, response.text
            assert_smoothed(series, response.json(), [0, 1, 2, 3])
        invalid = await http.post("/smooth", content=b'{"series": [[1, "x"]]}', headers=JSON)
        assert invalid.status_code == 422
        plain = {"content-type": "text/plain"}
        assert (await http.post("/smooth", content=b'{"series": [[1]]}', headers=plain)).status_code == 415
        for _ in range(2):
            assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/no-such-route")).status_code == 404
        metrics = await scrape(http)

    requests = {
        ("/smooth", "200"): 3,
        ("/smooth", "422"): 1,
        ("/smooth", "415"): 1,
        ("/healthz", "200"): 2,
        ("other", "404"): 1,
    }
    for (route, status), count in requests.items():
        labels = {"route": route, "status": status}
        assert metrics.value("convewma_requests_total", **labels) == count, labels
        assert metrics.value("convewma_request_duration_seconds_count", **labels) == count, labels
    assert metrics.value("convewma_requests_total") == sum(requests.values())  # nothing else counted

    batches = 3
    assert metrics.value("convewma_batches_total", outcome="ok") == batches
    assert metrics.value("convewma_batches_total", outcome="error") == 0
    for name in ("convewma_queue_wait_seconds", "convewma_forward_seconds", "convewma_batch_series"):
        assert metrics.value(f"{name}_count") == batches, name
    assert metrics.value("convewma_batch_series_sum") == 2 + 1 + 3
    assert metrics.value("convewma_batch_values_sum") == 125 + 3 + 30
    # Only the ragged batch pads: lengths 100 and 25 padded to 2 x 100, so 75 of its 200
    # values are padding (0.375, exact in binary); the other two batches pad nothing.
    assert metrics.value("convewma_batch_padding_fraction_count") == batches
    assert metrics.value("convewma_batch_padding_fraction_sum") == 0.375
    assert metrics.value("convewma_batch_padding_fraction_bucket", le="0.0") == 2
    assert metrics.value("convewma_batch_padding_fraction_bucket", le="0.3") == 2
    assert metrics.value("convewma_batch_padding_fraction_bucket", le="0.5") == 3
    assert metrics.value("convewma_queue_depth") == 0
    assert metrics.value("convewma_batches_in_flight") == 0


# -- 413 from the declared Content-Length, before the body is read ------------------------------


@pytest.mark.parametrize(
    ("declared", "chunks"),
    [
        (2 * MAX_BODY_BYTES, [b"1" * 1000] * (2 * MAX_BODY_BYTES // 1000)),  # the body it declares
        (10**12, [b"{}"]),  # far more declared than sent
    ],
    ids=["honest", "overstated"],
)
async def test_declared_length_over_the_limit_is_refused_before_reading(declared, chunks):
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for chunk in chunks:
            pulled += 1
            yield chunk

    headers = {**JSON, "content-length": str(declared)}
    async with serving() as (_, http):
        response = await asyncio.wait_for(http.post("/smooth", content=body(), headers=headers), 10)
        after = await post(http, {"series": [[1.0, 2.0]]})
        metrics = await scrape(http)
    assert response.status_code == 413
    assert pulled == 0, f"{pulled} body chunk(s) were read before the refusal"
    assert response.json() == {
        "detail": f"body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES} bytes"
    }
    assert response.headers["connection"] == "close"
    assert after.status_code == 200
    assert metrics.value("convewma_requests_total", route="/smooth", status="413") == 1


# -- 500, 503 and 504 over HTTP --------------------------------------------------------------------


class BlockedForward:
    """Stands in for the batcher's forward: each call waits until ``release`` is set."""

    def __init__(self, forward: Callable[[torch.Tensor, SmoothOptions], torch.Tensor]) -> None:
        self.forward = forward
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, x: torch.Tensor, options: SmoothOptions) -> torch.Tensor:
        self.entered.set()
        self.release.wait(timeout=10)  # bounded: a broken test cannot hang the run
        return self.forward(x, options)


async def test_past_the_deadline_is_504_and_the_service_recovers():
    async with serving(request_timeout_s=0.5) as (app, http):
        batcher = app.state.service.batcher
        blocked = BlockedForward(batcher._forward)
        batcher._forward = blocked
        try:
            late = await post(http, {"series": [[1.0, 2.0]]})
        finally:
            blocked.release.set()
        await wait_until(lambda: batcher.in_flight == 0)
        series = [[4.0, 5.0, 6.0]]
        after = await post(http, {"series": series})
        metrics = await scrape(http)
    assert late.status_code == 504
    assert late.headers["content-type"] == "application/json"
    assert "did not complete within the server's timeout" in late.json()["detail"]
    assert after.status_code == 200
    assert_smoothed(series, after.json(), [0, 1, 2, 3])
    assert metrics.value("convewma_requests_total", route="/smooth", status="504") == 1


async def test_full_queue_is_503_with_retry_after_and_accepted_work_completes():
    async with serving(max_queue=10) as (app, http):
        batcher = app.state.service.batcher
        blocked = BlockedForward(batcher._forward)
        batcher._forward = blocked
        first_series, queued_series = [[1.0] * 4], [[2.0] * 6]
        try:
            first = asyncio.create_task(post(http, {"series": first_series}))
            assert await asyncio.to_thread(blocked.entered.wait, 10)  # running, out of the queue
            queued = asyncio.create_task(post(http, {"series": queued_series}))
            await wait_until(lambda: batcher.queued_values == 6)
            refused = await post(http, {"series": [[3.0] * 5]})  # 6 + 5 > 10
        finally:
            blocked.release.set()
        accepted = [await first, await queued]
        after = await post(http, {"series": [[3.0] * 5]})
        metrics = await scrape(http)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    detail = refused.json()["detail"]
    assert detail.startswith("server busy")
    assert "6 values are queued" in detail
    for series, response in zip((first_series, queued_series), accepted, strict=True):
        assert response.status_code == 200
        assert_smoothed(series, response.json(), [0, 1, 2, 3])
    assert after.status_code == 200
    assert metrics.value("convewma_requests_total", route="/smooth", status="503") == 1
    assert metrics.value("convewma_requests_total", route="/smooth", status="200") == 3


SENTINEL = 123456.0


class FailsOnSentinel(torch.nn.Module):
    """The shipped model, except that a batch holding ``SENTINEL`` raises in its forward."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.warmup = inner.warmup
        self.kernel_size = inner.kernel_size
        self.normalize = inner.normalize

    def forward(self, x: torch.Tensor, warmup: str = "zeros", **options: object) -> torch.Tensor:
        if bool((x == SENTINEL).any()):
            raise RuntimeError("forward failed on purpose")
        result: torch.Tensor = self.inner(x, warmup, **options)
        return result


async def test_a_failing_forward_is_a_json_500_and_the_next_request_is_served():
    async with serving() as (app, http):
        service = app.state.service
        service.model = FailsOnSentinel(service.model)
        failed = await post(http, {"series": [[1.0, SENTINEL]]})
        series = [[1.0, 2.0, 3.0]]
        after = await post(http, {"series": series})
        metrics = await scrape(http)
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/json"
    assert failed.json() == {"detail": "internal error while smoothing this batch"}
    assert after.status_code == 200
    assert_smoothed(series, after.json(), [0, 1, 2, 3])
    assert metrics.value("convewma_batches_total", outcome="error") == 1
    assert metrics.value("convewma_batches_total", outcome="ok") == 1
    assert metrics.value("convewma_requests_total", route="/smooth", status="500") == 1
