"""From a batch's outputs to one request's answer (app/serving/results.py), on hand-made
outputs: which rows are views and which are copies, the history's outputs dropped and the
tails for the next chunk (against tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.api.schemas import RequestError, SmoothJob
from app.serving.options import SmoothOptions
from app.serving.results import Reach, finish, may_overflow, options_for, padded_times, rows_of
from tests.reference import history_tail_reference

C = 3  # channels of the pretend model


def batch_outputs(rows: list[np.ndarray], stride: int = 1) -> list[np.ndarray]:
    """What a forward would give: (C, ceil(T / stride)) per row, channel c = row * (c + 1)."""
    return [np.stack([row[::stride] * (c + 1) for c in range(C)]) for row in rows]


def test_all_channels_are_the_batch_rows_themselves_and_a_choice_is_a_copy():
    series = [np.arange(1.0, 6.0, dtype=np.float32)]
    outputs = batch_outputs(series)
    options = SmoothOptions("zeros")
    every = SmoothJob(series=series, channels=[0, 1, 2], warmup=None)
    (whole,), tails = finish(outputs, series, every, options, Reach(4, 1), C)
    assert tails == (None, None)
    assert np.shares_memory(whole, outputs[0])  # no copy of an answer as large as the batch's
    np.testing.assert_array_equal(whole, outputs[0])
    chosen = SmoothJob(series=series, channels=[2, 0], warmup=None)
    (picked,), _ = finish(outputs, series, chosen, options, Reach(4, 1), C)
    assert not np.shares_memory(picked, outputs[0])
    np.testing.assert_array_equal(picked, outputs[0][[2, 0]])


@pytest.mark.parametrize(("dilation", "stride"), [(1, 1), (3, 1), (2, 2)])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
def test_a_history_is_dropped_from_the_answer_and_the_tail_follows_the_reach(dilation, stride, gaps):
    kernel_size = 4
    history = [np.array([1.0, np.nan, 3.0, 4.0, 5.0], np.float32), np.array([], np.float32)]
    series = [np.arange(10.0, 30.0, dtype=np.float32), np.array([7.0, np.nan, 9.0], np.float32)]
    job = SmoothJob(series=series, channels=[1], warmup=None, history=history, gaps=gaps, stride=stride)
    options = SmoothOptions("zeros", gaps, stride=stride)
    rows = rows_of(job)
    for row, before, values in zip(rows, history, series, strict=True):
        np.testing.assert_array_equal(row, np.concatenate([before, values]))
    smoothed, (tails, tail_times) = finish(
        batch_outputs(rows, stride), rows, job, options, Reach(kernel_size, dilation), C
    )
    assert tail_times is None
    for row, before, answer in zip(rows, history, smoothed, strict=True):
        first = -(-len(before) // stride)  # outputs at positions 0, s, 2s, ... from the history's start
        np.testing.assert_array_equal(answer, 2 * row[::stride][None, first:])
    assert tails is not None
    for row, tail in zip(rows, tails, strict=True):
        expected = history_tail_reference(row, kernel_size, dilation=dilation, gaps=gaps, stride=stride)
        np.testing.assert_array_equal(tail, expected)


@pytest.mark.parametrize(("dilation", "stride"), [(1, 1), (2, 3)])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
def test_with_times_rows_are_values_over_times_and_the_tails_keep_each_value_with_its_time(
    dilation, stride, gaps
):
    history = [np.array([1.0, np.nan, 3.0, 4.0, 5.0, 6.0, np.nan], np.float32), np.array([], np.float32)]
    history_times = [np.arange(7.0) * 2.0, np.array([])]
    series = [np.arange(10.0, 22.0, dtype=np.float32), np.array([7.0, np.nan, 9.0], np.float32)]
    times = [100.0 + np.arange(12.0), 50.0 + np.arange(3.0) * 0.5]
    job = SmoothJob(
        series, [1], None, history, gaps=gaps, stride=stride, times=times, history_times=history_times
    )
    options = options_for(job, 4, "zeros")
    assert (options.timed, options.max_gap) == (True, None)
    rows = rows_of(job)
    for row, before, values, before_t, stamps in zip(
        rows, history, series, history_times, times, strict=True
    ):
        assert row.dtype == np.float64
        np.testing.assert_array_equal(row[0], np.concatenate([before, values]))
        np.testing.assert_array_equal(row[1], np.concatenate([before_t, stamps]))
    _, (tails, tail_times) = finish(batch_outputs(rows, stride), rows, job, options, Reach(4, dilation), C)
    assert tails is not None
    assert tail_times is not None
    for row, tail, tail_time in zip(rows, tails, tail_times, strict=True):
        assert tail.dtype == np.float32
        keep = len(tail)
        np.testing.assert_array_equal(
            tail, row[0, len(row[0]) - keep :]
        )  # a suffix, each value with its time
        np.testing.assert_array_equal(tail_time, row[1, len(row[1]) - keep :])
        assert (len(row[0]) - keep) % stride == 0  # the phase of the strided outputs is kept
        observed = np.count_nonzero(~np.isnan(tail))
        reach = 3 * dilation
        if gaps == "decay":
            assert keep >= min(len(row[0]), reach)
        else:
            assert observed >= min(np.count_nonzero(~np.isnan(row[0])), reach + 1)


def test_a_history_must_pair_with_the_series():
    job = SmoothJob(series=[np.ones(3, np.float32)] * 2, channels=[0], warmup=None, history=[np.ones(2)])
    with pytest.raises(ValueError, match="zip"):
        rows_of(job)


def test_each_series_keeps_its_own_channel_and_an_infinity_names_its_series():
    series = [np.ones(4, np.float32), np.full(4, 2.0, np.float32)]
    job = SmoothJob(series=series, channels=[2, 0], warmup=None, pairing="each")
    smoothed, _ = finish(batch_outputs(series), series, job, SmoothOptions("zeros"), Reach(4, 1), C)
    np.testing.assert_array_equal(smoothed[0], np.full((1, 4), 3.0))
    np.testing.assert_array_equal(smoothed[1], np.full((1, 4), 2.0))
    # Inputs this far from the float32 maximum cannot overflow: the outputs are not looked at.
    injected = batch_outputs(series)
    injected[1][0, 2] = np.inf
    assert finish(injected, series, job, SmoothOptions("zeros"), Reach(4, 1), C)[0][1][0, 2] == np.inf
    huge = [series[0], np.full(4, 4e32, np.float32)]  # past OVERFLOW_FREE: every output is checked
    overflowing = batch_outputs(huge)
    overflowing[1][0, 2] = np.inf
    with pytest.raises(RequestError) as error:
        finish(overflowing, huge, job, SmoothOptions("zeros"), Reach(4, 1), C)
    assert (error.value.status, error.value.detail) == (
        422,
        "series[1]: the smoothed values overflow float32; scale the input down",
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("timed", [False, True])
def test_overflow_is_possible_only_near_the_largest_value(dtype, timed):
    largest = float(np.finfo(dtype).max)
    options = SmoothOptions("zeros", dtype=dtype, timed=timed)  # type: ignore[arg-type]

    def rows(*values: float) -> list[np.ndarray]:
        row = np.array(values, dtype)
        return [np.stack([row, np.arange(len(values), dtype=dtype)]) if timed else row]

    limit = largest * 2.0**-20
    assert not may_overflow(rows(1.0, -limit, limit), options)
    assert may_overflow(rows(1.0, 2.0, limit * 1.01), options)
    assert may_overflow(rows(-limit * 1.01, 3.0), options)
    assert may_overflow(rows(np.nan, 1.0), options)  # a missing value: the outputs are looked at
    assert not may_overflow([np.empty((2, 0) if timed else 0, dtype)], options)


@pytest.mark.parametrize(("asked", "expected"), [(None, "adjust"), ("zeros", "zeros")])
def test_options_take_the_models_warmup_by_default(asked, expected):
    job = SmoothJob(series=[np.ones(2)], channels=[0], warmup=asked, min_periods=4, dtype="float64", stride=2)
    assert options_for(job, 4, "adjust") == SmoothOptions(expected, "decay", 4, "float64", 2)
    with pytest.raises(RequestError) as error:
        options_for(job, 3, "adjust")
    assert (error.value.status, error.value.detail) == (
        422,
        "'min_periods' must be an integer in 0..3 (the kernel size), got 4",
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([1.5, 2.0, 4.0], [1.5, 2.0, 4.0]),
        ([1.5, 2.0, 0.0, 0.0], [1.5, 2.0, 3.0, 4.0]),
        ([7.0, 0.0, 0.0], [7.0, 8.0, 9.0]),
        ([7.0, 0.0], [7.0, 8.0]),  # two positions, one of them padding
        ([-5.0, -3.0, 0.0, 0.0, 0.0], [-5.0, -3.0, 0.0, 1.0, 2.0]),  # a zero after negatives is later
    ],
)
def test_padded_times_go_on_increasing_after_each_row(row, expected):
    times = torch.tensor([row, [10.0 + i for i in range(len(row))]], dtype=torch.float64)
    got = padded_times(times)
    assert got[0].tolist() == expected
    assert got[1].tolist() == times[1].tolist()  # a full row is kept
    assert bool((got.diff(dim=-1) > 0).all())
    assert padded_times(torch.tensor([[3.0]])).tolist() == [[3.0]]


@pytest.mark.parametrize("last", [2e17, -2e17, 9.1e15, 1e300])
def test_padding_after_huge_times_still_increases(last):
    # Past 2^53 a second rounds away: the padding steps by two units in the last place.
    times = torch.tensor([[last / 2, last, 0.0, 0.0, 0.0]], dtype=torch.float64)
    if last < 0:
        times[0, 0] = last * 2
    got = padded_times(times)
    assert bool((got.diff(dim=-1) > 0).all())
    assert bool(torch.isfinite(got).all())
