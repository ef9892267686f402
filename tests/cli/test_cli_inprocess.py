"""``convewma`` in this process (``app.cli.main``), where mutation testing sees it: the
parser and its help, the exit statuses, the one-line error and how it is printed, a closed
stdout, and the cells and summary line that ``smooth`` writes."""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

import app
from app.cli import _one_line, _quiet_stdout, build_parser, main
from app.cli.common import (
    DATA_HELP,
    INDEX_HELP,
    TIME_HELP,
    CliError,
    HelpFormatter,
    int_in_range,
    output_path,
)
from app.cli.train import _created_at
from app.core.paths import DEFAULT_WEIGHTS
from tests.reference import REPO_ROOT, pandas_equivalents, read_weights_file, smooth_reference

# --- the parser and its help ------------------------------------------------------------

TRAIN_OPTIONS = {
    "--data FILE": f"{DATA_HELP} (required)",
    "--index-col NAME": INDEX_HELP,
    "--out FILE": "safetensors file to write, in an existing folder (required)",
    "--kernel-size KERNEL_SIZE": "taps of the kernel, 1 to 32 (default: 32)",
    "--dilation DILATION": "lag between taps: the kernel reaches (K-1)*dilation steps back, for long memory"
    " (default: 1)",
    "--normalize, --no-normalize": "divide by the sum of the kernel (warm-up zeros) (default: True)",
    "--warmup {zeros,adjust}": "the model's warm-up when it smooths (training always scores from the "
    "adjusted start) (default: adjust)",
    "--epochs EPOCHS": "full-batch Adam steps (default: 300)",
    "--lr LR": "initial learning rate (cosine decay) (default: 0.05)",
    "--seed SEED": "random seed (default: 0)",
    "--time-col NAME": TIME_HELP,
    "--time-unit SECONDS": "with --time-col: alpha is learnt per this many seconds (a model property) "
    "(default: 1.0)",
}
SMOOTH_OPTIONS = {
    "--data FILE": f"{DATA_HELP} (required)",
    "--index-col NAME": f"{INDEX_HELP}; copied to the output",
    "--weights FILE": f"safetensors model (default: {DEFAULT_WEIGHTS})",
    "--url URL": "smooth through a running service at URL (e.g. http://127.0.0.1:8000) with its model, "
    "instead of --weights (default: locally)",
    "--pairing {auto,each,bank}": "each: every column by the channel of its name (written under its name); "
    "bank: every column by every channel (written as column:channel); auto: each for the columns named "
    "like a channel, bank for the others (default: auto)",
    "--warmup {zeros,adjust}": "warm-up mode (default: the model's own)",
    "--gaps {decay,skip}": "missing values (empty cells): decay: older values keep decaying across a gap "
    "(pandas ignore_na=False); skip: observed values as if adjacent (ignore_na=True) (default: decay)",
    "--min-periods MIN_PERIODS": "an output needs this many observed values in its window, else it is an "
    "empty cell (default: 1)",
    "--stride STRIDE": "write every s-th step: steps 0, s, 2s, ... (default: 1)",
    "--dtype {float32,float64}": "precision of the computation and of the written values (7 or 17 digits)"
    " (default: float32)",
    "--time-col NAME": f"{TIME_HELP}; copied to the output",
    "--max-gap SECONDS": "with --time-col: lags older than this are out of the window (a reset after an "
    "outage) (default: none)",
    "--out FILE": "CSV to write, in an existing folder (default: stdout)",
}
SERVE_OPTIONS = {
    "--host HOST": "listen address (default: $CONVEWMA_HOST, else 127.0.0.1)",
    "--port PORT": "listen port (default: $CONVEWMA_PORT, else 8000)",
    "--weights FILE": f"safetensors model (default: $CONVEWMA_WEIGHTS, else {DEFAULT_WEIGHTS})",
    "--device DEVICE": "auto (CUDA if available, else CPU), cpu, cuda or cuda:N "
    "(default: $CONVEWMA_DEVICE, else auto)",
}
TOP_LEVEL = {
    "train": "fit one smoothing factor per channel of the data",
    "smooth": "smooth the columns of a file with the model's channels",
    "serve": "start the HTTP service (settings: CONVEWMA_* variables)",
}


