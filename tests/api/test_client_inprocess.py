"""``AsyncConvEWMAClient`` against the real app and its lifespan in-process (httpx's ASGI
transport, so a mutation tool sees both sides): what each kind of input comes back as,
splitting under tight limits, streams with a stride and with times, the options it sends,
retries of 503 and the errors it raises; every value against the float64 reference."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from asgi_lifespan import LifespanManager

from app.client import AsyncConvEWMAClient, ConvEWMAError
from app.client.core import Retries, retry_delay
from app.main import create_app
from tests.api.test_contract import settings
from tests.api.test_real_world import SHIPPED, assert_close, expected, with_gaps
from tests.api.test_times import expected as expected_times

pytestmark = pytest.mark.anyio
CHANNELS = list(SHIPPED.channels)
ALL = list(range(len(CHANNELS)))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def client(**overrides: Any) -> AsyncIterator[tuple[Any, AsyncConvEWMAClient, list[httpx.Request]]]:
    """The app, a client of it, and every request the client sent."""
    app = create_app(settings(**overrides))
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        smoother = AsyncConvEWMAClient("http://test", transport=transport)
        smoother._http.event_hooks["request"].append(record)
        async with smoother:
            yield app, smoother, sent


def infers(sent: list[httpx.Request]) -> list[httpx.Request]:
    return [request for request in sent if request.url.path.endswith("/infer")]


@pytest.mark.parametrize("binary", [True, False])
async def test_kinds_come_back_as_they_went(binary) -> None:
    rng = np.random.default_rng(50)
    ragged = [with_gaps(rng, n) for n in (3, 40, 1)]
    frame = pd.DataFrame({CHANNELS[0]: with_gaps(rng, 12), CHANNELS[3]: with_gaps(rng, 12)})
    async with client() as (_, smoother, sent):
        smoother.binary = binary
        listed = await smoother.smooth(ragged, dtype="float64")
        single = await smoother.smooth(ragged[1], dtype="float64", channels=[2])
        paired = await smoother.smooth(frame, dtype="float64")
        banked = await smoother.smooth(frame, dtype="float64", pairing="bank", channels=[CHANNELS[1]])
    assert isinstance(listed, list)
    for row, got in zip(ragged, listed, strict=True):
        assert got.flags.writeable
        assert_close(got, expected(row, ALL), 1e-12)
    assert single.shape == (1, 40)
    assert_close(single, expected(ragged[1], [2]), 1e-12)
    assert list(paired.columns) == [CHANNELS[0], CHANNELS[3]]
    assert_close(paired[CHANNELS[3]].to_numpy(), expected(frame[CHANNELS[3]].to_numpy(), [3])[0], 1e-12)
    assert list(banked.columns) == [(CHANNELS[0], CHANNELS[1]), (CHANNELS[3], CHANNELS[1])]
    assert_close(banked.to_numpy()[:, 1], expected(frame[CHANNELS[3]].to_numpy(), [1])[0], 1e-12)
    # binary: the tensors after a header; JSON: one document with the data in it
    kinds = {request.headers.get("inference-header-content-length") is None for request in infers(sent)}
    assert kinds == {not binary}


async def test_the_options_travel_as_parameters() -> None:
    values = np.array([[1.0, np.nan, 3.0, 4.0, 5.0]])
    async with client() as (_, smoother, sent):
        got = await smoother.smooth(
            values,
            dtype="float64",
            warmup="zeros",
            gaps="skip",
            min_periods=2,
            stride=2,
            channels=[0, "unemp"],
        )
    body = infers(sent)[0].content
    header = body[: int(infers(sent)[0].headers["inference-header-content-length"])]
    for text in (
        b'"warmup":"zeros"',
        b'"gaps":"skip"',
        b'"min_periods":2',
        b'"stride":2',
        b'"channels":"0,unemp"',
    ):
        assert text in header
    options = {"warmup": "zeros", "gaps": "skip", "min_periods": 2, "stride": 2}
    assert_close(got[0], expected(values[0], [0, 3], **options), 1e-12)


@pytest.mark.parametrize(
    ("limits", "calls"),
    [
        ({"max_series": 2}, 3),  # 5 rows of 100: 3 groups
        ({"max_length": 40}, 3),  # windows of 40 with history (at most 35 values): 3 calls
        ({"max_body_bytes": 4096}, None),  # 3 KiB of tensors a body: 384 float64 values
    ],
)
async def test_the_limits_split_the_rows_and_the_answers_join(limits, calls) -> None:
    rng = np.random.default_rng(51)
    rows = [with_gaps(rng, 100) for _ in range(5)]
    async with client(**limits) as (_, smoother, sent):
        got = await smoother.smooth(rows, dtype="float64", stride=4)
    for row, block in zip(rows, got, strict=True):
        assert_close(block, expected(row, ALL, stride=4), 1e-12)
    if calls is not None:
        assert len(infers(sent)) == calls
    assert all(len(request.content) <= (limits.get("max_body_bytes") or 1 << 30) for request in infers(sent))


async def test_a_stream_with_a_stride_and_times_equals_one_call() -> None:
    rng = np.random.default_rng(52)
    values = with_gaps(rng, 100)
    seconds = 1.7e9 + np.cumsum(rng.exponential(1.0, 100) + 1e-3)
    index = pd.to_datetime(seconds, unit="s", utc=True)
    series = pd.Series(values, index=index, name="reading")
    async with client(max_length=40) as (_, smoother, _):
        stream = smoother.stream(dtype="float64", stride=3, max_gap=4.0)
        parts = [
            await stream.push(series.iloc[a:b], times="index")
            for a, b in ((0, 1), (1, 35), (35, 36), (36, 100))
        ]
    joined = pd.concat(parts)
    assert joined.index.equals(index[::3])
    assert list(joined.columns) == CHANNELS
    want = expected_times(values, index.as_unit("ns").asi8 / 1e9, ALL, stride=3, max_gap=4.0)
    assert_close(joined.to_numpy().T, want, 1e-12)


async def test_503_is_retried_after_its_retry_after_within_the_budget() -> None:
    values = np.arange(6.0)
    async with client() as (app, smoother, sent):
        await smoother.limits()
        app.state.drain.active = True
        asyncio.get_running_loop().call_later(0.3, setattr, app.state.drain, "active", False)
        started = time.monotonic()
        got = await smoother.smooth(values, dtype="float64")
        assert time.monotonic() - started >= 1.0  # its Retry-After: 1
        assert len(infers(sent)) == 2
        assert_close(got, expected(values, ALL), 1e-12)
        smoother.retry_budget_s = 0.5  # less than one Retry-After: no retry
        app.state.drain.active = True
        with pytest.raises(ConvEWMAError) as raised:
            await smoother.smooth(values)
        app.state.drain.active = False
    assert raised.value.status == 503
    assert raised.value.reason == "server busy: the server is shutting down; retry on another replica"
    assert len(infers(sent)) == 3


def test_retries_are_bounded_in_count_and_time() -> None:
    retries = Retries(limit=2, budget_s=1.5)
    assert retries.delay(200, "1") is None
    assert retries.delay(400, "1") is None
    assert retries.delay(503, "1") == 1.0
    assert retries.delay(503, "1") is None  # 2 s would pass the budget
    retries = Retries(limit=2, budget_s=10.0)
    assert [retries.delay(503, None), retries.delay(503, "x"), retries.delay(503, "1")] == [0.1, 0.2, None]
    assert retry_delay(" 3 ", 0) == 3.0


@pytest.mark.parametrize(
    ("data", "options", "error"),
    [
        (np.ones((2, 2, 2)), {}, "an array to smooth must be [T] or [N, T], got shape (2, 2, 2)"),
        ("abc", {}, "cannot smooth a str"),
        ([np.ones((2, 2))], {}, "each series must be 1-D, got shape (2, 2)"),
        (np.ones((2, 3)), {"pairing": "each"}, "pairing 'each' needs channels"),
        (np.ones(3), {"times": "index"}, "times='index': only 'index', for pandas data"),
        (np.ones((2, 3)), {"times": [[1.0, 2.0, 3.0]]}, "times has 1 rows for 2 series"),
        (np.ones((1, 3)), {"times": [1.0, 2.0]}, "times must have one time per value"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(data, options, error) -> None:
    async with client() as (_, smoother, sent):
        with pytest.raises((ValueError, TypeError)) as raised:
            await smoother.smooth(data, **options)
    assert error in str(raised.value)
    assert not infers(sent)


async def test_the_server_reason_is_the_error() -> None:
    async with client() as (_, smoother, _):
        with pytest.raises(ConvEWMAError) as raised:
            await smoother.smooth(np.ones(3), channels=["nope"])
        assert raised.value.status == 400
        assert raised.value.reason.startswith("channels[0] = 'nope' is not one of")
        assert str(raised.value) == f"400: {raised.value.reason}"
