"""``convewma smooth`` and ``train`` with ``--time-col`` in-process: the written values against
``smooth_times_reference``, the time column (and an index column beside it) copied verbatim,
``--max-gap``, the model card's time unit, the half-life in seconds and the dropped mass on
the data's times, and the errors."""

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

Irregular = tuple[Path, list[str], np.ndarray, np.ndarray]
TOLERANCE = {"float32": 2e-6, "float64": 1e-12}


@pytest.fixture(scope="module")
def irregular(tmp_path_factory: pytest.TempPathFactory) -> Irregular:
    """A CSV of two columns (one with missing values) at Poisson times as RFC 3339 strings."""
    rng = np.random.default_rng(5)
    seconds = 1.7e9 + np.cumsum(np.round(rng.exponential(4.0, 120) + 0.01, 3))
    values = rng.normal(10.0, 2.0, (2, 120)).round(3)
    values[1, rng.random(120) < 0.2] = np.nan
    stamps = [datetime.fromtimestamp(s, UTC).isoformat(timespec="milliseconds") for s in seconds]
    lines = ["when,a,b"] + [
        f"{stamp},{a},{'' if np.isnan(b) else b}" for stamp, a, b in zip(stamps, *values, strict=True)
    ]
    path = tmp_path_factory.mktemp("irregular") / "irregular.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, stamps, seconds, values


@pytest.fixture(scope="module")
def trained(irregular: Irregular) -> Path:
    """A model trained by time on ``irregular``, alpha per minute."""
    out = irregular[0].with_name("m.safetensors")
    options = ["--time-col", "when", "--time-unit", "60", "--kernel-size", "8", "--epochs", "20"]
    assert main(["train", "--data", str(irregular[0]), "--out", str(out), *options]) == 0
    return out


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def numbers(rows: list[list[str]], first: int) -> np.ndarray:
    """The written values from column ``first`` on, (columns, rows); empty cells NaN."""
    return np.array([[float(cell) if cell else np.nan for cell in row[first:]] for row in rows]).T


