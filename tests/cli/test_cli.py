from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from app.cli import build_parser, main
from app.core.paths import DEFAULT_WEIGHTS, PROJECT_ROOT
from app.core.weights import load_weights
from tests.reference import REPO_ROOT, SHIPPED_WEIGHTS, bank_reference, pandas_equivalents, read_weights_file
from tests.unit.test_model_card import documented_command

SHIPPED_DATA = PROJECT_ROOT / "models" / "data" / "macrodata.csv"
# float32 smoothing against the float64 reference, per output column: README.md documents
# <= 1e-5. Measured on the data below, 7-digit printing included: at most 5.1e-7.
SMOOTH_TOLERANCE = 1e-5


def convewma(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_train_writes_weights_and_prints_table(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, 2)).cumsum(axis=0)
    values[rng.random(values.shape) < 0.1] = np.nan
    data = tmp_path / "d.csv"
    pd.DataFrame(values, columns=["cpu", "mem"]).to_csv(data, index=False)  # NaN: empty cells
    out = tmp_path / "w.safetensors"
    result = convewma(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "5",
        "--kernel-size",
        "8",
        "--dilation",
        "2",
        "--no-normalize",
        "--warmup",
        "zeros",
        env={"COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    missing = int(np.isnan(values).sum())
    assert f"training on d.csv (1 series, 200 steps), channels ['cpu', 'mem'], {missing} missing values" in (
        result.stderr
    )
    loaded = load_weights(out)
    assert loaded.card.channels == ("cpu", "mem")
    assert (loaded.card.kernel_size, loaded.card.normalize, loaded.card.warmup) == (8, False, "zeros")
    assert (loaded.card.dilation, loaded.model.dilation) == (2, 2)
    assert loaded.card.extra["epochs"] == "5"
    header = ["channel", "alpha", "span", "halflife", "truncated mass", "one-step MSE", "forecasts"]
    (table_header,) = [line for line in result.stderr.splitlines() if "channel" in line and "alpha" in line]
    assert [cell.strip() for cell in table_header.strip("┃ ").split("┃")] == header
    alphas = read_weights_file(out).alphas
    for name, alpha in zip(("cpu", "mem"), alphas, strict=True):
        (row,) = [line for line in result.stderr.splitlines() if line.startswith(f"│ {name} ")]
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        same = pandas_equivalents(float(alpha), 8)
        assert float(cells[1]) == pytest.approx(alpha, abs=5e-7)
        assert float(cells[2]) == pytest.approx(same["span"], rel=5e-4)
        assert float(cells[3]) == pytest.approx(same["halflife"], rel=5e-4)
        assert float(cells[4]) == pytest.approx(same["truncated_mass"], rel=5e-3)


def test_train_warns_when_the_taps_drop_more_than_one_percent(tmp_path, capsys):
    """A slow level under much noise wants a small alpha: 4 taps drop most of its kernel."""
    rng = np.random.default_rng(4)
    level = np.cumsum(rng.normal(0.0, 0.05, 400))
    data = tmp_path / "d.csv"
    pd.DataFrame({"slow": level + rng.normal(size=400), "fast": level}).to_csv(data, index=False)
    out = tmp_path / "w.safetensors"
    assert (
        main(["train", "--data", str(data), "--out", str(out), "--kernel-size", "4", "--epochs", "100"]) == 0
    )
    alphas = read_weights_file(out).alphas
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    dropped = pandas_equivalents(float(alphas[0]), 4)["truncated_mass"]
    assert dropped > 0.01 >= pandas_equivalents(float(alphas[1]), 4)["truncated_mass"]
    (warning,) = warnings
    assert warning.startswith(
        f"warning: channel 'slow': alpha {alphas[0]:.4f}: the 4 taps drop {dropped:.1%}"
    )
    assert "retrain with --kernel-size" in warning


def test_train_on_the_nile_lands_near_statsmodels(tmp_path):
    """`convewma train` with default flags on a short real series (100 yearly flows of the
    Nile that statsmodels ships, with its year column as the index): the fitted alpha is
    within 0.03 of statsmodels' simple exponential smoothing (0.2683 vs 0.2457 measured)."""
    from statsmodels.datasets import nile

    from tests.unit.test_train import ses_alpha

    frame = nile.load_pandas().data.astype({"year": int}).set_index("year")
    data = tmp_path / "nile.csv"
    frame.to_csv(data)
    out = tmp_path / "w.safetensors"
    result = convewma("train", "--data", str(data), "--index-col", "year", "--out", str(out))
    assert result.returncode == 0, result.stderr
    weights = read_weights_file(out)
    assert weights.channels == ("volume",)
    assert (weights.kernel_size, weights.warmup, weights.metadata["dilation"]) == (32, "adjust", "1")
    assert abs(float(weights.alphas[0]) - ses_alpha(frame["volume"].to_numpy(np.float64))) <= 0.03


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("a,b\n1,x\n", "'x' is not a number"),
        ("a\n1\nNaN\n", "not a finite number"),
        ("a\n1\n", "at least 2 are needed"),
        ("a,b\n1,\n2,\n", "column 'b' has no observed value (all missing)"),
        ("a,b\n1,1\n" + "2,\n" * 40 + "3,4\n", "channel 'b' has no forecast to score"),
        ("series_id\n1\n", "no data columns"),
        ("", "the file is empty"),
    ],
)
def test_train_bad_data_fails_cleanly(tmp_path, content, message):
    data = tmp_path / "bad.csv"
    if content is not None:
        data.write_text(content)
    result = convewma("train", "--data", str(data), "--out", str(tmp_path / "w.safetensors"))
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_train_rejects_kernel_size_above_32(tmp_path):
    result = convewma(
        "train", "--data", str(SHIPPED_DATA), "--out", str(tmp_path / "w"), "--kernel-size", "33"
    )
    assert result.returncode == 2
    assert "must be in [1, 32], got 33" in result.stderr


