"""The first ``/smooth`` parser, kept as a test oracle: one ``orjson.loads`` of the whole
body, then hand checks. ``app.api.jsoncodec.parse_smooth_body`` replaced it in the service
(it never holds the GIL long); the differential tests in ``tests/unit/test_jsoncodec.py``
and ``benchmarks/bench_codec.py`` compare the two. It knows the fields of issue 10 too:
null values (NaN), ``history``, ``pairing``, ``gaps``, ``min_periods``, ``dtype``, ``stride``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from app.api.schemas import FLOAT32_MAX, RequestError, RequestLimits, SmoothJob, excerpt
from app.core.ewma import GAP_MODES, WARMUP_MODES
from app.serving.options import DTYPES, PAIRINGS

FIELDS = {"series", "history", "channels", "pairing", "warmup", "gaps", "min_periods", "dtype", "stride"}


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


def _series_array(
    values: Any, index: int, limits: RequestLimits, name: str = "series", dtype: str = "float32"
) -> np.ndarray:
    where = f"{name}[{index}]"
    if not isinstance(values, list):
        raise RequestError(422, f"{where} must be a list of numbers, got {type(values).__name__}")
    if not values and name == "series":
        raise RequestError(422, f"{where} is empty")
    if len(values) > limits.max_length:
        raise RequestError(413, f"{where} has {len(values)} values; the limit is {limits.max_length}")
    kinds = set(map(type, values))
    if not kinds <= {float, int, type(None)}:
        for position, value in enumerate(values):
            if type(value) not in (float, int, type(None)):
                raise RequestError(
                    422, f"{where}[{position}] must be a number, got {type(value).__name__} {value!r:.40}"
                )
    array = np.asarray([np.nan if value is None else value for value in values], dtype=np.float64)
    limit = FLOAT32_MAX if dtype == "float32" else np.finfo(np.float64).max
    magnitude = np.abs(array)
    if np.any(magnitude > limit):  # NaN (null) compares False: a missing value
        position = int(np.argmax(magnitude > limit))
        raise RequestError(
            422,
            f"{where}[{position}] = {excerpt(repr(values[position]))} is not finite "
            "or is outside the float32 range",
        )
    return array.astype(np.float32 if dtype == "float32" else np.float64)


def parse_smooth_request(body: bytes, limits: RequestLimits, channel_names: tuple[str, ...]) -> SmoothJob:
    """Validate a ``/smooth`` body completely, before any of it joins a batch."""
    document = _decode(body)
    if not isinstance(document, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        raise RequestError(422, f"unknown field(s) {unknown}; expected {sorted(FIELDS)}")
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
    dtype = _choice(document, "dtype", DTYPES) or "float32"
    series = [_series_array(values, i, limits, dtype=dtype) for i, values in enumerate(raw_series)]
    raw_history = document.get("history")
    history = None
    if raw_history is not None:
        if not isinstance(raw_history, list) or len(raw_history) != len(raw_series):
            raise RequestError(422, "'history' must be a list with one list per series")
        history = [_series_array(v, i, limits, "history", dtype) for i, v in enumerate(raw_history)]
    pairing = _choice(document, "pairing", PAIRINGS) or "bank"
    return SmoothJob(
        series=series,
        channels=_channels(
            document.get("channels"), channel_names, len(series) if pairing == "each" else None
        ),
        warmup=_choice(document, "warmup", WARMUP_MODES),  # type: ignore[arg-type]
        history=history,
        pairing=pairing,  # type: ignore[arg-type]
        gaps=_choice(document, "gaps", GAP_MODES) or "decay",  # type: ignore[arg-type]
        min_periods=_integer(document, "min_periods", 0, None, 1),
        dtype=dtype,  # type: ignore[arg-type]
        stride=_integer(document, "stride", 1, limits.max_length, 1),
    )


def _channels(requested: Any, names: tuple[str, ...], each: int | None) -> list[int]:
    if requested is None:
        if each is not None:
            raise RequestError(422, "'channels' is required with pairing 'each'")
        return list(range(len(names)))
    if not isinstance(requested, list) or not requested:
        raise RequestError(422, "'channels' must be a non-empty list of channel names or indices")
    if each is not None and len(requested) != each:
        raise RequestError(422, f"'channels' has {len(requested)} entries for {each} series")
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
    if each is None and len(set(chosen)) != len(chosen):
        raise RequestError(422, "channels repeat")
    return chosen


def _choice(document: dict[str, Any], key: str, modes: tuple[str, ...]) -> Any:
    value = document.get(key)
    if value is None:
        return None
    if value not in modes:
        raise RequestError(422, f"'{key}' must be one of {list(modes)}, got {excerpt(repr(value))}")
    return value


def _integer(document: dict[str, Any], key: str, low: int, high: int | None, default: int) -> int:
    value = document.get(key)
    if value is None:
        return default
    if type(value) is not int or value < low or (high is not None and value > high):
        raise RequestError(422, f"'{key}' must be an integer, got {excerpt(repr(value))}")
    return value
