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