def custom_weights(path: Path) -> Path:
    """A small model written with safetensors alone: raw (unnormalised) kernel of 5 taps,
    ``adjust`` by default, eps 1e-3."""
    metadata = {
        "format_version": "1",
        "channels": json.dumps(["fast", "slow"]),
        "kernel_size": "5",
        "normalize": "false",
        "warmup": "adjust",
        "eps": "0.001",
    }
    save_file({"logits": np.array([1.5, -2.0], dtype=np.float32)}, str(path), metadata=metadata)
    return path


def smoothing_input(path: Path) -> dict[str, np.ndarray]:
    """Two series (``series_id``) of two columns on different scales: 45 and 7 steps."""
    rng = np.random.default_rng(11)
    series = {
        "a": np.stack([rng.normal(size=45), 100 + 10 * rng.normal(size=45)]).round(4),
        "b": np.stack([rng.normal(size=7), -50 + rng.normal(size=7)]).round(4),
    }
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "x", "y"])
        for name, values in series.items():
            writer.writerows([name, *(repr(float(v)) for v in step)] for step in values.T)
    return series


@pytest.mark.parametrize("model", ["shipped", "custom"])
@pytest.mark.parametrize("warmup", [None, "zeros", "adjust"])
def test_smooth_writes_every_cell_of_the_reference(tmp_path, model, warmup):
    weights = SHIPPED_WEIGHTS if model == "shipped" else custom_weights(tmp_path / "w.safetensors")
    reference = read_weights_file(weights)
    data = tmp_path / "s.csv"
    series = smoothing_input(data)
    out = tmp_path / "out.csv"
    args = ["smooth", "--data", str(data), "--weights", str(weights), "--out", str(out)]
    result = convewma(*args, *(["--warmup", warmup] if warmup else []))
    assert result.returncode == 0, result.stderr

    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["series", *(f"{src}:{ch}" for src in ("x", "y") for ch in reference.channels)]
    body = rows[1:]
    assert len(body) == sum(values.shape[1] for values in series.values())
    mode = warmup or reference.warmup
    start = 0
    for index, values in enumerate(series.values()):
        steps = values.shape[1]
        block = body[start : start + steps]
        start += steps
        assert [row[0] for row in block] == [str(index)] * steps
        actual = np.array([[float(cell) for cell in row[1:]] for row in block])
        # (sources, channels, T) -> one column per (source, channel), one row per step.
        expected = bank_reference(values, reference.alphas, reference.kernel_size, mode, reference.normalize)
        expected = expected.reshape(-1, steps).T
        error = np.abs(actual - expected) / np.abs(expected).max(axis=0)  # relative to each column
        bad = np.argwhere(error > SMOOTH_TOLERANCE)
        if bad.size:
            step, column = bad[0]
            pytest.fail(
                f"series {index}: {len(bad)} of {error.size} cells off the reference (worst "
                f"{error.max():.3g} relative); first at step {step}, {rows[0][column + 1]}: "
                f"{float(actual[step, column])!r}, expected {float(expected[step, column])!r}"
            )

    # The summary line, one line however long, prints each alpha to 4 decimals.
    (summary_line,) = [line for line in result.stderr.splitlines() if "alphas: " in line]
    summary = summary_line.split("alphas: ")[1]
    shown = re.findall(r"(\w+)=(\d\.\d{4})", summary)
    assert [name for name, _ in shown] == list(reference.channels)
    np.testing.assert_allclose([float(v) for _, v in shown], reference.alphas, rtol=0, atol=5e-5)


