"""``Body`` on its own: the budget that decides whether a body is scanned, each span read
by simdjson (nulls written as zeros first) or by the stdlib parser, the shapes and arrays
with their located errors, and the short quotes of client input in messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import app.api.jsonbody as jsonbody
from app.api.jsonbody import Body
from app.api.jsonexact import Constant
from app.api.jsonscan import Span
from app.api.schemas import RequestError, RequestLimits

NAMES = ("ab", "c")  # sum(len(name) + 4) = 11
LIMITS = RequestLimits(max_series=8, max_length=6)
FINITE = "every value must be finite (null for a missing one)"


def body_of(text: bytes, scan: bool = True, limits: RequestLimits = LIMITS) -> Body:
    return Body(text, limits, NAMES, scan)


def raised(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        call(*args, **kwargs)
    return info.value.status, info.value.detail


def nan_list(values: np.ndarray) -> list[Any]:
    return [None if np.isnan(x) else float(x) for x in values.tolist()]


# --- which bodies are scanned -------------------------------------------------------------


def series_body(count: int, padding: int = 0) -> bytes:
    return b'{"series": [' + b",".join([b"[1]"] * count) + b"]" + b" " * padding + b"}"


def test_the_structural_budget_follows_the_limits_and_the_names() -> None:
    # 4 * (4 * 8 + 11 + 64) = 428 events: {, two quotes, [, ], } and two per series.
    assert len(body_of(series_body(211)).spans) == 211  # 428 events
    assert body_of(series_body(212)).spans == []  # 430: parsed whole


def test_a_long_body_allows_one_event_per_256_bytes() -> None:
    padding = 256 * 1000 - len(series_body(497))  # 1000 events in 256000 bytes
    assert len(body_of(series_body(497, padding)).spans) == 497
    assert body_of(series_body(498, padding - 4)).spans == []


def test_an_unscanned_body_has_no_spans() -> None:
    parts = body_of(b'{"series": [[1, 2]]}', scan=False)
    assert (parts.spans, parts.skeleton.text) == ([], b'{"series": [[1, 2]]}')
    assert parts.document() == {"series": [[1, 2]]}


# --- the skeleton and the spans -----------------------------------------------------------


def test_the_document_holds_a_mark_per_span() -> None:
    parts = body_of(b'{"series": [[1, 2], [3]], "warmup": "zeros"}')
    document = parts.document()
    assert [parts.span_of(item) for item in document["series"]] == [0, 1]
    assert document["warmup"] == "zeros"
    assert parts.span_of("zeros") is None
    assert parts.span_of(["x"]) is None
    assert parts.span_of(0) is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b'{"series": [[1]], "warmup": NaN}', (422, f"NaN is not allowed: {FINITE}")),
        (b'{"series": [[1, 2], [3]], "x": }', (400, "malformed JSON at byte 31: Expecting value")),
        (b'{"series": [[1, 2], [3]], "x": 1e999}', (422, "")),
    ],
)
def test_the_document_is_read_exactly_when_orjson_refuses(text: bytes, error: tuple[int, str]) -> None:
    parts = body_of(text)
    if error[1]:
        assert raised(parts.document) == error
    else:
        assert parts.document()["x"] == float("inf")  # not a constant: for the fields to refuse


def test_a_span_is_read_by_the_stdlib_with_offsets_in_the_body() -> None:
    parts = body_of(b'{"series": [[1, 2], [3, NaN], [4, 5,]]}')
    assert parts.python(0) == [1, 2]
    (three, nan) = parts.python(1)
    assert (three, type(nan), nan.name) == (3, Constant, "NaN")
    assert raised(parts.python, 1, keep_constants=False) == (422, f"NaN is not allowed: {FINITE}")
    assert raised(parts.python, 2) == (400, "malformed JSON at byte 36: Expecting value")


def test_validate_refuses_a_span_that_is_not_json() -> None:
    parts = body_of(b'{"series": [[1, 2], [1 2], [NaN], ["x", [1]], [true]]}')
    parts.validate(0)
    assert raised(parts.validate, 1) == (400, "malformed JSON at byte 23: Expecting ',' delimiter")
    assert raised(parts.validate, 2) == (422, f"NaN is not allowed: {FINITE}")
    parts.validate(2, keep_constants=True)
    parts.validate(3)
    parts.validate(4)


# --- simdjson and the nulls ---------------------------------------------------------------


@pytest.fixture(params=[1 << 20, 5, 1], ids=["chunk-1MiB", "chunk-5", "chunk-1"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(jsonbody, "CHUNK", request.param)
    return int(request.param)


def test_chunks_of_the_body() -> None:
    view = np.frombuffer(b"abcdefghijklm", np.uint8)
    assert [(low, bytes(c)) for low, c in jsonbody._chunks(view)] == [(0, b"abcdefghijklm")]


def test_chunks_of_the_body_past_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonbody, "CHUNK", 5)
    view = np.frombuffer(b"abcdefghijklm", np.uint8)
    assert [(low, bytes(c)) for low, c in jsonbody._chunks(view)] == [
        (0, b"abcde"),
        (5, b"fghij"),
        (10, b"klm"),
    ]


NULLS = [
    (b"[1, 2.5]", b"[1, 2.5]", None),
    (b"[null]", b"[0   ]", [0]),
    (b"[null,1, null ,null]", b"[0   ,1, 0    ,0   ]", [0, 2, 3]),
    (b"[\tnull\n,\rnull]", b"[\t0   \n,\r0   ]", [0, 1]),
    (b"[1,2,3,null,4]", b"[1,2,3,0   ,4]", [3]),
]


@pytest.mark.parametrize(("span", "text", "nulls"), NULLS)
def test_nulls_are_written_as_zeros(chunk: int, span: bytes, text: bytes, nulls: list[int] | None) -> None:
    body = b'{"nan": 1, "series": [' + span + b"]}"  # an n outside the span is not one of its nulls
    parts = body_of(body)
    (only,) = parts.spans
    found = parts._nulls_as_zeros(only)
    assert found is not None
    assert bytes(found[0]) == text
    assert (None if found[1] is None else found[1].tolist()) == nulls


@pytest.mark.parametrize(
    "span",
    [
        b"[nul]",
        b"[nul ]",
        b"[1, nulx]",
        b"[nxll]",
        b"[nuxl]",
        b"[null1]",
        b"[1null]",
        b"[-null]",
        b"[ nulx ]",
        b"[null\x0b]",
        b"[nullnull]",
        b"[1e5, Infinity]",
        b"[null, 1, nan]",
    ],
)
def test_a_lowercase_n_that_is_not_a_whole_null_is_left_to_the_stdlib(chunk: int, span: bytes) -> None:
    parts = body_of(b'{"series": [' + span + b"]}")
    assert parts._nulls_as_zeros(parts.spans[0]) is None
    assert parts.simd(0, numbers=True) is None


def test_a_partial_null_closing_the_body_is_left_to_the_stdlib() -> None:
    parts = body_of(b'{"series": [[nul]')  # the span's ] is the body's last byte
    assert parts.spans == [Span(12, 17, True)]
    assert parts.simd(0, numbers=True) is None


def test_a_null_at_the_end_of_an_unclosed_body_is_left_to_the_stdlib() -> None:
    parts = body_of(b'{"series": [[1, null')
    assert parts.spans == [Span(12, 20, False)]
    assert parts._nulls_as_zeros(Span(12, 20, True)) is None


@pytest.mark.parametrize(
    ("span", "values"),
    [
        (b"[1, -2.5, 1e300, 0]", [1.0, -2.5, 1e300, 0.0]),
        (b"[null, 1, null]", [None, 1.0, None]),
        (b"[ 7 ]", [7.0]),
    ],
)
def test_simdjson_reads_plain_spans_as_float64(chunk: int, span: bytes, values: list[Any]) -> None:
    parts = body_of(b'{"series": [' + span + b", [1]]}")
    got = parts.simd(0, numbers=True)
    assert got is not None
    assert got.dtype == np.float64
    assert nan_list(got) == values
    empty = parts.simd(0, numbers=False)
    assert empty is not None
    assert empty.size == 0


@pytest.mark.parametrize("span", [b'[1, "2"]', b"[[1], [2]]", b"[18446744073709551616]", b"[1 2]", b"[true]"])
def test_simdjson_leaves_what_it_cannot_read_as_numbers(span: bytes) -> None:
    parts = body_of(b'{"series": [' + span + b"]}")
    assert parts.simd(0, numbers=True) is None


def test_simdjson_validates_any_json_span() -> None:
    parts = body_of(b'{"series": [[1, "2", [3]], [1 2]]}')
    assert parts.simd(0, numbers=False) is not None
    assert parts.simd(1, numbers=False) is None


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("series", "lengths"),
    [
        (b"[[1]]", [1]),
        (b"[[ 1 ]]", [1]),
        (b"[[1, 2, 3, 4, 5, 6]]", [6]),  # at the limit
        (b'[[1, "x", null]]', [3]),
        (b"[[1, [2, 3]]]", [2]),
        (b"[[ ], [\n], []]", [0, 0, 0]),
    ],
)
def test_shapes_count_the_values_without_parsing_them(series: bytes, lengths: list[int]) -> None:
    parts = body_of(b'{"series": ' + series + b"}")
    document = parts.document()
    shaped = parts.shapes(document["series"], "history", allow_empty=True)
    assert shaped == list(range(len(lengths)))  # span indices, to be parsed later
    if 0 not in lengths:
        assert parts.shapes(document["series"], "series") == shaped
    unscanned = body_of(b'{"series": ' + series + b"}", scan=False)
    raw = unscanned.document()["series"]
    assert unscanned.shapes(raw, "history", allow_empty=True) == raw  # the lists themselves


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize(
    ("series", "error"),
    [
        (b"[[1], [ ]]", (422, "series[1] is empty")),
        (b"[[1], []]", (422, "series[1] is empty")),
        (b"[[1], 5]", (422, "series[1] must be a list of numbers, got int")),
        (b'[[1], "x"]', (422, "series[1] must be a list of numbers, got str")),
        (b"[[1], [1, 2, 3, 4, 5, 6, 7]]", (413, "series[1] has 7 values; the limit is 6")),
        (b'[[1, "x", 3, 4, 5, 6, null]]', (413, "series[0] has 7 values; the limit is 6")),
    ],
)
def test_shapes_refuse_wrong_types_and_lengths(scan: bool, series: bytes, error: tuple[int, str]) -> None:
    parts = body_of(b'{"series": ' + series + b"}", scan=scan)
    assert raised(parts.shapes, parts.document()["series"], "series") == error


# --- arrays -------------------------------------------------------------------------------

SERIES = b'[[1, 2.5], [null, 3], [1, "x"], [18446744073709551616, 4], [5], [6, null, 7]]'
EXPECTED = [[1.0, 2.5], [None, 3.0], None, [2.0**64, 4.0], [5.0], [6.0, None, 7.0]]


@pytest.mark.parametrize("group", [1, 2, 3, 4, 1 << 18])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_in_any_grouping(
    group: int, dtype: type[np.floating], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonbody, "_GROUP_VALUES", group)
    good = SERIES.replace(b'"x"', b"8")
    parts = body_of(b'{"series": ' + good + b"}")
    arrays = parts.arrays(parts.shapes(parts.document()["series"], "series"), "series", dtype)
    assert all(a.dtype == dtype for a in arrays)
    expected = [[1.0, 8.0] if e is None else e for e in EXPECTED]
    assert [nan_list(a) for a in arrays] == [
        [None if x is None else float(dtype(x)) for x in e] for e in expected
    ]


@pytest.mark.parametrize("group", [1, 3, 1 << 18])
@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ((0, 1), "series[0][1] = 1e+39 is not finite or is outside the float32 range"),
        ((1, 1), "series[1][1] = 1e+39 is not finite or is outside the float32 range"),
        ((3, 1), "series[3][1] = 1e+39 is not finite or is outside the float32 range"),
        ((5, 2), "series[5][2] = 1e+39 is not finite or is outside the float32 range"),
    ],
)
def test_arrays_name_the_value_out_of_range(
    group: int, bad: tuple[int, int], error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonbody, "_GROUP_VALUES", group)
    series = [
        list(s)
        for s in [
            [b"1", b"2.5"],
            [b"null", b"3"],
            [b"1", b"8"],
            [b"18446744073709551616", b"4"],
            [b"5"],
            [b"6", b"null", b"7"],
        ]
    ]
    series[bad[0]][bad[1]] = b"1e39"
    text = b"[" + b", ".join(b"[" + b", ".join(s) + b"]" for s in series) + b"]"
    parts = body_of(b'{"series": ' + text + b"}")
    shaped = parts.shapes(parts.document()["series"], "series")
    assert raised(parts.arrays, shaped, "series", np.float32) == (422, error)


@pytest.mark.parametrize("scan", [True, False])
def test_arrays_name_a_value_that_is_not_a_number(scan: bool) -> None:
    parts = body_of(b'{"series": ' + SERIES + b"}", scan=scan)
    shaped = parts.shapes(parts.document()["series"], "series")
    assert raised(parts.arrays, shaped, "series", np.float32) == (
        422,
        "series[2][1] must be a number, got str 'x'",
    )


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ([1, None, 2.5, 2**64], None),
        ([1, "x"], (422, "h[3][1] must be a number, got str 'x'")),
        ([1.5, None, True], (422, "h[3][2] must be a number, got bool True")),
        ([None, [1, 2]], (422, "h[3][1] must be a number, got list [1, 2]")),
        ([1, Constant("-Infinity"), "x"], (422, f"-Infinity is not allowed at h[3][1]: {FINITE}")),
    ],
)
def test_from_python(values: list[Any], error: tuple[int, str] | None) -> None:
    parts = body_of(b"{}")
    if error is None:
        got = parts.from_python(values, "h[3]")
        assert got.dtype == np.float64
        assert nan_list(got) == [1.0, None, 2.5, 2.0**64]
    else:
        assert raised(parts.from_python, values, "h[3]") == error


def test_from_python_reads_a_span() -> None:
    parts = body_of(b'{"series": [[1, "x"], [2, null]]}')
    assert nan_list(parts.from_python(1, "series[1]")) == [2.0, None]
    assert raised(parts.from_python, 0, "series[0]") == (422, "series[0][1] must be a number, got str 'x'")


def test_simdjson_arrays_are_converted_in_groups_of_the_group_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group is converted once it holds ``_GROUP_VALUES`` values (few long NumPy calls let
    the event loop in); an array simdjson cannot read is converted on its own."""
    calls: list[tuple[int, list[int]]] = []

    def recording(
        group: list[np.ndarray], first: int, name: str, dtype: type[np.floating]
    ) -> list[np.ndarray]:
        if group:
            calls.append((first, [a.size for a in group]))
        return real(group, first, name, dtype)

    real = jsonbody.convert
    monkeypatch.setattr(jsonbody, "convert", recording)
    monkeypatch.setattr(jsonbody, "_GROUP_VALUES", 4)
    text = b'{"series": [[1, 2], [3, 4], [5], [6, 7], [8], [9], [1, "x"], [10, 11, 12], [13]]}'
    parts = body_of(text.replace(b'"x"', b"18446744073709551616"), limits=RequestLimits(9, 6))
    arrays = parts.arrays(parts.shapes(parts.document()["series"], "series"), "series", np.float64)
    assert calls == [(0, [2, 2]), (2, [1, 2, 1]), (5, [1]), (6, [2]), (7, [3, 1])]
    assert [a.tolist() for a in arrays] == [
        [1.0, 2.0],
        [3.0, 4.0],
        [5.0],
        [6.0, 7.0],
        [8.0],
        [9.0],
        [1.0, 2.0**64],
        [10.0, 11.0, 12.0],
        [13.0],
    ]


