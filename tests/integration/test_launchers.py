"""SIGTERM drains under every launcher: ``convewma serve``, ``python -m uvicorn app.main:app``,
and gunicorn with two uvicorn workers (``uvicorn_worker.UvicornWorker`` as a user types it,
and ``app.serving.gunicorn.ConvEWMAWorker``). The drain is the app's (app/serving/drain.py), so each must:
answer every request sent before or during shutdown with 200 or a clean refusal (503 with
``Retry-After`` and ``Connection: close``, or a refused connection once the listener is
closed), never a reset or a hang, and exit by itself, the whole process group with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from app.serving import drain
from tests.reference import SHIPPED_WEIGHTS, read_weights_file
from tests.servers import check_drain_answers, free_port, serve_command, wait_ready

pytestmark = pytest.mark.slow

SHIPPED_FILE = read_weights_file(SHIPPED_WEIGHTS)  # read without app/
ALPHAS = SHIPPED_FILE.alphas
CLIENTS = 32  # keep-alive clients, each sending one request after another
SEND_AFTER_SIGTERM_S = 1.5  # the clients keep sending this long into the drain
MAX_REQUESTS = 200  # per client: the load is bounded in count as well as in time
EXIT_LIMIT_S = 30.0  # a launcher not gone by then hangs; the test then kills it
GRACEFUL_TIMEOUT_S = 40  # gunicorn: CONVEWMA_DRAIN_S + CONVEWMA_REQUEST_TIMEOUT_S + 5


def gunicorn(worker: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            worker,
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            str(GRACEFUL_TIMEOUT_S),
            "app.main:app",
        ]

    return command


def uvicorn(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]


@dataclass(frozen=True)
class Launcher:
    command: Callable[[int], list[str]]
    status: int  # exit status after a drained SIGTERM
    workers: int = 1  # processes that each run the app


# uvicorn re-raises the signal once shut down (-15, 143 in a shell); gunicorn's master and
# convewma serve exit 0.
LAUNCHERS = {
    "convewma-serve": Launcher(serve_command, 0),
    "uvicorn": Launcher(uvicorn, -signal.SIGTERM),
    "gunicorn-uvicorn-worker": Launcher(gunicorn("uvicorn_worker.UvicornWorker"), 0, workers=2),
    "gunicorn-convewma-worker": Launcher(gunicorn("app.serving.gunicorn.ConvEWMAWorker"), 0, workers=2),
}


@dataclass
class Launched:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    status: int  # the exit status expected after SIGTERM
    workers: int
    signalled: float = 0.0
    exited: float | None = None

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def sigterm(self, group: bool = False) -> None:
        """Send SIGTERM to the launcher, as docker and Kubernetes do (``group``: to its
        whole process group, as systemd does) and note when the launcher exits, in a
        thread bounded by ``EXIT_LIMIT_S``."""
        self.signalled = time.monotonic()
        if group:
            os.killpg(self.process.pid, signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        self._watch = threading.Thread(target=self._wait, daemon=True)
        self._watch.start()

    def _wait(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=EXIT_LIMIT_S)
            self.exited = time.monotonic()

    def exit_after(self) -> float:
        """Seconds from SIGTERM to the launcher's exit, once its whole process group is gone."""
        self._watch.join()
        log = self.log.read_text(errors="replace")
        assert self.exited is not None, f"still running {EXIT_LIMIT_S} s after SIGTERM:\n{log}"
        for _ in range(100):  # the launcher is gone; its children must be too
            if not self.group_alive():
                break
            time.sleep(0.05)
        assert not self.group_alive(), f"the launcher exited, not its process group:\n{log}"
        return self.exited - self.signalled


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(name: str, **env: str) -> Launched:
        launcher = LAUNCHERS[name]
        port, log = free_port(), tmp_path / f"{name}.log"
        # XDG_RUNTIME_DIR: gunicorn 25+ opens its control socket there, not in $HOME.
        environment = {**os.environ, "CONVEWMA_DEVICE": "cpu", "XDG_RUNTIME_DIR": str(tmp_path), **env}
        with log.open("ab") as output:
            process = subprocess.Popen(
                launcher.command(port),
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # its own process group: gunicorn's workers with it
            )
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, timeout_s=120)
        # /readyz answers once one worker is up; SIGTERM every worker only once it serves.
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count("Application startup complete") < launcher.workers:
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        return Launched(base, process, log, launcher.status, launcher.workers)

    yield run
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


