"""What a user holds, as rows to smooth, and the answer in the same kind.

A pandas DataFrame (a series per column, the index kept), a pandas Series, a NumPy array
(``[T]`` or ``[N, T]``) or a list of 1-D arrays of different lengths. pandas is only used
when the data is pandas: the client does not import it otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.client.plan import Smoothed

Rebuild = Callable[[Smoothed, int, int, bool], Any]  # (answer, first output, stride, each) -> the kind


@dataclass
class Framed:
    values: list[np.ndarray]  # 1-D per series, in the request's dtype
    names: list[str] | None  # the series' names, where the data has them (pairing by name)
    index_times: np.ndarray | None  # seconds of the pandas index, for times="index"
    rebuild: Rebuild


def frame(data: Any, dtype: np.dtype[Any]) -> Framed:
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return _dataframe(data, dtype, pandas)
    if pandas is not None and isinstance(data, pandas.Series):
        return _series(data, dtype, pandas)
    if isinstance(data, np.ndarray):
        if data.ndim == 1:
            return Framed([_row(data, dtype)], None, None, _single)
        if data.ndim == 2:
            return Framed([_row(row, dtype) for row in data], None, None, _stacked)
        raise ValueError(f"an array to smooth must be [T] or [N, T], got shape {data.shape}")
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return Framed([_row(row, dtype) for row in data], None, None, _listed)
    kinds = "a pandas DataFrame or Series, a NumPy array or a list of arrays"
    raise TypeError(f"cannot smooth a {type(data).__name__}: give {kinds}")


def times_of(given: Any, framed: Framed) -> list[np.ndarray] | None:
    """Seconds per series: ``"index"`` (the pandas index), one array for every series, or one per series."""
    if given is None:
        return None
    if isinstance(given, str):
        if given != "index" or framed.index_times is None:
            raise ValueError(f"times={given!r}: only 'index', for pandas data, names a source of times")
        return [framed.index_times] * len(framed.values)
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(given, pandas.Index):
        return [_seconds(given, pandas)] * len(framed.values)
    array = np.asarray(given) if not isinstance(given, list) or not given or np.ndim(given[0]) == 0 else None
    if array is not None and array.ndim == 1:
        return [array.astype(np.float64)] * len(framed.values)
    rows = [np.asarray(row, np.float64) for row in (array if array is not None else given)]
    if len(rows) != len(framed.values):
        raise ValueError(f"times has {len(rows)} rows for {len(framed.values)} series")
    return rows


def _row(values: Any, dtype: np.dtype[Any]) -> np.ndarray:
    row = np.asarray(values, dtype)
    if row.ndim != 1:
        raise ValueError(f"each series must be 1-D, got shape {row.shape}")
    return row


def _single(answer: Smoothed, first: int, stride: int, each: bool) -> np.ndarray:
    return np.array(answer.outputs[0])  # (the outputs may be read-only views of an answer)


def _listed(answer: Smoothed, first: int, stride: int, each: bool) -> list[np.ndarray]:
    return [np.array(block) for block in answer.outputs]


def _stacked(answer: Smoothed, first: int, stride: int, each: bool) -> np.ndarray:
    return np.stack(answer.outputs) if answer.outputs else np.empty((0, 0, 0))


def _seconds(index: Any, pandas: Any) -> np.ndarray:
    if isinstance(index, pandas.DatetimeIndex):
        nanoseconds = index.as_unit("ns").asi8  # UTC for a zoned index
        return np.asarray(nanoseconds, np.float64) / 1e9
    return np.asarray(index, np.float64)


def _index_times(index: Any, pandas: Any) -> np.ndarray | None:
    try:
        return _seconds(index, pandas)
    except (TypeError, ValueError):
        return None


def _dataframe(data: Any, dtype: np.dtype[Any], pandas: Any) -> Framed:
    columns = list(data.columns)
    values = [_row(data[column].to_numpy(np.float64, na_value=np.nan), dtype) for column in columns]

    def rebuild(answer: Smoothed, first: int, stride: int, each: bool) -> Any:
        index = data.index[first::stride]
        if each:
            table = {column: block[0] for column, block in zip(columns, answer.outputs, strict=True)}
            return pandas.DataFrame(table, index=index, columns=data.columns)
        labels = pandas.MultiIndex.from_product([columns, answer.channels], names=["column", "channel"])
        if not answer.outputs:
            return pandas.DataFrame(index=index, columns=labels)
        return pandas.DataFrame(np.concatenate(answer.outputs).T, index=index, columns=labels)

    names = [str(c) for c in columns]
    return Framed(values, names, _index_times(data.index, pandas), rebuild)


def _series(data: Any, dtype: np.dtype[Any], pandas: Any) -> Framed:
    values = [_row(data.to_numpy(np.float64, na_value=np.nan), dtype)]

    def rebuild(answer: Smoothed, first: int, stride: int, each: bool) -> Any:
        index = data.index[first::stride]
        if each:
            return pandas.Series(np.array(answer.outputs[0][0]), index=index, name=data.name)
        return pandas.DataFrame(
            answer.outputs[0].T, index=index, columns=pandas.Index(answer.channels, name="channel")
        )

    names = [str(data.name)] if data.name is not None else None
    return Framed(values, names, _index_times(data.index, pandas), rebuild)
