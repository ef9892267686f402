"""The blocking client: ``ConvEWMAClient(base_url).smooth(data)``."""

from __future__ import annotations

import time
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
from app.client.wire import InferCall


class ConvEWMAClient:
    """Smooths pandas, NumPy or lists of arrays through a convewma server's binary infer route.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000``.
        binary: binary tensors (the default) or JSON ``data``.
        timeout: seconds per HTTP request.
        max_retries, retry_budget_s: a 503 is retried up to ``max_retries`` times, waiting
            its ``Retry-After``, while the waits add up to at most ``retry_budget_s``.

    Example:
        >>> with ConvEWMAClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
        ...     smoothed = client.smooth(frame)  # same index; (column, channel) columns for a bank
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        binary: bool = True,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_budget_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.binary, self.max_retries, self.retry_budget_s = binary, max_retries, retry_budget_s
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self._limits: Limits | None = None

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def __enter__(self) -> ConvEWMAClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def limits(self) -> Limits:
        """The server's limits and channels (read once, from its model metadata)."""
        if self._limits is None:
            response = self._request("GET", MODEL)
            self._limits = limits_of(answer_json(response))
        return self._limits

    def smooth(self, data: Any, *, times: Any = None, **options: Any) -> Any:
        """``data`` smoothed, in its own kind; ``options`` as ``Options`` names them."""
        prepared = prepare(data, Options(**options), self.limits(), times=times, binary=self.binary)
        return prepared.finish(self._drive(prepared.plan))

    def stream(self, **options: Any) -> Stream:
        """A stream: each ``push(chunk)`` answers that chunk as if all pushed so far went in one call."""
        return Stream(self, Options(**options))

    def _drive(self, plan: Plan) -> Smoothed:
        answer: Answer | None = None
        while True:
            try:
                call = plan.send(answer) if answer is not None else next(plan)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            answer = self._infer(call)

    def _infer(self, call: InferCall) -> Answer:
        body, headers = call.body()
        retries = Retries(self.max_retries, self.retry_budget_s)
        while True:
            response = self._request("POST", INFER, content=body, headers=headers)
            delay = retries.delay(response.status_code, response.headers.get("retry-after"))
            if delay is None:
                header_length = response.headers.get("inference-header-content-length")
                return answer_of(response.status_code, header_length, response.content)
            time.sleep(delay)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ConvEWMAError(None, f"{type(error).__name__}: {error}") from error


def answer_json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        answer_of(response.status_code, None, response.content)  # raises with the reason
    document: dict[str, Any] = response.json()
    return document


class Stream:
    """Chunks of the same series, one after another; see ``ConvEWMAClient.stream``."""

    def __init__(self, client: ConvEWMAClient, options: Options) -> None:
        self.client = client
        self.state = StreamState(options)

    def push(self, chunk: Any, *, times: Any = None) -> Any:
        prepared = self.state.prepare(chunk, self.client.limits(), times, self.client.binary)
        return self.state.advance(prepared, self.client._drive(prepared.plan))
