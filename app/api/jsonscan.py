"""Split a JSON body into a small skeleton and its large arrays without parsing it.

A ``/smooth`` body is mostly numbers inside arrays nested two levels deep
(``{"series": [[...], ...]}``).  Parsing all of it with one orjson call holds the GIL
for seconds and builds a Python object per value.  Here vectorised NumPy finds those
arrays ("spans") so that the rest can be parsed by orjson and each span on its own.
Every NumPy call covers at most ``CHUNK`` bytes, so none holds the GIL for long even
where NumPy does not release it.

The scan may misjudge a malformed body, but it never makes one acceptable: the
skeleton holds every byte outside the spans and each span stands for one JSON value,
so if the skeleton and every span parse, so does the body, to the same value.
"""

from __future__ import annotations

import secrets
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

CHUNK = 1 << 20
QUOTE, BACKSLASH, COMMA = 0x22, 0x5C, 0x2C
OPEN_SQUARE, CLOSE_SQUARE, OPEN_CURLY, CLOSE_CURLY, PIPE = 0x5B, 0x5D, 0x7B, 0x7D, 0x7C

Bytes = NDArray[np.uint8]


@dataclass(frozen=True)
class Span:
    start: int
    end: int  # exclusive
    plain: bool  # no string, bracket or brace inside: numbers (or junk) and commas only


def chunks(view: Bytes, start: int = 0, end: int | None = None) -> Iterator[Bytes]:
    stop = view.size if end is None else end
    for low in range(start, stop, CHUNK):
        yield view[low : min(stop, low + CHUNK)]


def count_byte(view: Bytes, byte: int, start: int = 0, end: int | None = None) -> int:
    return sum(int(np.count_nonzero(chunk == byte)) for chunk in chunks(view, start, end))


def is_blank(view: Bytes, start: int, end: int) -> bool:
    """True if ``view[start:end]`` holds JSON whitespace only."""
    for chunk in chunks(view, start, end):
        ink = (chunk != 0x20) & (chunk != 0x09) & (chunk != 0x0A) & (chunk != 0x0D)
        if ink.any():
            return False
    return True


def _candidates(view: Bytes, max_events: int) -> NDArray[np.intp] | None:
    """Positions of quotes, backslashes, brackets, braces and pipes; None past ``max_events``."""
    found: list[NDArray[np.intp]] = []
    total = 0
    for low in range(0, view.size, CHUNK):
        chunk = view[low : low + CHUNK]
        # One masked subtraction maps [ \ ] { | } onto 0..2: fewer passes than six compares.
        folded = np.bitwise_and(chunk, 0xDF)
        folded -= OPEN_SQUARE
        mask = folded <= 2
        mask |= chunk == QUOTE
        where = np.flatnonzero(mask)
        total += where.size
        if total > max_events:
            return None
        where += low
        found.append(where)
    return np.concatenate(found) if found else np.empty(0, np.intp)


def _escaped(quotes: NDArray[np.intp], slashes: NDArray[np.intp]) -> NDArray[np.bool_]:
    """Which quotes follow an odd run of backslashes."""
    run_head = np.ones(slashes.size, bool)
    run_head[1:] = slashes[1:] != slashes[:-1] + 1
    first = np.maximum.accumulate(np.where(run_head, np.arange(slashes.size), 0))
    last = np.minimum(np.searchsorted(slashes, quotes - 1), slashes.size - 1)
    escaped: NDArray[np.bool_] = (slashes[last] == quotes - 1) & ((last - first[last]) % 2 == 0)
    return escaped


def find_spans(view: Bytes, max_events: int) -> list[Span] | None:
    """Every array that opens at nesting depth 2, outside strings, in body order.

    None when the body has more structural characters than ``max_events``: no body that
    could be accepted has that many, so the caller can afford the slow exact path.
    """
    events = _candidates(view, max_events)
    if events is None:
        return None
    codes = view[events]
    keep = codes != PIPE
    events, codes = events[keep], codes[keep]
    quotes = events[codes == QUOTE]
    slashes = events[codes == BACKSLASH]
    if slashes.size and quotes.size:
        quotes = quotes[~_escaped(quotes, slashes)]
    bracket = (codes != QUOTE) & (codes != BACKSLASH)
    at, kind = events[bracket], codes[bracket]
    outside = np.searchsorted(quotes, at) % 2 == 0
    at, kind = at[outside], kind[outside]
    step = np.where((kind == OPEN_SQUARE) | (kind == OPEN_CURLY), 1, -1)
    depth = np.cumsum(step)  # after each bracket
    opens = np.flatnonzero((kind == OPEN_SQUARE) & (depth == 3))
    # Depth moves by one, so the first closer back at depth 2 is the matching one.
    closes = np.flatnonzero((step < 0) & (depth == 2))
    match = np.searchsorted(closes, opens)
    closed = match < closes.size
    starts = at[opens]
    ends = np.full(opens.size, view.size, np.intp)
    ends[closed] = at[closes[match[closed]]] + 1
    inside = np.searchsorted(events, ends - 1) - np.searchsorted(events, starts, side="right")
    plain = closed & (inside == 0)
    return [Span(int(s), int(e), bool(p)) for s, e, p in zip(starts, ends, plain, strict=True)]


class Skeleton:
    """The body with each span replaced by a string token that no client can forge."""

    def __init__(self, body: bytes, spans: list[Span]) -> None:
        nonce = secrets.token_hex(8)
        pieces: list[bytes] = []
        self.marks: dict[str, int] = {}
        self._token_at: list[int] = []
        self._token_end: list[int] = []
        self._spans = spans
        cursor = size = 0
        for index, span in enumerate(spans):
            mark = f"\x00span:{nonce}:{index}"
            token = f'"\\u0000span:{nonce}:{index}"'.encode()
            pieces += (body[cursor : span.start], token)
            size += span.start - cursor
            self.marks[mark] = index
            self._token_at.append(size)
            size += len(token)
            self._token_end.append(size)
            cursor = span.end
        pieces.append(body[cursor:])
        self.text = b"".join(pieces)

    def body_offset(self, offset: int) -> int:
        """Where a byte offset of the skeleton lies in the body."""
        index = bisect_right(self._token_at, offset) - 1
        if index < 0:
            return offset
        if offset < self._token_end[index]:
            return self._spans[index].start
        return self._spans[index].end + offset - self._token_end[index]
