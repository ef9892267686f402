from __future__ import annotations

import pytest
import torch

from app.core import fir
from tests.reference import fir_reference, max_relative_error


@pytest.mark.parametrize(
    ("series", "length", "channels", "kernel_size"),
    [
        (1, 1, 1, 1),
        (3, 5, 2, 7),
        (4, 31, 3, 32),
        (300, 4096, 1, 32),  # fast path, length a multiple of the block
        (257, 1031, 3, 32),  # fast path, ragged length padded internally
        (100, 4100, 2, 1),
        (50, 3000, 1, 2),
        (1, 200_000, 2, 17),  # one long series
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_causal_fir_matches_reference(series, length, channels, kernel_size, dtype):
    generator = torch.Generator().manual_seed(series + length)
    x = torch.randn(series, length, dtype=dtype, generator=generator)
    taps = torch.rand(channels, kernel_size, dtype=dtype, generator=generator)
    y = fir.causal_fir(x, taps)
    assert y.shape == (series, channels, length)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    assert max_relative_error(y.numpy(), fir_reference(x.numpy(), taps.numpy())) <= tolerance


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 1000])
@pytest.mark.parametrize("channels", [1, 3])
def test_chunking_does_not_change_results(monkeypatch, rows_per_chunk, channels):
    x = torch.randn(40, 2000, dtype=torch.float64)
    taps = torch.rand(channels, 32, dtype=torch.float64)
    expected = fir.causal_fir(x, taps)
    monkeypatch.setattr(fir, "_CPU_ROWS_PER_CHUNK", rows_per_chunk)
    torch.testing.assert_close(fir.causal_fir(x, taps), expected, rtol=1e-13, atol=1e-13)


def test_non_contiguous_input_is_accepted():
    x = torch.randn(2000, 60, dtype=torch.float64).t()  # (60, 2000), transposed strides
    taps = torch.rand(2, 32, dtype=torch.float64)
    assert max_relative_error(fir.causal_fir(x, taps).numpy(), fir_reference(x.numpy(), taps.numpy())) < 1e-13


def test_toeplitz_bank_layout():
    taps = torch.tensor([[1.0, 2.0, 3.0]])
    bank = fir.toeplitz_bank(taps, block=2)  # window of 4 inputs, 2 outputs
    # output i sees inputs i..i+2 of the window, newest last, weighted by lag
    expected = torch.tensor([[3.0, 0.0], [2.0, 3.0], [1.0, 2.0], [0.0, 1.0]])
    torch.testing.assert_close(bank, expected)


def test_rejects_wrong_ranks():
    with pytest.raises(ValueError, match="expected x"):
        fir.causal_fir(torch.zeros(3), torch.zeros(1, 2))


def geometric_taps(alphas: torch.Tensor, kernel_size: int) -> torch.Tensor:
    lags = torch.arange(kernel_size, dtype=alphas.dtype)
    return alphas[:, None] * (1 - alphas[:, None]) ** lags


@pytest.mark.parametrize(("series", "length"), [(300, 4096), (257, 1031), (3, 70_000)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("rows_per_chunk", [5, 16384])
def test_folded_geometric_kernel_matches_reference(monkeypatch, series, length, channels, rows_per_chunk):
    monkeypatch.setattr(fir, "_CPU_ROWS_PER_CHUNK", rows_per_chunk)
    alphas = torch.linspace(0.01, 0.95, channels, dtype=torch.float64)
    taps = geometric_taps(alphas, 32)
    x = torch.randn(series, length, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    y = fir.causal_fir(x, taps, fold=(1 - alphas) ** 16)
    assert max_relative_error(y.numpy(), fir_reference(x.numpy(), taps.numpy())) <= 1e-13


def test_fold_is_ignored_when_the_kernel_does_not_split_at_the_block():
    alphas = torch.tensor([0.3], dtype=torch.float64)
    taps = geometric_taps(alphas, 20)
    x = torch.randn(200, 3000, dtype=torch.float64)
    wrong_ratio = torch.tensor([123.0], dtype=torch.float64)  # would corrupt results if used
    y = fir.causal_fir(x, taps, fold=wrong_ratio)
    assert max_relative_error(y.numpy(), fir_reference(x.numpy(), taps.numpy())) <= 1e-13
