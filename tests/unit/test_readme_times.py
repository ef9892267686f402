"""README.md's "Irregular timestamps: times or steps": its Python example runs and prints
what the comment lines under each ``print`` show, and the plot it embeds is committed."""

from __future__ import annotations

import contextlib
import io
import re
import struct

import pandas as pd
import pytest
import torch

from app import ConvEWMA
from tests.reference import REPO_ROOT, halflife_of

README = REPO_ROOT / "README.md"
HEADING = "## Irregular timestamps: times or steps"


def section() -> str:
    text = README.read_text()
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start : None if end < 0 else end]


def example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", section(), re.M | re.S)
    assert len(blocks) == 1, "the section holds one Python example"
    return blocks[0]


def printed(code: str) -> list[str]:
    """The output the example shows: the whole-line comments right after a line that prints."""
    shown: list[str] = []
    printing = False
    for line in code.splitlines():
        if line.startswith("# ") and printing:
            shown.append(line[2:])
            continue
        printing = "print(" in line or line.startswith("show(")
    return shown


def run(code: str) -> tuple[list[str], dict[str, object]]:
    namespace: dict[str, object] = {"__name__": "readme_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), namespace)
    return out.getvalue().splitlines(), namespace


def test_the_example_prints_what_the_readme_shows():
    code = example()
    shown = printed(code)
    assert len(shown) == 4
    lines, _ = run(code)
    assert lines == shown


def test_the_example_by_time_is_pandas_with_the_layers_half_life():
    _, namespace = run(example())
    layer, x, times = namespace["layer"], namespace["x"], namespace["times"]
    assert isinstance(layer, ConvEWMA)
    assert isinstance(x, torch.Tensor)
    assert isinstance(times, torch.Tensor)
    with torch.no_grad():
        alpha = float(layer.alphas[0])
        got = layer(x, times=times)[0, 0].numpy()
    halflife = halflife_of(alpha, layer.time_unit)
    assert halflife == pytest.approx(60.0)  # "half-life 60 s"
    index = pd.to_datetime(times[0].numpy(), unit="s")
    series = pd.Series(x[0].numpy(), index=index)
    expected = series.ewm(halflife=pd.Timedelta(seconds=halflife), times=index).mean().to_numpy()
    assert got == pytest.approx(expected, rel=1e-12)


def test_the_embedded_plot_is_committed_and_small():
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", section())
    assert links == ["docs/times.png"]
    image = REPO_ROOT / links[0]
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 600)
    assert len(data) <= 100_000
    assert (REPO_ROOT / "docs" / "plot_times.py").is_file()
    assert "python docs/plot_times.py" in section()
