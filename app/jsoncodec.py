"""``POST /smooth`` bodies in and responses out, without holding the GIL for long.

``parse_smooth_body`` accepts what the first parser (``tests/json_oracle.py``) accepts, to the
same float32 values, but is meant to run in a worker thread while the event loop keeps
answering: NumPy finds the series (``app.jsonscan``), orjson parses the small rest, and
simdjson parses each series straight into a float64 buffer (no Python object per
value).  Whatever simdjson refuses goes to the stdlib parser, span by span, which
either reads it (integers past 64 bits) or says exactly what and where is wrong.  A
small body is read by one orjson call instead, as before, when orjson accepts it.
``encode_smooth_response`` yields the orjson encoding of a response one row per call.
"""

from __future__ import annotations

import contextlib
import json
import reprlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson
import simdjson

from app.ewma import WARMUP_MODES
from app.jsonscan import COMMA, Skeleton, Span, count_byte, find_spans, is_blank
from app.schemas import RequestError, RequestLimits, SmoothJob

_SHOWN = 40  # characters of client input that an error message may quote
# Up to this size one orjson call on the whole body is shorter than the scan's fixed cost
# (about 0.1 ms) and still holds the GIL well under a millisecond.
SMALL_BODY_BYTES = 64 * 1024
_GROUP_VALUES = 1 << 18  # series values narrowed to float32 and checked together
_UNREAD = object()


def count_values_upper_bound(body: bytes) -> int:
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
) -> Iterator[bytes]:
    """``encode_json({"smoothed": smoothed, "channels": ..., ...})`` in chunks of about ``chunk_bytes``.

    ``smoothed[i]`` has shape (channels, length). Each orjson call encodes one row, so
    none holds the GIL long, and the chunks join to exactly the bytes of one call.
    """
    pieces: list[bytes] = []
    size = 0
    for piece in _response_pieces(smoothed, channels, alphas, model_version):
        pieces.append(piece)
        size += len(piece)
        if size >= chunk_bytes:
            yield b"".join(pieces)
            pieces, size = [], 0
    if pieces:
        yield b"".join(pieces)


