"""app/core/timed.py through ``ConvEWMA.forward(x, times=...)`` against the float64
reference ``smooth_times_reference`` (tests/reference.py), in float64 and float32; its
gradient in the logits (gradcheck); its validation. Tolerances: float64 agrees to 1e-12
(sums of at most K = 8 terms); float32 to 2e-6, ten times its measured error of about 2e-7
relative to the largest value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core import timed
from app.core.ewma import ConvEWMA
from tests.reference import max_relative_error, smooth_times_reference

K = 8
ALPHAS = [0.05, 0.3, 0.8]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}


def batch(seed: int, rows: int, length: int, missing: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 1.0, (rows, length))
    x[rng.random((rows, length)) < missing] = np.nan
    times = 1.7e9 + np.cumsum(rng.exponential(1.0, (rows, length)) + 1e-3, axis=1)  # epoch seconds
    return x, times


def expected(x: np.ndarray, times: np.ndarray, alphas: list[float], **options: object) -> np.ndarray:
    """(N, C, T') from the reference: every row by every alpha."""
    stride = int(options.pop("stride", 1))  # type: ignore[call-overload]
    return np.stack(
        [
            np.stack([smooth_times_reference(row, tau, a, K, stride=stride, **options) for a in alphas])  # type: ignore[arg-type]
            for row, tau in zip(x, times, strict=True)
        ]
    )


def assert_close(actual: torch.Tensor, wanted: np.ndarray, dtype: torch.dtype) -> None:
    got = actual.detach().double().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(wanted))
    assert max_relative_error(np.nan_to_num(got), np.nan_to_num(wanted)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("warmup", "normalize", "gaps"),
    [
        ("zeros", True, "decay"),
        ("zeros", False, "decay"),
        ("adjust", True, "decay"),
        ("adjust", True, "skip"),
    ],
)
@pytest.mark.parametrize(
    ("min_periods", "dilation", "stride", "time_unit", "max_gap"),
    [(1, 1, 1, 1.0, None), (3, 2, 2, 60.0, None), (0, 1, 3, 0.5, 2.5), (2, 3, 1, 1.0, 4.0)],
)
def test_a_bank_matches_the_reference(
    dtype, warmup, normalize, gaps, min_periods, dilation, stride, time_unit, max_gap
):
    x, times = batch(1, 3, 50, missing=0.25)
    times = times * time_unit  # about one time unit between samples
    layer = ConvEWMA(
        3, K, alpha=ALPHAS, normalize=normalize, dilation=dilation, time_unit=time_unit, dtype=torch.float64
    )
    got = layer(
        torch.tensor(x, dtype=dtype),
        warmup,
        gaps=gaps,
        min_periods=min_periods,
        stride=stride,
        times=torch.tensor(times),
        max_gap=None if max_gap is None else max_gap * time_unit,
    )
    assert got.dtype == dtype
    alphas = layer.alphas.detach().tolist()  # float64 logits: within 1e-16 of ALPHAS
    options = {"warmup": warmup, "normalize": normalize, "gaps": gaps, "min_periods": min_periods}
    options |= {"dilation": dilation, "stride": stride, "time_unit": time_unit}
    options |= {"max_gap": None if max_gap is None else max_gap * time_unit}
    assert_close(got, expected(x, times, alphas, **options), dtype)


@pytest.mark.parametrize("gaps", ["decay", "skip"])
def test_depth_wise_channel_c_is_smoothed_by_alpha_c(gaps):
    x, times = batch(2, 2, 40, missing=0.2)
    rows = np.stack([x, x[::-1] + 1.0, 2.0 * x], axis=1)  # (N, C, T): three different inputs
    layer = ConvEWMA(3, K, alpha=ALPHAS, warmup="adjust", dtype=torch.float64)
    got = layer(torch.tensor(rows), gaps=gaps, times=torch.tensor(times))
    for c, alpha in enumerate(ALPHAS):
        wanted = expected(rows[:, c], times, [alpha], warmup="adjust", gaps=gaps)[:, 0]
        assert_close(got[:, c], wanted, torch.float64)


