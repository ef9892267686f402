"""The standing-queue detector at its boundaries: a request exactly at the target is on
time, an interval ends exactly at its length, and the defaults are one second each."""

from __future__ import annotations

import pytest

from app.serving.admission import StandingQueue


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr("app.serving.admission.time.monotonic", lambda: now[0])
    return now


@pytest.mark.parametrize(("took_s", "behind"), [(1.0, False), (1.001, True)])
def test_only_requests_slower_than_the_target_make_a_standing_queue(clock, took_s, behind):
    gate = StandingQueue()  # target and interval: one second each
    gate.observe(took_s)
    clock[0] = 100.999
    assert not gate.is_behind()  # the interval has not ended
    clock[0] = 101.0
    assert gate.is_behind() is behind


def test_a_request_at_the_target_clears_a_standing_queue_at_once(clock):
    gate = StandingQueue(target_s=0.5, interval_s=2.0)
    gate.observe(0.6)
    clock[0] = 102.0
    assert gate.is_behind()
    gate.observe(0.5)
    assert not gate.is_behind()


def test_each_interval_decides_on_its_own_requests(clock):
    gate = StandingQueue(target_s=0.5, interval_s=2.0)
    gate.observe(0.1)  # fast, in the first interval
    clock[0] = 102.0
    gate.observe(0.9)  # slow, in the second: the first's fast request does not count
    assert not gate.is_behind()
    clock[0] = 103.9
    assert not gate.is_behind()
    clock[0] = 104.0
    assert gate.is_behind()


def test_is_behind_is_a_bool_from_the_start_and_after_a_clearing_request(clock):
    gate = StandingQueue(target_s=0.5, interval_s=2.0)
    assert gate.is_behind() is False  # nothing observed yet
    gate.observe(0.6)
    clock[0] = 102.0
    assert gate.is_behind() is True
    gate.observe(0.5)  # on time: clears it at once
    assert gate.is_behind() is False
