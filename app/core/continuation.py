"""Continuation: smoothing a series in chunks, each sent with the tail of what came before.

``smooth(history + series)`` with the history's outputs dropped is exact; the tail a
response returns is the shortest one that keeps every later output unchanged, and its
length keeps the phase of strided output positions (positions are counted from the start
of the history).
"""

from __future__ import annotations

import numpy as np

from app.core.ewma import Gaps


def first_output(history_length: int, stride: int) -> int:
    """Index of the first output at or after the end of a history of that length."""
    return -(-history_length // stride)


def history_tail(
    values: np.ndarray, kernel_size: int, *, dilation: int = 1, gaps: Gaps = "decay", stride: int = 1
) -> np.ndarray:
    """The ``history`` to send with the next chunk after ``values`` (1-D, NaN = missing).

    ``decay``: an output sees ``(K-1)d`` values back, so those are kept (a few more, under
    ``stride``, so that the kept length is congruent to the full one). ``skip``: missing
    values take no part, and a missing value repeats the last output, whose window holds
    the last ``(K-1)d + 1`` observations; those are kept, after as many missing values as
    the phase needs.
    """
    reach = (kernel_size - 1) * dilation
    total = values.shape[0]
    if gaps == "skip":
        observed = values[~np.isnan(values)]
        kept = observed[max(0, observed.shape[0] - reach - 1) :]
        phase = (total - kept.shape[0]) % stride
        return np.concatenate([np.full(phase, np.nan, dtype=values.dtype), kept])
    keep = total if total <= reach else reach + (total - reach) % stride
    return values[total - keep :].copy()


def timed_tail(
    values: np.ndarray,
    times: np.ndarray,
    kernel_size: int,
    *,
    dilation: int = 1,
    gaps: Gaps = "decay",
    stride: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``history`` and ``history_times`` for the next chunk after ``values`` at ``times``.

    A contiguous suffix, so that every kept value keeps its own time: ``decay``, the
    ``(K-1)d`` values an output sees back (as :func:`history_tail`); ``skip``, from the
    ``(K-1)d + 1``-th last observation on (missing values between them included, as they
    take no part). Lengthened so that its length is congruent to the full one's under
    ``stride``. A window after it never reaches before it: neither the values nor the
    zeros before the start (on the grid continued back from its first time) change.
    """
    reach = (kernel_size - 1) * dilation
    total = values.shape[0]
    if gaps == "skip":
        observed = np.flatnonzero(~np.isnan(values))
        start = int(observed[max(0, observed.shape[0] - reach - 1)]) if observed.size else total
    else:
        start = max(0, total - reach)
    keep = total - start
    keep += (total - keep) % stride
    return values[total - keep :].copy(), times[total - keep :].copy()
