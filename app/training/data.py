"""Reading training series from CSV, .npy and .npz files, with precise error messages.

A data set is a list of series, each a ``(C, T)`` float64 array over the same named
channels.  File formats:

* CSV: a header row of channel names, then one row per time step.  An optional
  ``series_id`` column splits the rows into several series (rows of one id stay in
  file order); without it the whole file is one series.  One column may be an *index*
  (row labels such as timestamps, as ``pandas.DataFrame.to_csv`` writes them): it is
  not data, and ``convewma smooth`` copies it to its output.  The index column is the
  one named by ``index_col`` if given; otherwise the first column other than
  ``series_id`` is the index when its header is empty (``df.to_csv()``'s unnamed
  index), or when the file has another data column and none of this column's cells is
  a number (ISO dates, quarter labels, names).  A first column with a name and at least
  one number is data, so a numeric index such as Unix seconds needs ``index_col``.
  A data cell is a finite number or empty: an empty cell (how pandas writes ``NaN``) is a
  missing value, read as NaN.  Text such as ``nan`` or ``inf`` is refused, as the
  service refuses those tokens.
* ``.npy``: a 1-D array (one channel) or a 2-D ``(T, C)`` array; channels are named
  ``ch0``, ``ch1``, ...; NaN is a missing value, an infinite value is refused.
* ``.npz``: one 1-D array per channel, named by the array names, all the same length.

A column (channel) of a file with no observed value at all is refused: nothing can be
learnt from it or smoothed in it, and it is most likely the wrong column.

Several files may be given; they must name the same channels in the same order.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.training import times as time_cells

SERIES_ID = "series_id"


class DataError(ValueError):
    """Training data that cannot be used, with the reason and where it is."""


@dataclass(frozen=True)
class Dataset:
    channels: tuple[str, ...]
    series: tuple[np.ndarray, ...]  # each (C, T), float64
    description: str
    # The index column's header ("" for pandas' unnamed index) when some CSV file has one.
    index_name: str | None = None
    # Per series, its index cells (T strings, as written in the file), or None; either
    # empty (no index anywhere) or one entry per series.
    index: tuple[tuple[str, ...] | None, ...] = field(default=())
    # With a time column (the index, read as times): per series, float64 seconds (T,).
    times: tuple[np.ndarray, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.index and len(self.index) != len(self.series):
            raise ValueError(f"{len(self.index)} index entries for {len(self.series)} series")
        if self.times and len(self.times) != len(self.series):
            raise ValueError(f"{len(self.times)} time rows for {len(self.series)} series")

    @property
    def total_steps(self) -> int:
        return sum(s.shape[1] for s in self.series)

    @property
    def missing_values(self) -> int:
        return sum(int(np.isnan(s).sum()) for s in self.series)

    def index_of(self, position: int) -> tuple[str, ...] | None:
        """The index cells of series ``position``, or None when it has none."""
        return self.index[position] if self.index else None


@dataclass(frozen=True)
class _FileData:
    channels: tuple[str, ...]
    series: list[np.ndarray]
    index_name: str | None = None
    index: list[tuple[str, ...]] | None = None  # one per series when the file has an index
    times: list[np.ndarray] | None = None  # one per series when the index is a time column


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


def _check_observed(path: Path, channels: tuple[str, ...], series: list[np.ndarray], noun: str) -> None:
    """Refuse a column that has no observed value in the whole file."""
    observed = np.zeros(len(channels), dtype=bool)
    for values in series:
        observed |= ~np.isnan(values).all(axis=1)
    if not observed.all():
        name = channels[int(np.flatnonzero(~observed)[0])]
        raise DataError(f"{path}: {noun} {name!r} has no observed value (all missing)")


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


def _index_position(
    header: list[str], rows: list[tuple[int, list[str]]], index_col: str | None, where: str
) -> int | None:
    """Which column is the index (see the module docstring), or None."""
    if index_col is not None:
        if index_col == SERIES_ID:
            raise DataError(f"{where}: the index column cannot be {SERIES_ID!r}")
        if index_col not in header:
            raise DataError(f"{where}: no column {index_col!r} for the index (header: {header})")
        return header.index(index_col)
    candidates = [i for i, name in enumerate(header) if name != SERIES_ID]
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


def _read_csv(path: Path, index_col: str | None, times: bool = False) -> _FileData:
    records = _read_records(path)
    if not records:
        raise DataError(f"{path}: the file is empty")
    header_line, header = records[0][0], [name.strip() for name in records[0][1]]
    rows = records[1:]
    if len(set(header)) != len(header):
        raise DataError(f"{path}:{header_line}: duplicate column names in header {header}")
    index_at = _index_position(header, rows, index_col, f"{path}:{header_line}")
    if any(not name for i, name in enumerate(header) if i != index_at):
        raise DataError(f"{path}:{header_line}: empty column name in header {header}")
    id_at = header.index(SERIES_ID) if SERIES_ID in header else None
    data_at = [i for i in range(len(header)) if i not in (id_at, index_at)]
    channels = tuple(header[i] for i in data_at)
    if not channels:
        raise DataError(f"{path}: no data columns (header: {header})")
    groups: dict[str, list[list[float]]] = {}
    labels: dict[str, list[tuple[int, str]]] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} cells, found {len(row)}")
        key = row[id_at].strip() if id_at is not None else ""
        groups.setdefault(key, []).append([_parse_float(row[i], path, line, header[i]) for i in data_at])
        if index_at is not None:
            labels.setdefault(key, []).append((line, row[index_at]))
    if not groups:
        raise DataError(f"{path}: no data rows")
    series = [np.asarray(values, dtype=np.float64).T.copy() for values in groups.values()]
    _check_observed(path, channels, series, "column")
    if index_at is None:
        return _FileData(channels, series)
    index = [tuple(cell for _, cell in labels[key]) for key in groups]
    if not times:
        return _FileData(channels, series, header[index_at], index)
    try:
        stamps = [time_cells.seconds(labels[key], path, header[index_at]) for key in groups]
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return _FileData(channels, series, header[index_at], index, stamps)


def _read_numpy(path: Path) -> _FileData:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot read as NumPy data without pickle: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = tuple(loaded.files)
            if not names:
                raise DataError(f"{path}: the archive holds no arrays")
            arrays = [np.asarray(loaded[name]) for name in names]
        if any(a.ndim != 1 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
            raise DataError(f"{path}: every array must be 1-D and of the same length")
        matrix = np.stack(arrays)
    else:
        array = np.asarray(loaded)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] == 0:
            raise DataError(f"{path}: expected a 1-D or (T, C) array, got shape {array.shape}")
        names = tuple(f"ch{i}" for i in range(array.shape[1]))
        matrix = array.T
    if not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
        raise DataError(f"{path}: arrays must hold real numbers, got {matrix.dtype}")
    matrix = matrix.astype(np.float64)
    bad = np.argwhere(np.isinf(matrix))
    if bad.size:
        channel, step = bad[0]
        raise DataError(f"{path}: channel {names[channel]!r} step {step}: value is infinite")
    _check_observed(path, names, [matrix], "channel")
    return _FileData(names, [matrix])


def load_dataset(
    paths: list[Path], min_length: int, *, index_col: str | None = None, time_col: str | None = None
) -> Dataset:
    """Read every file, check channels agree and each series has ``min_length`` steps.

    ``index_col`` names the index column of every CSV file (None: detect it, see the
    module docstring); NumPy files have no index. ``time_col`` names a time column, which
    is then the index, also read as seconds (``app.training.times``): every file must be
    CSV and have it.
    """
    if time_col is not None:
        if index_col is not None and index_col != time_col:
            raise DataError(
                f"the time column {time_col!r} is the index column: --index-col {index_col!r} names another"
            )
        index_col = time_col
        numpy = [path for path in paths if path.suffix.lower() in (".npy", ".npz")]
        if numpy:
            raise DataError(f"{numpy[0]}: a NumPy file has no columns, so no time column {time_col!r}")
    if not paths:
        raise DataError("no data files given")
    channels: tuple[str, ...] | None = None
    series: list[np.ndarray] = []
    index: list[tuple[str, ...] | None] = []
    times: list[np.ndarray] = []
    index_name: str | None = None
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        suffix = path.suffix.lower()
        found = (
            _read_numpy(path)
            if suffix in (".npy", ".npz")
            else _read_csv(path, index_col, time_col is not None)
        )
        if channels is not None and found.channels != channels:
            raise DataError(
                f"{path}: channels {list(found.channels)} differ from {list(channels)} in earlier files"
            )
        channels = found.channels
        for position, values in enumerate(found.series):
            if values.shape[1] < min_length:
                raise DataError(
                    f"{path}: series {position} has {values.shape[1]} steps; at least {min_length} are needed"
                )
        series.extend(found.series)
        index.extend(found.index if found.index is not None else [None] * len(found.series))
        times.extend(found.times or ())
        if index_name is None:
            index_name = found.index_name
    assert channels is not None
    description = (
        ", ".join(p.name for p in paths) + f" ({len(series)} series, {sum(s.shape[1] for s in series)} steps)"
    )
    return Dataset(
        channels=channels,
        series=tuple(series),
        description=description,
        index_name=index_name,
        index=tuple(index) if index_name is not None else (),
        times=tuple(times),
    )
