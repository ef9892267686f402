"""Time-decayed window sums in log2(K) passes instead of K.

``A_j[p] = sum_{i < 2^j} v(p, p - i d) z[p - i d]``, the last ``2^j`` lags of position ``p``
each weighed by its decay ``v(p, m) = exp(scale * (tau_p - tau_m))``,
``scale = log(1 - alpha) / time_unit``, obeys
``A_{j+1}[p] = A_j[p] + v(p, p - 2^j d) A_j[p - 2^j d]``: the older half decays as one block
by the time between the two halves' newest positions. A window of ``n`` lags is the sum of
the blocks of ``n``'s binary digits, newest first, each decayed by the time since its newest
position. Every weight is at most 1 and every term is added, never subtracted: the rounding
is that of a sum of K terms, as in the unfolded K-pass form, in about ``3 log2(K)`` passes.
The ages ``tau_p - tau_{p - 2^j d}`` double the same way, from the exact float64
differences one dilation apart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def age_levels(
    tau: Tensor, count: int, dilation: int, dtype: torch.dtype, scale: float = 1.0
) -> list[Tensor]:
    """``[G_0 .. G_{count-1}]``: ``G_j[p] = scale * (tau_p - tau_{p - 2^j d})`` in ``dtype``
    for ``p >= 2^j d`` (0 before), from ``tau`` ``(..., L)`` float64."""
    first = tau.new_empty(tau.shape, dtype=dtype)
    first[..., :dilation] = 0.0
    first[..., dilation:] = tau[..., dilation:] - tau[..., :-dilation]
    if scale != 1.0:
        first *= scale
    ages = [first]
    for level in range(count - 1):
        shift = 2**level * dilation
        newer = ages[-1]
        doubled = torch.empty_like(newer)
        doubled[..., : 2 * shift] = 0.0  # (nor are the positions before 2 shift whole)
        torch.add(newer[..., 2 * shift :], newer[..., shift:-shift], out=doubled[..., 2 * shift :])
        ages.append(doubled)
    return ages


def _double(blocks: Tensor, weights: Tensor | None, shift: int) -> Tensor:
    """``A_{j+1}`` from ``A_j`` ``(..., L)`` and ``v(p, p - shift)`` (no weights: counts)."""
    newer, older = blocks[..., shift:], blocks[..., :-shift]
    if torch.is_grad_enabled() and (blocks.requires_grad or (weights is not None and weights.requires_grad)):
        tail = newer + older if weights is None else torch.addcmul(newer, weights, older)
        head = blocks[..., :shift].expand(*tail.shape[:-1], min(shift, blocks.shape[-1]))
        return torch.cat((head, tail), dim=-1)
    # A bank's inputs (one series per row) widen to one row per channel at the first level.
    wide = weights is not None and weights.shape[-2] > blocks.shape[-2]
    rows = weights.shape[-2] if weights is not None and wide else blocks.shape[-2]
    out = blocks.new_empty((*blocks.shape[:-2], rows, blocks.shape[-1]))
    out[..., :shift] = blocks[..., :shift]
    if weights is None:
        torch.add(newer, older, out=out[..., shift:])
    else:
        torch.addcmul(newer, weights, older, out=out[..., shift:])
    return out


Weigh = Callable[[Tensor], Tensor]
"""The decay ``v`` of an age (``exp(scale * age)``)."""


def levels(z: Tensor, ages: list[Tensor], weigh: Weigh, top: int, dilation: int) -> list[Tensor]:
    """``[A_0 .. A_top]`` of ``z`` ``(..., L)``."""
    found = [z]
    for level in range(top):
        shift = 2**level * dilation
        found.append(_double(found[-1], weigh(ages[level][..., shift:]), shift))
    return found


def count_levels(real: Tensor, top: int, dilation: int) -> list[Tensor]:
    """:func:`levels` with every weight 1: real observations among the last ``2^j`` lags."""
    found = [real]
    for level in range(top):
        found.append(_double(found[-1], None, 2**level * dilation))
    return found


def window(
    found: list[Tensor], ages: list[Tensor], weigh: Weigh | None, lags: int, dilation: int, start: int
) -> Tensor:
    """``sum_{k < lags} v(q, q - k d) A_0[q - k d]`` for the outputs ``q = start ..`` (the
    same number of lags for every output; ``start >= (lags - 1) d``)."""
    length = found[0].shape[-1]
    total: Tensor | None = None
    age: Tensor | None = None  # from each output to the newest position of the next block
    offset = 0
    for bit in range(len(found) - 1, -1, -1):
        if not lags >> bit & 1:
            continue
        part = found[bit][..., start - offset : length - offset]
        if age is not None and weigh is not None:
            part = part * weigh(age)
        total = part if total is None else total + part
        if weigh is not None and bit and lags & (2**bit - 1):  # an older block follows
            step = ages[bit][..., start - offset : length - offset]
            age = step if age is None else age + step
        offset += 2**bit * dilation
    assert total is not None
    return total


def ragged_window(
    found: list[Tensor], ages: list[Tensor], weigh: Weigh | None, lags: Tensor, dilation: int, start: int
) -> Tensor:
    """:func:`window` with ``lags`` ``(N, 1 or S, T)`` of its own per output (1 to K)."""
    length = found[0].shape[-1]
    source = torch.arange(start, length, device=lags.device).expand(lags.shape)
    lags = lags.to(torch.uint8)  # (at most 32: the bit tests read a byte per output)
    total: Tensor | None = None
    age: Tensor | None = None
    for bit in range(len(found) - 1, -1, -1):
        taken = (lags & (1 << bit)).bool()
        if not bool(taken.any()):  # (short windows, as after a max_gap, skip the long blocks)
            continue
        blocks = found[bit]
        part = blocks.gather(-1, source.expand(*blocks.shape[:-1], source.shape[-1]))
        # The weight is 0 where this block is not taken: a where on the weights, not on the sums.
        weight = taken.to(part.dtype) if age is None or weigh is None else weigh(age) * taken
        part = part * weight
        total = part if total is None else total + part
        if 0 < bit < len(ages):  # (an older block may follow)
            step = ages[bit].gather(-1, source) * taken
            age = step if age is None else age + step
        # (below 0 only where no block is left to take)
        source = (source - taken * (2**bit * dilation)).clamp_(min=0)
    assert total is not None
    return total
