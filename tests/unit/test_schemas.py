from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.api.jsoncodec import parse_smooth_body as parse_smooth_request
from app.api.schemas import RequestError, RequestLimits, excerpt

LIMITS = RequestLimits(max_series=3, max_length=5)
NAMES = ("fast", "mid", "slow")


def parse(body: bytes | dict):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_smooth_request(raw, LIMITS, NAMES)


def test_valid_request_defaults():
    job = parse({"series": [[1, 2.5, -3], [4e10]]})
    assert [s.tolist() for s in job.series] == [[1.0, 2.5, -3.0], [4e10]]
    assert all(s.dtype == np.float32 for s in job.series)
    assert job.channels == [0, 1, 2]
    assert job.warmup is None


def test_nulls_are_missing_values_and_options_are_read():
    job = parse(
        {
            "series": [[1, None], [None]],
            "history": [[], [None, 2]],
            "pairing": "each",
            "channels": ["slow", "slow"],
            "gaps": "skip",
            "min_periods": 2,
            "dtype": "float64",
            "stride": 3,
        }
    )
    assert [s.tolist() for s in job.series] == [
        [1.0, pytest.approx(np.nan, nan_ok=True)],
        [pytest.approx(np.nan, nan_ok=True)],
    ]
    assert job.history is not None
    assert np.isnan(job.history[1][0])
    assert job.history[1][1] == 2.0
    assert (job.pairing, job.channels, job.gaps, job.min_periods, job.dtype, job.stride) == (
        "each",
        [2, 2],
        "skip",
        2,
        "float64",
        3,
    )
    assert all(s.dtype == np.float64 for s in [*job.series, *job.history])


def test_channels_by_name_and_index_and_warmup():
    job = parse({"series": [[1]], "channels": ["slow", 0, "mid"], "warmup": "adjust"})
    assert job.channels == [2, 0, 1]
    assert job.warmup == "adjust"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"series": [[1, 2]', 400, "malformed JSON"),
        (b"", 400, "malformed JSON"),
        (b'{"series": [[1, NaN]]}', 422, "NaN is not allowed"),
        (b'{"series": [[Infinity]]}', 422, "Infinity is not allowed"),
        (b'{"series": [[-Infinity]]}', 422, "-Infinity is not allowed"),
        (b'{"series": [[1, 1e999]]}', 422, "series[0][1] = inf is not finite"),
        (b'{"series": [[1, 1e39]]}', 422, "outside the float32 range"),
        (b"[1, 2]", 422, "must be a JSON object, got list"),
        ({"values": [[1]]}, 422, "unknown field(s) ['values']"),
        ({}, 422, "'series' is required"),
        ({"series": []}, 422, "'series' is empty"),
        ({"series": "1,2"}, 422, "'series' must be a list of lists of numbers, got str"),
        ({"series": [[1], []]}, 422, "series[1] is empty"),
        ({"series": [[1], 5]}, 422, "series[1] must be a list of numbers, got int"),
        ({"series": [[1, "2"]]}, 422, "series[0][1] must be a number, got str '2'"),
        ({"series": [[1, {}]]}, 422, "series[0][1] must be a number, got dict"),
        ({"series": [[1]], "history": [[1], [2]]}, 422, "'history' has 2 lists for 1 series"),
        ({"series": [[1]], "history": [[1] * 6]}, 413, "history[0] has 6 values; the limit is 5"),
        ({"series": [[1]], "stride": 6}, 422, "'stride' must be an integer in 1..5, got 6"),
        ({"series": [[1]], "pairing": "each", "channels": ["nope"]}, 422, "channels[0] = 'nope'"),
        ({"series": [[1, True]]}, 422, "series[0][1] must be a number, got bool"),
        ({"series": [[1, [2]]]}, 422, "series[0][1] must be a number, got list"),
        ({"series": [[1]] * 4}, 413, "4 series; the limit is 3"),
        ({"series": [[1] * 6]}, 413, "series[0] has 6 values; the limit is 5"),
        ({"series": [[1]], "channels": ["nope"]}, 422, "channels[0] = 'nope' is not one of"),
        ({"series": [[1]], "channels": [3]}, 422, "channels[0] = 3"),
        ({"series": [[1]], "channels": [True]}, 422, "channels[0] = True"),
        ({"series": [[1]], "channels": []}, 422, "'channels' must be a non-empty list"),
        ({"series": [[1]], "warmup": "ones"}, 422, "'warmup' must be one of ['zeros', 'adjust'], got 'ones'"),
    ],
)
def test_bad_requests_say_what_and_where(body, status, message):
    with pytest.raises(RequestError) as info:
        parse(body)
    assert info.value.status == status
    assert message in info.value.detail


@pytest.mark.parametrize(
    ("value", "limit", "shown"),
    [
        ("text", 40, "text"),  # a string as it is, not its repr
        (5, 40, "5"),
        ([1, "a"], 40, "[1, 'a']"),
        ("x" * 40, 40, "x" * 40),  # exactly the limit: whole
        ("x" * 41, 40, "x" * 37 + "..."),  # one past: cut to the limit, with the ellipsis
        (list(range(100)), 12, "[0, 1, 2,..."),
        ("abcdef", 5, "ab..."),
    ],
)
def test_excerpt_cuts_to_the_limit(value, limit, shown):
    assert excerpt(value, limit) == shown
    assert len(excerpt(value, limit)) <= limit


def test_excerpt_defaults_to_forty_characters():
    assert excerpt("y" * 100) == "y" * 37 + "..."


def test_request_error_carries_status_and_detail():
    error = RequestError(413, "too big")
    assert (error.status, error.detail, str(error), error.args) == (413, "too big", "too big", ("too big",))
