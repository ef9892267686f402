"""From a batch's outputs to a request's answer: the history's outputs dropped, the channels
picked, overflow refused, and the history to send with the next chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from app.api.schemas import RequestError, SmoothJob
from app.core.continuation import first_output, history_tail, timed_tail
from app.core.ewma import Warmup
from app.serving.options import SmoothOptions


@dataclass(frozen=True)
class SmoothResult:
    smoothed: list[np.ndarray]  # (channels, outputs) per series, in the request's dtype; NaN = missing
    channels: list[str]
    alphas: list[float]
    model_version: str
    values: int  # output values, for choosing how to encode
    history: list[np.ndarray] | None = None  # the next chunk's history per series, if one was sent
    history_times: list[np.ndarray] | None = None  # and its times, if times were sent


@dataclass(frozen=True)
class Reach:
    """What the model's kernel reaches back, for the history tail."""

    kernel_size: int
    dilation: int


def options_for(job: SmoothJob, kernel_size: int, warmup: Warmup) -> SmoothOptions:
    """The job's options, the model's warm-up by default: the batch key."""
    if job.min_periods > kernel_size:
        raise RequestError(
            422,
            f"'min_periods' must be an integer in 0..{kernel_size} (the kernel size), got {job.min_periods}",
        )
    timed = job.times is not None
    return SmoothOptions(
        job.warmup or warmup, job.gaps, job.min_periods, job.dtype, job.stride, timed, job.max_gap
    )


def rows_of(job: SmoothJob) -> list[np.ndarray]:
    """What the batch smooths: each series after its history; with times, ``(2, T)``
    float64 rows of values and times."""
    series = job.series
    if job.history is not None:
        pairs = zip(job.history, series, strict=True)
        series = [np.concatenate([before, values]) for before, values in pairs]
    if job.times is None:
        return series
    times = job.times
    if job.history_times is not None:
        joined = zip(job.history_times, times, strict=True)
        times = [np.concatenate([before, stamps]) for before, stamps in joined]
    rows = zip(series, times, strict=True)
    return [np.stack([values.astype(np.float64), stamps]) for values, stamps in rows]


def padded_times(times: torch.Tensor) -> torch.Tensor:
    """A batch's times ``(N, T)`` with each row's right padding (zeros after its strictly
    increasing times) replaced, in place, by times that go on increasing: a causal window
    never reads them, but they must be valid times. The step is a second, or two of the
    last time's units in the last place where a second would round away (past 2^52 s)."""
    if times.shape[-1] < 2:
        return times
    later = times[:, 1:] > times[:, :-1]
    ends = torch.where(later.all(dim=1), times.shape[-1], (~later).int().argmax(dim=1) + 1)
    for row, end in enumerate(ends.tolist()):  # (a batch has at most max_batch_size rows)
        if end < times.shape[-1]:
            last = float(times[row, end - 1])
            step = max(1.0, 2.0 * math.ulp(last))
            after = torch.arange(1, times.shape[-1] - end + 1, device=times.device, dtype=times.dtype)
            times[row, end:] = last + after * step
    return times


# Far below 1 / K for any K <= 32: the check of the outputs is skipped only with a wide margin.
OVERFLOW_FREE = 2.0**-20
Tails = tuple[list[np.ndarray] | None, list[np.ndarray] | None]  # history, history_times


def finish(
    outputs: list[np.ndarray],
    rows: list[np.ndarray],
    job: SmoothJob,
    options: SmoothOptions,
    reach: Reach,
    model_channels: int,
) -> tuple[list[np.ndarray], Tails]:
    """The answer's rows for every series (copies only where channels are picked) and, with
    a history, the tails; a 422 naming the first series whose outputs overflow."""
    selection = None if job.channels == list(range(model_channels)) else np.asarray(job.channels)
    smoothed: list[np.ndarray] = []
    check = may_overflow(rows, options)
    for index, output in enumerate(outputs):
        if job.history is not None:
            output = output[:, first_output(len(job.history[index]), options.stride) :]
        if job.pairing == "each":
            channel = job.channels[index]
            output = output[channel : channel + 1]
        elif selection is not None:
            output = output[selection]
        # NaN is a missing output, by the gap rules; only an infinity is an overflow.
        if check and np.isinf(output).any():
            raise RequestError(
                422, f"series[{index}]: the smoothed values overflow {options.dtype}; scale the input down"
            )
        smoothed.append(output)
    return smoothed, _tails(rows, job, options, reach)


def may_overflow(rows: list[np.ndarray], options: SmoothOptions) -> bool:
    """Whether an output can be infinite: only where an input reaches ``OVERFLOW_FREE`` of
    the dtype's largest value (or a row has a missing value: then the outputs are looked
    at). Every output and every partial sum of the layer weighs at most K inputs by
    weights of at most 1, so below that nothing can overflow, and the outputs (C times
    the inputs) need no look."""
    limit = float(np.finfo(options.numpy_dtype).max) * OVERFLOW_FREE
    for row in rows:
        values = row[0] if options.timed else row  # (timed rows are values over times)
        # max and min are vectorised (NaN-aware reductions are several times slower); a
        # row with a missing value reads NaN here and sends the outputs to be looked at.
        if values.size and not (-limit <= values.min() and values.max() <= limit):
            return True
    return False


def _tails(rows: list[np.ndarray], job: SmoothJob, options: SmoothOptions, reach: Reach) -> Tails:
    """With a history: the next chunk's history (and its times, with times) per series."""
    if job.history is None:
        return None, None
    size, dilation, gaps, stride = reach.kernel_size, reach.dilation, options.gaps, options.stride
    if not options.timed:
        return [history_tail(row, size, dilation=dilation, gaps=gaps, stride=stride) for row in rows], None
    dtype = options.numpy_dtype
    pairs = [
        timed_tail(row[0].astype(dtype), row[1], size, dilation=dilation, gaps=gaps, stride=stride)
        for row in rows
    ]
    return [values for values, _ in pairs], [times for _, times in pairs]