def printed_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``convewma ... --help`` as printed, whitespace folded (the layout is argparse's)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("command", "options"), [("train", TRAIN_OPTIONS), ("smooth", SMOOTH_OPTIONS), ("serve", SERVE_OPTIONS)]
)
def test_every_option_is_printed_with_its_name_and_help(command, options, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a long default path
    text = printed_help([command], capsys)
    assert text.startswith(f"usage: convewma {command} [-h] ")
    for invocation, help_text in options.items():
        assert f" {invocation} {help_text} " in f"{text} ", invocation
    # No option beyond those above (and -h).
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    names = {name for a in subparsers.choices[command]._actions for name in a.option_strings}
    listed = {word.rstrip(",") for invocation in options for word in invocation.split() if word[0] == "-"}
    assert names == {"-h", "--help", *listed}


def test_the_top_level_help_names_the_commands(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    text = printed_help([], capsys)
    assert " ConvEWMA: learned exponential smoothing positional arguments: " in text
    for command, help_text in TOP_LEVEL.items():
        assert f" {command} {help_text} " in text


def test_version_names_the_project_torch_and_python(capsys):
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    expected = f"convewma {version} (torch {torch.__version__}, Python {platform.python_version()})"
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize("installed", [True, False])
def test_version_comes_from_the_installed_package_else_the_checkout(installed, capsys, monkeypatch):
    """The installed distribution's version wins; a checkout that is not installed shows
    app.__version__."""

    def version(name: str) -> str:
        if installed and name == "convewma-service":
            return "9.8.7"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(SystemExit):
        main(["--version"])
    shown = capsys.readouterr().out.split()[1]
    assert shown == ("9.8.7" if installed else app.__version__)


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "the following arguments are required: command" in capsys.readouterr().err


TRAIN = ("train", "--data", "d.csv", "--out", "w.safetensors")


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_train_defaults_and_types():
    args = parse("train", "--data", "d.csv", "--out", "w.safetensors")
    assert (args.kernel_size, args.dilation, args.normalize, args.warmup) == (32, 1, True, "adjust")
    assert (args.epochs, args.lr, args.seed, args.index_col, args.data) == (300, 0.05, 0, None, ["d.csv"])
    args = parse("train", "--data", "a", "--data", "b", "--out", "w", "--kernel-size", "1", "--dilation", "3")
    assert (args.data, args.kernel_size, args.dilation) == (["a", "b"], 1, 3)
    assert parse("train", "--data", "a", "--out", "w", "--dilation", str(1 << 20)).dilation == 1 << 20
    args = parse(*TRAIN, "--epochs", "5", "--lr", "0.2", "--seed", "7", "--no-normalize", "--warmup", "zeros")
    assert (args.epochs, args.lr, args.seed, args.normalize, args.warmup) == (5, 0.2, 7, False, "zeros")
    assert parse(*TRAIN, "--normalize").normalize is True


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        ("1700000000", "2023-11-14T22:13:20+00:00"),
        ("0", "1970-01-01T00:00:00+00:00"),
        ("", None),
        (None, None),
    ],
)
def test_created_at_is_source_date_epoch_else_now(monkeypatch, epoch, expected):
    """SOURCE_DATE_EPOCH (reproducible builds) pins the time; unset or empty: now, in whole seconds."""
    if epoch is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    before = datetime.now(UTC).replace(microsecond=0)
    created = _created_at()
    after = datetime.now(UTC)
    if expected is not None:
        assert created == expected
    else:
        assert before <= datetime.fromisoformat(created) <= after
        assert created.endswith("+00:00")
        assert "." not in created  # no microseconds


