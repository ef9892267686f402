"""Throughput of ConvEWMA on irregular timestamps next to the plain layer and pandas' ``times``.

Prints a Markdown table of input values per second, measured side by side in one run, and
optionally writes it to a report. Issue 12's targets on the 2-core CPU: at least 25% of the
plain path and at least 5x pandas with ``times``. Not a test: figures depend on the machine.

    python benchmarks/bench_times.py
    python benchmarks/bench_times.py --series 64 --length 1024 --report benchmarks/results/times.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from app.core.ewma import ConvEWMA


def best_of(run: Callable[[], object], repeat: int) -> float:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        took.append(time.perf_counter() - started)
    return min(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=256)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--kernel-size", type=int, default=32)
    parser.add_argument("--pandas-series", type=int, default=32, help="pandas runs this many, scaled up")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    shape = (args.series, args.length)
    x = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
    seconds = 1.7e9 + np.cumsum(rng.exponential(1.0, shape) + 1e-3, axis=1)  # Poisson arrivals
    times = torch.tensor(seconds)
    layer = ConvEWMA(1, args.kernel_size, alpha=0.1, warmup="adjust")
    values = x.numel()
    with torch.inference_mode():
        plain = best_of(lambda: layer(x), args.repeat)
        timed = best_of(lambda: layer(x, times=times), args.repeat)
    halflife = pd.Timedelta(seconds=float(np.log(0.5) / np.log(0.9)))
    frames = [
        pd.Series(x[i].numpy().astype(np.float64), index=pd.to_datetime(seconds[i], unit="s"))
        for i in range(min(args.pandas_series, args.series))
    ]
    pandas = best_of(lambda: [f.ewm(halflife=halflife, times=f.index).mean() for f in frames], args.repeat)
    pandas *= args.series / len(frames)
    rows = [
        ("ConvEWMA, steps", plain),
        ("ConvEWMA, times", timed),
        ("pandas ewm(halflife, times)", pandas),
    ]
    lines = [
        f"{args.series} x {args.length} float32, K={args.kernel_size}, C=1, {args.threads} torch thread(s)",
        "",
        "| path | M values/s | vs times |",
        "|---|---:|---:|",
        *(f"| {name} | {values / s / 1e6:.2f} | {timed / s:.3g}x |" for name, s in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