@pytest.mark.parametrize(
    ("dtype", "max_gap", "gaps"),
    [
        ("float64", None, "decay"),
        ("float64", 6.0, "decay"),
        ("float32", None, "decay"),
        ("float64", 6.0, "skip"),
    ],
)
def test_smooth_by_time_writes_the_reference_and_keeps_the_time_column(
    capsys, irregular, trained, dtype, max_gap, gaps
):
    path, stamps, seconds, values = irregular
    capsys.readouterr()
    args = ["smooth", "--data", str(path), "--weights", str(trained), "--time-col", "when"]
    extra = ["--dtype", dtype, "--gaps", gaps] + ([] if max_gap is None else ["--max-gap", str(max_gap)])
    assert main([*args, *extra]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert rows[0] == ["when", "series", "a", "b"]  # columns named like channels: their own
    assert [row[0] for row in rows[1:]] == stamps  # verbatim
    written = numbers(rows[1:], 2)
    options = {"time_unit": 60.0, "gaps": gaps}
    for column, alpha in enumerate(read_weights_file(trained).alphas):
        want = smooth_times_reference(
            values[column], seconds, float(alpha), 8, "adjust", **options, max_gap=max_gap
        )
        np.testing.assert_array_equal(np.isnan(written[column]), np.isnan(want))
        np.testing.assert_allclose(written[column], want, rtol=TOLERANCE[dtype], equal_nan=True)
        if max_gap is not None:  # the data has longer gaps: dropping those lags shows
            unbounded = smooth_times_reference(values[column], seconds, float(alpha), 8, "adjust", **options)
            assert np.nanmax(np.abs(written[column] - unbounded)) > 0.1


@pytest.mark.parametrize(
    ("header", "labels", "index_args"),
    [
        ("label,when,a", [f"r{i}" for i in range(9)], ["--index-col", "label"]),
        (",when,a", [str(i) for i in range(9)], []),  # df.to_csv() of a frame with a time column
    ],
)
def test_an_index_column_and_the_time_column_are_both_copied(capsys, tmp_path, header, labels, index_args):
    stamps = [
        "2024-01-02 03:04:05.25+01:00",  # an offset, a space, fractional seconds
        "2024-01-02T02:04:06Z",
        "2024-01-02T02:04:06.5",  # no offset: UTC
        *(f"2024-01-02T02:0{minute}:00Z" for minute in range(5, 9)),
        "2024-01-02T03:00:00+00:00",
        "2024-01-02T04:00:00.000001+01:00",  # a microsecond later
    ]
    seconds = 1704153600.0 + np.array([7445.25, 7446, 7446.5, 7500, 7560, 7620, 7680, 10800, 10800.000001])
    values = np.array([1.0, 4.0, np.nan, 2.0, 8.0, 5.0, 7.0, 3.0, 6.0])
    cells = ["" if np.isnan(v) else repr(v) for v in values.tolist()]
    path = tmp_path / "d.csv"
    path.write_text("\n".join([header, *map(",".join, zip(labels, stamps, cells, strict=True))]) + "\n")
    model = tmp_path / "m.safetensors"
    train = ["train", "--data", str(path), "--out", str(model), "--time-col", "when", "--time-unit", "30"]
    assert main([*train, *index_args, "--kernel-size", "4", "--epochs", "5"]) == 0
    capsys.readouterr()
    smooth = ["smooth", "--data", str(path), "--weights", str(model), "--time-col", "when", "--stride", "2"]
    assert main([*smooth, *index_args, "--dtype", "float64"]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert rows[0] == [header.split(",")[0], "when", "series", "a"]  # index first, then the time
    assert [row[:2] for row in rows[1:]] == [
        [label, stamp] for label, stamp in zip(labels, stamps, strict=True)
    ][::2]
    alpha = float(read_weights_file(model).alphas[0])
    want = smooth_times_reference(values, seconds, alpha, 4, "adjust", time_unit=30.0, stride=2)
    np.testing.assert_allclose(numbers(rows[1:], 3)[0], want, rtol=1e-12)


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


BAD_TIMES = [
    ("when,a\n1,1\n1,2\n", ["--time-col", "when"], "t.csv:3: time column 'when': '1' is not after '1'"),
    (
        "when,a\n2024-05-01T00:00:00Z,1\n1714521601,2\n",
        ["--time-col", "when"],
        "t.csv:3: time column 'when': '1714521601' is a number, the rows before hold dates",
    ),
    (
        "when,a\n2024-05-01T00:00:00Z,1\n2024-05-01T25:00:00Z,2\n",
        ["--time-col", "when"],
        "t.csv:3: time column 'when': '2024-05-01T25:00:00Z' is not an ISO 8601 date",
    ),
    ("when,a\n1,1\n ,2\n", ["--time-col", "when"], "t.csv:3: time column 'when': empty cell"),
    ("a,b\n1,1\n", ["--time-col", "when"], "t.csv:1: no column 'when' for the times"),
]
SMOOTH_ONLY = [
    ("when,a\n1,1\n", ["--max-gap", "5"], "--max-gap needs --time-col"),
    ("when,a\n1,1\n", ["--time-col", "when", "--max-gap", "0"], "--max-gap: must be a finite number of"),
]
TRAIN_ONLY = [
    ("when,a\n1,1\n2,2\n", ["--time-col", "when", "--time-unit", "-1"], "--time-unit: must be a finite"),
]


@pytest.mark.parametrize(
    ("command", "text", "args", "message"),
    [(command, *case) for case in BAD_TIMES for command in ("smooth", "train")]
    + [("smooth", *case) for case in SMOOTH_ONLY]
    + [("train", *case) for case in TRAIN_ONLY],
)
def test_bad_times_and_time_options_are_one_line_errors(capsys, tmp_path, command, text, args, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    extra = ["--out", str(tmp_path / "m.safetensors")] if command == "train" else []
    try:
        status = main([command, "--data", str(path), *args, *extra])
    except SystemExit as exited:  # argparse's own refusals (a bad number of seconds) exit
        status = exited.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["smooth", "train"])
def test_a_numpy_file_has_no_time_column(capsys, tmp_path, command):
    np.save(tmp_path / "a.npy", np.arange(4.0))
    extra = ["--out", str(tmp_path / "m.safetensors")] if command == "train" else []
    assert main([command, "--data", str(tmp_path / "a.npy"), "--time-col", "when", *extra]) == 2
    assert "a.npy: a NumPy file has no columns, so no time column 'when'" in capsys.readouterr().err
