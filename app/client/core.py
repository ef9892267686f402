"""What the sync and the async client share: options into an infer plan, the server's
limits, answers and errors, and how long to wait before a retry."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from app.client.frames import Framed, frame, times_of
from app.client.plan import Answer, Limits, Rows, Smoothed, smooth_rows
from app.client.wire import InferCall, read_answer

MODEL = "/v2/models/convewma"
INFER = f"{MODEL}/infer"
BACKOFF_S = 0.1  # first wait when a 503 names none; doubled per retry
Plan = Generator[InferCall, Answer, Smoothed]


class ConvEWMAError(Exception):
    """The server refused a request (``status``, and its reason), or could not be reached
    (``status`` None)."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"{status}: {reason}" if status is not None else reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Options:
    """How to smooth, as ``/smooth`` and the infer parameters name it (None: the server's default)."""

    channels: list[str | int] | None = None
    pairing: Literal["bank", "each"] | None = None
    warmup: Literal["zeros", "adjust"] | None = None
    gaps: Literal["decay", "skip"] | None = None
    min_periods: int | None = None
    stride: int | None = None
    max_gap: float | None = None
    dtype: Literal["float32", "float64"] = "float32"


@dataclass
class Prepared:
    plan: Plan
    finish: Callable[[Smoothed], Any]
    framed: Framed


def limits_of(metadata: dict[str, Any]) -> Limits:
    given = metadata.get("parameters") or {}
    return Limits(
        max_series=int(given.get("max_series", 1024)),
        max_length=int(given.get("max_length", 100_000)),
        max_body_bytes=int(given.get("max_body_bytes", 64 << 20)),
        channels=tuple(str(given.get("channels", "")).split(",")),
    )


def prepare(
    data: Any,
    options: Options,
    limits: Limits,
    *,
    times: Any = None,
    binary: bool = True,
    history: tuple[list[np.ndarray] | None, list[np.ndarray] | None] = (None, None),
    keep: bool = False,
    first: int = 0,
) -> Prepared:
    """The plan of calls for ``data`` and how to turn its answer back into ``data``'s kind."""
    dtype = np.dtype(np.float64 if options.dtype == "float64" else np.float32)
    framed = frame(data, dtype)
    pairing, channels = options.pairing, options.channels
    named = framed.names is not None and all(name in limits.channels for name in framed.names)
    if pairing is None:
        pairing = "each" if channels is None and named else "bank"
    if pairing == "each" and channels is None:
        if framed.names is None:
            raise ValueError("pairing 'each' needs channels, one per series (or named series)")
        channels = list(framed.names)
    parameters: dict[str, Any] = {"pairing": pairing}
    for key in ("warmup", "gaps", "min_periods", "stride", "max_gap"):
        value = getattr(options, key)
        if value is not None:
            parameters[key] = value
    if channels is not None:
        parameters["channels"] = list(channels)
    rows = Rows(framed.values, times_of(times, framed), *history)
    if (
        rows.times is not None
        and len(rows.times)
        and any(len(t) != len(v) for t, v in zip(rows.times, rows.values, strict=True))
    ):
        raise ValueError("times must have one time per value of each series")
    stride = options.stride or 1
    each = pairing == "each"
    return Prepared(
        smooth_rows(rows, parameters, limits, dtype, binary, keep),
        lambda smoothed: framed.rebuild(smoothed, first, stride, each),
        framed,
    )


def answer_of(status: int, header_length: str | None, content: bytes) -> Answer:
    if status != 200:
        raise ConvEWMAError(status, _reason(content))
    return read_answer(content, header_length)


def _reason(content: bytes) -> str:
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode(errors="replace")
    if isinstance(document, dict):
        return str(document.get("error", document.get("detail", document)))
    return str(document)


class Retries:
    """One call's retries: a 503 is tried again after its ``Retry-After`` (else a backoff),
    at most ``limit`` times and while the waits add up to at most ``budget_s``."""

    def __init__(self, limit: int, budget_s: float) -> None:
        self.limit, self.budget_s = limit, budget_s
        self.attempt, self.waited = 0, 0.0

    def delay(self, status: int, retry_after: str | None) -> float | None:
        """Seconds to wait before the next try, or None: answer with this response."""
        if status != 503 or self.attempt >= self.limit:
            return None
        delay = retry_delay(retry_after, self.attempt)
        if self.waited + delay > self.budget_s:
            return None
        self.attempt += 1
        self.waited += delay
        return delay


class StreamState:
    """What a stream carries from one push to the next: the tails and the values so far."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.history: tuple[list[np.ndarray] | None, list[np.ndarray] | None] = (None, None)
        self.pushed = 0  # values per series so far: the phase of a stride

    def prepare(self, chunk: Any, limits: Limits, times: Any, binary: bool) -> Prepared:
        first = -self.pushed % (self.options.stride or 1)
        return prepare(
            chunk,
            self.options,
            limits,
            times=times,
            binary=binary,
            history=self.history,
            keep=True,
            first=first,
        )

    def advance(self, prepared: Prepared, smoothed: Smoothed) -> Any:
        """The chunk's answer in its kind, once the stream has taken its tails."""
        self.history = (smoothed.history, smoothed.history_times)
        self.pushed += max((len(values) for values in prepared.framed.values), default=0)
        return prepared.finish(smoothed)


def retry_delay(header: str | None, attempt: int) -> float:
    """Seconds to wait before retrying a 503: its ``Retry-After`` seconds, else a backoff."""
    if header is not None and header.strip().isdecimal():
        return float(header)
    return float(BACKOFF_S * 2**attempt)
