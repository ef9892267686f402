"""The service on its own (the shipped model on the CPU): what runs on the event loop and
what waits for the codec thread, the memory each parsed request holds, the deadline
around codec work, and the heap trim once idle. Values against tests/reference.py."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
import pytest
import torch

from app.api.schemas import RequestError, SmoothJob
from app.serving.admission import StandingQueue
from app.serving.batcher import BatcherClosedError, BatchLimits
from app.serving.budget import MemoryBudget, Reservation
from app.serving.intake import Deadline, ServerBusyError
from app.serving.metrics import ServiceMetrics
from app.serving.options import SmoothOptions
from app.serving.service import INLINE_BYTES, INLINE_VALUES, SmoothingService, resolve_device
from app.serving.settings import Settings
from tests.api.test_real_world import TOLERANCE  # the API's own, against the float64 reference
from tests.reference import (
    SHIPPED_WEIGHTS,
    continuation_reference,
    max_relative_error,
    pandas_equivalents,
    read_weights_file,
    smooth_reference,
)

pytestmark = pytest.mark.anyio

SHIPPED = read_weights_file(SHIPPED_WEIGHTS)
ALPHAS = SHIPPED.alphas
K = SHIPPED.kernel_size
C = len(SHIPPED.channels)
MiB = 1 << 20
ENCODE = 2 * MiB  # two response chunks of 1 MiB (the budget's rule, benchmarks/README.md)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def started(**overrides: Any) -> SmoothingService:
    service = SmoothingService(Settings(device="cpu", **overrides), ServiceMetrics())
    await service.start()
    return service


@pytest.fixture
async def service() -> AsyncIterator[SmoothingService]:
    service = await started()
    yield service
    await service.stop()


class Blocked:
    """Holds the codec thread until released (a 10 s bound), as a long parse would."""

    def __init__(self, service: SmoothingService) -> None:
        self.gate = threading.Event()
        self.running = threading.Event()
        self.done = service.codec.submit(0.0, self._hold)
        assert self.running.wait(5)

    def _hold(self) -> None:
        self.running.set()
        self.gate.wait(10)

    def release(self) -> None:
        self.gate.set()
        self.done.result(timeout=10)


async def waits_for_codec(service: SmoothingService, task: asyncio.Task[Any]) -> bool:
    """With the codec thread held: True once the task has queued work for it, False if the
    task finished without (its work ran on the event loop). Bounded at 10 s."""
    for _ in range(10_000):
        if task.done():
            return False
        if service.codec.longest_wait() > 0.0:
            return True
        await asyncio.sleep(0.001)
    raise AssertionError("the task neither finished nor queued codec work within 10 s")


async def run_blocked(
    service: SmoothingService, make: Callable[[], Coroutine[Any, Any, Any]]
) -> tuple[bool, Any]:
    """``make()`` with the codec thread held: whether it had to wait for it, and its result."""
    blocked = Blocked(service)
    task = asyncio.ensure_future(make())
    try:
        waited = await waits_for_codec(service, task)
        if waited:
            assert not task.done()
    finally:
        blocked.release()
    return waited, await asyncio.wait_for(task, 10)


def padded_body(size: int) -> bytes:
    """A three-value body of exactly ``size`` bytes (whitespace before its closing brace)."""
    core = b'{"series": [[1.5, -2, 4]]'
    return core + b" " * (size - len(core) - 1) + b"}"


@pytest.mark.parametrize(("size", "threaded"), [(INLINE_BYTES, False), (INLINE_BYTES + 1, True)])
async def test_small_bodies_are_parsed_on_the_loop_and_large_ones_in_the_codec_thread(
    service, size, threaded
):
    reservation = Reservation(service.budget)
    body = padded_body(size)
    waited, job = await run_blocked(service, lambda: service.parse(body, reservation, Deadline(30.0)))
    assert waited is threaded
    assert [s.tolist() for s in job.series] == [[1.5, -2.0, 4.0]]
    # Step 2: the body, 48 bytes per possible value (2 commas + 2 closing brackets), two chunks.
    assert reservation.held == size + 4 * 48 + ENCODE
    reservation.close()


def job_of(lengths: list[int], **fields: Any) -> SmoothJob:
    rng = np.random.default_rng(sum(lengths))
    dtype = np.dtype(fields.get("dtype", "float32"))
    series = [rng.normal(5.0, 2.0, n).astype(dtype) for n in lengths]
    fields.setdefault("channels", list(range(C)))
    return SmoothJob(series=series, warmup=fields.pop("warmup", None), **fields)


def outputs(full: np.ndarray, alpha: float, warmup: str, first: int, last: int) -> np.ndarray:
    """``smooth_reference(full)[first:last]`` from only the values those outputs see: the K
    taps reach K - 1 values back (the naive reference is slow on long series)."""
    start = max(0, first - (K - 1))
    return continuation_reference(full[start:first], full[first:last], alpha, K, warmup=warmup)


def assert_smoothed(job: SmoothJob, smoothed: list[np.ndarray]) -> None:
    """Each answer row against the reference: its first 256 and last 64 outputs."""
    warmup = job.warmup or SHIPPED.warmup
    tolerance = TOLERANCE[job.dtype]
    assert len(smoothed) == len(job.series)
    for index, (series, actual) in enumerate(zip(job.series, smoothed, strict=True)):
        history = job.history[index] if job.history is not None else series[:0]
        full, first, length = np.concatenate([history, series]), len(history), len(series)
        channels = [job.channels[index]] if job.pairing == "each" else job.channels
        assert actual.shape == (len(channels), length)
        assert actual.dtype == np.dtype(job.dtype)
        for part in (slice(0, min(length, 256)), slice(max(0, length - 64), length)):
            expected = np.stack(
                [outputs(full, ALPHAS[c], warmup, first + part.start, first + part.stop) for c in channels]
            )
            assert max_relative_error(actual[:, part], expected) <= tolerance


HALF = INLINE_VALUES // 2
QUARTER = INLINE_VALUES // C


@pytest.mark.parametrize(
    ("job", "threaded"),
    [
        # Each series smoothed by one channel: the answer is as large as the input.
        (job_of([HALF, HALF], pairing="each", channels=[1, 3]), False),
        (job_of([HALF, HALF + 1], pairing="each", channels=[2, 2]), True),
        # The whole bank: C outputs per value.
        (job_of([QUARTER]), False),
        (job_of([QUARTER + 1]), True),
        (job_of([QUARTER], channels=[3, 0]), False),
        # A history counts with the series.
        (job_of([HALF], pairing="each", channels=[0], history=[np.ones(HALF, np.float32)]), False),
        (job_of([HALF], pairing="each", channels=[0], history=[np.ones(HALF + 1, np.float32)]), True),
    ],
    ids=[
        "each-at-limit",
        "each-over",
        "bank-at-limit",
        "bank-over",
        "two-channels",
        "history",
        "history-over",
    ],
)
async def test_small_results_are_built_on_the_loop_and_large_ones_in_the_codec_thread(service, job, threaded):
    reservation = Reservation(service.budget)
    waited, result = await run_blocked(service, lambda: service.smooth(job, reservation, Deadline(30.0)))
    assert waited is threaded
    assert_smoothed(job, result.smoothed)
    assert result.channels == [SHIPPED.channels[c] for c in job.channels]
    np.testing.assert_allclose(result.alphas, ALPHAS[job.channels], rtol=1e-6)
    width = 1 if job.pairing == "each" else len(job.channels)
    assert result.values == width * sum(len(s) for s in job.series)
    reservation.close()


@pytest.mark.parametrize(
    ("job", "per_value"),
    [
        # Bytes per value: the inputs (twice with a history), the C outputs, a chosen copy.
        (job_of([10, 30]), 4 * (1 + C)),
        (job_of([10, 30], channels=[2, 0]), 4 * (1 + C + 2)),
        (job_of([10, 30], channels=[1]), 4 * (1 + C + 1)),
        (job_of([10, 30], pairing="each", channels=[1, 3]), 4 * (1 + C)),  # views, no copy
        (job_of([40], pairing="each", channels=[2]), 4 * (1 + C)),
        (job_of([10, 30], dtype="float64"), 8 * (1 + C)),
        (job_of([10, 30], channels=[3], dtype="float64"), 8 * (1 + C + 1)),
        (job_of([25], history=[np.arange(15, dtype=np.float32)]), 4 * (2 + C)),
        (job_of([25], dtype="float64", channels=[0, 1], history=[np.arange(15.0)]), 8 * (2 + C + 2)),
    ],
)
async def test_a_parsed_request_holds_what_the_rest_of_its_life_needs(service, job, per_value):
    reservation = Reservation(service.budget)
    result = await service.smooth(job, reservation, Deadline(30.0))
    assert_smoothed(job, result.smoothed)
    assert reservation.held == 40 * per_value + ENCODE  # 40 values, series and history
    assert service.budget.used == reservation.held
    reservation.close()


def too_big(needed: int, capacity: int) -> str:
    return (
        f"this request needs about {needed} bytes of server memory; the limit is {capacity}: "
        "send it in smaller requests"
    )


async def test_a_request_that_can_never_fit_is_413_with_what_it_needs(service):
    body = b'{"series":[[1,2,3]]}'  # 2 commas and 2 closing brackets: at most 4 values
    with pytest.raises(RequestError) as parsing:
        await service.parse(body, Reservation(MemoryBudget(1000)), Deadline(30.0))
    assert (parsing.value.status, parsing.value.detail) == (413, too_big(len(body) + 4 * 48 + ENCODE, 1000))
    # Parsed, but its result (3 values, float64, one chosen channel) cannot fit.
    job = job_of([3], dtype="float64", channels=[1])
    needed = 3 * 8 * (1 + C + 1) + ENCODE
    with pytest.raises(RequestError) as smoothing:
        await service.smooth(job, Reservation(MemoryBudget(needed - 1)), Deadline(30.0))
    assert (smoothing.value.status, smoothing.value.detail) == (413, too_big(needed, needed - 1))


async def test_requests_without_a_warmup_share_a_batch_with_the_models_own():
    # The default is resolved before batching: the two requests have one batch key.
    service = await started(max_wait_ms=2000.0, max_batch_size=2)
    try:
        jobs = [job_of([20]), job_of([30], warmup=SHIPPED.warmup)]
        reservations = [Reservation(service.budget) for _ in jobs]
        results = await asyncio.wait_for(
            asyncio.gather(
                *(service.smooth(j, r, Deadline(30.0)) for j, r in zip(jobs, reservations, strict=True))
            ),
            10,
        )
        assert service.batcher.batches_run == 1
        for job, result in zip(jobs, results, strict=True):
            assert_smoothed(job, result.smoothed)
        for reservation in reservations:
            reservation.close()
    finally:
        await service.stop()


async def test_codec_calls_wait_for_the_codec_thread_oldest_request_first(service):
    ran: list[str] = []
    blocked = Blocked(service)
    now = time.monotonic()
    newer = asyncio.ensure_future(service.codec_call(Deadline(30.0, now), ran.append, "newer"))
    assert await waits_for_codec(service, newer)  # not inline unless asked
    older = asyncio.ensure_future(service.codec_call(Deadline(30.0, now - 1.0), ran.append, "older"))
    await asyncio.sleep(0.01)
    assert ran == []
    blocked.release()
    await asyncio.wait_for(asyncio.gather(newer, older), 10)
    assert ran == ["older", "newer"]
    assert await service.codec_call(Deadline(30.0), sum, [1, 2], inline=True) == 3


async def test_a_codec_call_past_the_deadline_never_starts(service):
    ran: list[int] = []
    with pytest.raises(TimeoutError, match=r"^request deadline passed$"):
        await service.codec_call(Deadline(1.0, time.monotonic() - 2.0), ran.append, 1)
    await asyncio.sleep(0.05)
    assert ran == []


def failing(log: list[str]) -> None:
    log.append("ran")
    raise ValueError("the call failed after the deadline")


@pytest.mark.parametrize("call", [lambda log: log.append("ran"), failing], ids=["returns", "raises"])
async def test_a_codec_call_that_outlives_the_deadline_times_out_once_it_has_returned(service, call):
    # The thread cannot be stopped: the request stays counted until its call has returned.
    blocked = Blocked(service)
    releaser = threading.Timer(0.3, blocked.gate.set)
    releaser.start()
    log: list[str] = []
    started_at = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(service.codec_call(Deadline(0.1), call, log), 10)
        assert log == ["ran"]
        assert time.monotonic() - started_at >= 0.25
    finally:
        releaser.cancel()
        blocked.release()


async def test_the_heap_is_trimmed_only_when_idle_and_open(service):
    blocked = Blocked(service)
    try:
        # Queued behind the held thread: another request's call and, if idle, the trim.
        pending = service.codec.submit(1.0, int, "7")
        ticket = service.admit()
        service._trim_if_idle()  # a request is in progress: nothing to trim
        await asyncio.sleep(0.01)
        assert service.codec._queue.qsize() == 1
        ticket.close()
        service._trim_if_idle()
        assert service.codec._queue.qsize() == 2
    finally:
        blocked.release()
    assert pending.result(timeout=10) == 7
    service.codec.shutdown()
    service._trim_if_idle()  # after shutdown: nothing submitted, nothing raised
    assert service.codec._queue.qsize() == 0


async def test_admission_counts_requests_up_to_the_concurrency_limit():
    service = await started(max_concurrency=2)
    try:
        tickets = [service.admit(), service.admit()]
        assert service.in_progress == 2
        with pytest.raises(ServerBusyError, match=r"^2 requests are in progress$"):
            service.admit()
        tickets.pop().close()
        assert service.in_progress == 1
        tickets.append(service.admit())
        for ticket in tickets:
            ticket.close()
        assert service.in_progress == 0
    finally:
        await service.stop()


async def test_admission_sheds_when_the_codec_thread_is_half_a_second_behind(service, monkeypatch):
    blocked = Blocked(service)
    now = [1000.0]
    try:
        with monkeypatch.context() as patched:  # a still clock, and no await while it is still
            patched.setattr("app.serving.workers.time.monotonic", lambda: now[0])
            service.codec.submit(1.0, int, "1")  # queued at 1000.0 behind the held thread
            now[0] = 1000.5
            ticket = service.admit()  # exactly the limit: still admitted
            now[0] = 1000.75
            with pytest.raises(ServerBusyError, match=r"^the server is 0\.8 s behind$"):
                service.admit()
        assert service.in_progress == 1
        ticket.close()
    finally:
        blocked.release()


async def test_admission_sheds_a_standing_queue_only_beside_requests_in_progress(service):
    # Every request of the last interval took longer than the target: a queue stands.
    service.standing_queue = StandingQueue(target_s=0.01, interval_s=0.0)
    service.standing_queue.observe(1.0)
    first = service.admit()  # nothing in progress: nothing to wait behind
    with pytest.raises(
        ServerBusyError, match=r"^requests are waiting longer than the server's target; retry shortly$"
    ):
        service.admit()
    assert service.in_progress == 1
    first.close()


async def test_closing_the_last_ticket_trims_the_heap_half_a_second_later(service):
    blocked = Blocked(service)
    try:
        # A queue that judges every request at once: the closed ticket reports how long
        # it took, a moment, not a standing queue.
        service.standing_queue = StandingQueue(target_s=1.0, interval_s=0.0)
        ticket, other = service.admit(), service.admit()
        assert ticket.reservation.resize(1000)
        loop = asyncio.get_running_loop()
        other.close()
        assert service._trim is None  # a request is still in progress
        ticket.close()
        assert (service.budget.used, service.in_progress) == (0, 0)
        assert not service.standing_queue.is_behind()
        trim = service._trim
        assert trim is not None
        assert trim.when() - loop.time() == pytest.approx(0.5, abs=0.05)
        service.admit().close()  # one trim is due already: not put off again
        assert service._trim is trim
        assert service.codec._queue.qsize() == 0
        await asyncio.sleep(0.6)
        assert service._trim is None
        assert service.codec._queue.qsize() == 1  # the trim, queued behind the held thread
    finally:
        blocked.release()


async def test_start_readies_the_service_and_stop_puts_everything_back(caplog):
    before = sys.getswitchinterval()
    service = SmoothingService(Settings(device="cpu"), ServiceMetrics())
    assert service.ready is False  # loaded, not yet warmed up: /readyz answers 503
    with caplog.at_level(logging.INFO, logger="convewma"):
        await service.start()
    try:
        assert service.ready
        # The loop waits at most 1 ms for the GIL held by the codec thread.
        assert sys.getswitchinterval() == pytest.approx(0.001)
        assert service.model_version == f"sha256:{hashlib.sha256(SHIPPED_WEIGHTS.read_bytes()).hexdigest()}"
        assert caplog.messages[-1] == (
            f"convewma ready: model {service.settings.weights} ({service.model_version[:19]}) on cpu"
        )
        info = {
            "model_version": service.model_version,
            "channels": ",".join(SHIPPED.channels),
            "kernel_size": str(K),
            "device": "cpu",
            "weights": str(service.settings.weights),
        }
        assert service.metrics.registry.get_sample_value("convewma_model_info", info) == 1.0
        np.testing.assert_allclose(service.alphas, ALPHAS, rtol=1e-12)
        # Warmed up: the filter constants of every warm-up mode and precision are built
        # (in inference mode, as requests use them) before the first request.
        built = {(key[0], key[1], key[3]) for key in service.model._filter_cache}
        assert built == {(w, d, True) for w in ("zeros", "adjust") for d in (torch.float32, torch.float64)}
        # The codec thread is named for thread dumps and profiles.
        assert service.codec.submit(0.0, lambda: threading.current_thread().name).result(10) == (
            "convewma-codec-0"
        )
        ticket = service.admit()
        ticket.close()
        assert service._trim is not None  # a trim is due in half a second
    finally:
        await service.stop()
    assert service.ready is False
    assert sys.getswitchinterval() == before
    assert service.codec.closed
    assert service._trim is not None
    assert service._trim.cancelled()
    with pytest.raises(BatcherClosedError):
        await service.batcher.submit([np.ones(3, np.float32)], SmoothOptions("zeros"))


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_is_cuda_when_there_is_one_and_cuda_is_refused_without(monkeypatch, cuda):
    # torch's answer is faked: the choice is the service's, whatever this machine has.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    if cuda:
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    else:
        with pytest.raises(ValueError, match=r"^CONVEWMA_DEVICE=cuda:1 but no CUDA device is available$"):
            resolve_device("cuda:1")


async def test_torch_threads_are_set_before_the_first_forward():
    threads = torch.get_num_threads()
    try:
        service = SmoothingService(Settings(device="cpu", torch_threads=1), ServiceMetrics())
        service.codec.shutdown()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


async def test_the_batcher_takes_its_limits_from_the_settings_and_reports_each_batch():
    service = await started(
        max_batch_size=7,
        max_batch_values=5000,
        max_length=5000,
        max_wait_ms=250.0,
        max_queue=12345,
        max_padding_fraction=0.5,
    )
    try:
        assert service.batcher.limits == BatchLimits(7, 5000, 0.25, 12345, 0.5)
        # Two series of different lengths share one padded batch; each gets its own
        # outputs, at every third position.
        job = job_of([10, 7], stride=3)
        reservation = Reservation(service.budget)
        result = await service.smooth(job, reservation, Deadline(30.0))
        reservation.close()
        for series, actual in zip(job.series, result.smoothed, strict=True):
            expected = np.stack([smooth_reference(series, a, K, SHIPPED.warmup, stride=3) for a in ALPHAS])
            assert actual.shape == expected.shape == (C, -(-len(series) // 3))
            assert max_relative_error(actual, expected) <= 1e-5
        registry = service.metrics.registry
        assert registry.get_sample_value("convewma_batches_total", {"outcome": "ok"}) == 1.0
        assert registry.get_sample_value("convewma_batch_series_sum") == 2.0
        assert registry.get_sample_value("convewma_batch_values_sum") == 17.0
        assert registry.get_sample_value("convewma_batch_padding_fraction_sum") == pytest.approx(3 / 20)
    finally:
        await service.stop()


async def test_the_alphas_equivalents_follow_pandas(service):
    for index, alpha in enumerate(ALPHAS):
        for name, value in pandas_equivalents(float(alpha), K).items():
            assert service.equivalents[name][index] == pytest.approx(value, rel=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {"warmup": "zeros", "gaps": "skip", "min_periods": 3, "stride": 2},
        {"warmup": "adjust", "gaps": "decay", "min_periods": 0, "stride": 1, "dtype": "float64"},
    ],
)
async def test_every_option_reaches_the_model(service, options):
    rng = np.random.default_rng(7)
    dtype = np.dtype(options.get("dtype", "float32"))
    series = rng.normal(3.0, 1.0, 60).astype(dtype)
    series[[0, 1, 7, 8, 9, 30]] = np.nan
    job = SmoothJob(series=[series], channels=[0, 3], **options)
    reservation = Reservation(service.budget)
    result = await service.smooth(job, reservation, Deadline(30.0))
    reservation.close()
    reference = {k: v for k, v in options.items() if k != "dtype"}
    expected = np.stack([smooth_reference(series, ALPHAS[c], K, **reference) for c in (0, 3)])
    (actual,) = result.smoothed
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))  # the same outputs missing
    assert max_relative_error(np.nan_to_num(actual), np.nan_to_num(expected)) <= TOLERANCE[dtype.name]


def test_the_weights_are_loaded_onto_the_services_device(monkeypatch):
    from app.serving import service as service_module

    devices: list[object] = []
    real = service_module.load_weights

    def recording(path: object, **kwargs: Any) -> Any:
        devices.append(kwargs.get("device", "not given"))
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "load_weights", recording)
    service = SmoothingService(Settings(device="cpu"), ServiceMetrics())
    assert devices == [service.device] == [torch.device("cpu")]


class HostTensor:
    """A batch as the forward thread receives it, noting how it is moved to the device."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.calls: list[tuple[object, ...]] = []

    def pin_memory(self) -> HostTensor:
        self.calls.append(("pin_memory",))
        return self

    def to(self, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls.append(("to", args, kwargs))
        return self.tensor  # no card here (none is lent): the model stays on the CPU


async def test_on_cuda_a_batch_is_pinned_and_copied_without_blocking(service):
    x = torch.tensor([[1.0, float("nan"), 3.0, 4.0]])
    options = SmoothOptions("zeros", "decay")
    expected = service.forward(x, options)
    host = HostTensor(x)
    service.device = torch.device("cuda", 0)
    smoothed = service.forward(host, options)  # type: ignore[arg-type]
    assert host.calls == [("pin_memory",), ("to", (torch.device("cuda", 0),), {"non_blocking": True})]
    torch.testing.assert_close(smoothed, expected, rtol=0, atol=0, equal_nan=True)


async def test_warm_up_runs_every_warmup_gaps_and_dtype_once_with_a_gap(service, monkeypatch):
    from app.core.ewma import GAP_MODES, WARMUP_MODES
    from app.serving.options import DTYPES

    seen: list[tuple[str, str, str, bool]] = []

    def forward(x: torch.Tensor, options: SmoothOptions) -> torch.Tensor:
        values = x
        if options.timed:  # (N, 2, T) float64: values over strictly increasing times
            assert x.dtype == torch.float64
            values, times = x[:, 0], x[:, 1]
            assert bool((times.diff(dim=-1) > 0).all())
        else:
            assert str(x.dtype) == f"torch.{options.dtype}"
        assert bool(values.isnan().any())  # the gap path
        assert bool(values.isfinite().any())  # and the plain one
        seen.append((options.warmup, options.gaps, options.dtype, options.timed))
        return x

    monkeypatch.setattr(service, "forward", forward)
    service.warm_up()
    assert sorted(seen) == sorted(
        (warmup, gaps, dtype, timed)
        for warmup in WARMUP_MODES
        for gaps in GAP_MODES
        for dtype in DTYPES
        for timed in (False, True)
    )
