"""Torch intra-op threads for the forward: 1 against 2 on a 2-core machine.

    python benchmarks/bench_threads.py                                   # prints the tables
    python benchmarks/bench_threads.py --report benchmarks/results/threads-cpu.md

The batcher's forward runs in a worker thread while the event loop and the codec thread
parse and encode JSON on the same cores. A forward with two OpenMP threads splits its
work and then waits at a barrier for both halves: when the other core is busy, the half
scheduled there waits for its turn, and the whole forward waits with it. This measures:

(a) the forward alone (the shipped model, float32, inference mode, in a fresh worker
    thread like the batcher's) for 64 x 4096 and 1024 x 4096, with 1 and 2 threads,
    once with the other core idle and once with a busy-loop subprocess keeping a core
    busy; median and p90 of many calls, the settings interleaved call by call;
(b) the real service (``python -m app serve`` on 127.0.0.1, ``CONVEWMA_TORCH_THREADS=1``
    and ``=2``, both servers up at once, idle unless driven) under a closed-loop load
    of medium (16 x 1024) and large (64 x 4096) JSON requests at concurrency 8, in
    interleaved rounds so that drift of a shared machine hits both settings alike;
    req/s, p50 and p99, and the mean forward time from the server's own ``/metrics``.

The client is a minimal keep-alive client like ``bench_service.py``'s (pre-encoded bodies,
responses read but not parsed) that also reads chunked responses, which large results
are; it runs in this process and takes some CPU too. 503s are counted, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
from bench_service import Cell, body_for, check_answer, metrics_text, request_bytes, server
from bench_service import drive as load_loop
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.paths import DEFAULT_WEIGHTS  # noqa: E402
from app.core.weights import load_weights  # noqa: E402

FORWARD_SHAPES = {"64x4096": (64, 4096), "1024x4096": (1024, 4096)}
SERVICE_SHAPES = ("medium", "large")  # bench_service.SHAPES: 16 x 1024 and 64 x 4096
THREADS = (1, 2)


# --- (a) the forward alone ---------------------------------------------------------------


@contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """A subprocess spinning in a Python loop: one core busy while the block runs."""
    if not enabled:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it get scheduled
        yield
    finally:
        process.terminate()
        process.wait()


@dataclass
class ForwardRow:
    shape: str
    other_core: str
    threads: int
    times_s: list[float] = field(default_factory=list)

    def ms(self, q: float) -> float:
        return float(np.percentile(self.times_s, q)) * 1e3


def time_forward(threads: int, forward: Callable[[], object], calls: int) -> list[float]:
    """``calls`` forwards in a fresh worker thread set to ``threads`` (as the batcher's
    thread takes the service's setting at its first parallel op)."""

    def run() -> list[float]:
        torch.set_num_threads(threads)
        times = []
        with torch.inference_mode():
            forward()  # warm-up: the first call in a thread starts its OpenMP team
            for _ in range(calls):
                started = time.perf_counter()
                forward()
                times.append(time.perf_counter() - started)
        return times

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def bench_forward(args: argparse.Namespace) -> list[ForwardRow]:
    model = load_weights(args.weights).model
    rows: list[ForwardRow] = []
    for name, (n, t) in FORWARD_SHAPES.items():
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(n, t)).cumsum(axis=1).astype(np.float32))
        # About args.forward_seconds of forwards per cell, in blocks of a few calls.
        with torch.inference_mode():
            started = time.perf_counter()
            model(x, warmup="adjust")
            one = time.perf_counter() - started
        block = max(1, min(50, int(0.2 / max(one, 1e-6))))
        blocks = max(3, int(args.forward_seconds / (block * max(one, 1e-6))))
        for busy in (False, True):
            cells = {k: ForwardRow(name, "busy" if busy else "idle", k) for k in THREADS}
            with busy_core(busy):
                for _ in range(blocks):  # interleave the thread counts block by block
                    for k in THREADS:
                        cells[k].times_s += time_forward(k, partial(model, x, warmup="adjust"), block)
            for k in THREADS:
                row = cells[k]
                rows.append(row)
                print(
                    f"forward {name:>10} other core {row.other_core:>4} threads {k}: "
                    f"p50 {row.ms(50):8.2f} ms  p90 {row.ms(90):8.2f} ms  ({len(row.times_s)} calls)",
                    flush=True,
                )
    return rows


def forward_table(rows: list[ForwardRow]) -> str:
    lines = [
        "| forward | other core | threads | p50 ms | p90 ms | p99 ms | calls | p50 vs 1 thread |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        one = next(r for r in rows if (r.shape, r.other_core, r.threads) == (row.shape, row.other_core, 1))
        lines.append(
            f"| {row.shape} | {row.other_core} | {row.threads} | {row.ms(50):.2f} | {row.ms(90):.2f} | "
            f"{row.ms(99):.2f} | {len(row.times_s)} | {row.ms(50) / one.ms(50):.2f}x |"
        )
    return "\n".join(lines)


# --- (b) the real service under load ------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The forward-time and batch-value sums and counts from /metrics."""
    text = metrics_text(port)
    wanted = {
        f"{m}_{s}" for m in ("convewma_forward_seconds", "convewma_batch_values") for s in ("sum", "count")
    }
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    }


@dataclass
class ServiceRow:
    cell: Cell
    threads: int
    statuses: Counter[int] = field(default_factory=Counter)
    forward_s: float = 0.0
    batches: float = 0.0
    batch_values: float = 0.0

    def forward_ms(self) -> float:
        return self.forward_s / self.batches * 1e3 if self.batches else float("nan")

    def values_per_batch(self) -> float:
        return self.batch_values / self.batches if self.batches else float("nan")


