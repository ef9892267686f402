"""The exact path on its own: the stdlib parser with located errors, and the conversion of
float64 values to the request's dtype with the first infinite value named."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import orjson
import pytest

from app.api.jsonexact import Constant, convert, malformed, not_finite, stdlib
from app.api.schemas import RequestError

FINITE = "every value must be finite (null for a missing one)"


def shifted(offset: int) -> int:
    return offset + 1000  # where raw starts in a body, so that locating is seen


def outcome(raw: bytes, keep_constants: bool = False) -> Any:
    try:
        return stdlib(raw, shifted, keep_constants)
    except RequestError as error:
        return error.status, error.detail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[1, 2.5, null, -0, 1e2]", [1, 2.5, None, 0, 100.0]),
        (b"\xef\xbb\xbf[1]", [1]),  # a BOM is tolerated
        (b'{"a": ["\xc3\xa9"]}', {"a": ["é"]}),
        (b"[1,]", (400, "malformed JSON at byte 1003: Expecting value")),
        (b"\xef\xbb\xbf[1,]", (400, "malformed JSON at byte 1006: Expecting value")),  # bytes, BOM counted
        (b'["\xc3\xa9", x]', (400, "malformed JSON at byte 1007: Expecting value")),  # bytes, not characters
        (b"[1] 2", (400, "malformed JSON at byte 1004: Extra data")),
        (b'[1, "\xff"]', (400, "malformed JSON at byte 1005: invalid UTF-8")),
        (b"\xff[]", (400, "malformed JSON at byte 1000: invalid UTF-8")),
        (b"[" * 100_000 + b"]" * 100_000, (400, "malformed JSON at byte 1000: nested too deeply")),
        (b"[1, NaN]", (422, f"NaN is not allowed: {FINITE}")),
        (b"[-Infinity]", (422, f"-Infinity is not allowed: {FINITE}")),
    ],
)
def test_stdlib(raw: bytes, expected: Any) -> None:
    got = outcome(raw)
    assert got == expected
    if isinstance(expected, list):
        assert [type(x) for x in got] == [type(x) for x in expected]  # ints stay ints


def test_constants_are_kept_in_place_when_asked() -> None:
    got = stdlib(b"[1, NaN, -Infinity, Infinity]", shifted, keep_constants=True)
    assert [type(x) for x in got] == [int, Constant, Constant, Constant]
    assert [x.name for x in got[1:]] == ["NaN", "-Infinity", "Infinity"]
    assert repr(got) == "[1, NaN, -Infinity, Infinity]"


@pytest.mark.parametrize(
    "text", [b"%d" % (2**64 - 1), b"%d" % 2**64, b"%d" % -(2**63), b"%d" % (-(2**63) - 1)]
)
def test_integers_are_read_as_orjson_reads_them(text: bytes) -> None:
    # An int within [-2**63, 2**64), a float outside: the fast path and this one agree.
    (value,) = stdlib(b"[" + text + b"]", shifted, keep_constants=False)
    (expected,) = orjson.loads(b"[" + text + b"]")
    assert type(value) is type(expected)
    assert value == expected


@pytest.mark.parametrize(
    ("digits", "kind"), [(19, int), (20, int), (21, float), (300, float), (310, float), (5000, float)]
)
def test_long_integers_are_read_as_floats(digits: int, kind: type) -> None:
    (value,) = stdlib(b"[" + b"1" * digits + b"]", shifted, keep_constants=False)
    assert type(value) is kind
    assert float(value) == float("1" * digits)


def test_error_helpers() -> None:
    error = malformed(12, "Expecting value")
    assert (error.status, error.detail) == (400, "malformed JSON at byte 12: Expecting value")
    error = not_finite("NaN")
    assert (error.status, error.detail) == (422, f"NaN is not allowed: {FINITE}")
    error = not_finite("Infinity", " at series[1][2]")
    assert (error.status, error.detail) == (422, f"Infinity is not allowed at series[1][2]: {FINITE}")


# --- conversion ---------------------------------------------------------------------------

GROUP = [
    np.array([1.0, 2.5, -3.0]),
    np.array([4.0, np.nan]),
    np.array([0.1]),
    np.array([7.0, 8.0, 9.0, 1e-300]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_convert_keeps_each_array(dtype: type[np.floating], size: int) -> None:
    group = GROUP[:size]
    got = convert(group, 5, "series", dtype)
    assert len(got) == size
    for array, source in zip(got, group, strict=True):
        assert array.dtype == dtype
        np.testing.assert_array_equal(array, source.astype(dtype))


def test_convert_of_nothing_is_nothing() -> None:
    assert convert([], 3, "series", np.float32) == []


def test_one_float64_array_is_not_copied() -> None:
    (got,) = convert([GROUP[0]], 0, "series", np.float64)
    assert np.shares_memory(got, GROUP[0])


@pytest.mark.parametrize(
    ("array", "position", "value", "where"),
    [
        (0, 0, np.inf, "history[2][0]"),
        (0, 2, -np.inf, "history[2][2]"),
        (1, 0, np.inf, "history[3][0]"),  # the first value of an array after the first
        (1, 1, np.inf, "history[3][1]"),
        (2, 0, -np.inf, "history[4][0]"),
        (3, 0, np.inf, "history[5][0]"),
        (3, 3, np.inf, "history[5][3]"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convert_names_the_first_infinite_value(
    array: int, position: int, value: float, where: str, dtype: type[np.floating]
) -> None:
    group = [a.copy() for a in GROUP]
    group[array][position] = value
    if array < 3:
        group[3][3] = np.inf  # a later one is not named
    with pytest.raises(RequestError) as info:
        convert(group, 2, "history", dtype)
    reason = " or is outside the float32 range" if dtype is np.float32 else ""
    assert (info.value.status, info.value.detail) == (422, f"{where} = {value!r} is not finite{reason}")


@pytest.mark.parametrize("value", [1e39, -3.5e38])
def test_values_outside_float32_are_named_quietly(value: float) -> None:
    group = [np.array([1.0]), np.array([2.0, value, np.inf])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning: the error says it
        with pytest.raises(RequestError) as info:
            convert(group, 0, "series", np.float32)
    expected = f"series[1][1] = {value!r} is not finite or is outside the float32 range"
    assert (info.value.status, info.value.detail) == (422, expected)
    (wide,) = convert([np.array([value])], 0, "series", np.float64)
    assert wide.tolist() == [value]
