"""Missing values (NaN) in ConvEWMA: the maths the layer applies around its convolution.

With ``W_t`` the lags ``k < K`` whose value ``x[t - k d]`` is observed, the output is
``sum_{W_t} w_k x / sum_{W_t} w_k``.  Both sums are causal FIRs: the numerator of the
input with its gaps set to zero, the denominator of the 0/1 observed mask.  In
``"zeros"`` warm-up the positions before the start are observed zeros, which adds the
weight of the lags that reach before the start to the first ``(K-1)d`` denominators.
``"skip"`` packs each row's observed values together, smooths them as a gap-free
series and reads each position's output from its last observation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def window_counts(observed: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """Real observations among lags ``0, d, .., (K-1)d`` of each position, from the 0/1
    ``observed`` mask (float): prefix sums per phase ``t mod d``, exact in float32 up to
    2^24 steps per phase (float64 beyond), so no rounding can turn a count of one into zero.
    """
    length = observed.shape[-1]
    lanes = -(-length // dilation)
    flat = observed if lanes <= 1 << 24 else observed.double()
    if dilation == 1:  # the common case, along the contiguous dimension (several times faster)
        sums = flat.cumsum(dim=-1)
        counts = sums.clone()
        counts[..., kernel_size:] -= sums[..., :-kernel_size]
        return counts
    if lanes * dilation != length:
        flat = torch.nn.functional.pad(flat, (0, lanes * dilation - length))
    sums = flat.reshape(*flat.shape[:-1], lanes, dilation).cumsum(dim=-2)
    counts = sums.clone()
    counts[..., kernel_size:, :] -= sums[..., :-kernel_size, :]
    return counts.view(*flat.shape[:-1], lanes * dilation)[..., :length]


def prestart_mass(taps: Tensor, dilation: int, length: int) -> Tensor:
    """``(C, min(T, (K-1)d))``: the weight of the lags of position t that fall before the start.

    Summed from the tail in float64: ``total - partial`` would cancel catastrophically
    when the tail is tiny (a fast alpha), and the tail's relative error is what matters
    where few observations remain in the window.
    """
    head = min(length, (taps.shape[1] - 1) * dilation)
    tails = taps.double().flip(1).cumsum(dim=1).flip(1)  # tails[:, k] = sum of taps k..K-1
    first_outside = torch.arange(head, device=taps.device) // dilation + 1
    return tails[:, first_outside].to(taps.dtype)


def without_short_windows(y: Tensor, counts: Tensor, min_periods: int) -> Tensor:
    """``y`` with NaN where fewer than ``max(1, min_periods)`` real observations are in the window."""
    return torch.where(counts >= max(1, min_periods), y, torch.full((), float("nan"), dtype=y.dtype))


def without_short_head(y: Tensor, min_periods: int, dilation: int) -> Tensor:
    """The same for gap-free rows, whose count is ``min(t // d + 1, K)``: a NaN head."""
    head = min(y.shape[-1], (min_periods - 1) * dilation)
    if head <= 0:
        return y
    if y.requires_grad:
        return torch.cat([torch.full_like(y[..., :head], float("nan")), y[..., head:]], dim=-1)
    y[..., :head] = float("nan")
    return y


def pack_slots(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Where :func:`pack_observed` puts each position (its observation's rank from 1, or the
    spare column 0 for a missing value), the number of observations up to and including
    each position, and the most observations in a row."""
    # x == x is false only for NaN; written as floats, with no boolean pass.
    present = torch.eq(
        x, x, out=torch.empty_like(x, dtype=x.dtype if x.shape[-1] <= 1 << 24 else torch.float64)
    )
    ordinal = present.cumsum(dim=-1).to(torch.int64)  # exact: float prefix sums of 0/1 below 2^24
    width = int(ordinal[..., -1].max()) if ordinal.numel() else 0
    return ordinal * present.to(torch.int64), ordinal, width


def pack_observed(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's observed values moved to its front, zero right-padded (causal: padding
    cannot change an output), and for every position the number of observations up to
    and including it (its last observation's packed index plus one)."""
    slot, ordinal, width = pack_slots(x)
    return pack(x, slot, width), ordinal


def pack(x: Tensor, slot: Tensor, width: int) -> Tensor:
    """``x``'s observed values at the columns :func:`pack_slots` gave them, zero-padded."""
    inf = float("inf")
    source = torch.nan_to_num(x, nan=0.0, posinf=inf, neginf=-inf)
    return x.new_zeros(*x.shape[:-1], width + 1).scatter_(-1, slot, source)[..., 1:]


def unpack(packed_output: Tensor, ordinal: Tensor) -> Tensor:
    """Position t's output is its last observation's (so a gap repeats it); NaN before any."""
    before = packed_output.new_full((*packed_output.shape[:-1], 1), float("nan"))
    extended = torch.cat([before, packed_output], dim=-1)  # index 0: no observation yet
    return extended.gather(-1, ordinal.expand(*packed_output.shape[:-1], ordinal.shape[-1]))
