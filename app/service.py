"""The long-lived state of one server process: model on its device, batcher, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from app.admission import StandingQueue
from app.batcher import BatchLimits, MicroBatcher
from app.budget import MemoryBudget, Reservation, parse_bytes, result_bytes
from app.intake import Deadline, ServerBusyError, reserve
from app.jsoncodec import count_values_upper_bound, parse_smooth_body
from app.metrics import ServiceMetrics
from app.runtime import release_free_memory, tune_allocator
from app.schemas import RequestError, RequestLimits
from app.settings import Settings
from app.weights import LoadedModel, load_weights
from app.workers import OldestFirstPool

T = TypeVar("T")
# Bodies and results up to this size are parsed and encoded on the event loop: a thread
# hop costs more than the work, and the loop stalls at most about a millisecond.
INLINE_BYTES = 128 * 1024
INLINE_VALUES = 16 * 1024
SWITCH_INTERVAL_S = 0.001  # GIL hand-over interval while serving (benchmarks/README.md)
# Work queued for the codec thread longer than this means the server is saturated.
BACKLOG_LIMIT_S = 0.5
TRIM_DELAY_S = 0.5  # a heap trim runs this long after the last request ends, if none began


@dataclass(frozen=True)
class SmoothResult:
    smoothed: list[np.ndarray]  # (len(channels), T_i) float32 per series
    channels: list[str]
    alphas: list[float]
    model_version: str
    values: int  # output values, for choosing how to encode


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
        # the GIL only briefly (app/jsoncodec.py), so probes keep answering. One thread:
        # a second only adds GIL contention (both are CPU-bound under the GIL).
        self.codec = OldestFirstPool(workers=1, name="convewma-codec")
        self.device = resolve_device(settings.device)
        self.loaded: LoadedModel = load_weights(settings.weights, device=self.device)
        self.model = self.loaded.model
        self.channels = self.loaded.card.channels
        self.model_version = f"sha256:{self.loaded.sha256}"
        with torch.inference_mode():
            self.alphas = [float(a) for a in self.model.alphas.cpu().tolist()]
        self.batcher = MicroBatcher(
            self.forward,
            BatchLimits(
                max_batch_size=settings.max_batch_size,
                max_batch_values=settings.max_batch_values,
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue_values=settings.max_queue,
                max_padding_fraction=settings.max_padding_fraction,
            ),
            on_batch=metrics.observe_batch,
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

    def forward(self, x: torch.Tensor, warmup: str) -> torch.Tensor:
        """(N, T) float32 on the CPU to (N, C, T) on the CPU; runs in the batcher's thread."""
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        smoothed: torch.Tensor = self.model(x, warmup=warmup)
        return smoothed.cpu()

    def warm_up(self) -> None:
        with torch.inference_mode():
            for warmup in ("zeros", "adjust"):
                self.forward(torch.zeros(2, 64), warmup)

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

    async def smooth(self, body: bytes, reservation: Reservation, deadline: Deadline) -> SmoothResult:
        """Parse, admit, batch, select and check one request; the caller encodes the result."""
        channels = len(self.channels)
        inline = len(body) <= INLINE_BYTES
        # About 0.4 ms per MiB: off the loop too, unless the body is small.
        values_bound = await self.codec_call(deadline, count_values_upper_bound, body, inline=inline)
        needed = parse_bytes(len(body), values_bound, channels)
        too_big = (
            f"this request needs about {needed} bytes of server memory; the limit is "
            f"{reservation.budget.capacity}: send it in smaller requests"
        )
        reserve(reservation, needed, too_big)
        limits = RequestLimits(self.settings.max_series, self.settings.max_length)
        job = await self.codec_call(deadline, parse_smooth_body, body, limits, self.channels, inline=inline)
        del body
        values = sum(len(s) for s in job.series)
        reservation.resize(min(reservation.held, result_bytes(values, channels, len(job.channels))))
        warmup = job.warmup or self.model.warmup
        chosen = job.channels
        outputs = await asyncio.wait_for(self.batcher.submit(job.series, warmup), deadline.check())
        del job
        selection = None if chosen == list(range(channels)) else np.asarray(chosen)
        smoothed = await self.codec_call(
            deadline, select_and_check, outputs, selection, inline=values * len(chosen) <= INLINE_VALUES
        )
        return SmoothResult(
            smoothed=smoothed,
            channels=[self.channels[c] for c in chosen],
            alphas=[self.alphas[c] for c in chosen],
            model_version=self.model_version,
            values=values * len(chosen),
        )


def select_and_check(outputs: list[np.ndarray], selection: np.ndarray | None) -> list[np.ndarray]:
    """The chosen channels of every series (a copy only when not all, in order)."""
    smoothed = outputs if selection is None else [output[selection] for output in outputs]
    for index, values in enumerate(smoothed):
        if not np.isfinite(values).all():
            raise RequestError(
                422, f"series[{index}]: the smoothed values overflow float32; scale the input down"
            )
    return smoothed
