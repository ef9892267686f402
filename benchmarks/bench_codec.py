"""Request parsing and response encoding: the old one-call orjson codec against app.api.jsoncodec.

    python benchmarks/bench_codec.py                    # prints a table
    python benchmarks/bench_codec.py --report benchmarks/results/codec-cpu.md

For each shape (series x length of random float32 values, orjson-encoded as a
``/smooth`` body) and each codec, a fresh subprocess builds the input, then runs the
operation ``--repeat`` times in a worker thread while a ticker thread sleeps 1 ms at a
time. Reported: throughput (best run; parse counts input values, encode output values),
the longest gap between two ticks, less the 1 ms sleep (an event loop would have been
frozen that long; the worst run and the median run, as the scheduler of a shared machine
adds its own gaps), and the peak memory above the input
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``, so C and C++
allocations count, results included). Encoding uses ``--channels`` output channels per
series; the new encoder's chunks are dropped as a stream would send them, the old
encoder's single bytes object is the whole response.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.api.jsoncodec import encode_smooth_response, parse_smooth_body  # noqa: E402
from app.api.schemas import RequestLimits  # noqa: E402
from tests.json_oracle import parse_smooth_request  # noqa: E402

SHAPES = ["16x1024", "64x4096", "640x10000"]
CODECS = ["parse-old", "parse-new", "encode-old", "encode-new"]
LIMITS = RequestLimits(max_series=100_000, max_length=10_000_000)
NAMES = ("infl", "realint", "tbilrate", "unemp")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _operation(codec: str, series: int, length: int, channels: int) -> tuple[Callable[[], object], int]:
    """The operation to time and how many values it handles."""
    rng = np.random.default_rng(0)
    if codec.startswith("parse"):
        values = rng.standard_normal((series, length)).astype(np.float32)
        body = orjson.dumps({"series": values}, option=orjson.OPT_SERIALIZE_NUMPY)
        parse = parse_smooth_body if codec == "parse-new" else parse_smooth_request
        return lambda: parse(body, LIMITS, NAMES), series * length
    smoothed = [rng.standard_normal((channels, length)).astype(np.float32) for _ in range(series)]
    names, alphas = list(NAMES[:channels]), [0.1 * (c + 1) for c in range(channels)]
    if codec == "encode-old":
        payload = {"smoothed": smoothed, "channels": names, "alphas": alphas, "model_version": "sha256:x"}
        return lambda: orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), series * channels * length

    def stream() -> int:
        return sum(len(chunk) for chunk in encode_smooth_response(smoothed, names, alphas, "sha256:x"))

    return stream, series * channels * length


def _run_with_ticker(operation: Callable[[], object]) -> tuple[float, float]:
    """Seconds the operation took in a worker thread, and the longest stall of a 1 ms ticker."""
    done = threading.Event()
    box: dict[str, float] = {}

    def work() -> None:
        start = time.perf_counter()
        result = operation()
        box["seconds"] = time.perf_counter() - start
        del result
        done.set()

    worst, last = 0.0, time.perf_counter()
    worker = threading.Thread(target=work)
    worker.start()
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last - 0.001), now
    worker.join()
    return box["seconds"], worst


def run_case(codec: str, shape: str, channels: int, repeat: int, switch_ms: float | None) -> dict[str, Any]:
    if switch_ms is not None:
        sys.setswitchinterval(switch_ms / 1e3)
    series, length = map(int, shape.split("x"))
    operation, values = _operation(codec, series, length, channels)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status("VmRSS")
    runs = [_run_with_ticker(operation) for _ in range(repeat)]
    peak = _status("VmHWM") - before
    best = min(seconds for seconds, _ in runs)
    return {
        "codec": codec,
        "shape": shape,
        "values": values,
        "seconds": best,
        "values_per_s": values / best,
        "stall_ms": 1e3 * max(stall for _, stall in runs),
        "median_stall_ms": 1e3 * float(np.median([stall for _, stall in runs])),
        "peak_mib": peak / 2**20,
    }


def floors(seconds: float = 0.8) -> tuple[float, float]:
    """The ticker's longest stall beside an idle thread (this machine's noise) and beside a
    thread running pure Python, whose every call is short (the floor for any CPU-bound
    thread: the GIL changes hands only every switch interval)."""

    def busy() -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pass

    idle = _run_with_ticker(lambda: time.sleep(seconds))[1]
    return 1e3 * idle, 1e3 * _run_with_ticker(busy)[1]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| shape | codec | values | best s | Mvalues/s | longest stall ms: worst run | median run "
        "| peak extra MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['codec']} | {row['values']:,} | {row['seconds']:.3f} "
            f"| {row['values_per_s'] / 1e6:.2f} | {row['stall_ms']:.1f} | {row['median_stall_ms']:.1f} "
            f"| {row['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks/results/codec-cpu.md")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated SERIESxLENGTH")
    parser.add_argument("--channels", type=int, default=4, help="output channels per series (encode)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--switch-ms",
        type=float,
        help="sys.setswitchinterval in ms (default Python's 5): how long a thread that wants the GIL "
        "waits before it asks the running one to let go, the floor of any stall",
    )
    parser.add_argument("--case", nargs=2, metavar=("CODEC", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # one measurement, in a fresh process so that its peak memory is its own
        print(json.dumps(run_case(*args.case, args.channels, args.repeat, args.switch_ms)))
        return
    rows = []
    for shape in args.shapes.split(","):
        for codec in CODECS:
            command = [sys.executable, __file__, "--case", codec, shape]
            command += ["--channels", str(args.channels), "--repeat", str(args.repeat)]
            command += ["--switch-ms", str(args.switch_ms)] if args.switch_ms is not None else []
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.switch_ms is not None:
        sys.setswitchinterval(args.switch_ms / 1e3)
    idle, busy = floors()
    text = table(rows)
    floor = (
        f"Longest ticker stall beside an idle thread: {idle:.1f} ms; beside a thread running "
        f"pure Python: {busy:.1f} ms (switch interval {sys.getswitchinterval() * 1e3:g} ms)."
    )
    print(f"\n{text}\n\n{floor}")
    switch = "" if args.switch_ms is None else f" --switch-ms {args.switch_ms:g}"
    header = (
        f"# Codec benchmark\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, numpy {np.__version__}, "
        f"orjson {orjson.__version__}, pysimdjson {version('pysimdjson')}\n\n"
        f"Command: `python benchmarks/bench_codec.py --shapes {args.shapes} --channels {args.channels} "
        f"--repeat {args.repeat}{switch}`\n\n"
    )
    notes = (
        f"\n\n{floor} Parse rows count input values, encode rows output values "
        f"({args.channels} channels per series). See the docstring of `benchmarks/bench_codec.py`.\n"
    )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(header + text + notes)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
