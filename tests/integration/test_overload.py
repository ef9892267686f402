"""Overload safety of a real ``convewma serve`` on 127.0.0.1, with the shipped defaults.

Bounded in count and time. Memory is read from ``/proc/PID/status``: VmHWM is the
process's peak resident set, what a container's memory limit acts on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import load_weights
from tests.reference import bank_reference, max_relative_error
from tests.servers import free_port, start_replica, stop, wait_ready

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ALPHAS = load_weights(DEFAULT_WEIGHTS).model.alphas.detach().double().numpy()
WARMUP = load_weights(DEFAULT_WEIGHTS).card.warmup  # the model's default, used when a request names none


def manifest_memory_limit() -> int:
    """The memory limit the shipped Kubernetes Deployment gives the service, in bytes."""
    deployment = yaml.safe_load((ROOT / "docker/k8s/deployment.yaml").read_text())
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    units = {"Gi": 1 << 30, "Mi": 1 << 20}
    return int(limit[:-2]) * units[limit[-2:]]


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(base: str) -> dict[str, float]:
    """``/metrics`` as ``{'name{label="v",...}': value}``."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=5).text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def wait_idle(base: str, timeout_s: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = scrape(base)
        busy = ("convewma_requests_in_progress", "convewma_inflight_bytes", "convewma_queue_depth")
        if all(metrics[name] == 0 for name in busy) and metrics["convewma_batches_in_flight"] == 0:
            return metrics
        time.sleep(0.1)
    raise AssertionError(f"not idle after {timeout_s} s: {scrape(base)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with the shipped defaults for the tests that only load it."""
    port = free_port()
    log = tmp_path_factory.mktemp("overload") / "server.log"
    process = start_replica(port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base, process, log
    finally:
        stop(process)


def largest_body(seed: int) -> tuple[bytes, np.ndarray]:
    """About 65 MB of JSON, inside the default 64 MiB body limit."""
    series = np.random.default_rng(seed).normal(size=(600, 10_000)).astype(np.float32)
    return orjson.dumps({"series": series}, option=orjson.OPT_SERIALIZE_NUMPY), series


async def post_and_check_first_row(client: httpx.AsyncClient, body: bytes, series: np.ndarray) -> int:
    """Status; for a 200, the first output row checked against the reference."""
    headers = {"content-type": "application/json"}
    async with client.stream("POST", "/smooth", content=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            return 503
        assert response.headers["transfer-encoding"] == "chunked"  # streamed, never built whole
        head = b""
        size = 0
        async for chunk in response.aiter_raw():  # not kept: a 400 MB answer
            if len(head) < 1 << 20:
                head += chunk
            size += len(chunk)
    row = np.array(orjson.loads(head[len(b'{"smoothed":[[') : head.index(b"]") + 1]))
    expected = bank_reference(series[:1].astype(np.float64), ALPHAS, 32, WARMUP)[0, 0]
    assert max_relative_error(row, expected) <= 1e-5
    assert size > 16 * series.size  # the whole answer arrived
    return 200


async def probe(base: str, stop_at: asyncio.Event) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while not stop_at.is_set() and len(latencies) < 5000:
            began = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            latencies.append(time.perf_counter() - began)
            await asyncio.sleep(0.02)
    return latencies


def test_largest_requests_fit_the_manifest_memory_and_probes_answer(server):
    base, process, _ = server
    idle_kib = memory_kib(process.pid, "VmRSS")
    bodies = [largest_body(seed) for seed in range(4)]

    async def burst() -> tuple[list[int], list[float]]:
        done = asyncio.Event()
        prober = asyncio.create_task(probe(base, done))
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            statuses = await asyncio.gather(*(post_and_check_first_row(client, b, s) for b, s in bodies))
        done.set()
        return statuses, await prober

    statuses, latencies = asyncio.run(burst())
    assert 200 in statuses
    peak = memory_kib(process.pid, "VmHWM") * 1024
    assert peak <= 0.8 * manifest_memory_limit(), f"peak RSS {peak / 2**20:.0f} MiB"
    # The event loop only does I/O: probes answer while four maximum requests are parsed,
    # computed and encoded. (The 100 ms p99 goal is measured in bench_overload.py; this
    # bound catches a loop blocked by parsing or encoding, which took seconds.)
    assert np.quantile(latencies, 0.99) < 1.0, f"healthz p99 {np.quantile(latencies, 0.99):.3f} s"
    wait_idle(base)
    time.sleep(1.5)  # the idle trim runs once the last request is done
    assert memory_kib(process.pid, "VmRSS") <= 1.5 * idle_kib


def test_abandoned_requests_are_dropped_and_counted_499(server):
    base, process, log = server
    before = scrape(base)
    rows = 160
    body = orjson.dumps(
        {"series": np.random.default_rng(9).normal(size=(rows, 10_000)).astype(np.float32)},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    head = (
        "POST /smooth HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    clients = 20
    for _ in range(clients):  # send everything, then hang up without reading
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as sock:
            sock.sendall(head.encode() + body)
    # Idle alone is not enough: the last bodies can sit in socket buffers, not yet admitted,
    # when a scrape finds nothing in progress (CI saw 7 of 20 counted).
    deadline = time.monotonic() + 30
    while True:
        after = wait_idle(base)
        statuses = {
            key: after[key] - before.get(key, 0)
            for key in after
            if key.startswith("convewma_requests_total{") and 'route="/smooth"' in key
        }
        if sum(statuses.values()) >= clients or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(statuses.values()) == clients, statuses
    cpu_then = cpu_seconds(process.pid)
    time.sleep(1.0)
    assert cpu_seconds(process.pid) - cpu_then < 0.3  # nothing left running for them

    def count(status: int) -> float:
        return statuses.get(f'convewma_requests_total{{method="POST",route="/smooth",status="{status}"}}', 0)

    # Under load the server may shed some at admission (503, before reading the body: CI
    # saw 17 of 20); the first, at least, finds it idle and is admitted.
    shed, dropped = count(503), count(499)
    assert shed + dropped + count(200) == clients, statuses
    admitted = clients - shed
    assert dropped >= max(1, admitted // 2), statuses
    # Work is dropped unless a batch took it before the hang-up was read: with both cores
    # busy a few requests' rows get computed (2-3 of 20 here), never most of them.
    computed = after["convewma_batch_series_sum"] - before.get("convewma_batch_series_sum", 0)
    assert computed <= (admitted - dropped + clients // 4) * rows, (computed, statuses)
    text = log.read_text()
    assert "client disconnected" in text
    assert "Traceback" not in text


def test_an_aborted_upload_is_a_499_not_an_error(server):
    base, _, log = server
    before = scrape(base)
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(
            b"POST /smooth HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100000\r\n\r\n{"series": [[1, 2, 3,'
        )
        time.sleep(0.2)  # the request is in the app, waiting for the rest of its body
    after = wait_idle(base)
    counts = {k: v - before.get(k, 0) for k, v in after.items() if k.startswith("convewma_requests_total")}
    assert sum(v for k, v in counts.items() if 'status="499"' in k) == 1
    assert not any(v for k, v in counts.items() if 'status="500"' in k)
    assert "Traceback" not in log.read_text()


def stalled_upload(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /smooth HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b'content-length: 1000\r\n\r\n{"series": [[1,'
    )
    return sock


@pytest.mark.parametrize("launcher", ["convewma serve", "uvicorn"])
def test_a_stalled_upload_does_not_delay_shutdown(launcher, tmp_path):
    port = free_port()
    env = {**os.environ, "CONVEWMA_BODY_TIMEOUT_S": "1", "CONVEWMA_DEVICE": "cpu"}
    if launcher == "uvicorn":
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    else:
        command = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with (tmp_path / "server.log").open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        sock = stalled_upload(port)
        time.sleep(0.3)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
        took = time.monotonic() - began
        answer = sock.recv(4096)
        sock.close()
    finally:
        stop(process)
    assert returncode in (0, -signal.SIGTERM)
    # The body-read timeout (1 s) ends the stalled request, then the drain's quiet period.
    assert took < 1.0 + 3.0, f"exit {took:.1f} s after SIGTERM"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"detail"' in answer
    assert "Traceback" not in (tmp_path / "server.log").read_text()
