from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from app.core.ewma import ConvEWMA
from app.serving import batcher as batcher_module
from app.serving.batcher import (
    BatcherClosedError,
    BatchFailedError,
    BatchLimits,
    BatchStats,
    MicroBatcher,
    QueueFullError,
    split_request,
)
from app.serving.options import SmoothOptions

LAYER = ConvEWMA(2, 8, alpha=[0.2, 0.7]).eval()


def model_forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
    return LAYER(x, warmup=warmup)


def one_at_a_time(series: np.ndarray, warmup: str = "zeros") -> np.ndarray:
    with torch.inference_mode():
        return LAYER(torch.from_numpy(series)[None], warmup=warmup)[0].numpy()


def ragged(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    return [rng.normal(size=int(rng.integers(1, 300))).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize(
    ("lengths", "limits", "expected"),
    [
        ([5, 5, 5], BatchLimits(max_batch_size=2), [2, 1]),
        ([5, 5, 5], BatchLimits(max_batch_values=10), [2, 1]),
        ([5, 50, 5], BatchLimits(max_batch_values=20), [1, 1, 1]),
        ([3], BatchLimits(max_batch_size=1), [1]),
    ],
)
def test_split_request(lengths, limits, expected):
    pieces = split_request([np.zeros(n, np.float32) for n in lengths], limits)
    assert [len(p) for p in pieces] == expected
    assert [len(s) for p in pieces for s in p] == lengths  # order kept


def run(coro):
    return asyncio.run(coro)


def test_concurrent_ragged_requests_match_one_at_a_time_with_fewer_forwards():
    rng = np.random.default_rng(0)
    requests = [ragged(rng, int(rng.integers(1, 4))) for _ in range(40)]
    stats: list[BatchStats] = []

    async def scenario():
        batcher = MicroBatcher(model_forward, BatchLimits(max_batch_size=64), on_batch=stats.append)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(r, "zeros") for r in requests))
        await batcher.stop()
        return results, batcher.batches_run

    results, forwards = run(scenario())
    assert forwards < len(requests)
    for request, result in zip(requests, results, strict=True):
        assert len(result) == len(request)
        for series, smoothed in zip(request, result, strict=True):
            assert smoothed.shape == (2, len(series))
            np.testing.assert_allclose(smoothed, one_at_a_time(series), rtol=1e-6, atol=1e-6)
    assert sum(s.series for s in stats) == sum(len(r) for r in requests)
    assert all(s.padded_values >= s.values for s in stats)


