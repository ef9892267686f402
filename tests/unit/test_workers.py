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
    with pytest.raises(RuntimeError, match=r"^the pool is shut down$"):
        pool.submit(0.0, sum, [])
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        OldestFirstPool(workers=0, name="test")


def test_the_backlog_is_the_oldest_calls_wait_and_a_cancelled_call_never_runs():
    pool = OldestFirstPool(workers=1, name="test")
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(0.0, gate.wait, 10)
    cancelled = pool.submit(1.0, ran.append, "cancelled")
    time.sleep(0.2)
    later = pool.submit(2.0, ran.append, "later")
    assert pool.longest_wait() >= 0.2  # the first queued call's wait, not the last one's
    assert cancelled.cancel()
    gate.set()
    for future in (blocker, later):
        future.result(timeout=10)
    assert ran == ["later"]
    pool.shutdown()


def test_the_threads_are_named_after_the_pool_and_do_not_hold_up_exit():
    pool = OldestFirstPool(workers=2, name="codec")
    seen = {pool.submit(0.0, lambda: threading.current_thread().name).result(timeout=10) for _ in range(20)}
    assert seen <= {"codec-0", "codec-1"}
    assert pool.submit(0.0, lambda: threading.current_thread().daemon).result(timeout=10)
    pool.shutdown()
    assert pool.closed


def test_while_shutting_down_the_backlog_is_still_the_wait_of_what_is_queued():
    pool = OldestFirstPool(workers=1, name="test")
    gate = threading.Event()
    blocker = pool.submit(0.0, gate.wait, 10)
    stopping = threading.Thread(target=pool.shutdown)
    stopping.start()  # queues the stop behind the running call and waits for it
    time.sleep(0.05)
    assert 0.0 < pool.longest_wait() < 5.0  # not the time since the clock's origin
    gate.set()
    stopping.join(timeout=10)
    assert blocker.result(timeout=1) is True
    assert not stopping.is_alive()


def test_a_new_pool_is_open():
    pool = OldestFirstPool(workers=1, name="test")
    assert pool.closed is False
    pool.shutdown()
    assert pool.closed is True
