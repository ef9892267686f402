"""The options of one smoothing request, resolved: what every series of a batch shares.

``SmoothOptions`` is frozen and hashable, and it is the batch key: the batcher only puts
series with equal options in one forward, so warm-up modes, gap modes, ``min_periods``,
precisions, strides and time-aware requests (with their ``max_gap``) never mix. How series
pair with channels is not part of it: every batch runs the whole filter bank and the service
picks the channels afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from app.core.ewma import Gaps, Warmup

DType = Literal["float32", "float64"]
DTYPES: tuple[str, ...] = get_args(DType)
Pairing = Literal["bank", "each"]
PAIRINGS: tuple[str, ...] = get_args(Pairing)


@dataclass(frozen=True)
class SmoothOptions:
    warmup: Warmup
    gaps: Gaps = "decay"
    min_periods: int = 1
    dtype: DType = "float32"
    stride: int = 1
    # Time-aware: each row is (values, times); such batches never mix with plain ones.
    timed: bool = False
    max_gap: float | None = None

    @property
    def numpy_dtype(self) -> type[np.floating]:
        return np.float64 if self.dtype == "float64" else np.float32

    def output_length(self, length: int) -> int:
        """Outputs of a series of ``length`` values: positions ``0, s, 2s, ...`` before it ends."""
        return -(-length // self.stride)
