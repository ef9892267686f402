"""The time fields of a ``/smooth`` body: ``times``, ``history_times`` and ``max_gap``.

A time is a number of seconds (any epoch) or an RFC 3339 string with a UTC offset; both
become float64 seconds once, here. A list of numbers takes the same simdjson path as the
series; a list with strings is read by the stdlib parser and each string by
``datetime.fromisoformat``. Every error names the list and the position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from app.api.jsonbody import Body
from app.api.jsonexact import Constant
from app.api.schemas import RequestError

TIME = "a number of seconds or an RFC 3339 time with a UTC offset"


def shapes(parts: Body, raw: Any, name: str, count: int, of: str) -> list[int | list[Any]]:
    """Each list of ``raw`` (one per ``count`` lists of ``of``) as :meth:`Body.shapes` gives it;
    their lengths are checked once parsed."""
    one = "series" if of == "series" else "history"
    if not isinstance(raw, list):
        kind = type(raw).__name__
        raise RequestError(422, f"'{name}' must be a list of lists of times (one per {one}), got {kind}")
    if len(raw) != count:
        raise RequestError(422, f"'{name}' has {len(raw)} lists for {count} {of}: one per {one}")
    return parts.shapes(raw, name, allow_empty=True)


def arrays(parts: Body, shaped: list[int | list[Any]], name: str) -> list[np.ndarray]:
    """float64 seconds per list, each finite and strictly increasing."""
    out = []
    for position, values in enumerate(shaped):
        where = f"{name}[{position}]"
        seconds = parts.simd(values, numbers=True) if isinstance(values, int) else None
        if seconds is None:
            items = parts.python(values) if isinstance(values, int) else values
            seconds = _from_python(items, where, parts)
        elif np.isnan(seconds).any():  # a null
            at = int(np.flatnonzero(np.isnan(seconds))[0])
            raise RequestError(422, f"{where}[{at}] is null: every value needs a time ({TIME})")
        check_increasing(seconds, where)
        out.append(seconds)
    return out


def _from_python(items: list[Any], where: str, parts: Body) -> np.ndarray:
    seconds = np.empty(len(items), np.float64)
    for position, item in enumerate(items):
        kind = type(item)
        if kind is str:
            seconds[position] = _rfc3339(item, f"{where}[{position}]", parts)
        elif kind in (int, float):
            seconds[position] = float(item)
            if not math.isfinite(seconds[position]):
                raise RequestError(422, f"{where}[{position}] = {parts.show(item)} is not finite")
        elif kind is Constant:
            raise RequestError(422, f"{where}[{position}] = {item.name} is not finite")
        elif item is None:
            raise RequestError(422, f"{where}[{position}] is null: every value needs a time ({TIME})")
        else:
            shown = f"{kind.__name__} {parts.show(item)}"
            raise RequestError(422, f"{where}[{position}] must be {TIME}, got {shown}")
    return seconds


def _rfc3339(text: str, where: str, parts: Body) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RequestError(422, f"{where} = {parts.show(text)} is not {TIME}") from None
    if moment.tzinfo is None:
        # A time without an offset names a different instant in every time zone.
        raise RequestError(422, f"{where} = {parts.show(text)} has no UTC offset: add Z or +hh:mm")
    return moment.timestamp()


def check_increasing(seconds: np.ndarray, where: str) -> None:
    # Finite already: simdjson reads finite numbers only, and _from_python refuses the rest.
    later = seconds[1:] > seconds[:-1]
    if not later.all():
        at = int(np.flatnonzero(~later)[0]) + 1
        raise RequestError(
            422,
            f"{where}[{at}] = {float(seconds[at])!r} s is not after {where}[{at - 1}] = "
            f"{float(seconds[at - 1])!r} s: times must be strictly increasing",
        )


def check_lengths(times: list[np.ndarray], lists: list[np.ndarray], name: str, of: str) -> None:
    for position, (stamps, values) in enumerate(zip(times, lists, strict=True)):
        if len(stamps) != len(values):
            counts = f"{len(stamps)} times for the {len(values)} values"
            raise RequestError(422, f"{name}[{position}] has {counts} of {of}[{position}]")


def check_join(history_times: list[np.ndarray], times: list[np.ndarray]) -> None:
    """Each series' first time after its history's last."""
    for position, (before, after) in enumerate(zip(history_times, times, strict=True)):
        if len(before) and len(after) and not after[0] > before[-1]:
            raise RequestError(
                422,
                f"times[{position}][0] = {float(after[0])!r} s is not after history_times[{position}]"
                f"[{len(before) - 1}] = {float(before[-1])!r} s: times must be strictly increasing",
            )


def max_gap(document: Mapping[str, Any], parts: Body) -> float | None:
    """A number of seconds > 0, or None when absent."""
    value = document.get("max_gap")
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value < math.inf:
        raise RequestError(422, f"'max_gap' must be a number of seconds > 0, got {parts.show(value)}")
    return float(value)
