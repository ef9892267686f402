from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.api.jsonbody as jsonbody
import app.api.jsoncodec as jsoncodec
from app.api.jsoncodec import count_values_upper_bound, encode_smooth_response, parse_smooth_body
from app.api.jsonscan import find_spans
from app.api.schemas import RequestError, RequestLimits, SmoothJob
from app.core.ewma import GAP_MODES, WARMUP_MODES
from app.serving.options import DTYPES, PAIRINGS
from tests.json_oracle import parse_smooth_request

NAMES = ("fast", "mid", 'a"[b]', "é{x},\\")
LIMITS = RequestLimits(max_series=8, max_length=64)
WIDE = RequestLimits(max_series=1000, max_length=100_000)
F32_MAX = float(np.finfo(np.float32).max)
WHITESPACE = ["", " ", "\n", "\t ", "\r\n  "]
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[Any, ...]


def bits(arrays: list[np.ndarray] | None, dtype: str) -> list[list[int]] | None:
    """Bit patterns: they keep -0.0 apart and compare NaN (a null) with NaN."""
    if arrays is None:
        return None
    assert all(a.dtype == np.dtype(dtype) and a.ndim == 1 for a in arrays)
    return [a.view(np.uint32 if dtype == "float32" else np.uint64).tolist() for a in arrays]


def outcome(parse: Any, body: bytes, limits: RequestLimits = LIMITS) -> Outcome:
    """A job as comparable values, or (status, detail)."""
    try:
        job: SmoothJob = parse(body, limits, NAMES)
    except RequestError as error:
        return error.status, error.detail
    options = (job.history is not None, job.pairing, job.gaps, job.min_periods, job.dtype, job.stride)
    return bits(job.series, job.dtype), job.channels, job.warmup, bits(job.history, job.dtype), options


@contextmanager
def scanning() -> Iterator[None]:
    """Small bodies go to one orjson call; this makes them take the scanning path too."""
    saved, jsoncodec.SMALL_BODY_BYTES = jsoncodec.SMALL_BODY_BYTES, -1
    try:
        yield
    finally:
        jsoncodec.SMALL_BODY_BYTES = saved


def new(body: bytes, limits: RequestLimits = LIMITS) -> Outcome:
    """The new parser's answer, the same on both of its paths (messages may quote an
    array differently: the scanning path quotes its text)."""
    direct = outcome(parse_smooth_body, body, limits)
    with scanning():
        scanned = outcome(parse_smooth_body, body, limits)
    assert direct[0] == scanned[0]
    assert isinstance(direct[0], int) or direct == scanned
    return scanned


def old(body: bytes, limits: RequestLimits = LIMITS) -> Outcome | None:
    """The previous parser's answer; None where it crashed (numbers past float64)."""
    try:
        return outcome(parse_smooth_request, body, limits)
    except OverflowError:
        return None


def reference(body: bytes) -> Outcome:
    """float64 from the stdlib parser (null: NaN), then the dtype asked: what a valid body must give."""
    document = json.loads(body)
    dtype = document.get("dtype") or "float32"

    def arrays(lists: list[list[Any]] | None) -> list[np.ndarray] | None:
        if lists is None:
            return None
        wide = [np.asarray([np.nan if x is None else float(x) for x in s], np.float64) for s in lists]
        return [a.astype(dtype) for a in wide]

    requested = document.get("channels")
    channels = (
        list(range(len(NAMES)))
        if requested is None
        else [NAMES.index(c) if isinstance(c, str) else c for c in requested]
    )
    history = document.get("history")
    options = (
        history is not None,
        document.get("pairing") or "bank",
        document.get("gaps") or "decay",
        1 if document.get("min_periods") is None else document["min_periods"],
        dtype,
        document.get("stride") or 1,
    )
    series = bits(arrays(document["series"]), dtype)
    return series, channels, document.get("warmup"), bits(arrays(history), dtype), options


def errors(body: bytes, limits: RequestLimits = LIMITS) -> list[RequestError]:
    """The errors of both paths of the new parser, which must agree on the status."""
    raised = []
    for path in (nullcontext, scanning):
        with path(), pytest.raises(RequestError) as info:
            parse_smooth_body(body, limits, NAMES)
        raised.append(info.value)
    assert raised[0].status == raised[1].status, [e.detail for e in raised]
    return raised


def error(body: bytes, limits: RequestLimits = LIMITS) -> RequestError:
    return errors(body, limits)[-1]


def short_id(value: object) -> str | None:
    return repr(value[:40]) if isinstance(value, bytes) else None


