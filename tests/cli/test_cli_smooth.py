"""``convewma smooth`` with missing values, pairing, warm-up, gaps, min_periods, stride and
dtype: every written cell against tests/reference.py (NaN exactly where it has NaN)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from app.cli import main
from tests.cli.test_cli import convewma
from tests.reference import SHIPPED_WEIGHTS, max_relative_error, read_weights_file, smooth_reference

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
CHANNELS = ("cpu_load", "latency_ms")


def model_file(path: Path, normalize: bool, dilation: int = 2) -> Path:
    """Two channels named like the columns of ``telemetry``: K = 6, dilated."""
    metadata = {
        "format_version": "1",
        "channels": json.dumps(list(CHANNELS)),
        "kernel_size": "6",
        "normalize": json.dumps(normalize),
        "warmup": "adjust",
        "eps": "1e-06",
        "dilation": str(dilation),
    }
    save_file({"logits": np.array([0.4, -1.1], dtype=np.float32)}, str(path), metadata=metadata)
    return path


def telemetry(path: Path, columns: tuple[str, ...] = (*CHANNELS, "disk")) -> dict[str, np.ndarray]:
    """Two series (40 and 7 steps) with a time index and gaps: scattered, leading, and one
    longer than the receptive field (11 steps)."""
    rng = np.random.default_rng(7)
    series = {}
    for name, steps in (("a", 40), ("b", 7)):
        values = np.stack([rng.normal(size=steps), 100 + 10 * rng.normal(size=steps), rng.normal(size=steps)])
        values = values[: len(columns)].round(4)
        values[rng.random(values.shape) < 0.2] = np.nan
        series[name] = values
    series["a"][0, 3:17] = np.nan
    series["b"][1, :2] = np.nan
    rows = []
    for name, values in series.items():
        for step, cells in enumerate(values.T):
            rows.append(
                [name, f"2024-01-01T00:{step:02d}", *("" if np.isnan(v) else repr(float(v)) for v in cells)]
            )
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "time", *columns])
        writer.writerows(rows)
    return series


def read_output(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(path.read_text().splitlines()))
    return rows[0], rows[1:]


def check_column(cells: list[str], expected: np.ndarray, dtype: str, what: str) -> None:
    actual = np.array([float(c) if c else np.nan for c in cells])
    assert actual.shape == expected.shape, what
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    seen = ~np.isnan(expected)
    if seen.any():
        error = max_relative_error(actual[seen], expected[seen])
        assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("stride", "min_periods"), [(1, 1), (3, 3)])
@pytest.mark.parametrize("gaps", ["decay", "skip"])
@pytest.mark.parametrize("warmup", ["zeros", "adjust"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("pairing", ["auto", "bank"])
def test_every_cell_against_the_reference(
    tmp_path, pairing, normalize, warmup, gaps, stride, min_periods, dtype
):
    weights = read_weights_file(model_file(tmp_path / "w.safetensors", normalize))
    data, out = tmp_path / "d.csv", tmp_path / "out.csv"
    series = telemetry(data)
    options = ["--warmup", warmup, "--gaps", gaps, "--stride", str(stride), "--min-periods", str(min_periods)]
    argv = ["smooth", "--data", str(data), "--weights", str(tmp_path / "w.safetensors"), "--out", str(out)]
    assert main([*argv, *options, "--dtype", dtype, "--pairing", pairing]) == 0

    header, body = read_output(out)
    # auto: the columns named like a channel by that channel alone, under their own name.
    own = CHANNELS if pairing == "auto" else ()
    columns = [(name, [name] if name in own else list(CHANNELS)) for name in (*CHANNELS, "disk")]
    expected_header = ["time", "series"]
    for name, channels in columns:
        expected_header += [name] if name in own else [f"{name}:{c}" for c in channels]
    assert header == expected_header
    start = 0
    for position, (name, values) in enumerate(series.items()):
        steps = -(-values.shape[1] // stride)
        block = body[start : start + steps]
        start += steps
        assert [row[:2] for row in block] == [
            [f"2024-01-01T00:{t:02d}", str(position)] for t in range(0, values.shape[1], stride)
        ]
        at = 2
        for source, (_, channels) in enumerate(columns):
            for channel in channels:
                alpha = weights.alphas[CHANNELS.index(channel)]
                expected = smooth_reference(
                    values[source],
                    alpha,
                    6,
                    warmup,
                    normalize,
                    gaps=gaps,
                    min_periods=min_periods,
                    dilation=2,
                    stride=stride,
                )
                check_column([row[at] for row in block], expected, dtype, f"series {name} {header[at]}")
                at += 1
    assert start == len(body)


def test_pairing_each_smooths_every_column_by_its_channel_only(tmp_path):
    weights = read_weights_file(model_file(tmp_path / "w.safetensors", normalize=True, dilation=1))
    data, out = tmp_path / "d.csv", tmp_path / "out.csv"
    series = telemetry(data, columns=tuple(reversed(CHANNELS)))  # column order is the file's
    argv = ["smooth", "--data", str(data), "--weights", str(tmp_path / "w.safetensors"), "--out", str(out)]
    assert main([*argv, "--pairing", "each"]) == 0
    header, body = read_output(out)
    assert header == ["time", "series", "latency_ms", "cpu_load"]
    start = 0
    for values in series.values():
        block = body[start : start + values.shape[1]]
        start += values.shape[1]
        for source, name in enumerate(header[2:]):
            expected = smooth_reference(values[source], weights.alphas[CHANNELS.index(name)], 6, "adjust")
            check_column([row[2 + source] for row in block], expected, "float32", name)


@pytest.mark.parametrize(
    ("extra", "content", "message"),
    [
        (
            ["--pairing", "each"],
            "cpu_load,disk\n1,2\n",
            "--pairing each: column 'disk' is not a model channel (channels: cpu_load, latency_ms;",
        ),
        (["--min-periods", "7"], "x\n1\n", "--min-periods 7: must be in [0, 6] (the model's kernel_size)"),
        (["--min-periods", "-1"], "x\n1\n", "argument --min-periods: must be >= 0, got -1"),
        (["--stride", "0"], "x\n1\n", "argument --stride: must be >= 1, got 0"),
        (["--gaps", "fill"], "x\n1\n", "argument --gaps: invalid choice: 'fill'"),
        ([], "x\n1\n1e39\n", "series 0: 1e+39 is outside the float32 range; use --dtype float64"),
        ([], "x,y\n1,\n2,\n", "column 'y' has no observed value (all missing)"),
    ],
)
def test_bad_options_and_data_are_one_line(tmp_path, capsys, extra, content, message):
    data = tmp_path / "d.csv"
    data.write_text(content)
    weights = model_file(tmp_path / "w.safetensors", normalize=True)
    argv = ["smooth", "--data", str(data), "--weights", str(weights), *extra]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        status = int(str(exc.code))
    assert status == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("convewma smooth: error: ")
    assert message in line


@pytest.mark.parametrize(("dtype", "error"), [("float64", 1e-6), ("float32", 1e3)])
def test_float64_keeps_every_digit(tmp_path, capsys, dtype, error):
    """The issue's 1000000001: float32 is off in the last digits (7 significant digits
    written), float64 keeps them."""
    data = tmp_path / "d.csv"
    data.write_text("x\n1000000001\n")
    assert main(["smooth", "--data", str(data), "--warmup", "adjust", "--dtype", dtype]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    firsts = np.array([float(cell) for cell in rows[1][1:]])  # the first output is the first input
    assert np.all(np.abs(firsts - 1000000001) <= error)


def test_a_pandas_csv_with_nan_round_trips_through_pandas(tmp_path):
    """The entry point on what pandas writes (NaN as empty cells) and reads back (empty
    cells as NaN): the shipped model, a date index, missing outputs where the reference
    has them."""
    weights = read_weights_file(SHIPPED_WEIGHTS)
    frame = pd.DataFrame(
        {"infl": [np.nan, 2.0, np.nan, 4.0, 5.0], "other": [1.0, np.nan, 3.0, np.nan, np.nan]},
        index=pd.date_range("2024-01-01", periods=5, name="day"),
    )
    data, out = tmp_path / "d.csv", tmp_path / "out.csv"
    frame.to_csv(data)
    result = convewma("smooth", "--data", str(data), "--out", str(out), "--min-periods", "2")
    assert result.returncode == 0, result.stderr
    smoothed = pd.read_csv(out, index_col="day")
    assert list(smoothed.columns) == ["series", "infl", *(f"other:{c}" for c in weights.channels)]
    assert list(smoothed.index) == [str(d.date()) for d in frame.index]
    infl = weights.alphas[weights.channels.index("infl")]
    reference = smooth_reference(
        frame["infl"].to_numpy(), infl, weights.kernel_size, weights.warmup, min_periods=2
    )
    check_column(["" if np.isnan(v) else repr(v) for v in smoothed["infl"]], reference, "float32", "infl")
    for channel, alpha in zip(weights.channels, weights.alphas, strict=True):
        expected = smooth_reference(
            frame["other"].to_numpy(), alpha, weights.kernel_size, weights.warmup, min_periods=2
        )
        cells = ["" if np.isnan(v) else repr(v) for v in smoothed[f"other:{channel}"]]
        check_column(cells, expected, "float32", channel)