def drive(
    port: int, payload: bytes, concurrency: int, duration: float, row: ServiceRow, timeout: float
) -> None:
    """bench_service's closed loop, counting statuses and the latency of 200s alone."""
    load = load_loop(
        port,
        payload,
        concurrency,
        duration,
        sys.maxsize,
        row.cell,
        timeout,
        statuses=row.statuses,
        ok_latencies_only=True,
    )
    asyncio.run(load)


def bench_service(args: argparse.Namespace) -> list[ServiceRow]:
    log = Path(args.log)
    log.write_bytes(b"")
    channels = len(load_weights(args.weights).card.channels)
    base = {"CONVEWMA_WEIGHTS": str(args.weights), "CONVEWMA_DEVICE": "cpu"}
    rows: list[ServiceRow] = []
    with ExitStack() as stack:
        ports = {
            k: stack.enter_context(server("service", {**base, "CONVEWMA_TORCH_THREADS": str(k)}, log))
            for k in THREADS
        }
        for shape in SERVICE_SHAPES:
            body, series = body_for(shape)
            payloads = {k: request_bytes(ports[k], "/smooth", body) for k in THREADS}
            for k in THREADS:  # warm-up: lazy imports, allocations, the OpenMP team
                warm_up = ServiceRow(Cell("warm-up", shape, 2), k)
                drive(ports[k], payloads[k], 2, 0.5, warm_up, args.cell_timeout)
            cells = {k: ServiceRow(Cell(f"threads={k}", shape, args.concurrency), k) for k in THREADS}
            for round_ in range(args.rounds):
                # Alternate which setting goes first, so neither always follows the other.
                for k in THREADS if round_ % 2 == 0 else THREADS[::-1]:
                    row = cells[k]
                    before = scrape(ports[k])
                    first = len(row.cell.latencies)
                    drive(
                        ports[k],
                        payloads[k],
                        args.concurrency,
                        args.duration / args.rounds,
                        row,
                        args.cell_timeout,
                    )
                    after = scrape(ports[k])
                    row.forward_s += (
                        after["convewma_forward_seconds_sum"] - before["convewma_forward_seconds_sum"]
                    )
                    row.batches += (
                        after["convewma_forward_seconds_count"] - before["convewma_forward_seconds_count"]
                    )
                    row.batch_values += (
                        after["convewma_batch_values_sum"] - before["convewma_batch_values_sum"]
                    )
                    if len(row.cell.latencies) > first:
                        row.cell.round_p50_ms.append(float(np.median(row.cell.latencies[first:])) * 1e3)
            for k in THREADS:
                row = cells[k]
                row.cell.note = row.cell.note or check_answer(row.cell.first_body, series, channels)
                rows.append(row)
                print(
                    f"service {shape:>6} c={args.concurrency} threads {k}: {row.cell.rps:8.1f} req/s  "
                    f"p50 {row.cell.percentile(50):8.2f} ms  p99 {row.cell.percentile(99):8.2f} ms  "
                    f"forward {row.forward_ms():7.2f} ms/batch  {row.cell.note}",
                    flush=True,
                )
    return rows


def service_table(rows: list[ServiceRow]) -> str:
    lines = [
        "| shape | threads | req/s | req/s vs 1 thread | p50 ms | p99 ms | round p50s ms | "
        "batch ms | values/batch | other answers | note |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for row in rows:
        c = row.cell
        one = next(r for r in rows if (r.cell.shape, r.threads) == (c.shape, 1))
        rounds = ", ".join(f"{v:.1f}" for v in c.round_p50_ms)
        others = " ".join(f"{status}: {n}" for status, n in sorted(row.statuses.items()) if status != 200)
        lines.append(
            f"| {c.shape} | {row.threads} | {c.rps:.1f} | {c.rps / one.cell.rps:.2f}x | "
            f"{c.percentile(50):.2f} | {c.percentile(99):.2f} | {rounds} | {row.forward_ms():.2f} | "
            f"{row.values_per_batch():,.0f} | {others or '-'} | {c.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--forward-seconds", type=float, default=3.0, help="per forward cell, about")
    parser.add_argument(
        "--duration", type=float, default=8.0, help="seconds of load per service cell, all rounds"
    )
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per service cell")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cell-timeout", type=float, default=60.0, help="wait for in-flight requests")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--log", default="/tmp/convewma-bench-threads.log")
    parser.add_argument("--report", type=Path, help="write a Markdown report here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    sections = []
    if not args.skip_forward:
        sections.append("## (a) The forward alone\n\n" + forward_table(bench_forward(args)))
    if not args.skip_service:
        sections.append(
            f"## (b) The service under load (closed loop, concurrency {args.concurrency}, "
            f"{args.rounds} interleaved rounds, {args.duration:g} s per cell)\n\n"
            + service_table(bench_service(args))
        )
    load_after = os.getloadavg()
    report = "\n\n".join(sections)
    print(report)
    if args.report:
        header = (
            f"# Torch intra-op threads: 1 vs 2\n\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} ({torch.__config__.parallel_info().splitlines()[-1].strip()}), "
            f"python {platform.python_version()}; "
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n\n"
            f"Command: `python benchmarks/bench_threads.py {' '.join(sys.argv[1:])}`\n\n"
        )
        args.report.write_text(header + report + "\n")


if __name__ == "__main__":
    main()