def test_smooth_refuses_a_pickle_weights_file(tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"\x80\x04K\x01.")
    result = convewma("smooth", "--data", str(SHIPPED_DATA), "--weights", str(bad))
    assert result.returncode == 2
    assert "only safetensors is accepted" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_shipped_model_is_reproduced_by_its_documented_command(tmp_path):
    """models/README.md's command rebuilds models/convewma.safetensors byte for byte (about
    5 s here). The committed bytes are read first and the rebuild goes to a temporary path.
    Byte equality holds for the same torch on the same CPU family (models/README.md)."""
    committed = SHIPPED_WEIGHTS.read_bytes()
    words = shlex.split(documented_command())
    program = next(i for i, word in enumerate(words) if word == "convewma")
    env = dict(word.split("=", 1) for word in words[:program])
    args = words[program + 1 :]
    out_at = args.index("--out") + 1
    assert (REPO_ROOT / args[out_at]).resolve() == SHIPPED_WEIGHTS  # it documents the shipped file
    rebuilt_path = tmp_path / "convewma.safetensors"
    args[out_at] = str(rebuilt_path)

    result = convewma(*args, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert SHIPPED_WEIGHTS.read_bytes() == committed  # the committed file is untouched
    rebuilt, shipped = read_weights_file(rebuilt_path), read_weights_file(SHIPPED_WEIGHTS)
    # Compared first, for a readable failure: same logits, same metadata.
    np.testing.assert_array_equal(rebuilt.logits, shipped.logits)
    assert rebuilt.metadata == shipped.metadata
    digests = [hashlib.sha256(blob).hexdigest() for blob in (rebuilt_path.read_bytes(), committed)]
    assert digests[0] == digests[1], f"rebuilt sha256 {digests[0]} != committed {digests[1]}"


def test_no_arguments_prints_usage():
    result = convewma()
    assert result.returncode == 2
    assert "usage: convewma" in result.stderr


def test_module_and_default_paths_exist():
    assert Path(DEFAULT_WEIGHTS).is_file()
    assert SHIPPED_DATA.is_file()


# --- one-line errors, closed pipes, help, version -------------------------------------

# A folder name long enough that any message naming it is wider than 80 columns, the
# width rich assumes when stderr is not a terminal.
LONG = "a-folder-name-long-enough-that-an-error-naming-it-is-wider-than-eighty-columns"


def _one_line_cases() -> list[tuple[str, list[str], dict[str, str], str]]:
    cases = [
        ("smooth: data file missing", ["smooth", "--data", f"/{LONG}/d.csv"], {}, "file not found"),
        (
            "smooth: --out folder missing",
            ["smooth", "--data", str(SHIPPED_DATA), "--out", f"/{LONG}/out.csv"],
            {},
            f"--out /{LONG}/out.csv: the folder /{LONG} does not exist",
        ),
        (
            "train: --out folder missing",
            ["train", "--data", str(SHIPPED_DATA), "--out", f"/{LONG}/w.safetensors"],
            {},
            f"the folder /{LONG} does not exist",
        ),
        (
            "smooth: --out is a folder",
            ["smooth", "--data", str(SHIPPED_DATA), "--out", "/"],
            {},
            "is a folder, not a file name",
        ),
        (
            "serve: weights missing",
            ["serve", "--weights", f"/{LONG}/w.safetensors"],
            {},
            "weights file not found",
        ),
        ("serve: bad setting", ["serve"], {"CONVEWMA_MAX_BATCH_SIZE": "0"}, "invalid settings"),
        ("serve: not a device", ["serve", "--device", "cudax"], {}, "'cudax' is not a device"),
        # No machine has 100 GPUs: refused with or without CUDA, before uvicorn starts.
        (
            "serve: no such GPU",
            ["serve", "--device", "cuda:99"],
            {},
            "invalid settings: device: 'cuda:99' but",
        ),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(
            ("serve: no CUDA", ["serve", "--device", "cuda"], {}, "invalid settings: device: 'cuda'")
        )
        cases.append(("serve: no CUDA (env)", ["serve"], {"CONVEWMA_DEVICE": "cuda"}, "device: 'cuda'"))
    return cases


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [case[1:] for case in _one_line_cases()],
    ids=[case[0] for case in _one_line_cases()],
)
def test_errors_are_one_unwrapped_line_and_exit_2(args, env, message):
    result = convewma(*args, env={"COLUMNS": "80", **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"convewma {args[0]}: error: ")
    assert message in lines[0]
    assert result.stdout == ""


def big_csv(path: Path, rows: int, series: int) -> Path:
    """Enough rows that the output (about 80 bytes a row) overflows any pipe buffer."""
    rng = np.random.default_rng(3)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "a", "b"])
        for step, (a, b) in enumerate(rng.normal(size=(rows, 2)).round(3).tolist()):
            writer.writerow([step % series, a, b])
    return path


