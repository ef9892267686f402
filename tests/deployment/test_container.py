"""The real Dockerfile built and run with podman (this platform has no Docker engine),
and the compose file brought up with podman-compose: two replicas behind nginx.

``../shared/container/prepare-podman.sh`` installs podman and local stand-ins for the
``python:3.11-slim`` and ``nginx:stable`` base images. Image layers stay in podman's
storage, so later runs rebuild only what changed. Containers use the host network on
127.0.0.1 ports (the single container) or a podman bridge network (compose).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import load_weights
from tests.reference import SHIPPED_WEIGHTS, bank_reference, max_relative_error, read_weights_file
from tests.servers import burst_around, free_port, wait_ready

# One worker runs them all: they share an apt install, the podman set-up and one image build.
pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("deployment")]
ROOT = Path(__file__).resolve().parents[2]
PREPARE = ROOT.parent / "shared" / "container" / "prepare-podman.sh"
IMAGE = "localhost/convewma:test"
SHIPPED = load_weights(DEFAULT_WEIGHTS)
SHIPPED_FILE = read_weights_file(SHIPPED_WEIGHTS)  # read without app/
ALPHAS = SHIPPED_FILE.alphas
WHEELS = Path("/opt/wheels")  # this platform's local wheel folder (pip config list)


def run(env: dict[str, str], *command: str, timeout: float = 600, check: bool = True) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    assert PREPARE.is_file(), f"{PREPARE} is missing: the container tests need ../shared beside the project"
    exports = run(dict(os.environ), "bash", str(PREPARE), timeout=900)
    env = dict(os.environ)
    for line in exports.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value
    return env


@pytest.fixture(scope="session")
def image(podman_env: dict[str, str]) -> str:
    build = ["podman", "build", "--pull=never", "--format", "docker", "--network", "host", "-t", IMAGE]
    if WHEELS.is_dir():
        # Where only PyPI and a local wheel folder are reachable: torch from the folder.
        build += ["-v", f"{WHEELS}:/wheels:ro", "--build-arg", "TORCH_INDEX_URL="]
        build += ["--build-arg", "PIP_EXTRA_ARGS=--find-links /wheels"]
    run(podman_env, *build, str(ROOT), timeout=1800)
    return IMAGE


@pytest.fixture
def container(podman_env: dict[str, str], image: str) -> Iterator[tuple[str, str, float]]:
    port = free_port()
    name = f"convewma-test-{port}"
    started = time.monotonic()
    run(
        podman_env,
        *("podman", "run", "-d", "--name", name, "--network", "host"),
        *("-e", "CONVEWMA_HOST=127.0.0.1", "-e", f"CONVEWMA_PORT={port}", image),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=120)
        ready_after = time.monotonic() - started
        yield name, base, ready_after
    finally:
        run(podman_env, "podman", "rm", "-f", "-t", "0", name, check=False)


def test_image_metadata(podman_env, image):
    inspected = orjson.loads(run(podman_env, "podman", "image", "inspect", image))[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert "/readyz" in " ".join(inspected["Healthcheck"]["Test"])  # podman lists it beside Config
    assert config["Labels"]["org.opencontainers.image.title"] == "convewma-service"
    assert config["Entrypoint"] == ["convewma", "serve"]
    size = int(run(podman_env, "podman", "image", "inspect", "--format", "{{.Size}}", image))
    print(f"image size: {size / 1e6:.0f} MB")
    # No compilers or build caches in the final stage.
    listing = run(
        podman_env,
        "podman",
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "command -v gcc cc || true; ls /root/.cache 2>/dev/null || true",
    )
    assert listing.strip() == ""


def test_container_serves_and_stops_cleanly_under_load(podman_env, container):
    name, base, ready_after = container
    print(f"cold start to ready: {ready_after:.1f} s")
    series = np.random.default_rng(3).normal(size=(4, 1024))
    response = httpx.post(f"{base}/smooth", json={"series": series.tolist()}, timeout=30)
    assert response.status_code == 200
    expected = bank_reference(series, ALPHAS, SHIPPED_FILE.kernel_size, SHIPPED_FILE.warmup)
    assert max_relative_error(np.array(response.json()["smoothed"]), expected) <= 1e-5
    alphas = httpx.get(f"{base}/alphas", timeout=10).json()
    assert alphas["channels"] == list(SHIPPED.card.channels)
    np.testing.assert_allclose(alphas["alphas"], ALPHAS, rtol=1e-7)
    run(podman_env, "podman", "healthcheck", "run", name)  # the image's HEALTHCHECK passes

    body = orjson.dumps({"series": series.tolist()})
    stop = ["podman", "stop", "-t", "45", name]  # SIGTERM (STOPSIGNAL), then 45 s grace
    stopping: list[subprocess.Popen[bytes]] = []

    def stop_container() -> None:
        stopping.append(
            subprocess.Popen(stop, env=podman_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    outcomes = asyncio.run(burst_around(base, body, stop_container, in_flight=16, senders=4))
    assert stopping[0].wait(timeout=60) == 0
    failures = Counter(type(o).__name__ for o in outcomes if not isinstance(o, httpx.Response))
    assert not failures, f"transport errors: {dict(failures)}"
    statuses = Counter(o.status_code for o in outcomes if isinstance(o, httpx.Response))
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 16  # everything accepted before SIGTERM finished
    state = orjson.loads(run(podman_env, "podman", "inspect", name))[0]["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0
    logs = run(podman_env, "podman", "logs", name)
    assert "Traceback" not in logs


@pytest.fixture
def compose(podman_env, image) -> Iterator[str]:
    port = free_port()
    env = {**podman_env, "CONVEWMA_LB_PORT": str(port), "IMAGE": image}  # the compose file's ${IMAGE}
    command = ["podman-compose", "-f", str(ROOT / "docker" / "compose.yaml")]
    run(env, *command, "down", check=False)
    run(env, *command, "up", "-d", "--no-build", timeout=300)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        run(env, *command, "down", "-t", "5", check=False, timeout=300)


def healthy(env: dict[str, str], container: str) -> bool:
    result = subprocess.run(["podman", "healthcheck", "run", container], env=env, capture_output=True)
    return result.returncode == 0


def test_compose_runs_two_replicas_behind_nginx(podman_env, compose):
    # podman 4.3 ignores `depends_on: condition: service_healthy` (docker compose honours
    # it), so wait here, with the image's own HEALTHCHECK, until both replicas are healthy.
    replicas = ("convewma-1", "convewma-2")
    deadline = time.monotonic() + 120
    while not all(healthy(podman_env, f"convewma_{r}_1") for r in replicas):
        assert time.monotonic() < deadline, "replicas did not become healthy"
        time.sleep(0.5)
    wait_ready(compose, timeout_s=30)
    series = np.random.default_rng(4).normal(size=(2, 300))
    expected = bank_reference(series, ALPHAS, SHIPPED_FILE.kernel_size, SHIPPED_FILE.warmup)
    for _ in range(20):
        response = httpx.post(f"{compose}/smooth", json={"series": series.tolist()}, timeout=30)
        assert response.status_code == 200
        assert max_relative_error(np.array(response.json()["smoothed"]), expected) <= 1e-5
    served = {
        replica: run(podman_env, "podman", "logs", f"convewma_{replica}_1").count(
            '"POST /smooth HTTP/1.1" 200'
        )
        for replica in replicas
    }
    assert all(count > 0 for count in served.values()), served
    assert sum(served.values()) >= 20


def test_sigterm_exit_status_is_zero_not_signal(podman_env, image):
    # `podman run` in the foreground, killed politely: the exit status it reports.
    port = free_port()
    name = f"convewma-fg-{port}"
    process = subprocess.Popen(
        [
            "podman",
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            "host",
            "-e",
            "CONVEWMA_HOST=127.0.0.1",
            "-e",
            f"CONVEWMA_PORT={port}",
            image,
        ],
        env=podman_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, timeout_s=120)
        run(podman_env, "podman", "kill", "--signal", str(int(signal.SIGTERM)), name)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