def test_warmup_modes_are_not_mixed_in_a_batch():
    rng = np.random.default_rng(1)
    series = ragged(rng, 1)

    async def scenario():
        batcher = MicroBatcher(model_forward, BatchLimits())
        await batcher.start()
        zeros, adjust = await asyncio.gather(
            batcher.submit(series, "zeros"), batcher.submit(series, "adjust")
        )
        await batcher.stop()
        return zeros, adjust

    zeros, adjust = run(scenario())
    np.testing.assert_allclose(zeros[0], one_at_a_time(series[0], "zeros"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(adjust[0], one_at_a_time(series[0], "adjust"), rtol=1e-6, atol=1e-6)


KEYS = [
    SmoothOptions("zeros"),
    SmoothOptions("adjust"),
    SmoothOptions("zeros", gaps="skip"),
    SmoothOptions("zeros", min_periods=3),
    SmoothOptions("zeros", dtype="float64"),
    SmoothOptions("adjust", dtype="float64", stride=3),
    SmoothOptions("zeros", stride=4),
]


def options_forward(x: torch.Tensor, key: SmoothOptions) -> torch.Tensor:
    return LAYER(x, key.warmup, gaps=key.gaps, min_periods=key.min_periods, stride=key.stride)


def test_batches_never_mix_keys_and_keep_each_keys_dtype_and_output_length():
    rng = np.random.default_rng(4)
    gate = threading.Event()
    batches: list[tuple[SmoothOptions, torch.dtype, list[int]]] = []

    def forward(x: torch.Tensor, key: SmoothOptions) -> torch.Tensor:
        gate.wait(5)
        batches.append((key, x.dtype, [int(v) for v in x[:, 0].tolist()]))  # each row's tag
        return options_forward(x, key)

    requests = []
    for repeat in range(3):
        for tag, key in enumerate(KEYS):
            values = rng.normal(size=int(rng.integers(2, 60))).astype(key.numpy_dtype)
            values[0] = tag  # which key the row belongs to
            values[1 + repeat] = np.nan  # a missing value
            requests.append(([values], key))

    async def scenario():
        batcher = MicroBatcher(forward, BatchLimits(), output_length=SmoothOptions.output_length)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(series, key)) for series, key in requests]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*tasks)
        await batcher.stop()
        return results

    results = run(scenario())
    assert len(batches) < len(requests)  # equal keys did share forwards
    for key, dtype, tags in batches:
        assert {KEYS[tag] for tag in tags} == {key}  # one key per forward
        assert dtype == (torch.float64 if key.dtype == "float64" else torch.float32)
    for (series, key), result in zip(requests, results, strict=True):
        with torch.inference_mode():
            alone = options_forward(torch.from_numpy(series[0])[None], key)[0].numpy()
        assert result[0].dtype == np.dtype(key.dtype)
        assert result[0].shape == (2, -(-len(series[0]) // key.stride))
        np.testing.assert_array_equal(np.isnan(result[0]), np.isnan(alone))
        tolerance = 1e-12 if key.dtype == "float64" else 1e-6
        np.testing.assert_allclose(result[0], alone, rtol=tolerance, atol=tolerance)


def test_oversized_request_is_split_and_reassembled_in_order():
    rng = np.random.default_rng(2)
    request = ragged(rng, 25)

    async def scenario():
        batcher = MicroBatcher(model_forward, BatchLimits(max_batch_size=4))
        await batcher.start()
        result = await batcher.submit(request, "zeros")
        await batcher.stop()
        return result, batcher.batches_run

    result, forwards = run(scenario())
    assert forwards >= 7
    for series, smoothed in zip(request, result, strict=True):
        np.testing.assert_allclose(smoothed, one_at_a_time(series), rtol=1e-6, atol=1e-6)


def test_a_poisoned_batch_fails_only_its_own_requests():
    gate = threading.Event()
    calls: list[int] = []

    def forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
        calls.append(x.shape[0])
        if len(calls) == 1:
            gate.wait(5)  # hold the first batch so the others queue behind it
            return model_forward(x, warmup)
        if (x == 13.0).any():
            raise RuntimeError("poisoned")
        return model_forward(x, warmup)

    async def scenario():
        batcher = MicroBatcher(forward, BatchLimits(max_batch_size=2))
        await batcher.start()
        first = asyncio.create_task(batcher.submit([np.ones(5, np.float32)], "zeros"))
        await asyncio.sleep(0.05)
        poisoned = asyncio.create_task(batcher.submit([np.full(5, 13.0, np.float32)], "zeros"))
        neighbour = asyncio.create_task(batcher.submit([np.ones(5, np.float32)], "zeros"))
        later = asyncio.create_task(batcher.submit([np.ones(5, np.float32)] * 2, "zeros"))
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, poisoned, neighbour, later, return_exceptions=True)
        await batcher.stop()
        return results

    first, poisoned, neighbour, later = run(scenario())
    assert isinstance(poisoned, BatchFailedError)
    assert str(poisoned) == "batch failed: RuntimeError('poisoned')"
    assert repr(poisoned.__cause__) == "RuntimeError('poisoned')"  # the forward's own error
    assert neighbour is poisoned  # one error for the batch
    assert isinstance(neighbour, BatchFailedError)  # shared the poisoned batch
    assert not isinstance(first, BaseException)
    assert not isinstance(later, BaseException)  # the batcher kept running
    assert len(later) == 2


def test_output_count_mismatch_fails_the_batch():
    async def scenario():
        batcher = MicroBatcher(lambda x, w: LAYER(x[:1], warmup=w), BatchLimits())
        await batcher.start()
        with pytest.raises(BatchFailedError, match=r"^forward returned 1 rows for 2 series$"):
            await batcher.submit([np.ones(3, np.float32)] * 2, "zeros")
        await batcher.stop()

    run(scenario())


def test_queue_limit_refuses_new_work():
    gate = threading.Event()

    def slow(x: torch.Tensor, warmup: str) -> torch.Tensor:
        gate.wait(5)
        return model_forward(x, warmup)

    async def scenario():
        batcher = MicroBatcher(slow, BatchLimits(max_queue_values=10))
        await batcher.start()
        running = asyncio.create_task(batcher.submit([np.ones(4, np.float32)], "zeros"))
        await asyncio.sleep(0.05)  # now in the forward, no longer queued
        assert batcher.queued_values == 0
        queued = [asyncio.create_task(batcher.submit([np.ones(4, np.float32)], "zeros")) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert (batcher.queued_values, batcher.queued_pieces) == (8, 2)
        with pytest.raises(QueueFullError, match=r"^8 values are queued; 3 more would exceed 10$"):
            await batcher.submit([np.ones(3, np.float32)], "zeros")
        # Up to the limit itself is accepted.
        last = asyncio.create_task(batcher.submit([np.ones(2, np.float32)], "zeros"))
        await asyncio.sleep(0.01)
        assert batcher.queued_values == 10
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(running, *queued, last), 10)
        await batcher.stop()
        assert batcher.queued_values == 0
        return results

    results = run(scenario())
    assert [result[0].shape for result in results] == [(2, 4), (2, 4), (2, 4), (2, 2)]


def test_cancelled_requests_are_dropped_before_they_start():
    gate = threading.Event()
    seen: list[int] = []

    def forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
        seen.append(x.shape[1])
        gate.wait(5)
        return model_forward(x, warmup)

    async def scenario():
        batcher = MicroBatcher(forward, BatchLimits())
        await batcher.start()
        running = asyncio.create_task(batcher.submit([np.ones(4, np.float32)], "zeros"))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit([np.ones(99, np.float32)], "zeros"), 0.05)
        assert (batcher.queued_values, batcher.queued_pieces) == (99, 1)  # until the loop looks
        gate.set()
        await running
        for _ in range(1000):  # bounded: the loop drops it once the forward has returned
            if batcher.queued_pieces == 0:
                break
            await asyncio.sleep(0.001)
        assert (batcher.queued_values, batcher.queued_pieces) == (0, 0)
        await batcher.stop()

    run(scenario())
    assert seen == [4]  # the timed-out request never reached the model