def test_on_an_even_grid_the_times_change_nothing():
    x, _ = batch(3, 4, 64, missing=0.2)
    times = torch.arange(64, dtype=torch.float64).expand(4, 64) * 2.0 + 100.0
    layer = ConvEWMA(3, K, alpha=ALPHAS, time_unit=2.0, dtype=torch.float64)
    plain = layer(torch.tensor(x), "zeros")
    timed = layer(torch.tensor(x), "zeros", times=times)
    torch.testing.assert_close(timed, plain, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_the_gradient_in_the_logits_is_exact():
    x, times = batch(4, 2, 20, missing=0.2)
    layer = ConvEWMA(3, K, alpha=ALPHAS, warmup="adjust", dtype=torch.float64)
    inputs, tau = torch.tensor(x), torch.tensor(times)

    def run(logits: torch.Tensor) -> torch.Tensor:
        kwargs = {"times": tau, "max_gap": 3.0}
        return torch.func.functional_call(layer, {"logits": logits}, (inputs,), kwargs).nan_to_num()

    assert torch.autograd.gradcheck(run, (layer.logits.detach().clone().requires_grad_(),))


@pytest.mark.parametrize(
    ("times", "kwargs", "message"),
    [
        (
            torch.tensor([[0.0, 1.0, 1.0]]),
            {},
            r"^times must be strictly increasing: series 0 has 1.0 at position 2 after 1.0$",
        ),
        (
            torch.tensor([[0.0, 2.0, 1.0]]),
            {},
            r"^times must be strictly increasing: series 0 has 1.0 at position 2 after 2.0$",
        ),
        (torch.tensor([[0.0, 1.0]]), {}, r"^times must be \(N, T\) = \(1, 3\), got \(1, 2\)$"),
        (torch.tensor([[0.0, float("nan"), 2.0]]), {}, r"^times must be finite$"),
        (torch.tensor([[0, 1, 2]]), {}, r"^times must be a floating point tensor, got torch.int64$"),
        (
            torch.tensor([[0.0, 1.0, 2.0]]),
            {"max_gap": 0.0},
            r"^max_gap must be a number of seconds > 0, got 0.0$",
        ),
        (None, {"max_gap": 5.0}, r"^max_gap needs times$"),
    ],
)
def test_bad_times_are_refused_naming_what_is_wrong(times, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvEWMA(1, 4)(torch.ones(1, 3), times=times, **kwargs)


@pytest.mark.parametrize("time_unit", [0.0, -1.0, float("inf"), float("nan"), True, "1"])
def test_time_unit_must_be_a_positive_number_of_seconds(time_unit):
    with pytest.raises(ValueError, match=r"^time_unit must be a finite number of seconds > 0, got "):
        ConvEWMA(1, 4, time_unit=time_unit)


def test_the_time_unit_shows_in_the_repr_when_it_is_not_one_second():
    assert "time_unit" not in repr(ConvEWMA(1, 4))
    assert ConvEWMA(1, 4, time_unit=60.0).extra_repr() == (
        "channels=1, kernel_size=4, normalize=True, warmup='zeros', dilation=1, eps=1e-06, dropout=0.0, "
        "time_unit=60.0"
    )


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5, 13, 16, 31, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("max_gap", "gaps"), [(None, "decay"), (2.5, "decay"), (None, "skip")])
def test_every_kernel_size_matches_the_reference_without_autograd(kernel_size, channels, max_gap, gaps):
    # The window of K lags is the blocks of K's binary digits; one channel scales the ages
    # once, a bank at every level; without autograd the sums are written in place.
    x, times = batch(5, 2, 80, missing=0.2)
    alphas = ALPHAS[:channels]
    layer = ConvEWMA(channels, kernel_size, alpha=alphas, warmup="adjust", dilation=2, dtype=torch.float64)
    with torch.no_grad():
        got = layer(torch.tensor(x), gaps=gaps, times=torch.tensor(times), max_gap=max_gap)
    options = {"warmup": "adjust", "dilation": 2, "max_gap": max_gap, "gaps": gaps}
    rows = [
        [smooth_times_reference(r, t, a, kernel_size, **options) for a in layer.alphas.tolist()]
        for r, t in zip(x, times, strict=True)
    ]  # type: ignore[arg-type]
    assert_close(got, np.array(rows), torch.float64)


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_rows_smoothed_a_chunk_at_a_time_equal_rows_smoothed_at_once(monkeypatch, missing):
    x, times = batch(6, 9, 60, missing=missing)
    layer = ConvEWMA(2, K, alpha=[0.1, 0.5], dtype=torch.float64)
    inputs, tau = torch.tensor(x, dtype=torch.float32), torch.tensor(times)
    with torch.no_grad():
        whole = layer(inputs, times=tau)
        monkeypatch.setattr(timed, "_CPU_CHUNK_VALUES", 2 * 60)  # two rows per chunk, the last alone
        chunked = layer(inputs, times=tau)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0, equal_nan=True)
    assert_close(chunked, expected(x, times, layer.alphas.tolist()), torch.float32)


