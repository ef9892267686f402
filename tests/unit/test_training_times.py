"""A time column for ``convewma train`` and ``smooth`` (app/training/times.py, through
``load_dataset``), and training on irregular times: the fitted alpha per time unit is the
optimum the float64 reference measures on data simulated in continuous time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from app.training.data import DataError, Dataset, load_dataset
from app.training.train import TrainConfig, fit, truncation_advice
from tests.reference import halflife_of, smooth_times_reference


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("cells", "seconds"),
    [
        (["0", "1.5", "1e3"], [0.0, 1.5, 1000.0]),
        (["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.25Z"], [1714564800.0, 1714564800.25]),
        (["2024-05-01 14:00:00+02:00", "2024-05-01T12:00:01+00:00"], [1714564800.0, 1714564801.0]),
        (["2024-05-01T12:00:00", "2024-05-02"], [1714564800.0, 1714608000.0]),  # no offset: UTC
    ],
)
def test_time_cells_become_seconds_and_stay_as_written(tmp_path, cells, seconds):
    text = "t,a\n" + "".join(f"{cell},{i}\n" for i, cell in enumerate(cells))
    dataset = load_dataset([write(tmp_path, text)], 1, time_col="t")
    assert dataset.channels == ("a",)  # the time column is not data
    assert (dataset.time_name, dataset.index_name) == ("t", None)  # nor the index
    assert dataset.time_cells == (tuple(cells),)  # as written, for smooth to copy
    np.testing.assert_array_equal(dataset.times[0], seconds)
    for cell, value in zip(cells, seconds, strict=True):
        if not cell[0].isdigit() or "-" in cell:
            moment = datetime.fromisoformat(cell)
            assert (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() == value


def test_each_series_has_its_own_times(tmp_path):
    text = "series_id,t,a\nx,0,1\ny,5,2\nx,1,3\ny,6,4\ny,9,5\n"
    dataset = load_dataset([write(tmp_path, text)], 1, time_col="t")
    assert [t.tolist() for t in dataset.times] == [[0.0, 1.0], [5.0, 6.0, 9.0]]
    assert [s.shape for s in dataset.series] == [(1, 2), (1, 3)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "t,a\n0,1\n0,2\n",
            "d.csv:3: time column 't': '0' is not after '0': times must be strictly increasing",
        ),
        ("t,a\n5,1\n2,2\n", "d.csv:3: time column 't': '2' is not after '5'"),
        ("t,a\n0,1\n,2\n", "d.csv:3: time column 't': empty cell (every row needs a time)"),
        ("t,a\n0,1\nnoon,2\n", "d.csv:3: time column 't': 'noon' is not an ISO 8601 date or a number of"),
        ("t,a\n0,1\n1_000,2\n", "d.csv:3: time column 't': '1_000' is not an ISO 8601 date or a number of"),
        ("t,a\n0,1\ninf,2\n", "d.csv:3: time column 't': 'inf' is not a finite number of seconds"),
        (
            "t,a\n0,1\n2024-05-01,2\n",
            "d.csv:3: time column 't': '2024-05-01' is a date, the rows before hold",
        ),
        ("u,a\n0,1\n", "d.csv:1: no column 't' for the times (header: ['u', 'a'])"),
    ],
)
def test_bad_times_are_located(tmp_path, text, message):
    with pytest.raises(DataError) as error:
        load_dataset([write(tmp_path, text)], 1, time_col="t")
    assert message in str(error.value)


def test_a_time_column_needs_csv(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(DataError, match=r"a\.npy: a NumPy file has no columns, so no time column 't'"):
        load_dataset([write(tmp_path, "t,a\n0,1\n"), tmp_path / "a.npy"], 1, time_col="t")
    with pytest.raises(DataError, match=r"d\.csv:1: the time column cannot be 'series_id'"):
        load_dataset([write(tmp_path, "series_id,a\n0,1\n")], 1, time_col="series_id")


@pytest.mark.parametrize(
    ("text", "index_col", "index_name", "index", "channels"),
    [
        ("t,i,a\n0,7,1\n1,8,2\n", "i", "i", ("7", "8"), ("a",)),  # both named
        ("t,i,a\n0,7,1\n1,8,2\n", None, None, None, ("i", "a")),  # a numeric column is data
        (",t,a\n0,0,1\n1,1,2\n", None, "", ("0", "1"), ("a",)),  # df.to_csv(): unnamed index
        ("i,t,a\nx,0,1\ny,1,2\n", None, "i", ("x", "y"), ("a",)),  # labels that are not numbers
        ("i,t,a\nx,0,1\ny,1,2\n", "t", None, None, None),  # the time column named as the index too
    ],
)
def test_an_index_column_beside_the_time_column(tmp_path, text, index_col, index_name, index, channels):
    """The time column is never the index: the index is found among the other columns."""
    path = write(tmp_path, text)
    if channels is None:
        with pytest.raises(DataError, match=r"d\.csv:2: column 'i': 'x' is not a number"):
            load_dataset([path], 1, index_col=index_col, time_col="t")
        return
    dataset = load_dataset([path], 1, index_col=index_col, time_col="t")
    assert (dataset.channels, dataset.index_name, dataset.index_of(0)) == (channels, index_name, index)
    assert dataset.times[0].tolist() == [0.0, 1.0]
    assert dataset.time_cells == (("0", "1"),)


# -- training on irregular times -------------------------------------------------------------


def continuous_local_level(
    rng: np.random.Generator, count: int, q: float, mean_gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """A level diffusing by ``q`` per second (Brownian motion) seen with unit noise at Poisson
    arrival times ``mean_gap`` seconds apart on average: (values, times)."""
    gaps = rng.exponential(mean_gap, count)
    times = 1000.0 + np.cumsum(gaps)
    level = np.cumsum(rng.normal(0.0, np.sqrt(q * gaps)))
    return level + rng.normal(0.0, 1.0, count), times


def reference_mse(
    series: list[tuple[np.ndarray, np.ndarray]], alpha: float, kernel_size: int, unit: float
) -> float:
    """One-step MSE of forecasting x_t by the adjust-mode y_{t-1}, decayed by time."""
    errors = []
    for values, times in series:
        y = smooth_times_reference(values, times, alpha, kernel_size, "adjust", time_unit=unit)
        errors.append(y[:-1] - values[1:])
    return float(np.mean(np.concatenate(errors) ** 2))


@pytest.mark.parametrize(("q", "mean_gap", "unit"), [(0.05, 2.0, 1.0), (0.5, 0.5, 0.1)])
def test_training_on_irregular_times_finds_the_optimal_half_life(q, mean_gap, unit):
    """The optimum is measured: the reference's one-step MSE minimised over alpha (Brent,
    to 1e-6) on the same data. A Kalman filter would do better still (its gain depends on
    each gap); among time-decayed EWMAs of K taps this is the best, and the default fit (300
    epochs) must find it. Measured: alpha 0.122583 and 0.081158, within 1e-5 of the optimum
    (half-lives 5.3005 s and 0.8189 s); 150 epochs stop 1.1% and 0.15% short."""
    rng = np.random.default_rng(12)
    kernel_size = 16
    series = [continuous_local_level(rng, 700, q, mean_gap) for _ in range(3)]
    best = minimize_scalar(
        lambda a: reference_mse(series, a, kernel_size, unit),
        bounds=(0.01, 0.99),
        method="bounded",
        options={"xatol": 1e-6},
    )
    dataset = Dataset(
        channels=("level",),
        series=tuple(values[None] for values, _ in series),
        description="simulated",
        times=tuple(times for _, times in series),
    )
    result = fit(dataset, TrainConfig(kernel_size=kernel_size, time_unit=unit))
    alpha = float(result.model.alphas.detach())
    assert result.model.time_unit == unit
    assert alpha == pytest.approx(best.x, rel=1e-3)
    assert halflife_of(alpha, unit) == pytest.approx(halflife_of(best.x, unit), rel=1e-3)
    assert result.channel_losses[0] == pytest.approx(
        reference_mse(series, alpha, kernel_size, unit), rel=1e-9
    )
    assert result.channel_losses[0] <= best.fun * (1 + 1e-6)
    assert 0.05 < best.x < 0.95  # an interior optimum: the bounds decide nothing


def test_measured_truncation_advice():
    assert truncation_advice(0.3, 8, 1, dropped=0.005) is None
    assert truncation_advice(0.3, 8, 1, dropped=0.2) == (
        "alpha 0.3000: the 8 taps drop up to 20.0% of the weight on these times; retrain with a larger"
        " --kernel-size"
    )
    assert truncation_advice(0.3, 32, 2, dropped=0.2).endswith("retrain with --dilation 4")  # type: ignore[union-attr]
