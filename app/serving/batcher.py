"""Work-conserving dynamic micro-batching of smoothing requests.

Requests carry one or more ragged series: 1-D arrays, or arrays whose last axis is time
(a time-aware row is ``(2, T)``: values and times), of one shape but the last per key.
They are split into pieces that fit a batch, queued, and run by one loop: whenever the
model is idle and work is queued, the loop takes the oldest piece plus the queued pieces
with an equal key (the request's options) closest to it in length that fit the limits,
right-pads them with zeros into one ``(N, ..., T)`` array of the series' own dtype (the
convolution is causal, so right padding cannot change an output, and a zero is not a
missing value), runs ``forward(x, key)`` in a worker thread, trims and hands each piece
its rows.  Grouping by length keeps padding low; the oldest piece always leads a batch,
so no piece starves.  A lone request on an idle server runs at once; while a batch runs,
arrivals queue and form the next one.  A failing forward fails the pieces of that batch
only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, TypeVar

import numpy as np
import torch

K = TypeVar("K", bound=Hashable)  # the batch key: pieces share a forward only if equal
# (N, ..., T), key -> (N, C, T_out), with T_out = output_length(key, T)
Forward = Callable[[torch.Tensor, K], torch.Tensor]

# Below this many padded values a forward costs less than the per-batch overhead (thread
# hop, tensor set-up), so a small batch may pad freely rather than split.
PADDING_SLACK_VALUES = 65_536


class QueueFullError(Exception):
    """Too many values are waiting; the client should retry later."""


class BatcherClosedError(Exception):
    """The batcher is shutting down and takes no new work."""


class BatchFailedError(Exception):
    """The forward of the batch holding this request failed."""


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 256  # series per forward
    max_batch_values: int = 4_000_000  # padded values per forward
    max_wait_s: float = 0.0  # extra wait for a fuller batch; 0 = never wait on purpose
    max_queue_values: int = 50_000_000  # values waiting before new work is refused
    max_padding_fraction: float = 0.25  # of a batch tensor, beyond PADDING_SLACK_VALUES

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_values < 1 or self.max_queue_values < 1:
            raise ValueError(f"batch and queue limits must be >= 1: {self}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if not 0.0 <= self.max_padding_fraction <= 1.0:
            raise ValueError(f"max_padding_fraction must be in [0, 1], got {self.max_padding_fraction}")


@dataclass(frozen=True)
class BatchStats:
    series: int
    values: int  # real values
    padded_values: int  # values in the padded tensor
    queue_wait_s: float  # of the oldest piece
    forward_s: float
    failed: bool


def same_length(key: Hashable, length: int) -> int:
    return length


@dataclass(eq=False)
class _Piece(Generic[K]):
    series: Sequence[np.ndarray]
    key: K
    future: asyncio.Future[list[np.ndarray]]
    enqueued_at: float = field(default_factory=time.perf_counter)

    # Cached: the loop re-reads these for every queued piece on every wake-up.
    @cached_property
    def values(self) -> int:
        return int(sum(s.shape[-1] for s in self.series))

    @cached_property
    def longest(self) -> int:
        return int(max(s.shape[-1] for s in self.series))


def split_request(series: Sequence[np.ndarray], limits: BatchLimits) -> list[list[np.ndarray]]:
    """Consecutive runs of series that each fit one batch (a longer series stands alone)."""
    pieces: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    longest = 0
    for values in series:
        count, widest = len(current) + 1, max(longest, values.shape[-1])
        if current and (count > limits.max_batch_size or count * widest > limits.max_batch_values):
            pieces.append(current)
            current, widest = [], values.shape[-1]
        current.append(values)
        longest = widest
    pieces.append(current)
    return pieces


class MicroBatcher(Generic[K]):
    """Queue plus one batching loop; see the module docstring. ``output_length(key, T)``:
    how many outputs the forward gives a row of ``T`` values (``T`` by default)."""

    def __init__(
        self,
        forward: Forward[K],
        limits: BatchLimits,
        on_batch: Callable[[BatchStats], None] | None = None,
        output_length: Callable[[K, int], int] = same_length,
    ) -> None:
        self._forward = forward
        self.limits = limits
        self._on_batch = on_batch
        self._output_length = output_length
        self._queue: deque[_Piece[K]] = deque()
        self._queued_values = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        self._runner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convewma-forward")
        self.batches_run = 0
        self.in_flight = 0

    @property
    def queued_values(self) -> int:
        return self._queued_values

    @property
    def queued_pieces(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="convewma-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish everything already accepted, then stop the loop."""
        self._closed = True
        self._wakeup.set()
        if self._runner is not None:
            await self._runner
            self._runner = None
        self._executor.shutdown(wait=True)

    async def submit(self, series: Sequence[np.ndarray], key: K) -> list[np.ndarray]:
        """Smooth ``series`` (arrays of one dtype, time last) with the options ``key``; returns one
        ``(C, output_length(key, len))`` array each."""
        if self._closed:
            raise BatcherClosedError("the server is shutting down")
        if not series:
            return []
        values = sum(s.shape[-1] for s in series)
        if self._queued_values + values > self.limits.max_queue_values:
            raise QueueFullError(
                f"{self._queued_values} values are queued; {values} more would exceed "
                f"{self.limits.max_queue_values}"
            )
        loop = asyncio.get_running_loop()
        pieces = [_Piece(part, key, loop.create_future()) for part in split_request(series, self.limits)]
        self._queue.extend(pieces)
        self._queued_values += values
        self._wakeup.set()
        try:
            results = await asyncio.gather(*(p.future for p in pieces))
        except BaseException:
            # Cancelled (client timeout or disconnect): pieces not yet started are dropped.
            for piece in pieces:
                piece.future.cancel()
            self._wakeup.set()  # let the loop discard them and release their queue share
            raise
        return [row for part in results for row in part]

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.limits.max_wait_s > 0 and not self._closed:
                await self._wait_for_fuller_batch()
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _wait_for_fuller_batch(self) -> None:
        deadline = self._queue[0].enqueued_at + self.limits.max_wait_s
        while not self._closed and not self._batch_is_full():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _batch_is_full(self) -> bool:
        count = sum(len(p.series) for p in self._queue)
        values = sum(p.values for p in self._queue)
        return count >= self.limits.max_batch_size or values >= self.limits.max_batch_values

    def _take_batch(self) -> list[_Piece[K]]:
        """The oldest live piece plus the same-key pieces nearest its length that still fit."""
        live: list[_Piece[K]] = []
        for piece in self._queue:
            if piece.future.done():  # cancelled before it started: its work is dropped
                self._queued_values -= piece.values
            else:
                live.append(piece)
        if not live:
            self._queue.clear()
            return []
        anchor = live[0]
        scale = math.log2(anchor.longest)
        candidates = sorted(
            (p for p in live[1:] if p.key == anchor.key),
            key=lambda p: abs(math.log2(p.longest) - scale),  # stable: ties stay oldest first
        )
        batch = [anchor]
        count, longest, values = len(anchor.series), anchor.longest, anchor.values
        for piece in candidates:
            if count >= self.limits.max_batch_size:
                break
            new_count = count + len(piece.series)
            new_longest = max(longest, piece.longest)
            new_values = values + piece.values
            padded = new_count * new_longest
            if (
                new_count <= self.limits.max_batch_size
                and padded <= self.limits.max_batch_values
                and padded - new_values
                <= max(PADDING_SLACK_VALUES, self.limits.max_padding_fraction * padded)
            ):
                batch.append(piece)
                count, longest, values = new_count, new_longest, new_values
        taken = {id(p) for p in batch}
        self._queue = deque(p for p in live if id(p) not in taken)
        self._queued_values -= values
        return batch

    async def _execute(self, batch: list[_Piece[K]]) -> None:
        rows = [s for piece in batch for s in piece.series]
        lengths = [s.shape[-1] for s in rows]
        started = time.perf_counter()
        wait = started - batch[0].enqueued_at
        self.in_flight += 1
        failed = False
        try:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(
                self._executor, self._run_forward, rows, batch[0].key, len(batch) == 1
            )
        except Exception as exc:
            failed = True
            error = exc if isinstance(exc, BatchFailedError) else BatchFailedError(f"batch failed: {exc!r}")
            error.__cause__ = exc
            for piece in batch:
                if not piece.future.done():
                    piece.future.set_exception(error)
        else:
            offset = 0
            for piece in batch:
                count = len(piece.series)
                part = outputs[offset : offset + count]
                offset += count
                if not piece.future.done():
                    piece.future.set_result(part)
        finally:
            self.in_flight -= 1
            self.batches_run += 1
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(
                        series=len(rows),
                        values=sum(lengths),
                        padded_values=len(rows) * max(lengths),
                        queue_wait_s=wait,
                        forward_s=time.perf_counter() - started,
                        failed=failed,
                    )
                )

    def _run_forward(self, rows: list[np.ndarray], key: K, one_piece: bool) -> list[np.ndarray]:
        """Pad, run the forward and cut the result into one ``(C, outputs)`` array per row.

        Runs in the forward thread so that the event loop never copies batch-sized
        arrays. The rows are copied out of the batch output unless it has no padding: a
        view would keep the whole padded batch alive for as long as any of its requests
        is still sending, beyond what the memory budget counts for that request; for
        the same reason a batch shared by several pieces is always copied out.
        """
        lengths = [s.shape[-1] for s in rows]
        longest = max(lengths)
        # Equal keys mean equal dtypes (and equal leading shapes): float64 stays float64
        # from the request to the answer.
        padded = np.zeros((len(rows), *rows[0].shape[:-1], longest), dtype=rows[0].dtype)
        for index, values in enumerate(rows):
            padded[index, ..., : values.shape[-1]] = values
        with torch.inference_mode():
            result = self._forward(torch.from_numpy(padded), key)
            output = result.cpu().numpy()
        del padded
        if output.shape[0] != len(rows):
            raise BatchFailedError(f"forward returned {output.shape[0]} rows for {len(rows)} series")
        if one_piece and all(length == longest for length in lengths):
            return list(output)
        ends = [self._output_length(key, length) for length in lengths]
        # .copy(), not ascontiguousarray: a full-length row is already contiguous and would stay a view.
        return [output[i, :, :end].copy() for i, end in enumerate(ends)]
