from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from app.core.ewma import ConvEWMA
from tests.reference import alphas_from_logits, bank_reference, ewma_reference, max_relative_error

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
MODES = [("zeros", True), ("zeros", False), ("adjust", True)]
KERNEL_SIZES = [1, 2, 7, 32]
LENGTHS = [1, 5, 31, 33, 250]


def random_layer(
    channels: int, kernel_size: int, warmup: str, normalize: bool, dtype: torch.dtype, seed: int
) -> ConvEWMA:
    generator = np.random.default_rng(seed)
    alphas = generator.uniform(0.02, 0.98, size=channels).tolist()
    return ConvEWMA(channels, kernel_size, warmup=warmup, normalize=normalize, alpha=alphas, dtype=dtype)


def reference_alphas(layer: ConvEWMA) -> np.ndarray:
    return alphas_from_logits(layer.logits.detach().double().numpy(), layer.eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("warmup", "normalize"), MODES)
@pytest.mark.parametrize("kernel_size", KERNEL_SIZES)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_filter_bank_matches_reference(dtype, warmup, normalize, kernel_size, length, grad):
    layer = random_layer(3, kernel_size, warmup, normalize, dtype, seed=kernel_size * 1000 + length)
    x = torch.randn(4, length, dtype=dtype, generator=torch.Generator().manual_seed(length))
    with torch.set_grad_enabled(grad):
        y = layer(x)
    assert y.shape == (4, 3, length)
    assert y.requires_grad == grad
    expected = bank_reference(x.numpy(), reference_alphas(layer), kernel_size, warmup, normalize)
    assert max_relative_error(y.detach().numpy(), expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("warmup", "normalize"), MODES)
@pytest.mark.parametrize(("series", "length"), [(300, 1003), (64, 4096), (2, 70000)])
def test_large_inputs_take_the_fast_path_exactly(dtype, warmup, normalize, series, length):
    # Large enough that causal_fir uses the strided-GEMM path with chunking and fix-ups;
    # the reference is vectorised over lags here to keep the test quick.
    layer = random_layer(3, 32, warmup, normalize, dtype, seed=series)
    x = torch.randn(series, length, dtype=dtype, generator=torch.Generator().manual_seed(series))
    with torch.inference_mode():
        y = layer(x)
    alphas = reference_alphas(layer)
    xs = x.double().numpy()
    for c, alpha in enumerate(alphas):
        weights = alpha * (1 - alpha) ** np.arange(32)
        numerator = np.zeros_like(xs)
        for k in range(32):
            numerator[:, k:] += weights[k] * xs[:, : length - k]
        if warmup == "adjust":
            denominators = np.concatenate([np.cumsum(weights), np.full(length, weights.sum())])[:length]
            expected = numerator / denominators
        else:
            expected = numerator / weights.sum() if normalize else numerator
        assert max_relative_error(y[:, c].numpy(), expected) <= TOLERANCE[dtype], f"channel {c}"


@pytest.mark.parametrize("shape", ["(N,T)", "(N,1,T)"])
def test_bank_input_layouts_agree(shape):
    layer = random_layer(3, 7, "zeros", True, torch.float64, seed=1)
    x = torch.randn(5, 40, dtype=torch.float64)
    y = layer(x if shape == "(N,T)" else x.unsqueeze(1))
    torch.testing.assert_close(y, layer(x))


@pytest.mark.parametrize(("warmup", "normalize"), MODES)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_depthwise_uses_one_alpha_per_channel(warmup, normalize, grad):
    layer = random_layer(3, 7, warmup, normalize, torch.float64, seed=2)
    x = torch.randn(4, 3, 50, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        y = layer(x)
    alphas = reference_alphas(layer)
    for c in range(3):
        expected = np.stack([ewma_reference(row, alphas[c], 7, warmup, normalize) for row in x[:, c].numpy()])
        assert max_relative_error(y[:, c].detach().numpy(), expected) <= 1e-12


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.9])
def test_adjust_matches_pandas_before_the_window_fills(alpha):
    layer = ConvEWMA(1, 32, warmup="adjust", alpha=alpha, dtype=torch.float64)
    x = torch.randn(1, 100, dtype=torch.float64)
    y = layer(x)[0, 0].detach().numpy()
    exact_alpha = float(reference_alphas(layer)[0])
    expected = pd.Series(x[0].numpy()).ewm(alpha=exact_alpha, adjust=True).mean().to_numpy()
    np.testing.assert_allclose(y[:32], expected[:32], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.9])