def test_stop_drains_accepted_work_then_refuses_new():
    async def scenario():
        batcher = MicroBatcher(model_forward, BatchLimits(max_batch_size=1))
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit([np.ones(10, np.float32)], "zeros")) for _ in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        results = await asyncio.gather(*tasks)
        with pytest.raises(BatcherClosedError, match=r"^the server is shutting down$"):
            await batcher.submit([np.ones(3, np.float32)], "zeros")
        return results

    assert len(run(scenario())) == 5


def test_max_wait_collects_a_fuller_batch():
    sizes: list[int] = []

    async def scenario():
        batcher = MicroBatcher(
            model_forward, BatchLimits(max_wait_s=0.2), on_batch=lambda s: sizes.append(s.series)
        )
        await batcher.start()
        first = asyncio.create_task(batcher.submit([np.ones(3, np.float32)], "zeros"))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit([np.ones(3, np.float32)], "zeros"))
        await asyncio.gather(first, second)
        await batcher.stop()

    run(scenario())
    assert sizes == [2]


@pytest.mark.parametrize(
    ("limits", "lengths"),
    [
        (BatchLimits(max_wait_s=5.0, max_batch_size=2), [3, 3]),  # as many series as a batch takes
        (BatchLimits(max_wait_s=5.0, max_batch_values=6), [6]),  # as many values as a batch takes
    ],
    ids=["series", "values"],
)
def test_a_full_batch_runs_without_waiting_for_more(limits, lengths):
    sizes: list[int] = []

    async def scenario():
        batcher = MicroBatcher(model_forward, limits, on_batch=lambda s: sizes.append(s.series))
        await batcher.start()
        # Well under max_wait_s: the wait is for a fuller batch, and this one cannot grow.
        result = await asyncio.wait_for(
            batcher.submit([np.ones(n, np.float32) for n in lengths], "zeros"), 2.0
        )
        await batcher.stop()
        return result

    assert [r.shape for r in run(scenario())] == [(2, n) for n in lengths]
    assert sizes == [len(lengths)]


