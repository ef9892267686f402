"""A real ``convewma serve`` (uvicorn) process on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.paths import DEFAULT_WEIGHTS
from app.weights import load_weights
from tests.reference import bank_reference, max_relative_error

ALPHAS = load_weights(DEFAULT_WEIGHTS).model.alphas.detach().double().numpy()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def wait_ready(base: str, process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = start_server(port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # reaps the process and closes its pipe


def test_serves_real_requests(server):
    base, _ = server
    values = np.random.default_rng(0).normal(size=500).tolist()
    response = httpx.post(f"{base}/smooth", json={"series": [values]}, timeout=10)
    assert response.status_code == 200
    expected = bank_reference(np.array([values]), ALPHAS, 32)[0]
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
