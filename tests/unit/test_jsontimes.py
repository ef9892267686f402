"""The time fields of a ``/smooth`` body (app/api/jsontimes.py through ``parse_smooth_body``),
on both of the parser's paths: one orjson call for a small body, and the scan, where a list
of numbers is read by simdjson and a list with strings by the stdlib parser."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import orjson
import pytest

from app.api.jsoncodec import parse_smooth_body
from app.api.jsontimes import TIME
from app.api.schemas import RequestError, RequestLimits
from tests.unit.test_jsoncodec import scanning

NAMES = ("a", "b")
LIMITS = RequestLimits(max_series=8, max_length=64)
PATHS = [nullcontext, scanning]


def parse(body: dict[str, Any] | bytes, path: Any) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with path():
        return parse_smooth_body(raw, LIMITS, NAMES)


@pytest.mark.parametrize("path", PATHS)
def test_times_history_times_and_max_gap_are_read_as_float64_seconds(path):
    job = parse(
        {
            "series": [[1, 2, 3], [4]],
            "times": [[0.5, 1, 1e3], ["2024-05-01T12:00:00.25+02:00"]],
            "history": [[7, None], [8]],
            "history_times": [[-2, -1.5], ["2024-05-01T10:00:00Z"]],
            "max_gap": 0.5,
        },
        path,
    )
    assert [t.tolist() for t in job.times] == [[0.5, 1.0, 1000.0], [1714557600.25]]
    assert [t.tolist() for t in job.history_times] == [[-2.0, -1.5], [1714557600.0]]
    assert all(t.dtype == np.float64 for t in [*job.times, *job.history_times])
    assert job.max_gap == 0.5
    assert type(job.max_gap) is float
    plain = parse({"series": [[1]]}, path)
    assert (plain.times, plain.history_times, plain.max_gap) == (None, None, None)
    assert parse({"series": [[1]], "times": [[5]], "max_gap": 2}, path).max_gap == 2.0


BAD: list[tuple[bytes, str]] = [
    (b'{"series": [[1, 2]], "times": [[0, 1e999]]}', "times[0][1] = inf is not finite"),
    (b'{"series": [[1, 2]], "times": [[0, NaN]]}', "times[0][1] = NaN is not finite"),
    (b'{"series": [[1, 2]], "times": [[0, -Infinity]]}', "times[0][1] = -Infinity is not finite"),
    (
        b'{"series": [[1, 2]], "times": [[0, null]]}',
        "times[0][1] is null: every value needs a time (",
    ),
    (b'{"series": [[1, 2]], "times": [["x", 1]]}', "times[0][0] = 'x' is not a number of seconds or an RFC"),
    (b'{"series": [[1, 2]], "times": [[0, true]]}', f"times[0][1] must be {TIME}, got bool True"),
    (b'{"series": [[1, 2]], "times": [[0, {"t": 1}]]}', f"times[0][1] must be {TIME}, got dict {{'t': 1}}"),
    (
        b'{"series": [[1, 2, 3]], "times": [[0, 2, 1]]}',
        "times[0][2] = 1.0 s is not after times[0][1] = 2.0",
    ),
    (b'{"series": [[1, 2]], "times": [[0]]}', "times[0] has 1 times for the 2 values of series[0]"),
    (b'{"series": [[1], [2]], "times": [[0]]}', "'times' has 1 lists for 2 series: one per series"),
    (b'{"series": [[1]], "times": 5}', "'times' must be a list of lists of times (one per series), got int"),
    (b'{"series": [[1]], "times": [[0]], "max_gap": 0}', "'max_gap' must be a number of seconds > 0, got 0"),
    (b'{"series": [[1]], "times": [[0]], "max_gap": true}', "'max_gap' must be a number of seconds > 0, got"),
    (
        b'{"series": [[1]], "times": [[0]], "max_gap": 1e999}',
        "'max_gap' must be a number of seconds > 0, got",
    ),
    (
        b'{"series": [[1], [2]], "times": [[0], [0]], "history": [[1], [1]], "history_times": [[-1]]}',
        "'history_times' has 1 lists for 2 histories: one per history",
    ),
    (
        b'{"series": [[1]], "times": [[0]], "history": [[1, 2]], "history_times": [[-3]]}',
        "history_times[0] has 1 times for the 2 values of history[0]",
    ),
    (
        b'{"series": [[1]], "times": [[5]], "history": [[1, 2, 3]], "history_times": [[1, 3, 5]]}',
        "times[0][0] = 5.0 s is not after history_times[0][2] = 5.0 s: times must be strictly increasing",
    ),
]


EXACT = [
    (
        b'{"series": [[1]], "times": [[0]], "history": [[1]]}',
        "'history' with 'times' needs 'history_times': the times of its values",
    ),
    (b'{"series": [[1]], "history": [[1]], "history_times": [[0]]}', "'history_times' needs 'times'"),
    (b'{"series": [[1]], "times": [[0]], "history_times": [[0]]}', "'history_times' needs 'history'"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("body", "message"), EXACT, ids=[m[:30] for _, m in EXACT])
def test_fields_that_need_each_other_say_which(path, body, message):
    with pytest.raises(RequestError) as error:
        parse(body, path)
    assert (error.value.status, error.value.detail) == (422, message)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("body", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_times_are_422_naming_list_and_position(path, body, message):
    with pytest.raises(RequestError) as error:
        parse(body, path)
    assert error.value.status == 422
    assert error.value.detail.startswith(message), error.value.detail


def test_a_history_without_values_has_no_time_to_order():
    job = parse({"series": [[1]], "times": [[5]], "history": [[]], "history_times": [[]]}, nullcontext)
    assert job.history_times[0].size == 0
    job = parse({"series": [[1]], "times": [[5]], "history": [[3]], "history_times": [[4.5]]}, scanning)
    assert job.history_times[0].tolist() == [4.5]
