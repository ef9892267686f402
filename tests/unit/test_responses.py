"""Responses on their own: a small result sent whole, a large one streamed in chunks, and a
streamed one abandoned when the client goes away or the deadline passes (ticket closed
every time). A real service (the shipped model on the CPU) runs the codec thread."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from asgi_lifespan import LifespanManager

import app.api.responses as responses
from app.api.responses import STREAM_VALUES, ChunkedResponse, json_response, smooth_response
from app.main import create_app
from app.serving.intake import Deadline
from app.serving.results import SmoothResult
from app.serving.service import SmoothingService
from app.serving.settings import Settings

pytestmark = pytest.mark.anyio
JSON = "application/json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def service() -> AsyncIterator[SmoothingService]:
    app = create_app(Settings(device="cpu"))  # type: ignore[call-arg]
    async with LifespanManager(app):
        yield app.state.service


def result(values: int) -> SmoothResult:
    """A result that claims ``values`` outputs; its arrays are small (only the count decides)."""
    smoothed = [np.array([[0.5, np.nan, -2.25], [1e-45, 3.0, 7.0]], np.float32)]
    return SmoothResult(smoothed, ["a", "b"], [0.5, 0.25], "sha256:x", values, [np.array([1.5], np.float32)])


EXPECTED = (
    b'{"smoothed":[[[0.5,null,-2.25],[1e-45,3.0,7.0]]],"channels":["a","b"],"alphas":[0.5,0.25],'
    b'"model_version":"sha256:x","history":[[1.5]]}'
)


def headers(messages: list[dict[str, Any]]) -> dict[bytes, bytes]:
    return dict(messages[0]["headers"])


async def never() -> dict[str, Any]:
    await asyncio.Event().wait()  # the client stays
    raise AssertionError


def test_json_response_encodes_numpy_values_with_the_status() -> None:
    response = json_response({"a": np.array([1.5, -2.0], np.float32), "b": np.float64(0.25)}, status=418)
    assert (response.status_code, response.body) == (418, b'{"a":[1.5,-2.0],"b":0.25}')
    assert response.headers["content-type"] == JSON


async def test_a_result_at_the_limit_is_sent_whole(service: SmoothingService, monkeypatch) -> None:
    monkeypatch.setattr(responses, "ENCODE_CHUNK_BYTES", 8)  # many chunks, joined without a separator
    ticket = service.admit()
    response = smooth_response(result(STREAM_VALUES), service, ticket, Deadline(10.0))
    assert not isinstance(response, ChunkedResponse)
    assert response.body == EXPECTED
    assert response.headers["content-type"] == JSON
    assert response.headers["content-length"] == str(len(EXPECTED))
    assert service.in_progress == 0  # the ticket is closed at once


async def stream(response: ChunkedResponse, receive: Any = never) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(response({"type": "http"}, receive, send), 10)
    return sent


async def test_a_result_past_the_limit_is_streamed_in_chunks(service: SmoothingService, monkeypatch) -> None:
    monkeypatch.setattr(responses, "ENCODE_CHUNK_BYTES", 8)
    ticket = service.admit()
    response = smooth_response(result(STREAM_VALUES + 1), service, ticket, Deadline(10.0))
    assert isinstance(response, ChunkedResponse)
    assert service.in_progress == 1  # open until the last chunk is sent
    sent = await stream(response)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
    assert headers(sent) == {b"content-type": JSON.encode()}  # no content-length: chunked
    bodies = sent[1:]
    assert len(bodies) > 2
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    assert bodies[-1]["body"] == b""
    assert b"".join(m["body"] for m in bodies) == EXPECTED
    assert service.in_progress == 0


async def test_a_stream_stops_when_the_client_disconnects(service: SmoothingService, caplog) -> None:
    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    ticket = service.admit()
    response = smooth_response(result(STREAM_VALUES + 1), service, ticket, Deadline(10.0))
    with caplog.at_level(logging.INFO, logger="convewma"):
        sent = await stream(response, gone)
    assert sent[0]["type"] == "http.response.start"
    assert all(m["more_body"] for m in sent[1:])  # never completed
    assert [r.getMessage() for r in caplog.records] == [
        "client disconnected while its response was being sent"
    ]
    assert service.in_progress == 0


async def test_a_stream_is_abandoned_when_a_chunk_cannot_be_sent_in_time(
    service: SmoothingService, caplog
) -> None:
    stuck: list[dict[str, Any]] = []

    async def slow_client(message: dict[str, Any]) -> None:
        stuck.append(message)
        if message["type"] == "http.response.body":
            await asyncio.sleep(30)  # a client that reads nothing

    ticket = service.admit()
    response = smooth_response(result(STREAM_VALUES + 1), service, ticket, Deadline(0.3))
    with caplog.at_level(logging.INFO, logger="convewma"):
        await asyncio.wait_for(response({"type": "http"}, never, slow_client), 5)
    assert [m["type"] for m in stuck] == ["http.response.start", "http.response.body"]
    assert [r.getMessage() for r in caplog.records] == [
        "response abandoned: the request deadline passed while it was being sent"
    ]
    assert service.in_progress == 0
