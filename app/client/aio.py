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
    """``ConvEWMAClient`` for asyncio: the same arguments, ``smooth`` and ``stream().push`` awaited."""

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
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
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
            raise ConvEWMAError(None, f"{type(error).__name__}: {error}") from error


class AsyncStream:
    """``Stream`` for asyncio: ``await stream.push(chunk)``."""

    def __init__(self, client: AsyncConvEWMAClient, options: Options) -> None:
        self.client = client
        self.state = StreamState(options)

    async def push(self, chunk: Any, *, times: Any = None) -> Any:
        prepared = self.state.prepare(chunk, await self.client.limits(), times, self.client.binary)
        return self.state.advance(prepared, await self.client._drive(prepared.plan))
