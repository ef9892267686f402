"""Issue 12 over HTTP, through the real app and its lifespan: ``times`` (seconds or RFC 3339),
``history_times`` and ``max_gap`` on ``/smooth``, each answer checked against
``smooth_times_reference`` (the alphas, warm-up and time unit read from the weights file);
continuation in chunks; time-aware and plain requests sharing the server; the located 422s."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from tests.api.test_contract import post, serving
from tests.api.test_real_world import ALPHAS, DILATION, SHIPPED, K, as_array, as_json, assert_close, with_gaps
from tests.api.test_real_world import expected as plain_expected
from tests.reference import halflife_of, smooth_times_reference

pytestmark = pytest.mark.anyio
TIME_UNIT = float(SHIPPED.metadata.get("time_unit", "1.0"))
TOLERANCE = {"float32": 2e-6, "float64": 1e-12}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def arrivals(rng: np.random.Generator, length: int, start: float = 1.7e9) -> np.ndarray:
    """Poisson arrival times in whole microseconds (RFC 3339 strings carry microseconds)."""
    return start + np.cumsum(np.round(rng.exponential(1.0, length) + 1e-3, 6))


def expected(values: np.ndarray, times: np.ndarray, channels: list[int], **options: Any) -> np.ndarray:
    warmup = options.pop("warmup", None) or SHIPPED.warmup
    return np.stack(
        [
            smooth_times_reference(
                values,
                times,
                ALPHAS[c],
                K,
                warmup,
                SHIPPED.normalize,
                time_unit=TIME_UNIT,
                dilation=DILATION,
                **options,
            )
            for c in channels
        ]
    )


def rfc3339(seconds: np.ndarray, offset_hours: int = 0) -> list[str]:
    """``seconds`` as RFC 3339 strings in a zone ``offset_hours`` from UTC (``Z`` at 0)."""
    zone = timezone(timedelta(hours=offset_hours))
    moments = [datetime.fromtimestamp(float(s), UTC).astimezone(zone) for s in seconds]
    return [m.isoformat().replace("+00:00", "Z") for m in moments]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize(
    ("warmup", "min_periods", "stride", "max_gap"), [(None, 1, 1, None), ("adjust", 3, 2, 2.5)]
)
async def test_every_option_matches_the_reference(dtype, gaps, warmup, min_periods, stride, max_gap):
    rng = np.random.default_rng(20)
    series = [with_gaps(rng, n) for n in (1, 9, 70)]
    times = [arrivals(rng, len(s)) for s in series]
    body: dict[str, Any] = {"series": [as_json(s) for s in series], "times": [t.tolist() for t in times]}
    body |= {"gaps": gaps, "dtype": dtype, "min_periods": min_periods, "stride": stride, "channels": [2, 0]}
    if warmup:
        body["warmup"] = warmup
    if max_gap:
        body["max_gap"] = max_gap
    async with serving() as (_, http):
        response = await post(http, body)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert "history" not in reply
    assert "history_times" not in reply
    options = {
        "warmup": warmup,
        "gaps": gaps,
        "min_periods": min_periods,
        "stride": stride,
        "max_gap": max_gap,
    }
    for values, stamps, got in zip(series, times, reply["smoothed"], strict=True):
        assert_close(as_array(got), expected(values, stamps, [2, 0], **options), TOLERANCE[dtype])


@pytest.mark.parametrize("offset_hours", [0, 5, -3])
async def test_rfc3339_strings_are_the_same_instants_as_seconds(offset_hours):
    rng = np.random.default_rng(21)
    values = with_gaps(rng, 40)
    seconds = arrivals(rng, 40)
    strings = rfc3339(seconds, offset_hours)
    assert all(("Z" if offset_hours == 0 else f"{offset_hours:+03d}:00") in s for s in strings)
    async with serving() as (_, http):
        by_number = await post(
            http, {"series": [as_json(values)], "times": [seconds.tolist()], "dtype": "float64"}
        )
        by_string = await post(http, {"series": [as_json(values)], "times": [strings], "dtype": "float64"})
    assert by_number.status_code == by_string.status_code == 200, by_string.text
    assert by_string.json()["smoothed"] == by_number.json()["smoothed"]
    assert_close(as_array(by_string.json()["smoothed"][0]), expected(values, seconds, ALL), 1e-12)


ALL = list(range(len(SHIPPED.channels)))


@pytest.mark.parametrize(
    ("gaps", "stride", "max_gap"), [("decay", 1, None), ("skip", 3, None), ("decay", 2, 1.5)]
)
async def test_twenty_chunks_with_history_and_its_times_equal_one_request(gaps, stride, max_gap):
    rng = np.random.default_rng(22)
    values = with_gaps(rng, 300, 0.2)
    times = arrivals(rng, 300)
    cuts = np.sort(rng.choice(np.arange(1, len(values)), size=19, replace=False))
    options: dict[str, Any] = {"gaps": gaps, "stride": stride}
    if max_gap:
        options["max_gap"] = max_gap
    pieces: list[np.ndarray] = []
    async with serving() as (_, http):
        whole = await post(
            http, {"series": [as_json(values)], "times": [times.tolist()], "dtype": "float64", **options}
        )
        history: list[Any] = []
        history_times: list[Any] = []
        for chunk, stamps in zip(np.split(values, cuts), np.split(times, cuts), strict=True):
            body = {"series": [as_json(chunk)], "times": [stamps.tolist()], "history": [history]}
            extra = {"history_times": [history_times], "dtype": "float64", **options}
            response = await post(http, body | extra)
            assert response.status_code == 200, response.text
            reply = response.json()
            pieces.append(as_array(reply["smoothed"][0]).reshape(len(ALL), -1))
            history, history_times = reply["history"][0], reply["history_times"][0]
            assert len(history) == len(history_times)
            assert history_times == sorted(history_times)
    assert whole.status_code == 200
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1), as_array(whole.json()["smoothed"][0]))
    assert_close(np.concatenate(pieces, axis=1), expected(values, times, ALL, **options), 1e-12)


async def test_time_aware_and_plain_requests_at_once_are_each_exact():
    # They never share a batch: each request's answer is what it would be alone, to rounding
    # (a batch's width may pick other SIMD kernels: on an AVX-512 EPYC the last bit moves),
    # and each matches its own reference (a time-aware row smoothed by steps would not).
    rng = np.random.default_rng(23)
    bodies = []
    for index in range(12):
        values = with_gaps(rng, int(rng.integers(5, 200)))
        body: dict[str, Any] = {"series": [as_json(values)], "dtype": "float64"}
        if index % 2:
            body["times"] = [arrivals(rng, len(values)).tolist()]
        bodies.append(body)
    async with serving(max_wait_ms=20) as (_, http):
        together = await asyncio.gather(*(post(http, body) for body in bodies))
        alone = [await post(http, body) for body in bodies]
    for body, answer, single in zip(bodies, together, alone, strict=True):
        assert answer.status_code == 200, answer.text
        got = as_array(answer.json()["smoothed"][0])
        assert_close(got, as_array(single.json()["smoothed"][0]), 1e-13)
        values = as_array(body["series"][0])
        if "times" in body:
            assert_close(got, expected(values, np.array(body["times"][0]), ALL), 1e-12)
        else:
            assert_close(got, plain_expected(values, ALL), 1e-12)


async def test_an_even_grid_one_time_unit_apart_answers_as_without_times():
    rng = np.random.default_rng(24)
    values = with_gaps(rng, 80)
    grid = (1000.0 + np.arange(80) * TIME_UNIT).tolist()
    async with serving() as (_, http):
        plain = await post(http, {"series": [as_json(values)], "dtype": "float64"})
        timed = await post(http, {"series": [as_json(values)], "dtype": "float64", "times": [grid]})
    assert_close(as_array(timed.json()["smoothed"][0]), as_array(plain.json()["smoothed"][0]), 1e-12)


async def test_alphas_report_the_time_unit_and_half_lives_in_seconds():
    async with serving() as (_, http):
        data = (await http.get("/alphas")).json()
    assert data["time_unit"] == TIME_UNIT
    np.testing.assert_allclose(data["halflife_seconds"], [halflife_of(a, TIME_UNIT) for a in data["alphas"]])


BAD: list[tuple[dict[str, Any], str]] = [
    ({"series": [[1, 2, 3]], "times": [[0, 1, 1]]}, "times[0][2] = 1.0 s is not after times[0][1] = 1.0 s: "),
    ({"series": [[1, 2]], "times": [[5, 2]]}, "times[0][1] = 2.0 s is not after times[0][0] = 5.0 s"),
    ({"series": [[1, 2]], "times": [[0]]}, "times[0] has 1 times for the 2 values of series[0]"),
    ({"series": [[1], [2]], "times": [[0]]}, "'times' has 1 lists for 2 series: one per series"),
    ({"series": [[1]], "times": [0]}, "times[0] must be a list of numbers, got int"),
    (
        {"series": [[1]], "times": {"a": 1}},
        "'times' must be a list of lists of times (one per series), got dict",
    ),
    (
        {"series": [[1, 2]], "times": [[0, "noon"]]},
        "times[0][1] = 'noon' is not a number of seconds or an RFC 3339",
    ),
    (
        {"series": [[1, 2]], "times": [[0, "2024-05-01T12:00:00"]]},
        "times[0][1] = '2024-05-01T12:00:00' has no UTC",
    ),
    ({"series": [[1, 2]], "times": [[0, None]]}, "times[0][1] is null: every value needs a time"),
    (
        {"series": [[1, 2]], "times": [[0, True]]},
        "times[0][1] must be a number of seconds or an RFC 3339 time",
    ),
    ({"series": [[1, 2]], "times": [[0, "2024-05-01T12:00:00Z", None]]}, "times[0][2] is null: every value"),
    ({"series": [[1, 2]], "times": [[0, [1]]]}, "times[0][1] must be a number of seconds or an RFC 3339"),
    ({"series": [[1, 2]], "max_gap": 5}, "'max_gap' needs 'times'"),
    ({"series": [[1]], "times": [[0]], "max_gap": 0}, "'max_gap' must be a number of seconds > 0, got 0"),
    (
        {"series": [[1]], "times": [[0]], "max_gap": "1h"},
        "'max_gap' must be a number of seconds > 0, got '1h'",
    ),
    ({"series": [[1]], "times": [[0]], "history": [[1]]}, "'history' with 'times' needs 'history_times'"),
    ({"series": [[1]], "history": [[1]], "history_times": [[0]]}, "'history_times' needs 'times'"),
    ({"series": [[1]], "times": [[0]], "history_times": [[0]]}, "'history_times' needs 'history'"),
    (
        {"series": [[1]], "times": [[5]], "history": [[1, 2]], "history_times": [[1]]},
        "history_times[0] has 1 times for the 2 values of history[0]",
    ),
    (
        {"series": [[1]], "times": [[5]], "history": [[1, 2]], "history_times": [[1, 5]]},
        "times[0][0] = 5.0 s is not after history_times[0][1] = 5.0 s",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[message[:40] for _, message in BAD])
async def test_bad_times_are_422_naming_the_list_and_position(body, message):
    async with serving() as (_, http):
        response = await post(http, body)
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]
        assert (await post(http, {"series": [[1.0]], "times": [[0.0]]})).status_code == 200  # still serving


async def test_a_row_of_huge_times_padded_in_a_batch_fails_no_request():
    # Nanosecond epochs sent as seconds (1.7e18): padding one second past them would round
    # back to the same time; the rows batched with them must not fail either.
    huge = {"series": [[1.0, 2.0]], "times": [[1.7e18, 1.8e18]], "dtype": "float64"}
    small = {"series": [[1.0, 2.0, 3.0]], "times": [[1.0, 2.0, 3.0]], "dtype": "float64"}
    async with serving(max_wait_ms=50) as (_, http):
        answers = await asyncio.gather(*(post(http, body) for body in [huge, small, small, huge]))
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200], [a.text for a in answers]
    for body, answer in zip([huge, small], answers[:2], strict=True):
        values, stamps = as_array(body["series"][0]), np.array(body["times"][0])
        assert_close(as_array(answer.json()["smoothed"][0]), expected(values, stamps, ALL), 1e-12)
