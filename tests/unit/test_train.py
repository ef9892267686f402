from __future__ import annotations

import math

import numpy as np
import pytest

from app.data import Dataset
from app.train import TrainConfig, fit


def optimal_alpha(q: float) -> float:
    """Steady-state Kalman gain of the local-level model: the optimal SES alpha."""
    return (-q + math.sqrt(q * q + 4 * q)) / 2


def local_level(q: float, length: int, rng: np.random.Generator) -> np.ndarray:
    level = np.cumsum(rng.normal(0.0, math.sqrt(q), length))
    return level + rng.normal(0.0, 1.0, length)


SIGNAL_TO_NOISE = [0.2, 0.5, 2.0]  # optimal alphas 0.358, 0.5, 0.732 (all >= 0.3)


def test_recovers_the_known_optimum_of_local_level_series():
    rng = np.random.default_rng(2026)
    series = np.stack([local_level(q, 20_000, rng) for q in SIGNAL_TO_NOISE])
    dataset = Dataset(channels=tuple(f"q={q}" for q in SIGNAL_TO_NOISE), series=(series,), description="ll")
    result = fit(dataset, TrainConfig(epochs=200))
    for q, alpha in zip(SIGNAL_TO_NOISE, result.model.alphas.tolist(), strict=True):
        assert abs(alpha - optimal_alpha(q)) <= 0.03, (q, alpha, optimal_alpha(q))
    assert len(result.channel_losses) == 3


def test_training_is_deterministic():
    rng = np.random.default_rng(1)
    dataset = Dataset(channels=("a",), series=(local_level(0.5, 500, rng)[None],), description="d")
    first, second = fit(dataset, TrainConfig(epochs=20)), fit(dataset, TrainConfig(epochs=20))
    assert first.model.logits.tolist() == second.model.logits.tolist()
    assert first.final_loss == second.final_loss


def test_progress_callback_sees_every_epoch():
    rng = np.random.default_rng(1)
    dataset = Dataset(channels=("a",), series=(local_level(0.5, 100, rng)[None],), description="d")
    seen: list[int] = []
    fit(dataset, TrainConfig(epochs=7), lambda epoch, loss: seen.append(epoch))
    assert seen == list(range(7))


@pytest.mark.parametrize(("kwargs", "message"), [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr")])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
