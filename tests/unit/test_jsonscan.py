"""The structural scan on its own, on hand-made bodies with the exact positions expected;
``CHUNK`` is made tiny where a test checks that work split in chunks adds up."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import app.api.jsonscan as jsonscan
from app.api.jsonscan import Skeleton, Span, chunks, count_byte, find_spans, is_blank


def view(text: bytes) -> np.ndarray:
    return np.frombuffer(text, np.uint8)


@pytest.fixture(params=[1 << 20, 4, 1], ids=["chunk-1MiB", "chunk-4", "chunk-1"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(jsonscan, "CHUNK", request.param)
    return int(request.param)


TEXT = b"0123456789abcdefghij"


@pytest.mark.parametrize(("start", "end"), [(0, None), (3, 13), (3, None), (5, 5), (0, 20), (19, 20)])
def test_chunks_cover_the_range_in_pieces_of_at_most_chunk(chunk: int, start: int, end: int | None) -> None:
    pieces = list(chunks(view(TEXT), start, end))
    assert b"".join(p.tobytes() for p in pieces) == TEXT[start:end]
    assert all(0 < p.size <= chunk for p in pieces)
    assert len(pieces) == -(-(len(TEXT[start:end])) // chunk)


def test_chunks_and_counts_cover_the_whole_view_by_default(chunk: int) -> None:
    body = view(b",1,2,]")
    assert b"".join(p.tobytes() for p in chunks(body)) == b",1,2,]"
    assert count_byte(body, ord(",")) == 3  # the first byte counts
    assert is_blank(view(b"  x"), 0, 2)


@pytest.mark.parametrize(
    ("byte", "start", "end", "count"),
    [
        (ord(","), 0, None, 5),
        (ord(","), 2, None, 4),
        (ord(","), 0, 9, 4),
        (ord(","), 4, 8, 2),
        (ord(","), 5, 9, 1),
        (ord("x"), 0, None, 0),
    ],
)
def test_count_byte(chunk: int, byte: int, start: int, end: int | None, count: int) -> None:
    body = b"1,2,,3, 4,5]"
    assert body[start:end].count(bytes([byte])) == count  # the expectation, by bytes.count
    assert count_byte(view(body), byte, start, end) == count


@pytest.mark.parametrize("white", [b" ", b"\t", b"\n", b"\r"])
def test_json_whitespace_is_blank(chunk: int, white: bytes) -> None:
    assert is_blank(view(b"x" + white * 9 + b"x"), 1, 10)
    assert is_blank(view(b"x"), 0, 0)


@pytest.mark.parametrize("ink", [b"!", b"\x0b", b"\x0c", b"\x0e", b"\x08", b"\x1f", b"0", b"\x00"])
@pytest.mark.parametrize("at", [1, 5, 9])
def test_anything_else_is_ink(chunk: int, ink: bytes, at: int) -> None:
    body = bytearray(b"x" + b" \t\r\n" * 3)
    body[at : at + 1] = ink
    assert not is_blank(view(bytes(body)), 1, 13)
    assert is_blank(view(bytes(body)), 1, at)  # only the ink's range
    assert is_blank(view(bytes(body)), at + 1, 13)


def test_blank_is_read_between_start_and_end_only(chunk: int) -> None:
    body = view(b"[1 \n 2]")
    assert not is_blank(body, 0, 7)
    assert is_blank(body, 2, 5)
    assert not is_blank(body, 2, 6)
    assert not is_blank(body, 1, 5)


# --- candidates and spans -----------------------------------------------------------------

STRUCTURAL = b'"[\\]{|}'


def expected_candidates(body: bytes) -> list[int]:
    return [i for i, c in enumerate(body) if c in STRUCTURAL]


# Neighbours of the structural bytes, under the fold too (0x5A..0x5E, 0x7A..0x7E, 0x3B..0x3D, 0xDB..0xDD).
LOOKALIKES = b"ZzY^~`@;<=!#\xdb\xdc\xdd\xfb\xfc\xfd\x1b\x1c\x1d"


@pytest.mark.parametrize(
    "body",
    [b"", b"0", LOOKALIKES, STRUCTURAL, LOOKALIKES + STRUCTURAL + LOOKALIKES, b'{"a": [[1, "\\"", {}]]} |'],
)
def test_candidates_are_exactly_the_structural_bytes(chunk: int, body: bytes) -> None:
    found = jsonscan._candidates(view(body), max_events=10**6)
    assert found is not None
    assert found.dtype == np.intp
    assert found.tolist() == expected_candidates(body)


@pytest.mark.parametrize("body", [b"[[1]],{|}", b'"' * 9, b"]" + b"a" * 8 + b"["])
def test_candidates_past_the_budget_are_none(chunk: int, body: bytes) -> None:
    events = len(expected_candidates(body))
    found = jsonscan._candidates(view(body), max_events=events)
    assert found is not None
    assert found.tolist() == expected_candidates(body)
    assert jsonscan._candidates(view(body), max_events=events - 1) is None


def escaped_quotes(body: bytes) -> list[bool]:
    """For each quote, whether an odd run of backslashes stands just before it."""
    flags = []
    for i, c in enumerate(body):
        if c == ord('"'):
            run = len(body[:i]) - len(body[:i].rstrip(b"\\"))
            flags.append(run % 2 == 1)
    return flags


ESCAPES = [
    b'\\"',
    b'\\\\"',
    b'\\\\\\"',
    b'\\\\\\\\"',
    b'\\ "\\"',
    b'"\\"\\\\"\\\\\\""',
    b'\\x\\\\"\\"\\ \\\\\\"',
    b'""\\\\\\\\\\"\\\\\\\\"\\"',
    b'\\\\ \\\\\\"\\\\\\\\"x\\"',
]


@pytest.mark.parametrize("body", ESCAPES)
def test_escaped_quotes_follow_an_odd_run_of_backslashes(body: bytes) -> None:
    quotes = np.array([i for i, c in enumerate(body) if c == ord('"')], np.intp)
    slashes = np.array([i for i, c in enumerate(body) if c == ord("\\")], np.intp)
    assert jsonscan._escaped(quotes, slashes).tolist() == escaped_quotes(body)


def test_escaped_quotes_in_generated_runs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        body = bytes(rng.choice(list(b'\\\\\\"x'), size=int(rng.integers(1, 24))))
        quotes = np.array([i for i, c in enumerate(body) if c == ord('"')], np.intp)
        slashes = np.array([i for i, c in enumerate(body) if c == ord("\\")], np.intp)
        if quotes.size and slashes.size:
            assert jsonscan._escaped(quotes, slashes).tolist() == escaped_quotes(body), body


SPANS = [
    (b'{"series": [[1, 2], [3]]}', [(12, 18, True), (20, 23, True)]),
    (
        b'{"s": [[1, "x"], [[2]], [{"a": 3}], []]}',
        [(7, 15, False), (17, 22, False), (24, 34, False), (36, 38, True)],
    ),
    (b'{"a": {"b": [1, 2], "c": [3]}}', [(12, 18, True), (25, 28, True)]),
    (b'{"a": "[[[", "b": [[1], "]]"]}', [(19, 22, True)]),
    (b'{"a": "\\"[[", "b": [[1]]}', [(20, 23, True)]),
    (b'{"a": "\\\\", "b": [[1]]}', [(18, 21, True)]),
    (b'{"s": [[1|2]]}', [(7, 12, True)]),  # a pipe is not structural
    (b'{"s": [[1\\]]}', [(7, 11, False)]),  # a backslash just before the end: not plain
    (b'{"s": [[1, 2], [3', [(7, 13, True), (15, 17, False)]),  # unclosed: to the end, not plain
    (b'{"s": [[1, {]]}', [(7, 14, False)]),  # a brace inside: not plain
    (b"[[[1]], [[2, 3], 4]]", [(2, 5, True), (9, 15, True)]),
    (b'{"s": [1, 2]}', []),
    (b"", []),
]


@pytest.mark.parametrize(("body", "spans"), SPANS)
def test_spans_are_the_arrays_at_depth_two(
    chunk: int, body: bytes, spans: list[tuple[int, int, bool]]
) -> None:
    found = find_spans(view(body), max_events=10**6)
    assert found == [Span(*span) for span in spans]
    for span in found or []:
        assert body[span.start : span.start + 1] == b"["


def test_spans_past_the_budget_are_none() -> None:
    body = b'{"s": [[1], [2]]}'
    events = len(expected_candidates(body))
    assert find_spans(view(body), events) == [Span(6 + 1, 10, True), Span(12, 15, True)]
    assert find_spans(view(body), events - 1) is None


# --- skeleton -----------------------------------------------------------------------------

BODY = b'{"a": [[1, 2], [3]], "b": [[4]], "c": 5}'
TOKEN = re.compile(rb'"\\u0000span:([0-9a-f]{16}):(\d+)"')


def test_the_skeleton_replaces_each_span_by_an_unforgeable_token() -> None:
    spans = find_spans(view(BODY), 10**6)
    assert spans is not None
    assert len(spans) == 3
    skeleton = Skeleton(BODY, spans)
    nonces = {m.group(1) for m in TOKEN.finditer(skeleton.text)}
    assert len(nonces) == 1
    (nonce,) = nonces
    assert TOKEN.sub(b"T", skeleton.text) == b'{"a": [T, T], "b": [T], "c": 5}'
    assert [int(m.group(2)) for m in TOKEN.finditer(skeleton.text)] == [0, 1, 2]
    marks = {f"\x00span:{nonce.decode()}:{i}": i for i in range(3)}
    assert skeleton.marks == marks
    assert json.loads(skeleton.text) == {"a": list(marks)[:2], "b": list(marks)[2:], "c": 5}
    assert Skeleton(BODY, spans).marks != marks  # a new nonce every time


def test_a_skeleton_without_spans_is_the_body() -> None:
    skeleton = Skeleton(BODY, [])
    assert (skeleton.text, skeleton.marks) == (BODY, {})
    assert [skeleton.body_offset(i) for i in range(len(BODY))] == list(range(len(BODY)))


def test_skeleton_offsets_map_back_to_the_body() -> None:
    spans = find_spans(view(BODY), 10**6)
    assert spans is not None
    skeleton = Skeleton(BODY, spans)
    text = skeleton.text
    tokens = [m.span() for m in TOKEN.finditer(text)]
    for offset in range(len(text) + 1):
        inside = [i for i, (start, end) in enumerate(tokens) if start <= offset < end]
        if inside:  # within a token: the start of its span
            expected = spans[inside[0]].start
        else:  # outside: the same byte of the body
            before = [i for i, (start, _) in enumerate(tokens) if start <= offset]
            expected = offset if not before else spans[before[-1]].end + offset - tokens[before[-1]][1]
            if offset < len(text):
                assert BODY[expected] == text[offset]
        assert skeleton.body_offset(offset) == expected, offset
    assert skeleton.body_offset(len(text)) == len(BODY)
