"""Reading one CSV data file (the format is described in ``app.training.data``): data cells
as float64 with NaN for empty cells, the optional ``series_id``, index and time columns,
with errors that name the file, the line and the column."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from app.training import times
from app.training.files import DataError, FileData, check_observed

SERIES_ID = "series_id"

Cells = list[tuple[int, str]]  # (file line, cell) of one column of one series


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    if not text.strip():
        return math.nan  # a missing value
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(
            f"{path}:{line}: column {column!r}: {text!r} is not a finite number"
            " (leave the cell empty for a missing value)"
        )
    return value


def _read_records(path: Path) -> list[tuple[int, list[str]]]:
    """Every record but blank lines, with the file line it ends on (quoted newlines counted).

    A line of empty cells (``,,``: every value of that step missing) is a record; an empty
    line is not, as in pandas, so a one-column file cannot mark a missing value."""
    records: list[tuple[int, list[str]]] = []
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:  # bounded by the file
                if len(row) > 1 or (row and row[0].strip()):
                    records.append((reader.line_num, row))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return records


def _named(header: list[str], name: str, role: str, where: str) -> int:
    """The position of the column ``name`` that is to be the ``role`` ("index", "time") column."""
    if name == SERIES_ID:
        raise DataError(f"{where}: the {role} column cannot be {SERIES_ID!r}")
    if name not in header:
        purpose = "the times" if role == "time" else f"the {role}"
        raise DataError(f"{where}: no column {name!r} for {purpose} (header: {header})")
    return header.index(name)


def _index_position(
    header: list[str],
    rows: list[tuple[int, list[str]]],
    index_col: str | None,
    time_at: int | None,
    where: str,
) -> int | None:
    """Which column is the index (see ``app.training.data``), or None. The time column is
    never the index: naming it as the index too asks for no other one."""
    if index_col is not None:
        named = _named(header, index_col, "index", where)
        return None if named == time_at else named
    candidates = [i for i, name in enumerate(header) if name != SERIES_ID and i != time_at]
    if not candidates:
        return None
    first = candidates[0]
    if header[first] == "":
        return first
    if len(candidates) < 2 or not rows:
        return None
    cells = [row[first] for _, row in rows if first < len(row)]
    if all(cell.strip() and not _is_number(cell) for cell in cells):
        return first
    return None


def read_csv(path: Path, index_col: str | None, time_col: str | None = None) -> FileData:
    records = _read_records(path)
    if not records:
        raise DataError(f"{path}: the file is empty")
    header_line, header = records[0][0], [name.strip() for name in records[0][1]]
    rows = records[1:]
    where = f"{path}:{header_line}"
    if len(set(header)) != len(header):
        raise DataError(f"{where}: duplicate column names in header {header}")
    time_at = _named(header, time_col, "time", where) if time_col is not None else None
    index_at = _index_position(header, rows, index_col, time_at, where)
    if any(not name for i, name in enumerate(header) if i not in (index_at, time_at)):
        raise DataError(f"{where}: empty column name in header {header}")
    id_at = header.index(SERIES_ID) if SERIES_ID in header else None
    data_at = [i for i in range(len(header)) if i not in (id_at, index_at, time_at)]
    channels = tuple(header[i] for i in data_at)
    if not channels:
        raise DataError(f"{path}: no data columns (header: {header})")
    groups: dict[str, list[list[float]]] = {}
    labels: dict[str, Cells] = {}
    stamps: dict[str, Cells] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} cells, found {len(row)}")
        key = row[id_at].strip() if id_at is not None else ""
        groups.setdefault(key, []).append([_parse_float(row[i], path, line, header[i]) for i in data_at])
        if index_at is not None:
            labels.setdefault(key, []).append((line, row[index_at]))
        if time_at is not None:
            stamps.setdefault(key, []).append((line, row[time_at]))
    if not groups:
        raise DataError(f"{path}: no data rows")
    series = [np.asarray(values, dtype=np.float64).T.copy() for values in groups.values()]
    check_observed(path, channels, series, "column")
    index = [tuple(cell for _, cell in labels[key]) for key in groups] if index_at is not None else None
    if time_at is None:
        return FileData(channels, series, None if index_at is None else header[index_at], index)
    try:
        seconds = [times.seconds(stamps[key], path, header[time_at]) for key in groups]
    except ValueError as exc:
        raise DataError(str(exc)) from None
    written = [tuple(cell for _, cell in stamps[key]) for key in groups]
    return FileData(channels, series, None if index_at is None else header[index_at], index, written, seconds)
