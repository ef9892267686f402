"""The asyncio client: ``await AsyncConvEWMAClient(base_url).smooth(data)``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.client.core import (
    INFER,
    MODEL,
    ConvEWMAError,
    Options,
    Plan,
    Retries,
    StreamState,
    answer_of,
    limits_of,
    prepare,
)
from app.client.plan import Answer, Limits, Smoothed
from app.client.sync import answer_json
from app.client.wire import InferCall


class AsyncConvEWMAClient:
    """``ConvEWMAClient`` for asyncio: the same arguments, ``smooth`` and ``stream().push`` awaited.

    Its connections are aiohttp's under httpx's API, made directly (no proxy from the
    environment); ``transport`` replaces them, as with ``httpx.AsyncClient``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        binary: bool = True,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_budget_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.binary, self.max_retries, self.retry_budget_s = binary, max_retries, retry_budget_s
        self._http = _http_client(base_url, timeout, transport)
        self._limits: Limits | None = None

    async def __aenter__(self) -> AsyncConvEWMAClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def limits(self) -> Limits:
        if self._limits is None:
            self._limits = limits_of(answer_json(await self._request("GET", MODEL)))
        return self._limits

    async def smooth(self, data: Any, *, times: Any = None, **options: Any) -> Any:
        prepared = prepare(data, Options(**options), await self.limits(), times=times, binary=self.binary)
        return prepared.finish(await self._drive(prepared.plan))

    def stream(self, **options: Any) -> AsyncStream:
        return AsyncStream(self, Options(**options))

    async def _drive(self, plan: Plan) -> Smoothed:
        answer: Answer | None = None
        while True:
            try:
                call = plan.send(answer) if answer is not None else next(plan)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            answer = await self._infer(call)

    async def _infer(self, call: InferCall) -> Answer:
        body, headers = call.body()
        retries = Retries(self.max_retries, self.retry_budget_s)
        while True:
            response = await self._request("POST", INFER, content=body, headers=headers)
            delay = retries.delay(response.status_code, response.headers.get("retry-after"))
            if delay is None:
                header_length = response.headers.get("inference-header-content-length")
                return answer_of(response.status_code, header_length, response.content)
            await asyncio.sleep(delay)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            # aiohttp's error, where it has one, names what happened (httpx-aiohttp maps a
            # dropped connection to ConnectTimeout).
            cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
            raise ConvEWMAError(None, f"{type(cause).__name__}: {cause}") from error


def _http_client(
    base_url: str, timeout: float, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """httpx's API over aiohttp's connections (unless a transport is given, as tests do).

    httpx's own pool looks at every connection on each request's events: at 32 calls at
    once (16 x 1024 values each) it cost the client 2.5 ms of CPU per call, a third more
    than the server's work, and the client reached 55% of raw requests' throughput; over
    aiohttp's pool and C parser, 1.0 ms and within noise of raw (benchmarks/README.md)."""
    if transport is None:
        transport = _aiohttp_transport()
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)


def _aiohttp_transport() -> httpx.AsyncBaseTransport:
    # (imports aiohttp, about 0.1 s: only when an asyncio client is made)
    from httpx_aiohttp.transport import AiohttpResponseStream, AiohttpTransport

    class Transport(AiohttpTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            if isinstance(response.stream, AiohttpResponseStream):
                # An answer in the pieces aiohttp received, not in 16 KiB slices of them:
                # a fifth less client CPU for a 3 MB answer.
                response.stream.CHUNK_SIZE = 1 << 22
            return response

    return Transport()


class AsyncStream:
    """``Stream`` for asyncio: ``await stream.push(chunk)``."""

    def __init__(self, client: AsyncConvEWMAClient, options: Options) -> None:
        self.client = client
        self.state = StreamState(options)

    async def push(self, chunk: Any, *, times: Any = None) -> Any:
        prepared = self.state.prepare(chunk, await self.client.limits(), times, self.client.binary)
        return self.state.advance(prepared, await self.client._drive(prepared.plan))
