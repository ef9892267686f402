"""``convewma smooth`` and ``train`` with ``--time-col`` in-process: the written values against
``smooth_times_reference``, the time column copied verbatim, ``--max-gap``, the model card's
time unit, the half-life in seconds and the dropped mass on the data's times."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.core.weights import load_weights
from tests.reference import halflife_of, read_weights_file, smooth_times_reference, times_dropped_mass


@pytest.fixture
def irregular(tmp_path: Path) -> tuple[Path, list[str], np.ndarray, np.ndarray]:
    """A CSV of two columns (one with missing values) at Poisson times as RFC 3339 strings."""
    rng = np.random.default_rng(5)
    seconds = 1.7e9 + np.cumsum(np.round(rng.exponential(4.0, 120) + 0.01, 3))
    values = rng.normal(10.0, 2.0, (2, 120)).round(3)
    values[1, rng.random(120) < 0.2] = np.nan
    stamps = [datetime.fromtimestamp(s, UTC).isoformat(timespec="milliseconds") for s in seconds]
    lines = ["when,a,b"] + [
        f"{stamp},{a},{'' if np.isnan(b) else b}" for stamp, a, b in zip(stamps, *values, strict=True)
    ]
    path = tmp_path / "irregular.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, stamps, seconds, values


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize("max_gap", [None, 6.0])
def test_smooth_by_time_writes_the_reference_and_keeps_the_time_column(capsys, irregular, tmp_path, max_gap):
    path, stamps, seconds, values = irregular
    train_out = tmp_path / "m.safetensors"
    options = ["--time-col", "when", "--time-unit", "60", "--kernel-size", "8", "--epochs", "20"]
    assert main(["train", "--data", str(path), "--out", str(train_out), *options]) == 0
    capsys.readouterr()
    extra = [] if max_gap is None else ["--max-gap", str(max_gap)]
    args = [
        "smooth",
        "--data",
        str(path),
        "--weights",
        str(train_out),
        "--time-col",
        "when",
        "--dtype",
        "float64",
    ]
    assert main([*args, *extra]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert rows[0] == ["when", "series", "a", "b"]  # columns named like channels: their own
    assert [row[0] for row in rows[1:]] == stamps  # verbatim
    written = np.array([[float(cell) if cell else np.nan for cell in row[2:]] for row in rows[1:]]).T
    model = read_weights_file(train_out)
    for column, alpha in enumerate(model.alphas):
        want = smooth_times_reference(
            values[column], seconds, float(alpha), 8, "adjust", time_unit=60.0, max_gap=max_gap
        )
        np.testing.assert_array_equal(np.isnan(written[column]), np.isnan(want))
        np.testing.assert_allclose(written[column], want, rtol=1e-12, equal_nan=True)


def test_train_by_time_records_the_time_unit_and_reports_seconds(capsys, irregular, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path, _, seconds, _ = irregular
    out = tmp_path / "m.safetensors"
    options = ["--time-col", "when", "--time-unit", "60", "--kernel-size", "8", "--epochs", "30"]
    assert main(["train", "--data", str(path), "--out", str(out), *options]) == 0
    assert load_weights(out).model.time_unit == 60.0
    assert read_weights_file(out).metadata["time_unit"] == "60.0"
    lines = [" ".join(line.split()) for line in capsys.readouterr().err.splitlines()]
    header = next(line for line in lines if "channel" in line and "MSE" in line)
    assert header.strip("┃│ ").split(" ┃ ")[:4] == [
        "channel",
        "alpha per 60 s",
        "halflife (s)",
        "dropped mass (max)",
    ]
    for name, alpha in zip(("a", "b"), read_weights_file(out).alphas, strict=True):
        worst = times_dropped_mass(seconds, float(alpha), 8, time_unit=60.0).max()
        row = next(line for line in lines if line.strip("│ ").startswith(f"{name} │"))
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells[1] == f"{alpha:.6f}"
        assert cells[2] == f"{halflife_of(float(alpha), 60.0):.4g}"
        assert cells[3] == f"{worst:.2e}"
        warned = [line for line in lines if line.startswith(f"warning: channel {name!r}: ")]
        assert len(warned) == (worst > 0.01)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("when,a\n1,1\n1,2\n", ["--time-col", "when"], "t.csv:3: time column 'when': '1' is not after '1'"),
        ("when,a\n1,1\n", ["--max-gap", "5"], "--max-gap needs --time-col"),
        ("when,a\n1,1\n", ["--time-col", "when", "--max-gap", "0"], "--max-gap: must be a finite number of"),
        ("a,b\n1,1\n", ["--time-col", "when"], "no column 'when' for the index"),
    ],
)
def test_bad_time_options_are_one_line_errors(capsys, tmp_path, text, args, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    try:
        status = main(["smooth", "--data", str(path), *args])
    except SystemExit as exited:  # argparse's own refusals (a bad --max-gap) exit
        status = exited.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
