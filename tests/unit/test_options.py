"""A request's resolved options: the batch key, its defaults, its dtype and output count."""

from __future__ import annotations

import numpy as np
import pytest

from app.serving.options import DTYPES, PAIRINGS, SmoothOptions


def test_the_defaults_are_decay_min_periods_one_float32_and_every_position():
    assert SmoothOptions("zeros") == SmoothOptions("zeros", "decay", 1, "float32", 1)
    assert (DTYPES, PAIRINGS) == (("float32", "float64"), ("bank", "each"))


def test_options_are_a_batch_key_equal_only_when_every_field_is():
    base = SmoothOptions("adjust", "skip", 2, "float64", 3)
    assert hash(base) == hash(SmoothOptions("adjust", "skip", 2, "float64", 3))
    others = [
        SmoothOptions("zeros", "skip", 2, "float64", 3),
        SmoothOptions("adjust", "decay", 2, "float64", 3),
        SmoothOptions("adjust", "skip", 1, "float64", 3),
        SmoothOptions("adjust", "skip", 2, "float32", 3),
        SmoothOptions("adjust", "skip", 2, "float64", 1),
    ]
    assert all(other != base for other in others)


@pytest.mark.parametrize(("dtype", "expected"), [("float32", np.float32), ("float64", np.float64)])
def test_the_numpy_dtype_follows_the_request(dtype, expected):
    assert SmoothOptions("zeros", dtype=dtype).numpy_dtype is expected


@pytest.mark.parametrize("stride", [1, 2, 3, 7])
def test_outputs_are_the_positions_0_s_2s_before_the_end(stride):
    for length in range(1, 30):
        # First principles: one output at each of 0, s, 2s, ... below length.
        assert SmoothOptions("zeros", stride=stride).output_length(length) == len(range(0, length, stride))
