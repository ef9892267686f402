"""Fitting the smoothing factors by one-step-ahead forecast error.

Simple exponential smoothing is classically fitted by minimising the squared error of
predicting ``x_{t+1}`` by the smoothed value ``y_t``; we do the same, channel by
channel, with every series of the data set.  Predictions whose window is not yet full
(``t < K - 1``) are left out of the loss so that the fit does not depend on how the
warm-up is treated.  Training runs in float64 on one CPU thread so that the same data
and arguments give the same weights, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.data import Dataset
from app.ewma import ConvEWMA


@dataclass(frozen=True)
class TrainConfig:
    kernel_size: int = 32
    normalize: bool = True
    warmup: str = "zeros"
    epochs: int = 300
    lr: float = 0.05
    seed: int = 0
    initial_alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")

    @property
    def min_length(self) -> int:
        """Steps a series needs: a full window plus at least two forecasts."""
        return self.kernel_size + 2


@dataclass(frozen=True)
class TrainResult:
    model: ConvEWMA
    channel_losses: tuple[float, ...]  # final one-step-ahead MSE per channel
    final_loss: float  # mean of the per-channel losses


def _channel_losses(model: ConvEWMA, inputs: list[torch.Tensor], burn_in: int) -> torch.Tensor:
    """Mean squared one-step-ahead error per channel over all series."""
    total = torch.zeros(model.channels, dtype=torch.float64)
    count = 0
    for x in inputs:
        smoothed = model(x)  # (1, C, T), depth-wise
        errors = smoothed[0, :, burn_in:-1] - x[0, :, burn_in + 1 :]
        total = total + errors.pow(2).sum(dim=1)
        count += errors.shape[1]
    return total / count


def fit(
    dataset: Dataset,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train one smoothing factor per channel of ``dataset``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(config.seed)
        model = ConvEWMA(
            len(dataset.channels),
            config.kernel_size,
            normalize=config.normalize,
            warmup=config.warmup,
            alpha=config.initial_alpha,
            dtype=torch.float64,
        )
        inputs = [torch.from_numpy(s).unsqueeze(0) for s in dataset.series]
        # Each channel's loss only depends on its own alpha; dividing by the variance of
        # its steps puts channels of different scales on the same footing for Adam.
        scale = torch.stack([torch.from_numpy(s).diff(dim=1).var(dim=1) for s in dataset.series]).mean(0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        burn_in = config.kernel_size - 1
        model.train()
        for epoch in range(config.epochs):
            optimizer.zero_grad()
            loss = (_channel_losses(model, inputs, burn_in) / scale).mean()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()
            schedule.step()
            if on_epoch is not None:
                on_epoch(epoch, loss.item())
        model.eval()
        with torch.no_grad():
            losses = _channel_losses(model, inputs, burn_in)
        return TrainResult(
            model=model,
            channel_losses=tuple(float(v) for v in losses),
            final_loss=float(losses.mean()),
        )
    finally:
        torch.set_num_threads(threads)