@pytest.mark.parametrize(
    ("max_padding_fraction", "expected_shapes"),
    [
        (0.25, [(1, 4), (2, 1000), (2, 12), (1, 1000)]),  # grouped by length
        (1.0, [(1, 4), (4, 1000), (1, 1000)]),  # padding allowed: FIFO fill
    ],
)
def test_batches_group_by_length_to_limit_padding(monkeypatch, max_padding_fraction, expected_shapes):
    monkeypatch.setattr(batcher_module, "PADDING_SLACK_VALUES", 0)
    gate = threading.Event()
    shapes: list[tuple[int, int]] = []
    padding: list[float] = []

    def forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
        shapes.append((x.shape[0], x.shape[1]))
        gate.wait(5)
        return model_forward(x, warmup)

    rng = np.random.default_rng(5)
    lengths_modes = [(1000, "zeros"), (10, "zeros"), (990, "zeros"), (12, "zeros"), (1000, "adjust")]
    requests = [([rng.normal(size=n).astype(np.float32)], mode) for n, mode in lengths_modes]

    async def scenario():
        batcher = MicroBatcher(
            forward,
            BatchLimits(max_padding_fraction=max_padding_fraction),
            on_batch=lambda s: padding.append(1 - s.values / s.padded_values),
        )
        await batcher.start()
        blocker = asyncio.create_task(batcher.submit([np.ones(4, np.float32)], "zeros"))
        await asyncio.sleep(0.05)  # the blocker is in the forward; the rest queue behind it
        tasks = [asyncio.create_task(batcher.submit(series, mode)) for series, mode in requests]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
        await batcher.stop()
        return results

    results = run(scenario())
    assert shapes == expected_shapes
    if max_padding_fraction < 1.0:
        assert max(padding) <= max_padding_fraction
    for (series, mode), result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result[0], one_at_a_time(series[0], mode), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, r"^batch and queue limits must be >= 1: BatchLimits\(max_batch_size=0,"),
        ({"max_batch_values": 0}, r"^batch and queue limits must be >= 1: "),
        ({"max_queue_values": 0}, r"^batch and queue limits must be >= 1: "),
        ({"max_wait_s": -0.001}, r"^max_wait_s must be >= 0, got -0.001$"),
        ({"max_padding_fraction": 1.5}, r"^max_padding_fraction must be in \[0, 1\], got 1.5$"),
        ({"max_padding_fraction": -0.1}, r"^max_padding_fraction must be in \[0, 1\], got -0.1$"),
    ],
)
def test_limits_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchLimits(**kwargs)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_the_smallest_limits_are_valid(fraction):
    limits = BatchLimits(1, 1, 0.0, 1, fraction)
    assert (limits.max_batch_size, limits.max_batch_values, limits.max_queue_values) == (1, 1, 1)


def test_batch_stats_describe_each_forward():
    gate = threading.Event()
    stats: list[BatchStats] = []
    in_flight: list[int] = []

    def forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
        gate.wait(5)
        if x.shape[0] == 1:
            raise RuntimeError("boom")
        return model_forward(x, warmup)

    async def scenario():
        batcher = MicroBatcher(forward, BatchLimits(), on_batch=stats.append)
        await batcher.start()
        failing = asyncio.create_task(batcher.submit([np.ones(4, np.float32)], "zeros"))
        await asyncio.sleep(0.05)
        in_flight.append(batcher.in_flight)
        ragged = asyncio.create_task(
            batcher.submit([np.ones(3, np.float32), np.ones(5, np.float32)], "zeros")
        )
        await asyncio.sleep(0.2)  # the second request waits this long behind the first
        gate.set()
        with pytest.raises(BatchFailedError, match=r"^batch failed: RuntimeError\('boom'\)$"):
            await failing
        await asyncio.wait_for(ragged, 10)
        in_flight.append(batcher.in_flight)
        await batcher.stop()
        return batcher.batches_run

    assert run(scenario()) == 2
    assert in_flight == [1, 0]
    first, second = stats
    assert (first.series, first.values, first.padded_values, first.failed) == (1, 4, 4, True)
    assert (second.series, second.values, second.padded_values, second.failed) == (2, 8, 10, False)
    assert 0.2 - 0.01 <= first.forward_s < 5.0  # held at the gate, and a duration
    assert 0.2 - 0.01 <= second.queue_wait_s < 5.0
    assert first.queue_wait_s < 0.05


