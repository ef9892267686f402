"""Throughput of the ConvEWMA layer against pandas, SciPy and plain convolutions.

Prints a Markdown table of output values per second, measured side by side in one run,
and optionally writes it to a report file. Not a test: figures depend on the machine.

    python benchmarks/bench_ewma.py                      # default allocator
    python benchmarks/bench_ewma.py --tuned-allocator    # as the service runs
    python benchmarks/bench_ewma.py --device cuda --report benchmarks/results/gpu.md
    python benchmarks/bench_ewma.py --threads 1 --report benchmarks/results/cpu-one-thread.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.core.ewma import ConvEWMA
from app.serving.runtime import tune_allocator


@dataclass
class Row:
    name: str
    outputs: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.outputs / self.seconds


def measure(fn: Callable[[], object], repeats: int, budget_s: float, sync: Callable[[], None]) -> float:
    """Median wall time of ``fn`` after two warm-up calls; bounded by ``budget_s``."""
    fn()
    fn()
    sync()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=1024)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--kernel-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=20.0, help="time limit per row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--tuned-allocator", action="store_true", help="apply app.serving.runtime.tune_allocator()"
    )
    parser.add_argument(
        "--skip-slow", action="store_true", help="skip the literal (N, 1, T) conv1d and pandas"
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="also write the table to this Markdown file"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = tune_allocator() if args.tuned_allocator else False
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, t, k = args.series, args.length, args.kernel_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, t, generator=generator).to(device)
    alphas = [0.1, 0.3, 0.6]
    bank = ConvEWMA(3, k, alpha=alphas, device=device).eval()
    single = ConvEWMA(1, k, alpha=alphas[1], device=device).eval()
    rows: list[Row] = []

    def add(name: str, outputs: int, fn: Callable[[], object], note: str = "") -> None:
        with torch.inference_mode():
            rows.append(Row(name, outputs, measure(fn, args.repeats, args.budget_s, sync), note))

    out = torch.empty(n, 3, t, device=device)
    out1 = torch.empty(n, 1, t, device=device)
    source = torch.randn(n, 3, t, generator=generator).to(device)
    add(
        "memory copy of a C=1 output (ceiling)",
        n * t,
        lambda: out[:, 0].copy_(source[:, 0]),
        "preallocated destination",
    )
    add(
        "memory copy of a C=3 output (ceiling)",
        3 * n * t,
        lambda: out.copy_(source),
        "preallocated destination",
    )
    add(
        "allocate + fill a C=3 output",
        3 * n * t,
        lambda: torch.empty(n, 3, t, device=device).fill_(1.0),
        "page faults of a fresh tensor",
    )
    add("ConvEWMA C=1, zeros", n * t, lambda: single(x))
    add("ConvEWMA C=1, adjust", n * t, lambda: single(x, warmup="adjust"))
    add("ConvEWMA C=3 bank, zeros", 3 * n * t, lambda: bank(x))
    add("ConvEWMA C=3 bank, adjust", 3 * n * t, lambda: bank(x, warmup="adjust"))
    # out=: the output buffer reused from call to call (no fresh pages, as a server would).
    add("ConvEWMA C=1, zeros, out=", n * t, lambda: single(x, out=out1), "reused output")
    add("ConvEWMA C=1, adjust, out=", n * t, lambda: single(x, warmup="adjust", out=out1), "reused output")
    add("ConvEWMA C=3 bank, zeros, out=", 3 * n * t, lambda: bank(x, out=out), "reused output")
    add(
        "ConvEWMA C=3 bank, adjust, out=",
        3 * n * t,
        lambda: bank(x, warmup="adjust", out=out),
        "reused output",
    )
    add("ConvEWMA C=3 depth-wise (N, 3, T)", 3 * n * t, lambda: bank(source))
    # Real-world series (issue 10): every series has 5% missing values, so every row
    # takes the gap-aware path (two FIRs and a division); dilation deals the series
    # into d lanes; float64 and a stride for comparison.
    gappy = x.clone()
    gappy[torch.rand(n, t, generator=generator).to(device) < 0.05] = float("nan")
    dilated = ConvEWMA(1, k, alpha=alphas[1], dilation=4, device=device).eval()
    add("ConvEWMA C=1, 5% missing, gaps=decay", n * t, lambda: single(gappy))
    add("ConvEWMA C=1, 5% missing, gaps=skip", n * t, lambda: single(gappy, gaps="skip"))
    add(
        "ConvEWMA C=1, adjust, 5% missing, min_periods=4",
        n * t,
        lambda: single(gappy, "adjust", min_periods=4),
    )
    add("ConvEWMA C=1, dilation=4", n * t, lambda: dilated(x))
    add("ConvEWMA C=1, stride=4", -(-t // 4) * n, lambda: single(x, stride=4), "outputs counted")
    x64 = x.double()
    add("ConvEWMA C=1, float64", n * t, lambda: single(x64))
    # Irregular timestamps (issue 12): Poisson arrivals about a second apart, each series
    # its own; alpha per second. Every lag decays by its age (doubling, app/core/doubling.py).
    seconds = 1.7e9 + torch.cumsum(
        torch.empty(n, t, dtype=torch.float64).exponential_(generator=generator), 1
    )
    times = seconds.to(device)
    add("ConvEWMA C=1, times", n * t, lambda: single(x, times=times))
    add("ConvEWMA C=1, adjust, times", n * t, lambda: single(x, warmup="adjust", times=times))
    add("ConvEWMA C=3 bank, times", 3 * n * t, lambda: bank(x, times=times))
    add("ConvEWMA C=1, times, 5% missing", n * t, lambda: single(gappy, times=times))
    add("ConvEWMA C=1, times, 5% missing, gaps=skip", n * t, lambda: single(gappy, gaps="skip", times=times))
    add("ConvEWMA C=1, times, max_gap=5 s", n * t, lambda: single(x, times=times, max_gap=5.0))

    taps = single.kernel(torch.float32).detach().flip(-1)  # (1, K), oldest lag first
    add(
        "F.conv1d depth-wise (1, N, T), groups=N",
        n * t,
        lambda: F.conv1d(F.pad(x.unsqueeze(0), (k - 1, 0)), taps.expand(n, 1, k), groups=n),
    )
    if not args.skip_slow:
        add(
            "F.conv1d literal (N, 1, T)",
            n * t,
            lambda: F.conv1d(F.pad(x.unsqueeze(1), (k - 1, 0)), taps[None]),
        )

    if device.type == "cpu":
        import pandas as pd
        from scipy import signal

        xn = x.numpy()
        fir = single.kernel(torch.float64)[0].detach().numpy()
        a = float(single.alphas.detach())
        add(
            "scipy.signal.lfilter, same FIR (exact same maths)",
            n * t,
            lambda: signal.lfilter(fir.astype(np.float32), [1.0], xn, axis=1),
        )
        add(
            "scipy.signal.lfilter, IIR recursion (untruncated)",
            n * t,
            lambda: signal.lfilter([a], [1.0, a - 1.0], xn, axis=1),
        )
        if not args.skip_slow:
            frame = pd.DataFrame(xn.T)
            add(
                "pandas DataFrame.ewm(alpha).mean() (untruncated)",
                n * t,
                lambda: frame.ewm(alpha=a, adjust=True).mean(),
            )
            gappy_frame = pd.DataFrame(gappy.numpy().T)
            add(
                "pandas ewm(alpha).mean(), 5% missing (untruncated)",
                n * t,
                lambda: gappy_frame.ewm(alpha=a, adjust=True).mean(),
            )
            import polars as pl

            frame_pl = pl.DataFrame(xn.T)
            add(
                "polars DataFrame ewm_mean(alpha) (untruncated)",
                n * t,
                lambda: frame_pl.select(pl.all().ewm_mean(alpha=a, adjust=True)),
            )
            gappy_pl = pl.DataFrame(gappy.numpy().T).select(pl.all().fill_nan(None))
            add(
                "polars ewm_mean(alpha), 5% missing (untruncated)",
                n * t,
                lambda: gappy_pl.select(pl.all().ewm_mean(alpha=a, adjust=True, ignore_nulls=False)),
            )
            # pandas takes one times index per frame: each series is its own Series here,
            # as each of ConvEWMA's series has its own times above.
            halflife = pd.Timedelta(seconds=float(np.log(0.5) / np.log1p(-a)))
            stamps = [pd.to_datetime(row, unit="s") for row in seconds.numpy()]
            series = [pd.Series(row.astype(np.float64)) for row in xn]
            add(
                "pandas ewm(halflife, times).mean() per series (untruncated)",
                n * t,
                lambda: [
                    s.ewm(halflife=halflife, times=ts).mean() for s, ts in zip(series, stamps, strict=True)
                ],
            )

    best = max(r.rate for r in rows if r.name.startswith("ConvEWMA C=1, zeros"))
    lines = [
        f"N={n} series x T={t}, K={k}, float32, device={device}, torch {torch.__version__}, "
        f"threads={torch.get_num_threads()}, allocator={'tuned' if tuned else 'default'}, "
        f"{platform.processor() or platform.machine()}",
        "",
        "| method | output values/s | ms per call | vs ConvEWMA C=1 | note |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.rate / 1e9:.3f} G | {row.seconds * 1e3:.2f} "
            f"| {row.rate / best:.2f}x | {row.note} |"
        )
    lines += goals(rows)
    text = "\n".join(lines)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")


def goals(rows: list[Row]) -> list[str]:
    """Issue 11's kernel goals as ratios of rows measured in this run (where all were run)."""
    rate = {row.name: row.rate for row in rows}
    pandas = rate.get("pandas DataFrame.ewm(alpha).mean() (untruncated)")
    polars = rate.get("polars DataFrame ewm_mean(alpha) (untruncated)")
    lines = [
        "",
        "| layer | vs pandas (>= 10x) | vs polars (>= 2x) | of a plain copy (>= 50%) |",
        "|---|---:|---:|---:|",
    ]
    for name, copy in (
        ("ConvEWMA C=1, zeros", "memory copy of a C=1 output (ceiling)"),
        ("ConvEWMA C=1, zeros, out=", "memory copy of a C=1 output (ceiling)"),
        ("ConvEWMA C=3 bank, zeros", "memory copy of a C=3 output (ceiling)"),
        ("ConvEWMA C=3 bank, zeros, out=", "memory copy of a C=3 output (ceiling)"),
    ):
        if name not in rate or pandas is None or polars is None:
            continue
        ratios = f"{rate[name] / pandas:.1f}x | {rate[name] / polars:.1f}x | {rate[name] / rate[copy]:.0%}"
        lines.append(f"| {name} | {ratios} |")
    return lines if len(lines) > 3 else []


if __name__ == "__main__":
    main()
