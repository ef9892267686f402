"""How much of a time-decayed EWMA's weight the K-tap window drops, on given times.

The plain layer drops ``(1 - alpha)^K`` of an untruncated EWMA's weight, whatever the data
(``equivalents``). With times the share depends on the spacing: for output ``t`` it is
``v(t, t - K d) S_{t - K d} / S_t``, where ``S_t = sum_{k >= 0} v(t, t - k d)`` over the
series' own past obeys ``S_t = 1 + v(t, t - d) S_{t - d}`` (tests/reference.py,
``times_dropped_mass``, is the definition). A report, not a forward: the recursion runs
once over the time axis in float64, ``d`` positions a step.
"""

from __future__ import annotations

import numpy as np


def dropped_mass(
    times: np.ndarray, alphas: np.ndarray, kernel_size: int, dilation: int, time_unit: float
) -> np.ndarray:
    """``(C, N, T)`` dropped shares for ``times`` ``(N, T)`` (seconds) and ``alphas`` ``(C,)``."""
    tau = np.asarray(times, dtype=np.float64)
    scale = np.log1p(-np.asarray(alphas, dtype=np.float64))[:, None, None] / time_unit  # (C, 1, 1)
    length, d = tau.shape[-1], dilation
    step = np.exp(scale * (tau[:, d:] - tau[:, :-d]))  # v(t, t - d), (C, N, T - d)
    total = np.ones((scale.shape[0], *tau.shape))
    for start in range(d, length, d):
        width = min(d, length - start)  # (the last step may hold fewer than d positions)
        earlier = slice(start - d, start - d + width)
        total[..., start : start + width] += step[..., earlier] * total[..., earlier]
    reach = kernel_size * d
    out = np.zeros_like(total)
    if reach < length:  # v(t, t - K d) S_{t - K d}: the lags past the window
        beyond = np.exp(scale * (tau[:, reach:] - tau[:, :-reach])) * total[..., :-reach]
        out[..., reach:] = beyond / total[..., reach:]
    return out
