"""The probes and ``/metrics`` of app/api/routes.py, by value: the readiness bodies in each
state, the gauges a scrape reads from the live service, and HEAD as the app itself sends it
(before any client or server drops a body)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.core.paths import DEFAULT_WEIGHTS
from app.main import create_app
from tests.api.test_contract import Metrics, scrape, serving, settings
from tests.servers import http_scope

pytestmark = pytest.mark.anyio
BASE = "http://test"
# The shipped file's digest, from its bytes (not from the app's loader).
MODEL_VERSION = "sha256:" + hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def asgi(app: FastAPI, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight into the ASGI app: its status, headers and every body byte it
    sent. httpx's ASGITransport and uvicorn both drop a HEAD response's body; here nothing does."""
    scope = http_scope(method, path)
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.fixture
async def ready_app() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serving() as (app, http):
        yield app, http


# -- readiness ------------------------------------------------------------------------------------


async def test_readyz_names_the_loaded_model_once_ready(ready_app):
    _, http = ready_app
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "model_version": MODEL_VERSION}


async def test_readyz_before_the_model_is_loaded_is_503_not_ready():
    app = create_app(settings())  # lifespan not run: no service yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready"}


async def test_readyz_once_the_service_stops_is_503_not_ready(ready_app):
    app, http = ready_app
    app.state.service.ready = False  # as during the lifespan's shutdown (service.stop)
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready"}


async def test_readyz_while_draining_is_503_draining(ready_app):
    app, http = ready_app
    app.state.drain.begin()
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "draining"}


# -- HEAD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_sends_the_get_headers_and_no_body_bytes(ready_app, path):
    app, _ = ready_app
    status, headers, body = await asgi(app, "HEAD", path)
    get_status, get_headers, get_body = await asgi(app, "GET", path)
    assert status == get_status == 200
    assert body == b""
    assert headers[b"content-type"] == get_headers[b"content-type"]
    if path != "/metrics":  # a scrape counts the request before it: its length moves a little
        assert int(headers[b"content-length"]) == len(get_body) > 0


async def test_get_sends_its_body(ready_app):
    app, _ = ready_app
    status, headers, body = await asgi(app, "GET", "/healthz")
    assert (status, body) == (200, b'{"status":"ok"}')
    assert headers[b"content-length"] == b"15"


# -- metrics: the gauges are read from the service at each scrape --------------------------------


async def test_a_scrape_reads_requests_in_progress_and_reserved_memory(ready_app):
    app, http = ready_app
    service = app.state.service
    idle = await scrape(http)
    ticket = service.admit()  # one /smooth request admitted
    assert service.budget.try_take(4096)  # holding 4 KiB of the memory budget
    try:
        busy = await scrape(http)
    finally:
        service.budget.give_back(4096)
        ticket.close()
    after = await scrape(http)
    for name in ("convewma_requests_in_progress", "convewma_inflight_bytes"):
        assert idle.value(name) == after.value(name) == 0, name
    assert busy.value("convewma_requests_in_progress") == 1
    assert busy.value("convewma_inflight_bytes") == 4096


async def test_metrics_answer_before_the_model_is_loaded():
    app = create_app(settings())  # lifespan not run: no service, the gauges stay at 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"convewma_requests_in_progress", "convewma_queue_depth", "convewma_inflight_bytes"} <= names
    assert Metrics(response.text).value("convewma_requests_in_progress") == 0
