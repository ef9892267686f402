"""``app.client`` against real servers on 127.0.0.1 (``convewma serve``'s uvicorn configuration
in a thread), every answer checked against the float64 reference: pandas, NumPy and lists
in and the same kind out, inputs split under tight server limits and joined in order,
streams equal to one call, errors with the server's reason (in-process, with retries:
tests/api/test_client_inprocess.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.client import AsyncConvEWMAClient, ConvEWMAClient, ConvEWMAError
from tests.api.test_real_world import ALPHAS, SHIPPED, assert_close, expected, with_gaps
from tests.api.test_times import expected as expected_times
from tests.reference import REPO_ROOT
from tests.servers import thread_server

CHANNELS = list(SHIPPED.channels)
ALL = list(range(len(CHANNELS)))
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with thread_server() as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def tight() -> Iterator[str]:
    """Limits far below the inputs: 3 series, 40 values, 4 KiB bodies (after headers)."""
    with thread_server(max_series=3, max_length=40, max_body_bytes=5000) as (host, port):
        yield f"http://{host}:{port}"


def frame_with_gaps(columns: list[str], length: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2026-01-01", periods=length, freq="min", name="at")
    return pd.DataFrame({c: with_gaps(rng, length) for c in columns}, index=index)


@pytest.mark.parametrize("binary", [True, False])
def test_a_dataframe_named_like_the_channels_is_paired_by_name(server, binary) -> None:
    frame = frame_with_gaps(CHANNELS[::-1], 90, seed=30)
    with ConvEWMAClient(server, binary=binary) as client:
        smoothed = client.smooth(frame, dtype="float64")
    assert isinstance(smoothed, pd.DataFrame)
    assert smoothed.index.equals(frame.index)
    assert list(smoothed.columns) == list(frame.columns)
    for column in frame.columns:
        want = expected(frame[column].to_numpy(), [CHANNELS.index(column)])[0]
        assert_close(smoothed[column].to_numpy(), want, TOLERANCE["float64"])


def test_other_columns_get_a_bank_with_a_column_channel_multiindex(server) -> None:
    frame = frame_with_gaps(["cpu", "disk"], 70, seed=31)
    with ConvEWMAClient(server) as client:
        smoothed = client.smooth(frame, stride=4, gaps="skip")
    assert smoothed.columns.names == ["column", "channel"]
    assert list(smoothed.columns) == [(c, k) for c in ("cpu", "disk") for k in CHANNELS]
    assert smoothed.index.equals(frame.index[::4])
    for column in ("cpu", "disk"):
        want = expected(frame[column].to_numpy(), ALL, stride=4, gaps="skip")
        assert_close(smoothed[column].to_numpy().T.astype(np.float64), want, TOLERANCE["float32"])


def test_series_arrays_and_ragged_lists_come_back_in_their_kind(server) -> None:
    rng = np.random.default_rng(32)
    named = pd.Series(with_gaps(rng, 30), name=CHANNELS[2])
    unnamed = pd.Series(with_gaps(rng, 30))
    matrix = np.stack([with_gaps(rng, 25) for _ in range(3)])
    ragged = [with_gaps(rng, n) for n in (1, 60, 7)]
    with ConvEWMAClient(server) as client:
        one = client.smooth(named, dtype="float64")
        bank = client.smooth(unnamed, dtype="float64", channels=[CHANNELS[1], 3])
        stacked = client.smooth(matrix, dtype="float64")
        single = client.smooth(matrix[0], dtype="float64")
        listed = client.smooth(ragged, dtype="float64")
    assert isinstance(one, pd.Series)
    assert one.name == CHANNELS[2]
    assert_close(one.to_numpy(), expected(named.to_numpy(), [2])[0], 1e-12)
    assert list(bank.columns) == [CHANNELS[1], CHANNELS[3]]
    assert_close(bank.to_numpy().T, expected(unnamed.to_numpy(), [1, 3]), 1e-12)
    assert stacked.shape == (3, len(CHANNELS), 25)
    for row, got in zip(matrix, stacked, strict=True):
        assert_close(got, expected(row, ALL), 1e-12)
    np.testing.assert_array_equal(single, stacked[0])
    assert [block.shape for block in listed] == [(len(CHANNELS), n) for n in (1, 60, 7)]
    for row, got in zip(ragged, listed, strict=True):
        assert_close(got, expected(row, ALL), 1e-12)


@pytest.mark.parametrize("options", [{}, {"stride": 3}, {"gaps": "skip", "pairing": "each"}])
def test_inputs_over_the_limits_are_split_and_joined_in_order(tight, options) -> None:
    rng = np.random.default_rng(33)
    rows = [with_gaps(rng, n) for n in rng.integers(1, 400, 11)]
    if options.get("pairing") == "each":
        options = {**options, "channels": [CHANNELS[i % 4] for i in range(len(rows))]}
    with ConvEWMAClient(tight) as client:
        smoothed = client.smooth(rows, dtype="float64", **options)
    for index, (row, got) in enumerate(zip(rows, smoothed, strict=True)):
        channels = [index % 4] if "channels" in options else ALL
        reference = {key: value for key, value in options.items() if key in ("stride", "gaps")}
        assert_close(got, expected(row, channels, **reference), 1e-12)


def test_a_stream_equals_one_call_on_everything_pushed(tight) -> None:
    frame = frame_with_gaps(["a", "b"], 230, seed=34)
    times = frame.index.as_unit("ns").asi8 / 1e9 + np.random.default_rng(35).uniform(0, 30, 230)
    frame.index = pd.to_datetime(np.sort(times), unit="s", utc=True)
    with ConvEWMAClient(tight) as client:
        stream = client.stream(stride=3, dtype="float64", max_gap=200.0)
        parts = []
        start = 0
        for size in (1, 50, 2, 97, 80):
            parts.append(stream.push(frame.iloc[start : start + size], times="index"))
            start += size
    joined = pd.concat(parts)
    assert joined.index.equals(frame.index[::3])
    seconds = frame.index.as_unit("ns").asi8 / 1e9
    for column in ("a", "b"):
        want = expected_times(frame[column].to_numpy(), seconds, ALL, stride=3, max_gap=200.0)
        assert_close(joined[column].to_numpy().T, want, 1e-12)


def test_the_server_reason_reaches_the_caller(server) -> None:
    with ConvEWMAClient(server) as client:
        with pytest.raises(ConvEWMAError) as raised:
            client.smooth(np.ones((2, 5)), gaps="fill")  # type: ignore[arg-type]
        assert raised.value.status == 400
        assert "'gaps' must be one of ['decay', 'skip'], got 'fill'" in raised.value.reason
    with ConvEWMAClient("http://127.0.0.1:9") as nowhere, pytest.raises(ConvEWMAError) as refused:
        nowhere.smooth(np.ones(3))
    assert refused.value.status is None


def test_the_async_client_and_its_stream(server) -> None:
    rng = np.random.default_rng(36)
    values = np.stack([with_gaps(rng, 120) for _ in range(4)])

    async def run() -> tuple[list[np.ndarray], np.ndarray]:
        async with AsyncConvEWMAClient(server) as client:
            whole = await asyncio.gather(*(client.smooth(row, dtype="float64") for row in values))
            stream = client.stream(dtype="float64")
            parts = [await stream.push(values[:, a:b]) for a, b in ((0, 33), (33, 34), (34, 120))]
        return whole, np.concatenate(parts, axis=2)

    whole, streamed = asyncio.run(run())
    for row, one, got in zip(values, whole, streamed, strict=True):
        assert_close(one, expected(row, ALL), 1e-12)
        assert_close(got, expected(row, ALL), 1e-12)
    assert float(ALPHAS[0]) > 0


@contextmanager
def hanging_up() -> Iterator[str]:
    """A listener that reads each request and closes the connection without an answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_refused_or_dropped_connection_is_one_error_with_its_cause(kind: str) -> None:
    async def smooth(url: str) -> None:
        async with AsyncConvEWMAClient(url, timeout=10) as client:
            await client.smooth(np.ones(3))

    def call(url: str) -> None:
        if kind == "async":
            asyncio.run(smooth(url))
        else:
            with ConvEWMAClient(url, timeout=10) as client:
                client.smooth(np.ones(3))

    with pytest.raises(ConvEWMAError) as refused:
        call("http://127.0.0.1:9")
    assert refused.value.status is None
    assert "connect" in refused.value.reason.lower(), refused.value.reason
    with hanging_up() as url, pytest.raises(ConvEWMAError) as dropped:
        call(url)
    assert dropped.value.status is None
    reason = dropped.value.reason.lower()
    assert "disconnected" in reason, reason
    assert "timeout" not in reason, reason  # (it was not a time-out)


def test_the_readme_pandas_example_runs_as_printed(server) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("### The Python client") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    assert len(code.strip().splitlines()) <= 7  # the imports, the data and five lines at most
    scope: dict[str, Any] = {}
    exec(compile(code.replace("http://127.0.0.1:8000", server), "README.md", "exec"), scope)
    frame, smoothed = scope["frame"], scope["smoothed"]
    assert list(smoothed.columns) == ["infl", "unemp"]
    assert smoothed.index.equals(frame.index)
    for column in ("infl", "unemp"):
        want = expected(frame[column].to_numpy(), [CHANNELS.index(column)])[0]
        assert_close(smoothed[column].to_numpy().astype(np.float64), want, TOLERANCE["float32"])
