"""Protocols side by side: JSON ``/smooth``, the Open Inference Protocol with JSON data and
with binary tensors, the project's client, and NVIDIA Triton serving the same maths.

    python benchmarks/bench_protocols.py --triton-python /tmp/tritonenv/bin/python \\
        --report benchmarks/results/protocols-cpu.md --plot benchmarks/results/protocols-cpu.png

Real servers on 127.0.0.1, up together and driven in interleaved rounds: ``convewma serve``
(its defaults) and, when ``--triton-python`` names an interpreter with ``nvidia-pytriton``,
``triton_peer.py`` (Triton's dynamic batcher, one torch thread, this repository's layer).
Raw cells use ``bench_service``'s closed-loop keep-alive client with pre-encoded requests;
the client cell runs ``AsyncConvEWMAClient.smooth`` on a NumPy array, so it pays for
encoding and decoding as a user does. Every cell's first answer is decoded and compared
with the layer's own output before its figures count. Targets (issue 11): OIP binary at
least 5x the JSON route's input values/s at medium c=32 and 20x at large c=8, at least
1.5x Triton's at both, and the client within 15% of raw binary requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import torch
from bench_service import HOST, ROOT, SHAPES, Cell, drive, free_port, server, stop

from app.client import AsyncConvEWMAClient
from app.client.wire import read_answer
from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import load_weights

TARGETS = ("JSON /smooth", "OIP JSON", "OIP binary", "client (binary)", "Triton OIP binary")
DEFAULT_CELLS = [("medium", 32), ("large", 8)]
INFER = "/v2/models/convewma/infer"


def payloads(series: np.ndarray, port: int) -> dict[str, bytes]:
    """The raw request of each raw target for ``series``, headers included."""
    x = series.astype(np.float32)
    shape = list(x.shape)
    binary_head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "SMOOTHED", "parameters": {"binary_data": True}}],
        }
    )
    json_infer = orjson.dumps(
        {
            "inputs": [{"name": "INPUT", "shape": shape, "datatype": "FP32", "data": x.ravel()}],
            "outputs": [{"name": "SMOOTHED", "parameters": {"binary_data": False}}],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    smooth = orjson.dumps({"series": x.astype(np.float64).tolist()})

    def request(path: str, body: bytes, extra: str = "") -> bytes:
        head = f"POST {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
        return (head + extra + f"content-length: {len(body)}\r\n\r\n").encode() + body

    binary = binary_head + x.tobytes()
    header = f"inference-header-content-length: {len(binary_head)}\r\n"
    return {
        "JSON /smooth": request("/smooth", smooth),
        "OIP JSON": request(INFER, json_infer),
        "OIP binary": request(INFER, binary, header),
        "Triton OIP binary": request(INFER, binary, header),
    }


def decoded(target: str, body: bytes, headers_length: int | None) -> np.ndarray:
    if target == "JSON /smooth":
        return np.asarray(orjson.loads(body)["smoothed"], np.float64)
    return read_answer(body, None if headers_length is None else str(headers_length))[1]["SMOOTHED"]


def header_length(body: bytes) -> int | None:
    """The JSON header's end in an OIP answer (the body kept has no HTTP headers), None if all."""
    _, end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
    # convewma pads its header with spaces to a multiple of 64 bytes (aligned outputs).
    while end < len(body) and end % 64 and body[end] == 0x20:
        end += 1
    return end if end < len(body) else None


@contextmanager
def triton(python: str, log: Path) -> Iterator[int]:
    port = free_port()
    env = {**os.environ}
    # Triton's Python backend stub links the system's libpython 3.11; this one must win.
    env["LD_LIBRARY_PATH"] = (
        f"{Path(python).resolve().parent.parent / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    )
    base = subprocess.run(
        [python, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True, check=True
    )
    env["LD_LIBRARY_PATH"] = f"{base.stdout.strip()}/lib:{env['LD_LIBRARY_PATH']}"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [python, str(ROOT / "benchmarks" / "triton_peer.py"), "--http-port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=output,
            env=env,
        )
    try:
        assert process.stdout is not None
        while not (line := process.stdout.readline()).startswith(b"ready"):  # Triton prints too
            if not line:
                raise SystemExit(f"triton_peer.py did not start; see {log}")
        yield port
    finally:
        stop(process, timeout_s=60)


async def drive_client(url: str, series: np.ndarray, cell: Cell, duration: float, limit: int) -> None:
    """Closed loop through ``AsyncConvEWMAClient``: ``concurrency`` tasks, one call at a time."""
    x = series.astype(np.float32)
    sent = 0
    async with AsyncConvEWMAClient(url, timeout=120) as client:
        await client.limits()
        first = await client.smooth(x, pairing="bank")
        cell.first_body = first.astype(np.float64).tobytes()
        deadline = time.perf_counter() + duration

        async def loop() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < limit:
                sent += 1
                started = time.perf_counter()
                await client.smooth(x, pairing="bank")
                cell.latencies.append(time.perf_counter() - started)
                cell.requests += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(cell.concurrency)))
        cell.seconds += time.perf_counter() - started


