"""``app.core.doubling`` on its own: the first decays read across the positions before the
start exactly as over one joined row, the block decays by products against ``exp`` of the
summed ages, and the window sums against the K-lag sums written out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core import doubling


def irregular(rows: int, length: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(1.7e9 + np.cumsum(rng.exponential(1.0, size=(rows, 1, length)), axis=-1))


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("ahead", [0, 1, 2, 5, 9])
@pytest.mark.parametrize("length", [12, 2])  # (2: shorter than a dilation)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_decays_read_the_positions_ahead_as_one_row(dilation, ahead, length, dtype):
    tau = irregular(3, length, seed=ahead)
    before = tau[..., :1] + torch.arange(-ahead, 0, dtype=torch.float64) * 0.5
    scale = -0.3
    got = doubling.first_decays(tau, dilation, dtype, scale, before)
    joined = torch.cat((before, tau), dim=-1)
    ages = torch.zeros(joined.shape, dtype=torch.float64)
    ages[..., dilation:] = joined[..., dilation:] - joined[..., :-dilation]  # exact differences
    want = torch.exp(ages.to(dtype) * scale)
    assert got.shape == joined.shape
    assert torch.equal(got, want)  # the same arithmetic: bit for bit
    assert torch.equal(got[..., :dilation], torch.ones_like(got[..., :dilation]))


def test_first_decays_widen_to_one_row_per_channel_with_a_scale_per_channel():
    tau = irregular(2, 10, seed=1)
    scale = torch.tensor([-0.1, -1.0, -3.0], dtype=torch.float64).view(1, -1, 1)
    got = doubling.first_decays(tau, 1, torch.float64, scale)
    assert got.shape == (2, 3, 10)
    for channel in range(3):
        one = doubling.first_decays(tau, 1, torch.float64, float(scale[0, channel, 0]))
        torch.testing.assert_close(got[:, channel : channel + 1], one, rtol=0, atol=0)


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_decays_by_products_match_the_decay_over_each_block(dilation, dtype):
    tau = irregular(4, 80, seed=7)
    scale = -0.4
    top = 5
    z = torch.randn(1, 4, 1, 80, dtype=dtype)
    _, decays = doubling.levels(z, doubling.first_decays(tau, dilation, dtype, scale), top, dilation)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    for level in range(top + 1):
        block = decays[level]
        assert block is not None
        span = 2**level * dilation
        exact = torch.exp(scale * (tau[..., span:] - tau[..., :-span]))  # v(p, p - 2^j d)
        torch.testing.assert_close(block[..., span:].double(), exact, rtol=tolerance, atol=0)


# (10 and 26: a block followed only by a block two levels down.)
@pytest.mark.parametrize(("lags", "dilation"), [(32, 1), (21, 1), (10, 1), (26, 2), (7, 3), (1, 1)])
def test_window_sums_equal_the_lags_written_out(lags, dilation):
    tau = irregular(3, 200, seed=lags)
    scale = -0.25
    z = torch.randn(1, 3, 1, 200, dtype=torch.float64)
    top = lags.bit_length() - 1
    first = doubling.first_decays(tau, dilation, torch.float64, scale)
    found, decays = doubling.levels(z, first, top, dilation)
    start = (lags - 1) * dilation
    got = doubling.window(found, decays, lags, dilation, start)[0]
    outputs = torch.arange(start, 200)
    want = torch.zeros(3, 1, len(outputs), dtype=torch.float64)
    for k in range(lags):
        source = outputs - k * dilation
        want += torch.exp(scale * (tau[..., outputs] - tau[..., source])) * z[0][..., source]
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_ragged_windows_take_each_output_its_own_number_of_lags():
    tau = irregular(2, 64, seed=3)
    scale = -0.5
    z = torch.randn(1, 2, 1, 64, dtype=torch.float64)
    top = 4  # up to 31 lags
    found, decays = doubling.levels(z, doubling.first_decays(tau, 1, torch.float64, scale), top, 1)
    start = 30
    outputs = torch.arange(start, 64)
    lags = torch.from_numpy(np.random.default_rng(5).integers(1, 32, size=(2, 1, len(outputs))))
    got = doubling.ragged_window(found, decays, lags, 1, start)[0]
    for row in range(2):
        for index, output in enumerate(outputs.tolist()):
            count = int(lags[row, 0, index])
            source = torch.arange(output, output - count, -1)
            weights = torch.exp(scale * (tau[row, 0, output] - tau[row, 0, source]))
            want = float((weights * z[0, row, 0, source]).sum())
            assert got[row, 0, index].item() == pytest.approx(want, rel=1e-13, abs=1e-13)
