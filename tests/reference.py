"""Independent float64 NumPy reference for ConvEWMA, written from the issue's formulas.

Deliberately naive (explicit sums over lags) and sharing no code with ``app``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_WEIGHTS = REPO_ROOT / "app" / "models" / "convewma.safetensors"  # package data
MODEL_CARD = REPO_ROOT / "models" / "README.md"


def alphas_from_logits(logits: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return (1.0 - 2.0 * eps) / (1.0 + np.exp(-logits)) + eps


@dataclass(frozen=True)
class WeightsFile:
    """What a ConvEWMA safetensors file holds, read with ``safetensors`` alone (no ``app``)."""

    logits: np.ndarray  # (C,) as stored, widened to float64
    logits_dtype: str  # as stored: "float32"
    channels: tuple[str, ...]
    kernel_size: int
    normalize: bool
    warmup: str
    eps: float
    metadata: dict[str, str]

    @property
    def alphas(self) -> np.ndarray:
        return alphas_from_logits(self.logits, self.eps)


def read_weights_file(path: str | Path) -> WeightsFile:
    with safe_open(str(path), framework="numpy") as handle:
        metadata = dict(handle.metadata())
        logits = handle.get_tensor("logits")
    return WeightsFile(
        logits=np.asarray(logits, dtype=np.float64),
        logits_dtype=str(logits.dtype),
        channels=tuple(json.loads(metadata["channels"])),
        kernel_size=int(metadata["kernel_size"]),
        normalize=json.loads(metadata["normalize"]),
        warmup=metadata["warmup"],
        eps=float(metadata["eps"]),
        metadata=metadata,
    )


def ewma_reference(
    x: np.ndarray, alpha: float, kernel_size: int, warmup: str = "zeros", normalize: bool = True
) -> np.ndarray:
    """Smooth one series ``x`` (T,) with one alpha; returns (T,) float64."""
    x = np.asarray(x, dtype=np.float64)
    weights = alpha * (1.0 - alpha) ** np.arange(kernel_size, dtype=np.float64)
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        lags = np.arange(min(t, kernel_size - 1) + 1)
        numerator = float(np.sum(weights[lags] * x[t - lags]))
        if warmup == "adjust":
            out[t] = numerator / weights[lags].sum()
        elif normalize:
            out[t] = numerator / weights.sum()
        else:
            out[t] = numerator
    return out


def bank_reference(
    x: np.ndarray, alphas: np.ndarray, kernel_size: int, warmup: str = "zeros", normalize: bool = True
) -> np.ndarray:
    """(N, T) series smoothed by every alpha: (N, C, T)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return np.stack(
        [np.stack([ewma_reference(row, a, kernel_size, warmup, normalize) for a in alphas]) for row in x]
    )


