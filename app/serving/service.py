"""The long-lived state of one server process: model on its device, batcher, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from app.api.jsoncodec import count_values_upper_bound, parse_smooth_body
from app.api.schemas import RequestLimits, SmoothJob
from app.core.ewma import GAP_MODES, WARMUP_MODES, equivalents
from app.core.weights import LoadedModel, load_weights
from app.serving.admission import StandingQueue
from app.serving.batcher import BatchLimits, MicroBatcher
from app.serving.budget import MemoryBudget, Reservation, parse_bytes, result_bytes
from app.serving.intake import Deadline, ServerBusyError, reserve
from app.serving.metrics import ServiceMetrics
from app.serving.options import DTYPES, SmoothOptions
from app.serving.results import Reach, SmoothResult, finish, options_for, padded_times, rows_of
from app.serving.runtime import release_free_memory, tune_allocator
from app.serving.settings import Settings
from app.serving.workers import OldestFirstPool

T = TypeVar("T")
# Bodies and results up to this size are parsed and encoded on the event loop: a thread
# hop costs more than the work, and the loop stalls at most about a millisecond.
INLINE_BYTES = 128 * 1024
INLINE_VALUES = 16 * 1024
SWITCH_INTERVAL_S = 0.001  # GIL hand-over interval while serving (benchmarks/README.md)
# Work queued for the codec thread longer than this means the server is saturated.
BACKLOG_LIMIT_S = 0.5
TRIM_DELAY_S = 0.5  # a heap trim runs this long after the last request ends, if none began

__all__ = ["SmoothResult", "SmoothingService", "Ticket"]  # SmoothResult: app.serving.results


class Ticket:
    """A request admitted to the service: its place among ``max_concurrency`` and its
    memory reservation. ``close`` (exactly once, after the last byte) gives both back."""

    def __init__(self, service: SmoothingService) -> None:
        self.service = service
        self.reservation = Reservation(service.budget)
        self.started = time.monotonic()

    def close(self) -> None:
        self.reservation.close()
        self.service._ticket_closed(time.monotonic() - self.started)


logger = logging.getLogger("convewma")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CONVEWMA_DEVICE={name} but no CUDA device is available")
    return device


class SmoothingService:
    """Built by the lifespan: loads, warms up, then owns the batcher until shutdown."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        if settings.tune_allocator:
            tune_allocator()
        if settings.torch_threads:
            # Before the first forward: each thread (the batcher's too) takes this setting
            # at its first parallel op. The forward shares the cores with the event loop
            # and the codec thread (benchmarks/results/threads-cpu.md).
            torch.set_num_threads(settings.torch_threads)
        self.budget = MemoryBudget(settings.max_inflight_bytes)
        self.in_progress = 0
        self.standing_queue = StandingQueue()
        self._trim: asyncio.TimerHandle | None = None
        self._switch_interval = sys.getswitchinterval()
        # Parsing and encoding run here, off the event loop; each call they make holds
        # the GIL only briefly (app/api/jsoncodec.py), so probes keep answering. One thread:
        # a second only adds GIL contention (both are CPU-bound under the GIL).
        self.codec = OldestFirstPool(workers=1, name="convewma-codec")
        self.device = resolve_device(settings.device)
        self.loaded: LoadedModel = load_weights(settings.weights, device=self.device)
        self.model = self.loaded.model
        self.channels = self.loaded.card.channels
        self.model_version = f"sha256:{self.loaded.sha256}"
        with torch.inference_mode():
            # In float64, as float64 requests use them: the kernel's first tap is alpha itself.
            first_taps = self.model.kernel(torch.float64, normalize=False)[:, 0]
            self.alphas = [float(a) for a in first_taps.cpu().tolist()]
        kernel_size = self.model.kernel_size
        # pandas' span, halflife and com and the truncated kernel mass, each a list in channel order
        self.equivalents = {
            name: [equivalents(alpha, kernel_size)[name] for alpha in self.alphas]
            for name in ("span", "halflife", "com", "truncated_mass")
        }
        self.reach = Reach(kernel_size, self.model.dilation)
        self.batcher: MicroBatcher[SmoothOptions] = MicroBatcher(
            self.forward,
            BatchLimits(
                max_batch_size=settings.max_batch_size,
                max_batch_values=settings.max_batch_values,
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue_values=settings.max_queue,
                max_padding_fraction=settings.max_padding_fraction,
            ),
            on_batch=metrics.observe_batch,
            output_length=SmoothOptions.output_length,
        )
        metrics.model.info(
            {
                "model_version": self.model_version,
                "channels": ",".join(self.channels),
                "kernel_size": str(self.model.kernel_size),
                "device": str(self.device),
                "weights": str(settings.weights),
            }
        )

    def forward(self, x: torch.Tensor, options: SmoothOptions) -> torch.Tensor:
        """(N, T) on the CPU (NaN = missing), or (N, 2, T) float64 values and times, to
        (N, C, ceil(T / stride)) on the CPU, in the options' dtype; runs in the batcher's thread."""
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        times = None
        if options.timed:
            x, times = x[:, 0].to(getattr(torch, options.dtype)), padded_times(x[:, 1])
        smoothed: torch.Tensor = self.model(
            x,
            options.warmup,
            gaps=options.gaps,
            min_periods=options.min_periods,
            stride=options.stride,
            times=times,
            max_gap=options.max_gap,
        )
        return smoothed.cpu()

    def warm_up(self) -> None:
        # Every path a request can take (each builds and caches its own constants).
        with torch.inference_mode():
            for warmup in WARMUP_MODES:
                for gaps in GAP_MODES:
                    for dtype in DTYPES:
                        x = torch.zeros(2, 64, dtype=getattr(torch, dtype))
                        x[0, 3] = float("nan")
                        options = SmoothOptions(warmup, gaps, dtype=dtype)  # type: ignore[arg-type]
                        self.forward(x, options)
                        timed = torch.stack([x.double(), torch.arange(64.0).expand(2, 64)], dim=1)
                        self.forward(timed, replace(options, timed=True))

    async def start(self) -> None:
        # The event loop needs the GIL for every socket read; with the codec thread
        # holding it, it waits up to a whole switch interval each time (5 ms by default).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.warm_up()
        await self.batcher.start()
        self.ready = True
        logger.info(
            "convewma ready: model %s (%s) on %s", self.settings.weights, self.model_version[:19], self.device
        )

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        if self._trim is not None:
            self._trim.cancel()
        self.codec.shutdown()
        sys.setswitchinterval(self._switch_interval)

    def admit(self) -> Ticket:
        """A ticket for one ``/smooth`` request, or ``ServerBusyError`` (a fast 503)."""
        if self.in_progress >= self.settings.max_concurrency:
            raise ServerBusyError(f"{self.in_progress} requests are in progress")
        # Admitting more would only make every request later (goodput would fall): shed
        # at once, before reading the body, until the backlog is worked off.
        behind = self.codec.longest_wait()
        if behind > BACKLOG_LIMIT_S:
            raise ServerBusyError(f"the server is {behind:.1f} s behind")
        if self.in_progress and self.standing_queue.is_behind():
            raise ServerBusyError("requests are waiting longer than the server's target; retry shortly")
        self.in_progress += 1
        return Ticket(self)

    def _ticket_closed(self, took_s: float) -> None:
        self.in_progress -= 1
        self.standing_queue.observe(took_s)
        if self.in_progress == 0 and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        # After a burst the heap holds its peak; give it back once nothing is in flight.
        self._trim = None
        if self.in_progress == 0 and not self.codec.closed:
            self.codec.submit(math.inf, release_free_memory)

    async def codec_call(
        self, deadline: Deadline, fn: Callable[..., T], *args: object, inline: bool = False
    ) -> T:
        """``fn(*args)`` in the codec thread, the oldest request first, waiting at most until
        ``deadline``; on the event loop itself when ``inline`` (small work: a thread hop
        would cost more)."""
        if inline:
            return fn(*args)
        timeout = deadline.check()
        future = asyncio.wrap_future(self.codec.submit(deadline.started, fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (asyncio.CancelledError, TimeoutError):
            # A thread cannot be stopped: the request's memory stays counted (its ticket
            # open) until the call it started has returned; a parse ends within a second.
            with contextlib.suppress(BaseException):
                await future
            raise

    async def parse(self, body: bytes, reservation: Reservation, deadline: Deadline) -> SmoothJob:
        """Budget step 2 for a read body, then the body parsed and every field checked."""
        inline = len(body) <= INLINE_BYTES
        # About 0.4 ms per MiB: off the loop too, unless the body is small.
        values_bound = await self.codec_call(deadline, count_values_upper_bound, body, inline=inline)
        needed = parse_bytes(len(body), values_bound, len(self.channels))
        if b'times"' in body or b"\\u" in body:  # (a key may also be spelt with escapes)
            # RFC 3339 strings become Python strings while their list is read: about three
            # times their bytes in the body, beyond what a number costs.
            needed += 3 * len(body)
        reserve(reservation, needed, self._too_big(needed, reservation))
        limits = RequestLimits(self.settings.max_series, self.settings.max_length)
        return await self.codec_call(deadline, parse_smooth_body, body, limits, self.channels, inline=inline)

    async def smooth(
        self, job: SmoothJob, reservation: Reservation, deadline: Deadline, held: int = 0
    ) -> SmoothResult:
        """Defaults, history, batching, channels and output checks for one parsed request;
        ``held``: bytes the caller keeps beside the job until the response is sent (a
        binary body whose tensors the series are views of, the response it encodes)."""
        options = options_for(job, self.model.kernel_size, self.model.warmup)
        values = sum(len(s) for s in job.series) + sum(len(h) for h in job.history or ())
        rows = await self.codec_call(deadline, rows_of, job, inline=values <= INLINE_VALUES)
        model_channels = len(self.channels)
        # Pairing each takes a view of one channel; a choice of channels is a copy of them.
        copied = model_channels if job.pairing == "each" else len(job.channels)
        itemsize = np.dtype(options.numpy_dtype).itemsize
        inputs = 1 if job.history is None else 2
        if options.timed:  # the times, and the (2, T) float64 rows of values and times
            inputs += -(-3 * 8 // itemsize)
        needed = result_bytes(values, model_channels, copied, itemsize, inputs=inputs) + held
        # Less than step 2 held, except for float64 or a history: then it may take more.
        reserve(reservation, needed, self._too_big(needed, reservation))
        left = deadline.check()  # before submit(): a coroutine made and never awaited warns
        outputs = await asyncio.wait_for(self.batcher.submit(rows, options), left)
        width = 1 if job.pairing == "each" else len(job.channels)
        smoothed, (history, history_times) = await self.codec_call(
            deadline,
            finish,
            outputs,
            rows,
            job,
            options,
            self.reach,
            model_channels,
            inline=values * width <= INLINE_VALUES,
        )
        return SmoothResult(
            smoothed=smoothed,
            channels=[self.channels[c] for c in job.channels],
            alphas=[self.alphas[c] for c in job.channels],
            model_version=self.model_version,
            values=sum(block.size for block in smoothed),
            history=history,
            history_times=history_times,
        )

    @staticmethod
    def _too_big(needed: int, reservation: Reservation) -> str:
        return (
            f"this request needs about {needed} bytes of server memory; the limit is "
            f"{reservation.budget.capacity}: send it in smaller requests"
        )