def test_raw_mode_matches_the_recursion_before_the_window_fills(alpha):
    layer = ConvEWMA(1, 32, normalize=False, alpha=alpha, dtype=torch.float64)
    x = torch.randn(1, 100, dtype=torch.float64)
    y = layer(x)[0, 0].detach().numpy()
    a = float(reference_alphas(layer)[0])
    state, expected = 0.0, []
    for value in x[0].tolist()[:32]:
        state = a * value + (1 - a) * state
        expected.append(state)
    np.testing.assert_allclose(y[:32], expected, rtol=1e-12, atol=1e-12)


def test_adjust_equals_normalized_zeros_once_the_window_is_full():
    adjust = ConvEWMA(2, 32, warmup="adjust", alpha=[0.2, 0.6], dtype=torch.float64)
    zeros = ConvEWMA(2, 32, warmup="zeros", alpha=[0.2, 0.6], dtype=torch.float64)
    x = torch.randn(3, 80, dtype=torch.float64)
    torch.testing.assert_close(adjust(x)[..., 31:], zeros(x)[..., 31:])
    torch.testing.assert_close(zeros(x, warmup="adjust"), adjust(x))


@pytest.mark.parametrize(("warmup", "normalize"), MODES)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_output_is_causal(warmup, normalize, grad):
    layer = random_layer(2, 32, warmup, normalize, torch.float64, seed=3)
    x = torch.randn(2, 5000, dtype=torch.float64)  # large: exercises the fast path too
    with torch.set_grad_enabled(grad):
        before = layer(x).detach()
        for t in (0, 17, 2500, 4999):
            changed = x.clone()
            changed[:, t] += 100.0
            after = layer(changed).detach()
            torch.testing.assert_close(after[..., :t], before[..., :t], rtol=0, atol=0)
            assert not torch.equal(after[..., t], before[..., t])


@pytest.mark.parametrize(("warmup", "normalize"), MODES)
def test_gradcheck_on_logits(warmup, normalize):
    layer = random_layer(2, 7, warmup, normalize, torch.float64, seed=4)
    x = torch.randn(3, 20, dtype=torch.float64)

    def smooth(logits: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"logits": logits}, (x,))

    logits = layer.logits.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(smooth, (logits,))


def test_gradients_reach_the_logits():
    layer = ConvEWMA(3, 32)
    layer(torch.randn(2, 100)).pow(2).sum().backward()
    assert layer.logits.grad is not None
    assert torch.all(layer.logits.grad != 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 0}, "channels must be an integer >= 1, got 0"),
        ({"channels": 2.0}, "got 2.0"),
        ({"kernel_size": 0}, "kernel_size must be an integer in [1, 32], got 0"),
        ({"kernel_size": 33}, "got 33"),
        ({"kernel_size": True}, "got True"),
        ({"warmup": "ones"}, "warmup must be one of ('zeros', 'adjust'), got 'ones'"),
        ({"eps": 0.0}, "eps must be in (0, 0.5), got 0.0"),
        ({"eps": 0.5}, "got 0.5"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"dropout": -0.1}, "got -0.1"),
        ({"alpha": 1.0}, "each alpha must be in"),
        ({"alpha": [0.5, 0.5]}, "alpha has 2 values for 1 channels"),
        ({"dtype": torch.int64}, "dtype must be a floating point dtype"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ConvEWMA(**kwargs)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(2, 2, 10), "input must be (N, T), (N, 1, T) or (N, 3, T)"),
        (torch.zeros(10), "got (10,)"),
        (torch.zeros(2, 1, 1, 10), "got (2, 1, 1, 10)"),
        (torch.zeros(2, 10, dtype=torch.int64), "floating point"),
    ],
)
def test_forward_rejects_bad_inputs(x, message):
    layer = ConvEWMA(3)
    with pytest.raises(ValueError, match=re.escape(message)):
        layer(x)