@pytest.mark.parametrize(("series", "lines_read"), [(1, 1), (1, 0), (500, 3)])
def test_a_closed_stdout_ends_quietly_with_status_0(tmp_path, series, lines_read):
    """`convewma smooth ... | head -n N`: no "Broken pipe", no traceback, exit status 0."""
    data = big_csv(tmp_path / "big.csv", rows=60_000, series=series)  # about 5 MB of output
    with subprocess.Popen(
        [sys.executable, "-m", "app", "smooth", "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        head = [process.stdout.readline() for _ in range(lines_read)]
        process.stdout.close()  # what `head` does once it has its lines
        stderr = process.stderr.read()
        status = process.wait(timeout=120)
    assert status == 0, stderr
    assert [line.split(",")[0] for line in head] == ["series", "0", "0"][:lines_read]
    (summary,) = stderr.splitlines()  # nothing but the summary line
    assert "alphas: " in summary


def test_version_is_the_projects():
    import tomllib

    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = convewma("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"convewma {version} (torch ")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", ["", "train", "smooth", "serve"])
def test_every_option_says_its_default_or_that_it_is_required(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a long default path
    parser = _subcommands()[command] if command else build_parser()
    formatter = parser._get_formatter()
    options = [a for a in parser._actions if a.option_strings and a.default is not argparse.SUPPRESS]
    if command:
        assert options
    for action in options:
        text = formatter._get_help_string(action) or ""
        assert "(default: " in text or text.endswith("(required)"), (action.option_strings, text)
    # As printed: every non-required default appears in the help.
    printed = " ".join(parser.format_help().split())
    for action in options:
        if not action.required and action.default is not None:
            assert f"(default: {action.default})" in printed, action.option_strings


@pytest.mark.parametrize(
    ("option", "field"),
    [("--host", "host"), ("--port", "port"), ("--weights", "weights"), ("--device", "device")],
)
def test_serve_help_states_the_settings_defaults(option, field):
    from app.serving.settings import Settings

    (action,) = [a for a in _subcommands()["serve"]._actions if option in a.option_strings]
    assert f"$CONVEWMA_{field.upper()}, else {Settings.model_fields[field].default})" in (action.help or "")


# --- index columns: CSV as pandas writes it ---------------------------------------------


def _pandas_frames() -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Frames to write with to_csv, and the extra arguments that `smooth` needs for them."""
    rng = np.random.default_rng(5)
    values = rng.normal(size=(40, 2)).round(4)
    plain = pd.DataFrame(values, columns=["a", "b"])
    dated = plain.set_index(pd.date_range("2024-01-01", periods=40, freq="h", tz="UTC").rename("time"))
    epoch = plain.set_index(pd.Index(np.arange(40) * 60 + 1_700_000_000, name="t"))
    multi = plain.assign(
        series_id=np.repeat(["x", "y"], 20), date=np.tile(pd.date_range("2024-01-01", periods=20), 2)
    )
    return {
        "unnamed RangeIndex": (plain, []),
        "timestamp index": (dated, []),
        "numeric index named by --index-col": (epoch, ["--index-col", "t"]),
        "series_id and date index": (multi.set_index(["series_id", "date"]), []),
    }


@pytest.mark.parametrize("case", list(_pandas_frames()))
def test_smooth_keeps_the_index_column_of_a_pandas_csv(tmp_path, case):
    frame, extra = _pandas_frames()[case]
    indexed, bare = tmp_path / "indexed.csv", tmp_path / "bare.csv"
    frame.to_csv(indexed)
    no_index = frame.reset_index()
    no_index = no_index.drop(columns=[c for c in no_index.columns if c not in ("series_id", "a", "b")])
    no_index.to_csv(bare, index=False)

    result = convewma("smooth", "--data", str(indexed), *extra)
    plain = convewma("smooth", "--data", str(bare))
    assert result.returncode == 0, result.stderr
    assert plain.returncode == 0, plain.stderr
    rows = list(csv.reader(result.stdout.splitlines()))
    plain_rows = list(csv.reader(plain.stdout.splitlines()))
    index_name = frame.index.names[-1] or ""
    assert rows[0] == [index_name, *plain_rows[0]]
    # The smoothed values equal those of the same data without an index column.
    assert [row[1:] for row in rows] == plain_rows
    # The index cells are the file's, row for row (grouped by series_id when there is one).
    written = list(csv.reader(indexed.read_text().splitlines()))[1:]
    if "series_id" in frame.index.names:
        written.sort(key=lambda row: row[0])  # stable: time order within each series
    position = list(frame.index.names).index(frame.index.names[-1])
    assert [row[0] for row in rows[1:]] == [row[position] for row in written]
