"""The maths of one ConvEWMA call, given its filter: plain, gap-aware and skip-mode smoothing.

:class:`ConvEWMA` builds a :class:`Filter` from its logits (cached without autograd) and
hands it here. Without autograd the fast FIR (``app.core.fir``) runs and intermediate
arrays are reused in place; with autograd everything is differentiable ``conv1d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from app.core.fir import causal_conv1d, causal_fir
from app.core.gaps import (
    pack_observed,
    prestart_mass,
    unpack,
    window_counts,
    without_short_head,
    without_short_windows,
)

# Inputs per slice of rows on the gap-aware paths (without autograd): their arrays beyond
# the output then take at most about 16 bytes per channel per value of a slice, a few
# tens of MB (app/serving/budget.py counts it).
GAP_WORKSPACE_VALUES = 1 << 18


@dataclass(frozen=True)
class Filter:
    """One warm-up mode of a layer in one dtype."""

    taps: Tensor  # (C, K) in lag order, in the input's dtype (normalised unless raw zeros)
    fold: Tensor | None  # (C,) (1 - alpha)^(K/2) when K is even: the folded GEMM's ratios
    start_scale: Tensor | None  # adjust: float64 (C, (K-1)d), 1 / partial sums of the window
    mode: str  # "zeros" or "adjust"
    normalize: bool
    dilation: int

    @property
    def kernel_size(self) -> int:
        return self.taps.shape[1]


def convolve(x: Tensor, f: Filter, taps: Tensor | None = None) -> Tensor:
    """``(N, 1 or C, T)`` to ``(N, C, T)``: a filter bank, or depth-wise when ``x`` has C rows."""
    taps = f.taps if taps is None else taps
    channels = taps.shape[0]
    depthwise = x.shape[1] == channels and channels > 1
    if torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad):
        return causal_conv1d(x, taps, groups=channels if depthwise else 1, dilation=f.dilation)
    if not depthwise:
        return causal_fir(x[:, 0], taps, fold=f.fold, dilation=f.dilation)
    out = x.new_empty(x.shape)
    for c in range(channels):
        ratio = None if f.fold is None else f.fold[c : c + 1]
        out[:, c] = causal_fir(x[:, c], taps[c : c + 1], fold=ratio, dilation=f.dilation)[:, 0]
    return out


def dense(x: Tensor, f: Filter, min_periods: int) -> Tensor:
    """A batch without missing values."""
    y = convolve(x, f)
    if f.start_scale is not None:
        y = _adjust_start(y, f.start_scale)
    return without_short_head(y, min_periods, f.dilation)


def _adjust_start(y: Tensor, scale: Tensor) -> Tensor:
    """Rescale outputs t < (K-1)d from the full-kernel sum to the partial sum, in float64:
    a narrow output near its maximum times a narrow 1 / partial can round to infinity."""
    head = min(scale.shape[-1], y.shape[-1])
    if head == 0:
        return y
    start = (y[..., :head].to(scale.dtype) * scale[:, :head].unsqueeze(0)).to(y.dtype)
    if y.requires_grad:
        return torch.cat([start, y[..., head:]], dim=-1)
    y[..., :head] = start
    return y


def observed_and_zeroed(x: Tensor) -> Tensor:
    """``(2N, ...)``: rows ``:N`` are 1.0 where ``x`` is observed (0.0 for NaN), rows ``N:``
    are ``x`` with 0 for NaN; stacked so that one FIR call smooths both.

    No boolean tensor: each pass over one costs several times a float pass here, while
    ``x == x`` (false only for NaN) written straight into a float tensor is one pass.
    """
    rows = x.shape[0]
    both = x.new_empty((2 * rows, *x.shape[1:]))
    inf = float("inf")
    torch.nan_to_num(x, nan=0.0, posinf=inf, neginf=-inf, out=both[rows:])
    torch.eq(x, x, out=both[:rows])
    return both


def with_gaps(x: Tensor, f: Filter, gaps: str, min_periods: int, out: Tensor | None = None) -> Tensor:
    """A batch with missing values (NaN): the sums over the observed lags only; written
    into ``out`` when given (without autograd)."""
    if gaps == "skip":
        packed, last = pack_observed(x)
        return _into(unpack(dense(packed, f, min_periods), last), out)
    raw = f.mode == "zeros" and not f.normalize
    mass = prestart_mass(f.taps, f.dilation, x.shape[-1]) if f.mode == "zeros" else None
    fast = not (torch.is_grad_enabled() and (x.requires_grad or f.taps.requires_grad))
    if fast and not (raw or min_periods > 1) and bool(f.taps.min() > 0):
        # The common case, in place (each pass over (N, C, T) costs about as much as a
        # FIR). With every tap positive, a window without an observation is exactly the
        # one whose weight is 0; its numerator is 0 too, and 0 / 0 marks it NaN.
        both = convolve(observed_and_zeroed(x), f)
        weight, numerator = both[: x.shape[0]], both[x.shape[0] :]
        target = numerator if out is None else out
        if mass is None:
            return torch.div(numerator, weight, out=target)
        head = mass.shape[-1]  # the positions before the start are observed zeros
        empty = weight[..., :head] == 0
        weight[..., :head] += mass
        torch.div(numerator, weight, out=target)
        target[..., :head].masked_fill_(empty, float("nan"))
        return target
    return _into(_with_gaps_counted(x, f, min_periods, raw, mass), out)


def _into(result: Tensor, out: Tensor | None) -> Tensor:
    if out is None:
        return result
    return out.copy_(result)


def _with_gaps_counted(x: Tensor, f: Filter, min_periods: int, raw: bool, mass: Tensor | None) -> Tensor:
    """The other cases: autograd, raw sums, ``min_periods`` > 1, or taps that underflow."""
    present = torch.eq(x, x).to(x.dtype)
    inf = float("inf")
    numerator = convolve(torch.nan_to_num(x, nan=0.0, posinf=inf, neginf=-inf), f)
    counts = window_counts(present, f.kernel_size, f.dilation)
    if raw:
        return without_short_windows(numerator, counts, min_periods)
    weight = convolve(present, f)
    if not numerator.requires_grad:
        if mass is not None:
            weight[..., : mass.shape[-1]] += mass
        # A weight that underflows to 0 leaves a 0 numerator: divide by anything positive.
        numerator.div_(weight.clamp_(min=torch.finfo(x.dtype).tiny))
        return numerator.masked_fill_(counts < max(1, min_periods), float("nan"))
    if mass is not None:
        weight = torch.cat([weight[..., : mass.shape[-1]] + mass, weight[..., mass.shape[-1] :]], dim=-1)
    # Dividing by 1 where the weight is 0 keeps the gradient finite under the NaN mask.
    y = numerator / torch.where(weight > 0, weight, torch.ones((), dtype=x.dtype, device=x.device))
    return without_short_windows(y, counts, min_periods)


def smooth(x: Tensor, f: Filter, gaps: str, min_periods: int, gappy: Tensor) -> Tensor:
    """``x`` ``(N, 1 or C, T)`` whose rows ``gappy`` hold a NaN: each row by its path."""
    if not bool(gappy.any()):
        return dense(x, f, min_periods)
    if torch.is_grad_enabled():
        return with_gaps(x, f, gaps, min_periods)
    # The gap-aware paths hold a few arrays as large as their output: run them a slice of
    # rows at a time into the output, so that their working memory stays bounded however
    # large the batch; a slice without a gap takes the plain path.
    y = x.new_empty(x.shape[0], f.taps.shape[0], x.shape[2])
    rows = max(1, GAP_WORKSPACE_VALUES // max(1, x.shape[2]))
    for first in range(0, x.shape[0], rows):
        part = slice(first, first + rows)
        if bool(gappy[part].any()):
            with_gaps(x[part], f, gaps, min_periods, out=y[part])
        else:
            y[part] = dense(x[part], f, min_periods)
    return y
