"""Causal FIR filter banks computed as matrix products.

``causal_fir(x, taps)`` returns ``y[n, c, t] = sum_k taps[c, k] * x[n, t - k]`` with
``x[n, m] = 0`` for ``m < 0``.  It is the inference fast path behind :class:`ConvEWMA`.

Why not ``F.conv1d`` throughout: it wins only for short inputs; beyond about 64k values
the literal ``(N, 1, T)`` layout falls to about a hundred million outputs per second
on CPU, and the depth-wise ``(1, N, T)`` layout is fast only
for some channel counts and never for a filter bank (see ``benchmarks/README.md``).
Instead the series are laid end to end as one long signal and cut into rows of
``block`` outputs; each row's window of ``block + K - 1`` inputs spans a few whole
blocks of the same memory, so a few GEMMs of the (rows, block) view against slices of a
banded Toeplitz matrix compute every output of every channel, with no copy of the input.
Windows that straddle the start of a series see the previous series' tail; those first
few outputs of each series are recomputed afterwards from a small zero-padded copy.
GEMMs run over chunks of rows so their working set stays in cache.
"""

from __future__ import annotations

import torch

DEFAULT_BLOCK = 16
# Rows per GEMM call on CPU: about 2-4 MiB of float32 inputs, which keeps the 2-core
# benchmark machine's L2/L3 warm. On CUDA a single GEMM is best.
_CPU_ROWS_PER_CHUNK = 16384
# At or below this many (series x time x taps) elements, F.conv1d's small fixed cost wins
# over the GEMM's set-up (Toeplitz banks, head fix-up): about 64k values at K = 32.
_SMALL_PATH_ELEMENTS = 1 << 21


def toeplitz_bank(taps: torch.Tensor, block: int) -> torch.Tensor:
    """Banded Toeplitz matrix ``(block + K - 1, C * block)`` of a tap bank ``(C, K)``.

    Column ``c * block + i`` holds the taps of channel ``c`` for output ``i`` of a row
    whose window starts ``K - 1`` samples before the row's first output.
    """
    channels, kernel_size = taps.shape
    window = block + kernel_size - 1
    rows = torch.arange(window, device=taps.device).unsqueeze(1)
    cols = torch.arange(block, device=taps.device).unsqueeze(0)
    lag = cols + kernel_size - 1 - rows  # (window, block)
    inside = (lag >= 0) & (lag < kernel_size)
    gathered = taps[:, lag.clamp(0, kernel_size - 1)]  # (C, window, block)
    bank = torch.where(inside, gathered, gathered.new_zeros(()))
    return bank.permute(1, 0, 2).reshape(window, channels * block).contiguous()


def causal_conv1d(x: torch.Tensor, taps: torch.Tensor, groups: int = 1, dilation: int = 1) -> torch.Tensor:
    """Causal ``F.conv1d`` of ``x`` ``(N, C_in, T)`` with ``taps`` ``(C, K)`` in lag order,
    tap ``k`` at lag ``k * dilation``.

    The taps are flipped because ``conv1d`` is a cross-correlation; left padding by
    ``(K-1) * dilation`` keeps the output causal and as long as the input. Differentiable.
    """
    kernel_size = taps.shape[1]
    padded = torch.nn.functional.pad(x, ((kernel_size - 1) * dilation, 0))
    return torch.nn.functional.conv1d(padded, taps.flip(-1).unsqueeze(1), groups=groups, dilation=dilation)


def causal_fir_small(x: torch.Tensor, taps: torch.Tensor, dilation: int = 1) -> torch.Tensor:
    """Same result as :func:`causal_fir`; exact K multiply-adds per output.

    One ``F.conv1d`` (oneDNN on CPU). It has the least fixed cost, so it is the fastest
    way for short inputs (about 64k values and below on the benchmark machine) and
    beats the Toeplitz GEMM there.
    """
    return causal_conv1d(x.unsqueeze(1), taps, dilation=dilation)


