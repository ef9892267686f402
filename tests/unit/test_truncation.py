"""app/core/truncation.py against ``times_dropped_mass`` (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.truncation import dropped_mass
from tests.reference import times_dropped_mass


@pytest.mark.parametrize(("kernel_size", "dilation", "time_unit"), [(8, 1, 1.0), (5, 3, 60.0), (40, 1, 1.0)])
def test_the_dropped_share_matches_the_reference(kernel_size, dilation, time_unit):
    rng = np.random.default_rng(0)
    times = 1.7e9 + np.cumsum(rng.exponential(time_unit, (3, 90)) + 1e-3, axis=1)
    alphas = np.array([0.05, 0.3, 0.8])
    got = dropped_mass(times, alphas, kernel_size, dilation, time_unit)
    assert got.shape == (3, 3, 90)
    for c, alpha in enumerate(alphas):
        for n, row in enumerate(times):
            want = times_dropped_mass(row, alpha, kernel_size, time_unit=time_unit, dilation=dilation)
            np.testing.assert_allclose(got[c, n], want, rtol=1e-12, atol=1e-300)


def test_on_a_long_even_grid_it_is_the_plain_truncated_mass():
    times = np.arange(2000.0)[None]  # one time unit apart
    got = dropped_mass(times, np.array([0.1]), 16, 1, 1.0)
    assert got[0, 0, -1] == pytest.approx(0.9**16, rel=1e-9)
    assert (got[0, 0, :16] == 0).all()  # the window holds every past lag


@pytest.mark.parametrize("length", [5, 6, 7, 41])
def test_a_dilation_that_does_not_divide_the_length(length):
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.exponential(1.0, (2, length)) + 0.01, axis=1)
    got = dropped_mass(times, np.array([0.3]), 3, 2, 1.0)
    for n, row in enumerate(times):
        want = times_dropped_mass(row, 0.3, 3, dilation=2)
        np.testing.assert_allclose(got[0, n], want, rtol=1e-12, atol=1e-300)
