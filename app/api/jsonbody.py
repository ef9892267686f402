"""The arrays of a ``/smooth`` body, each parsed on its own in short GIL holds.

NumPy finds the arrays ("spans", ``app.api.jsonscan``); simdjson parses each span of numbers
straight into a float64 buffer, with no Python object per value. A ``null`` (a missing
value) is not a number to simdjson's buffer, so a span holding some has each one replaced
by a ``0`` in a copy, found and checked with a few vectorised NumPy calls, and the value
is set to NaN afterwards. Whatever simdjson refuses (integers past 64 bits, a lowercase
``n`` that is not a whole ``null``, broken JSON) goes to the stdlib parser, span by span,
which either reads it or says exactly what and where is wrong.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np
import orjson
import simdjson

from app.api.jsonexact import Constant, convert, not_finite, stdlib
from app.api.jsonscan import (
    CHUNK,
    CLOSE_SQUARE,
    COMMA,
    OPEN_SQUARE,
    Skeleton,
    Span,
    count_byte,
    find_spans,
    is_blank,
)
from app.api.schemas import RequestError, RequestLimits

SHOWN = 40  # characters of client input that an error message may quote
_GROUP_VALUES = 1 << 18  # series values converted and checked together
_N, _U, _L = 0x6E, 0x75, 0x6C
_WHITESPACE = (0x20, 0x09, 0x0A, 0x0D)
# Bytes that may stand just before and just after a value in an array (lookup tables).
_BEFORE_VALUE = np.zeros(256, bool)
_BEFORE_VALUE[[COMMA, OPEN_SQUARE, *_WHITESPACE]] = True
_AFTER_VALUE = np.zeros(256, bool)
_AFTER_VALUE[[COMMA, CLOSE_SQUARE, *_WHITESPACE]] = True
_ZERO, _SPACE = 0x30, 0x20  # a null becomes "0   " in simdjson's copy


def _chunks(view: np.ndarray) -> list[tuple[int, np.ndarray]]:
    return [(low, view[low : low + CHUNK]) for low in range(0, view.size, CHUNK)]


class Body:
    """The body, its skeleton and its spans, parsed on demand."""

    def __init__(self, body: bytes, limits: RequestLimits, names: tuple[str, ...], scan: bool) -> None:
        self.body, self.view = body, np.frombuffer(body, np.uint8)
        self.limits = limits
        # An acceptable body has a few structural characters per series (and history) and per
        # channel. The budget allows far more, so that too many long series still find their
        # 413 cheaply; past it (a body of tiny arrays or strings) the body is parsed whole.
        acceptable = 4 * (4 * limits.max_series + sum(len(name) + 4 for name in names) + 64)
        budget = max(acceptable, len(body) // 256)
        self.spans: list[Span] = (find_spans(self.view, budget) if scan else None) or []
        self.skeleton = Skeleton(body, self.spans)
        self.parser = simdjson.Parser()
        self._n_at: np.ndarray | None = None

    def document(self) -> Any:
        try:
            return orjson.loads(self.skeleton.text)
        except orjson.JSONDecodeError:  # NaN, 1e999, a BOM, or broken: ask the exact parser
            return stdlib(self.skeleton.text, self.skeleton.body_offset, keep_constants=False)

    def span_of(self, item: Any) -> int | None:
        return self.skeleton.marks.get(item) if isinstance(item, str) else None

    def python(self, index: int, keep_constants: bool = True) -> Any:
        start, end = self.spans[index].start, self.spans[index].end
        return stdlib(self.body[start:end], lambda offset: start + offset, keep_constants)

    def simd(self, index: int, numbers: bool) -> np.ndarray | None:
        """The span's numbers, NaN for null (or, if not ``numbers``, an empty array once it
        validates); None where simdjson cannot say."""
        span = self.spans[index]
        source: memoryview = memoryview(self.body)[span.start : span.end]
        nulls = None
        if numbers:
            # as_buffer flattens nested arrays, so only spans without any are read this way.
            if not span.plain:
                return None
            found = self._nulls_as_zeros(span)
            if found is None:
                return None
            source, nulls = found
        try:
            document = self.parser.parse(source)
        # simdjson also refuses valid JSON (integers past 64 bits), with several exception
        # types; any refusal sends the span to the exact stdlib parser.
        except Exception:
            return None
        try:
            if not numbers:
                return np.empty(0)
            if not isinstance(document, simdjson.Array):
                return None
            values = np.frombuffer(document.as_buffer(of_type="d"), np.float64)
        except Exception:
            return None
        finally:
            del document  # the parser cannot be reused while a document lives
        if nulls is not None:
            values[nulls] = np.nan
        return values

    def _nulls_as_zeros(self, span: Span) -> tuple[memoryview, np.ndarray | None] | None:
        """The span with each ``null`` written as ``0``, and the value indices of those nulls;
        None where a lowercase n in it is not a whole null between two separators (as in
        Infinity), for the stdlib parser to read or refuse."""
        if self._n_at is None:  # one pass over the body finds every n
            found = [np.flatnonzero(chunk == _N) + low for low, chunk in _chunks(self.view)]
            self._n_at = np.concatenate(found) if found else np.empty(0, np.intp)
        low, high = np.searchsorted(self._n_at, [span.start, span.end])
        if low == high:
            return memoryview(self.body)[span.start : span.end], None
        at = self._n_at[low:high]
        if int(at[-1]) + 4 >= span.end:  # the span ends with ], after the last null's successor
            return None
        view = self.view
        whole = (view[at + 1] == _U) & (view[at + 2] == _L) & (view[at + 3] == _L)
        whole &= _BEFORE_VALUE[view[at - 1]] & _AFTER_VALUE[view[at + 4]]
        if not whole.all():
            return None
        text = view[span.start : span.end].copy()
        offsets = at - span.start
        text[offsets] = _ZERO
        for shift in (1, 2, 3):
            text[offsets + shift] = _SPACE
        commas = np.flatnonzero(text == COMMA)
        return text.data, np.searchsorted(commas, offsets)

    def validate(self, index: int, keep_constants: bool = False) -> None:
        """Refuse a span that is not JSON even where its value is never used."""
        if self.simd(index, numbers=False) is None:
            self.python(index, keep_constants)

    def shapes(self, raw: list[Any], name: str, allow_empty: bool = False) -> list[int | list[Any]]:
        """Each array of ``raw`` as a span index or a Python list, once its type and length are right."""
        shaped: list[int | list[Any]] = []
        for position, item in enumerate(raw):
            where, index = f"{name}[{position}]", self.span_of(item)
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
            if not length and not allow_empty:
                raise RequestError(422, f"{where} is empty")
            if length > self.limits.max_length:
                raise RequestError(413, f"{where} has {length} values; the limit is {self.limits.max_length}")
            # A span's Python list is read again if needed rather than kept: freeing many
            # lists of Python numbers at once would hold the GIL as long as building them.
            shaped.append(item if index is None else index)
        return shaped

    def arrays(self, shaped: list[int | list[Any]], name: str, dtype: type[np.floating]) -> list[np.ndarray]:
        """The arrays in ``dtype``, simdjson's converted and checked a group at a time.

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
            out += convert(group, len(out), name, dtype)
            group, size = [], 0
            if wide is None:
                out += convert([self.from_python(values, f"{name}[{position}]")], position, name, dtype)
        return out + convert(group, len(out), name, dtype)

    def from_python(self, values: int | list[Any], where: str) -> np.ndarray:
        if isinstance(values, int):
            values = self.python(values)
            assert isinstance(values, list)  # a span is an array
        if not set(map(type, values)) <= {float, int, type(None)}:
            for position, value in enumerate(values):
                if type(value) is Constant:
                    raise not_finite(value.name, f" at {where}[{position}]")
                if type(value) not in (float, int, type(None)):
                    shown = f"{type(value).__name__} {self.show(value)}"
                    raise RequestError(422, f"{where}[{position}] must be a number, got {shown}")
        return np.asarray(values, np.float64)  # None becomes NaN

    def show(self, value: Any) -> str:
        text = _Shown(self).repr(value)
        return text if len(text) <= SHOWN else text[:SHOWN] + "…"


class _Shown(reprlib.Repr):
    """A short repr that quotes a span by its first bytes rather than by its token."""

    def __init__(self, body: Body) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxlong, self.maxother = 3, SHOWN + 2, SHOWN, SHOWN
        self._body = body

    def repr_str(self, x: str, level: int) -> str:
        index = self._body.span_of(x)
        if index is None:
            return super().repr_str(x, level)
        start, end = self._body.spans[index].start, self._body.spans[index].end
        return self._body.body[start : min(end, start + SHOWN + 1)].decode("utf-8", "replace")
