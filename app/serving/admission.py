"""Shedding load before it turns into latency: a standing-queue detector for admission.

Under overload every stage of the server (the event loop reading bodies, the codec
thread, the batcher) shares its time among the requests in progress, so admitting more
than can be finished makes all of them late and goodput falls. ``StandingQueue`` is the
idea of CoDel applied to whole requests: if every request that finished during the last
interval took longer than the target, a queue has built up that is not draining, and
new requests are refused (503 + ``Retry-After``) until one finishes within the target
again. Short bursts pass: a single fast request in an interval clears the state.
"""

from __future__ import annotations

import math
import time

TARGET_S = 1.0  # a request taking longer than this means it waited behind others
INTERVAL_S = 1.0


class StandingQueue:
    def __init__(self, target_s: float = TARGET_S, interval_s: float = INTERVAL_S) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._interval_start = time.monotonic()
        self._fastest = math.inf  # in the current interval
        self.behind = False  # decided at the end of the last interval

    def observe(self, took_s: float) -> None:
        """A request finished after ``took_s`` seconds in the server."""
        self._roll()
        self._fastest = min(self._fastest, took_s)
        if took_s <= self.target_s:
            self.behind = False

    def is_behind(self) -> bool:
        self._roll()
        return self.behind

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._interval_start >= self.interval_s:
            if self._fastest < math.inf:  # an interval with no finished request decides nothing
                self.behind = self._fastest > self.target_s
            self._fastest = math.inf
            self._interval_start = now
