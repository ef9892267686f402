from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.data import DataError, load_dataset


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_one_series(tmp_path):
    data = load_dataset([write(tmp_path, "a.csv", "x,y\n1,2\n3,4\n5,6\n")], min_length=3)
    assert data.channels == ("x", "y")
    np.testing.assert_array_equal(data.series[0], [[1, 3, 5], [2, 4, 6]])


def test_csv_series_id_splits_series_in_order(tmp_path):
    text = "series_id,v\na,1\nb,10\na,2\nb,20\na,3\nb,30\n"
    data = load_dataset([write(tmp_path, "a.csv", text)], min_length=3)
    assert data.channels == ("v",)
    assert [s.tolist() for s in data.series] == [[[1, 2, 3]], [[10, 20, 30]]]


def test_several_files_are_several_series(tmp_path):
    paths = [write(tmp_path, f"{i}.csv", "v\n1\n2\n3\n") for i in range(2)]
    assert len(load_dataset(paths, min_length=2).series) == 2


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(6, 2))
    data = load_dataset([tmp_path / "a.npy"], min_length=6)
    assert data.channels == ("ch0", "ch1")
    np.savez(tmp_path / "b.npz", up=np.arange(5.0), down=-np.arange(5.0))
    data = load_dataset([tmp_path / "b.npz"], min_length=5)
    assert data.channels == ("up", "down")
    np.testing.assert_array_equal(data.series[0][1], -np.arange(5.0))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "", "the file is empty"),
        ("a.csv", "series_id\n1\n", "no data columns"),
        ("a.csv", "x,y\n", "no data rows"),
        ("a.csv", "x,y\n1,2\n3,abc\n", "a.csv:3: column 'y': 'abc' is not a number"),
        ("a.csv", "x\n1\nnan\n3\n", "a.csv:3: column 'x': 'nan' is not a finite number"),
        ("a.csv", "x\n1\ninf\n", "not a finite number"),
        ("a.csv", "x,y\n1,2\n3\n", "expected 2 cells, found 1"),
        ("a.csv", "x,x\n1,2\n", "duplicate column names"),
        ("a.csv", "x,\n1,2\n", "empty column name"),
        ("a.csv", "x\n1\n2\n", "series 0 has 2 steps; at least 3 are needed"),
    ],
)
def test_bad_csv_is_reported_with_location(tmp_path, name, text, message):
    with pytest.raises(DataError) as info:
        load_dataset([write(tmp_path, name, text)], min_length=3)
    assert message in str(info.value)


def test_bad_numpy_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan, 2.0]))
    with pytest.raises(DataError, match="channel 'ch0' step 1: value is NaN"):
        load_dataset([tmp_path / "nan.npy"], min_length=1)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="without pickle"):
        load_dataset([tmp_path / "obj.npy"], min_length=1)
    np.savez(tmp_path / "ragged.npz", a=np.arange(3.0), b=np.arange(4.0))
    with pytest.raises(DataError, match="same length"):
        load_dataset([tmp_path / "ragged.npz"], min_length=1)


def test_missing_file_and_mismatched_channels(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset([tmp_path / "nope.csv"], min_length=1)
    a = write(tmp_path, "a.csv", "x\n1\n")
    b = write(tmp_path, "b.csv", "y\n1\n")
    with pytest.raises(DataError, match="differ from"):
        load_dataset([a, b], min_length=1)
