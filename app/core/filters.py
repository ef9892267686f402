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
    # adjust, float64, (K-1)d <= START_BANK_LIMIT: (H, C, H), output t < H = (K-1)d as a
    # product of the first H inputs, partial-window normalisation included
    start_bank: Tensor | None = None
    # zeros: (C, (K-1)d), the weight of the lags of position t that fall before the start
    prestart: Tensor | None = None

    @property
    def kernel_size(self) -> int:
        return self.taps.shape[1]


def convolve(x: Tensor, f: Filter, taps: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """``(N, 1 or C, T)`` to ``(N, C, T)``: a filter bank, or depth-wise when ``x`` has C rows;
    into ``out`` when given (without autograd)."""
    taps = f.taps if taps is None else taps
    channels = taps.shape[0]
    if x.shape[-1] == 0:  # e.g. a row with no observation, packed by gaps="skip"
        return x.new_empty(x.shape[0], channels, 0) if out is None else out
    depthwise = x.shape[1] == channels and channels > 1
    if torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad):
        return causal_conv1d(x, taps, groups=channels if depthwise else 1, dilation=f.dilation)
    if not depthwise:
        return causal_fir(x[:, 0], taps, fold=f.fold, dilation=f.dilation, out=out)
    out = x.new_empty(x.shape) if out is None else out
    for c in range(channels):
        ratio = None if f.fold is None else f.fold[c : c + 1]
        out[:, c] = causal_fir(x[:, c], taps[c : c + 1], fold=ratio, dilation=f.dilation)[:, 0]
    return out


def dense(x: Tensor, f: Filter, min_periods: int, out: Tensor | None = None) -> Tensor:
    """A batch without missing values; into ``out`` when given (without autograd)."""
    y = convolve(x, f, out=out)
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
    mass = None if f.prestart is None else f.prestart[:, : x.shape[-1]]
    fast = not (torch.is_grad_enabled() and (x.requires_grad or f.taps.requires_grad))
    if fast and not (raw or min_periods > 1):
        # The common case, in place (each pass over (N, C, T) costs about as much as a
        # FIR). A window without an observation has weight 0 and numerator 0: 0 / 0 marks
        # it NaN. (So does one whose only observations sit at lags whose taps underflow
        # to zero in a narrow dtype, as in the other paths: such lags carry no weight.)
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
    # No real observation carries weight: none at all, or only at lags whose taps
    # underflow to zero in a narrow dtype (checked before the start's zeros add theirs).
    missing = (weight == 0) | (counts < max(1, min_periods))
    if not numerator.requires_grad:
        if mass is not None:
            weight[..., : mass.shape[-1]] += mass
        return numerator.div_(weight).masked_fill_(missing, float("nan"))
    if mass is not None:
        weight = torch.cat([weight[..., : mass.shape[-1]] + mass, weight[..., mass.shape[-1] :]], dim=-1)
    # Dividing by 1 where the weight is 0 keeps the gradient finite under the NaN mask.
    y = numerator / torch.where(weight > 0, weight, torch.ones((), dtype=x.dtype, device=x.device))
    return torch.where(missing, torch.full((), float("nan"), dtype=x.dtype, device=x.device), y)


START_BANK_LIMIT = 256  # (K-1)d beyond which the start is recomputed by the general path


def start_bank(taps: Tensor, scale: Tensor, dilation: int) -> Tensor:
    """``(H, C, H)`` with ``H = (K-1)d``: ``y[:, c, t] = sum_s x[:, s] bank[s, c, t]`` for
    ``t < H`` in ``adjust`` (taps float64 ``(C, K)``, ``scale`` the ``(C, H)`` 1 / partial sums)."""
    channels, kernel_size = taps.shape
    head = (kernel_size - 1) * dilation
    bank = taps.new_zeros(head, channels, head)
    outputs = torch.arange(head, device=taps.device)
    for k in range(kernel_size):
        keep = outputs >= k * dilation
        t = outputs[keep]
        bank[t - k * dilation, :, t] = (taps[:, k : k + 1] * scale[:, t]).T
    return bank


def exact_start(
    x: Tensor, y: Tensor, f: Filter, gaps: str, min_periods: int, *, gaps_possible: bool = True
) -> Tensor:
    """``y`` with its first ``(K-1)d`` outputs recomputed by ``f`` (a float64 ``adjust``
    filter) and rounded once to ``y``'s dtype; those windows are partial and depend only
    on the first ``(K-1)d`` inputs."""
    head = min(x.shape[-1], (f.kernel_size - 1) * f.dilation)
    if head == 0:
        return y
    part = x[..., :head].double()
    gappy = torch.isnan(part.sum(dim=-1)).any(dim=1) if gaps_possible else None
    if f.start_bank is not None and (gappy is None or not bool(gappy.any())) and not y.requires_grad:
        bank = f.start_bank[:head, :, :head]
        if part.shape[1] == 1:  # a bank: every channel of each series
            exact = (part[:, 0] @ bank.reshape(head, -1)).view(part.shape[0], -1, head)
        else:
            exact = torch.einsum("nch,hct->nct", part, bank)
        exact = without_short_head(exact, min_periods, f.dilation)
    else:
        exact = smooth(part, f, gaps, min_periods, gappy)
    if y.requires_grad:
        return torch.cat([exact.to(y.dtype), y[..., head:]], dim=-1)
    y[..., :head] = exact
    return y


def smooth(
    x: Tensor, f: Filter, gaps: str, min_periods: int, gappy: Tensor | None, out: Tensor | None = None
) -> Tensor:
    """``x`` ``(N, 1 or C, T)`` whose rows ``gappy`` hold a NaN (None: none does); into
    ``out`` (contiguous ``(N, C, T)``) when given, without autograd."""
    if gappy is None or not bool(gappy.any()):
        return dense(x, f, min_periods, out)
    if torch.is_grad_enabled():
        return with_gaps(x, f, gaps, min_periods)
    # The gap-aware paths hold a few arrays as large as their output: run them a slice of
    # rows at a time into the output, so that their working memory stays bounded however
    # large the batch; a slice without a gap takes the plain path.
    y = x.new_empty(x.shape[0], f.taps.shape[0], x.shape[2]) if out is None else out
    rows = max(1, GAP_WORKSPACE_VALUES // max(1, x.shape[2]))
    for first in range(0, x.shape[0], rows):
        part = slice(first, first + rows)
        if bool(gappy[part].any()):
            with_gaps(x[part], f, gaps, min_periods, out=y[part])
        else:
            dense(x[part], f, min_periods, out=y[part])
    return y
