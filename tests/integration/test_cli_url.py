"""``convewma smooth --url``: a file smoothed through a running service (real uvicorn on
127.0.0.1, limits tight enough that the client splits) writes what the local command writes:
the same header, labels and empty cells, and values equal to the last digits shown."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from tests.reference import SHIPPED_WEIGHTS, read_weights_file
from tests.servers import thread_server

SHIPPED = read_weights_file(SHIPPED_WEIGHTS)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with thread_server(max_series=2, max_length=64, max_body_bytes=4096) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two series (series_id) of a channel-named column, another column and a time column."""
    rng = np.random.default_rng(40)
    lines = [f"series_id,when,{SHIPPED.channels[1]},load"]
    for series, length in ((0, 150), (1, 37)):
        seconds = 1.7e9 + np.cumsum(np.round(rng.exponential(3.0, length) + 0.01, 3))
        for second in seconds:
            stamp = datetime.fromtimestamp(second, UTC).isoformat(timespec="milliseconds")
            a, b = rng.normal(5.0, 2.0, 2).round(3)
            lines.append(f"{series},{stamp},{'' if rng.random() < 0.2 else a},{b}")
    path = tmp_path_factory.mktemp("url") / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> list[list[str]]:
    assert main(["smooth", *args]) == 0
    return list(csv.reader(io.StringIO(capsys.readouterr().out)))


@pytest.mark.parametrize(
    "options",
    [
        ["--dtype", "float64"],
        ["--dtype", "float64", "--pairing", "bank", "--stride", "3", "--gaps", "skip"],
        ["--dtype", "float64", "--time-col", "when", "--max-gap", "20"],
        ["--min-periods", "3", "--warmup", "zeros"],
    ],
)
def test_the_service_writes_what_the_local_command_writes(capsys, url, data, options) -> None:
    local = run(capsys, "--data", str(data), *options)
    remote = run(capsys, "--data", str(data), "--url", url, *options)
    assert remote[0] == local[0]
    assert len(remote) == len(local) > 60
    for mine, theirs in zip(remote[1:], local[1:], strict=True):
        labels = 2 if "--time-col" in options else 1
        assert mine[:labels] == theirs[:labels]
        got = np.array([float(v) if v else np.nan for v in mine[labels:]])
        want = np.array([float(v) if v else np.nan for v in theirs[labels:]])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        digits = 1e-12 if "float64" in options else 1e-6
        np.testing.assert_allclose(got, want, rtol=digits, atol=0)


def test_an_unreachable_service_is_a_clean_error(capsys, data) -> None:
    assert main(["smooth", "--data", str(data), "--url", "http://127.0.0.1:9"]) != 0
    assert "--url http://127.0.0.1:9" in capsys.readouterr().err
