"""What the time-aware windows of one chunk read besides the sums: the padded inputs, the
real observations in each window, and how many lags ``max_gap`` leaves (app/core/timed.py)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core import doubling, gaps

if TYPE_CHECKING:
    from app.core.timed import TimeDecay


def padded_inputs(
    x: Tensor, observed: Tensor, complete: bool, raw: bool, warmup: str, history: int
) -> Tensor:
    """``(1 or 2, N, S, history + T)``: the values (0 where missing) and, unless raw, the
    weight each position takes in the denominator (1 observed, 0 missing; the positions
    before the start weigh 1 in zeros mode)."""
    if torch.is_grad_enabled() and x.requires_grad:
        z = torch.nan_to_num(x, nan=0.0, posinf=math.inf, neginf=-math.inf).unsqueeze(0)
        if not raw:  # (``observed`` is a 0-dim True where nothing is missing)
            z = torch.cat((z, observed.to(x.dtype).expand(x.shape).unsqueeze(0)))
        z = F.pad(z, (history, 0))
        if not raw and warmup == "zeros":
            z = torch.cat((z[:1], F.pad(z[1:, ..., history:], (history, 0), value=1.0)))
        return z
    z = x.new_empty(1 if raw else 2, *x.shape[:-1], history + x.shape[-1])
    z[0, ..., :history] = 0.0
    torch.nan_to_num(x, nan=0.0, posinf=math.inf, neginf=-math.inf, out=z[0, ..., history:])
    if not raw:
        z[1, ..., :history] = 1.0 if warmup == "zeros" else 0.0
        z[1, ..., history:] = 1.0 if complete else observed
    return z


def real_lags(
    observed: Tensor, complete: bool, lags: Tensor | None, options: TimeDecay, pad: int, length: int
) -> Tensor:
    """Real observations in each output's window (``pad`` positions before the start)."""
    o = options
    history = (o.kernel_size - 1) * o.dilation
    if complete:  # only the positions before the start are missing
        since = torch.arange(length, device=observed.device) // o.dilation
        since = since + (1 if pad else o.kernel_size)  # (a stretch after the first: all K are real)
        return torch.minimum(since, torch.full((), o.kernel_size) if lags is None else lags)
    if lags is None:  # the plain layer's counts (prefix sums per phase); none before the start
        return gaps.window_counts(observed.to(torch.float32), o.kernel_size, o.dilation)[..., -length:]
    real = F.pad(observed.to(torch.int32), (pad, 0))
    top = o.kernel_size.bit_length() - 1
    found: list[Tensor | None] = list(doubling.count_levels(real, top, o.dilation))
    return doubling.ragged_window(found, None, lags, o.dilation, history)


def lags_within(tau: Tensor, options: TimeDecay, history: int) -> Tensor:
    """How many of the K lags of each output are at most ``max_gap`` old: ``(N, S', T)``.

    Ages grow with the lag, so the lags inside form a prefix; its end is found by binary
    lifting over the K lags (log2 K gathers), each age ``tau_q - tau_m`` computed as the
    reference computes it."""
    assert options.max_gap is not None
    d, outputs = options.dilation, tau[..., history:]
    oldest = torch.arange(history, tau.shape[-1], device=tau.device).expand(outputs.shape)
    found = torch.zeros(outputs.shape, dtype=torch.int64, device=tau.device)  # lags past lag 0
    for bit in range((options.kernel_size - 1).bit_length() - 1, -1, -1):
        trial = (oldest - 2**bit * d).clamp(min=0)
        inside = outputs - tau.gather(-1, trial) <= options.max_gap
        oldest = torch.where(inside, trial, oldest)
        found += inside * 2**bit
    return (found + 1).clamp(max=options.kernel_size)