def test_forward_rejects_unknown_warmup_override():
    with pytest.raises(ValueError, match="warmup must be one of"):
        ConvEWMA()(torch.zeros(1, 5), warmup="bogus")


def test_channel_dropout_only_in_training():
    layer = ConvEWMA(64, 7, dropout=0.5)
    x = torch.rand(4, 30) + 1.0
    layer.eval()
    torch.testing.assert_close(layer(x), ConvEWMA(64, 7)(x))
    layer.train()
    torch.manual_seed(0)
    y = layer(x)
    reference = ConvEWMA(64, 7)(x)
    dropped = (y == 0).all(dim=2).all(dim=0)
    assert 0 < int(dropped.sum()) < 64  # whole channels are dropped, some survive
    torch.testing.assert_close(y[:, ~dropped], reference[:, ~dropped] * 2.0)


def test_alphas_round_trip_and_stay_inside_eps():
    layer = ConvEWMA(3, alpha=[0.1, 0.5, 0.99], eps=1e-3)
    torch.testing.assert_close(layer.alphas, torch.tensor([0.1, 0.5, 0.99]))
    with torch.no_grad():
        layer.logits.copy_(torch.tensor([-1e4, 0.0, 1e4]))
    assert layer.alphas.min() >= 1e-3
    assert layer.alphas.max() <= 1 - 1e-3


@pytest.mark.parametrize("eps", [1e-6, 1e-3, 0.1])
def test_alphas_follow_the_reference_formula(eps):
    layer = ConvEWMA(6, eps=eps, dtype=torch.float64)
    logits = torch.tensor([-40.0, -3.0, -0.47, 0.0, 2.59, 40.0], dtype=torch.float64)
    with torch.no_grad():
        layer.logits.copy_(logits)
    expected = alphas_from_logits(logits.numpy(), eps)
    np.testing.assert_allclose(layer.alphas.detach().numpy(), expected, rtol=1e-14, atol=0)


def test_reset_parameters_restores_initial_alphas():
    layer = ConvEWMA(2, alpha=[0.2, 0.7])
    with torch.no_grad():
        layer.logits.zero_()
    layer.reset_parameters()
    torch.testing.assert_close(layer.alphas, torch.tensor([0.2, 0.7]))


def test_extra_repr_names_the_configuration():
    text = repr(ConvEWMA(2, 7, warmup="adjust"))
    assert "channels=2, kernel_size=7" in text
    assert "warmup='adjust'" in text


# Measured max relative error of half-precision outputs against the float64 reference
# (alphas 0.05 and 0.3, K = 32, (3, 200) inputs, torch 2.13 on CPU): on the seed-0 input
# below 4.9e-3 (bfloat16) and 6.8e-4 (float16); over seeds 0..19 at most 6.3e-3 and
# 9.2e-4. The tolerances are about 2.4x and 2.2x the worst of those.
HALF_TOLERANCE = {torch.bfloat16: 1.5e-2, torch.float16: 2e-3}
# The wrong mode for each mode, and how far apart they are on the same input (at least
# 5.3e-2 on those inputs): the tolerance must be well below it to tell them apart.
CONFUSABLE = {
    ("zeros", True): ("zeros", False),
    ("zeros", False): ("zeros", True),
    ("adjust", True): ("zeros", True),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("warmup", "normalize"), MODES)
