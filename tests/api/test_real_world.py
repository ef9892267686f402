"""Issue 10 over HTTP, through the real app and its lifespan: missing values, every option,
pairing, precision and the located 422s, each checked against tests/reference.py (the
model's alphas, warm-up and dilation read from the weights file, never from the app)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.api.jsoncodec import FIELDS
from tests.api.test_contract import post, scrape, serving
from tests.reference import (
    SHIPPED_WEIGHTS,
    history_tail_reference,
    max_relative_error,
    read_weights_file,
    smooth_reference,
)

pytestmark = pytest.mark.anyio

SHIPPED = read_weights_file(SHIPPED_WEIGHTS)
ALPHAS = SHIPPED.alphas
K = SHIPPED.kernel_size
DILATION = int(SHIPPED.metadata.get("dilation", "1"))
ALL = list(range(len(SHIPPED.channels)))
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}  # against the float64 reference


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def with_gaps(rng: np.random.Generator, length: int, missing: float = 0.2) -> np.ndarray:
    values = rng.normal(10.0, 3.0, size=length).round(3)
    values[rng.random(length) < missing] = np.nan
    return values


def as_json(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def as_array(rows: Any) -> np.ndarray:
    """A JSON answer (null = missing) as float64 with NaN."""
    if rows and isinstance(rows[0], list):
        return np.stack([as_array(row) for row in rows])
    return np.array([np.nan if v is None else v for v in rows], np.float64)


def expected(values: np.ndarray, channels: list[int], **options: Any) -> np.ndarray:
    warmup = options.pop("warmup", None) or SHIPPED.warmup
    return np.stack(
        [
            smooth_reference(values, ALPHAS[c], K, warmup, SHIPPED.normalize, dilation=DILATION, **options)
            for c in channels
        ]
    )


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: float) -> None:
    """Missing exactly where expected; the rest within ``tolerance`` (normwise relative)."""
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    real = ~np.isnan(want)
    if real.any():
        assert max_relative_error(got[real], want[real]) <= tolerance


# -- every option against the reference ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
async def test_every_option_matches_the_reference(dtype, gaps):
    rng = np.random.default_rng(10)
    series = [with_gaps(rng, n) for n in (1, 7, 45, 120)]
    series.append(np.array([np.nan, np.nan, 3.0, np.nan, 5.0]))  # missing at the start
    series.append(np.full(4, np.nan))  # nothing observed: every output missing
    async with serving() as (_, http):
        for warmup in (None, "zeros", "adjust"):
            for min_periods, stride in [(1, 1), (3, 2), (0, 5), (K, 1)]:
                body = {"series": [as_json(s) for s in series], "gaps": gaps, "dtype": dtype}
                body |= {"min_periods": min_periods, "stride": stride, "channels": [3, 0]}
                if warmup:
                    body["warmup"] = warmup
                response = await post(http, body)
                assert response.status_code == 200, response.text
                reply = response.json()
                assert reply["channels"] == [SHIPPED.channels[3], SHIPPED.channels[0]]
                assert "history" not in reply
                options = {"warmup": warmup, "gaps": gaps, "min_periods": min_periods, "stride": stride}
                for values, got in zip(series, reply["smoothed"], strict=True):
                    want = expected(values, [3, 0], **options)
                    assert_close(as_array(got), want, TOLERANCE[dtype])


@pytest.mark.parametrize("ignore_na", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
async def test_pandas_ewm_adjust_through_the_api_for_t_below_k(ignore_na, dtype):
    if DILATION != 1:
        pytest.skip("pandas has no dilation")
    rng = np.random.default_rng(11)
    values = with_gaps(rng, K, missing=0.25)
    values[0] = 4.0
    gaps = "skip" if ignore_na else "decay"
    body = {"series": [as_json(values)], "warmup": "adjust", "gaps": gaps, "dtype": dtype}
    async with serving() as (_, http):
        response = await post(http, body)
    assert response.status_code == 200, response.text
    got = as_array(response.json()["smoothed"][0])
    for channel, alpha in enumerate(ALPHAS):
        pandas = pd.Series(values).ewm(alpha=alpha, adjust=True, ignore_na=ignore_na).mean().to_numpy()
        assert_close(got[channel], pandas, TOLERANCE[dtype])


# -- continuation: 50 chunks give what one request gives ----------------------------------------


CHUNKED = [
    ("float32", "decay", 0.0, 1),
    ("float32", "decay", 0.15, 3),
    ("float32", "skip", 0.15, 1),
    ("float64", "decay", 0.15, 1),
    ("float64", "skip", 0.3, 4),
    ("float64", "decay", 0.0, 2),
]


@pytest.mark.parametrize(("dtype", "gaps", "missing", "stride"), CHUNKED)
async def test_fifty_chunks_with_history_equal_one_request(dtype, gaps, missing, stride):
    rng = np.random.default_rng(12)
    values = with_gaps(rng, 600, missing)
    cuts = np.sort(rng.choice(np.arange(1, len(values)), size=49, replace=False))
    chunks = np.split(values, cuts)
    options = {"gaps": gaps, "dtype": dtype, "stride": stride}
    async with serving() as (_, http):
        whole = await post(http, {"series": [as_json(values)], **options})
        assert whole.status_code == 200, whole.text
        history: list[float | None] = []
        pieces = []
        seen = np.empty(0)
        for chunk in chunks:
            response = await post(http, {"series": [as_json(chunk)], "history": [history], **options})
            assert response.status_code == 200, response.text
            reply = response.json()
            pieces.append(as_array(reply["smoothed"][0]))
            history = reply["history"][0]
            seen = np.concatenate([seen, chunk])
            want = history_tail_reference(seen, K, dilation=DILATION, gaps=gaps, stride=stride)
            assert_close(as_array(history).astype(dtype), want.astype(dtype), 0.0)  # raw values, exactly
    one = as_array(whole.json()["smoothed"][0])
    chunked = np.concatenate(pieces, axis=1)
    assert_close(chunked, one, 1e-6 if dtype == "float32" else 1e-12)
    assert_close(one, expected(values, ALL, gaps=gaps, stride=stride), TOLERANCE[dtype])


@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize(("history", "stride"), [(None, 1), ([None], 3), ([1.0, None], 1)])
async def test_series_without_any_observation_answer_null(gaps, history, stride):
    # Under gaps="skip" a series of nulls packs to no value at all (it once reached the
    # convolution empty and failed the batch with a 500).
    body: dict[str, Any] = {"series": [[None, None], [1.0, None]], "gaps": gaps, "stride": stride}
    if history is not None:
        body["history"] = [history, []]
    async with serving() as (_, http):
        response = await post(http, body)
    assert response.status_code == 200, response.text
    for index, values in enumerate(body["series"]):
        before = (
            np.array([np.nan if v is None else v for v in (history or [])]) if index == 0 else np.empty(0)
        )
        raw = np.array([np.nan if v is None else v for v in values])
        want = continuation_reference_rows(before, raw, gaps=gaps, stride=stride)
        assert_close(as_array(response.json()["smoothed"][index]), want, TOLERANCE["float32"])


def continuation_reference_rows(before: np.ndarray, values: np.ndarray, **options: Any) -> np.ndarray:
    stride = options["stride"]
    full = expected(np.concatenate([before, values]), ALL, **options)
    return full[:, -(-len(before) // stride) :]


# -- pairing, precision --------------------------------------------------------------------------


async def test_pairing_each_smooths_each_series_by_its_own_channel():
    rng = np.random.default_rng(13)
    series = [with_gaps(rng, n) for n in (30, 5, 12)]
    history = [with_gaps(rng, n) for n in (0, 40, 3)]
    chosen = ["tbilrate", 0, "tbilrate"]  # a channel may serve several series
    indices = [2, 0, 2]
    body = {"series": [as_json(s) for s in series], "pairing": "each", "channels": chosen}
    async with serving() as (_, http):
        plain = await post(http, body)
        continued = await post(http, {**body, "history": [as_json(h) for h in history]})
    for response in (plain, continued):
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["channels"] == [SHIPPED.channels[i] for i in indices]
        np.testing.assert_allclose(reply["alphas"], ALPHAS[indices], rtol=1e-12)
    for index, (values, before) in enumerate(zip(series, history, strict=True)):
        want = expected(values, [indices[index]])
        assert_close(as_array(plain.json()["smoothed"][index]), want, TOLERANCE["float32"])
        full = expected(np.concatenate([before, values]), [indices[index]])[:, len(before) :]
        assert_close(as_array(continued.json()["smoothed"][index]), full, TOLERANCE["float32"])


async def test_float64_answers_keep_float64_values():
    big = [1000000001.0, 1000000003.0, None, 1000000001.0]
    async with serving() as (_, http):
        wide = await post(http, {"series": [big], "history": [[]], "dtype": "float64", "warmup": "adjust"})
        narrow = await post(http, {"series": [big], "history": [[]], "warmup": "adjust"})
    assert wide.json()["history"] == [big]  # the raw values, exactly
    assert narrow.json()["history"] == [[1e9, 1000000000.0, None, 1e9]]  # float32 holds no more
    got = as_array(wide.json()["smoothed"][0])
    assert got[:, 0].tolist() == [1000000001.0] * len(ALL)  # the first output is the first value
    assert_close(got, expected(np.array(big, float), ALL, warmup="adjust"), 1e-12)


# -- located 422s ------------------------------------------------------------------------------------


BAD = [
    ({"series": [[1], [2], [3]], "history": [[], [], 5]}, "history[2] must be a list of numbers, got int"),
    ({"series": [[1]], "history": [[1, 2, 3, 4, 5, 6, 7, "x"]]}, "history[0][7] must be a number, got str"),
    ({"series": [[1]], "history": [[1e39]]}, "history[0][0] = 1e+39 is not finite or is outside"),
    ({"series": [[1]], "history": [[], []]}, "'history' has 2 lists for 1 series"),
    ({"series": [[1]], "history": {"a": 1}}, "'history' must be a list of lists"),
    (
        {"series": [[1]] * 6, "channels": [0, 1, 2, 3, 0, 9], "pairing": "each"},
        "channels[5] = 9 is not one of",
    ),
    ({"series": [[1]], "channels": [0, 1, 2, 3, 1]}, "channels[4] repeats"),
    ({"series": [[1], [2]], "pairing": "each", "channels": [0]}, "'channels' has 1 entries for 2 series"),
    ({"series": [[1]], "pairing": "each"}, "'channels' is required with pairing 'each'"),
    ({"series": [[1]], "pairing": "zip"}, "'pairing' must be one of ['bank', 'each'], got 'zip'"),
    ({"series": [[1]], "gaps": "ffill"}, "'gaps' must be one of ['decay', 'skip'], got 'ffill'"),
    ({"series": [[1]], "dtype": "float16"}, "'dtype' must be one of ['float32', 'float64'], got 'float16'"),
    ({"series": [[1]], "stride": 0}, "'stride' must be an integer in 1..5000, got 0"),
    ({"series": [[1]], "stride": 2.0}, "'stride' must be an integer in 1..5000, got 2.0"),
    ({"series": [[1]], "min_periods": -1}, "'min_periods' must be an integer >= 0, got -1"),
    (
        {"series": [[1]], "min_periods": K + 1},
        f"'min_periods' must be an integer in 0..{K} (the kernel size)",
    ),
    ({"series": [[1, None, 1e39]]}, "series[0][2] = 1e+39 is not finite or is outside the float32 range"),
]


async def test_each_bad_field_gets_a_located_422():
    async with serving() as (app, http):
        for body, message in BAD:
            response = await post(http, body)
            assert response.status_code == 422, (body, response.text)
            assert message in response.json()["detail"], (message, response.json())
        assert app.state.service.budget.used == 0
        assert (await post(http, {"series": [[1e39]], "dtype": "float64"})).status_code == 200


# -- batching with mixed options --------------------------------------------------------------------


MIXED = [
    {},
    {"dtype": "float64"},
    {"gaps": "skip", "min_periods": 2},
    {"warmup": "adjust", "stride": 3},
    {"dtype": "float64", "gaps": "skip", "stride": 2},
    {"pairing": "each", "channels": [1, 3]},
]


async def test_batched_results_equal_one_at_a_time_with_mixed_options():
    rng = np.random.default_rng(14)
    bodies = []
    for index in range(30):
        options = MIXED[index % len(MIXED)]
        series = [with_gaps(rng, int(rng.integers(1, 300))) for _ in range(2)]
        body: dict[str, Any] = {"series": [as_json(s) for s in series], **options}
        if index % 4 == 0:
            body["history"] = [as_json(with_gaps(rng, int(rng.integers(0, 50)))) for _ in series]
        bodies.append(body)
    async with serving() as (_, http):
        together = await asyncio.gather(*(post(http, body) for body in bodies))
        metrics = await scrape(http)
        alone = [await post(http, body) for body in bodies]
    assert metrics.value("convewma_batches_total", outcome="ok") < len(bodies)
    for body, batched, single in zip(bodies, together, alone, strict=True):
        assert batched.status_code == single.status_code == 200, batched.text
        dtype = body.get("dtype", "float32")
        for got, by_itself in zip(batched.json()["smoothed"], single.json()["smoothed"], strict=True):
            # A batch may take another kernel than a lone request: equal to rounding.
            assert_close(as_array(got), as_array(by_itself), 1e-6 if dtype == "float32" else 1e-12)
        assert batched.json().get("history") == single.json().get("history")


async def test_a_streamed_answer_carries_nulls_and_the_history():
    rng = np.random.default_rng(15)
    series = [with_gaps(rng, 3000) for _ in range(8)]  # 96k outputs: sent in chunks
    history = [with_gaps(rng, 100) for _ in range(8)]
    body = {"series": [as_json(s) for s in series], "history": [as_json(h) for h in history]}
    async with serving(max_body_bytes=2_000_000) as (_, http):
        response = await post(http, {**body, "dtype": "float64", "gaps": "skip"})
    assert response.status_code == 200, response.text
    assert "content-length" not in response.headers  # streamed
    reply = response.json()
    for values, before, got, tail in zip(series, history, reply["smoothed"], reply["history"], strict=True):
        full = np.concatenate([before, values])
        assert_close(as_array(got), expected(full, ALL, gaps="skip")[:, len(before) :], 1e-12)
        assert_close(as_array(tail), history_tail_reference(full, K, dilation=DILATION, gaps="skip"), 0.0)


async def test_openapi_documents_every_field_with_enums():
    async with serving() as (_, http):
        schema = (await http.get("/openapi.json")).json()
    body = schema["paths"]["/smooth"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    properties = body["properties"]
    assert set(properties) == set(FIELDS)  # every field the parser reads, documented
    for name, prop in properties.items():
        assert prop.get("description"), name
    enums = {"pairing": ["bank", "each"], "gaps": ["decay", "skip"], "dtype": ["float32", "float64"]}
    for name, values in enums.items():
        assert properties[name]["enum"] == values, name
    assert (properties["min_periods"]["minimum"], properties["stride"]["minimum"]) == (0, 1)
    assert properties["max_gap"]["anyOf"][0]["exclusiveMinimum"] == 0
    alphas = schema["components"]["schemas"]["AlphasResponse"]["properties"]
    assert {"dilation", "receptive_field", "span", "halflife", "com", "truncated_mass"} <= set(alphas)
    assert {"time_unit", "halflife_seconds"} <= set(alphas)
