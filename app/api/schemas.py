"""The REST contract: request parsing with precise errors, and models for the OpenAPI docs.

``POST /smooth`` bodies are parsed with orjson and checked by hand rather than by a
pydantic model: building a Python object per value is what makes generic endpoints
slow, and hand checks can say exactly which series and index is wrong.  The pydantic
models below document the same contract in ``/docs``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from app.core.ewma import Gaps, Warmup
from app.serving.options import DType, Pairing

FLOAT32_MAX = float(np.finfo(np.float32).max)


EXCERPT_CHARS = 40


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages never echo much input."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RequestError(Exception):
    """A client error: HTTP status plus a JSON-serialisable detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class RequestLimits:
    max_series: int
    max_length: int


@dataclass(frozen=True)
class SmoothJob:
    """A parsed, validated ``/smooth`` body; the service resolves its defaults."""

    series: list[np.ndarray]  # 1-D, non-empty, of ``dtype``, NaN = missing, no infinity
    channels: list[int]  # model channel indices, in the order asked (pairing "each": one per series)
    warmup: Warmup | None  # None: the model's default
    history: list[np.ndarray] | None = None  # one per series, may be empty; None: not sent
    pairing: Pairing = "bank"
    gaps: Gaps = "decay"
    min_periods: int = 1  # >= 0; the service checks it against the kernel size
    dtype: DType = "float32"
    stride: int = 1
    times: list[np.ndarray] | None = None  # float64 seconds, one per series, strictly increasing
    history_times: list[np.ndarray] | None = None  # with times and history: one per history
    max_gap: float | None = None  # seconds; only with times


NUMBERS = "numbers or null (a missing value)"


class SmoothRequest(BaseModel):
    """Series to smooth, and how."""

    series: list[list[float | None]] = Field(
        description=f"one or more non-empty series of {NUMBERS}; finite, in the float32 range unless "
        "'dtype' is float64"
    )
    channels: list[str | int] | None = Field(
        None,
        description="channels by name or index (see GET /alphas). pairing bank: each at most once, "
        "default all in the model's order; pairing each: required, one per series (series[i] is "
        "smoothed by channels[i] only; a channel may serve several series)",
    )
    pairing: Pairing = Field(
        "bank",
        description="bank: every series by every chosen channel; each: series[i] by channels[i] only",
    )
    warmup: Warmup | None = Field(
        None,
        description="zeros: values before the start count as zero; adjust: the weights are "
        "renormalised over the values seen so far (pandas' ewm adjust=True); default the model's "
        "(GET /alphas)",
    )
    gaps: Gaps = Field(
        "decay",
        description="how a missing value (null) is treated. decay: it is a step that passes, older "
        "values keep decaying and the weights are renormalised over the observed ones (pandas "
        "ignore_na=False); skip: the observed values are smoothed as if adjacent, and a missing "
        "position repeats the output before it (pandas ignore_na=True)",
    )
    min_periods: int = Field(
        1,
        ge=0,
        description="an output is null where fewer real observations are in its window (0 to the "
        "kernel size; 0 behaves as 1: a window without any observation is always null)",
    )
    dtype: DType = Field("float32", description="precision of the computation and of the answer's values")
    stride: int = Field(
        1,
        ge=1,
        description="answer every stride-th output only: positions 0, s, 2s, ... (counted from the "
        "start of the history when one is sent); at most the series length limit",
    )
    history: list[list[float | None]] | None = Field(
        None,
        description=f"one list per series ({NUMBERS}, may be empty): the raw values that came just "
        "before it, oldest first, as the previous answer's history returned them. The answer is "
        "that of history + series without the history's outputs, and carries the history for the "
        "next chunk",
    )
    times: list[list[float | str]] | None = Field(
        None,
        description="one list per series, as long as it: the time of each value, strictly increasing, "
        "as seconds (any epoch) or RFC 3339 strings with a UTC offset (2024-05-01T12:00:00.25Z; read "
        "by Python's datetime.fromisoformat, which takes other ISO 8601 forms too; finer than "
        "microseconds is cut to microseconds). Each lag then decays by the time that passed: weight "
        "(1 - alpha) ** (age / time_unit), alpha per time_unit seconds (GET /alphas); time-aware "
        "requests batch only with each other",
    )
    history_times: list[list[float | str]] | None = Field(
        None,
        description="with 'times' and 'history': the times of each history's values, before the "
        "series' first time (the previous answer's history_times)",
    )
    max_gap: float | None = Field(
        None,
        gt=0,
        description="seconds, with 'times': a lag older than this is out of the window (a reset after "
        "an outage); an output whose window then holds no observation is null",
    )


class SmoothResponse(BaseModel):
    """The smoothed series, with the channels and alphas that made them."""

    smoothed: list[list[list[float | None]]] = Field(
        description="smoothed[i][j]: series i smoothed by channels[j] (pairing each: j = 0 only), "
        "ceil(length / stride) values (with a history: the outputs after it); null where missing"
    )
    channels: list[str] = Field(
        description="the channels used, in the order asked (pairing each: one per series, in series order)"
    )
    alphas: list[float] = Field(description="the smoothing factor of each of those channels")
    model_version: str = Field(description="sha256 of the weights file")
    history: list[list[float | None]] | None = Field(
        None,
        description="only when the request had a history: for each series, the raw tail of history "
        "+ series to send as the next request's history",
    )
    history_times: list[list[float]] | None = Field(
        None,
        description="only when the request had a history and times: the times of that tail, in "
        "seconds, to send as the next request's history_times",
    )


class AlphasResponse(BaseModel):
    """The model in use; the lists are in channel order."""

    alphas: list[float]
    channels: list[str]
    kernel_size: int
    dilation: int = Field(description="taps at lags 0, d, ..., (K-1)d")
    receptive_field: int = Field(description="(kernel_size - 1) * dilation + 1 values")
    normalize: bool
    warmup: Warmup
    model_version: str
    span: list[float] = Field(description="pandas' ewm span of each alpha: 2 / alpha - 1")
    halflife: list[float] = Field(description="pandas' ewm halflife: log(0.5) / log(1 - alpha), in steps")
    time_unit: float = Field(
        description="seconds per step of alpha for requests with 'times': alpha is per time_unit seconds"
    )
    halflife_seconds: list[float] = Field(description="with 'times': time_unit * halflife seconds")
    com: list[float] = Field(description="pandas' ewm center of mass: 1 / alpha - 1")
    truncated_mass: list[float] = Field(
        description="the kernel mass the K taps drop, (1 - alpha)^K; above 0.01, a larger K or "
        "dilation would track the EWMA more closely"
    )


class ErrorResponse(BaseModel):
    detail: str