async def steady_load(
    base: str, body: bytes, sigterm: Callable[[], object]
) -> tuple[list[tuple[float, object]], float]:
    """``CLIENTS`` keep-alive clients send one request after another; once each has had an
    answer, ``sigterm()``; they go on for ``SEND_AFTER_SIGTERM_S`` (at most ``MAX_REQUESTS``
    each). Returns every (time sent, response or transport error) and the time of SIGTERM."""
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    answered = 0
    all_answered = asyncio.Event()
    signalled: list[float] = []
    outcomes: list[tuple[float, object]] = []
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal answered
            for count in range(MAX_REQUESTS):
                if signalled and time.monotonic() > signalled[0] + SEND_AFTER_SIGTERM_S:
                    return
                sent = time.monotonic()
                try:
                    outcome: object = await client.post("/smooth", content=body, headers=headers)
                except httpx.TransportError as exc:  # a reset, a refused connection
                    outcome = exc
                outcomes.append((sent, outcome))
                if count == 0:
                    answered += 1
                    if answered == CLIENTS:
                        all_answered.set()
                if isinstance(outcome, httpx.ConnectError):
                    await asyncio.sleep(0.05)  # the listener is closed: do not spin

        async def signal_once_loaded() -> None:
            await asyncio.wait_for(all_answered.wait(), timeout=60)
            await asyncio.sleep(0.2)  # steady keep-alive traffic, connections reused
            signalled.append(time.monotonic())
            sigterm()

        await asyncio.gather(signal_once_loaded(), *(one_client() for _ in range(CLIENTS)))
    return outcomes, signalled[0]


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_sigterm_under_keep_alive_load_loses_nothing_and_exits(launch, name):
    server = launch(name, CONVEWMA_DRAIN_S="20")  # traffic, not the limit, ends the drain
    series = np.random.default_rng(2).normal(size=(4, 512))
    body = orjson.dumps({"series": series.tolist()})
    outcomes, signalled = asyncio.run(steady_load(server.base, body, server.sigterm))
    exited_after = server.exit_after()
    log = server.log.read_text(errors="replace")

    responses = [o for _, o in outcomes if isinstance(o, httpx.Response)]
    refused = [sent for sent, o in outcomes if isinstance(o, httpx.ConnectError)]
    failures = Counter(
        type(o).__name__ for _, o in outcomes if not isinstance(o, httpx.Response | httpx.ConnectError)
    )
    statuses = Counter(r.status_code for r in responses)
    print(f"{name}: exited {exited_after:.2f} s after SIGTERM, {dict(statuses)}, {len(refused)} refused")
    assert not failures, f"{name}: resets or hangs: {dict(failures)}\n{log}"
    assert all(sent > signalled for sent in refused), "a connection refused before SIGTERM"
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0, statuses
    assert statuses[503] > 0, f"{name}: no request was refused while draining: {statuses}"
    check_drain_answers(responses, series, ALPHAS)
    # The drain held the listener open while clients kept sending (a stall of the client
    # longer than the quiet period would end it sooner, with refusals), then ended on quiet.
    assert drain.DRAIN_QUIET_S <= exited_after < SEND_AFTER_SIGTERM_S + 10, exited_after
    assert server.process.returncode == server.status, log
    assert "Traceback" not in log
    assert "SIGKILL" not in log  # gunicorn: no worker outlived --graceful-timeout
    assert log.count("drained after") == server.workers, log  # each worker drained


@pytest.mark.parametrize(
    ("name", "group"),
    [*((name, False) for name in LAUNCHERS), ("gunicorn-uvicorn-worker", True)],
)
def test_an_idle_server_drains_for_the_quiet_period_then_exits(launch, name, group):
    # Without the app's drain, these launchers close the listener at once on SIGTERM. With
    # `group`, each gunicorn worker has SIGTERM twice (the group's, then the master's): one stop.
    server = launch(name, CONVEWMA_DRAIN_S="20")  # the limit alone would take 20 s
    server.sigterm(group=group)
    exited_after = server.exit_after()
    print(f"{name}: exited {exited_after:.2f} s after SIGTERM{' to the group' if group else ''}, idle")
    assert drain.DRAIN_QUIET_S <= exited_after < drain.DRAIN_QUIET_S + 5, exited_after
    log = server.log.read_text(errors="replace")
    assert server.process.returncode == server.status, log
    assert log.count("drained after") == server.workers, log


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


LATE_REQUEST = (
    b"POST /smooth HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
    b"content-length: 24\r\n\r\n" + b'{"series": [[1.0, 2.0]]}'
)


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_a_connection_opened_while_draining_is_answered_even_if_its_request_comes_late(launch, name):
    # A client that has connected but not yet sent (slow, or its CPU busy) is not idle: a
    # worker shutting down under it would close it unanswered, a reset where a 503 is due.
    server = launch(name, CONVEWMA_DRAIN_S="20")
    server.sigterm()
    deadline = time.monotonic() + 10
    while server.log.read_text(errors="replace").count("draining: readiness") < server.workers:
        assert time.monotonic() < deadline, server.log.read_text(errors="replace")
        time.sleep(0.02)
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        time.sleep(2 * drain.DRAIN_QUIET_S)  # past the quiet period, the request unsent
        sock.sendall(LATE_REQUEST)
        answer = read_until_closed(sock, limit_s=10)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 503"), answer
    assert b"\r\nconnection: close" in head, answer
    assert b"\r\nretry-after: " in head, answer
    exited_after = server.exit_after()
    log = server.log.read_text(errors="replace")
    assert 2 * drain.DRAIN_QUIET_S <= exited_after < 2 * drain.DRAIN_QUIET_S + 5, exited_after
    assert server.process.returncode == server.status, log
    assert log.count("drained after") == server.workers, log
