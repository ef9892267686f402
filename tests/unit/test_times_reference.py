"""The float64 reference for irregular timestamps (issue 12), before any code implements it:
on an even grid it is the plain reference, and within the first K steps it is pandas'
``ewm(halflife=..., times=...)``. Tolerances: both sides are float64 sums of at most K
terms of size about 1, so they agree to about K ulps; 1e-12 leaves a margin of 100 or more."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.reference import halflife_of, pandas_equivalents, smooth_reference, smooth_times_reference

K = 8
FLOAT64_TOLERANCE = 1e-12


def series(seed: int, length: int, missing: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.0, length)
    x[rng.random(length) < missing] = np.nan
    return x


def irregular_times(seed: int, length: int) -> np.ndarray:
    """Poisson arrivals (mean spacing 1 s) starting at 1000 s, strictly increasing."""
    rng = np.random.default_rng(seed)
    return 1000.0 + np.cumsum(rng.exponential(1.0, length) + 1e-3)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(
        np.nan_to_num(actual), np.nan_to_num(expected), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE
    )


@pytest.mark.parametrize("warmup", ["zeros", "adjust"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("min_periods", "stride"), [(1, 1), (3, 2), (0, 1), (2, 3)])
@pytest.mark.parametrize("time_unit", [1.0, 2.5])
def test_on_an_even_grid_one_time_unit_apart_it_is_the_plain_reference(
    warmup, normalize, min_periods, stride, time_unit
):
    x = series(1, 60, missing=0.2)
    times = 50.0 + time_unit * np.arange(60)
    options = {"min_periods": min_periods, "stride": stride}
    expected = smooth_reference(x, 0.3, K, warmup, normalize, **options)
    actual = smooth_times_reference(x, times, 0.3, K, warmup, normalize, time_unit=time_unit, **options)
    assert_same(actual, expected)


@pytest.mark.parametrize(("warmup", "normalize"), [("adjust", True), ("zeros", False)])
@pytest.mark.parametrize("dilation", [2, 3])
def test_with_a_dilation_one_time_unit_per_tap_is_the_plain_reference(warmup, normalize, dilation):
    # The plain layer decays by taps, a tap being `dilation` steps. (Normalised "zeros" is
    # left out: its zeros before the start sit one time_unit per step, as issue 12 defines.)
    x = series(7, 60, missing=0.2)
    times = 50.0 + np.arange(60) / dilation
    expected = smooth_reference(x, 0.3, K, warmup, normalize, dilation=dilation)
    assert_same(smooth_times_reference(x, times, 0.3, K, warmup, normalize, dilation=dilation), expected)


def test_skipping_gaps_on_an_even_grid_without_gaps_is_the_plain_reference():
    # With a value missing, "skip" still decays by the time that passed across the gap:
    # that is the point of timestamps, and there it differs from the plain "skip".
    x = series(2, 40, missing=0.0)
    times = np.arange(40.0)
    assert_same(
        smooth_times_reference(x, times, 0.4, K, "adjust", gaps="skip"),
        smooth_reference(x, 0.4, K, "adjust", gaps="skip"),
    )


@pytest.mark.parametrize("missing", [0.0, 0.3], ids=["complete", "with gaps"])
@pytest.mark.parametrize("halflife_units", [0.5, 2.5, 20.0])
@pytest.mark.parametrize("time_unit", [1.0, 60.0])
def test_within_the_first_k_steps_it_is_pandas_ewm_with_times(missing, halflife_units, time_unit):
    # Times in whole microseconds and a half-life that is a whole number of them: pandas
    # holds both as integer nanoseconds, so neither side rounds them differently.
    length = 32
    x = series(3, length, missing)
    x[0] = 1.0  # pandas and the reference both start at the first observation
    times = np.round(irregular_times(4, length) * time_unit, 6)
    halflife_s = halflife_units * time_unit
    alpha = 1.0 - 0.5 ** (time_unit / halflife_s)
    assert halflife_of(alpha, time_unit) == pytest.approx(halflife_s, rel=1e-12)
    frame = pd.Series(x, index=pd.to_datetime(np.round(times * 1e6).astype(np.int64), unit="us"))
    expected = (
        frame.ewm(halflife=pd.Timedelta(seconds=halflife_s), times=frame.index, adjust=True).mean().to_numpy()
    )
    actual = smooth_times_reference(x, times, alpha, length, "adjust", time_unit=time_unit)
    assert_same(actual, expected)


def test_max_gap_drops_the_lags_older_than_it():
    x = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    times = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 11.5])  # an outage between 2 s and 10 s
    alpha = 0.5
    got = smooth_times_reference(x, times, alpha, 4, "adjust", max_gap=5.0)
    # Step 3 (10 s) starts afresh; step 5 (11.5 s) weighs 6.0, 5.0 and 4.0 by 0.5 ** age.
    ages = np.array([0.0, 0.5, 1.5])
    weights = 0.5**ages
    expected_last = float(np.dot(weights, [6.0, 5.0, 4.0]) / weights.sum())
    assert got[3] == 4.0
    assert got[5] == pytest.approx(expected_last, rel=FLOAT64_TOLERANCE)
    assert got[2] == pytest.approx((0.5**2 * 1.0 + 0.5 * 2.0) / (0.5**2 + 0.5), rel=FLOAT64_TOLERANCE)
    # Without max_gap the outage only decays the old values.
    assert smooth_times_reference(x, times, alpha, 4, "adjust")[3] != 4.0


def test_max_gap_below_every_spacing_leaves_each_observation_alone():
    x = series(5, 30, missing=0.3)
    times = irregular_times(6, 30)
    got = smooth_times_reference(x, times, 0.2, K, "zeros", max_gap=1e-4)
    assert_same(got, x)  # its own value, or missing where it is missing


def test_zeros_before_the_start_sit_on_the_grid_continued_backwards():
    # One observation at 7 s, K = 3: the zeros are at 6 s and 5 s.
    got = smooth_times_reference(np.array([3.0]), np.array([7.0]), 0.5, 3, "zeros", time_unit=1.0)
    assert got[0] == pytest.approx(3.0 / (1 + 0.5 + 0.25), rel=FLOAT64_TOLERANCE)
    raw = smooth_times_reference(np.array([3.0]), np.array([7.0]), 0.5, 3, "zeros", normalize=False)
    assert raw[0] == pytest.approx(0.5 * 3.0, rel=FLOAT64_TOLERANCE)


@pytest.mark.parametrize("alpha", [0.01, 0.2, 0.9])
def test_the_halflife_per_time_unit_is_pandas_halflife_in_steps_when_the_unit_is_one_step(alpha):
    assert halflife_of(alpha) == pytest.approx(pandas_equivalents(alpha, K)["halflife"], rel=1e-12)
    assert halflife_of(alpha, time_unit=60.0) == pytest.approx(60.0 * halflife_of(alpha), rel=1e-12)
