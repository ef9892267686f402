"""The small fields of a ``/smooth`` body, each checked with an error that names it.

A field set to ``null`` takes its default, as an absent one does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.api.schemas import RequestError

Show = Callable[[Any], str]  # a short quote of client input for error messages


def choice(document: Mapping[str, Any], key: str, modes: tuple[str, ...], show: Show) -> str | None:
    """One of ``modes``, or None when absent."""
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in modes:
        raise RequestError(422, f"'{key}' must be one of {list(modes)}, got {show(value)}")
    return value


def integer(document: Mapping[str, Any], key: str, low: int, high: int | None, show: Show) -> int | None:
    """An integer in ``low..high`` (no upper bound if ``high`` is None), or None when absent."""
    value = document.get(key)
    if value is None:
        return None
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise RequestError(422, f"'{key}' must be {bounds}, got {show(value)}")
    return value


def channels(requested: Any, names: tuple[str, ...], show: Show, each: int | None) -> list[int]:
    """Channel indices in the order asked. ``each``: the number of series when every series
    takes one channel (pairing each): then one is required per series, repeats allowed."""
    if requested is None:
        if each is not None:
            raise RequestError(422, "'channels' is required with pairing 'each': one channel per series")
        return list(range(len(names)))
    if not isinstance(requested, list) or not requested:
        raise RequestError(422, "'channels' must be a non-empty list of channel names or indices")
    if each is not None and len(requested) != each:
        raise RequestError(
            422,
            f"'channels' has {len(requested)} entries for {each} series: pairing 'each' takes one "
            "channel per series, in series order",
        )
    chosen: list[int] = []
    for position, item in enumerate(requested):
        if isinstance(item, str) and item in names:
            index = names.index(item)
        elif type(item) is int and 0 <= item < len(names):
            index = item
        else:
            raise RequestError(
                422,
                f"channels[{position}] = {show(item)} is not one of {list(names)} or 0..{len(names) - 1}",
            )
        # Bank: each channel at most once, so that a response is at most the model's size.
        if each is None and index in chosen:
            first = chosen.index(index)
            raise RequestError(422, f"channels[{position}] repeats {names[index]!r} (channels[{first}])")
        chosen.append(index)
    return chosen
