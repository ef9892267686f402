"""The small ``/smooth`` fields on their own: each value accepted as itself, each refusal a
422 with the exact message (client input quoted by the ``show`` it is given)."""

from __future__ import annotations

from typing import Any

import pytest

from app.api import jsonfields
from app.api.schemas import RequestError

NAMES = ("fast", "mid", "slow")
MODES = ("zeros", "adjust")


def show(value: Any) -> str:
    return f"<{value!r}>"  # tells the quoted input apart from the rest of a message


def outcome(call: Any, *args: Any) -> Any:
    try:
        return call(*args, show) if call is not jsonfields.channels else call(args[0], NAMES, show, args[1])
    except RequestError as error:
        return error.status, error.detail


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, None),
        ({"warmup": None}, None),  # null: the default, as when absent
        ({"other": "zeros"}, None),
        ({"warmup": "zeros"}, "zeros"),
        ({"warmup": "adjust", "other": "x"}, "adjust"),
        ({"warmup": "ones"}, (422, "'warmup' must be one of ['zeros', 'adjust'], got <'ones'>")),
        ({"warmup": ["zeros"]}, (422, "'warmup' must be one of ['zeros', 'adjust'], got <['zeros']>")),
        ({"warmup": 0}, (422, "'warmup' must be one of ['zeros', 'adjust'], got <0>")),
    ],
)
def test_choice(document: dict[str, Any], expected: Any) -> None:
    assert outcome(jsonfields.choice, document, "warmup", MODES) == expected


class Anything:
    """Equal to everything, but not a string: choice must still refuse it."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "Anything"


def test_choice_takes_strings_only() -> None:
    expected = (422, "'warmup' must be one of ['zeros', 'adjust'], got <Anything>")
    assert outcome(jsonfields.choice, {"warmup": Anything()}, "warmup", MODES) == expected


@pytest.mark.parametrize(
    ("document", "low", "high", "expected"),
    [
        ({}, 0, None, None),
        ({"k": None}, 1, 9, None),
        ({"other": 3}, 1, 9, None),
        ({"k": 0}, 0, None, 0),
        ({"k": 2**40}, 0, None, 2**40),
        ({"k": 1}, 1, 9, 1),  # both bounds are inclusive
        ({"k": 9}, 1, 9, 9),
        ({"k": -1}, 0, None, (422, "'k' must be an integer >= 0, got <-1>")),
        ({"k": 0}, 1, 9, (422, "'k' must be an integer in 1..9, got <0>")),
        ({"k": 10}, 1, 9, (422, "'k' must be an integer in 1..9, got <10>")),
        ({"k": 2.0}, 1, 9, (422, "'k' must be an integer in 1..9, got <2.0>")),
        ({"k": True}, 0, None, (422, "'k' must be an integer >= 0, got <True>")),
        ({"k": "3"}, 0, None, (422, "'k' must be an integer >= 0, got <'3'>")),
    ],
)
def test_integer(document: dict[str, Any], low: int, high: int | None, expected: Any) -> None:
    assert outcome(jsonfields.integer, document, "k", low, high) == expected


NOT_ONE = "is not one of ['fast', 'mid', 'slow'] or 0..2"
EACH_MESSAGE = "pairing 'each' takes one channel per series, in series order"


@pytest.mark.parametrize(
    ("requested", "each", "expected"),
    [
        (None, None, [0, 1, 2]),
        (["slow", 0, "mid"], None, [2, 0, 1]),
        ([2, 1], None, [2, 1]),
        (["fast"], None, [0]),
        ([0], None, [0]),  # index 0 and the last index are in range
        ([2], None, [2]),
        (["mid", "mid", 1], 3, [1, 1, 1]),  # pairing each: repeats allowed
        (["slow"], 1, [2]),
        (None, 2, (422, "'channels' is required with pairing 'each': one channel per series")),
        ([], None, (422, "'channels' must be a non-empty list of channel names or indices")),
        ("fast", None, (422, "'channels' must be a non-empty list of channel names or indices")),
        ({"fast": 1}, None, (422, "'channels' must be a non-empty list of channel names or indices")),
        ([0], 2, (422, f"'channels' has 1 entries for 2 series: {EACH_MESSAGE}")),
        ([0, 1, 2], 2, (422, f"'channels' has 3 entries for 2 series: {EACH_MESSAGE}")),
        ([3], None, (422, f"channels[0] = <3> {NOT_ONE}")),
        ([0, -1], None, (422, f"channels[1] = <-1> {NOT_ONE}")),
        (
            ["fast", "nope"],
            None,
            (422, f"channels[1] = <'nope'> {NOT_ONE}"),
        ),
        ([True], None, (422, f"channels[0] = <True> {NOT_ONE}")),
        ([1.0], None, (422, f"channels[0] = <1.0> {NOT_ONE}")),
        ([[0]], 1, (422, f"channels[0] = <[0]> {NOT_ONE}")),
        (["mid", 0, 1], None, (422, "channels[2] repeats 'mid' (channels[0])")),
        ([2, 0, 1, "fast"], None, (422, "channels[3] repeats 'fast' (channels[1])")),
    ],
)
def test_channels(requested: Any, each: int | None, expected: Any) -> None:
    assert outcome(jsonfields.channels, requested, each) == expected
