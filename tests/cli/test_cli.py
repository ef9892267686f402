from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.paths import DEFAULT_WEIGHTS, PROJECT_ROOT
from app.weights import load_weights

SHIPPED_DATA = PROJECT_ROOT / "models" / "data" / "macrodata.csv"


def convewma(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
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


def test_smooth_with_shipped_model(tmp_path):
    data = tmp_path / "s.csv"
    data.write_text("price\n1\n2\n3\n4\n")
    out = tmp_path / "out.csv"
    result = convewma("smooth", "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["series", "price:infl", "price:realint", "price:tbilrate", "price:unemp"]
    assert len(rows) == 5
    assert float(rows[1][1]) > 0


def test_smooth_refuses_a_pickle_weights_file(tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"\x80\x04K\x01.")
    result = convewma("smooth", "--data", str(SHIPPED_DATA), "--weights", str(bad))
    assert result.returncode == 2
    assert "only safetensors is accepted" in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_model_is_reproduced_by_its_documented_command(tmp_path):
    """models/README.md's command must rebuild models/convewma.safetensors byte for byte."""
    out = tmp_path / "convewma.safetensors"
    result = convewma(
        "train", "--data", str(SHIPPED_DATA), "--out", str(out), env={"SOURCE_DATE_EPOCH": "1795219200"}
    )
    assert result.returncode == 0, result.stderr
    rebuilt, shipped = load_weights(out), load_weights(DEFAULT_WEIGHTS)
    np.testing.assert_allclose(
        rebuilt.model.alphas.detach().numpy(), shipped.model.alphas.detach().numpy(), rtol=0, atol=1e-6
    )
    assert rebuilt.card.training_data == shipped.card.training_data
    # Byte equality also holds on this project's machines (same CPU family and torch);
    # the tolerance above keeps the test meaningful on other hardware.
    assert shipped.sha256 in (PROJECT_ROOT / "models" / "README.md").read_text()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == rebuilt.sha256


def test_no_arguments_prints_usage():
    result = convewma()
    assert result.returncode == 2
    assert "usage: convewma" in result.stderr


def test_module_and_default_paths_exist():
    assert Path(DEFAULT_WEIGHTS).is_file()
    assert SHIPPED_DATA.is_file()
