"""A thread pool that runs the oldest request's work first.

Parsing and encoding hold the GIL for most of their time, so more threads bring
contention rather than speed, and a FIFO pool shares the CPU among every request in
progress: under overload each of them then finishes late (the benchmark's goodput fell
to a third of capacity at twice the capacity offered). Running queued calls by the age
of their request instead finishes requests in arrival order, as a single-threaded
server would, while the event loop stays free for I/O.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
_Item = tuple[float, int, float, Callable[[], Any] | None, "Future[Any] | None"]


class OldestFirstPool:
    """``submit(priority, fn, *args)``: the lowest ``priority`` (a request's start time) runs first."""

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._order = itertools.count()  # ties run in submission order
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        self.closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, priority: float, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self.closed:
            raise RuntimeError("the pool is shut down")
        future: Future[T] = Future()
        self._queue.put((priority, next(self._order), time.monotonic(), partial(fn, *args), future))
        return future

    def longest_wait(self) -> float:
        """How long the longest-waiting queued call has waited: how far behind the pool is."""
        with self._queue.mutex:
            oldest = min((item[2] for item in self._queue.queue), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def shutdown(self) -> None:
        """Run everything already submitted, then stop the threads."""
        self.closed = True
        for _ in self._threads:
            # Stamped now, as a call would be: longest_wait reads it while the last calls run.
            self._queue.put((math.inf, next(self._order), time.monotonic(), None, None))
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            _, _, _, call, future = self._queue.get()
            if call is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to the waiting request, like an executor
                future.set_exception(exc)
            else:
                future.set_result(result)
