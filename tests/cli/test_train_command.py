"""``convewma train`` in-process: what it writes into the weights file, the table and the
warnings it prints, checked against the file itself (read with ``safetensors`` alone) and the
reference formulas; and its refusal of an ``--out`` it cannot write."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from safetensors import safe_open

from app.cli import main
from tests.reference import pandas_equivalents, read_weights_file

EPOCH = 1_700_000_000
T = 120


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(5)
    level = np.cumsum(rng.normal(size=(T, 2)), axis=0)
    rows = ["fast,slow"] + [f"{a:.6f},{b:.6f}" for a, b in level + rng.normal(size=(T, 2))]
    rows[41] = "," + rows[41].split(",")[1]  # one missing value of `fast`
    path = tmp_path / "two.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--kernel-size", "8", "--epochs", "3", "--lr", "0.2", "--seed", "7", "--warmup", "zeros"],
            {"kernel_size": "8", "dilation": "1", "normalize": "true", "warmup": "zeros", "lr": "0.2"},
        ),
        (
            ["--kernel-size", "4", "--dilation", "3", "--epochs", "2", "--seed", "1", "--no-normalize"],
            {"kernel_size": "4", "dilation": "3", "normalize": "false", "warmup": "adjust", "lr": "0.05"},
        ),
    ],
)
def test_train_writes_its_settings_and_prints_the_table(
    monkeypatch, capsys, tmp_path, data, options, expected
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    monkeypatch.setenv("COLUMNS", "200")  # rich's table width on a non-terminal
    out = tmp_path / "model.safetensors"
    assert main(["train", "--data", str(data), "--out", str(out), *options]) == 0
    with safe_open(str(out), framework="numpy") as handle:
        metadata = dict(handle.metadata())
    seed = options[options.index("--seed") + 1]
    epochs = options[options.index("--epochs") + 1]
    assert (
        metadata["created_at"]
        == datetime.fromtimestamp(EPOCH, UTC).isoformat()
        == "2023-11-14T22:13:20+00:00"
    )
    assert {k: metadata[k] for k in expected} == expected
    assert (metadata["seed"], metadata["epochs"]) == (seed, epochs)
    assert metadata["torch_version"] == torch.__version__.split("+")[0]
    assert metadata["channels"] == '["fast", "slow"]'
    assert metadata["training_data"] == f"two.csv (1 series, {T} steps)"

    err = capsys.readouterr().err
    lines = [" ".join(line.split()) for line in err.splitlines()]
    missing = "1 missing values left out of the loss"
    assert f"training on two.csv (1 series, {T} steps), channels ['fast', 'slow'], {missing}" in lines
    assert f"ConvEWMA weights written to {out}" in " ".join(lines)
    header = next(line for line in lines if "channel" in line and "alpha" in line)
    names = ["channel", "alpha", "span", "halflife", "truncated mass", "one-step MSE", "forecasts"]
    assert [word for word in header.strip("┃│ ").split(" ┃ ")] == names
    kernel_size = int(expected["kernel_size"])
    for name, alpha in zip(("fast", "slow"), read_weights_file(out).alphas, strict=True):
        same = pandas_equivalents(float(alpha), kernel_size)
        # One-step forecasts of every observed value after the first.
        forecasts = T - 1 - (name == "fast")
        row = (
            f"{name} │ {alpha:.6f} │ {same['span']:.4g} │ {same['halflife']:.4g} │ "
            f"{same['truncated_mass']:.2e} │"
        )
        (found,) = [line for line in lines if line.strip("│ ").startswith(row)]
        assert found.strip("│ ").endswith(f"│ {forecasts}")
        warned = [line for line in lines if line.startswith(f"warning: channel {name!r}: ")]
        assert len(warned) == (same["truncated_mass"] > 0.01), (name, same["truncated_mass"], warned)


def test_train_refuses_an_out_it_cannot_write(capsys, data):
    assert main(["train", "--data", str(data), "--out", "/proc/model.safetensors", "--epochs", "1"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    reason = "cannot write the file: No such file or directory"
    assert last == f"convewma train: error: --out /proc/model.safetensors: {reason}"


def test_train_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--data FILE CSV (header = channel names, optional series_id and index columns), .npy or .npz; "
        "repeatable (required)",
        "--index-col NAME CSV column of row labels (e.g. timestamps), not smoothed (default: the first",
        "--out FILE safetensors file to write, in an existing folder (required)",
        "--kernel-size KERNEL_SIZE taps of the kernel, 1 to 32 (default: 32)",
        "--dilation DILATION lag between taps: the kernel reaches (K-1)*dilation steps back, for long "
        "memory (default: 1)",
        "--normalize, --no-normalize divide by the sum of the kernel (warm-up zeros) (default: True)",
        "--warmup {zeros,adjust} the model's warm-up when it smooths (training always scores from the "
        "adjusted start) (default: adjust)",
        "--epochs EPOCHS full-batch Adam steps (default: 300)",
        "--lr LR initial learning rate (cosine decay) (default: 0.05)",
        "--seed SEED random seed (default: 0)",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("--kernel-size", "33", "argument --kernel-size: must be in [1, 32], got 33"),
        ("--dilation", "0", "argument --dilation: must be in [1, "),
        ("--epochs", "x", "argument --epochs: invalid int value: 'x'"),
        ("--lr", "fast", "argument --lr: invalid float value: 'fast'"),
        ("--seed", "1.5", "argument --seed: invalid int value: '1.5'"),
        ("--warmup", "ones", "argument --warmup: invalid choice: 'ones'"),
    ],
)
def test_train_options_are_typed(capsys, tmp_path, option, value, reason):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", "x.csv", "--out", str(tmp_path / "m.safetensors"), option, value])
    assert exited.value.code == 2
    assert reason in capsys.readouterr().err
