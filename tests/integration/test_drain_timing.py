"""How long ``convewma serve`` drains on SIGTERM: the quiet period ends an idle drain early,
traffic keeps it open until ``CONVEWMA_DRAIN_S``. The only wall-clock assertions of the
suite, with generous margins."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.serving import drain
from tests.servers import free_port, start_replica, stop, wait_ready

pytestmark = pytest.mark.slow

QUIET_S = 0.5  # README.md: the drain ends once no request has arrived or run for 0.5 s
# uvicorn's shutdown, the lifespan's and the interpreter's exit, a busy CI machine (with pytest-xdist the
# other worker may be building the image); still far below the 20 s a drain without quiet takes.
MARGIN_S = 6.0


class Exit:
    """Waits for a process in a thread and notes when it exited (bounded by ``limit_s``)."""

    def __init__(self, process: subprocess.Popen[bytes], limit_s: float) -> None:
        self.at: float | None = None
        self.thread = threading.Thread(target=self._wait, args=(process, limit_s), daemon=True)
        self.thread.start()

    def _wait(self, process: subprocess.Popen[bytes], limit_s: float) -> None:
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            return
        self.at = time.monotonic()


Launch = Callable[..., tuple[str, subprocess.Popen[bytes], Path]]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    started: list[subprocess.Popen[bytes]] = []

    def run(**env: str) -> tuple[str, subprocess.Popen[bytes], Path]:
        port, log = free_port(), tmp_path / "serve.log"
        process = start_replica(port, log, **env)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process)
        return base, process, log

    yield run
    for process in started:
        stop(process)


def test_the_documented_quiet_period_is_the_code_s():
    assert drain.DRAIN_QUIET_S == QUIET_S


def test_an_idle_server_exits_once_quiet_not_at_the_drain_limit(launch):
    _, process, log = launch(CONVEWMA_DRAIN_S="20")  # the limit alone would take 20 s
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    exited = Exit(process, limit_s=QUIET_S + MARGIN_S)
    exited.thread.join()
    assert exited.at is not None, f"still running {QUIET_S + MARGIN_S} s after SIGTERM with no traffic"
    took = exited.at - sent
    assert took >= QUIET_S, f"exited after {took:.2f} s: the drain did not wait for quiet"
    assert process.returncode == 0, log.read_text()
    assert "drained after" in log.read_text()


def test_traffic_keeps_the_drain_open_until_its_limit(launch):
    base, process, log = launch(CONVEWMA_DRAIN_S="2")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    exited = Exit(process, limit_s=10.0)
    statuses: list[int] = []
    with httpx.Client(base_url=base, timeout=2.0) as client:
        for _ in range(80):  # a request every 0.1 s, for 8 s at most
            if not exited.thread.is_alive():
                break
            with contextlib.suppress(httpx.TransportError):  # the listener closed: drain over
                statuses.append(client.post("/smooth", json={"series": [[1.0, 2.0]]}).status_code)
            time.sleep(0.1)
    exited.thread.join()
    assert exited.at is not None, "still running 10 s after SIGTERM"
    took = exited.at - sent
    assert 1.8 <= took < 4.0, f"exited {took:.2f} s after SIGTERM; CONVEWMA_DRAIN_S is 2"
    assert statuses.count(503) >= 10, statuses  # refused while draining, as clients kept coming
    assert set(statuses) <= {200, 503}, statuses
    assert process.returncode == 0, log.read_text()


def test_a_keep_alive_connection_left_idle_does_not_hold_the_drain(launch):
    base, process, log = launch(CONVEWMA_DRAIN_S="20")
    with httpx.Client(base_url=base, timeout=5) as client:
        assert client.post("/smooth", json={"series": [[1.0, 2.0]]}).status_code == 200  # stays open
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        exited = Exit(process, limit_s=QUIET_S + MARGIN_S)
        exited.thread.join()
    assert exited.at is not None, "an idle keep-alive connection held the drain to its limit"
    assert exited.at - sent >= QUIET_S
    assert process.returncode == 0, log.read_text()
