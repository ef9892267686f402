"""The codec pool runs the oldest request's work first and reports its backlog."""

from __future__ import annotations

import threading
import time

import pytest

from app.serving.workers import OldestFirstPool


def test_queued_calls_run_oldest_request_first_then_in_submission_order():
    pool = OldestFirstPool(workers=1, name="test")
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(0.0, gate.wait, 10)  # holds the only thread while the rest queue
    futures = [
        pool.submit(priority, ran.append, name)
        for priority, name in [(3.0, "newest"), (1.0, "oldest-a"), (2.0, "middle"), (1.0, "oldest-b")]
    ]
    time.sleep(0.05)
    assert pool.longest_wait() >= 0.04  # calls are waiting: the pool is behind
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert ran == ["oldest-a", "oldest-b", "middle", "newest"]
    assert pool.longest_wait() == 0.0
    pool.shutdown()


def test_errors_reach_the_caller_and_shutdown_runs_what_was_submitted():
    pool = OldestFirstPool(workers=2, name="test")
    failing = pool.submit(0.0, int, "not a number")
    done = pool.submit(5.0, sum, [1, 2, 3])
    pool.shutdown()
    with pytest.raises(ValueError, match="invalid literal"):
        failing.result(timeout=1)
    assert done.result(timeout=1) == 6
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(0.0, sum, [])
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        OldestFirstPool(workers=0, name="test")
