"""Real nginx (Debian package) in front of real ``convewma serve`` replicas on 127.0.0.1,
configured by the shipped ``docker/nginx/convewma.conf`` rendered for loopback ports."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reference import SHIPPED_WEIGHTS, bank_reference, max_relative_error, read_weights_file
from tests.servers import free_port, start_replica, stop, wait_ready

# One worker runs them all: they share an apt install, the podman set-up and one image build.
pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("deployment")]
ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONF = ROOT / "docker" / "nginx" / "convewma.conf"
SHIPPED_FILE = read_weights_file(SHIPPED_WEIGHTS)  # read without app/
ALPHAS = SHIPPED_FILE.alphas
REPLICAS = 3


def nginx_binary() -> str:
    """nginx from Debian; the test set-up installs ``nginx-light`` when it is missing."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get (the podman set-up) may hold the lock
        subprocess.run(["apt-get", *wait, "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", *wait, "install", "-y", "-qq", "nginx-light"],
            check=True,
            env=env,
            capture_output=True,
        )
        found = "/usr/sbin/nginx"
    return found


def render_conf(listen_port: int, replica_ports: list[int]) -> str:
    """The shipped config with its upstream servers and listen port moved to loopback."""
    shipped = SHIPPED_CONF.read_text()
    pattern = re.compile(r"^(\s*)server convewma-\d+:8000( [^;]*)?;\n", re.MULTILINE)
    matches = list(pattern.finditer(shipped))
    assert matches, "no upstream servers found in the shipped config"
    indent, options = matches[0].group(1), matches[0].group(2) or ""
    servers = "".join(f"{indent}server 127.0.0.1:{port}{options};\n" for port in replica_ports)
    rendered = shipped[: matches[0].start()] + servers + pattern.sub("", shipped[matches[0].start() :])
    rendered, count = re.subn(
        r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{listen_port};", rendered, flags=re.M
    )
    assert count == 1
    return rendered


@dataclass
class Cluster:
    base: str
    replicas: list[subprocess.Popen[bytes]]
    replica_bases: list[str]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nginx = nginx_binary()
    ports = [free_port() for _ in range(REPLICAS)]
    replicas = [start_replica(port, tmp_path / f"replica-{i}.log") for i, port in enumerate(ports)]
    listen = free_port()
    (tmp_path / "convewma.conf").write_text(render_conf(listen, ports))
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / temp).mkdir()
    user = "user root root;" if os.geteuid() == 0 else ""  # workers must reach tmp_path
    (tmp_path / "nginx.conf").write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/convewma.conf;
}}
"""
    )
    check = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with (tmp_path / "nginx.log").open("ab") as log:
        proxy = subprocess.Popen(
            [nginx, "-c", str(tmp_path / "nginx.conf")], stdout=log, stderr=subprocess.STDOUT
        )
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for base, replica in zip(bases, replicas, strict=True):
            wait_ready(base, replica)
        wait_ready(f"http://127.0.0.1:{listen}", proxy, path="/nginx-health")
        yield Cluster(f"http://127.0.0.1:{listen}", replicas, bases)
    finally:
        proxy.send_signal(signal.SIGQUIT)  # stopped by PID: graceful nginx shutdown
        try:
            proxy.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        for replica in replicas:
            stop(replica)


def smooth_count(base: str) -> float:
    """Successful /smooth requests a replica has served, from its Prometheus metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "convewma_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name == "convewma_requests_total"
                and s.labels.get("route") == "/smooth"
                and s.labels.get("status") == "200"  # any method: POST
            )
    return 0.0


async def steady_stream(base: str, body: dict[str, object], seconds: float, workers: int) -> list[object]:
    """``workers`` clients sending one request after another, bounded in time and count."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker() -> list[object]:
            outcomes: list[object] = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and len(outcomes) < 400:
                try:
                    outcomes.append(await client.post("/smooth", json=body))
                except httpx.TransportError as exc:
                    outcomes.append(exc)
            return outcomes

        results = await asyncio.gather(*(worker() for _ in range(workers)))
    return [outcome for outcomes in results for outcome in outcomes]


def series_body(length: int = 512) -> tuple[dict[str, object], np.ndarray]:
    series = np.random.default_rng(7).normal(size=(2, length)).cumsum(axis=1)
    return {"series": series.tolist()}, series


def test_rendered_config_keeps_every_directive_but_the_addresses():
    rendered = render_conf(18080, [18001, 18002, 18003])
    assert "server 127.0.0.1:18003 max_fails=2 fail_timeout=5s;" in rendered
    assert "convewma-1" not in rendered
    for directive in ("least_conn;", "keepalive 32;", "non_idempotent", "client_max_body_size 64m;"):
        assert directive in rendered


def test_requests_spread_over_every_replica(cluster: Cluster):
    body, series = series_body()
    outcomes = asyncio.run(steady_stream(cluster.base, body, seconds=1.5, workers=6))
    responses = [o for o in outcomes if isinstance(o, httpx.Response)]
    assert len(responses) == len(outcomes) >= 30
    assert {r.status_code for r in responses} == {200}
    expected = bank_reference(series, ALPHAS, SHIPPED_FILE.kernel_size, SHIPPED_FILE.warmup)
    assert max_relative_error(np.array(responses[0].json()["smoothed"]), expected) <= 1e-5
    counts = [smooth_count(base) for base in cluster.replica_bases]
    assert all(count > 0 for count in counts), counts
    assert sum(counts) == len(responses)


def test_sigkill_of_a_replica_loses_no_client_request(cluster: Cluster):
    body, series = series_body()

    async def scenario() -> list[object]:
        stream = asyncio.create_task(steady_stream(cluster.base, body, seconds=4.0, workers=6))
        await asyncio.sleep(1.5)
        cluster.replicas[0].send_signal(signal.SIGKILL)  # mid-stream, no goodbye
        return await stream

    outcomes = asyncio.run(scenario())
    failures = [o if isinstance(o, Exception) else o.status_code for o in outcomes if not _ok(o)]
    assert not failures, f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]!r}"
    assert len(outcomes) >= 60
    assert cluster.replicas[0].wait(timeout=10) == -signal.SIGKILL
    survivors = [smooth_count(base) for base in cluster.replica_bases[1:]]
    assert sum(survivors) > 0
    expected = bank_reference(series, ALPHAS, SHIPPED_FILE.kernel_size, SHIPPED_FILE.warmup)
    last = outcomes[-1]
    assert isinstance(last, httpx.Response)
    assert max_relative_error(np.array(last.json()["smoothed"]), expected) <= 1e-5


def _ok(outcome: object) -> bool:
    return isinstance(outcome, httpx.Response) and outcome.status_code == 200
