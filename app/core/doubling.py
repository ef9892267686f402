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


def first_ages(tau: Tensor, dilation: int, dtype: torch.dtype, scale: float = 1.0) -> Tensor:
    """``G_0[p] = scale * (tau_p - tau_{p - d})`` in ``dtype`` for ``p >= d`` (0 before), from
    ``tau`` ``(..., L)`` float64: exact differences, rounded once."""
    first = tau.new_empty(tau.shape, dtype=dtype)
    first[..., :dilation] = 0.0
    first[..., dilation:] = tau[..., dilation:] - tau[..., :-dilation]
    if scale != 1.0:
        first *= scale
    return first


def _older_ages(ages: Tensor, shift: int) -> Tensor:
    """``G_{j+1}`` from ``G_j`` (``shift = 2^j d``): the ages of two adjacent blocks added."""
    doubled = torch.empty_like(ages)
    doubled[..., : 2 * shift] = 0.0  # (nor are the positions before 2 shift whole)
    torch.add(ages[..., 2 * shift :], ages[..., shift:-shift], out=doubled[..., 2 * shift :])
    return doubled


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


def levels(
    z: Tensor, ages: Tensor, weigh: Weigh, top: int, dilation: int, keep: set[int] | None = None
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``[A_0 .. A_top]`` of ``z`` ``(..., L)`` and ``[G_0 .. G_top]`` from ``ages`` = ``G_0``;
    with ``keep``, only the levels in it are kept (the others are None), so that the
    working set of a chunk stays in cache; the ages one more level than the sums."""
    found: list[Tensor | None] = [z if keep is None or 0 in keep else None]
    kept: list[Tensor | None] = [ages if keep is None or 0 in keep else None]
    blocks = z
    for level in range(top + 1):
        shift = 2**level * dilation
        if level < top:
            blocks = _double(blocks, weigh(ages[..., shift:]), shift)
            found.append(blocks if keep is None or level + 1 in keep else None)
        if level + 1 <= top:
            ages = _older_ages(ages, shift)
            kept.append(ages if keep is None or level + 1 in keep else None)
    if keep is not None and top not in keep:
        found[top] = blocks
    return found, kept


def count_levels(real: Tensor, top: int, dilation: int) -> list[Tensor]:
    """:func:`levels` with every weight 1: real observations among the last ``2^j`` lags."""
    found = [real]
    for level in range(top):
        found.append(_double(found[-1], None, 2**level * dilation))
    return found


def window(
    found: list[Tensor | None],
    ages: list[Tensor | None],
    weigh: Weigh | None,
    lags: int,
    dilation: int,
    start: int,
) -> Tensor:
    """``sum_{k < lags} v(q, q - k d) A_0[q - k d]`` for the outputs ``q = start ..`` (the
    same number of lags for every output; ``start >= (lags - 1) d``)."""
    length = next(f for f in found if f is not None).shape[-1]
    total: Tensor | None = None
    age: Tensor | None = None  # from each output to the newest position of the next block
    offset = 0
    for bit in range(len(found) - 1, -1, -1):
        if not lags >> bit & 1:
            continue
        blocks = found[bit]
        assert blocks is not None
        part = blocks[..., start - offset : length - offset]
        if age is not None and weigh is not None:
            part = part * weigh(age)
        total = part if total is None else total + part
        if weigh is not None and bit and lags & (2**bit - 1):  # an older block follows
            older = ages[bit]
            assert older is not None
            step = older[..., start - offset : length - offset]
            age = step if age is None else age + step
        offset += 2**bit * dilation
    assert total is not None
    return total


def ragged_window(
    found: list[Tensor | None],
    ages: list[Tensor | None],
    weigh: Weigh | None,
    lags: Tensor,
    dilation: int,
    start: int,
) -> Tensor:
    """:func:`window` with ``lags`` ``(N, 1 or S, T)`` of its own per output (1 to K)."""
    length = next(f for f in found if f is not None).shape[-1]
    source = torch.arange(start, length, device=lags.device).expand(lags.shape)
    lags = lags.to(torch.uint8)  # (at most 32: the bit tests read a byte per output)
    total: Tensor | None = None
    age: Tensor | None = None
    for bit in range(len(found) - 1, -1, -1):
        taken = (lags & (1 << bit)).bool()
        if not bool(taken.any()):  # (short windows, as after a max_gap, skip the long blocks)
            continue
        blocks = found[bit]
        assert blocks is not None
        part = blocks.gather(-1, source.expand(*blocks.shape[:-1], source.shape[-1]))
        # The weight is 0 where this block is not taken: a where on the weights, not on the sums.
        weight = taken.to(part.dtype) if age is None or weigh is None else weigh(age) * taken
        part = part * weight
        total = part if total is None else total + part
        older = ages[bit] if 0 < bit < len(ages) else None
        if older is not None:  # (an older block may follow)
            step = older.gather(-1, source) * taken
            age = step if age is None else age + step
        # (below 0 only where no block is left to take)
        source = (source - taken * (2**bit * dilation)).clamp_(min=0)
    assert total is not None
    return total
