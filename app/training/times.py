"""A CSV time column as float64 seconds: ISO 8601 dates (RFC 3339 with or without an offset;
without one, UTC) or plain numbers of seconds, one kind and strictly increasing within
each series (only differences matter, so series may differ in kind). Errors
(``ValueError``; ``app.training.csvfile`` reports them as ``DataError``) name the file,
the line and the cell."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def seconds(cells: list[tuple[int, str]], path: Path, column: str) -> np.ndarray:
    """``(line, cell)`` pairs of one series, in file order, to float64 seconds."""
    out = np.empty(len(cells), dtype=np.float64)
    kind = ""
    for position, (line, cell) in enumerate(cells):
        text = cell.strip()
        where = f"{path}:{line}: time column {column!r}"
        if not text:
            raise ValueError(f"{where}: empty cell (every row needs a time)")
        number = _number(text)
        if number is not None and not math.isfinite(number):
            raise ValueError(f"{where}: {text!r} is not a finite number of seconds")
        out[position] = number if number is not None else _date(text, where)
        this = "number" if number is not None else "date"
        if kind and this != kind:
            raise ValueError(f"{where}: {text!r} is a {this}, the rows before hold {kind}s: use one kind")
        kind = this
        if position and not out[position] > out[position - 1]:
            previous = cells[position - 1][1].strip()
            raise ValueError(
                f"{where}: {text!r} is not after {previous!r}: times must be strictly increasing"
            )
    return out


def _number(text: str) -> float | None:
    if "_" in text:  # Python's float() reads 1_000; a CSV cell with one is not a number
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _date(text: str, where: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an ISO 8601 date or a number of seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