def run(args: argparse.Namespace) -> list[Cell]:
    model = load_weights(args.weights).model
    log = Path(args.log)
    log.write_bytes(b"")
    cells: list[Cell] = []
    with ExitStack() as stack:
        ports = {
            "service": stack.enter_context(server("service", {"CONVEWMA_WEIGHTS": str(args.weights)}, log))
        }
        if args.triton_python:
            ports["triton"] = stack.enter_context(triton(args.triton_python, log))
        targets = [t for t in TARGETS if t != "Triton OIP binary" or "triton" in ports]
        for shape, concurrency in args.cells:
            series = np.random.default_rng(0).normal(size=SHAPES[shape]).cumsum(axis=1)
            with torch.inference_mode():
                want = model(torch.from_numpy(series.astype(np.float32))).double().numpy()
            row = {target: Cell(target, shape, concurrency) for target in targets}
            for round_ in range(args.rounds + 1):  # round 0 warms every target up, uncounted
                for target in targets:
                    cell = row[target] if round_ else Cell(target, shape, 2)
                    seconds = args.duration / args.rounds if round_ else 0.5
                    port = ports["triton" if target.startswith("Triton") else "service"]
                    if target == "client (binary)":
                        url = f"http://{HOST}:{port}"
                        asyncio.run(drive_client(url, series, cell, seconds, args.max_requests))
                        continue
                    payload = payloads(series, port)[target]
                    asyncio.run(
                        drive(port, payload, cell.concurrency, seconds, args.max_requests, cell, 120.0)
                    )
            for target in targets:
                cell = row[target]
                body = cell.first_body or b""
                if target == "client (binary)":
                    got = np.frombuffer(body, np.float64).reshape(want.shape)
                else:
                    got = decoded(target, body, header_length(body))
                error = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
                cell.note = "" if error < 1e-5 else f"WRONG ANSWER (relative error {error:.1e})"
                cells.append(cell)
                print(
                    f"{target:>18} {shape:>6} c={concurrency:<3} {cell.rps:8.1f} req/s "
                    f"{cell.values_per_s() / 1e6:8.2f} M input values/s p50 {cell.percentile(50):8.2f} ms "
                    f"{cell.note}",
                    flush=True,
                )
    return cells


def ratios(cells: list[Cell]) -> list[tuple[str, float, float]]:
    """(what, measured, target) for each goal of issue 11 that this run can measure."""
    found = {(c.server, c.shape): c.values_per_s() for c in cells}
    goals = []
    for shape, json_goal in (("medium", 5.0), ("large", 20.0)):
        binary = found.get(("OIP binary", shape))
        if binary is None:
            continue
        if ("JSON /smooth", shape) in found:
            goals.append(
                (f"OIP binary / JSON /smooth, {shape}", binary / found[("JSON /smooth", shape)], json_goal)
            )
        if ("Triton OIP binary", shape) in found:
            goals.append((f"OIP binary / Triton, {shape}", binary / found[("Triton OIP binary", shape)], 1.5))
        if ("client (binary)", shape) in found:
            overhead = 1.0 - found[("client (binary)", shape)] / binary
            goals.append((f"client overhead over raw binary, {shape}", overhead, 0.15))
    return goals


def report(cells: list[Cell], args: argparse.Namespace) -> str:
    lines = [
        "# Protocols: JSON, OIP JSON, OIP binary, the client and Triton",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, python {platform.python_version()}",
        "",
        f"Command: `python benchmarks/bench_protocols.py {' '.join(args.argv)}`",
        "",
        "| target | shape | conc. | req/s | input M values/s | p50 ms | p99 ms | errors | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        rows, length = SHAPES[c.shape]
        lines.append(
            f"| {c.server} | {c.shape} {rows}x{length} | {c.concurrency} | {c.rps:.1f} | "
            f"{c.values_per_s() / 1e6:.2f} | {c.percentile(50):.2f} | {c.percentile(99):.2f} | "
            f"{c.errors} | {c.note} |"
        )
    lines += ["", "| goal | measured | target | met |", "|---|---:|---:|---|"]
    for what, measured, target in ratios(cells):
        met = measured <= target if "overhead" in what else measured >= target
        shown = f"{measured:.1%}" if "overhead" in what else f"{measured:.2f}x"
        bound = f"<= {target:.0%}" if "overhead" in what else f">= {target:g}x"
        lines.append(f"| {what} | {shown} | {bound} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({c.shape for c in cells}, key=list(SHAPES).index)
    figure, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.6), squeeze=False)
    for axis, shape in zip(axes[0], shapes, strict=True):
        row = [c for c in cells if c.shape == shape]
        axis.barh([c.server for c in row], [c.values_per_s() / 1e6 for c in row], color="tab:blue")
        axis.set_title(f"{shape} {SHAPES[shape][0]}x{SHAPES[shape][1]}, c={row[0].concurrency}")
        axis.set_xlabel("input M values/s")
        axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=json.loads, default=DEFAULT_CELLS, help='JSON, e.g. [["medium", 32]]')
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of sending per cell, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per round")
    parser.add_argument("--triton-python", help="an interpreter with nvidia-pytriton (benchmarks/README.md)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--log", default="/tmp/convewma-bench-protocols.log")
    parser.add_argument("--report", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    cells = run(args)
    text = report(cells, args)
    print(text)
    if args.report:
        args.report.write_text(text)
    if args.plot:
        plot(cells, args.plot)


if __name__ == "__main__":
    main()