def test_smooth_and_serve_defaults_and_types():
    args = parse("smooth", "--data", "d.csv")
    assert (args.weights, args.pairing, args.warmup, args.gaps) == (
        str(DEFAULT_WEIGHTS),
        "auto",
        None,
        "decay",
    )
    assert (args.min_periods, args.stride, args.dtype, args.out, args.index_col) == (
        1,
        1,
        "float32",
        None,
        None,
    )
    assert parse("smooth", "--data", "d", "--min-periods", "0", "--stride", "7").stride == 7
    args = parse("serve", "--port", "8123")
    assert (args.host, args.port, args.weights, args.device) == (None, 8123, None, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--kernel-size", "33"], "argument --kernel-size: must be in [1, 32], got 33"),
        (["train", "--kernel-size", "0"], "argument --kernel-size: must be in [1, 32], got 0"),
        (["train", "--dilation", "0"], "argument --dilation: must be in [1, 1048576], got 0"),
        (
            ["train", "--dilation", str((1 << 20) + 1)],
            "argument --dilation: must be in [1, 1048576], got 1048577",
        ),
        (["train", "--dilation", "2.5"], "argument --dilation: must be an integer, got '2.5'"),
        (["train", "--warmup", "none"], "argument --warmup: invalid choice: 'none'"),
        (["smooth", "--stride", "x"], "argument --stride: must be an integer, got 'x'"),
        (["smooth", "--pairing", "all"], "argument --pairing: invalid choice: 'all'"),
        (["smooth", "--warmup", "none"], "argument --warmup: invalid choice: 'none'"),
        (["smooth", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
        (["serve", "--port", "x"], "argument --port: invalid int value: 'x'"),
        (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["train", "--lr", "x"], "argument --lr: invalid float value: 'x'"),
        (["train", "--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    ],
)
def test_bad_option_values_are_refused_by_the_parser(argv, message, capsys):
    required = ["--data", "d.csv", "--out", "w"] if argv[0] == "train" else ["--data", "d.csv"]
    full = [argv[0], *(required if argv[0] != "serve" else []), *argv[1:]]
    with pytest.raises(SystemExit) as exit_info:
        main(full)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --- common: the help formatter, integer ranges, --out ----------------------------------


def help_string(**kwargs: object) -> str | None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    name = kwargs.pop("name", "--n")
    action = parser.add_argument(name, **kwargs)  # type: ignore[arg-type]
    return HelpFormatter("prog")._get_help_string(action)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"default": 3, "help": "count"}, "count (default: %(default)s)"),
        ({"default": 3}, " (default: %(default)s)"),  # no help: nothing but the default
        ({"default": None}, ""),
        ({"default": None, "help": "count"}, "count"),
        ({"required": True, "help": "count"}, "count (required)"),
        ({"default": 3, "help": "count (default: three)"}, "count (default: three)"),  # says it already
        ({"default": argparse.SUPPRESS, "help": "count"}, "count"),
        ({"name": "n", "nargs": "?", "default": 3, "help": "count"}, "count"),  # a positional
    ],
)
def test_help_formatter_adds_the_default_or_required(kwargs, expected):
    assert help_string(**kwargs) == expected


@pytest.mark.parametrize(
    ("low", "high", "text", "value", "message"),
    [
        (1, 32, "32", 32, None),
        (1, 32, "1", 1, None),
        (1, 32, "33", None, "must be in [1, 32], got 33"),
        (1, 32, "0", None, "must be in [1, 32], got 0"),
        (0, None, "0", 0, None),
        (0, None, "123456789", 123456789, None),
        (0, None, "-1", None, "must be >= 0, got -1"),
        (0, None, "1.0", None, "must be an integer, got '1.0'"),
        (0, None, "", None, "must be an integer, got ''"),
    ],
)
def test_int_in_range(low, high, text, value, message):
    parse_int = int_in_range(low, high)
    if message is None:
        assert parse_int(text) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError) as error:
            parse_int(text)
        assert str(error.value) == message


def test_output_path_checks_the_folder_before_any_work(tmp_path):
    assert output_path(str(tmp_path / "out.csv")) == tmp_path / "out.csv"
    (tmp_path / "file").write_text("")
    cases = [
        (f"{tmp_path}/nope/out.csv", f"the folder {tmp_path}/nope does not exist (create it first)"),
        (f"{tmp_path}/file/out.csv", f"{tmp_path}/file is not a folder"),
        (str(tmp_path), "is a folder, not a file name"),
    ]
    for text, reason in cases:
        with pytest.raises(CliError) as error:
            output_path(text)
        assert str(error.value) == f"--out {text}: {reason}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing was created