@pytest.mark.parametrize("grad", [False, True])
def test_a_window_whose_observed_lags_are_all_too_old_for_float32_is_computed_in_float64(grad):
    # alpha 0.9 per second: a lag 60 s old weighs 1e-60, below float32's range. The output
    # after a minute of missing values is still the mean of the values before it.
    x = np.array([[1.0, 3.0] + [np.nan] * 5])
    times = np.array([[0.0, 1.0, 20.0, 30.0, 40.0, 50.0, 61.0]])
    layer = ConvEWMA(1, 8, alpha=0.9, warmup="adjust", dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        got = layer(torch.tensor(x, dtype=torch.float32), times=torch.tensor(times))
    wanted = expected(x, times, layer.alphas.tolist(), warmup="adjust")
    assert np.isfinite(wanted).all()
    assert_close(got, wanted, torch.float32)


def test_values_near_the_float32_maximum_do_not_overflow():
    big = float(np.finfo(np.float32).max) * 0.9
    x = np.array([[big, big, -big, big]])
    times = np.array([[0.0, 0.5, 1.5, 2.0]])
    layer = ConvEWMA(1, 4, alpha=0.1, normalize=False, dtype=torch.float64)
    with torch.no_grad():
        got = layer(torch.tensor(x, dtype=torch.float32), times=torch.tensor(times))
    assert torch.isfinite(got).all()
    assert_close(got, expected(x, times, layer.alphas.tolist(), normalize=False), torch.float32)


@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize(("warmup", "max_gap"), [("zeros", None), ("adjust", 2.5)])
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_a_long_row_smoothed_a_stretch_at_a_time_equals_it_smoothed_at_once(
    monkeypatch, gaps, warmup, max_gap, missing
):
    # Each stretch after the first starts with the (K - 1) d values its first window
    # reaches back to: real history, not zeros before the start.
    x, times = batch(8, 3, 500, missing=missing)
    layer = ConvEWMA(2, 7, alpha=[0.1, 0.5], warmup=warmup, dilation=3, dtype=torch.float64)
    inputs, tau = torch.tensor(x), torch.tensor(times)
    with torch.no_grad():
        whole = layer(inputs, gaps=gaps, times=tau, max_gap=max_gap)
        monkeypatch.setattr(timed, "_CPU_CHUNK_VALUES", 2 * 40)  # stretches of 40 > 4 (K - 1) d
        pieces = layer(inputs, gaps=gaps, times=tau, max_gap=max_gap)
    torch.testing.assert_close(pieces, whole, rtol=1e-14, atol=1e-14, equal_nan=True)
    options = {"warmup": warmup, "dilation": 3, "max_gap": max_gap, "gaps": gaps}
    rows = [
        [smooth_times_reference(r, t, a, 7, **options) for a in layer.alphas.tolist()]  # type: ignore[arg-type]
        for r, t in zip(x, times, strict=True)
    ]
    assert_close(pieces, np.array(rows), torch.float64)


@pytest.mark.parametrize(("warmup", "gaps"), [("zeros", "decay"), ("adjust", "decay"), ("adjust", "skip")])
def test_an_input_that_requires_grad_and_misses_nothing(warmup, gaps):
    # An upstream layer's output: autograd through the inputs, and no mask to build.
    x, times = batch(9, 2, 30, missing=0.0)
    layer = ConvEWMA(3, K, alpha=ALPHAS, warmup=warmup, dtype=torch.float64)
    inputs = torch.tensor(x, requires_grad=True)
    got = layer(inputs, gaps=gaps, times=torch.tensor(times))
    assert_close(got, expected(x, times, layer.alphas.tolist(), warmup=warmup, gaps=gaps), torch.float64)
    got.sum().backward()
    assert inputs.grad is not None
    assert bool(torch.isfinite(inputs.grad).all())
    assert bool((inputs.grad[:, -1] > 0).all())  # the last input weighs in its own output


@pytest.mark.parametrize("grad", [False, True])
def test_skip_mode_with_nothing_observed_is_missing_everywhere(grad):
    layer = ConvEWMA(2, 4, alpha=[0.2, 0.7], dtype=torch.float64)
    x = torch.full((2, 5), float("nan"), dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        y = layer(x, gaps="skip", times=torch.arange(5.0, dtype=torch.float64).expand(2, 5))
    assert y.shape == (2, 2, 5)
    assert bool(torch.isnan(y).all())
