"""The memory budget, its per-request reservations and the standing-queue detector."""

from __future__ import annotations

import pytest

from app.serving.admission import StandingQueue
from app.serving.budget import (
    ENCODE_BYTES,
    MemoryBudget,
    Reservation,
    batch_bytes,
    parse_bytes,
    peak_bytes,
    result_bytes,
)


def test_reservations_resize_within_the_capacity_and_give_everything_back():
    budget = MemoryBudget(1000)
    first, second = Reservation(budget), Reservation(budget)
    assert first.resize(600)
    assert not second.resize(500)  # would pass the capacity: refused, nothing taken
    assert (second.held, budget.used) == (0, 600)
    assert first.resize(200)  # shrinking always succeeds and frees the difference
    assert second.resize(800)
    assert budget.used == 1000
    assert not first.resize(201)
    assert first.held == 200
    first.close()
    second.close()
    assert budget.used == 0
    assert first.fits_alone(1000)
    assert not first.fits_alone(1001)
    with pytest.raises(ValueError, match="capacity must be >= 1 byte, got 0"):
        MemoryBudget(0)


def test_a_held_reservation_grows_by_the_difference_and_closes_once():
    budget = MemoryBudget(1000)
    reservation = Reservation(budget)
    assert reservation.resize(600)
    assert reservation.resize(1000)  # takes 400 more, not 1000
    assert (reservation.held, budget.used) == (1000, 1000)
    assert budget.try_take(0)  # exactly full still fits nothing more
    assert not budget.try_take(1)
    reservation.close()
    assert (reservation.held, budget.used) == (0, 0)
    reservation.close()  # a second close gives back nothing
    assert budget.used == 0
    assert MemoryBudget(1).try_take(1)  # one byte is a valid capacity


@pytest.mark.parametrize("channels", [1, 4, 32])
def test_parsing_reserves_at_least_what_the_result_needs(channels):
    # Step 3 must never need more than step 2 held, whichever channels are chosen.
    for chosen in range(1, channels + 1):
        assert parse_bytes(0, 1000, channels) >= result_bytes(1000, channels, chosen)
    assert result_bytes(1000, channels, channels) == 1000 * 4 * (1 + channels) + ENCODE_BYTES
    if channels > 1:  # a selection is a copy of the chosen channels
        assert result_bytes(1000, channels, 1) == 1000 * 4 * (2 + channels) + ENCODE_BYTES


@pytest.mark.parametrize(("itemsize", "inputs"), [(4, 2), (8, 1), (8, 2)])
def test_float64_and_history_cost_their_bytes(itemsize, inputs):
    # float64 doubles every array; a history adds a copy of the input (series after history).
    expected = 1000 * itemsize * (inputs + 4 + 2) + ENCODE_BYTES
    assert result_bytes(1000, 4, 2, itemsize, inputs) == expected
    assert result_bytes(1000, 4, 4, itemsize, inputs) == 1000 * itemsize * (inputs + 4) + ENCODE_BYTES


@pytest.mark.parametrize(
    ("channels", "per_value"),
    [
        (1, 48),  # the parser's own working memory is the larger
        (4, 48),  # a copy of 3 of 4 channels: 4 * (1 + 4 + 3) = 32 bytes
        (32, 4 * (1 + 32 + 31)),  # float32 input, 32 outputs and a copy of 31 of them
    ],
)
def test_parsing_reserves_the_worst_choice_of_channels(channels, per_value):
    # The body, the bytes per value, and two response chunks of 1 MiB.
    assert parse_bytes(5000, 1000, channels) == 5000 + 1000 * per_value + 2 * 2**20


def test_the_sizing_rule_adds_idle_process_one_batch_and_the_budget():
    # 320 MiB idle, one float64 batch of 1000 values and 4 channels (8 bytes x (2 + 2 x 4)),
    # 48 MiB of forward workspace, then the budget.
    assert peak_bytes(10**9, 1000, 4) == 320 * 2**20 + 1000 * 8 * 10 + 48 * 2**20 + 10**9
    assert batch_bytes(4_000_000, 4) == 4_000_000 * 4 * 10
    assert batch_bytes(4_000_000, 4, 8) == 4_000_000 * 8 * 10
    # The largest batch is a float64 one.
    assert peak_bytes(0, 4_000_000, 4) - peak_bytes(0, 1, 4) == batch_bytes(4_000_000 - 1, 4, 8)
    assert peak_bytes(10**9, 4_000_000, 4) == peak_bytes(0, 4_000_000, 4) + 10**9


def test_standing_queue_sheds_only_after_a_whole_slow_interval(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("app.serving.admission.time.monotonic", lambda: now[0])
    gate = StandingQueue(target_s=1.0, interval_s=1.0)
    gate.observe(3.0)
    assert not gate.is_behind()  # one slow request is a burst, not a standing queue
    now[0] = 1.0
    assert gate.is_behind()  # every request of the last interval was slow
    now[0] = 2.5
    assert gate.is_behind()  # an interval with nothing finished decides nothing
    gate.observe(0.2)
    assert not gate.is_behind()  # a fast one clears it at once
    gate.observe(5.0)
    now[0] = 3.6
    assert not gate.is_behind()  # the interval held a fast request
