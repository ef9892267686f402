"""The layer on real-world series: missing values, min_periods, dilation, stride, float64,
continuation. Every output is checked against the float64 reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from app.core.continuation import first_output, history_tail
from app.core.ewma import ConvEWMA, equivalents
from app.core.fir import causal_fir
from tests.reference import (
    alphas_from_logits,
    continuation_reference,
    fir_reference,
    history_tail_reference,
    max_relative_error,
    pandas_equivalents,
    smooth_reference,
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
MODES = [("zeros", True), ("zeros", False), ("adjust", True)]
# 0.96: a fast channel whose kernel tail is tiny, where float32 cancellation once
# cost the warm-up's missing-value weights 1e-5 of relative accuracy.
ALPHAS = [0.04, 0.35, 0.9, 0.96]


def series_with_gaps(rows: int, length: int, seed: int, missing: float = 0.2) -> np.ndarray:
    """Rows: gap-free, random gaps, a gap-led row, and (if asked for) an all-missing row."""
    generator = np.random.default_rng(seed)
    x = generator.normal(5.0, 3.0, size=(rows, length))
    if rows > 1:
        x[1][generator.random(length) < missing] = np.nan
    if rows > 2:
        x[2][: min(length, 4)] = np.nan
        x[2][length // 2 : length // 2 + 7] = np.nan
    if rows > 3:
        x[3] = np.nan
    return x


def layer_for(kernel_size: int, warmup: str, normalize: bool, dilation: int = 1) -> ConvEWMA:
    return ConvEWMA(
        len(ALPHAS), kernel_size, warmup=warmup, normalize=normalize, dilation=dilation, alpha=ALPHAS
    )


def expected(layer: ConvEWMA, x: np.ndarray, **options: object) -> np.ndarray:
    alphas = alphas_from_logits(layer.logits.detach().double().numpy(), layer.eps)
    return np.stack(
        [
            np.stack(
                [
                    smooth_reference(row, a, layer.kernel_size, layer.warmup, layer.normalize, **options)  # type: ignore[arg-type]
                    for a in alphas
                ]
            )
            for row in x
        ]
    )


def assert_matches(actual: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    """NaN exactly where the reference has NaN; elsewhere within ``tolerance`` (normwise)."""
    assert actual.shape == reference.shape
    missing = np.isnan(reference)
    np.testing.assert_array_equal(np.isnan(actual), missing)
    if (~missing).any():
        assert max_relative_error(actual[~missing], reference[~missing]) <= tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("warmup", "normalize"), MODES)
@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (6, 1), (6, 4), (32, 1), (32, 3)])
@pytest.mark.parametrize(("min_periods", "stride"), [(1, 1), (0, 2), (3, 1), (3, 5)])
def test_gaps_dilation_stride_match_the_reference(
    dtype, warmup, normalize, gaps, kernel_size, dilation, min_periods, stride
):
    layer = layer_for(kernel_size, warmup, normalize, dilation)
    x = series_with_gaps(4, 97, seed=kernel_size * 10 + dilation)
    options = {"gaps": gaps, "min_periods": min(min_periods, kernel_size), "stride": stride}
    with torch.inference_mode():
        y = layer(torch.tensor(x, dtype=dtype), **options)
    assert y.dtype == dtype
    assert_matches(y.double().numpy(), expected(layer, x, dilation=dilation, **options), TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
def test_large_gappy_inputs_take_the_fast_paths_exactly(dtype, gaps):
    # Long enough for the strided-GEMM FIR (and its dilated lanes); rows with and without
    # gaps in one call, so only some rows take the gap-aware path.
    layer = layer_for(32, "zeros", True, dilation=3)
    x = series_with_gaps(3, 30_000, seed=7, missing=0.05)
    with torch.inference_mode():
        y = layer(torch.tensor(x, dtype=dtype), gaps=gaps).double().numpy()
    # The reference on a tail window: every output there sees only inputs inside it
    # (decay), and a fixed prefix of observations (skip) leaves the tail unchanged only
    # through its own window, so compare whole rows for decay and the head for skip.
    head = 400
    assert_matches(y[:, :, :head], expected(layer, x[:, :head], gaps=gaps, dilation=3), TOLERANCE[dtype])
    if gaps == "decay":
        tail = slice(30_000 - head, None)
        reach = (32 - 1) * 3
        window = x[:, 30_000 - head - reach :]
        reference = expected(layer, window, gaps=gaps, dilation=3)[:, :, reach:]
        assert_matches(y[:, :, tail], reference, TOLERANCE[dtype])


@pytest.mark.parametrize("ignore_na", [False, True])
@pytest.mark.parametrize("min_periods", [1, 2])
def test_pandas_ewm_with_gaps_for_the_first_k_outputs(ignore_na, min_periods):
    layer = ConvEWMA(2, 32, warmup="adjust", alpha=[0.2, 0.7], dtype=torch.float64)
    x = np.array([np.nan, 100.0, 101.0, np.nan, np.nan, 99.0, 100.0, np.nan, 102.0] * 3)[:32]
    with torch.inference_mode():
        y = layer(
            torch.tensor(x[None]), gaps="skip" if ignore_na else "decay", min_periods=min_periods
        ).numpy()
    for channel, alpha in enumerate(alphas_from_logits(layer.logits.detach().numpy(), layer.eps)):
        ewm = pd.Series(x).ewm(alpha=alpha, adjust=True, ignore_na=ignore_na, min_periods=min_periods)
        # pandas counts observations since the start; within K steps that is the window.
        assert_matches(y[0, channel], ewm.mean().to_numpy(), 1e-12)


def test_depthwise_input_with_gaps_smooths_each_channel_by_its_own_alpha():
    layer = layer_for(8, "zeros", True)
    x = series_with_gaps(4, 60, seed=3).reshape(1, 4, 60)
    with torch.inference_mode():
        y = layer(torch.tensor(x)).numpy()
    alphas = alphas_from_logits(layer.logits.detach().numpy(), layer.eps)
    for c in range(4):
        assert_matches(y[0, c], smooth_reference(x[0, c], alphas[c], 8), 1e-12)


@pytest.mark.parametrize("warmup", ["zeros", "adjust"])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
def test_gradients_are_finite_and_exact_with_missing_values(warmup, gaps):
    layer = ConvEWMA(2, 6, warmup=warmup, dilation=2, alpha=[0.3, 0.6], dtype=torch.float64)
    x = torch.tensor(series_with_gaps(4, 40, seed=11))
    y = layer(x, gaps=gaps, min_periods=2)
    observed = ~torch.isnan(y)
    loss = torch.where(observed, y, torch.zeros(())).pow(2).sum()
    loss.backward()
    assert layer.logits.grad is not None
    assert torch.isfinite(layer.logits.grad).all()

    def masked(logits: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(layer, {"logits": logits}, (x,), {"gaps": gaps, "min_periods": 2})
        return torch.where(observed, out, torch.zeros(()))

    assert torch.autograd.gradcheck(masked, (layer.logits.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("gaps", "warmup"), [("decay", "zeros"), ("decay", "adjust"), ("skip", "adjust")])
@pytest.mark.parametrize(("dilation", "stride", "missing"), [(1, 1, 0.0), (1, 1, 0.3), (2, 3, 0.3)])
def test_fifty_chunks_with_history_equal_one_call(dtype, gaps, warmup, dilation, stride, missing):
    layer = ConvEWMA(2, 8, warmup=warmup, dilation=dilation, alpha=[0.1, 0.5])
    generator = np.random.default_rng(5)
    x = generator.normal(size=2000)
    x[generator.random(2000) < missing] = np.nan
    chunks = np.array_split(x, 50)
    options = {"gaps": gaps, "stride": stride}
    history = np.empty(0)
    pieces = []
    with torch.inference_mode():
        whole = layer(torch.tensor(x[None], dtype=dtype), **options)[0].double().numpy()
        for chunk in chunks:
            joined = np.concatenate([history, chunk])
            out = layer(torch.tensor(joined[None], dtype=dtype), **options)[0].double().numpy()
            pieces.append(out[:, first_output(len(history), stride) :])
            history = history_tail(joined, 8, dilation=dilation, gaps=gaps, stride=stride)
            np.testing.assert_array_equal(
                history, history_tail_reference(joined, 8, dilation=dilation, gaps=gaps, stride=stride)
            )
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert_matches(np.concatenate(pieces, axis=1), whole, tolerance)
    alphas = alphas_from_logits(layer.logits.detach().numpy(), layer.eps)
    last = np.concatenate(chunks[:-1])
    for c, alpha in enumerate(alphas):
        reference = continuation_reference(
            last, chunks[-1], alpha, 8, warmup=warmup, dilation=dilation, **options
        )
        assert_matches(pieces[-1][c], reference, TOLERANCE[dtype])


@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize(("length", "stride"), [(0, 1), (3, 1), (20, 1), (20, 3), (21, 4), (200, 7)])
def test_history_tail_follows_the_reference(gaps, length, stride):
    values = series_with_gaps(2, max(length, 1), seed=length)[1][:length]
    np.testing.assert_array_equal(
        history_tail(values, 6, dilation=2, gaps=gaps, stride=stride),
        history_tail_reference(values, 6, dilation=2, gaps=gaps, stride=stride),
    )
    assert first_output(length, stride) == -(-length // stride)


@pytest.mark.parametrize("alpha", [0.01, 0.3, 0.99])
def test_pandas_equivalents(alpha):
    mine, reference = equivalents(alpha, 32), pandas_equivalents(alpha, 32)
    assert mine.keys() == reference.keys()
    for key in mine:
        assert mine[key] == pytest.approx(reference[key], rel=1e-12)
    x = pd.Series(np.random.default_rng(0).normal(size=50))
    by_alpha = x.ewm(alpha=alpha).mean()
    for key in ("span", "halflife", "com"):
        if key != "span" or mine[key] >= 1:
            np.testing.assert_allclose(x.ewm(**{key: mine[key]}).mean(), by_alpha, rtol=1e-10)


@pytest.mark.parametrize("dilation", [1, 2, 5])
@pytest.mark.parametrize(
    ("channels", "kernel_size", "fold"), [(1, 7, False), (3, 31, False), (2, 32, True), (1, 32, True)]
)
@pytest.mark.parametrize("length", [20_011, 20_480])
def test_dilated_fir_lanes_equal_the_literal_dilated_kernel(dilation, channels, kernel_size, fold, length):
    # K = 7 stays on conv1d; the others pass the cut-over: the depth-wise convolution (one
    # channel) and the lanes (folded and not); lengths that are and are not multiples of
    # block * dilation.
    alphas = torch.linspace(0.1, 0.7, channels, dtype=torch.float64)
    taps = alphas[:, None] * (1 - alphas[:, None]) ** torch.arange(kernel_size, dtype=torch.float64)
    ratios = (1 - alphas) ** (kernel_size // 2) if fold else None
    x = torch.randn(5, length, dtype=torch.float64)
    literal = torch.zeros(channels, (kernel_size - 1) * dilation + 1, dtype=torch.float64)
    literal[:, ::dilation] = taps
    actual = causal_fir(x, taps, fold=ratios, dilation=dilation).numpy()
    assert max_relative_error(actual, fir_reference(x.numpy(), literal.numpy())) <= 1e-12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gaps": "ffill"}, "gaps must be one of ('decay', 'skip'), got 'ffill'"),
        ({"min_periods": 9}, "min_periods must be in [0, 8], got 9"),
        ({"min_periods": -1}, "min_periods must be in [0, 8], got -1"),
        ({"min_periods": 1.0}, "min_periods must be an integer, got 1.0"),
        ({"stride": 0}, "stride must be an integer >= 1, got 0"),
        ({"stride": True}, "stride must be an integer >= 1, got True"),
    ],
)
def test_forward_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match="must be") as info:
        ConvEWMA(1, 8)(torch.zeros(1, 4), **kwargs)
    assert str(info.value) == message


def test_dilation_is_validated_and_shown():
    with pytest.raises(ValueError, match="dilation must be an integer >= 1, got 0"):
        ConvEWMA(1, 8, dilation=0)
    layer = ConvEWMA(1, 8, dilation=4)
    assert layer.receptive_field == 29
    assert "dilation=4" in repr(layer)


@pytest.mark.parametrize(("warmup", "normalize"), MODES)
@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_inputs_at_the_largest_finite_value_stay_finite(warmup, normalize, gaps, dtype):
    # Every output is a weighted mean (or, raw, a fraction of one) of the inputs, so it is
    # finite; narrow-float rounding alone used to carry some to infinity.
    top = torch.finfo(dtype).max
    layer = layer_for(32, warmup, normalize)
    x = np.array([[top, np.nan, top, top, -top] + [top] * 40, [top] * 45])
    with torch.inference_mode():
        y = layer(torch.tensor(x, dtype=dtype), gaps=gaps).double().numpy()
    assert_matches(y, expected(layer, x, gaps=gaps), 1e-3 if dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("min_periods", [1, 2])
@pytest.mark.parametrize("alpha", [0.9576, 0.99])
def test_fast_channel_warmup_weights_keep_float32_accuracy(min_periods, alpha):
    # The weight of the lags before the start is a tiny kernel tail here; computed as
    # total - partial in float32 it lost half its digits (1e-5 relative on these outputs).
    layer = ConvEWMA(1, 32, alpha=alpha)
    x = np.array([1.0, np.nan, 3.0, np.nan, np.nan, 2.0])
    with torch.inference_mode():
        y = layer(torch.tensor(x[None], dtype=torch.float32), min_periods=min_periods)[0, 0].double().numpy()
    a = alphas_from_logits(layer.logits.detach().numpy(), layer.eps)[0]
    reference = smooth_reference(x, a, 32, min_periods=min_periods)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(reference))
    known = ~np.isnan(reference)
    assert np.max(np.abs(y[known] / reference[known] - 1)) <= 1e-6


@pytest.mark.parametrize("gaps", ["decay", "skip"])
def test_gap_aware_rows_run_in_bounded_slices_with_the_same_results(gaps):
    # 40 rows of 10,000 values: more than GAP_WORKSPACE_VALUES, so the batch runs in
    # slices of rows; the first slice has no gap (plain path), the others do.
    from app.core.filters import GAP_WORKSPACE_VALUES

    x = series_with_gaps(40, 10_000, seed=9)
    rows = GAP_WORKSPACE_VALUES // 10_000
    assert rows < 40
    x[:rows] = np.random.default_rng(1).normal(size=(rows, 10_000))
    x[rows + 3, 17] = np.nan
    x[-1, 5000:5100] = np.nan
    layer = layer_for(32, "zeros", True)
    with torch.inference_mode():
        together = layer(torch.tensor(x), gaps=gaps).numpy()
        alone = np.concatenate([layer(torch.tensor(x[i : i + 1]), gaps=gaps).numpy() for i in range(40)])
    assert_matches(together, alone, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("depthwise", "gaps", "dilation"),
    [(False, None, 1), (True, None, 3), (False, "decay", 1), (False, "skip", 2)],
)
def test_adjust_starts_at_the_first_input_exactly(dtype, depthwise, gaps, dilation):
    # pandas' first ewm output is the first value; the partial windows are computed in
    # float64 and rounded once, so no narrow-float rounding shows there.
    layer = ConvEWMA(4, 32, warmup="adjust", dilation=dilation, alpha=ALPHAS)
    x = torch.tensor(series_with_gaps(4, 200, seed=12) * 1000.0 + 0.1, dtype=dtype)
    if gaps is None:
        x = torch.nan_to_num(x, nan=1.5)
    x = x.view(1, 4, 200) if depthwise else x
    with torch.inference_mode():
        y = layer(x, gaps=gaps or "decay")
    first = x[..., 0] if depthwise else x[:, :1].expand(-1, 4)
    first_out = y[..., 0] if depthwise else y[:, :, 0]
    observed = ~torch.isnan(first)
    assert bool(observed.any())
    torch.testing.assert_close(first_out[observed], first[observed], rtol=0, atol=0)
    assert torch.isnan(first_out[~observed]).all()


@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize("length", [0, 1, 2, 40])
def test_series_without_any_observation_are_all_missing(gaps, length):
    # gaps="skip" packs each row's observations: here none, an empty series to smooth.
    layer = layer_for(32, "adjust", True)
    with torch.inference_mode():
        y = layer(torch.full((2, length), float("nan")), gaps=gaps)
    assert y.shape == (2, len(ALPHAS), length)
    assert torch.isnan(y).all()
