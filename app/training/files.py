"""What one data file holds, the error every reader raises, and the NumPy reader.

``app.training.csvfile`` reads CSV files; ``app.training.data`` merges the files of a data
set. Both speak :class:`FileData` and :class:`DataError`, which live here so that neither
module imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Training data that cannot be used, with the reason and where it is."""


@dataclass(frozen=True)
class FileData:
    channels: tuple[str, ...]
    series: list[np.ndarray]  # each (C, T), float64
    index_name: str | None = None
    index: list[tuple[str, ...]] | None = None  # one per series when the file has an index
    # With a time column: per series its cells as written and the same as float64 seconds.
    time_cells: list[tuple[str, ...]] | None = None
    times: list[np.ndarray] | None = None


def check_observed(path: Path, channels: tuple[str, ...], series: list[np.ndarray], noun: str) -> None:
    """Refuse a column that has no observed value in the whole file."""
    observed = np.zeros(len(channels), dtype=bool)
    for values in series:
        observed |= ~np.isnan(values).all(axis=1)
    if not observed.all():
        name = channels[int(np.flatnonzero(~observed)[0])]
        raise DataError(f"{path}: {noun} {name!r} has no observed value (all missing)")


def read_numpy(path: Path) -> FileData:
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
    check_observed(path, names, [matrix], "channel")
    return FileData(names, [matrix])