# --- the one-line error, exit statuses, a closed stdout ---------------------------------


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (CliError("one\ntwo\n three"), "one two  three"),
        (ValueError(""), "ValueError"),  # an empty message names the exception
        (CliError(), "CliError"),
    ],
)
def test_one_line_joins_lines_and_names_an_empty_error(exc, message):
    text = _one_line("train", exc)
    assert text.plain == f"convewma train: error: {message}"
    ((start, end, style),) = [(s.start, s.end, s.style) for s in text.spans]
    assert (start, end, style) == (0, len("convewma train: error:"), "bold red")


@pytest.fixture
def colour(monkeypatch):
    """Force rich's colours, so that styles (and any highlighting) show as escape codes."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def test_an_error_prints_its_prefix_in_bold_red_and_the_message_as_is(tmp_path, capsys, colour):
    """Only the prefix is styled: no highlighting of numbers or paths, no markup read from
    a file name."""
    data = tmp_path / "[bold]x[/bold] 12.csv"
    assert main(["smooth", "--data", str(data)]) == 2
    assert capsys.readouterr().err == f"\x1b[1;31mconvewma smooth: error:\x1b[0m {data}: file not found\n"


def test_the_smooth_summary_is_not_highlighted(tmp_path, capsys, colour):
    """Numbers and paths as they are, and a column name that looks like rich markup too."""
    data = tmp_path / "d.csv"
    data.write_text("[bold]x[/bold]\n1\n")
    weights = model_file(tmp_path / "[bold]w.safetensors")  # no markup read from a name
    assert main(["smooth", "--data", str(data), "--weights", str(weights), "--out", str(tmp_path / "o")]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert "\x1b" not in line
    assert line.startswith(f"model {weights} (sha256 ")
    assert line.endswith("; all channels: [bold]x[/bold]")


def test_an_error_when_stderr_is_closed_still_exits_2(tmp_path, monkeypatch):
    class ClosedStream(io.StringIO):
        # Not BrokenPipeError: rich handles that one itself (exit 1) before main sees it.
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr("sys.stderr", ClosedStream())
    assert main(["smooth", "--data", str(tmp_path / "missing.csv")]) == 2


class Stdout(io.TextIOWrapper):
    """A real stdout file (a descriptor) whose writes fail as ``fail`` says."""

    def __init__(self, path: Path, fail: type[BaseException]) -> None:
        super().__init__(path.open("wb"), encoding="utf-8")
        self.fail = fail

    def write(self, text: str) -> int:
        raise self.fail()


@pytest.mark.parametrize(("fail", "status"), [(BrokenPipeError, 0), (KeyboardInterrupt, 130)])
def test_a_closed_stdout_is_status_0_and_an_interrupt_130(tmp_path, monkeypatch, capsys, fail, status):
    data = tmp_path / "d.csv"
    data.write_text("x\n1\n2\n")
    stdout = Stdout(tmp_path / "stdout", fail)
    monkeypatch.setattr("sys.stdout", stdout)
    try:
        assert main(["smooth", "--data", str(data)]) == status
        if fail is BrokenPipeError:  # stdout now points at /dev/null: a late flush cannot fail
            os.write(stdout.fileno(), b"late")
            assert (tmp_path / "stdout").read_bytes() == b""
    finally:
        stdout.buffer.close()
    assert "error" not in capsys.readouterr().err


def test_quiet_stdout_points_stdout_at_devnull(tmp_path, monkeypatch):
    with (tmp_path / "stdout").open("w") as stdout:
        monkeypatch.setattr("sys.stdout", stdout)
        before = len(os.listdir("/proc/self/fd"))
        _quiet_stdout()
        assert len(os.listdir("/proc/self/fd")) == before  # its own descriptor is closed
        assert os.path.samefile(f"/proc/self/fd/{stdout.fileno()}", os.devnull)
        stdout.write("after")
    assert (tmp_path / "stdout").read_text() == ""


@pytest.mark.parametrize(
    "error", [OSError(9, "Bad file descriptor"), ValueError("I/O operation on closed file")]
)
def test_quiet_stdout_ignores_a_stdout_without_a_descriptor(monkeypatch, error):
    class NoDescriptor(io.StringIO):
        def fileno(self) -> int:
            raise error

    monkeypatch.setattr("sys.stdout", NoDescriptor())
    _quiet_stdout()  # nothing to redirect: no exception


# --- smooth: the cells, the summary line, the index column ------------------------------

CHANNELS = ("cpu_load", "latency_ms")
LOGITS = np.array([0.4, -1.1], dtype=np.float32)


def model_file(path: Path, kernel_size: int = 6) -> Path:
    metadata = {
        "format_version": "1",
        "channels": json.dumps(list(CHANNELS)),
        "kernel_size": str(kernel_size),
        "normalize": "true",
        "warmup": "adjust",
        "eps": "1e-06",
    }
    save_file({"logits": LOGITS}, str(path), metadata=metadata)
    return path


def smooth_csv(tmp_path: Path, content: str, *options: str) -> list[list[str]]:
    data, out = tmp_path / "d.csv", tmp_path / "out.csv"
    data.write_text(content)
    weights = model_file(tmp_path / "w.safetensors")
    assert main(["smooth", "--data", str(data), "--weights", str(weights), "--out", str(out), *options]) == 0
    return list(csv.reader(out.read_text().splitlines()))


@pytest.mark.parametrize(
    ("dtype", "cells"),
    [
        # float32: 7 significant digits of the float32 value; 1e-46 is below its smallest
        # subnormal (1.4e-45), so a float32 computation sees 0.
        ("float32", ["0.3", "", "0", "3.402823e+38"]),
        ("float64", ["0.3", "", "1e-46", "3.4028234663852886e+38"]),
    ],
)
def test_cells_are_written_in_the_precision_of_dtype(tmp_path, dtype, cells):
    """The first step of each series is its first value (adjust warm-up); a missing value is
    an empty cell; the largest float32 is still accepted in float32."""
    content = "series_id,cpu_load\na,0.3\nb,\nc,1e-46\nd,3.4028234663852886e+38\n"
    rows = smooth_csv(tmp_path, content, "--dtype", dtype)
    assert rows[0] == ["series", "cpu_load"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    assert [row[1] for row in rows[1:4]] == cells[:3]
    # x * w / w in float64 may be off by an ulp: compared as a number.
    assert float(rows[4][1]) == pytest.approx(float(cells[3]), rel=1e-15)


def test_min_periods_may_equal_the_kernel_size(tmp_path):
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    rows = smooth_csv(tmp_path, "cpu_load\n" + "\n".join(map(str, values)) + "\n", "--min-periods", "6")
    alpha = read_weights_file(tmp_path / "w.safetensors").alphas[0]
    expected = smooth_reference(values, alpha, 6, "adjust", min_periods=6)
    assert [row[1] == "" for row in rows[1:]] == list(np.isnan(expected))
    np.testing.assert_allclose([float(row[1]) for row in rows[6:]], expected[5:], rtol=1e-6)


def test_the_summary_line_names_the_model_its_alphas_and_the_pairing(tmp_path, capsys):
    smooth_csv(tmp_path, "latency_ms,disk,cpu_load\n1,2,3\n")
    weights = tmp_path / "w.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    a, b = read_weights_file(weights).alphas
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"model {weights} (sha256 {digest}), alphas: cpu_load={a:.4f}, latency_ms={b:.4f}; "
        "own channel: latency_ms, cpu_load; all channels: disk"
    )


@pytest.mark.parametrize(
    ("content", "pairing"),
    [("disk\n1\n", "all channels: disk"), ("cpu_load\n1\n", "own channel: cpu_load")],
)
def test_the_summary_line_leaves_out_an_empty_group(tmp_path, capsys, content, pairing):
    smooth_csv(tmp_path, content)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(f"; {pairing}")
    assert line.count(";") == 1


def test_index_col_names_the_column_copied_to_the_output(tmp_path):
    rows = smooth_csv(tmp_path, "t,cpu_load\n10,1\n20,2\n30,4\n", "--index-col", "t", "--stride", "2")
    alpha = read_weights_file(tmp_path / "w.safetensors").alphas[0]
    expected = smooth_reference(np.array([1.0, 2.0, 4.0]), alpha, 6, "adjust", stride=2)
    assert [row[:2] for row in rows] == [["t", "series"], ["10", "0"], ["30", "0"]]
    np.testing.assert_allclose([float(row[2]) for row in rows[1:]], expected, rtol=1e-6)


def test_a_file_without_an_index_beside_one_with_it_gets_empty_labels(tmp_path):
    """Two files, the first with a time index: the series of the second have no labels."""
    first, second, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "out.csv"
    first.write_text("time,cpu_load\n2024-01-01,1\n2024-01-02,2\n")
    second.write_text("cpu_load\n5\n6\n7\n")
    weights = model_file(tmp_path / "w.safetensors")
    argv = ["smooth", "--data", str(first), "--data", str(second), "--weights", str(weights)]
    assert main([*argv, "--out", str(out), "--stride", "2"]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert [row[:2] for row in rows] == [["time", "series"], ["2024-01-01", "0"], ["", "1"], ["", "1"]]
    assert rows[2][2] == "5"  # adjust: the first output is the first value


# --- train: the table, the warnings, the progress bar -----------------------------------

STEPS = 40
TRAINING_ON = (
    "training on levels.csv (1 series, 40 steps), channels ['walk', 'noise'], "
    "1 missing values left out of the loss"
)
TABLE = ("channel", "alpha", "span", "halflife", "truncated mass", "one-step MSE", "forecasts")


@pytest.fixture
def levels(tmp_path) -> tuple[Path, np.ndarray]:
    """``walk`` wanders (a large alpha), ``noise`` is noise about a level (a tiny alpha, so
    its kernel is truncated); ``t`` is a numeric index that only ``--index-col`` makes one."""
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(size=STEPS)) + 0.1 * rng.normal(size=STEPS)
    noise = 5.0 + rng.normal(size=STEPS)
    values = np.stack([walk, noise]).round(4)
    values[0, 9] = np.nan
    rows = ["t,walk,noise"] + [
        f"{100 + step},{'' if np.isnan(a) else repr(float(a))},{float(b)!r}"
        for step, (a, b) in enumerate(values.T)
    ]
    path = tmp_path / "levels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, values


def one_step_mse(x: np.ndarray, alpha: float, kernel_size: int, dilation: int) -> tuple[float, int]:
    """Training's score: x[t] forecast by the adjusted smoothing up to t - 1, where both are present."""
    forecast = smooth_reference(x, alpha, kernel_size, "adjust", dilation=dilation)[:-1]
    scored = ~(np.isnan(forecast) | np.isnan(x[1:]))
    return float(np.mean((forecast - x[1:])[scored] ** 2)), int(scored.sum())


