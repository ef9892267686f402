"""Overload safety through the real app and lifespan: memory budget, concurrency,
body timeouts, one deadline, streamed results and input edge cases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.api.responses import STREAM_VALUES
from app.main import create_app
from app.serving.budget import parse_bytes
from tests.api.test_api import ALPHAS, SHIPPED, settings
from tests.reference import bank_reference, max_relative_error

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def started(**overrides: object) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings(**overrides))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield app, http


@pytest.fixture
async def served() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with started(max_inflight_bytes=20_000_000, max_body_bytes=4 << 20) as pair:
        yield pair


def assert_clean(app: FastAPI) -> None:
    """Everything a request took is given back once it is answered."""
    service = app.state.service
    assert service.budget.used == 0
    assert service.in_progress == 0


async def test_full_budget_answers_503_then_serves_again(served):
    app, http = served
    budget = app.state.service.budget
    assert budget.try_take(budget.capacity - 1000)  # as if other requests held it
    refused = await http.post("/smooth", content=orjson.dumps({"series": [[1.0] * 100]}), headers=JSON)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "memory budget" in refused.json()["detail"]
    budget.give_back(budget.capacity - 1000)
    assert (await http.post("/smooth", json={"series": [[1.0] * 100]})).status_code == 200
    assert_clean(app)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # Declared size alone (twice the body while it is joined) is over the budget.
        (b"[" * 11_000_000, "cannot fit in the server's memory budget"),
        # Small enough to read, but its values could need more than the whole budget.
        (b'{"series": [[' + b"0," * 420_000 + b"0]]}", "send it in smaller requests"),
    ],
    ids=["declared-size", "values-bound"],
)
async def test_a_request_that_could_never_fit_is_413(body, message):
    async with started(max_inflight_bytes=20_000_000, max_body_bytes=64 << 20, max_length=10**6) as (
        app,
        http,
    ):
        response = await http.post("/smooth", content=body, headers=JSON)
        assert response.status_code == 413
        assert message in response.json()["detail"]
        assert response.headers["connection"] == "close"
        assert_clean(app)


def test_step_two_covers_the_result():
    # Parsing reserves at least what the rest of the request's life needs.
    assert parse_bytes(0, 1000, 4) >= 1000 * 4 * (1 + 4 + 3)


async def test_concurrency_limit_is_a_fast_503():
    async with started(max_concurrency=1) as (app, http):
        ticket = app.state.service.admit()  # one request in progress
        refused = await http.post("/smooth", json={"series": [[1.0, 2.0]]})
        assert refused.status_code == 503
        assert "1 requests are in progress" in refused.json()["detail"]
        assert (await http.get("/healthz")).status_code == 200  # probes are never limited
        ticket.close()
        assert (await http.post("/smooth", json={"series": [[1.0, 2.0]]})).status_code == 200


async def trickle(pieces: int, pause_s: float) -> AsyncIterator[bytes]:
    yield b'{"series": [[1'
    for _ in range(pieces):
        await asyncio.sleep(pause_s)
        yield b",1"
    yield b"]]}"


@pytest.mark.parametrize(
    ("overrides", "pieces", "pause_s", "message"),
    [
        ({"body_timeout_s": 0.2}, 3, 0.6, "the request body stalled"),
        # Never a pause as long as the stall timeout, but the whole upload outlasts the deadline.
        (
            {"body_timeout_s": 5.0, "request_timeout_s": 0.5},
            20,
            0.1,
            "still arriving at the request deadline",
        ),
    ],
)
async def test_slow_uploads_get_408(overrides, pieces, pause_s, message):
    async with started(**overrides) as (app, http):
        loop = asyncio.get_running_loop()
        began = loop.time()
        response = await http.post("/smooth", content=trickle(pieces, pause_s), headers=JSON)
        assert response.status_code == 408
        assert message in response.json()["detail"]
        assert response.headers["connection"] == "close"
        assert loop.time() - began < pieces * pause_s  # refused before the upload ended
        assert_clean(app)


async def test_deadline_covers_queueing_and_drops_the_work():
    async with started(request_timeout_s=0.3) as (app, http):
        service = app.state.service
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        original = service.batcher._forward

        def blocked(x, warmup):
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
            return original(x, warmup)

        service.batcher._forward = blocked
        first = asyncio.create_task(http.post("/smooth", json={"series": [[1.0]]}))
        await asyncio.sleep(0.1)
        late = await http.post("/smooth", json={"series": [[2.0]]})
        assert late.status_code == 504  # queued behind the blocked batch past its deadline
        assert (await first).status_code == 504  # its batch is still running
        assert service.batcher.queued_values == 1  # the late piece, cancelled, still queued
        release.set()
        for _ in range(100):
            if service.batcher.in_flight == 0 and service.batcher.queued_values == 0:
                break
            await asyncio.sleep(0.02)
        assert service.batcher.batches_run == 1  # the running batch finished; the late one never ran
        assert service.batcher.queued_values == 0
        assert_clean(app)


async def test_large_results_are_streamed_and_exact(served):
    app, http = served
    rng = np.random.default_rng(5)
    series = [rng.normal(size=5000).astype(np.float32).tolist() for _ in range(8)]
    assert STREAM_VALUES < 8 * 5000 * 4
    async with http.stream("POST", "/smooth", content=orjson.dumps({"series": series}), headers=JSON) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers  # sent in chunks (ASGITransport joins them)
        chunks = [chunk async for chunk in r.aiter_raw()]
    data = orjson.loads(b"".join(chunks))
    expected = bank_reference(np.array(series, dtype=np.float64), ALPHAS, 32, SHIPPED.card.warmup)
    assert max_relative_error(np.array(data["smoothed"]), expected) <= 1e-5
    assert_clean(app)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"series": [[1, 1' + b"0" * 400 + b"]]}", 422, "series[0][1]"),
        (b'{"series": [[1, 1e999]]}', 422, "series[0][1]"),
        (b'{"series": [[1]], "warmup": "' + b"x" * 10_000_000 + b'"}', 422, "'warmup' must be one of"),
        (b'{"series": [[1]], "channels": [0, 0]}', 422, "channels[1] repeats"),
    ],
    ids=["integer-beyond-float64", "float-beyond-float64", "10MB-warmup", "repeated-channel"],
)
async def test_input_edge_cases_are_located_4xx_with_short_json(body, status, message):
    async with started(max_body_bytes=64 << 20) as (_, http):
        response = await http.post("/smooth", content=body, headers=JSON)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["detail"]
        assert message in detail
        assert len(detail) < 300  # an excerpt, never the input


async def test_the_float32_maximum_the_server_writes_is_accepted(served):
    _, http = served
    biggest = float(np.finfo(np.float32).max)
    response = await http.post(
        "/smooth", content=b'{"series": [[3.4028235e+38, -3.4028235e+38]]}', headers=JSON
    )
    assert response.status_code == 200, response.text
    expected = bank_reference(np.array([[biggest, -biggest]]), ALPHAS, 32, SHIPPED.card.warmup)[0]
    assert max_relative_error(np.array(response.json()["smoothed"][0]), expected) <= 1e-5
