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

from app.ewma import Warmup

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
    series: list[np.ndarray]  # float32, 1-D, non-empty, finite
    channels: list[int]  # model channel indices, in the order asked
    warmup: str | None  # None: the model's default


class SmoothRequest(BaseModel):
    """Series to smooth, and optionally which channels and which warm-up."""

    series: list[list[float]] = Field(
        description="one or more non-empty series of finite numbers (float32 range)"
    )
    channels: list[str | int] | None = Field(
        None,
        description="channels by name or index (see GET /alphas), each at most once; default all, "
        "in the model's order",
    )
    warmup: Warmup | None = Field(
        None,
        description="zeros: values before the start count as zero; adjust: the weights are "
        "renormalised over the values seen so far (pandas' ewm adjust=True); default the model's "
        "(GET /alphas)",
    )


class SmoothResponse(BaseModel):
    """The smoothed series (float32 values), with the channels and alphas that made them."""

    smoothed: list[list[list[float]]] = Field(
        description="smoothed[i][j]: series i smoothed by channels[j], as long as series i"
    )
    channels: list[str] = Field(description="the channels used, in the order asked")
    alphas: list[float] = Field(description="the smoothing factor of each of those channels")
    model_version: str = Field(description="sha256 of the weights file")


class AlphasResponse(BaseModel):
    """The model in use."""

    alphas: list[float]
    channels: list[str]
    kernel_size: int
    normalize: bool
    warmup: Warmup
    model_version: str


class ErrorResponse(BaseModel):
    detail: str
