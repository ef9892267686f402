"""``POST /smooth`` bodies in and responses out, without holding the GIL for long.

``parse_smooth_body`` accepts what the first parser (``tests/json_oracle.py``) accepts, to the
same values, but is meant to run in a worker thread while the event loop keeps answering:
NumPy finds the series and histories (``app.api.jsonscan``), orjson parses the small rest, and
each array is parsed on its own (``app.api.jsonbody``: simdjson into a float64 buffer, no
Python object per value; the stdlib parser where simdjson cannot say). A small body is
read by one orjson call instead, when orjson accepts it. ``encode_smooth_response``
yields the orjson encoding of a response one row per call; a missing output (NaN) is
encoded as null, as orjson encodes every NaN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import orjson

from app.api import jsonfields, jsontimes
from app.api.jsonbody import Body
from app.api.jsonscan import COMMA, count_byte
from app.api.schemas import RequestError, RequestLimits, SmoothJob
from app.core.ewma import GAP_MODES, WARMUP_MODES, Gaps, Warmup
from app.serving.options import DTYPES, PAIRINGS, DType, Pairing

# Up to this size one orjson call on the whole body is shorter than the scan's fixed cost
# (about 0.1 ms) and still holds the GIL well under a millisecond.
SMALL_BODY_BYTES = 64 * 1024
FIELDS = (
    "series",
    "history",
    "channels",
    "pairing",
    "warmup",
    "gaps",
    "min_periods",
    "dtype",
    "stride",
    "times",
    "history_times",
    "max_gap",
)
_UNREAD = object()


def count_values_upper_bound(body: bytes | memoryview) -> int:
    """How many numbers a body can hold: each number in an array is followed by , or ]."""
    view = np.frombuffer(body, np.uint8)
    return count_byte(view, COMMA) + count_byte(view, 0x5D)


def encode_json(payload: Any) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_smooth_response(
    smoothed: Sequence[np.ndarray],
    channels: Sequence[str],
    alphas: Sequence[float],
    model_version: str,
    chunk_bytes: int = 1 << 20,
    history: Sequence[np.ndarray] | None = None,
    history_times: Sequence[np.ndarray] | None = None,
) -> Iterator[bytes]:
    """``encode_json({"smoothed": smoothed, "channels": ..., ...})`` in chunks of about ``chunk_bytes``
    (with ``"history": history`` and then ``"history_times"`` last when given).

    ``smoothed[i]`` has shape (channels, length). Each orjson call encodes one row, so
    none holds the GIL long, and the chunks join to exactly the bytes of one call.
    """
    pieces: list[bytes] = []
    size = 0
    for piece in _response_pieces(smoothed, channels, alphas, model_version, history, history_times):
        pieces.append(piece)
        size += len(piece)
        if size >= chunk_bytes:
            yield b"".join(pieces)
            pieces, size = [], 0
    if pieces:
        yield b"".join(pieces)


def _response_pieces(
    smoothed: Sequence[np.ndarray],
    channels: Sequence[str],
    alphas: Sequence[float],
    model_version: str,
    history: Sequence[np.ndarray] | None,
    history_times: Sequence[np.ndarray] | None = None,
) -> Iterator[bytes]:
    yield b'{"smoothed":['
    for index, block in enumerate(smoothed):
        yield b"," if index else b""
        if block.ndim != 2:  # not a response block; encoded whole, as one orjson call would
            yield encode_json(block)
            continue
        yield b"["
        for row_index, row in enumerate(block):
            yield b"," if row_index else b""
            yield encode_json(np.ascontiguousarray(row))
        yield b"]"
    yield b'],"channels":' + encode_json(list(channels)) + b',"alphas":' + encode_json(list(alphas))
    yield b',"model_version":' + encode_json(model_version)
    for name, rows in ((b"history", history), (b"history_times", history_times)):
        if rows is not None:
            yield b',"' + name + b'":['
            for index, row in enumerate(rows):
                yield (b"," if index else b"") + encode_json(np.ascontiguousarray(row))
            yield b"]"
    yield b"}"


def parse_smooth_body(body: bytes, limits: RequestLimits, channel_names: tuple[str, ...]) -> SmoothJob:
    """Validate a ``/smooth`` body completely, as the first parser did, in short GIL holds.

    The series and history counts and lengths and every other field are checked before
    any number is parsed, so an oversized request is refused without reading its numbers.
    """
    document = _UNREAD
    if len(body) <= SMALL_BODY_BYTES:
        # Where orjson refuses (NaN, 1e999, broken JSON) the scan below says where.
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(body)
    parts = Body(body, limits, channel_names, scan=document is _UNREAD)
    try:
        return _job(parts, limits, channel_names, parts.document() if document is _UNREAD else document)
    except RequestError as error:
        if error.status == 422:  # broken JSON anywhere is a 400, as when all was parsed first
            for index in range(len(parts.spans)):
                parts.validate(index, keep_constants=True)
        raise


def _job(parts: Body, limits: RequestLimits, names: tuple[str, ...], document: Any) -> SmoothJob:
    if not isinstance(document, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - set(FIELDS))
    if unknown:
        expected = ", ".join(FIELDS)  # unquoted: with the 40 characters quoted, under 200
        raise RequestError(422, f"unknown field(s) {parts.show(unknown)}; expected {expected}")
    if "series" not in document:
        raise RequestError(422, "'series' is required")
    raw = document["series"]
    if not isinstance(raw, list):
        raise RequestError(422, f"'series' must be a list of lists of numbers, got {type(raw).__name__}")
    if not raw:
        raise RequestError(422, "'series' is empty")
    if len(raw) > limits.max_series:
        raise RequestError(413, f"{len(raw)} series; the limit is {limits.max_series}")
    shaped = parts.shapes(raw, "series")
    raw_history = document.get("history")
    shaped_history = None if raw_history is None else _history_shapes(parts, raw_history, len(raw))
    show = parts.show
    pairing = jsonfields.choice(document, "pairing", PAIRINGS, show) or "bank"
    each = len(raw) if pairing == "each" else None
    channels = jsonfields.channels(document.get("channels"), names, show, each)
    warmup = jsonfields.choice(document, "warmup", WARMUP_MODES, show)
    gaps = jsonfields.choice(document, "gaps", GAP_MODES, show) or "decay"
    min_periods = jsonfields.integer(document, "min_periods", 0, None, show)
    stride = jsonfields.integer(document, "stride", 1, limits.max_length, show) or 1
    dtype = jsonfields.choice(document, "dtype", DTYPES, show) or "float32"
    raw_times, raw_history_times = document.get("times"), document.get("history_times")
    shaped_times, shaped_history_times = _time_shapes(parts, document, len(raw), shaped_history)
    max_gap = jsontimes.max_gap(document, parts)
    if max_gap is not None and shaped_times is None:
        raise RequestError(422, "'max_gap' needs 'times'")
    # Every other field is checked before any number is parsed: a bad request costs little.
    numbers = np.float64 if dtype == "float64" else np.float32
    series = parts.arrays(shaped, "series", numbers)
    history = None if shaped_history is None else parts.arrays(shaped_history, "history", numbers)
    times = history_times = None
    if shaped_times is not None:
        times = jsontimes.arrays(parts, shaped_times, "times")
        jsontimes.check_lengths(times, series, "times", "series")
    if shaped_history_times is not None and history is not None and times is not None:
        history_times = jsontimes.arrays(parts, shaped_history_times, "history_times")
        jsontimes.check_lengths(history_times, history, "history_times", "history")
        jsontimes.check_join(history_times, times)
    lists = [*raw, *(raw_history or ()), *(raw_times or ()), *(raw_history_times or ())]
    used = {parts.span_of(item) for item in lists}
    for index in range(len(parts.spans)):
        if index not in used:  # a value overwritten by a repeated key must still be JSON
            parts.validate(index)
    return SmoothJob(
        series=series,
        channels=channels,
        warmup=cast(Warmup | None, warmup),
        history=history,
        pairing=cast(Pairing, pairing),
        gaps=cast(Gaps, gaps),
        min_periods=1 if min_periods is None else min_periods,
        dtype=cast(DType, dtype),
        stride=stride,
        times=times,
        history_times=history_times,
        max_gap=max_gap,
    )


def _time_shapes(
    parts: Body, document: dict[str, Any], count: int, shaped_history: list[int | list[Any]] | None
) -> tuple[list[int | list[Any]] | None, list[int | list[Any]] | None]:
    """``times`` and ``history_times`` checked for shape, and for each other and the history."""
    raw_times, raw_history_times = document.get("times"), document.get("history_times")
    times = None if raw_times is None else jsontimes.shapes(parts, raw_times, "times", count, "series")
    if raw_history_times is None:
        if times is not None and shaped_history is not None:
            raise RequestError(422, "'history' with 'times' needs 'history_times': the times of its values")
        return times, None
    if times is None:
        raise RequestError(422, "'history_times' needs 'times'")
    if shaped_history is None:
        raise RequestError(422, "'history_times' needs 'history'")
    return times, jsontimes.shapes(parts, raw_history_times, "history_times", count, "histories")


def _history_shapes(parts: Body, raw: Any, count: int) -> list[int | list[Any]]:
    if not isinstance(raw, list):
        raise RequestError(
            422, f"'history' must be a list of lists of numbers (one per series), got {type(raw).__name__}"
        )
    if len(raw) != count:
        raise RequestError(422, f"'history' has {len(raw)} lists for {count} series: one per series")
    return parts.shapes(raw, "history", allow_empty=True)
