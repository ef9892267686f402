"""A real ``convewma serve`` (uvicorn) process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from tests.reference import SHIPPED_WEIGHTS, bank_reference, max_relative_error, read_weights_file
from tests.servers import burst_around, check_drain_answers, free_port, serve_command, wait_ready

SHIPPED_FILE = read_weights_file(SHIPPED_WEIGHTS)  # read without app/
ALPHAS = SHIPPED_FILE.alphas
WARMUP = SHIPPED_FILE.warmup  # the model's default, used when a request names none


def start_server(port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        serve_command(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = start_server(port, CONVEWMA_DRAIN_S="20")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None and not process.stdout.closed:
            process.communicate(timeout=10)  # reaps the process and closes its pipe


def test_serves_real_requests(server):
    base, _ = server
    values = np.random.default_rng(0).normal(size=500).tolist()
    response = httpx.post(f"{base}/smooth", json={"series": [values]}, timeout=10)
    assert response.status_code == 200
    expected = bank_reference(np.array([values]), ALPHAS, 32, WARMUP)[0]
    assert max_relative_error(np.array(response.json()["smoothed"][0]), expected) <= 1e-5
    assert "convewma_requests_total" in httpx.get(f"{base}/metrics", timeout=10).text


def test_bad_weights_stop_startup_with_the_reason(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x80\x04K\x01.")
    process = start_server(free_port(), CONVEWMA_WEIGHTS=str(bad))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "only safetensors is accepted" in output
    assert "Traceback" not in output


def test_sigterm_during_a_burst_answers_every_request_then_exits_cleanly(server):
    base, process = server
    series = np.random.default_rng(1).normal(size=(8, 2048))
    body = orjson.dumps({"series": series.tolist()})  # encoded once: the client stays light
    # 32 requests sent; SIGTERM once one is answered; 8 clients keep sending for 1 s.
    outcomes = asyncio.run(
        burst_around(base, body, lambda: process.send_signal(signal.SIGTERM), in_flight=32, senders=8)
    )
    output, _ = process.communicate(timeout=60)

    failures = Counter(type(o).__name__ for o in outcomes if not isinstance(o, httpx.Response))
    assert not failures, f"transport errors: {dict(failures)}"
    responses = [o for o in outcomes if isinstance(o, httpx.Response)]
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses  # work accepted before SIGTERM finished
    assert 503 in statuses  # work arriving while draining was refused, not reset
    check_drain_answers(responses, series, ALPHAS, detail="shutting down")
    assert process.returncode == 0, output
    assert "convewma ready" in output
    assert "drained after" in output
    assert "Traceback" not in output