def owner_bytes(array: np.ndarray) -> int:
    """The size of the memory an answer keeps alive: its own, or that of the array it views."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array.nbytes


@pytest.mark.parametrize("requests", [[[6], [6]], [[3, 6]]], ids=["two-requests", "padded"])
def test_rows_of_a_shared_or_padded_batch_are_copied_out(requests):
    # The docstring of _run_forward: a view would keep the whole batch alive, beyond the budget.
    async def scenario():
        batcher = MicroBatcher(model_forward, BatchLimits(max_wait_s=1.0, max_batch_size=2))
        await batcher.start()
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit([np.ones(n, np.float32) for n in r], "zeros") for r in requests)),
            10,
        )
        await batcher.stop()
        assert batcher.batches_run == 1
        return [row for result in results for row in result]

    for row in run(scenario()):
        assert owner_bytes(row) == row.nbytes


def test_a_lone_unpadded_request_gets_the_batch_output_itself():
    async def scenario():
        batcher = MicroBatcher(model_forward, BatchLimits())
        await batcher.start()
        result = await batcher.submit([np.ones(5, np.float32), np.full(5, 2.0, np.float32)], "zeros")
        await batcher.stop()
        return result

    first, second = run(scenario())
    # No padding and no other request: its rows are views of one (2, C, 5) output, no copy.
    assert owner_bytes(first) == owner_bytes(second) == 2 * first.nbytes
    np.testing.assert_allclose(second, 2 * first, rtol=1e-6)


def test_the_loop_and_the_forward_thread_carry_their_names():
    # What a thread dump or py-spy shows of the service.
    threads: list[str] = []

    def forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return model_forward(x, warmup)

    async def scenario() -> list[str]:
        batcher = MicroBatcher(forward, BatchLimits())
        await batcher.start()
        names = [task.get_name() for task in asyncio.all_tasks()]
        await batcher.submit([np.ones(3, np.float32)], "zeros")
        await batcher.stop()
        return names

    assert "convewma-batcher" in run(scenario())
    assert len(threads) == 1
    assert threads[0].startswith("convewma-forward_")


@pytest.mark.parametrize(
    ("limits", "lengths", "expected_shapes"),
    [
        # Two rows of 8 fill max_batch_values exactly: one batch.
        (BatchLimits(max_batch_values=16), [8, 8], [(2, 8)]),
        # Padding of exactly the allowed fraction (4 of 16 values): still one batch.
        (BatchLimits(max_padding_fraction=0.25), [8, 4], [(2, 8)]),
        # Room for one more series: the nearest length joins, not the oldest.
        (BatchLimits(max_batch_size=2, max_padding_fraction=1.0), [1000, 10, 990], [(2, 1000), (1, 10)]),
    ],
    ids=["values exactly full", "padding exactly at the fraction", "nearest length first"],
)
def test_batches_are_formed_up_to_each_limit_inclusive(monkeypatch, limits, lengths, expected_shapes):
    monkeypatch.setattr(batcher_module, "PADDING_SLACK_VALUES", 0)  # the fraction alone decides
    gate = threading.Event()
    shapes: list[tuple[int, int]] = []

    def forward(x: torch.Tensor, warmup: str) -> torch.Tensor:
        shapes.append((x.shape[0], x.shape[1]))
        gate.wait(5)
        return model_forward(x, warmup)

    async def scenario() -> None:
        batcher = MicroBatcher(forward, limits)
        await batcher.start()
        blocker = asyncio.create_task(batcher.submit([np.ones(1, np.float32)], "zeros"))
        await asyncio.sleep(0.05)  # in the forward: the rest queue behind it, oldest first
        tasks = []
        for n in lengths:
            tasks.append(asyncio.create_task(batcher.submit([np.ones(n, np.float32)], "zeros")))
            await asyncio.sleep(0.01)
        gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *tasks), 10)
        await batcher.stop()

    run(scenario())
    assert shapes == [(1, 1), *expected_shapes]


def test_stopping_twice_is_harmless():
    async def scenario() -> None:
        batcher = MicroBatcher(model_forward, BatchLimits())
        await batcher.start()
        await batcher.submit([np.ones(3, np.float32)], "zeros")
        await batcher.stop()
        await batcher.stop()  # a second shutdown path (lifespan and a signal) finds nothing to do

    run(scenario())


def test_rows_with_a_leading_axis_are_padded_on_time_only_and_counted_by_their_length():
    # A time-aware row is (2, T): values over times. Its values count T, not 2T, and the
    # batch is (N, 2, T) with zeros after each row's end.
    rng = np.random.default_rng(3)
    rows = [np.stack([rng.normal(size=n), np.arange(1.0, n + 1)]) for n in (5, 9, 2)]
    seen: list[np.ndarray] = []
    stats: list[BatchStats] = []

    def forward(x: torch.Tensor, key: str) -> torch.Tensor:
        seen.append(x.numpy().copy())
        return (x[:, :1] + x[:, 1:]).expand(-1, 3, -1)  # (N, C = 3, T): values + times

    async def scenario():
        batcher = MicroBatcher(forward, BatchLimits(max_batch_values=27), on_batch=stats.append)
        await batcher.start()
        result = await batcher.submit(rows, "timed")
        await batcher.stop()
        return result

    result = run(scenario())
    assert [s.shape for s in seen] == [(3, 2, 9)]  # 27 values: one batch, 3 x 9 padded
    for index, row in enumerate(rows):
        np.testing.assert_array_equal(seen[0][index, :, : row.shape[1]], row)
        assert not seen[0][index, :, row.shape[1] :].any()
        np.testing.assert_array_equal(result[index], np.repeat(row[:1] + row[1:], 3, axis=0))
    assert (stats[0].values, stats[0].padded_values) == (16, 27)
    assert [len(p) for p in split_request(rows, BatchLimits(max_batch_values=18))] == [2, 1]