def test_half_precision_inputs_are_supported(dtype, warmup, normalize):
    # alpha 0.05: the 32-tap kernel sums to 0.806, so normalised and raw outputs differ by
    # about 20% (with alpha 0.2 they differ by 8e-4, below half-precision rounding).
    layer = ConvEWMA(2, 32, warmup=warmup, normalize=normalize, alpha=[0.05, 0.3])
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        y = layer(x)
    assert y.dtype == dtype
    alphas, inputs = reference_alphas(layer), x.double().numpy()
    expected = bank_reference(inputs, alphas, 32, warmup, normalize)
    confusable = bank_reference(inputs, alphas, 32, *CONFUSABLE[(warmup, normalize)])
    tolerance = HALF_TOLERANCE[dtype]
    assert 3 * tolerance < max_relative_error(confusable, expected)  # can tell the modes apart
    error = max_relative_error(y.float().numpy(), expected)
    assert error <= tolerance, f"relative error {error:.3g} over the tolerance {tolerance}"


def test_kernel_is_in_lag_order_and_normalised():
    layer = ConvEWMA(1, 4, alpha=0.5, dtype=torch.float64)
    expected = np.array([0.5, 0.25, 0.125, 0.0625])
    np.testing.assert_allclose(layer.kernel(normalize=False)[0].detach().numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(layer.kernel()[0].detach().numpy(), expected / expected.sum(), rtol=1e-5)


@pytest.mark.parametrize("warmup", ["zeros", "adjust"])
def test_cached_constants_follow_in_place_updates_and_modes(warmup):
    layer = ConvEWMA(2, 8, alpha=[0.2, 0.7], warmup=warmup)
    x = torch.randn(3, 40)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.logits.add_(0.5)  # what an optimizer step does
        after = layer(x)
    fresh = ConvEWMA(2, 8, alpha=layer.alphas.detach().tolist(), warmup=warmup)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh(x).detach())
    # Frozen logits, input that needs grad: cached constants must be ordinary tensors.
    layer.logits.requires_grad_(False)
    x.requires_grad_(True)
    layer(x).sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None


# -- out=: written in place, equal to a fresh output -------------------------------------------


@pytest.mark.parametrize(
    ("channels", "shape", "options"),
    [
        (1, (6, 4096), {}),
        (3, (6, 4096), {"warmup": "adjust"}),
        (3, (5, 3000), {}),  # T not a multiple of the GEMM blocks: computed, then copied
        (3, (4, 3, 2048), {}),  # depth-wise
        (1, (3, 4096), {"dilation": 4}),
        (3, (3, 4096), {"gaps": "skip", "missing": True}),
        (3, (3, 4096), {"missing": True, "min_periods": 3}),
        (2, (3, 4096), {"stride": 3}),
        (2, (3, 500), {"times": True}),
        (2, (2, 70), {}),  # the small path
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_out_holds_exactly_what_a_fresh_call_returns(channels, shape, options, dtype):
    options = dict(options)
    layer = ConvEWMA(channels, 32, dilation=options.pop("dilation", 1), alpha=[0.2, 0.5, 0.9][:channels])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=dtype).cumsum(-1)
    if options.pop("missing", False):
        x[..., 7::13] = float("nan")
    if options.pop("times", False):
        options["times"] = torch.cumsum(torch.rand(shape[0], shape[-1], dtype=torch.float64) + 0.1, -1)
    with torch.inference_mode():
        fresh = layer(x, **options)
        out = torch.full_like(fresh, 123.0)
        returned = layer(x, **options, out=out)
    assert returned is out
    torch.testing.assert_close(out, fresh, rtol=0, atol=0, equal_nan=True)


def test_out_is_checked():
    layer = ConvEWMA(2, 8)
    x = torch.randn(3, 100)
    with torch.inference_mode():
        for bad, message in [
            (torch.empty(3, 2, 99), r"out must be \(3, 2, 100\) torch.float32 on cpu, got \(3, 2, 99\)"),
            (torch.empty(3, 2, 100, dtype=torch.float64), "got .* torch.float64"),
            (torch.empty(3, 100, 2).transpose(1, 2), "out must be contiguous"),
        ]:
            with pytest.raises(ValueError, match=message):
                layer(x, out=bad)
    with pytest.raises(ValueError, match="out= is for inference"):
        layer(x, out=torch.empty(3, 2, 100))
