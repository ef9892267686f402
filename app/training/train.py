"""Fitting the smoothing factors by one-step-ahead forecast error.

Simple exponential smoothing is classically fitted by minimising the squared error of
predicting ``x_t`` by the smoothed value ``y_{t-1}``; we do the same, channel by channel,
with every series of the data set.  Every forecast from ``t = 1`` is scored: the
forecasts come from the bias-corrected start (``warmup="adjust"``, whatever the model's
serving warm-up), so ``y_0 = x_0`` and a short series loses none of its data to the
warm-up.  Missing values (NaN) are smoothed over by the layer (``gaps="decay"``) and
left out of the loss: a forecast counts where its target is observed and its window
holds an observation.  Training runs in float64 on one CPU thread so that the same data
and arguments give the same weights, bit for bit. With times (a time column), each lag
decays by the seconds that passed, alpha per ``time_unit`` seconds: the same loss learns
a half-life in seconds from irregular data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from app.core.ewma import MAX_KERNEL_SIZE, ConvEWMA, equivalents
from app.training.data import Dataset


@dataclass(frozen=True)
class TrainConfig:
    kernel_size: int = 32
    normalize: bool = True
    warmup: str = "adjust"  # the model's serving warm-up; the loss always uses "adjust"
    dilation: int = 1
    epochs: int = 300
    lr: float = 0.05
    seed: int = 0
    initial_alpha: float = 0.5
    time_unit: float = 1.0  # seconds per step of alpha, when the data has times

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {self.dilation}")
        if not (math.isfinite(self.time_unit) and self.time_unit > 0):
            raise ValueError(f"time_unit must be a positive number of seconds, got {self.time_unit}")

    @property
    def min_length(self) -> int:
        """Steps a series needs: one value and the one it forecasts."""
        return 2


@dataclass(frozen=True)
class TrainResult:
    model: ConvEWMA
    channel_losses: tuple[float, ...]  # final one-step-ahead MSE per channel
    final_loss: float  # mean of the per-channel losses
    forecasts: tuple[int, ...]  # scored forecasts per channel


# Above this share of the kernel's mass dropped by the K taps, the truncated filter is
# noticeably not the exponential smoother its alpha names.
TRUNCATION_WARNING = 0.01


def truncation_advice(
    alpha: float, kernel_size: int, dilation: int = 1, dropped: float | None = None
) -> str | None:
    """A one-line warning when K taps drop more than 1% of the kernel's mass (``dropped``:
    as measured on data with times, else the plain ``(1 - alpha)^K``), else None."""
    if dropped is not None:  # on irregular times a tap spans however long the data waits
        if dropped <= TRUNCATION_WARNING:
            return None
        more = f"--dilation {2 * dilation}" if kernel_size == MAX_KERNEL_SIZE else "a larger --kernel-size"
        return (
            f"alpha {alpha:.4f}: the {kernel_size} taps drop up to {dropped:.1%} of the weight on"
            f" these times; retrain with {more}"
        )
    dropped = equivalents(alpha, kernel_size)["truncated_mass"]
    if dropped <= TRUNCATION_WARNING:
        return None
    # Taps that would hold 99% of the mass. A dilation d makes each tap d steps, so the
    # same memory needs a larger alpha: about taps / K as many steps per tap.
    taps = math.ceil(math.log(TRUNCATION_WARNING) / math.log1p(-alpha))
    if taps <= MAX_KERNEL_SIZE:
        fix = f"--kernel-size {taps}"
    else:
        steps = dilation * math.ceil(taps / MAX_KERNEL_SIZE)
        fix = f"--kernel-size {MAX_KERNEL_SIZE} --dilation {steps}"
    return (
        f"alpha {alpha:.4f}: the {kernel_size} taps drop {dropped:.1%} of the kernel's mass;"
        f" retrain with {fix}"
    )


def _step_scale(dataset: Dataset) -> torch.Tensor:
    """Per channel, the variance of its observed one-step changes (1 where there is none)."""
    steps = [np.diff(values, axis=1) for values in dataset.series]
    joined = np.concatenate(steps, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = np.isfinite(joined)
        count = finite.sum(axis=1)
        mean = np.where(finite, joined, 0.0).sum(axis=1) / np.maximum(count, 1)
        var = np.where(finite, (joined - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count - 1, 1)
    return torch.from_numpy(np.where((count > 1) & (var > 0), var, 1.0))


def _channel_losses(
    model: ConvEWMA, inputs: list[torch.Tensor], times: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared one-step-ahead errors per channel over all series, and their count
    (with ``times``, each lag decayed by the seconds since it, whatever the next step's)."""
    total = torch.zeros(model.channels, dtype=torch.float64)
    count = torch.zeros(model.channels, dtype=torch.float64)
    for index, x in enumerate(inputs):
        tau = None if times is None else times[index]
        forecast = model(x, warmup="adjust", times=tau)[0, :, :-1]  # (C, T - 1), depth-wise
        target = x[0, :, 1:]
        scored = ~(torch.isnan(forecast) | torch.isnan(target))
        # Masked before squaring: a NaN inside the square would poison the gradient.
        errors = torch.where(scored, forecast - target, torch.zeros((), dtype=torch.float64))
        total = total + errors.pow(2).sum(dim=1)
        count = count + scored.sum(dim=1)
    return total, count


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
            dilation=config.dilation,
            time_unit=config.time_unit,
            alpha=config.initial_alpha,
            dtype=torch.float64,
        )
        inputs = [torch.tensor(s, dtype=torch.float64).unsqueeze(0) for s in dataset.series]
        times = [torch.tensor(t).unsqueeze(0) for t in dataset.times] or None
        with torch.no_grad():
            _, scored = _channel_losses(model, inputs, times)
        if bool((scored == 0).any()):
            name = dataset.channels[int((scored == 0).nonzero()[0])]
            raise ValueError(
                f"channel {name!r} has no forecast to score: no observed value has an"
                f" observation in the {model.receptive_field} steps before it"
            )
        # Each channel's loss only depends on its own alpha; dividing by the variance of
        # its steps puts channels of different scales on the same footing for Adam.
        scale = _step_scale(dataset)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        model.train()
        for epoch in range(config.epochs):
            optimizer.zero_grad()
            total, count = _channel_losses(model, inputs, times)
            loss = (total / count / scale).mean()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()
            schedule.step()
            if on_epoch is not None:
                on_epoch(epoch, loss.item())
        model.eval()
        with torch.no_grad():
            total, count = _channel_losses(model, inputs, times)
            losses = total / count
        channel_losses = tuple(float(v) for v in losses)
        return TrainResult(
            model=model,
            channel_losses=channel_losses,
            # fsum, not torch's mean: its rounding of a 3-value sum differed between two
            # AVX-512 EPYC machines, and the model card's bytes should not.
            final_loss=math.fsum(channel_losses) / len(channel_losses),
            forecasts=tuple(int(n) for n in count.tolist()),
        )
    finally:
        torch.set_num_threads(threads)
