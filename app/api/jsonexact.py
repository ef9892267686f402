"""The exact, slow path of the ``/smooth`` parser: the stdlib's JSON parser, which reads
what simdjson refuses (integers past 64 bits) or says exactly what and where is wrong,
and the conversion of parsed float64 values to the request's dtype with located errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from app.api.schemas import RequestError


class Constant:
    """A NaN or Infinity token, kept in place so that its position can be reported."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def malformed(offset: int, reason: str) -> RequestError:
    return RequestError(400, f"malformed JSON at byte {offset}: {reason}")


def not_finite(name: str, where: str = "") -> RequestError:
    return RequestError(
        422, f"{name} is not allowed{where}: every value must be finite (null for a missing one)"
    )


def stdlib(raw: bytes, locate: Callable[[int], int], keep_constants: bool) -> Any:
    """``json.loads`` with errors located in the body by ``locate`` (a byte offset of ``raw``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(locate(exc.start), "invalid UTF-8") from None
    bom = 1 if text.startswith("\ufeff") else 0  # tolerated, as RFC 8259 allows
    try:
        constant = Constant if keep_constants else _raise_constant
        return json.loads(text[bom:], parse_float=_decimal, parse_int=_integer, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise malformed(locate(len(text[: exc.pos + bom].encode())), exc.msg) from None
    except RecursionError:
        raise malformed(locate(0), "nested too deeply") from None


def _decimal(text: str) -> float:
    # A Python-level hook: the interpreter can hand the GIL over between two numbers,
    # which it cannot do inside one json.loads call of a long series.
    return float(text)


def _integer(text: str) -> int | float:
    # As orjson reads it, so that a body means the same on both paths: an integer
    # outside [-2**63, 2**64) becomes a float. Past 300 digits int() is not even tried
    # (it refuses 4300 digits).
    if len(text) > 300:
        return float(text)
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def _raise_constant(name: str) -> Any:
    raise not_finite(name)


def convert(group: list[np.ndarray], first: int, name: str, dtype: type[np.floating]) -> list[np.ndarray]:
    """The float64 arrays ``name[first]``, ``name[first + 1]``, ... in ``dtype`` (views of one
    array); a 422 at the first infinite value (NaN is a missing value, never a token)."""
    if not group:
        return []
    wide = np.concatenate(group) if len(group) > 1 else group[0]
    with np.errstate(over="ignore"):
        values = wide.astype(dtype, copy=False)
    ends = np.cumsum([array.size for array in group])
    bad = np.isinf(values)
    if bad.any():
        at = int(np.argmax(bad))
        index = int(np.searchsorted(ends, at, side="right"))
        where = f"{name}[{first + index}][{at - (int(ends[index - 1]) if index else 0)}]"
        reason = " or is outside the float32 range" if dtype is np.float32 else ""
        raise RequestError(422, f"{where} = {float(wide[at])!r} is not finite{reason}")
    return np.split(values, ends[:-1])