# --- valid bodies -------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(min_value=-F32_MAX, max_value=F32_MAX, allow_nan=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -0.0, 5e-324, 1e-45, 1.5e-45, F32_MAX, -F32_MAX, 2**64, -(2**63) - 1, 1000000001]),
    st.none(),  # a missing value
)
FLOAT_STYLES = [repr, "{:.17e}".format, "{:.9g}".format, lambda x: repr(x).upper(), "{:.12E}".format]


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    fields: dict[str, Any] = {
        "series": draw(st.lists(st.lists(numbers, min_size=1, max_size=30), min_size=1, max_size=6))
    }
    count = len(fields["series"])
    if draw(st.booleans()):
        fields["pairing"] = draw(st.sampled_from([None, *PAIRINGS]))
    if fields.get("pairing") == "each":
        picked = draw(st.lists(st.sampled_from(range(len(NAMES))), min_size=count, max_size=count))
        fields["channels"] = [NAMES[i] if draw(st.booleans()) else i for i in picked]
    elif draw(st.booleans()):
        picked = draw(st.lists(st.sampled_from(range(len(NAMES))), min_size=1, unique=True))
        fields["channels"] = [NAMES[i] if draw(st.booleans()) else i for i in picked]
    if draw(st.booleans()):
        history = st.lists(numbers, max_size=30)
        fields["history"] = draw(st.lists(history, min_size=count, max_size=count))
    for key, choices in [
        ("warmup", [None, *WARMUP_MODES]),
        ("gaps", [None, *GAP_MODES]),
        ("dtype", [None, *DTYPES]),
        ("min_periods", [None, 0, 1, 5, 2**40]),
        ("stride", [None, 1, 3, 64]),
    ]:
        if draw(st.booleans()):
            fields[key] = draw(st.sampled_from(choices))

    def ws() -> str:
        return draw(st.sampled_from(WHITESPACE))

    def text(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ",".join(ws() + text(item) + ws() for item in value) + "]"
        if isinstance(value, str):
            if draw(st.booleans()):
                return '"' + "".join(f"\\u{ord(c):04x}" for c in value) + '"'
            return json.dumps(value, ensure_ascii=draw(st.booleans()))
        if isinstance(value, float):
            return draw(st.sampled_from(FLOAT_STYLES))(value)
        return json.dumps(value)

    keys = draw(st.permutations(list(fields)))
    members = [ws() + json.dumps(key) + ws() + ":" + ws() + text(fields[key]) + ws() for key in keys]
    return ("{" + ",".join(members) + "}").encode()


@EXAMPLES
@given(bodies())
def test_generated_bodies_match_the_reference_and_the_old_parser(body: bytes) -> None:
    got = new(body, WIDE)
    assert got == reference(body)
    before = old(body, WIDE)
    if before is not None and not isinstance(before[0], int):  # the old one refused float32 max
        assert got == before


HAND_WRITTEN = [
    b'{"series": [[1, 2.5, -3], [4e10]]}',
    b' \n{ "warmup" : null ,\t"series" :\r\n[ [ 1 ,2 ] , [3]\n] , "channels" : [ 1 , 0 ] } \n',
    b'{"channels": ["a\\"[b]", "\\u00e9{x},\\\\"], "series": [[-0.0, -0, 0e0, 1E+2, 2.5e-3]]}',
    b'{"series": [[1]], "channels": ["\\u0066ast", "\\u006did"], "warmup": "adjust"}',
    b'{"se\\u0072ies": [[1, 2]], "warmup": "zeros"}',
    b'{"series": [[3.4028235e+38, -3.4028235e+38, 3.4028234663852886e+38, 1e-46]]}',
    b'{"series": [[18446744073709551616, -9223372036854775809, 1' + b"0" * 30 + b"]]}",
    b'{"series": [[9007199254740993, 0.1, 1.00000005960464477539]]}',
    b'\xef\xbb\xbf{"series": [[1]]}',
    b'{"series": [[1]], "series": [[2, 3]]}',
    b'{"series": [[1e999]], "series": [[2, 3]]}',
    b'{"warmup": "nope", "warmup": null, "series": [[1' + b", 1" * 63 + b"]]}",
    b'{"series": [[null, 1, null], [null]], "history": [[], [null, 2]], "dtype": "float64"}',
    b'{"series":[[null,null ,\n null\t,-0.0]], "history": [[ ]], "gaps": "skip", "stride": 3}',
    b'{"series": [[1000000001, 0.1, 1e300, null]], "dtype": "float64", "min_periods": 0}',
    b'{"series": [[1], [2]], "pairing": "each", "channels": ["mid", "mid"], "warmup": "adjust"}',
    b'{"series": [[1, 18446744073709551616, null]], "history": [[null, 1e-46]], "pairing": null}',
]


@pytest.mark.parametrize("body", HAND_WRITTEN, ids=short_id)
def test_hand_written_bodies(body: bytes) -> None:
    got = new(body)
    assert got == reference(body.removeprefix(b"\xef\xbb\xbf"))
    before = old(body)
    if before is not None and not isinstance(before[0], int):
        assert got == before


@pytest.mark.parametrize("field", ["stride", "min_periods"])
@pytest.mark.parametrize("number", [b"1" + b"0" * 20, b"-9223372036854775809", b"18446744073709551615"])
def test_an_option_means_the_same_on_the_exact_path(field: str, number: bytes) -> None:
    # A BOM sends the body to the stdlib parser instead of orjson: same answer either way.
    body = b'{"series": [[1, 2]], "%s": %s}' % (field.encode(), number)
    assert outcome(parse_smooth_body, body) == outcome(parse_smooth_body, b"\xef\xbb\xbf" + body)


def test_float32_max_as_printed_is_accepted() -> None:
    job = parse_smooth_body(b'{"series": [[3.4028235e+38, -3.4028235e+38]]}', LIMITS, NAMES)
    assert job.series[0].tolist() == [F32_MAX, -F32_MAX]


# --- errors -------------------------------------------------------------------------------

ERRORS = [
    (b'{"series": [[1, 2]', 400, "malformed JSON at byte 18"),
    (b"", 400, "malformed JSON at byte 0"),
    (b'{"series": [[1, 2,]]}', 400, "malformed JSON at byte 18: Expecting value"),
    (b'{"series": [[1, 2}]}', 400, "malformed JSON at byte 17"),
    (b'{"series": [[1]]}}', 400, "malformed JSON at byte 17"),
    (b'{"series": [[1]], "channels": [0,]}', 400, "malformed JSON at byte 33: Expecting value"),
    (b'{"series": [[1, "\xff"]]}', 400, "malformed JSON at byte 17: invalid UTF-8"),
    (b'{"series": [[1]], "x": "\xff"}', 400, "malformed JSON at byte 24: invalid UTF-8"),
    (b'{"series": [[1,]], "series": [[1]]}', 400, "malformed JSON at byte 15"),
    (b'{"series": [[1, "x"], [2,,]]}', 400, "malformed JSON at byte 25"),
    (b'{"series": [[1, NaN]]}', 422, "NaN is not allowed at series[0][1]"),
    (b'{"series": [[1], [Infinity]]}', 422, "Infinity is not allowed at series[1][0]"),
    (b'{"series": [[-Infinity]]}', 422, "-Infinity is not allowed at series[0][0]"),
    (b'{"series": [[NaN]], "series": [[1]]}', 422, "NaN is not allowed"),
    (b'{"series": [[1]], "warmup": NaN}', 422, "NaN is not allowed"),
    (b'{"series": [[1, 1e999]]}', 422, "series[0][1] = inf is not finite"),
    (b'{"series": [[1, -1e999]]}', 422, "series[0][1] = -inf is not finite"),
    (b'{"series": [[1, 1e39]]}', 422, "series[0][1] = 1e+39 is not finite or is outside the float32 range"),
    (b'{"series": [[3.4028236e+38]]}', 422, "series[0][0] = 3.4028236e+38 is not finite"),
    (b'{"series": [[2], [1, 1' + b"0" * 400 + b"]]}", 422, "series[1][1] = inf is not finite"),
    (b"[1, 2]", 422, "must be a JSON object, got list"),
    (b"[[[1]]]", 422, "must be a JSON object, got list"),
    (b'{"values": [[1]]}', 422, "unknown field(s) ['values']"),
    (b"{}", 422, "'series' is required"),
    (b'{"series": []}', 422, "'series' is empty"),
    (b'{"series": "1,2"}', 422, "'series' must be a list of lists of numbers, got str"),
    (b'{"series": {"a": [1]}}', 422, "'series' must be a list of lists of numbers, got dict"),
    (b'{"series": [[1], []]}', 422, "series[1] is empty"),
    (b'{"series": [[1], [ \n ]]}', 422, "series[1] is empty"),
    (b'{"series": [[1], 5]}', 422, "series[1] must be a list of numbers, got int"),
    (b'{"series": [[1, "2"]]}', 422, "series[0][1] must be a number, got str '2'"),
    (b'{"series": [[1, nul]]}', 400, "malformed JSON at byte 16"),
    (b'{"series": [[1, null1]]}', 400, "malformed JSON at byte 20"),
    (b'{"series": [[1, nullnull]]}', 400, "malformed JSON"),
    (b'{"series": [[1, -null]]}', 400, "malformed JSON"),
    (b'{"series": [[1, Infinity, null]]}', 422, "Infinity is not allowed at series[0][1]"),
    (b'{"series": [[1, null, 1e39]]}', 422, "series[0][2] = 1e+39 is not finite or is outside the float32"),
    (b'{"series": [[1, null, 1e999]], "dtype": "float64"}', 422, "series[0][2] = inf is not finite"),
    (b'{"series": [[1]], "history": [[null, 1e39]]}', 422, "history[0][1] = 1e+39 is not finite"),
    (b'{"series": [[1]], "history": [[2, "x"]]}', 422, "history[0][1] must be a number, got str 'x'"),
    (b'{"series": [[1], [2]], "history": [[], 5]}', 422, "history[1] must be a list of numbers, got int"),
    (b'{"series": [[1], [2]], "history": [[]]}', 422, "'history' has 1 lists for 2 series"),
    (b'{"series": [[1]], "history": [[1]], "history": "x"}', 422, "'history' must be a list of lists"),
    (
        b'{"series": [[1]], "history": [[1' + b", 1" * 64 + b"]]}",
        413,
        "history[0] has 65 values; the limit is 64",
    ),
    (b'{"series": [[1]], "pairing": "all"}', 422, "'pairing' must be one of ['bank', 'each'], got 'all'"),
    (b'{"series": [[1], [2]], "pairing": "each"}', 422, "'channels' is required with pairing 'each'"),
    (
        b'{"series": [[1], [2]], "pairing": "each", "channels": [0]}',
        422,
        "'channels' has 1 entries for 2 series",
    ),
    (b'{"series": [[1]], "pairing": "each", "channels": [9]}', 422, "channels[0] = 9 is not one of"),
    (b'{"series": [[1]], "gaps": "fill"}', 422, "'gaps' must be one of ['decay', 'skip'], got 'fill'"),
    (
        b'{"series": [[1]], "dtype": "float16"}',
        422,
        "'dtype' must be one of ['float32', 'float64'], got 'float16'",
    ),
    (b'{"series": [[1]], "min_periods": -1}', 422, "'min_periods' must be an integer >= 0, got -1"),
    (b'{"series": [[1]], "min_periods": 1.5}', 422, "'min_periods' must be an integer >= 0, got 1.5"),
    (b'{"series": [[1]], "min_periods": true}', 422, "'min_periods' must be an integer >= 0, got True"),
    (b'{"series": [[1]], "stride": 0}', 422, "'stride' must be an integer in 1..64, got 0"),
    (b'{"series": [[1]], "stride": 65}', 422, "'stride' must be an integer in 1..64, got 65"),
    (b'{"series": [[1]], "stride": "2"}', 422, "'stride' must be an integer in 1..64, got '2'"),
    (b'{"series": [[1, true]]}', 422, "series[0][1] must be a number, got bool"),
    (b'{"series": [[1, false]]}', 422, "series[0][1] must be a number, got bool"),
    (b'{"series": [[1, [2]]]}', 422, "series[0][1] must be a number, got list"),
    (b'{"series": [[1, {"a": 2}]]}', 422, "series[0][1] must be a number, got dict"),
    (b'{"series": [[1]' + b", [1]" * 8 + b"]}", 413, "9 series; the limit is 8"),
    (b'{"series": [[1], [1' + b", 1" * 64 + b"]]}", 413, "series[1] has 65 values; the limit is 64"),
    (b'{"series": [[1, "x"], [1' + b", 1" * 64 + b"]]}", 413, "series[1] has 65 values"),
    (b'{"series": [[1]], "channels": ["nope"]}', 422, "channels[0] = 'nope' is not one of"),
    (b'{"series": [[1]], "channels": [4]}', 422, "channels[0] = 4"),
    (b'{"series": [[1]], "channels": [true]}', 422, "channels[0] = True"),
    (b'{"series": [[1]], "channels": [1.0]}', 422, "channels[0] = 1.0"),
    (b'{"series": [[1]], "channels": [[1, 2]]}', 422, "channels[0] = [1, 2] is not one of"),
    (b'{"series": [[1]], "channels": []}', 422, "'channels' must be a non-empty list"),
    (b'{"series": [[1]], "channels": "fast"}', 422, "'channels' must be a non-empty list"),
    (b'{"series": [[1]], "channels": ["mid", 0, 1]}', 422, "channels[2] repeats 'mid' (channels[0])"),
    (b'{"series": [[1]], "warmup": "ones"}', 422, "'warmup' must be one of ['zeros', 'adjust'], got 'ones'"),
    (b'{"series": [[1]], "warmup": [[1, 2]]}', 422, "got [[1, 2]]"),
]


@pytest.mark.parametrize(("body", "status", "message"), ERRORS, ids=short_id)
def test_errors_say_what_and_where(body: bytes, status: int, message: str) -> None:
    for raised in errors(body):
        assert (raised.status, message in raised.detail) == (status, True), raised.detail


def test_every_prefix_of_a_body_is_malformed() -> None:
    body = b'{"series": [[1, -2.5e3], [7]], "channels": ["a\\"[b]", 1], "warmup": "zeros"}'
    new(body)  # the whole body is valid
    for end in range(len(body)):
        assert error(body[:end]).status == 400, body[:end]


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"}",
        b'{"series": [[1]]]',
        b'{"series": [[1]]}]]]',
        b']]]{"series": [[1]]}',
        b'{"series": [[[1]]}',
        b'{"series": [[1]], "x": "[[[',
        b'{"series": [[1]], "x": "\\"}',
        b'{"series": [\\"[1]"]}',
        b'{"series": [[1] [2]]}',
        b'{"series": [[1 2]]}',
        b'{"series": [[1|2]]}',
        b'{"series": [[01]]}',
        b'{"series": [[1.]]}',
        b'{"series": [[+1]]}',
        b'{"series": [[.5]]}',
        b'{"series": [[0x10]]}',
        b'{"series": [[1]]} {}',
        b"{" * 5000 + b"}" * 5000,
        b'{"series": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
    ids=short_id,
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    assert error(body, WIDE).status == 400


MUTATIONS = st.sampled_from(list(b'"[]{},:\\ 0-.eE\x01'))


@EXAMPLES
@given(
    bodies(), st.lists(st.tuples(st.integers(0, 10**6), MUTATIONS, st.integers(0, 2)), min_size=1, max_size=3)
)
def test_mutated_bodies_agree_with_the_old_parser(body: bytes, edits: list[tuple[int, int, int]]) -> None:
    mutated = bytearray(body)
    for where, byte, how in edits:
        at = where % (len(mutated) + 1)
        if how == 0:
            mutated.insert(at, byte)
        elif at < len(mutated):
            mutated[at : at + 1] = b"" if how == 1 else bytes([byte])
    got = new(bytes(mutated), WIDE)
    before = old(bytes(mutated), WIDE)
    if before is not None and got != before:
        if isinstance(got[0], int):
            assert got[0] == before[0], (got, before)
        else:  # the old parser refused float32 max as printed
            assert "outside the float32 range" in before[1]
            assert got == reference(bytes(mutated))
    try:
        json.loads(bytes(mutated))
    except ValueError:
        assert got[0] == 400
    else:
        assert got[0] != 400


@pytest.mark.parametrize("group", [1, 3, 7, 1 << 18])
def test_series_are_narrowed_in_groups(group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonbody, "_GROUP_VALUES", group)
    monkeypatch.setattr(jsoncodec, "SMALL_BODY_BYTES", -1)
    series: list[list[Any]] = [[1, 2], [3], [4, 5, 6], [2**64, 8], [9], [10, 11]]
    body = json.dumps({"series": series}).encode()
    assert outcome(parse_smooth_body, body) == reference(body)
    for i, j in [(0, 0), (0, 1), (2, 2), (3, 1), (4, 0), (5, 1)]:
        broken = [list(s) for s in series]
        broken[i][j] = 1e39
        assert outcome(parse_smooth_body, json.dumps({"series": broken}).encode()) == (
            422,
            f"series[{i}][{j}] = 1e+39 is not finite or is outside the float32 range",
        )


def test_duplicate_keys_behave_like_orjson() -> None:
    body = b'{"series": [[1]], "channels": [0], "series": [[2, 3]], "channels": ["mid"]}'
    assert orjson.loads(body)["series"] == [[2, 3]]
    options = (False, "bank", "decay", 1, "float32", 1)
    assert new(body) == ([np.float32([2, 3]).view(np.uint32).tolist()], [1], None, None, options)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nulls_in_plain_arrays_take_the_simdjson_path(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_stdlib(*args: object) -> None:
        raise AssertionError("the stdlib parser was asked")

    monkeypatch.setattr(jsonbody, "stdlib", no_stdlib)
    series = [[None, 1.5, None, -2], [None], [3, None]]
    body = json.dumps({"series": series, "history": [[None, 7], [], [None]], "dtype": dtype}).encode()
    with scanning():
        job = parse_smooth_body(body, LIMITS, NAMES)
    expected = [np.array([np.nan if x is None else x for x in s], dtype) for s in series]
    for got, want in zip(job.series, expected, strict=True):
        np.testing.assert_array_equal(got, want)  # NaN where null, nowhere else
        assert got.dtype == np.dtype(dtype)
    assert job.history is not None
    assert [h.tolist() for h in job.history][1:] == [[], [pytest.approx(np.nan, nan_ok=True)]]
    np.testing.assert_array_equal(job.history[0], np.array([np.nan, 7], dtype))


def test_float64_keeps_float64_values() -> None:
    body = b'{"series": [[1000000001, 0.1, 1.7976931348623157e308]], "dtype": "float64"}'
    with scanning():
        job = parse_smooth_body(body, LIMITS, NAMES)
    assert job.series[0].tolist() == [1000000001.0, 0.1, 1.7976931348623157e308]
    narrow = parse_smooth_body(b'{"series": [[1000000001]]}', LIMITS, NAMES)
    assert narrow.series[0].tolist() == [1000000000.0]  # float32 cannot hold it


@pytest.mark.parametrize(
    "template",
    [
        b'{"series": [[1]], "%s": 1}',
        b'{"series": [[1]], "channels": ["%s"]}',
        b'{"series": [[1]], "warmup": "%s"}',
        b'{"series": [[1, "%s"]]}',
        b'{"series": [[1]], "channels": [["%s"]]}',
        b'{"series": [[1]], "x": "%s',
        b'{"series": [[1, %s]]}',
        b'{"series": [[1]], "times": [["%s"]]}',
        b'{"series": [[1]], "times": [[%s]]}',
        b'{"series": [[1]], "times": [[1]], "max_gap": "%s"}',
    ],
)
def test_error_messages_quote_little_of_a_long_input(template: bytes) -> None:
    for long in (b"7" * (1 << 20), b"7" * 1000):  # past and within the small-body path
        raised = error(template.replace(b"%s", long), WIDE)
        assert len(raised.detail) < 200, raised.detail[:300]


def test_bodies_with_many_structural_characters_are_parsed_whole() -> None:
    many_keys = b"{" + b'"warmup": null, ' * 2000 + b'"series": [[1, 2]]}'
    assert new(many_keys) == old(many_keys)
    many_series = b'{"series": [' + b"[1]," * 999 + b"[1]]}"
    assert new(many_series) == (413, "1000 series; the limit is 8")
    nan_inside = b"{" + b'"warmup": "zeros", ' * 2000 + b'"series": [[1, NaN]]}'
    assert new(nan_inside)[0] == 422


@EXAMPLES
@given(bodies())
def test_count_values_upper_bound(body: bytes) -> None:
    values = sum(len(s) for s in json.loads(body)["series"])
    assert values <= count_values_upper_bound(body) <= body.count(b",") + body.count(b"]")


# --- the structural scan ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet='ab"\\[]{},:| é\n\x00\u2028', max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=30,
)


def depth_two_arrays(value: Any) -> list[Any]:
    found = []
    for child in value.values() if isinstance(value, dict) else value if isinstance(value, list) else []:
        if isinstance(child, (list, dict)):
            found += [
                g for g in (child.values() if isinstance(child, dict) else child) if isinstance(g, list)
            ]
    return found


@EXAMPLES
@given(json_values, st.booleans(), st.sampled_from([None, 0, 2]), st.sampled_from([(",", ":"), (", ", ": ")]))
def test_scan_finds_every_array_at_depth_two(
    value: Any, ascii_only: bool, indent: int | None, separators: tuple[str, str]
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only, indent=indent, separators=separators).encode()
    spans = find_spans(np.frombuffer(body, np.uint8), max_events=10**9)
    assert spans is not None
    assert [json.loads(body[s.start : s.end]) for s in spans] == depth_two_arrays(value)
    for span in spans:
        inner = body[span.start + 1 : span.end - 1]
        assert span.plain == (not any(c in inner for c in b'"\\[]{}'))


# --- responses ----------------------------------------------------------------------------

SPECIAL = np.array(
    [-0.0, 0.0, 1e-45, np.finfo(np.float32).smallest_normal, F32_MAX, -F32_MAX, 1.6188078, 1 / 3], np.float32
)


def blocks(name: str) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    shapes = {
        "one": [(1, 1)],
        "short": [(3, int(n)) for n in rng.integers(1, 5, 300)],
        "long": [(2, 100_000), (2, 3)],
        "empty-rows": [(0, 4), (2, 0)],
        "none": [],
    }[name]
    out = [rng.standard_normal(shape).astype(np.float32) * 10.0 ** rng.integers(-40, 38) for shape in shapes]
    if out:
        out[0].reshape(-1)[: SPECIAL.size] = SPECIAL[: out[0].size]
    return out


@pytest.mark.parametrize("shapes", ["one", "short", "long", "empty-rows", "none"])
@pytest.mark.parametrize("chunk_bytes", [1, 4096, 1 << 20])
def test_response_chunks_equal_one_orjson_call(shapes: str, chunk_bytes: int) -> None:
    smoothed = blocks(shapes)
    channels, alphas = ["fast", 'a"[b]'], [0.38398948311805725, 1e-300]
    expected = orjson.dumps(
        {"smoothed": smoothed, "channels": channels, "alphas": alphas, "model_version": "sha256:ab"},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    chunks = list(encode_smooth_response(smoothed, channels, alphas, "sha256:ab", chunk_bytes))
    assert b"".join(chunks) == expected
    longest_row = max(
        (len(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)) for b in smoothed for row in b), default=0
    )
    assert all(len(chunk) <= chunk_bytes + max(longest_row, 200) for chunk in chunks)  # 200: the tail
    assert all(len(chunk) >= chunk_bytes for chunk in chunks[:-1])


def test_response_round_trips_through_the_parser() -> None:
    smoothed = [np.arange(6, dtype=np.float32).reshape(2, 3) / 7]
    body = b"".join(encode_smooth_response(smoothed, ["fast", "mid"], [0.5, 0.25], "v"))
    rows = orjson.loads(body)["smoothed"][0]
    series = json.dumps({"series": rows}).encode()
    job = parse_smooth_body(series, LIMITS, NAMES)
    assert np.array_equal(np.stack(job.series), smoothed[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
def test_missing_outputs_are_null_and_history_comes_last(dtype: str, chunk_bytes: int) -> None:
    smoothed = [np.array([[np.nan, 1000000001.0, 0.1]], dtype), np.empty((1, 0), dtype)]
    history = [np.array([np.nan, 2.5], dtype), np.empty(0, dtype)]
    body = b"".join(encode_smooth_response(smoothed, ["fast"] * 2, [0.5, 0.5], "v", chunk_bytes, history))
    document = orjson.loads(body)
    assert list(document) == ["smoothed", "channels", "alphas", "model_version", "history"]
    first = 1000000001.0 if dtype == "float64" else 1000000000.0  # float32 holds no more
    assert document["smoothed"] == [[[None, first, 0.1]], [[]]]
    assert document["history"] == [[None, 2.5], []]
    expected = {"smoothed": smoothed, "channels": ["fast"] * 2, "alphas": [0.5, 0.5], "model_version": "v"}
    assert body == orjson.dumps({**expected, "history": history}, option=orjson.OPT_SERIALIZE_NUMPY)


# --- exact messages and defaults, on both paths ---------------------------------------------

EXPECTED_FIELDS = ", ".join(
    [
        *("series", "history", "channels", "pairing", "warmup", "gaps", "min_periods", "dtype", "stride"),
        *("times", "history_times", "max_gap"),
    ]
)
NOT_ONE = "is not one of ['fast', 'mid', 'a\"[b]', 'é{x},\\\\'] or 0..3"
EXACT = [
    (b"[1, 2]", 422, "the body must be a JSON object, got list"),
    (b'"x"', 422, "the body must be a JSON object, got str"),
    (b'{"values": [[1]], "a": 1}', 422, f"unknown field(s) ['a', 'values']; expected {EXPECTED_FIELDS}"),
    (b'{"series": [[1]], "Series": [[1]]}', 422, f"unknown field(s) ['Series']; expected {EXPECTED_FIELDS}"),
    (b'{"warmup": "zeros"}', 422, "'series' is required"),
    (b'{"series": "1,2"}', 422, "'series' must be a list of lists of numbers, got str"),
    (b'{"series": []}', 422, "'series' is empty"),
    (b'{"series": [[1]' + b", [1]" * 8 + b"]}", 413, "9 series; the limit is 8"),
    (b'{"series": [[1], []]}', 422, "series[1] is empty"),
    (b'{"series": [[1], {}]}', 422, "series[1] must be a list of numbers, got dict"),
    (
        b'{"series": [[1], [2, 1e39]]}',
        422,
        "series[1][1] = 1e+39 is not finite or is outside the float32 range",
    ),
    (
        b'{"series": [[1]], "history": "x"}',
        422,
        "'history' must be a list of lists of numbers (one per series), got str",
    ),
    (b'{"series": [[1], [2]], "history": [[]]}', 422, "'history' has 1 lists for 2 series: one per series"),
    (b'{"series": [[1]], "history": [5]}', 422, "history[0] must be a list of numbers, got int"),
    (
        b'{"series": [[1]], "history": [[1' + b", 1" * 64 + b"]]}",
        413,
        "history[0] has 65 values; the limit is 64",
    ),
    (
        b'{"series": [[1]], "history": [[1e39]]}',
        422,
        "history[0][0] = 1e+39 is not finite or is outside the float32 range",
    ),
    (b'{"series": [[1]], "history": [[1, "x"]]}', 422, "history[0][1] must be a number, got str 'x'"),
    (b'{"series": [[1]], "pairing": "all"}', 422, "'pairing' must be one of ['bank', 'each'], got 'all'"),
    (b'{"series": [[1]], "warmup": "ones"}', 422, "'warmup' must be one of ['zeros', 'adjust'], got 'ones'"),
    (b'{"series": [[1]], "gaps": "fill"}', 422, "'gaps' must be one of ['decay', 'skip'], got 'fill'"),
    (b'{"series": [[1]], "dtype": 16}', 422, "'dtype' must be one of ['float32', 'float64'], got 16"),
    (b'{"series": [[1]], "min_periods": -1}', 422, "'min_periods' must be an integer >= 0, got -1"),
    (b'{"series": [[1]], "stride": 0}', 422, "'stride' must be an integer in 1..64, got 0"),
    (b'{"series": [[1]], "stride": 65}', 422, "'stride' must be an integer in 1..64, got 65"),
    (b'{"series": [[1]], "channels": [4]}', 422, f"channels[0] = 4 {NOT_ONE}"),
    (
        b'{"series": [[1], [2]], "pairing": "each"}',
        422,
        "'channels' is required with pairing 'each': one channel per series",
    ),
    (
        b'{"series": [[1], [2]], "pairing": "each", "channels": [1, "mid", 1]}',
        422,
        "'channels' has 3 entries for 2 series: pairing 'each' takes one channel per series, in series order",
    ),
    (b'{"series": [[1]], "channels": [1, "mid"]}', 422, "channels[1] repeats 'mid' (channels[0])"),
    # A 422 with a broken array elsewhere is a 400; a NaN elsewhere leaves the first error.
    (b'{"series": [[1, "x"], [NaN]]}', 422, "series[0][1] must be a number, got str 'x'"),
    (
        b'{"series": [[1], [NaN]], "pairing": "x"}',
        422,
        "'pairing' must be one of ['bank', 'each'], got 'x'",
    ),
    (b'{"series": [[1, "x"], [2 3]]}', 400, "malformed JSON at byte 25: Expecting ',' delimiter"),
    (b'{"series": [[1]], "pairing": "x", "y": [[1,]]}', 400, "malformed JSON at byte 43: Expecting value"),
]


@pytest.mark.parametrize(("body", "status", "message"), EXACT, ids=short_id)
def test_exact_errors(body: bytes, status: int, message: str) -> None:
    for raised in errors(body):
        assert (raised.status, raised.detail) == (status, message)


def test_the_limits_are_inclusive() -> None:
    eight = parse_smooth_body(b'{"series": [[1]' + b", [2]" * 7 + b"]}", LIMITS, NAMES)
    assert [s.tolist() for s in eight.series] == [[1.0]] + [[2.0]] * 7
    long = (
        b'{"series": [[1' + b", 1" * 63 + b'], [2]], "history": [[3' + b", 3" * 63 + b'], []], "stride": 64}'
    )
    for path in (nullcontext, scanning):
        with path():
            job = parse_smooth_body(long, LIMITS, NAMES)
        assert [s.tolist() for s in job.series] == [[1.0] * 64, [2.0]]
        assert job.history is not None
        assert [h.tolist() for h in job.history] == [[3.0] * 64, []]
        assert job.stride == 64


def fields(job: SmoothJob) -> tuple[Any, ...]:
    return (job.channels, job.warmup, job.pairing, job.gaps, job.min_periods, job.dtype, job.stride)


@pytest.mark.parametrize("path", [nullcontext, scanning])
def test_defaults_and_every_field_read(path: Any) -> None:
    with path():
        job = parse_smooth_body(b'{"series": [[1.5, null]]}', LIMITS, NAMES)
        nulls = b', "pairing": null, "warmup": null, "gaps": null, "min_periods": null, "dtype": null'
        same = parse_smooth_body(
            b'{"series": [[1.5, null]], "channels": null, "history": null, "stride": null' + nulls + b"}",
            LIMITS,
            NAMES,
        )
        every = parse_smooth_body(
            b'{"series": [[1000000001], [2]], "history": [[3], []], "channels": ["mid", 3], '
            b'"pairing": "each", '
            b'"warmup": "adjust", "gaps": "skip", "min_periods": 0, "dtype": "float64", "stride": 3}',
            LIMITS,
            NAMES,
        )
    assert fields(job) == ([0, 1, 2, 3], None, "bank", "decay", 1, "float32", 1)
    assert fields(same) == fields(job)
    assert job.history is None
    assert same.history is None
    assert job.series[0].dtype == np.float32
    assert job.series[0][0] == 1.5
    assert np.isnan(job.series[0][1])
    assert fields(every) == ([1, 3], "adjust", "each", "skip", 0, "float64", 3)
    assert [s.tolist() for s in every.series] == [[1000000001.0], [2.0]]
    assert every.history is not None
    assert [h.tolist() for h in every.history] == [[3.0], []]
    assert all(a.dtype == np.float64 for a in [*every.series, *every.history])


@pytest.mark.parametrize("pad", [-1, 0, 1])
def test_small_bodies_are_read_by_one_orjson_call(pad: int) -> None:
    """Up to 64 KiB the body is one orjson call (an array is quoted as Python shows it);
    past it the body is scanned (an array is quoted by its text)."""
    head = b'{"series": [[1]], "warmup": [[1,2]]'
    body = head + b" " * (jsoncodec.SMALL_BODY_BYTES + pad - len(head) - 1) + b"}"
    assert len(body) == jsoncodec.SMALL_BODY_BYTES + pad
    shown = "[[1,2]]" if pad > 0 else "[[1, 2]]"
    with pytest.raises(RequestError) as info:
        parse_smooth_body(body, LIMITS, NAMES)
    assert info.value.detail == f"'warmup' must be one of ['zeros', 'adjust'], got {shown}"


@pytest.mark.parametrize(
    ("body", "bound"), [(b"", 0), (b"[]", 1), (b'{"series": [[1, 2], [3]]}', 5), (b"1,2,3,,]]", 6)]
)
def test_count_values_upper_bound_exactly(body: bytes, bound: int) -> None:
    assert count_values_upper_bound(body) == bound


def test_response_chunks_are_cut_once_chunk_bytes_are_reached() -> None:
    smoothed = [np.array([[1.5]], np.float32)]
    pieces = list(encode_smooth_response(smoothed, ["a"], [0.5], "v", chunk_bytes=13))
    assert pieces[0] == b'{"smoothed":['  # 13 bytes: cut at exactly chunk_bytes
    pieces = list(encode_smooth_response(smoothed, ["a"], [0.5], "v", chunk_bytes=14))
    assert pieces[0] == b'{"smoothed":[['  # 13 + 0 + 1 bytes
    assert b"".join(pieces) == b'{"smoothed":[[[1.5]]],"channels":["a"],"alphas":[0.5],"model_version":"v"}'
    pieces = list(encode_smooth_response(smoothed, ["a"], [0.5], "v", chunk_bytes=7))
    assert pieces == [  # every chunk holds at least 7 bytes, counted afresh after each cut
        b'{"smoothed":[',
        b"[[1.5]]",
        b'],"channels":["a"],"alphas":[0.5]',
        b',"model_version":"v"',
        b"}",
    ]


def test_a_block_that_is_not_two_dimensional_is_encoded_whole() -> None:
    smoothed = [
        np.array([1.0, 2.0], np.float32),
        np.array([[3.0]], np.float32),
        np.zeros((1, 1, 1), np.float32),
    ]
    body = b"".join(encode_smooth_response(smoothed, ["a"], [0.5], "v", chunk_bytes=1))
    assert (
        body
        == b'{"smoothed":[[1.0,2.0],[[3.0]],[[[0.0]]]],"channels":["a"],"alphas":[0.5],"model_version":"v"}'
    )
