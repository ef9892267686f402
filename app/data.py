"""Reading training series from CSV, .npy and .npz files, with precise error messages.

A data set is a list of series, each a ``(C, T)`` float64 array over the same named
channels.  File formats:

* CSV: a header row of channel names, then one row per time step.  An optional
  ``series_id`` column splits the rows into several series (rows of one id stay in
  file order); without it the whole file is one series.
* ``.npy``: a 1-D array (one channel) or a 2-D ``(T, C)`` array; channels are named
  ``ch0``, ``ch1``, ...
* ``.npz``: one 1-D array per channel, named by the array names, all the same length.

Several files may be given; they must name the same channels in the same order.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SERIES_ID = "series_id"


class DataError(ValueError):
    """Training data that cannot be used, with the reason and where it is."""


@dataclass(frozen=True)
class Dataset:
    channels: tuple[str, ...]
    series: tuple[np.ndarray, ...]  # each (C, T), float64
    description: str

    @property
    def total_steps(self) -> int:
        return sum(s.shape[1] for s in self.series)


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}: column {column!r}: {text!r} is not a finite number")
    return value


def _read_csv(path: Path) -> tuple[tuple[str, ...], list[np.ndarray]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty")
        header = [name.strip() for name in header]
        if any(not name for name in header):
            raise DataError(f"{path}:1: empty column name in header {header}")
        if len(set(header)) != len(header):
            raise DataError(f"{path}:1: duplicate column names in header {header}")
        id_index = header.index(SERIES_ID) if SERIES_ID in header else None
        channels = tuple(name for i, name in enumerate(header) if i != id_index)
        if not channels:
            raise DataError(f"{path}: no data columns (header: {header})")
        groups: dict[str, list[list[float]]] = {}
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: expected {len(header)} cells, found {len(row)}")
            key = row[id_index].strip() if id_index is not None else ""
            values = [
                _parse_float(cell, path, line, header[i]) for i, cell in enumerate(row) if i != id_index
            ]
            groups.setdefault(key, []).append(values)
    if not groups:
        raise DataError(f"{path}: no data rows")
    return channels, [np.asarray(rows, dtype=np.float64).T.copy() for rows in groups.values()]


def _read_numpy(path: Path) -> tuple[tuple[str, ...], list[np.ndarray]]:
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
    bad = np.argwhere(~np.isfinite(matrix))
    if bad.size:
        channel, step = bad[0]
        raise DataError(f"{path}: channel {names[channel]!r} step {step}: value is NaN or infinite")
    return names, [matrix]


def load_dataset(paths: list[Path], min_length: int) -> Dataset:
    """Read every file, check channels agree and each series has ``min_length`` steps."""
    if not paths:
        raise DataError("no data files given")
    channels: tuple[str, ...] | None = None
    series: list[np.ndarray] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        suffix = path.suffix.lower()
        if suffix in (".npy", ".npz"):
            names, found = _read_numpy(path)
        else:
            names, found = _read_csv(path)
        if channels is not None and names != channels:
            raise DataError(f"{path}: channels {list(names)} differ from {list(channels)} in earlier files")
        channels = names
        for index, values in enumerate(found):
            if values.shape[1] < min_length:
                raise DataError(
                    f"{path}: series {index} has {values.shape[1]} steps; at least {min_length} are needed"
                )
        series.extend(found)
    assert channels is not None
    description = (
        ", ".join(p.name for p in paths) + f" ({len(series)} series, {sum(s.shape[1] for s in series)} steps)"
    )
    return Dataset(channels=channels, series=tuple(series), description=description)
