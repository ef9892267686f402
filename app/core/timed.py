"""ConvEWMA on irregular timestamps: each lag decays by the time that passed.

Lag ``k`` of step ``t`` reads ``x[t - k d]`` with weight ``(1 - alpha) ** (age / time_unit)``,
``age = tau_t - tau_{t - k d}``; in ``zeros`` mode a position ``m < 0`` is an observed zero
at ``tau_0 + m * time_unit``. A lag older than ``max_gap`` is out of the window. The sums
run over the observed lags as in the plain layer (tests/reference.py,
``smooth_times_reference``, is the definition). The windows are summed by doubling
(app/core/doubling.py): about ``3 log2(K)`` elementwise passes over ``(N, C, T)``, parallel
and batchable, on CPU a few rows at a time so that the passes stay in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from app.core import doubling, gaps, windows

# Values per piece on CPU: the intermediate arrays of a piece this large stay in the
# benchmark machine's 4 MiB L2, which made each elementwise pass about 3x faster; fewer,
# larger pieces spend less on dispatch (best here: 2^17 to 2^18 with one thread, 2^18
# with two; 2^19 is 2x slower). It also bounds the workspace (benchmarks/README.md).
_CPU_CHUNK_VALUES = 1 << 18


@dataclass(frozen=True)
class TimeDecay:
    """What a time-aware call needs besides the values, the times and the alphas."""

    kernel_size: int
    dilation: int
    warmup: str
    normalize: bool
    min_periods: int
    time_unit: float
    max_gap: float | None


def check_times(times: Tensor, x: Tensor) -> Tensor:
    """``times`` as float64 ``(N, T)``: finite and strictly increasing along each row."""
    if not times.is_floating_point():
        raise ValueError(f"times must be a floating point tensor, got {times.dtype}")
    if times.shape != (x.shape[0], x.shape[-1]):
        raise ValueError(f"times must be (N, T) = {(x.shape[0], x.shape[-1])}, got {tuple(times.shape)}")
    tau = times.detach().to(device=x.device, dtype=torch.float64)
    # Strictly increasing between finite ends is finite throughout (NaN compares false):
    # one comparison pass instead of a finiteness pass and a difference.
    increasing = torch.gt(tau[:, 1:], tau[:, :-1])
    if not bool(increasing.all()):
        row, position = (~increasing).nonzero()[0].tolist()
        if not bool(torch.isfinite(tau[row, position : position + 2]).all()):
            raise ValueError("times must be finite")
        raise ValueError(
            f"times must be strictly increasing: series {row} has {tau[row, position + 1].item()!r} "
            f"at position {position + 1} after {tau[row, position].item()!r}"
        )
    if not bool(torch.isfinite(tau[:, :1]).all()) or not bool(torch.isfinite(tau[:, -1:]).all()):
        raise ValueError("times must be finite")
    return tau


def smooth_times(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay, gaps: str) -> Tensor:
    """``x`` ``(N, 1 or C, T)`` (NaN = missing) at times ``tau`` ``(N, T)`` float64 to ``(N, C, T)``."""
    if gaps == "skip":
        return _skipping(x, tau, alphas, options)
    return _decaying(x, tau.unsqueeze(1), alphas, options)


def _decaying(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay) -> Tensor:
    """``x`` ``(N, S, T)`` at times ``tau`` ``(N, 1 or S, T)``; on CPU without autograd a
    cache-sized piece at a time: a few rows, or a stretch of one long row after the
    ``(K - 1) d`` values its first window reaches back to (which also bounds the workspace)."""
    grad = torch.is_grad_enabled() and (x.requires_grad or alphas.requires_grad)
    batch, inputs, length = x.shape
    span = max(1, _CPU_CHUNK_VALUES // max(inputs, alphas.shape[0]))  # positions per piece
    if grad or x.is_cuda or batch * length <= span:
        return _windows(x, tau, alphas, options)
    out = x.new_empty(batch, alphas.shape[0], length)
    reach = (options.kernel_size - 1) * options.dilation
    if length <= span:
        rows = span // length
        for first in range(0, batch, rows):
            chunk = slice(first, first + rows)
            _windows(x[chunk], tau[chunk], alphas, options, out[chunk])
        return out
    stretch = max(span, 4 * reach)
    for row in range(batch):
        for start in range(0, length, stretch):
            lead = min(start, reach)
            inside, piece = slice(start - lead, start + stretch), slice(start, start + stretch)
            part = out[row : row + 1, :, piece]
            _windows(x[row : row + 1, :, inside], tau[row : row + 1, :, inside], alphas, options, part, lead)
    return out


def _windows(
    x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay, out: Tensor | None = None, lead: int = 0
) -> Tensor:
    """``x`` ``(N, S, T)`` at times ``tau`` ``(N, 1 or S, T)``: the windows by doubling, for
    the positions after the first ``lead`` (0, or ``(K - 1) d`` values of real history)."""
    o = options
    batch, _, length = x.shape
    length -= lead
    history = (o.kernel_size - 1) * o.dilation  # where the outputs start
    pad = history - lead
    # A sum is NaN where a value is missing (or where infinities of both signs meet): one
    # reduction, and no mask at all for a series without missing values.
    complete = not bool(torch.isnan(x.detach().sum()))
    observed = torch.ones((), dtype=torch.bool, device=x.device) if complete else ~torch.isnan(x)
    raw = o.warmup == "zeros" and not o.normalize
    # The positions before the start: zeros on the grid continued backwards, observed (in
    # the denominator only) in zeros mode and absent in adjust mode.
    grid = torch.arange(-pad, 0, device=x.device, dtype=torch.float64) * o.time_unit
    before = tau[..., :1] + grid
    z = windows.padded_inputs(x, observed, complete, raw, o.warmup, pad)
    top = o.kernel_size.bit_length() - 1
    scale = (torch.log1p(-alphas) / o.time_unit).view(1, -1, 1)  # the gradient flows from here
    if scale.numel() == 1 and not (torch.is_grad_enabled() and scale.requires_grad):
        decays = doubling.first_decays(tau, o.dilation, x.dtype, float(scale), before)  # (one channel)
    else:
        decays = doubling.first_decays(tau, o.dilation, x.dtype, scale, before)
    # A window of K lags reads the levels of K's binary digits (a ragged one, every level).
    keep = None if o.max_gap is not None else {bit for bit in range(top + 1) if o.kernel_size >> bit & 1}
    sums, levels = doubling.levels(z, decays, top, o.dilation, keep)
    del z, decays
    if o.max_gap is None:
        lags = None
    else:  # (its binary lifting gathers from one row of times; a piece with real history has no grid)
        lags = windows.lags_within(torch.cat((before, tau), dim=-1) if pad else tau, o, history)
    if lags is None:
        totals = doubling.window(sums, levels, o.kernel_size, o.dilation, history)
    else:
        totals = doubling.ragged_window(sums, levels, lags, o.dilation, history)
    del sums, levels
    valid = windows.real_lags(observed, complete, lags, o, pad, length) >= max(1, o.min_periods)
    direct = False  # whether ``y`` was written into ``out``
    if raw:
        y = alphas.view(1, -1, 1) * totals[0]
    else:
        numerator, denominator = totals[0], totals[1]
        underflow = not complete and x.dtype != torch.float64  # (lag 0 weighs 1 when observed)
        if underflow and bool((valid & (denominator < torch.finfo(x.dtype).tiny)).any()):
            # Every observed lag of some window is so old that its weight is subnormal or
            # zero in this dtype; float64's range reaches ages seven times as long.
            wide = _windows(x.double(), tau, alphas.double(), options, None, lead).to(x.dtype)
            return wide if out is None else out.copy_(wide)
        if torch.is_grad_enabled() and denominator.requires_grad:  # no 0 / 0 in the backward pass
            valid = valid & (denominator > 0)
            denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        # 0 / 0 where no lag weighs: NaN. Into ``out`` itself where it can: a pass saved.
        direct = out is not None and numerator.shape == out.shape and not denominator.requires_grad
        y = torch.div(numerator, denominator, out=out) if direct else numerator / denominator
    y = y.expand(batch, alphas.shape[0], length)
    nan = torch.full((), math.nan, dtype=y.dtype, device=y.device)
    if out is None or (torch.is_grad_enabled() and y.requires_grad):
        return torch.where(valid, y, nan)
    if bool(valid.all()):  # (without missing values, every window but the first few)
        return out if direct else out.copy_(y)
    return torch.where(valid, y, nan, out=out)


def _skipping(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay) -> Tensor:
    """Each row keeps its own observations and their times, as if adjacent; a missing
    position repeats the output before it. On CPU without autograd, a few rows at a time:
    the compaction's index arrays are as large as the rows."""
    grad = torch.is_grad_enabled() and (x.requires_grad or alphas.requires_grad)
    rows = max(1, _CPU_CHUNK_VALUES // (x.shape[2] * max(x.shape[1], alphas.shape[0])))
    if grad or x.is_cuda or rows >= x.shape[0]:
        return _compacted(x, tau, alphas, options)
    out = x.new_empty(x.shape[0], alphas.shape[0], x.shape[2])
    for first in range(0, x.shape[0], rows):
        chunk = slice(first, first + rows)
        out[chunk] = _compacted(x[chunk], tau[chunk], alphas, options)
    return out


def _compacted(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay) -> Tensor:
    # The observations of every row are moved to its front (as the plain skip mode packs
    # them, app/core/gaps.py), with their times, so one batched call smooths them all.
    batch, inputs, length = x.shape
    slot, ordinal, width = gaps.pack_slots(x)
    if width == 0:  # nothing observed anywhere: every output is missing
        return x.new_full((batch, alphas.shape[0], length), math.nan)
    packed = gaps.pack(x, slot, width)
    # After its last observation a row's times stay at that observation's: finite (no NaN
    # in the gradient) and no older, so that no window there looks like an outage.
    times = tau[:, :1].unsqueeze(2).expand(batch, inputs, width + 1).clone()
    times.scatter_(-1, slot, tau.unsqueeze(1).expand(batch, inputs, length))
    times = times[..., 1:].cummax(dim=-1).values
    del slot
    return gaps.unpack(_decaying(packed, times, alphas, options), ordinal)