def fir_reference(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """y[n, c, t] = sum_k taps[c, k] x[n, t - k], zeros before the start: (N, C, T)."""
    x = np.asarray(x, dtype=np.float64)
    taps = np.asarray(taps, dtype=np.float64)
    series, length = x.shape
    out = np.zeros((series, taps.shape[0], length))
    for k in range(min(taps.shape[1], length)):
        out[:, :, k:] += taps[None, :, k, None] * x[:, None, : length - k]
    return out


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Normwise relative error: max |actual - expected| / max |expected|."""
    actual = np.asarray(actual, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(actual - expected))) / scale


# --- Real-world series (issue 10): gaps, min_periods, dilation, stride, continuation ---


def held(x: np.ndarray, observed: np.ndarray, compact: np.ndarray) -> np.ndarray:
    """``gaps="skip"``: the outputs ``compact`` of the observed positions, each repeated at the
    missing positions after it (NaN before the first observation)."""
    full = np.full(x.shape[0], np.nan)
    full[observed] = compact
    for t in range(1, x.shape[0]):
        if np.isnan(x[t]):
            full[t] = full[t - 1]
    return full


def smooth_reference(
    x: np.ndarray,
    alpha: float,
    kernel_size: int,
    warmup: str = "zeros",
    normalize: bool = True,
    *,
    gaps: str = "decay",
    min_periods: int = 1,
    dilation: int = 1,
    stride: int = 1,
) -> np.ndarray:
    """One series ``x`` (T,), NaN = missing, smoothed by one alpha: (ceil(T / stride),) float64.

    ``W_t`` holds the lags k < K whose value ``x[t - k d]`` is observed; in ``zeros`` mode a
    position before the start is an observed zero (not a real observation), in ``adjust``
    mode it does not exist. ``y_t = sum_{W_t} w_k x / sum_{W_t} w_k`` (raw ``zeros``: the
    numerator alone); missing where fewer than ``max(1, min_periods)`` real observations
    are in the window. ``gaps="skip"``: the observed values are smoothed as if adjacent; a
    missing position repeats the output before it (NaN before the first observation).
    """
    x = np.asarray(x, dtype=np.float64)
    length = x.shape[0]
    if gaps == "skip":
        observed = np.flatnonzero(~np.isnan(x))
        compact = smooth_reference(
            x[observed], alpha, kernel_size, warmup, normalize, min_periods=min_periods, dilation=dilation
        )
        return held(x, observed, compact)[::stride]
    if gaps != "decay":
        raise ValueError(gaps)
    weights = alpha * (1.0 - alpha) ** np.arange(kernel_size, dtype=np.float64)
    out = np.empty(length)
    for t in range(length):
        numerator = denominator = 0.0
        real = 0
        for k in range(kernel_size):
            m = t - k * dilation
            if m < 0:
                if warmup == "zeros":
                    denominator += weights[k]
                continue
            if np.isnan(x[m]):
                continue
            numerator += weights[k] * x[m]
            denominator += weights[k]
            real += 1
        if real < max(1, min_periods):
            out[t] = np.nan
        elif warmup == "adjust" or normalize:
            out[t] = numerator / denominator
        else:
            out[t] = numerator
    return out[::stride]


def continuation_reference(
    history: np.ndarray, series: np.ndarray, alpha: float, kernel_size: int, **options: object
) -> np.ndarray:
    """``smooth(history + series)`` without the history's outputs: output positions are
    counted from the start of the history, so with a stride they keep its phase."""
    stride = int(options.get("stride", 1))  # type: ignore[call-overload]
    full = smooth_reference(np.concatenate([history, series]), alpha, kernel_size, **options)  # type: ignore[arg-type]
    first = -(-len(history) // stride)  # the first output position at or after the history
    return full[first:]


def pandas_equivalents(alpha: float, kernel_size: int) -> dict[str, float]:
    """pandas' span, halflife and com for ``alpha``, and the kernel mass K taps drop."""
    return {
        "span": 2.0 / alpha - 1.0,
        "halflife": float(np.log(0.5) / np.log1p(-alpha)),
        "com": 1.0 / alpha - 1.0,
        "truncated_mass": (1.0 - alpha) ** kernel_size,
    }


def local_level_optimum(q: float) -> float:
    """Optimal SES alpha for a local level model with signal-to-noise ratio ``q``."""
    return float((-q + np.sqrt(q * q + 4.0 * q)) / 2.0)


def history_tail_reference(
    values: np.ndarray, kernel_size: int, *, dilation: int = 1, gaps: str = "decay", stride: int = 1
) -> np.ndarray:
    """What a response returns as ``history``: the shortest raw tail of ``values`` (NaN =
    missing) that gives every later output, its length congruent to ``len(values)``
    modulo ``stride`` so that output positions keep their phase.

    ``decay``: the last ``(K-1)d`` values (plus up to ``stride - 1`` more for the phase),
    or all when fewer exist. ``skip``: the last ``(K-1)d + 1`` observed values (later
    outputs, and the repeat of the last output at a missing position, see only those),
    preceded by as many missing values as the phase needs (missing values change nothing
    under ``skip``).
    """
    values = np.asarray(values, dtype=np.float64)
    total = len(values)
    reach = (kernel_size - 1) * dilation
    if gaps == "skip":
        observed = values[~np.isnan(values)]
        kept = observed[len(observed) - min(len(observed), reach + 1) :]
        pad = (total - len(kept)) % stride
        return np.concatenate([np.full(pad, np.nan), kept])
    if total <= reach:
        return values.copy()
    return values[total - (reach + (total - reach) % stride) :]


# --- Irregular timestamps (issue 12): decay by elapsed time ---


def smooth_times_reference(
    x: np.ndarray,
    times: np.ndarray,
    alpha: float,
    kernel_size: int,
    warmup: str = "zeros",
    normalize: bool = True,
    *,
    time_unit: float = 1.0,
    gaps: str = "decay",
    min_periods: int = 1,
    dilation: int = 1,
    stride: int = 1,
    max_gap: float | None = None,
) -> np.ndarray:
    """``smooth_reference`` with lag weights decayed by elapsed time: (ceil(T / stride),).

    ``times`` (T,) strictly increasing. Lag ``k`` of step ``t`` weighs
    ``v = (1 - alpha) ** ((tau_t - tau_m) / time_unit)`` with ``m = t - k d``; ``alpha``
    is per ``time_unit``. In ``zeros`` mode a position ``m < 0`` is an observed zero at
    ``tau_0 + m * time_unit`` (the grid continued backwards). A lag older than ``max_gap``
    (``tau_t - tau_m > max_gap``) is out of the window. ``y_t = sum v x / sum v`` over the
    window; raw ``zeros``: ``alpha * sum v x``. ``gaps="skip"``: the observed values with
    their own times, as if adjacent; a missing position repeats the output before it.
    """
    x = np.asarray(x, dtype=np.float64)
    tau = np.asarray(times, dtype=np.float64)
    length = x.shape[0]
    if gaps == "skip":
        observed = np.flatnonzero(~np.isnan(x))
        compact = smooth_times_reference(
            x[observed],
            tau[observed],
            alpha,
            kernel_size,
            warmup,
            normalize,
            time_unit=time_unit,
            min_periods=min_periods,
            dilation=dilation,
            max_gap=max_gap,
        )
        return held(x, observed, compact)[::stride]
    if gaps != "decay":
        raise ValueError(gaps)
    out = np.empty(length)
    for t in range(length):
        numerator = denominator = 0.0
        real = 0
        for k in range(kernel_size):
            m = t - k * dilation
            if m < 0 and warmup != "zeros":
                continue
            at = tau[0] + m * time_unit if m < 0 else tau[m]
            if max_gap is not None and tau[t] - at > max_gap:
                continue
            if m >= 0 and np.isnan(x[m]):
                continue
            weight = (1.0 - alpha) ** ((tau[t] - at) / time_unit)
            denominator += weight
            if m >= 0:
                numerator += weight * x[m]
                real += 1
        if real < max(1, min_periods):
            out[t] = np.nan
        elif warmup == "adjust" or normalize:
            out[t] = numerator / denominator
        else:
            out[t] = alpha * numerator
    return out[::stride]


def halflife_of(alpha: float, time_unit: float = 1.0) -> float:
    """The half-life, in seconds, of a factor ``alpha`` per ``time_unit`` seconds."""
    return time_unit * float(np.log(0.5) / np.log1p(-alpha))


def times_dropped_mass(
    times: np.ndarray, alpha: float, kernel_size: int, *, time_unit: float = 1.0, dilation: int = 1
) -> np.ndarray:
    """(T,): for each ``t``, the share of an untruncated time-decayed EWMA's weight over the
    series' own past (lags ``k >= 0`` with ``t - k d >= 0``) that the K-tap window drops:
    ``sum_{k >= K} v / sum_{k >= 0} v``, ``v = (1 - alpha) ** ((tau_t - tau_{t-kd}) / time_unit)``.
    On a grid one ``time_unit`` apart it tends to the plain ``(1 - alpha)^K``."""
    tau = np.asarray(times, dtype=np.float64)
    out = np.zeros(tau.shape[0])
    for t in range(tau.shape[0]):
        weights = np.array(
            [
                (1.0 - alpha) ** ((tau[t] - tau[t - k * dilation]) / time_unit)
                for k in range(t // dilation + 1)
            ]
        )
        out[t] = weights[kernel_size:].sum() / weights.sum()
    return out