def _series_heads(x_head: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Exact outputs for the first ``head`` samples of every series: one small GEMM."""
    series, head = x_head.shape
    channels, kernel_size = taps.shape
    padded = x_head.new_zeros(series, head + kernel_size - 1)
    padded[:, kernel_size - 1 :] = x_head
    return torch.mm(padded, toeplitz_bank(taps, head)).view(series, channels, head)


def causal_fir(
    x: torch.Tensor,
    taps: torch.Tensor,
    block: int = DEFAULT_BLOCK,
    fold: torch.Tensor | None = None,
    dilation: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal FIR bank: ``x`` ``(N, T)``, ``taps`` ``(C, K)`` (lag order) to ``(N, C, T)``,
    tap ``k`` at lag ``k * dilation``; written into ``out`` (contiguous ``(N, C, T)``) when
    given, directly where the blocks tile ``T`` exactly.

    ``fold`` ``(C,)`` may be given when the second half of every kernel is the first
    half scaled, ``taps[:, h:] == fold[:, None] * taps[:, :h]`` with ``h = K / 2`` (true
    of any geometric kernel such as the EWMA's).  When also ``h == block``, the GEMM
    uses the half kernel and ``y_t = z_t + fold * z_{t-h}`` finishes the job: a third
    fewer multiply-adds, the same sums regrouped (no subtraction, no cancellation).

    With a dilation ``d`` the outputs of phase ``t mod d`` only see inputs of that phase,
    so each series is dealt into ``d`` lanes of every ``d``-th value and each lane gets
    the dense K-tap filter: the multiply-adds of an undilated filter (a literal kernel of
    ``(K-1)d + 1`` taps would cost ``d`` times more).  The lanes' outputs are dealt back
    a chunk at a time, while they are still in cache.

    Inference only (uses ``out=`` GEMMs); returns a view trimmed to ``T`` when ``T`` is
    not a multiple of ``block * dilation``.
    """
    if x.dim() != 2 or taps.dim() != 2:
        raise ValueError(f"expected x (N, T) and taps (C, K), got {tuple(x.shape)} and {tuple(taps.shape)}")
    series, length = x.shape
    channels, kernel_size = taps.shape
    taps = taps.to(x.dtype)
    # Outputs t < head (of each lane) are recomputed from a zero-padded copy: their
    # windows reach into the previous lane (or before the start of memory).
    head_rows = -(-(kernel_size - 1) // block)
    head = head_rows * block
    lane_length = -(-length // dilation)
    if lane_length < head + block or series * length * kernel_size <= _SMALL_PATH_ELEMENTS:
        return into(causal_fir_small(x, taps, dilation), out)
    if dilation > 1 and channels == 1:
        # oneDNN's depth-wise convolution (one group per series) takes a dilation at about
        # the cost of none for one channel (a bank needs the lanes below: one group per
        # series and channel is several times slower); the lanes' transposing copies
        # would cost about as much as the filter (benchmarks/README.md).
        depthwise = causal_conv1d(x.unsqueeze(0), taps.expand(series, kernel_size), series, dilation)
        return into(depthwise.view(series, 1, length), out)

    blocks_per_lane = -(-lane_length // block)
    lane_padded = blocks_per_lane * block
    padded_length = lane_padded * dilation
    lanes = series * dilation
    if dilation > 1:
        # One strided copy deals the series into lanes; the zeros after each lane's end
        # (right padding cannot change a causal output) align its rows with the blocks.
        source = x.new_empty(series, dilation, lane_padded)
        whole = length // dilation
        source[:, :, :whole] = x[:, : whole * dilation].view(series, whole, dilation).transpose(1, 2)
        source[:, :, whole:] = 0.0
        if length > whole * dilation:
            source[:, : length - whole * dilation, whole] = x[:, whole * dilation :]
    elif padded_length != length:
        source = x.new_zeros(series, padded_length)
        source[:, :length] = x
    else:
        source = x.contiguous()
    flat = source.view(-1)
    total_rows = lanes * blocks_per_lane

    folded = fold is not None and kernel_size == 2 * block
    gemm_taps = taps[:, :block] if folded else taps
    reach = -(-(gemm_taps.shape[1] - 1) // block)  # earlier blocks a row's window reaches into
    # The bank, zero-padded at the top to whole blocks and cut into one (block, C * block)
    # matrix per input block: row j's output is sum_q blocks[j - reach + q] @ banks[q].
    bank = toeplitz_bank(gemm_taps, block)
    aligned = bank.new_zeros((reach + 1) * block, channels * block)
    aligned[aligned.shape[0] - bank.shape[0] :] = bank
    banks = aligned.view(reach + 1, block, channels * block)
    blocks = flat.view(total_rows, block)
    given = out
    if out is None or padded_length != length:
        out = x.new_empty(series, channels, padded_length)

    def accumulate(target: torch.Tensor, row_start: int, row_stop: int) -> None:
        # Non-overlapping input blocks are plain matrices that BLAS reads in place; an
        # overlapping strided window (stride < width) would be copied by every GEMM.
        torch.mm(blocks[row_start:row_stop], banks[reach], out=target)
        for q in range(reach):
            shift = reach - q
            low = max(row_start, shift)  # rows before the start of memory stay partial
            if low < row_stop:
                target[low - row_start :].addmm_(blocks[low - shift : row_stop - shift], banks[q])

    rows_per_chunk = total_rows if x.is_cuda else _CPU_ROWS_PER_CHUNK
    rows_per_series = blocks_per_lane * dilation
    series_per_chunk = max(1, rows_per_chunk // rows_per_series)
    chunk_rows = series_per_chunk * rows_per_series
    direct = channels == 1 and dilation == 1
    if not direct:
        # GEMM rows come out as (lane, block, channel, time-in-block); one reused scratch
        # buffer receives them before they are dealt into the (N, C, T) layout.
        scratch = x.new_empty(chunk_rows, channels * block)
    if folded:
        assert fold is not None
        half = x.new_empty(chunk_rows + 1, channels * block)  # half[i] is row row_start - 1 + i
        ratios = fold.to(x.dtype).repeat_interleave(block)
    for first in range(0, series, series_per_chunk):
        last = min(series, first + series_per_chunk)
        row_start, row_stop = first * rows_per_series, last * rows_per_series
        target = (
            out.view(total_rows, block)[row_start:row_stop] if direct else scratch[: row_stop - row_start]
        )
        if folded:
            z_first = max(row_start - 1, 0)
            z = half[: row_stop - row_start + 1]
            accumulate(z[z_first - row_start + 1 :], z_first, row_stop)
            y_first = max(row_start, head_rows) - row_start
            torch.addcmul(z[y_first + 1 :], z[y_first:-1], ratios, out=target[y_first:])
        else:
            accumulate(target, row_start, row_stop)
        if not direct:
            count = last - first
            dealt = target.view(count, dilation, blocks_per_lane, channels, block).permute(0, 3, 2, 4, 1)
            out[first:last].view(count, channels, blocks_per_lane, block, dilation).copy_(dealt)

    heads = _series_heads(source.view(lanes, lane_padded)[:, :head], taps)  # (lanes, C, head)
    out[:, :, : head * dilation].view(series, channels, head, dilation).copy_(
        heads.view(series, dilation, channels, head).permute(0, 2, 3, 1)
    )
    result = out[:, :, :length] if padded_length != length else out
    return into(result, given)


def into(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``result``, or ``out`` holding it (unless ``result`` was written there already)."""
    if out is None or (result.data_ptr() == out.data_ptr() and result.shape == out.shape):
        return result
    return out.copy_(result)
