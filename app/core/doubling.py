"""Time-decayed window sums in log2(K) passes instead of K.

``A_j[p] = sum_{i < 2^j} v(p, p - i d) z[p - i d]``, the last ``2^j`` lags of position ``p``
each weighed by its decay ``v(p, m) = exp(scale * (tau_p - tau_m))``,
``scale = log(1 - alpha) / time_unit``, obeys
``A_{j+1}[p] = A_j[p] + v(p, p - 2^j d) A_j[p - 2^j d]``: the older half decays as one block
by the time between the two halves' newest positions. A window of ``n`` lags is the sum of
the blocks of ``n``'s binary digits, newest first, each decayed by the time since its newest
position. Every weight is at most 1 and every term is added, never subtracted: the rounding
is that of a sum of K terms, as in the unfolded K-pass form, in about ``3 log2(K)`` passes.
The block decays ``D_j[p] = v(p, p - 2^j d)`` double by products,
``D_{j+1}[p] = D_j[p] D_j[p - 2^j d]``, from one ``exp`` per position of the exact float64
differences one dilation apart: a multiplication where an ``exp`` of doubled ages was
(which cost a quarter of the time-aware forward), with ``j`` more roundings in ``D_j``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def first_decays(
    tau: Tensor, dilation: int, dtype: torch.dtype, scale: Tensor | float, before: Tensor | None = None
) -> Tensor:
    """``D_0[p] = exp(scale * (tau_p - tau_{p - d}))`` in ``dtype`` for ``p >= d`` (1 before),
    from ``tau`` ``(..., L)`` float64: exact differences, rounded once, then the ``exp``; a
    tensor ``scale`` (one per channel, ``(1, C, 1)``) widens the rows to the channels.
    ``before`` ``(..., P)``: the times of ``P`` positions ahead of ``tau``'s, read as if the
    two were one row (the same differences, without the copy of ``tau`` a join would take)."""
    d, ahead = dilation, 0 if before is None else before.shape[-1]
    length = ahead + tau.shape[-1]
    ages = tau.new_empty((*tau.shape[:-1], length), dtype=dtype)
    ages[..., :d] = 0.0
    if before is not None and ahead:
        if ahead > d:
            ages[..., d:ahead] = before[..., d:] - before[..., :-d]
        first, last = max(ahead, d), min(ahead + d, length)  # reaching back into ``before``
        if last > first:
            ages[..., first:last] = tau[..., first - ahead : last - ahead] - before[..., first - d : last - d]
    if length > ahead + d:
        ages[..., ahead + d :] = tau[..., d:] - tau[..., :-d]
    if isinstance(scale, Tensor):
        return torch.exp(ages * scale)  # (the gradient flows from ``scale``)
    return ages.mul_(scale).exp_()


def _older_decays(decays: Tensor, shift: int) -> Tensor:
    """``D_{j+1}`` from ``D_j`` (``shift = 2^j d``): the decays of two adjacent blocks multiplied."""
    if torch.is_grad_enabled() and decays.requires_grad:
        head = torch.ones_like(decays[..., : 2 * shift])
        return torch.cat((head, decays[..., 2 * shift :] * decays[..., shift:-shift]), dim=-1)
    doubled = torch.empty_like(decays)
    doubled[..., : 2 * shift] = 1.0  # (nor are the positions before 2 shift whole)
    torch.mul(decays[..., 2 * shift :], decays[..., shift:-shift], out=doubled[..., 2 * shift :])
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


def levels(
    z: Tensor, decays: Tensor, top: int, dilation: int, keep: set[int] | None = None
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``[A_0 .. A_top]`` of ``z`` ``(..., L)`` and ``[D_0 .. D_top]`` from ``decays`` = ``D_0``;
    with ``keep``, only the levels in it are kept (the others are None), so that the
    working set of a chunk stays in cache (a window of K lags reads the levels of K's
    binary digits, the top one always among them); the decays one more level than the sums."""
    found: list[Tensor | None] = [z if keep is None or 0 in keep else None]
    kept: list[Tensor | None] = [decays if keep is None or 0 in keep else None]
    blocks = z
    for level in range(top + 1):
        shift = 2**level * dilation
        if level < top:
            blocks = _double(blocks, decays[..., shift:], shift)
            found.append(blocks if keep is None or level + 1 in keep else None)
        if level + 1 <= top:
            decays = _older_decays(decays, shift)
            kept.append(decays if keep is None or level + 1 in keep else None)
    return found, kept


def count_levels(real: Tensor, top: int, dilation: int) -> list[Tensor]:
    """:func:`levels` with every weight 1: real observations among the last ``2^j`` lags."""
    found = [real]
    for level in range(top):
        found.append(_double(found[-1], None, 2**level * dilation))
    return found


def window(
    found: list[Tensor | None],
    decays: list[Tensor | None] | None,
    lags: int,
    dilation: int,
    start: int,
) -> Tensor:
    """``sum_{k < lags} v(q, q - k d) A_0[q - k d]`` for the outputs ``q = start ..`` (the
    same number of lags for every output; ``start >= (lags - 1) d``); no ``decays``: counts."""
    length = next(f for f in found if f is not None).shape[-1]
    total: Tensor | None = None
    decay: Tensor | None = None  # from each output to the newest position of the next block
    offset = 0
    for bit in range(len(found) - 1, -1, -1):
        if not lags >> bit & 1:
            continue
        blocks = found[bit]
        assert blocks is not None
        part = blocks[..., start - offset : length - offset]
        if decay is not None:
            part = part * decay
        total = part if total is None else total + part
        if decays is not None and bit and lags & (2**bit - 1):  # an older block follows
            older = decays[bit]
            assert older is not None
            step = older[..., start - offset : length - offset]
            decay = step if decay is None else decay * step
        offset += 2**bit * dilation
    assert total is not None
    return total


def ragged_window(
    found: list[Tensor | None],
    decays: list[Tensor | None] | None,
    lags: Tensor,
    dilation: int,
    start: int,
) -> Tensor:
    """:func:`window` with ``lags`` ``(N, 1 or S, T)`` of its own per output (1 to K)."""
    length = next(f for f in found if f is not None).shape[-1]
    source = torch.arange(start, length, device=lags.device).expand(lags.shape)
    lags = lags.to(torch.uint8)  # (at most 32: the bit tests read a byte per output)
    total: Tensor | None = None
    decay: Tensor | None = None
    for bit in range(len(found) - 1, -1, -1):
        taken = (lags & (1 << bit)).bool()
        if not bool(taken.any()):  # (short windows, as after a max_gap, skip the long blocks)
            continue
        blocks = found[bit]
        assert blocks is not None
        part = blocks.gather(-1, source.expand(*blocks.shape[:-1], source.shape[-1]))
        # The weight is 0 where this block is not taken: a where on the weights, not on the sums.
        weight = taken.to(part.dtype) if decay is None else decay * taken
        part = part * weight
        total = part if total is None else total + part
        older = decays[bit] if decays is not None and 0 < bit < len(decays) else None
        if older is not None:  # (an older block may follow; one not taken decays by 1)
            reached = older.gather(-1, source.expand(*older.shape[:-1], source.shape[-1]))
            step = torch.where(taken, reached, 1.0)
            decay = step if decay is None else decay * step
        # (below 0 only where no block is left to take)
        source = (source - taken * (2**bit * dilation)).clamp_(min=0)
    assert total is not None
    return total
