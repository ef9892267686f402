"""ConvEWMA on irregular timestamps: each lag decays by the time that passed.

Lag ``k`` of step ``t`` reads ``x[t - k d]`` with weight ``(1 - alpha) ** (age / time_unit)``,
``age = tau_t - tau_{t - k d}``; in ``zeros`` mode a position ``m < 0`` is an observed zero
at ``tau_0 + m * time_unit``. A lag older than ``max_gap`` is out of the window. The sums
run over the observed lags as in the plain layer (tests/reference.py,
``smooth_times_reference``, is the definition). The K lags are unfolded: K passes over
``(N, C, T)``, each elementwise, so the work stays parallel and batchable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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
    if not bool(torch.isfinite(tau).all()):
        raise ValueError("times must be finite")
    steps = tau.diff(dim=-1)
    if steps.numel() and not bool((steps > 0).all()):
        row, position = (steps <= 0).nonzero()[0].tolist()
        raise ValueError(
            f"times must be strictly increasing: series {row} has {tau[row, position + 1].item()!r} "
            f"at position {position + 1} after {tau[row, position].item()!r}"
        )
    return tau


def smooth_times(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay, gaps: str) -> Tensor:
    """``x`` ``(N, 1 or C, T)`` (NaN = missing) at times ``tau`` ``(N, T)`` float64 to ``(N, C, T)``."""
    return _skipping(x, tau, alphas, options) if gaps == "skip" else _decaying(x, tau, alphas, options)


def _decaying(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay) -> Tensor:
    o = options
    length = x.shape[-1]
    observed = ~torch.isnan(x)
    values = torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))
    log_decay = torch.log1p(-alphas).view(1, -1, 1)  # (1, C, 1): the gradient flows from here
    positions = torch.arange(length, device=x.device, dtype=torch.float64)
    numerator = denominator = torch.zeros((), dtype=x.dtype, device=x.device)
    real = torch.zeros((), dtype=torch.int32, device=x.device)
    for k in range(o.kernel_size):
        shift = k * o.dilation
        if shift >= length and o.warmup != "zeros":
            break  # no real lag and no zero before the start is left
        lag_values = F.pad(values, (shift, 0))[..., :length]
        lag_observed = F.pad(observed, (shift, 0), value=False)[..., :length]
        before_start = positions < shift  # (T,): this lag falls before the series
        lag_tau = torch.where(
            before_start,
            tau[:, :1] + (positions - shift) * o.time_unit,
            F.pad(tau, (shift, 0))[..., :length],
        )
        age = tau - lag_tau  # (N, T) float64, exact where the times are
        in_window = torch.ones_like(age, dtype=torch.bool) if o.max_gap is None else age <= o.max_gap
        counted = lag_observed & in_window.unsqueeze(1)  # (N, S, T) real observations
        weight = torch.exp((age / o.time_unit).to(x.dtype).unsqueeze(1) * log_decay)  # (N, C, T)
        numerator = numerator + weight * (lag_values * counted)
        weighed = counted
        if o.warmup == "zeros":  # a zero before the start weighs in the denominator
            weighed = counted | (before_start & in_window).unsqueeze(1)
        denominator = denominator + weight * weighed
        real = real + counted
    if o.warmup == "adjust" or o.normalize:
        y = numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    else:
        y = alphas.view(1, -1, 1) * numerator
    enough = (real >= max(1, o.min_periods)).expand_as(y)
    return torch.where(enough, y, torch.full((), float("nan"), dtype=y.dtype, device=y.device))


def _skipping(x: Tensor, tau: Tensor, alphas: Tensor, options: TimeDecay) -> Tensor:
    # Each row keeps its own observations and their times, as if adjacent; a missing
    # position repeats the output before it. Rows differ in where values are missing,
    # so they are compacted one at a time.
    batch, inputs, length = x.shape
    rows: list[Tensor] = []
    for n in range(batch):
        outputs = []
        for s in range(inputs):
            kept = (~torch.isnan(x[n, s])).nonzero().squeeze(1)
            chosen = alphas if inputs == 1 else alphas[s : s + 1]
            compact = _decaying(x[n, s, kept].view(1, 1, -1), tau[n, kept].view(1, -1), chosen, options)
            outputs.append(_hold_last(compact[0], kept, length))  # (C or 1, T)
        rows.append(torch.cat(outputs))
    return torch.stack(rows) if rows else x.new_empty(0, alphas.shape[0], length)


def _hold_last(compact: Tensor, kept: Tensor, length: int) -> Tensor:
    """``compact`` ``(C, L)`` at positions ``kept`` of ``length``, each held until the next."""
    marks = torch.full((length,), -1, dtype=torch.long, device=compact.device)
    marks[kept] = torch.arange(kept.numel(), device=compact.device)
    last = marks.cummax(dim=0).values  # index into compact of the latest observation, -1 before any
    padded = torch.cat([compact.new_full((compact.shape[0], 1), float("nan")), compact], dim=1)
    return padded[:, last + 1]
