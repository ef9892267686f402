from __future__ import annotations

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
import pytest
from safetensors.numpy import save_file

from app.paths import DEFAULT_WEIGHTS, PROJECT_ROOT
from app.weights import load_weights
from tests.reference import REPO_ROOT, SHIPPED_WEIGHTS, bank_reference, read_weights_file
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
    data = tmp_path / "d.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cpu", "mem"])
        writer.writerows(rng.normal(size=(200, 2)).cumsum(axis=0).tolist())
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
        "--no-normalize",
        "--warmup",
        "adjust",
    )
    assert result.returncode == 0, result.stderr
    for text in ("channel", "alpha", "cpu", "mem"):
        assert text in result.stderr
    loaded = load_weights(out)
    assert loaded.card.channels == ("cpu", "mem")
    assert (loaded.card.kernel_size, loaded.card.normalize, loaded.card.warmup) == (8, False, "adjust")
    assert loaded.card.extra["epochs"] == "5"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        ("a,b\n1,x\n", "'x' is not a number"),
        ("a\n1\nNaN\n", "not a finite number"),
        ("a\n1\n2\n3\n", "at least 34 are needed"),
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

    # The summary line (wrapped by rich) prints each alpha to 4 decimals.
    summary = " ".join(result.stderr.split()).split("alphas: ")[1]
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