def _response_pieces(
    smoothed: Sequence[np.ndarray], channels: Sequence[str], alphas: Sequence[float], model_version: str
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
    yield b',"model_version":' + encode_json(model_version) + b"}"


class _Constant:
    """A NaN or Infinity token, kept in place so that its position can be reported."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _malformed(offset: int, reason: str) -> RequestError:
    return RequestError(400, f"malformed JSON at byte {offset}: {reason}")


def _not_finite(name: str, where: str = "") -> RequestError:
    return RequestError(422, f"{name} is not allowed{where}: every value must be finite")


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _stdlib(raw: bytes, locate: Callable[[int], int], keep_constants: bool) -> Any:
    """``json.loads`` with errors located in the body by ``locate`` (a byte offset of ``raw``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(locate(exc.start), "invalid UTF-8") from None
    bom = 1 if text.startswith("\ufeff") else 0  # tolerated, as RFC 8259 allows
    try:
        constant = _Constant if keep_constants else _raise_constant
        return json.loads(text[bom:], parse_float=_decimal, parse_int=_integer, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise _malformed(locate(len(text[: exc.pos + bom].encode())), exc.msg) from None
    except RecursionError:
        raise _malformed(locate(0), "nested too deeply") from None


def _decimal(text: str) -> float:
    # A Python-level hook: the interpreter can hand the GIL over between two numbers,
    # which it cannot do inside one json.loads call of a long series.
    return float(text)


def _integer(text: str) -> int | float:
    # Past 300 digits an integer is beyond float64 anyway, and int() refuses 4300 digits.
    return int(text) if len(text) <= 300 else float(text)


def _raise_constant(name: str) -> Any:
    raise _not_finite(name)


def _narrow(group: list[np.ndarray], first: int) -> list[np.ndarray]:
    """The float64 series ``first, first + 1, ...`` as float32 (views of one array), all finite."""
    if not group:
        return []
    wide = np.concatenate(group) if len(group) > 1 else group[0]
    with np.errstate(over="ignore"):
        narrow = wide.astype(np.float32)
    ends = np.cumsum([array.size for array in group])
    bad = ~np.isfinite(narrow)
    if bad.any():
        at = int(np.argmax(bad))
        index = int(np.searchsorted(ends, at, side="right"))
        where = f"series[{first + index}][{at - (int(ends[index - 1]) if index else 0)}]"
        raise RequestError(
            422, f"{where} = {float(wide[at])!r} is not finite or is outside the float32 range"
        )
    return np.split(narrow, ends[:-1])


class _Body:
    """The body, its skeleton and its spans, parsed on demand."""

    def __init__(self, body: bytes, limits: RequestLimits, names: tuple[str, ...], scan: bool) -> None:
        self.body, self.view = body, np.frombuffer(body, np.uint8)
        self.limits = limits
        # An acceptable body has a few structural characters per series and per channel.
        # The budget allows far more, so that too many long series still find their 413
        # cheaply; past it (a body of tiny arrays or strings) the body is parsed whole.
        acceptable = 4 * (2 * limits.max_series + sum(len(name) + 4 for name in names) + 64)
        budget = max(acceptable, len(body) // 256)
        self.spans: list[Span] = (find_spans(self.view, budget) if scan else None) or []
        self.skeleton = Skeleton(body, self.spans)
        self.parser = simdjson.Parser()

    def document(self) -> Any:
        try:
            return orjson.loads(self.skeleton.text)
        except orjson.JSONDecodeError:  # NaN, 1e999, a BOM, or broken: ask the exact parser
            return _stdlib(self.skeleton.text, self.skeleton.body_offset, keep_constants=False)

    def span_of(self, item: Any) -> int | None:
        return self.skeleton.marks.get(item) if isinstance(item, str) else None

    def python(self, index: int, keep_constants: bool = True) -> Any:
        start, end = self.spans[index].start, self.spans[index].end
        return _stdlib(self.body[start:end], lambda offset: start + offset, keep_constants)

    def simd(self, index: int, numbers: bool) -> np.ndarray | None:
        """The span's numbers (or, if not ``numbers``, an empty array once it validates)."""
        span = self.spans[index]
        try:
            document = self.parser.parse(memoryview(self.body)[span.start : span.end])
        # simdjson also refuses valid JSON (integers past 64 bits), with several exception
        # types; any refusal sends the span to the exact stdlib parser.
        except Exception:
            return None
        try:
            if not numbers:
                return np.empty(0)
            # as_buffer flattens nested arrays, so only spans without any are read this way.
            if not (span.plain and isinstance(document, simdjson.Array)):
                return None
            return np.frombuffer(document.as_buffer(of_type="d"), np.float64)
        except Exception:
            return None
        finally:
            del document  # the parser cannot be reused while a document lives

    def validate(self, index: int, keep_constants: bool = False) -> None:
        """Refuse a span that is not JSON even where its value is never used."""
        if self.simd(index, numbers=False) is None:
            self.python(index, keep_constants)

    def shapes(self, raw: list[Any]) -> list[int | list[Any]]:
        """Each series as a span index or a Python list, once its type and length are right."""
        shaped: list[int | list[Any]] = []
        for position, item in enumerate(raw):
            where, index = f"series[{position}]", self.span_of(item)
            if index is not None and self.spans[index].plain:
                span = self.spans[index]
                commas = count_byte(self.view, COMMA, span.start, span.end)
                blank = not commas and is_blank(self.view, span.start + 1, span.end - 1)
                length = 0 if blank else commas + 1
            else:
                values = item if index is None else self.python(index)
                if not isinstance(values, list):
                    raise RequestError(422, f"{where} must be a list of numbers, got {type(values).__name__}")
                length = len(values)
            if not length:
                raise RequestError(422, f"{where} is empty")
            if length > self.limits.max_length:
                raise RequestError(413, f"{where} has {length} values; the limit is {self.limits.max_length}")
            # A span's Python list is read again if needed rather than kept: freeing many
            # lists of Python numbers at once would hold the GIL as long as building them.
            shaped.append(item if index is None else index)
        return shaped

    def series(self, shaped: list[int | list[Any]]) -> list[np.ndarray]:
        """The float32 series, simdjson's narrowed and checked a group at a time.

        Between two simdjson calls, which hold the GIL, a few NumPy calls per series would
        release and retake it in microseconds; a thread waiting for the GIL (the event
        loop) restarts its wait at every release and so would starve (stalls of 100 ms
        were measured). Few long NumPy calls let it in.
        """
        out: list[np.ndarray] = []
        group: list[np.ndarray] = []
        size = 0
        for position, values in enumerate(shaped):
            wide = self.simd(values, numbers=True) if isinstance(values, int) else None
            if wide is not None:
                group.append(wide)
                size += wide.size
                if size < _GROUP_VALUES:
                    continue
            out += _narrow(group, len(out))
            group, size = [], 0
            if wide is None:
                out += _narrow([self.from_python(values, f"series[{position}]")], position)
        return out + _narrow(group, len(out))

    def from_python(self, values: int | list[Any], where: str) -> np.ndarray:
        if isinstance(values, int):
            values = self.python(values)
            assert isinstance(values, list)  # a span is an array
        if not set(map(type, values)) <= {float, int}:
            for position, value in enumerate(values):
                if type(value) is _Constant:
                    raise _not_finite(value.name, f" at {where}[{position}]")
                if type(value) not in (float, int):
                    shown = f"{type(value).__name__} {self.show(value)}"
                    raise RequestError(422, f"{where}[{position}] must be a number, got {shown}")
        return np.asarray(values, np.float64)

    def show(self, value: Any) -> str:
        return _clip(_Shown(self).repr(value))


class _Shown(reprlib.Repr):
    """A short repr that quotes a span by its first bytes rather than by its token."""

    def __init__(self, body: _Body) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxlong, self.maxother = 3, _SHOWN + 2, _SHOWN, _SHOWN
        self._body = body

    def repr_str(self, x: str, level: int) -> str:
        index = self._body.span_of(x)
        if index is None:
            return super().repr_str(x, level)
        start, end = self._body.spans[index].start, self._body.spans[index].end
        return self._body.body[start : min(end, start + _SHOWN + 1)].decode("utf-8", "replace")


def parse_smooth_body(body: bytes, limits: RequestLimits, channel_names: tuple[str, ...]) -> SmoothJob:
    """Validate a ``/smooth`` body completely, as the first parser did, in short GIL holds.

    The series counts and lengths, channels and warmup are checked before any series
    number is parsed, so an oversized request is refused without reading its numbers.
    """
    document = _UNREAD
    if len(body) <= SMALL_BODY_BYTES:
        # Where orjson refuses (NaN, 1e999, broken JSON) the scan below says where.
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(body)
    parts = _Body(body, limits, channel_names, scan=document is _UNREAD)
    try:
        return _job(parts, limits, channel_names, parts.document() if document is _UNREAD else document)
    except RequestError as error:
        if error.status == 422:  # broken JSON anywhere is a 400, as when all was parsed first
            for index in range(len(parts.spans)):
                parts.validate(index, keep_constants=True)
        raise


def _job(parts: _Body, limits: RequestLimits, names: tuple[str, ...], document: Any) -> SmoothJob:
    if not isinstance(document, dict):
        raise RequestError(422, f"the body must be a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - {"series", "channels", "warmup"})
    if unknown:
        raise RequestError(
            422, f"unknown field(s) {parts.show(unknown)}; expected 'series', 'channels', 'warmup'"
        )
    if "series" not in document:
        raise RequestError(422, "'series' is required")
    raw = document["series"]
    if not isinstance(raw, list):
        raise RequestError(422, f"'series' must be a list of lists of numbers, got {type(raw).__name__}")
    if not raw:
        raise RequestError(422, "'series' is empty")
    if len(raw) > limits.max_series:
        raise RequestError(413, f"{len(raw)} series; the limit is {limits.max_series}")
    shaped = parts.shapes(raw)
    channels = _channels(document.get("channels"), names, parts)
    warmup = _warmup(document.get("warmup"), parts)
    series = parts.series(shaped)
    used = {parts.span_of(item) for item in raw}
    for index in range(len(parts.spans)):
        if index not in used:  # a value overwritten by a repeated key must still be JSON
            parts.validate(index)
    return SmoothJob(series=series, channels=channels, warmup=warmup)


def _channels(requested: Any, names: tuple[str, ...], parts: _Body) -> list[int]:
    if requested is None:
        return list(range(len(names)))
    if not isinstance(requested, list) or not requested:
        raise RequestError(422, "'channels' must be a non-empty list of channel names or indices")
    chosen: list[int] = []
    for position, item in enumerate(requested):
        if isinstance(item, str) and item in names:
            index = names.index(item)
        elif type(item) is int and 0 <= item < len(names):
            index = item
        else:
            shown = parts.show(item)
            raise RequestError(
                422, f"channels[{position}] = {shown} is not one of {list(names)} or 0..{len(names) - 1}"
            )
        # Each channel at most once, so that a response is at most the model's size.
        if index in chosen:
            first = chosen.index(index)
            raise RequestError(422, f"channels[{position}] repeats {names[index]!r} (channels[{first}])")
        chosen.append(index)
    return chosen


def _warmup(value: Any, parts: _Body) -> str | None:
    if value is None:
        return None
    if value not in WARMUP_MODES:
        raise RequestError(422, f"'warmup' must be one of {list(WARMUP_MODES)}, got {parts.show(value)}")
    return str(value)