# --- quotes of client input ---------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("abc", "'abc'"),
        (LETTERS[:38], repr(LETTERS[:38])),  # 40 characters: whole
        (LETTERS[:39], repr(LETTERS[:39])[:40] + "…"),  # 41: cut to 40
        (LETTERS[:40], "'" + LETTERS[:39] + "…"),  # a 42-character repr is kept whole, then cut
        (LETTERS[:41], "'" + LETTERS[:18] + "..." + LETTERS[22:40] + "…"),  # 43: reprlib's middle cut
        ([[[[1]]]], "[[[[...]]]]"),  # three levels
        ([[[1]]], "[[[1]]]"),
        (12345, "12345"),
    ],
)
def test_show_quotes_at_most_forty_characters(value: Any, shown: str) -> None:
    assert body_of(b"{}").show(value) == shown


def test_show_quotes_a_span_by_its_first_bytes() -> None:
    parts = body_of('{"warmup": [["éééééééééééééééééééééééééééééééééé"], [1, 2]]}'.encode())
    document = parts.document()
    first, second = document["warmup"]
    assert parts.show(second) == "[1, 2]"
    assert parts.show(first) == '["' + "é" * 19 + "\ufffd"  # 41 bytes, the last é cut in half
    assert parts.show(document["warmup"]) == '[["' + "é" * 19 + "\ufffd, [1, 2]]"  # 32 characters
