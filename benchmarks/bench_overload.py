"""Overload-safety benchmark: a real ``convewma serve`` process on 127.0.0.1, pushed past
its capacity, with health probes, memory and CPU watched from outside.

    python benchmarks/bench_overload.py --label after           # this checkout
    python benchmarks/bench_overload.py --label before --repo /work/before   # another checkout
    python benchmarks/bench_overload.py --quick                 # smoke test, about 1 minute

Cases, each against a fresh server process (``python -m app serve --device cpu`` run with
``cwd`` and ``PYTHONPATH`` set to ``--repo``, settings from ``--env CONVEWMA_X=...`` only):

1. **capacity**: a closed loop of ``--capacity-concurrency`` keep-alive connections posts
   one pre-encoded body shape (default large: 64 x 4096 random-walk values) for
   ``--warmup`` s (first requests pay for lazy set-up), then for ``--capacity-duration`` s;
   capacity = 200 answers inside that window per second.
2. **sweep**: open-loop arrivals (Poisson by default, or a fixed rate) at
   ``--levels`` x capacity (or x ``--capacity`` req/s, to offer two checkouts the same
   load) for ``--duration`` s each; every request has a client timeout
   (``--client-timeout``) and at most ``--max-outstanding`` are in flight (arrivals beyond
   that are counted as "capped", not sent). Per level: goodput, latency of the 200s,
   statuses, shed fraction, and after the last arrival the time until the server is idle
   (its CPU < 5% for 1 s, and ``/metrics`` queue depth and batches in flight both 0) and
   the server CPU seconds spent in that time.
3. **probes**: throughout every case a separate process sends ``GET /healthz`` every
   ``--probe-interval`` s twice over, on a new connection each time and on one keep-alive
   connection; latency p50/p99/max and failures per window (target: p99 < 100 ms while
   saturated).
4. **memory**: server RSS sampled every ``--sample-interval`` s and VmHWM (reset per phase
   through ``/proc/PID/clear_refs``); idle RSS before and after the sweep. A guard kills
   the server above ``--rss-limit-mb`` so that the shared machine survives an unbounded
   server; the report then says so.
5. **max**: ``--max-clients`` clients at once each post the largest request the default
   limits accept (``--max-shape`` 640 x 10000, about 60 MB of JSON, under the 64 MiB limit).
6. **abandon**: ``--abandon-clients`` clients each send a ``--abandon-shape`` body and close
   the socket without reading; server CPU in the ``--abandon-window`` s after the last
   disconnect, and whether the queue went idle.

The client is asyncio (uvloop when installed) over raw streams: bodies encoded once and
written in chunks (no per-connection copies), responses read and discarded, not parsed
(one 200 per case is parsed and checked). It shares the machine with the server, so its
own CPU seconds are reported. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import multiprocessing as mp
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from http_client import read_response

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SHAPES = {"small": (1, 256), "medium": (16, 1024), "large": (64, 4096)}
NAMED_STATUSES = (200, 503, 504, 408, 413)
TIMEOUT = -1  # outcome codes that are not HTTP statuses
TRANSPORT = -2
CHUNK = 256 * 1024  # body write size: the transport never holds more than this per connection
IDLE_CPU_SHARE = 0.05
IDLE_WINDOW_S = 1.0
CASES = ("sweep", "max", "abandon")


# --------------------------------------------------------------------------- HTTP client


def parse_shape(text: str) -> tuple[int, int]:
    if text in SHAPES:
        return SHAPES[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"shape must be {'/'.join(SHAPES)} or ROWSxLENGTH, got {text!r}")
    return int(match[1]), int(match[2])


def sweep_body(rows: int, length: int, seed: int) -> bytes:
    series = np.random.default_rng(seed).normal(size=(rows, length)).cumsum(axis=1)
    return orjson.dumps({"series": series}, option=orjson.OPT_SERIALIZE_NUMPY)


def big_body(rows: int, length: int, limit: int, seed: int) -> bytes:
    """Random values with 4 (or fewer) decimals: about 9-10 bytes a value, under ``limit``."""
    values = np.random.default_rng(seed).normal(0.0, 1000.0, size=(rows, length))
    for decimals in (4, 3, 2, 1, 0):
        body = orjson.dumps({"series": values.round(decimals)}, option=orjson.OPT_SERIALIZE_NUMPY)
        if len(body) <= limit:
            return body
    raise SystemExit(f"a {rows}x{length} body is {len(body)} bytes even without decimals: over {limit}")


def request_head(port: int, length: int) -> bytes:
    return (
        f"POST /smooth HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


async def send_request(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
    writer.write(head)
    view = memoryview(body)
    for start in range(0, len(body), CHUNK):
        writer.write(view[start : start + CHUNK])
        await writer.drain()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.transport.abort()


class Pool:
    """Keep-alive connections, reused last-in first-out, a new one when none is idle."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Connection] = []
        self.opened = 0

    async def get(self) -> Connection:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable():
                return connection
            connection.close()
        reader, writer = await asyncio.open_connection(HOST, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return Connection(reader, writer)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


@dataclass
class Outcome:
    due: float  # monotonic time the request was meant to start (open loop: its arrival)
    done: float
    code: int  # HTTP status, TIMEOUT or TRANSPORT
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.due


async def post(
    pool: Pool, head: bytes, body: bytes, due: float, timeout: float, keep: bool = False
) -> tuple[Outcome, bytes]:
    """One POST on a pooled connection. The response is read while the body is still being
    written, so an early answer (413, 503) is seen even if the server stops reading."""
    connection: Connection | None = None
    write: asyncio.Task[None] | None = None
    reuse = False
    kept = b""
    try:
        async with asyncio.timeout(timeout):
            connection = await pool.get()
            write = asyncio.create_task(send_request(connection.writer, head, body))
            try:
                status, close, kept = await read_response(connection.reader, keep)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                # The write side often knows better why (a reset or a broken pipe).
                if write.done() and not write.cancelled() and write.exception() is not None:
                    raise write.exception() from exc  # type: ignore[misc]
                raise
            reuse = not close and write.done() and not write.cancelled() and write.exception() is None
        outcome = Outcome(due, time.monotonic(), status)
    except TimeoutError:
        outcome = Outcome(due, time.monotonic(), TIMEOUT, "client timeout")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        outcome = Outcome(due, time.monotonic(), TRANSPORT, type(exc).__name__)
    finally:
        if write is not None and not write.done():
            write.cancel()
        if write is not None:
            await asyncio.gather(write, return_exceptions=True)
        if connection is not None:
            if reuse:
                pool.idle.append(connection)
            else:
                connection.close()
    return outcome, kept


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A blocking ``GET`` on a new connection (readiness, /metrics)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(port: int, timeout: float = 5.0) -> dict[str, float] | None:
    """Gauges and per-status request counters from /metrics; None if unanswered."""
    try:
        status, body = get(port, "/metrics", timeout)
    except OSError:
        return None
    if status != 200:
        return None
    values: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        match = METRIC_LINE.match(line)
        if not match:
            continue
        name, labels, value = match[1], match[2] or "", match[3]
        if name in ("convewma_queue_depth", "convewma_batches_in_flight", "convewma_queue_values"):
            values[name] = float(value)
        elif name == "convewma_requests_total" and 'route="/smooth"' in labels:
            code = re.search(r'status="([^"]+)"', labels)
            if code:
                values[f"status:{code[1]}"] = float(value)
    return values


def status_diff(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    """The server's own count of /smooth answers by status between two scrapes."""
    if before is None or after is None:
        return "n/a"
    parts = []
    for key in sorted(k for k in after if k.startswith("status:")):
        count = after[key] - before.get(key, 0.0)
        if count:
            parts.append(f"{key.removeprefix('status:')}:{count:.0f}")
    return " ".join(parts) or "-"


# --------------------------------------------------------------------------- server and watchers


class Monitor(threading.Thread):
    """Samples the server's CPU seconds and RSS; kills it above the RSS guard."""

    def __init__(self, pid: int, interval: float, rss_limit: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.pid = pid
        self.interval = interval
        self.rss_limit = rss_limit
        self.times: list[float] = []
        self.cpus: list[float] = []
        self.rss: list[int] = []
        self.halt = threading.Event()
        self.guard = ""  # set when the guard killed the server
        self.exited = False

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                now = time.monotonic()
                cpu = self.process.cpu_times()
                rss = self.process.memory_info().rss
            except psutil.Error:
                self.exited = True
                return
            self.times.append(now)
            self.cpus.append(cpu.user + cpu.system)
            self.rss.append(rss)
            if rss > self.rss_limit and not self.guard:
                self.guard = f"server killed by the benchmark's RSS guard at {rss / 2**20:.0f} MiB"
                self.process.kill()
            self.halt.wait(self.interval)

    def count(self) -> int:
        return len(self.rss)  # appended last: the other lists are at least this long

    def cpu_at(self, moment: float) -> float:
        """CPU seconds at the first sample at or after ``moment`` (the last one if none)."""
        n = self.count()
        if not n:
            return 0.0
        index = min(bisect.bisect_left(self.times, moment, 0, n), n - 1)
        return self.cpus[index]

    def cpu_between(self, start: float, end: float) -> float:
        return self.cpu_at(end) - self.cpu_at(start)

    def rss_max(self, start: float, end: float) -> int:
        n = self.count()
        first = bisect.bisect_left(self.times, start, 0, n)
        last = bisect.bisect_right(self.times, end, 0, n)
        return max(self.rss[first:last], default=0)

    def rss_now(self) -> int:
        n = self.count()
        return self.rss[n - 1] if n else 0

    def alive(self) -> bool:
        return not self.exited and not self.guard and self.process.is_running()

    def find_idle(self, since: float) -> float | None:
        """Start of the first window of ``IDLE_WINDOW_S`` after ``since`` in which the
        server used less than ``IDLE_CPU_SHARE`` of one core."""
        n = self.count()
        first = bisect.bisect_left(self.times, since, 0, n)
        j = first
        for i in range(first, n):
            while j < n and self.times[j] - self.times[i] < IDLE_WINDOW_S:
                j += 1
            if j >= n:
                return None
            span = self.times[j] - self.times[i]
            if self.cpus[j] - self.cpus[i] < IDLE_CPU_SHARE * span:
                return self.times[i]
        return None

    def hwm(self) -> int:
        """VmHWM in bytes (0 if unreadable)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def reset_hwm(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False


def probe_loop(
    mode: str, port: int, interval: float, timeout: float, halt: Any, out: list[tuple[float, float, str]]
) -> None:
    """``GET /healthz`` every ``interval`` s: a new connection each time (``new``) or one
    kept open (``keepalive``). Appends (start, latency or inf, error)."""
    close = b"connection: close\r\n" if mode == "new" else b""
    request = b"GET /healthz HTTP/1.1\r\nhost: " + HOST.encode() + b"\r\n" + close + b"\r\n"
    sock: socket.socket | None = None
    next_start = time.monotonic()
    while not halt.is_set():
        start = time.monotonic()
        deadline = start + timeout
        try:
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed before the answer")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1])  # type: ignore[index]
            while len(rest) < length:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed in the answer")
                rest += chunk
            status = int(head[9:12])
            out.append((start, time.monotonic() - start, "" if status == 200 else f"status {status}"))
            if mode == "new" or b"connection: close" in head.lower():
                sock.close()
                sock = None
        except (OSError, TypeError, ValueError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            out.append((start, math.inf, kind))
            if sock is not None:
                sock.close()
                sock = None
        next_start += interval
        now = time.monotonic()
        next_start = max(next_start, now)  # a slow probe delays the next; they never pile up
        halt.wait(next_start - now)
    if sock is not None:
        sock.close()


def probe_main(port: int, interval: float, timeout: float, halt: Any, ready: Any, pipe: Any) -> None:
    """The prober process: two probe threads until ``halt``; sends back its samples."""
    samples: dict[str, list[tuple[float, float, str]]] = {"new": [], "keepalive": []}
    threads = [
        threading.Thread(target=probe_loop, args=(mode, port, interval, timeout, halt, out), daemon=True)
        for mode, out in samples.items()
    ]
    for thread in threads:
        thread.start()
    ready.set()
    halt.wait()
    for thread in threads:
        thread.join(timeout + 1)
    pipe.send({"samples": samples, "cpu_s": time.process_time()})
    pipe.close()


class Prober:
    def __init__(self, port: int, interval: float, timeout: float) -> None:
        context = mp.get_context("spawn")  # no fork of a process with threads
        self.halt = context.Event()
        ready = context.Event()
        self.pipe, child = context.Pipe(duplex=False)
        self.process = context.Process(
            target=probe_main, args=(port, interval, timeout, self.halt, ready, child), daemon=True
        )
        self.process.start()
        if not ready.wait(60):
            raise SystemExit("the prober process did not start")
        self.timeout = timeout

    def finish(self) -> tuple[dict[str, list[tuple[float, float, str]]], float]:
        self.halt.set()
        if not self.pipe.poll(self.timeout + 30):
            self.process.kill()
            return {"new": [], "keepalive": []}, 0.0
        data = self.pipe.recv()
        self.process.join(10)
        return data["samples"], data["cpu_s"]


class Server:
    """A fresh ``python -m app serve`` from ``--repo``, its monitor and its prober."""

    def __init__(self, args: argparse.Namespace, case: str) -> None:
        self.args = args
        self.case = case
        self.port = 0
        self.probes: dict[str, list[tuple[float, float, str]]] = {}
        self.prober_cpu = 0.0

    def __enter__(self) -> Server:
        args = self.args
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = int(sock.getsockname()[1])
        self.command = [
            sys.executable,
            "-m",
            "app",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--device",
            args.device,
        ]
        with Path(args.log).open("ab") as log:
            log.write(f"\n===== {datetime.now(UTC):%H:%M:%S} case {self.case} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, cwd=args.repo, env=server_env(args), stdout=log, stderr=subprocess.STDOUT
            )
        self.started = time.monotonic()
        try:
            self.wait_ready()
            self.ready_s = time.monotonic() - self.started
            self.monitor = Monitor(self.process.pid, args.sample_interval, args.rss_limit_mb * 2**20)
            self.monitor.start()
            self.prober = Prober(self.port, args.probe_interval, args.probe_timeout)
        except BaseException:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            raise
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}; see {self.args.log}")
            try:
                if get(self.port, "/readyz", 1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise SystemExit(f"server not ready after {timeout_s} s; see {self.args.log}")

    def __exit__(self, *exc: object) -> None:
        self.probes, self.prober_cpu = self.prober.finish()
        self.monitor.halt.set()
        self.monitor.join(5)
        if self.process.poll() is None:
            self.process.terminate()  # drains for up to CONVEWMA_DRAIN_S; a second signal skips it
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self.exit_code = self.process.returncode

    def problem(self) -> str:
        if self.monitor.guard:
            return self.monitor.guard
        if self.process.poll() is not None:
            return f"server exited with {self.process.returncode} during the case"
        return ""


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEWMA_")}
    env.update(
        {"PYTHONPATH": str(args.repo), "CONVEWMA_LOG_LEVEL": "warning", "CONVEWMA_DEVICE": args.device}
    )
    env.update(args.env)
    return env


def check_repo(args: argparse.Namespace) -> str:
    """The ``app`` package the server will import must be the one in ``--repo``."""
    found = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=args.repo,
        env=server_env(args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    path = Path(found.stdout.strip() or "?").resolve()
    if found.returncode or not path.is_relative_to(args.repo):
        raise SystemExit(f"`import app` from {args.repo} gives {path} {found.stderr.strip()}")
    return str(path.parent)


def git_info(repo: Path) -> str:
    def git(*words: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *words], capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    changed = git("status", "--porcelain", "--", "app")
    subject = git("log", "-1", "--format=%s")[:90]
    dirty = f", {len(changed.splitlines())} uncommitted change(s) under app/" if changed else ", app/ clean"
    return f"{commit} ({subject}){dirty}"


async def wait_idle(server: Server, since: float, timeout: float) -> tuple[float | None, str]:
    """When the server went idle after ``since``: CPU below 5% for 1 s, then /metrics
    (queue depth and batches in flight 0) to confirm. None if not within ``timeout``."""
    monitor = server.monitor
    search_from = since
    note = ""
    while time.monotonic() < since + timeout:
        if not monitor.alive():
            return None, server.problem() or "server gone"
        idle_at = monitor.find_idle(search_from)
        if idle_at is not None:
            metrics = await asyncio.to_thread(scrape, server.port)
            queued = (metrics or {}).get("convewma_queue_depth", 0.0)
            running = (metrics or {}).get("convewma_batches_in_flight", 0.0)
            if metrics is None:
                note = "/metrics unanswered at idle"
            if not queued and not running:
                return idle_at, note
            note = f"CPU idle with queue depth {queued:.0f}, batches in flight {running:.0f}"
            search_from = time.monotonic()
        await asyncio.sleep(0.1)
    return None, note or f"not idle within {timeout:.0f} s"


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


# --------------------------------------------------------------------------- cases


@dataclass
class Level:
    name: str
    factor: float
    rate: float
    duration: float
    start: float = 0.0
    stop: float = 0.0
    scheduled: int = 0
    capped: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    lag_p99_ms: float = 0.0
    idle_at: float | None = None
    idle_note: str = ""
    client_done_at: float = 0.0
    outstanding_at_idle: int = 0
    server_cpu_load_s: float = 0.0
    server_cpu_after_s: float = 0.0
    client_cpu_s: float = 0.0
    rss_peak: int = 0
    hwm: int = 0
    server_statuses: str = ""
    connections: int = 0
    problem: str = ""


def arrival_times(
    rate: float, duration: float, poisson: bool, rng: np.random.Generator, cap: int
) -> list[float]:
    if rate <= 0:
        return []
    if not poisson:
        return [i / rate for i in range(min(int(duration * rate), cap))]
    gaps = rng.exponential(1.0 / rate, size=min(int(duration * rate * 1.5) + 16, cap))
    times = np.cumsum(gaps)
    return [float(t) for t in times[times < duration]]


async def closed_loop(
    port: int, head: bytes, body: bytes, concurrency: int, duration: float, timeout: float
) -> tuple[list[Outcome], float, bytes]:
    """``concurrency`` connections, one request at a time each, new requests until
    ``duration`` has passed. Returns every outcome, the window length, one 200 body."""
    deadline = time.monotonic() + duration
    outcomes: list[Outcome] = []
    sample = b""

    async def worker() -> None:
        nonlocal sample
        pool = Pool(port)
        try:
            while time.monotonic() < deadline and len(outcomes) < 100_000:
                outcome, kept = await post(pool, head, body, time.monotonic(), timeout, keep=not sample)
                outcomes.append(outcome)
                if outcome.code == 200 and kept and not sample:
                    sample = kept
        finally:
            pool.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, deadline - started, sample


async def open_level(
    server: Server, args: argparse.Namespace, level: Level, head: bytes, body: bytes
) -> None:
    rng = np.random.default_rng([args.seed, int(level.factor * 1000)])
    arrivals = arrival_times(level.rate, level.duration, args.arrivals == "poisson", rng, args.max_requests)
    level.scheduled = len(arrivals)
    monitor = server.monitor
    before = await asyncio.to_thread(scrape, server.port)
    hwm_reset = monitor.reset_hwm()
    client_cpu0 = own_cpu()
    pool = Pool(server.port)
    tasks: set[asyncio.Task[None]] = set()
    lags: list[float] = []

    async def one(due: float) -> None:
        outcome, _ = await post(pool, head, body, due, args.client_timeout)
        level.outcomes.append(outcome)

    level.start = time.monotonic()
    for offset in arrivals:
        due = level.start + offset
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= args.max_outstanding:
            level.capped += 1
            continue
        lags.append(time.monotonic() - due)
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    delay = level.start + level.duration - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    level.stop = time.monotonic()
    level.lag_p99_ms = float(np.percentile(lags, 99)) * 1e3 if lags else 0.0

    level.idle_at, level.idle_note = await wait_idle(server, level.stop, args.idle_timeout)
    level.outstanding_at_idle = len(tasks)
    if tasks:  # each is bounded by the client timeout
        await asyncio.wait(list(tasks))
    level.client_done_at = time.monotonic()
    level.connections = pool.opened
    pool.close()
    end = level.idle_at if level.idle_at is not None else time.monotonic()
    level.server_cpu_load_s = monitor.cpu_between(level.start, level.stop)
    level.server_cpu_after_s = monitor.cpu_between(level.stop, end)
    level.client_cpu_s = own_cpu() - client_cpu0
    level.rss_peak = monitor.rss_max(level.start, time.monotonic())
    level.hwm = monitor.hwm() if hwm_reset else 0
    level.problem = server.problem()
    level.server_statuses = status_diff(before, await asyncio.to_thread(scrape, server.port))


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    counts = Counter(o.code for o in outcomes)
    ok = sorted(o.latency for o in outcomes if o.code == 200)
    other = {code: n for code, n in counts.items() if code > 0 and code not in NAMED_STATUSES}
    errors = Counter(o.error for o in outcomes if o.code == TRANSPORT)
    return {
        "sent": len(outcomes),
        "counts": {str(code): counts.get(code, 0) for code in NAMED_STATUSES},
        "other": " ".join(f"{code}:{n}" for code, n in sorted(other.items())) or "-",
        "timeouts": counts.get(TIMEOUT, 0),
        "transport": " ".join(f"{name}:{n}" for name, n in errors.most_common()) or "-",
        "transport_n": sum(errors.values()),
        "p50_ms": float(np.percentile(ok, 50)) * 1e3 if ok else math.nan,
        "p99_ms": float(np.percentile(ok, 99)) * 1e3 if ok else math.nan,
        "max_ms": ok[-1] * 1e3 if ok else math.nan,
    }


def check_sample(sample: bytes, rows: int, length: int) -> str:
    if not sample:
        return "no 200 answer to check"
    try:
        smoothed = orjson.loads(sample)["smoothed"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "200 answer is not the expected JSON"
    if len(smoothed) != rows or len(smoothed[0][0]) != length:
        return "200 answer has the wrong shape"
    return "ok"


def sweep_case(args: argparse.Namespace, rows: int, length: int, body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {"levels": [], "windows": []}
    with Server(args, "sweep") as server:
        head = request_head(server.port, len(body))
        monitor = server.monitor
        result["ready_s"] = server.ready_s
        result["rss_start"] = monitor.rss_now()

        # Warm-up, then capacity: closed loop at a fixed concurrency.
        run_async(
            closed_loop(server.port, head, body, args.capacity_concurrency, args.warmup, args.client_timeout)
        )
        run_async(wait_idle(server, time.monotonic(), args.idle_timeout))
        time.sleep(0.5)
        result["rss_idle_before"] = monitor.rss_now()
        client0, started = own_cpu(), time.monotonic()
        outcomes, window, sample = run_async(
            closed_loop(
                server.port,
                head,
                body,
                args.capacity_concurrency,
                args.capacity_duration,
                args.client_timeout,
            )
        )
        finished = time.monotonic()
        ok_in_window = sum(1 for o in outcomes if o.code == 200 and o.done <= started + window)
        capacity = ok_in_window / window
        result["capacity"] = {
            "rps": capacity,
            "values_per_s": capacity * rows * length,
            "window_s": window,
            "server_cpu_s": monitor.cpu_between(started, finished),
            "client_cpu_s": own_cpu() - client0,
            "check": check_sample(sample, rows, length),
            **summarise(outcomes),
        }
        result["windows"].append(
            ("capacity", f"closed loop c={args.capacity_concurrency}", started, finished)
        )
        print(
            f"capacity: {capacity:.1f} req/s ({capacity * rows * length / 1e6:.2f} M values/s), "
            f"p50 {result['capacity']['p50_ms']:.0f} ms, answer {result['capacity']['check']}",
            flush=True,
        )
        base = args.capacity or capacity  # --capacity: the same offered load for every checkout
        result["base_rps"] = base
        if base <= 0:
            result["problem"] = "no 200 answers in the capacity run: sweep skipped"
            return result
        run_async(wait_idle(server, time.monotonic(), args.idle_timeout))

        for factor in args.levels:
            level = Level(f"{factor:g}x", factor, factor * base, args.duration)
            run_async(open_level(server, args, level, head, body))
            result["levels"].append(level)
            result["windows"].append((level.name, "load", level.start, level.stop))
            result["windows"].append(
                (level.name, "drain", level.stop, level.idle_at if level.idle_at else level.client_done_at)
            )
            s = summarise(level.outcomes)
            idle = f"{level.idle_at - level.stop:.1f} s" if level.idle_at is not None else level.idle_note
            print(
                f"level {level.name:>5}: offered {level.scheduled / level.duration:6.1f} req/s, "
                f"200 {s['counts']['200']}, 503 {s['counts']['503']}, 504 {s['counts']['504']}, "
                f"timeouts {s['timeouts']}, transport {s['transport_n']}, p99 {s['p99_ms']:.0f} ms, "
                f"idle after {idle}, RSS peak {level.rss_peak / 2**20:.0f} MiB {level.problem}",
                flush=True,
            )
            if level.problem:
                result["problem"] = level.problem
                break
        if not server.problem():
            time.sleep(1.0)
            result["rss_idle_after"] = monitor.rss_now()
        result["hwm_end"] = monitor.hwm()
        result["problem"] = result.get("problem") or server.problem()
    result["probes"], result["prober_cpu_s"] = server.probes, server.prober_cpu
    return result


def start_case(
    server: Server, body: bytes, result: dict[str, Any], idle_timeout: float
) -> tuple[bytes, dict[str, float] | None, float, float]:
    """Once the server is idle: its idle RSS into ``result`` and its high-water mark reset;
    then the request head, the status counts so far, the client's CPU and the start time."""
    run_async(wait_idle(server, time.monotonic(), idle_timeout))
    result["rss_idle_before"] = server.monitor.rss_now()
    server.monitor.reset_hwm()
    return request_head(server.port, len(body)), scrape(server.port), own_cpu(), time.monotonic()


def max_case(args: argparse.Namespace, rows: int, length: int, body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {"clients": args.max_clients, "body_bytes": len(body), "windows": []}
    with Server(args, "max") as server:
        monitor = server.monitor
        head, before, client0, started = start_case(server, body, result, args.idle_timeout)

        async def all_clients() -> list[tuple[Outcome, bytes]]:
            pools = [Pool(server.port) for _ in range(args.max_clients)]
            try:
                return await asyncio.gather(
                    *(post(pool, head, body, time.monotonic(), args.client_timeout) for pool in pools)
                )
            finally:
                for pool in pools:
                    pool.close()

        outcomes = [outcome for outcome, _ in run_async(all_clients())]
        finished = time.monotonic()
        idle_at, note = run_async(wait_idle(server, finished, args.idle_timeout))
        result.update(summarise(outcomes))
        result["latencies_s"] = [round(o.latency, 2) for o in outcomes]
        result["codes"] = [o.code if o.code > 0 else (o.error or "timeout") for o in outcomes]
        result["wall_s"] = finished - started
        result["server_cpu_s"] = monitor.cpu_between(started, idle_at or time.monotonic())
        result["client_cpu_s"] = own_cpu() - client0
        result["idle_after_s"] = (idle_at - finished) if idle_at is not None else None
        result["idle_note"] = note
        result["rss_peak"] = monitor.rss_max(started, time.monotonic())
        result["hwm"] = monitor.hwm()
        time.sleep(1.0)
        result["rss_idle_after"] = monitor.rss_now()
        result["server_statuses"] = status_diff(before, scrape(server.port))
        result["problem"] = server.problem()
        result["windows"].append(("max", "requests", started, finished))
        print(
            f"max: {args.max_clients} x {len(body) / 1e6:.1f} MB: statuses {result['codes']}, "
            f"latencies {result['latencies_s']} s, peak RSS {result['rss_peak'] / 2**20:.0f} MiB "
            f"{result['problem']}",
            flush=True,
        )
    result["probes"], result["prober_cpu_s"] = server.probes, server.prober_cpu
    return result


async def abandon_one(port: int, head: bytes, body: bytes, timeout: float) -> tuple[str, float]:
    """Send one request and close without reading. Returns ('' or the error, close time)."""
    writer: asyncio.StreamWriter | None = None
    error = ""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(HOST, port)
            await send_request(writer, head, body)
    except TimeoutError:
        error = "send timeout"
    except OSError as exc:
        error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(5):
                    await writer.wait_closed()
            except (TimeoutError, OSError):
                writer.transport.abort()
    return error, time.monotonic()


def abandon_case(args: argparse.Namespace, rows: int, length: int, body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = {"clients": args.abandon_clients, "body_bytes": len(body), "windows": []}
    with Server(args, "abandon") as server:
        monitor = server.monitor
        head, before, client0, started = start_case(server, body, result, args.idle_timeout)

        async def all_clients() -> list[tuple[str, float]]:
            return await asyncio.gather(
                *(
                    abandon_one(server.port, head, body, args.client_timeout)
                    for _ in range(args.abandon_clients)
                )
            )

        sent = run_async(all_clients())
        last_close = max(t for _, t in sent)
        errors = Counter(e for e, _ in sent if e)
        result["sent_ok"] = sum(1 for e, _ in sent if not e)
        result["send_errors"] = " ".join(f"{k}:{v}" for k, v in errors.most_common()) or "-"
        result["send_s"] = last_close - started
        result["client_cpu_s"] = own_cpu() - client0
        window_end = last_close + args.abandon_window
        while time.monotonic() < window_end and monitor.alive():
            time.sleep(0.1)
        time.sleep(2 * args.sample_interval)  # a sample past the window's end
        result["server_cpu_send_s"] = monitor.cpu_between(started, last_close)
        result["server_cpu_window_s"] = monitor.cpu_between(last_close, window_end)
        result["metrics_at_window_end"] = scrape(server.port)
        idle_at = monitor.find_idle(last_close)
        result["idle_within_window"] = idle_at is not None and idle_at + IDLE_WINDOW_S <= window_end
        if idle_at is None:
            idle_at, result["idle_note"] = run_async(wait_idle(server, last_close, args.abandon_wait))
        else:
            result["idle_note"] = ""
        result["idle_after_s"] = (idle_at - last_close) if idle_at is not None else None
        result["server_cpu_until_idle_s"] = monitor.cpu_between(last_close, idle_at or time.monotonic())
        result["rss_peak"] = monitor.rss_max(started, time.monotonic())
        result["hwm"] = monitor.hwm()
        result["rss_end"] = monitor.rss_now()
        result["server_statuses"] = status_diff(before, scrape(server.port))
        result["problem"] = server.problem()
        result["windows"].append(("abandon", "sending", started, last_close))
        result["windows"].append(("abandon", f"{args.abandon_window:g} s after", last_close, window_end))
        print(
            f"abandon: {result['sent_ok']}/{args.abandon_clients} sent in {result['send_s']:.1f} s, "
            f"server CPU {result['server_cpu_window_s']:.1f} s in the {args.abandon_window:g} s after, "
            f"idle {'yes' if result['idle_within_window'] else 'no'} within it {result['problem']}",
            flush=True,
        )
    result["probes"], result["prober_cpu_s"] = server.probes, server.prober_cpu
    return result


# --------------------------------------------------------------------------- machine, report


def machine_info() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    source = np.ones(256 * 2**20 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    del source, target
    memory = psutil.virtual_memory()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "nproc": nproc,
        "memory_gib": memory.total / 2**30,
        "available_gib": memory.available / 2**30,
        "copy_gbs": 256 * 2**20 / best / 1e9,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def mib(value: float | None) -> str:
    return f"{value / 2**20:.0f}" if value else "-"


def ms(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "fail"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def probe_rows(windows: Iterable[tuple[str, str, float, float]], probes: dict[str, list[Any]]) -> list[str]:
    rows = []
    for phase, window, start, end in windows:
        cells = []
        p99s = []
        for mode in ("new", "keepalive"):
            picked = [(lat, err) for t, lat, err in probes.get(mode, []) if start <= t < end]
            if not picked:
                cells.append("- | - | - | -")
                continue
            latencies = np.array([lat if not err else math.inf for lat, err in picked]) * 1e3
            errors = Counter(err for _, err in picked if err)
            fails = " ".join(f"{k}:{v}" for k, v in errors.most_common()) or "0"
            p50 = float(np.percentile(latencies, 50, method="higher"))
            p99s.append(float(np.percentile(latencies, 99, method="higher")))
            cells.append(
                f"{len(picked)} | {ms(p50)} / {ms(p99s[-1])} / {ms(float(latencies.max()))} | {fails}"
            )
        verdict = ("met" if max(p99s) < 100 else "**NOT met**") if p99s else "-"
        rows.append(f"| {phase} | {window} | {end - start:.1f} | {cells[0]} | {cells[1]} | {verdict} |")
    return rows


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; a header ending in '>' is right-aligned (the '>' is dropped)."""
    names = [h.removesuffix(">") for h in headers]
    aligns = ["---:" if h.endswith(">") else "---" for h in headers]
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join(aligns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def settings_lines(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    rows, length = args.shape
    serve = f"python -m app serve --host {HOST} --port P --device {args.device}"
    env = " ".join(f"{k}={v}" for k, v in args.env.items()) or "defaults"
    levels = ", ".join(f"{f:g}x" for f in args.levels)
    base = f"{args.capacity:g} req/s (given by --capacity)" if args.capacity else "the measured capacity"
    return [
        f"- server: `{serve}` run in `{args.repo}` (`app` resolved to `{results['app_path']}`), "
        f"commit {results['git']}",
        f"- server settings: {env} (CONVEWMA_LOG_LEVEL=warning; inherited CONVEWMA_* variables removed)",
        f"- request shape {rows} x {length} ({results['sweep_body_bytes'] / 1e6:.2f} MB of JSON, "
        f"random walks as float64 text); max/abandon bodies {args.max_shape[0]} x {args.max_shape[1]} / "
        f"{args.abandon_shape[0]} x {args.abandon_shape[1]} "
        f"({results.get('big_body_bytes', 0) / 1e6:.1f} MB)",
        f"- capacity: closed loop, concurrency {args.capacity_concurrency}, {args.capacity_duration:g} s "
        f"after {args.warmup:g} s of warm-up",
        f"- sweep: {args.arrivals} arrivals at {levels} of {base}, {args.duration:g} s each; client timeout "
        f"{args.client_timeout:g} s; at most {args.max_outstanding} outstanding",
        f"- idle: server CPU < {IDLE_CPU_SHARE:.0%} of a core for {IDLE_WINDOW_S:g} s, then /metrics queue "
        f"depth = batches in flight = 0 (waited at most {args.idle_timeout:g} s)",
        f"- probes: GET /healthz every {args.probe_interval * 1e3:g} ms on a new connection and, "
        f"separately, on one keep-alive connection, {args.probe_timeout:g} s timeout, from their own process",
        f"- RSS guard {args.rss_limit_mb} MiB (the server is killed above it); server log `{args.log}`",
    ]


def machine_line(machine: dict[str, Any], results: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['cpus']} CPUs (nproc {machine['nproc']}), "
        f"{machine['memory_gib']:.1f} GiB RAM ({machine['available_gib']:.1f} available), numpy copy "
        f"of 256 MiB: {machine['copy_gbs']:.2f} GB/s, load average {machine['loadavg']} at start and "
        f"{results['loadavg_end']} at end; Python {machine['python']}, kernel {machine['kernel']}. "
        "The load client and the prober share these cores with the server."
    )


def sweep_lines(args: argparse.Namespace, sweep: dict[str, Any]) -> list[str]:
    rows, length = args.shape
    out = ["", "## Capacity", ""]
    cap = sweep.get("capacity")
    if cap:
        out += md_table(
            [
                "req/s>",
                "input Mvalues/s>",
                "p50 ms>",
                "p99 ms>",
                "statuses",
                "answer check",
                "server CPU s>",
                "client CPU s>",
            ],
            [
                [
                    f"{cap['rps']:.1f}",
                    f"{cap['values_per_s'] / 1e6:.2f}",
                    ms(cap["p50_ms"]),
                    ms(cap["p99_ms"]),
                    status_text(cap),
                    cap["check"],
                    f"{cap['server_cpu_s']:.1f}",
                    f"{cap['client_cpu_s']:.1f}",
                ]
            ],
        )
    levels: list[Level] = sweep["levels"]
    if levels:
        load_rows, recovery_rows = [], []
        for level in levels:
            s = summarise(level.outcomes)
            c = s["counts"]
            good = sum(1 for o in level.outcomes if o.code == 200 and o.done <= level.stop) / level.duration
            shed = c["503"] / s["sent"] if s["sent"] else 0.0
            load_rows.append(
                [
                    level.name,
                    f"{level.scheduled / level.duration:.1f}",
                    str(s["sent"]),
                    str(level.capped),
                    f"{good:.1f}",
                    f"{good * rows * length / 1e6:.2f}",
                    ms(s["p50_ms"]),
                    ms(s["p99_ms"]),
                    *(str(c[str(code)]) for code in NAMED_STATUSES),
                    s["other"],
                    str(s["timeouts"]),
                    s["transport"],
                    f"{shed:.0%}",
                    ms(level.lag_p99_ms),
                ]
            )
            idle = f"{level.idle_at - level.stop:.1f}" if level.idle_at is not None else "not idle"
            recovery_rows.append(
                [
                    level.name,
                    idle,
                    f"{level.server_cpu_load_s:.1f}",
                    f"{level.server_cpu_after_s:.1f}",
                    str(level.outstanding_at_idle),
                    f"{max((o.done for o in level.outcomes), default=level.stop) - level.stop:.1f}",
                    f"{mib(level.rss_peak)} / {mib(level.hwm)}",
                    f"{level.client_cpu_s:.1f}",
                    str(level.connections),
                    level.server_statuses,
                    level.problem or level.idle_note,
                ]
            )
        out += [
            "",
            "## Offered-load sweep",
            "",
            "Goodput counts the 200s answered inside the sending window; latency runs from the scheduled "
            "arrival; shed = share of sent requests answered 503; capped = arrivals not sent because "
            f"{args.max_outstanding} were outstanding; lag = how late the client sent them (p99).",
            "",
        ]
        out += md_table(
            [
                "level",
                "offered req/s>",
                "sent>",
                "capped>",
                "goodput req/s>",
                "goodput Mvalues/s>",
                "p50 ms>",
                "p99 ms>",
                *(f"{code}>" for code in NAMED_STATUSES),
                "other",
                "client timeouts>",
                "transport errors",
                "shed>",
                "lag ms>",
            ],
            load_rows,
        )
        out += [
            "",
            "Recovery and resources per level (after stop = from the end of the sending window; idle as "
            "defined above):",
            "",
        ]
        out += md_table(
            [
                "level",
                "idle after stop s>",
                "server CPU s under load>",
                "server CPU s after stop>",
                "client requests left at idle>",
                "last client answer after stop s>",
                "peak RSS MiB (sampled / VmHWM)",
                "client CPU s>",
                "connections>",
                "server's /smooth statuses",
                "note",
            ],
            recovery_rows,
        )
    out += [
        "",
        f"Server RSS: {mib(sweep.get('rss_start'))} MiB when ready, {mib(sweep.get('rss_idle_before'))} "
        f"MiB idle before the sweep (after warm-up), {mib(sweep.get('rss_idle_after'))} MiB idle after "
        f"it; VmHWM of the last level {mib(sweep.get('hwm_end'))} MiB. Ready after "
        f"{sweep.get('ready_s', 0):.1f} s. Prober CPU {sweep.get('prober_cpu_s', 0):.1f} s.",
    ]
    if sweep.get("problem"):
        out += ["", f"**Problem:** {sweep['problem']}"]
    return out


def max_lines(args: argparse.Namespace, big: dict[str, Any]) -> list[str]:
    out = [
        "",
        "## Maximum request",
        "",
        f"{big['clients']} clients at once, each with one {args.max_shape[0]} x {args.max_shape[1]} "
        f"request ({big['body_bytes'] / 1e6:.1f} MB body).",
        "",
    ]
    return out + md_table(
        [
            "statuses",
            "latencies s",
            "wall s>",
            "server CPU s>",
            "idle after s>",
            "RSS idle before MiB>",
            "peak RSS MiB (sampled / VmHWM)",
            "RSS idle after MiB>",
            "client CPU s>",
            "server's statuses",
            "note",
        ],
        [
            [
                status_text(big),
                ", ".join(map(str, big["latencies_s"])),
                f"{big['wall_s']:.1f}",
                f"{big['server_cpu_s']:.1f}",
                fmt_s(big["idle_after_s"]),
                mib(big["rss_idle_before"]),
                f"{mib(big['rss_peak'])} / {mib(big['hwm'])}",
                mib(big["rss_idle_after"]),
                f"{big['client_cpu_s']:.1f}",
                big["server_statuses"],
                big["problem"] or big["idle_note"],
            ]
        ],
    )


def abandon_lines(args: argparse.Namespace, gone: dict[str, Any]) -> list[str]:
    metrics = gone.get("metrics_at_window_end")
    queue = (
        f"depth {metrics.get('convewma_queue_depth', math.nan):.0f}, in flight "
        f"{metrics.get('convewma_batches_in_flight', math.nan):.0f}"
        if metrics
        else "/metrics unanswered"
    )
    out = [
        "",
        "## Abandoned requests",
        "",
        f"{gone['clients']} clients each send one {args.abandon_shape[0]} x {args.abandon_shape[1]} "
        f"request ({gone['body_bytes'] / 1e6:.1f} MB) and close the socket without reading.",
        "",
    ]
    return out + md_table(
        [
            "sent / errors",
            "sending s>",
            "server CPU s while sending>",
            f"server CPU s in the {args.abandon_window:g} s after the last close>",
            "queue at its end",
            "idle within it",
            "idle after last close s>",
            "server CPU s until idle>",
            "peak RSS MiB (sampled / VmHWM)",
            "RSS at end MiB>",
            "client CPU s>",
            "server's statuses",
            "note",
        ],
        [
            [
                f"{gone['sent_ok']} / {gone['send_errors']}",
                f"{gone['send_s']:.1f}",
                f"{gone['server_cpu_send_s']:.1f}",
                f"{gone['server_cpu_window_s']:.1f}",
                queue,
                "yes" if gone["idle_within_window"] else "no",
                fmt_s(gone["idle_after_s"]),
                f"{gone['server_cpu_until_idle_s']:.1f}",
                f"{mib(gone['rss_peak'])} / {mib(gone['hwm'])}",
                mib(gone["rss_end"]),
                f"{gone['client_cpu_s']:.1f}",
                gone["server_statuses"],
                gone["problem"] or gone["idle_note"],
            ]
        ],
    )


def report(args: argparse.Namespace, machine: dict[str, Any], results: dict[str, Any]) -> str:
    out = [
        f"# Overload benchmark{f': {args.label}' if args.label else ''}",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Command: `{results['command']}`",
        "",
        "## Settings",
        "",
        *settings_lines(args, results),
        "",
        "## Machine",
        "",
        machine_line(machine, results),
    ]
    if results.get("sweep"):
        out += sweep_lines(args, results["sweep"])
    if results.get("max"):
        out += max_lines(args, results["max"])
    if results.get("abandon"):
        out += abandon_lines(args, results["abandon"])
    out += [
        "",
        "## Health probes",
        "",
        "GET /healthz latency in ms, p50 / p99 / max (a failure counts as infinitely slow), by the "
        "window the probe started in. Each kind of probe waits for its answer before the next, so a "
        "stalled server shows as fewer, slower probes. Target: p99 < 100 ms while saturated.",
        "",
        "| case | window | s | new conn: n | p50 / p99 / max | failures | keep-alive: n | "
        "p50 / p99 / max | failures | p99 < 100 ms |",
        "|---|---|---:|---:|---|---|---:|---|---|---|",
    ]
    for name in CASES:
        case = results.get(name)
        if case:
            out += probe_rows(case["windows"], case["probes"])
    out += [
        "",
        f"Client CPU over the whole run: {results['client_cpu_s']:.1f} s (load client) + prober "
        f"processes {sum(results[c].get('prober_cpu_s', 0.0) for c in CASES if c in results):.1f} s, "
        f"in {results['wall_s']:.0f} s of wall time.",
        "",
        f"Server log: {results['log_summary']}",
        "",
    ]
    return "\n".join(out)


def status_text(summary: dict[str, Any]) -> str:
    parts = [f"{code}:{n}" for code, n in summary["counts"].items() if n]
    if summary["other"] != "-":
        parts.append(summary["other"])
    if summary["timeouts"]:
        parts.append(f"timeout:{summary['timeouts']}")
    if summary["transport"] != "-":
        parts.append(summary["transport"])
    return " ".join(parts) or "-"


def fmt_s(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "not idle"


def log_summary(path: Path, since: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
    except OSError:
        return "unreadable"
    lines = text.splitlines()
    errors = sum(1 for line in lines if "ERROR" in line or "Traceback" in line)
    return f"{len(lines)} lines, {errors} with ERROR or Traceback (`{path}`)"


def jsonable(value: Any) -> Any:
    if isinstance(value, Level):
        data = asdict(value)
        data["summary"] = summarise(value.outcomes)
        data["outcomes"] = [(round(o.due, 4), round(o.latency, 4), o.code, o.error) for o in value.outcomes]
        return data
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repo", type=Path, default=ROOT, help="checkout whose server to run (default: this one)"
    )
    parser.add_argument("--label", default="", help="names the run and its report (e.g. before, after)")
    parser.add_argument(
        "--report", type=Path, help="Markdown report (default benchmarks/results/overload-cpu[-LABEL].md)"
    )
    parser.add_argument("--json", type=Path, help="raw results (default: the report's path with .json)")
    parser.add_argument("--log", type=Path, help="server log (default /tmp/convewma-overload[-LABEL].log)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--env", action="append", default=[], metavar="CONVEWMA_X=VALUE", help="server setting (repeatable)"
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument(
        "--shape", type=parse_shape, default="large", help="small/medium/large or ROWSxLENGTH"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="s of closed-loop warm-up before capacity")
    parser.add_argument("--capacity-concurrency", type=int, default=8)
    parser.add_argument("--capacity-duration", type=float, default=5.0)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0], help="x capacity")
    parser.add_argument(
        "--capacity",
        type=float,
        help="req/s that 1x means, instead of the measured capacity (to offer two checkouts the same load)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="s of arrivals per level")
    parser.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    parser.add_argument("--client-timeout", type=float, default=35.0)
    parser.add_argument("--max-outstanding", type=int, default=512)
    parser.add_argument("--max-requests", type=int, default=20_000, help="arrivals per level at most")
    parser.add_argument(
        "--idle-timeout", type=float, default=120.0, help="longest wait for idle after a level"
    )
    parser.add_argument("--probe-interval", type=float, default=0.05)
    parser.add_argument("--probe-timeout", type=float, default=5.0)
    parser.add_argument("--sample-interval", type=float, default=0.1, help="s between CPU/RSS samples")
    parser.add_argument("--body-limit", type=int, default=64 * 2**20, help="the server's body limit in bytes")
    parser.add_argument("--max-shape", type=parse_shape, default="640x10000")
    parser.add_argument("--max-clients", type=int, default=4)
    parser.add_argument("--abandon-shape", type=parse_shape, default="640x10000")
    parser.add_argument("--abandon-clients", type=int, default=50)
    parser.add_argument("--abandon-window", type=float, default=10.0, help="s watched after the last close")
    parser.add_argument("--abandon-wait", type=float, default=60.0, help="longest wait for idle after it")
    parser.add_argument(
        "--rss-limit-mb", type=int, help="kill the server above this RSS (default: half of free)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="short everything: a smoke test")
    args = parser.parse_args()

    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.quick:
        args.warmup, args.capacity_duration, args.duration = 1.0, 2.0, 2.0
        args.max_clients = min(args.max_clients, 2)
        args.abandon_clients = min(args.abandon_clients, 8)
        args.abandon_window, args.abandon_wait = min(args.abandon_window, 3.0), min(args.abandon_wait, 20.0)
        args.idle_timeout = min(args.idle_timeout, 60.0)
    suffix = f"-{args.label}" if args.label else ""
    if args.report is None:
        args.report = (
            Path(f"/tmp/convewma-overload-quick{suffix}.md")
            if args.quick
            else ROOT / "benchmarks" / "results" / f"overload-cpu{suffix}.md"
        )
    args.json = args.json or args.report.with_suffix(".json")
    args.log = args.log or Path(f"/tmp/convewma-overload{suffix}.log")
    args.repo = args.repo.resolve()
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("CONVEWMA_"):
            parser.error(f"--env takes CONVEWMA_NAME=VALUE, got {item!r}")
        env[key] = value
    args.env = env
    if "CONVEWMA_MAX_BODY_BYTES" in env:
        args.body_limit = int(env["CONVEWMA_MAX_BODY_BYTES"])
    machine = machine_info()
    if args.rss_limit_mb is None:
        args.rss_limit_mb = int(machine["available_gib"] * 1024 / 2)

    run_started = time.monotonic()
    results: dict[str, Any] = {
        "command": f"python benchmarks/bench_overload.py {argv}".strip(),
        "app_path": check_repo(args),
        "git": git_info(args.repo),
    }
    log_start = args.log.stat().st_size if args.log.exists() else 0
    rows, length = args.shape
    body = sweep_body(rows, length, args.seed)
    results["sweep_body_bytes"] = len(body)
    print(
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, copy {machine['copy_gbs']:.2f} GB/s, "
        f"load {machine['loadavg']}; server from {results['app_path']} ({results['git']})",
        flush=True,
    )
    if "sweep" in args.cases:
        results["sweep"] = sweep_case(args, rows, length, body)
    bodies: dict[tuple[int, int], bytes] = {}
    for case, shape, run_case in (
        ("max", args.max_shape, max_case),
        ("abandon", args.abandon_shape, abandon_case),
    ):
        if case in args.cases:
            big_rows, big_length = shape
            if shape not in bodies:
                bodies[shape] = big_body(big_rows, big_length, args.body_limit, args.seed)
            results["big_body_bytes"] = len(bodies[shape])
            results[case] = run_case(args, big_rows, big_length, bodies[shape])
    results["client_cpu_s"] = own_cpu()
    results["wall_s"] = time.monotonic() - run_started
    results["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["log_summary"] = log_summary(args.log, log_start)
    text = report(args, machine, results)
    print(text)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    raw = {"machine": machine, "args": jsonable(vars(args)), **jsonable(results)}
    args.json.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"report: {args.report}, raw results: {args.json}", flush=True)


if __name__ == "__main__":
    main()