def expected_advice(alpha: float, kernel_size: int, dilation: int) -> str | None:
    """The warning's text: more than 1% of the mass past K taps, and the taps (or, past 32,
    the dilation at 32 taps) that would hold 99% of it."""
    dropped = (1.0 - alpha) ** kernel_size
    if dropped <= 0.01:
        return None
    taps = int(np.ceil(np.log(0.01) / np.log1p(-alpha)))
    fix = (
        f"--kernel-size {taps}" if taps <= 32 else f"--kernel-size 32 --dilation {dilation * -(-taps // 32)}"
    )
    mass = f"the {kernel_size} taps drop {dropped:.1%} of the kernel's mass"
    return f"alpha {alpha:.4f}: {mass}; retrain with {fix}"


def train(levels: tuple[Path, np.ndarray], out: Path, dilation: int) -> int:
    argv = ["train", "--data", str(levels[0]), "--out", str(out), "--index-col", "t", "--kernel-size", "4"]
    return main([*argv, "--dilation", str(dilation), "--epochs", "40", "--lr", "0.2"])


@pytest.mark.parametrize("dilation", [1, 3])
def test_train_prints_the_table_and_warnings_the_reference_expects(
    tmp_path, capsys, monkeypatch, levels, dilation
):
    monkeypatch.setenv("COLUMNS", "200")  # rich's width when stderr is not a terminal
    out = tmp_path / "w.safetensors"
    assert train(levels, out, dilation) == 0
    lines = capsys.readouterr().err.splitlines()
    # No progress bar is left behind when stderr is not a terminal (a log, a pipe).
    assert lines[0] == TRAINING_ON
    assert not [line for line in lines if "epoch" in line]
    title = next(i for i, line in enumerate(lines) if line.strip() == f"ConvEWMA weights written to {out}")
    header = [cell.strip() for cell in lines[title + 2].split("┃")[1:-1]]
    assert tuple(header) == TABLE
    alphas = read_weights_file(out).alphas
    losses = []
    rows = lines[title + 4 : title + 6]
    for name, x, alpha, line in zip(("walk", "noise"), levels[1], alphas, rows, strict=True):
        same = pandas_equivalents(float(alpha), 4)
        loss, forecasts = one_step_mse(x, float(alpha), 4, dilation)
        losses.append(loss)
        cells = line.split("│")[1:-1]
        # The channel is left-aligned, the numbers right-aligned, in columns wider than them.
        assert cells[0] == f" {name}".ljust(len(cells[0]))
        assert all(cell == cell.strip().rjust(len(cell) - 1) + " " for cell in cells[1:])
        shown = [cell.strip() for cell in cells]
        assert shown[0] == name
        expected = [f"{alpha:.6f}", f"{same['span']:.4g}", f"{same['halflife']:.4g}"]
        assert shown[1:5] == [*expected, f"{same['truncated_mass']:.2e}"]
        assert float(shown[5]) == pytest.approx(loss, rel=1e-5)  # 6 digits, computed apart
        assert shown[5] == f"{float(shown[5]):.6g}"
        assert shown[6] == str(forecasts)
    assert lines[title + 6].startswith("└")
    warnings = [
        f"warning: channel {name!r}: {advice}"
        for name, alpha in zip(("walk", "noise"), alphas, strict=True)
        if (advice := expected_advice(float(alpha), 4, dilation)) is not None
    ]
    assert lines[title + 7 :] == warnings
    assert any("--dilation" in warning for warning in warnings)  # noise's alpha needs more than 32 taps
    with safe_open(str(out), framework="numpy") as handle:
        metadata = handle.metadata()
    assert float(metadata["final_loss"]) == pytest.approx(np.mean(losses), rel=1e-6)
    assert json.loads(metadata["channels"]) == ["walk", "noise"]


def test_train_without_missing_values_says_nothing_of_them(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x\n1\n2.5\n2\n3.5\n")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "w"), "--epochs", "1"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == "training on d.csv (1 series, 4 steps), channels ['x']"


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_train_on_a_terminal_shows_its_progress_and_styles_only_the_warning(tmp_path, capsys, levels, colour):
    assert train(levels, tmp_path / "w.safetensors", 3) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    # Printed as is: no highlighting of the numbers, the list or the file name.
    assert lines[0] == TRAINING_ON
    frames = [ANSI.sub("", line) for line in lines if "epoch" in line]
    bar = "━" * 40
    assert re.fullmatch(rf"epoch {bar}  0/40 loss - 0:00:\d\d", frames[0])
    last = re.fullmatch(rf"epoch {bar} 40/40 loss (\S+) 0:00:\d\d", frames[-1])
    assert last is not None, frames[-1]
    assert last[1] == f"{float(last[1]):.6g}"
    warned = [line for line in lines if "warning:" in line]
    assert warned
    assert all(line.startswith("\x1b[1;33mwarning:\x1b[0m channel ") for line in warned)
