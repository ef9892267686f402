from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import numpy as np
import orjson
import pytest
import torch
from asgi_lifespan import LifespanManager

from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import WeightsError, load_weights
from app.main import create_app
from app.serving.settings import Settings
from tests.reference import bank_reference, max_relative_error

SHIPPED = load_weights(DEFAULT_WEIGHTS)
ALPHAS = SHIPPED.model.alphas.detach().double().numpy()
CHANNELS = list(SHIPPED.card.channels)


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "device": "cpu",
        "max_series": 8,
        "max_length": 5000,
        "max_body_bytes": 200_000,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def post(client: httpx.AsyncClient, payload: object) -> httpx.Response:
    return await client.post(
        "/smooth", content=orjson.dumps(payload), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("warmup", [None, "zeros", "adjust"])
async def test_smooth_matches_reference(client, warmup):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=n).round(4).tolist() for n in (1, 31, 200)]
    body: dict[str, object] = {"series": series}
    if warmup:
        body["warmup"] = warmup
    response = await post(client, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["channels"] == CHANNELS
    assert data["model_version"] == f"sha256:{SHIPPED.sha256}"
    np.testing.assert_allclose(data["alphas"], ALPHAS, rtol=1e-6)
    for values, smoothed in zip(series, data["smoothed"], strict=True):
        expected = bank_reference(np.array([values]), ALPHAS, 32, warmup or SHIPPED.card.warmup)[0]
        assert np.array(smoothed).shape == (4, len(values))
        assert max_relative_error(np.array(smoothed), expected) <= 1e-5


async def test_channel_selection_by_name_and_index(client):
    response = await post(client, {"series": [[1, 2, 3]], "channels": ["unemp", 0]})
    assert response.status_code == 200
    data = response.json()
    assert data["channels"] == ["unemp", "infl"]
    expected = bank_reference(np.array([[1.0, 2, 3]]), ALPHAS[[3, 0]], 32, SHIPPED.card.warmup)[0]
    assert max_relative_error(np.array(data["smoothed"][0]), expected) <= 1e-5


async def test_alphas_route(client):
    data = (await client.get("/alphas")).json()
    assert data["channels"] == CHANNELS
    assert (data["kernel_size"], data["normalize"], data["warmup"]) == (32, True, SHIPPED.card.warmup)
    np.testing.assert_allclose(data["alphas"], ALPHAS, rtol=1e-6)


async def test_health_ready_metrics_docs(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    await post(client, {"series": [[1.0, 2.0]]})
    text = (await client.get("/metrics")).text
    for name in (
        'convewma_requests_total{method="POST",route="/smooth",status="200"}',
        "convewma_request_duration_seconds_bucket",
        "convewma_queue_wait_seconds_count",
        "convewma_batch_series_count",
        "convewma_batch_values_count",
        "convewma_batch_padding_fraction_count",
        "convewma_queue_depth",
        "convewma_batches_in_flight",
        "convewma_model_info{",
    ):
        assert name in text, name
    schema = (await client.get("/openapi.json")).json()
    assert "/smooth" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        (b'{"series": [[1, 2]', "application/json", 400, "malformed JSON"),
        (b'{"series": [[1, NaN]]}', "application/json", 422, "NaN is not allowed"),
        (b'{"series": []}', "application/json", 422, "'series' is empty"),
        (b'{"series": [[1], []]}', "application/json", 422, "series[1] is empty"),
        (b'{"series": [[1, "x"]]}', "application/json", 422, "series[0][1] must be a number"),
        (b'{"series": [[1]], "channels": ["nope"]}', "application/json", 422, "channels[0] = 'nope'"),
        (b'{"series": [[1]], "warmup": "ones"}', "application/json", 422, "'warmup' must be one of"),
        (b'{"series": [[1]]}', "text/plain", 415, "content-type must be application/json"),
        (orjson.dumps({"series": [[1]] * 9}), "application/json", 413, "9 series; the limit is 8"),
        (
            orjson.dumps({"series": [[1] * 5001]}),
            "application/json",
            413,
            "has 5001 values; the limit is 5000",
        ),
        (b" " * 200_001, "application/json", 413, "exceeds the limit of 200000 bytes"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(client, content, content_type, status, message):
    response = await client.post("/smooth", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert (await post(client, {"series": [[1.0]]})).status_code == 200  # still serving


async def test_chunked_body_over_the_limit_is_refused(client):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"series": [['
        for _ in range(60_000):
            yield b"1.0,"

    response = await client.post("/smooth", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


async def test_concurrent_requests_are_batched_and_exact():
    rng = np.random.default_rng(3)
    requests = [[rng.normal(size=int(rng.integers(1, 400))).tolist() for _ in range(2)] for _ in range(30)]
    app = create_app(settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/smooth", json={"series": r}) for r in requests))
            metrics = (await http.get("/metrics")).text
            alone = [await http.post("/smooth", json={"series": r}) for r in requests]
    for request, response, single in zip(requests, responses, alone, strict=True):
        assert response.status_code == 200
        batched = response.json()["smoothed"]
        for values, smoothed, by_itself in zip(request, batched, single.json()["smoothed"], strict=True):
            expected = bank_reference(np.array([values]), ALPHAS, 32, SHIPPED.card.warmup)[0]
            assert max_relative_error(np.array(smoothed), expected) <= 1e-5
            # A batch may take another kernel than a lone request: equal to float32 rounding.
            assert max_relative_error(np.array(smoothed), np.array(by_itself)) <= 1e-6
    batches = float(metrics.split('convewma_batches_total{outcome="ok"} ')[1].split()[0])
    assert batches < len(requests)  # fewer forwards than requests


async def test_not_ready_before_lifespan_and_bad_weights_stop_startup(tmp_path):
    app = create_app(settings())
    transport = httpx.ASGITransport(app=app)  # lifespan not run: no model yet
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert (await http.get("/readyz")).status_code == 503
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights at all")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        async with LifespanManager(create_app(settings(weights=bad))):
            pass


class _Overflowing(torch.nn.Module):
    """Stands in for a model whose float32 output overflows (possible near float32's limit)."""

    warmup = "zeros"
    kernel_size = 32
    normalize = True

    def forward(self, x: torch.Tensor, warmup: str = "zeros", **options: object) -> torch.Tensor:
        y = x.unsqueeze(1).repeat(1, 4, 1)
        y[x.abs().unsqueeze(1).expand_as(y) > 1e30] = float("inf")
        return y


async def test_non_finite_results_fail_only_that_request():
    app = create_app(settings())
    async with LifespanManager(app) as manager:
        app.state.service.model = _Overflowing()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            bad, good = await asyncio.gather(
                http.post("/smooth", json={"series": [[1.0, 2e38]]}),
                http.post("/smooth", json={"series": [[1.0, 2.0]]}),
            )
    assert bad.status_code == 422
    assert "series[0]: the smoothed values overflow float32" in bad.json()["detail"]
    assert good.status_code == 200


async def test_draining_refuses_new_work_and_closes_connections():
    app = create_app(settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await post(http, {"series": [[1.0, 2.0]]})).status_code == 200
            app.state.drain.begin()  # what DrainingServer does on SIGTERM
            refused = await post(http, {"series": [[1.0, 2.0]]})
            ready = await http.get("/readyz")
            alive = await http.get("/healthz")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.json() == {"detail": "server busy: the server is shutting down; retry on another replica"}
    assert ready.status_code == 503
    assert ready.json() == {"status": "draining"}
    assert alive.status_code == 200  # still live: the orchestrator must not kill it early
    assert alive.headers["connection"] == "close"


JSON_TYPE = {"content-type": "application/json"}
NOT_AN_INTEGER = "content-length must be a non-negative integer"


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({"content-type": "Application/JSON ; charset=utf-8"}, 200, None),  # case and parameters
        ({"content-type": "application/json;charset=utf-8"}, 200, None),
        ({}, 415, "content-type must be application/json, got none"),
        (
            {"content-type": "text/plain; charset=utf-8"},
            415,
            "content-type must be application/json, got text/plain",
        ),
        (
            {"content-type": "application/json x"},
            415,
            "content-type must be application/json, got application/json x",
        ),
        ({**JSON_TYPE, "content-length": "x17"}, 400, NOT_AN_INTEGER),
        ({**JSON_TYPE, "content-length": "-17"}, 400, NOT_AN_INTEGER),
        ({**JSON_TYPE, "content-length": "17"}, 200, None),  # the body's own length
    ],
)
async def test_media_type_and_declared_length_are_read_from_the_headers(client, headers, status, detail):
    body = b'{"series": [[1]]}'
    response = await client.post("/smooth", content=body, headers=headers)
    assert response.status_code == status
    if detail is None:
        plain = await client.post("/smooth", content=body, headers=JSON_TYPE)
        assert response.json() == plain.json()
    else:
        assert response.json()["detail"] == detail
