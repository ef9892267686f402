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
  A *time column* (``time_col``: ISO 8601 dates or numbers of seconds, read by
  ``app.training.times``) is not data either; ``smooth`` copies it after the index. The
  index is then looked for among the other columns (``index_col`` naming the time
  column as well means there is no other index).
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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.training.csvfile import SERIES_ID, read_csv
from app.training.files import DataError, FileData, read_numpy

__all__ = ["SERIES_ID", "DataError", "Dataset", "load_dataset"]


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
    # With a time column (every file has it): its header, and per series its cells as
    # written (T strings) and the same as float64 seconds, strictly increasing (T,).
    time_name: str | None = None
    time_cells: tuple[tuple[str, ...], ...] = field(default=())
    times: tuple[np.ndarray, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.index and len(self.index) != len(self.series):
            raise ValueError(f"{len(self.index)} index entries for {len(self.series)} series")
        if self.times and len(self.times) != len(self.series):
            raise ValueError(f"{len(self.times)} time rows for {len(self.series)} series")
        if self.time_cells and len(self.time_cells) != len(self.series):
            raise ValueError(f"{len(self.time_cells)} rows of time cells for {len(self.series)} series")

    @property
    def total_steps(self) -> int:
        return sum(s.shape[1] for s in self.series)

    @property
    def missing_values(self) -> int:
        return sum(int(np.isnan(s).sum()) for s in self.series)

    def index_of(self, position: int) -> tuple[str, ...] | None:
        """The index cells of series ``position``, or None when it has none."""
        return self.index[position] if self.index else None


def load_dataset(
    paths: list[Path], min_length: int, *, index_col: str | None = None, time_col: str | None = None
) -> Dataset:
    """Read every file, check channels agree and each series has ``min_length`` steps.

    ``index_col`` names the index column of every CSV file (None: detect it, see the
    module docstring); NumPy files have no index. ``time_col`` names a time column that
    every file must have, so every file must be CSV (NumPy files have no columns).
    """
    if not paths:
        raise DataError("no data files given")
    if time_col is not None:
        numpy = [path for path in paths if path.suffix.lower() in (".npy", ".npz")]
        if numpy:
            raise DataError(f"{numpy[0]}: a NumPy file has no columns, so no time column {time_col!r}")
    channels: tuple[str, ...] | None = None
    files: list[FileData] = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        suffix = path.suffix.lower()
        found = read_numpy(path) if suffix in (".npy", ".npz") else read_csv(path, index_col, time_col)
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
        files.append(found)
    assert channels is not None
    series = [values for found in files for values in found.series]
    index_name = next((found.index_name for found in files if found.index_name is not None), None)
    index: list[tuple[str, ...] | None] = []
    for found in files:  # a series of a file without an index: None
        index.extend(found.index if found.index is not None else [None] * len(found.series))
    description = (
        ", ".join(p.name for p in paths) + f" ({len(series)} series, {sum(s.shape[1] for s in series)} steps)"
    )
    return Dataset(
        channels=channels,
        series=tuple(series),
        description=description,
        index_name=index_name,
        index=tuple(index) if index_name is not None else (),
        time_name=time_col,
        time_cells=tuple(cells for found in files for cells in found.time_cells or ()),
        times=tuple(seconds for found in files for seconds in found.times or ()),
    )
