"""``convewma smooth`` in-process: its help, the summary line it prints (alphas read from the
weights file by the reference, the pairing of each column), float32 range and number text."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from app.cli import main
from app.core.paths import DEFAULT_WEIGHTS
from tests.reference import SHIPPED_WEIGHTS, read_weights_file

SHIPPED = read_weights_file(SHIPPED_WEIGHTS)


def test_smooth_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["smooth", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--data FILE CSV (header = channel names, optional series_id and index columns), .npy or .npz; "
        "repeatable (required)",
        "holds data); copied to the output",
        f"--weights FILE safetensors model (default: {DEFAULT_WEIGHTS})",
        "--pairing {auto,each,bank} each: every column by the channel of its name (written under its "
        "name); bank: every column by every channel (written as column:channel); auto: each for the "
        "columns named like a channel, bank for the others (default: auto)",
        "--warmup {zeros,adjust} warm-up mode (default: the model's own)",
        "--gaps {decay,skip} missing values (empty cells): decay: older values keep decaying across a gap "
        "(pandas ignore_na=False); skip: observed values as if adjacent (ignore_na=True) (default: decay)",
        "--min-periods MIN_PERIODS an output needs this many observed values in its window, else it is "
        "an empty cell (default: 1)",
        "--stride STRIDE write every s-th step: steps 0, s, 2s, ... (default: 1)",
        "--dtype {float32,float64} precision of the computation and of the written values (7 or 17 "
        "digits) (default: float32)",
        "--out FILE CSV to write, in an existing folder (default: stdout)",
    ):
        assert text in out, text


@pytest.mark.parametrize(
    ("header", "pairing", "said"),
    [
        ("infl,other", "auto", "own channel: infl; all channels: other"),
        ("infl,other", "bank", "all channels: infl, other"),
        ("infl,unemp", "auto", "own channel: infl, unemp"),
        ("infl,unemp", "each", "own channel: infl, unemp"),
    ],
)
def test_smooth_says_which_model_and_which_channel_smooths_each_column(
    capsys, tmp_path, header, pairing, said
):
    data = tmp_path / "x.csv"
    data.write_text(f"{header}\n1,2\n2,\n3,4\n")
    assert main(["smooth", "--data", str(data), "--pairing", pairing]) == 0
    sha = hashlib.sha256(SHIPPED_WEIGHTS.read_bytes()).hexdigest()[:12]
    alphas = ", ".join(f"{n}={a:.4f}" for n, a in zip(SHIPPED.channels, SHIPPED.alphas, strict=True))
    err = " ".join(capsys.readouterr().err.split())
    assert err == f"model {DEFAULT_WEIGHTS} (sha256 {sha}), alphas: {alphas}; {said}"


@pytest.mark.parametrize(("dtype", "status"), [("float32", 2), ("float64", 0)])
def test_values_beyond_float32_need_float64(capsys, tmp_path, dtype, status):
    data = tmp_path / "big.csv"
    data.write_text("infl\n1\n-4e38\n3\n")
    assert main(["smooth", "--data", str(data), "--dtype", dtype]) == status
    captured = capsys.readouterr()
    if status == 2:
        last = captured.err.splitlines()[-1]
        assert (
            last
            == "convewma smooth: error: series 0: 4e+38 is outside the float32 range; use --dtype float64"
        )
    else:
        cells = [line.split(",")[-1] for line in captured.out.splitlines()[1:]]
        # The adjusted start: the first output is the first input (to a float64 ulp).
        assert float(cells[0]) == pytest.approx(1.0, rel=2 * 2.0**-52, abs=0)
        assert np.isfinite([float(c) for c in cells]).all()


def test_the_largest_float32_is_accepted(capsys, tmp_path):
    data = tmp_path / "edge.csv"
    data.write_text("infl\n3.4028234e38\n1\n")
    assert main(["smooth", "--data", str(data)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split(",")[-1] == "3.402823e+38"
