"""The first ``/smooth`` parser, kept as a test oracle: one ``orjson.loads`` of the whole
body, then hand checks. ``app.jsoncodec.parse_smooth_body`` replaced it in the service
(it never holds the GIL long); the differential tests in ``tests/unit/test_jsoncodec.py``
and ``benchmarks/bench_codec.py`` compare the two.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from app.ewma import WARMUP_MODES
from app.schemas import FLOAT32_MAX, RequestError, RequestLimits, SmoothJob, excerpt


class _NonFiniteConstantError(Exception):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteConstantError(name)


def _decode(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN/Infinity tokens and numbers like 1e999 as it refuses broken
        # JSON. The slow stdlib parser tells them apart, so that a client sending
        # Python's json.dumps(float("nan")) gets a 422 that says what is wrong.
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except _NonFiniteConstantError as constant:
            raise RequestError(422, f"{constant} is not allowed: every value must be finite") from None
        except (ValueError, RecursionError):
            raise RequestError(400, f"malformed JSON: {exc}") from None


def _series_array(values: Any, index: int, limits: RequestLimits) -> np.ndarray:
    where = f"series[{index}]"
    if not isinstance(values, list):
        raise RequestError(422, f"{where} must be a list of numbers, got {type(values).__name__}")
    if not values:
        raise RequestError(422, f"{where} is empty")
    if len(values) > limits.max_length:
        raise RequestError(413, f"{where} has {len(values)} values; the limit is {limits.max_length}")
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        for position, value in enumerate(values):
            if type(value) not in (float, int):
                raise RequestError(
                    422, f"{where}[{position}] must be a number, got {type(value).__name__} {value!r:.40}"
                )
    array = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(array)
    if not np.all(magnitude <= FLOAT32_MAX):
        position = int(np.argmax(~(magnitude <= FLOAT32_MAX)))
        raise RequestError(
            422,
            f"{where}[{position}] = {excerpt(repr(values[position]))} is not finite "
            "or is outside the float32 range",
        )
    return array.astype(np.float32)


def parse_smooth_request(body: bytes, limits: RequestLimits, channel_names: tuple[str, ...]) -> SmoothJob:
    """Validate a ``/smooth`` body completely, before any of it joins a batch."""
    document = _decode(body)
    if not isinstance(document, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - {"series", "channels", "warmup"})
    if unknown:
        raise RequestError(422, f"unknown field(s) {unknown}; expected 'series', 'channels', 'warmup'")
    if "series" not in document:
        raise RequestError(422, "'series' is required")
    raw_series = document["series"]
    if not isinstance(raw_series, list):
        raise RequestError(
            422, f"'series' must be a list of lists of numbers, got {type(raw_series).__name__}"
        )
    if not raw_series:
        raise RequestError(422, "'series' is empty")
    if len(raw_series) > limits.max_series:
        raise RequestError(413, f"{len(raw_series)} series; the limit is {limits.max_series}")
    series = [_series_array(values, i, limits) for i, values in enumerate(raw_series)]
    return SmoothJob(
        series=series,
        channels=_channels(document.get("channels"), channel_names),
        warmup=_warmup(document.get("warmup")),
    )


def _channels(requested: Any, names: tuple[str, ...]) -> list[int]:
    if requested is None:
        return list(range(len(names)))
    if not isinstance(requested, list) or not requested:
        raise RequestError(422, "'channels' must be a non-empty list of channel names or indices")
    chosen: list[int] = []
    for position, item in enumerate(requested):
        if isinstance(item, str) and item in names:
            chosen.append(names.index(item))
        elif type(item) is int and 0 <= item < len(names):
            chosen.append(item)
        else:
            raise RequestError(
                422,
                f"channels[{position}] = {excerpt(repr(item))} is not one of {list(names)} "
                f"or 0..{len(names) - 1}",
            )
    return chosen


def _warmup(value: Any) -> str | None:
    if value is None:
        return None
    if value not in WARMUP_MODES:
        raise RequestError(422, f"'warmup' must be one of {list(WARMUP_MODES)}, got {excerpt(repr(value))}")
    return str(value)
