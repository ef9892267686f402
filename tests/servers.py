"""Helpers for tests that run real servers on 127.0.0.1: ``convewma serve`` processes, or
the same uvicorn configuration in a thread of the test process (what a mutation tool can see)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from tests.reference import SHIPPED_WEIGHTS, bank_reference, max_relative_error, read_weights_file


def http_scope(method: str, path: str) -> dict[str, Any]:
    """The ASGI scope of a plain HTTP request, for calling an app without a client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]


def start_replica(port: int, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``convewma serve`` logging to a file (a pipe nobody reads would fill and block it)."""
    with log.open("ab") as output:
        return subprocess.Popen(
            serve_command(port), stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )


SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "convewma")


class TracebackRecords(logging.Handler):
    """Keeps the log records that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@contextlib.contextmanager
def kept_loggers() -> Iterator[None]:
    """Puts back the loggers a uvicorn configuration sets up (``convewma`` stops propagating),
    so later tests in this process (``caplog``) see them as before."""
    saved = {name: logging.getLogger(name).__dict__.copy() for name in SERVER_LOGGERS}
    try:
        yield
    finally:
        for name, state in saved.items():
            logger = logging.getLogger(name)
            logger.__dict__.clear()
            logger.__dict__.update(state)


@contextlib.contextmanager
def thread_server(**settings: Any) -> Iterator[tuple[str, int]]:
    """``convewma serve``'s uvicorn configuration (``server_config``: the app, the guarded
    protocol, the timeouts) serving in a thread on a free port; its address. Fails if the
    server logged a traceback."""
    import uvicorn

    from app.cli.serve import server_config
    from app.serving.settings import Settings

    with kept_loggers():
        port = free_port()
        config = server_config(Settings(host="127.0.0.1", port=port, device="cpu", **settings))
        tracebacks = TracebackRecords()
        for name in SERVER_LOGGERS:
            logging.getLogger(name).addHandler(tracebacks)
        server = uvicorn.Server(config)  # not in the main thread: installs no signal handlers
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            yield "127.0.0.1", port
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    assert not thread.is_alive(), "the server thread did not stop"
    assert not tracebacks.records, [tracebacks.format(r) for r in tracebacks.records]


def wait_ready(
    base: str, process: subprocess.Popen[Any] | None = None, timeout_s: float = 60.0, path: str = "/readyz"
) -> None:
    """Poll ``base + path`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            output: IO[Any] | None = process.stdout
            logged = output.read() if output else ""
            raise AssertionError(f"server exited early ({process.returncode}): {logged}")
        try:
            if httpx.get(f"{base}{path}", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base}{path} did not answer 200 within {timeout_s} s")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


async def burst_around(
    base: str, body: bytes, action: Callable[[], object], in_flight: int, senders: int
) -> list[object]:
    """``in_flight`` requests sent; once the first is answered, ``action()`` (a SIGTERM, a
    stop) while the others are in flight and ``senders`` clients keep posting for 1 s.
    Returns every response or transport error."""
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one() -> object:
            try:
                return await client.post("/smooth", content=body, headers=headers)
            except httpx.TransportError as exc:  # a reset or a refused connection
                return exc

        async def keep_sending(until: float) -> list[object]:
            outcomes = []
            while time.monotonic() < until and len(outcomes) < 50:  # bounded in time and count
                outcomes.append(await one())
            return outcomes

        before = [asyncio.create_task(one()) for _ in range(in_flight)]
        # Act once the server has answered one of them, so the rest are truly in its hands:
        # a fixed sleep raced a slow CI machine, where no request had arrived yet.
        await asyncio.wait(before, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        action()
        until = time.monotonic() + 1.0
        after = await asyncio.gather(*(keep_sending(until) for _ in range(senders)))
        return [*await asyncio.gather(*before), *(o for outcomes in after for o in outcomes)]


def check_drain_answers(
    responses: list[httpx.Response], series: np.ndarray, alphas: np.ndarray, detail: str | None = None
) -> None:
    """Answers around a drain: 200s equal the float64 reference, refusals are clean 503s."""
    shipped = read_weights_file(SHIPPED_WEIGHTS)
    expected = bank_reference(series, alphas, shipped.kernel_size, shipped.warmup, shipped.normalize)
    for response in responses:
        if response.status_code == 200:
            assert max_relative_error(np.array(response.json()["smoothed"]), expected) <= 1e-5
        else:
            assert response.headers["retry-after"] == "1"
            assert response.headers["connection"] == "close"
            if detail is not None:
                assert detail in response.json()["detail"]
