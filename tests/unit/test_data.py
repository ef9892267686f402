from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.training.data import DataError, load_dataset


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
        (
            "a.csv",
            "x\n1\nnan\n3\n",
            "a.csv:3: column 'x': 'nan' is not a finite number (leave the cell empty for a missing value)",
        ),
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
    np.save(tmp_path / "inf.npy", np.array([1.0, np.nan, -np.inf]))
    with pytest.raises(DataError, match="channel 'ch0' step 2: value is infinite"):
        load_dataset([tmp_path / "inf.npy"], min_length=1)
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


# --- index columns and empty cells ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "index_col", "channels", "index_name", "index"),
    [
        # df.to_csv(): the unnamed index has an empty header.
        (",x,y\n0,1,2\n1,3,4\n", None, ("x", "y"), "", [("0", "1")]),
        # A named first column none of whose cells is a number: dates, quarters, labels.
        ("date,x\n2020-01-01,1\n2020-01-02,2\n", None, ("x",), "date", [("2020-01-01", "2020-01-02")]),
        ("quarter,x,y\n1959Q2,1,2\n1959Q3,3,4\n", None, ("x", "y"), "quarter", [("1959Q2", "1959Q3")]),
        # A named numeric first column is data unless --index-col names it.
        ("t,x\n100,1\n200,2\n", None, ("t", "x"), None, []),
        ("t,x\n100,1\n200,2\n", "t", ("x",), "t", [("100", "200")]),
        # --index-col may name any column, the empty-header one included.
        ("x,date\n1,2020-01-01\n2,2020-01-02\n", "date", ("x",), "date", [("2020-01-01", "2020-01-02")]),
        (",x\n5,1\n6,2\n", "", ("x",), "", [("5", "6")]),
        # With series_id (pandas' MultiIndex): the first other column; cells split by series.
        (
            "series_id,date,x\na,d1,1\nb,d1,5\na,d2,2\nb,d2,6\n",
            None,
            ("x",),
            "date",
            [("d1", "d2"), ("d1", "d2")],
        ),
        # A lone non-numeric column is not an index: it is bad data (see the error cases).
        # A byte-order mark (Excel's "CSV UTF-8") is not part of the first name.
        ("\ufeffx,y\n1,2\n3,4\n", None, ("x", "y"), None, []),
    ],
)
def test_index_column(tmp_path, text, index_col, channels, index_name, index):
    path = tmp_path / "a.csv"
    path.write_text(text, encoding="utf-8")
    data = load_dataset([path], min_length=2, index_col=index_col)
    assert data.channels == channels
    assert data.index_name == index_name
    assert [data.index_of(i) for i in range(len(data.series))] == (index or [None] * len(data.series))
    assert all(series.shape == (len(channels), 2) for series in data.series)


@pytest.mark.parametrize(
    ("text", "index_col", "message"),
    [
        # Line numbers are the file's, across a quoted cell that spans two lines.
        ('x,y\n1,"2\n"\n3,z\n', None, "a.csv:4: column 'y': 'z' is not a number"),
        # A first column with some numbers is data, so its other cells are bad data.
        ("name,x\nfoo,1\n3,2\n", None, "a.csv:2: column 'name': 'foo' is not a number"),
        ("date\n2020-01-01\n2020-01-02\n", None, "a.csv:2: column 'date': '2020-01-01' is not a number"),
        ("x,y\n1,2\n", "date", "a.csv:1: no column 'date' for the index"),
        ("series_id,x\na,1\n", "series_id", "the index column cannot be 'series_id'"),
        ("x,,y\n1,2,3\n", None, "a.csv:1: empty column name"),
        (",series_id\n1,a\n", None, "no data columns"),
    ],
)
def test_bad_index_and_empty_cells_are_located(tmp_path, text, index_col, message):
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_dataset([path], min_length=1, index_col=index_col)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pandas writes NaN as an empty cell; blank and whitespace-only cells are missing too.
        (",x,y\n0,1,\n1,,4\n2, ,5\n", [[[1, np.nan, np.nan], [np.nan, 4, 5]]]),
        # A step with every value missing is a row of empty cells, not a blank line...
        ("x,y\n1,2\n,\n3,4\n", [[[1, np.nan, 3], [2, np.nan, 4]]]),
        # ... while blank lines are skipped, as pandas does (a one-column file has no other way).
        ("x\n1\n\n2\n", [[[1, 2]]]),
        # Missing values anywhere, a whole series of a column included, if the file has one.
        ("series_id,v,w\na,,1\nb,2,\na,,3\nb,4,\n", [[[np.nan, np.nan], [1, 3]], [[2, 4], [np.nan] * 2]]),
    ],
)
def test_empty_cells_are_missing_values(tmp_path, text, expected):
    data = load_dataset([write(tmp_path, "a.csv", text)], min_length=2)
    assert len(data.series) == len(expected)
    for got, want in zip(data.series, expected, strict=True):
        np.testing.assert_array_equal(got, np.array(want, dtype=np.float64))  # NaN where NaN
    assert data.missing_values == sum(int(np.isnan(np.array(w, dtype=float)).sum()) for w in expected)


def test_numpy_nan_is_a_missing_value(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[1.0, np.nan], [np.nan, 2.0], [3.0, 4.0]]))
    data = load_dataset([tmp_path / "a.npy"], min_length=3)
    np.testing.assert_array_equal(data.series[0], [[1, np.nan, 3], [np.nan, 2, 4]])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "x,y\n1,\n2,\n", "a.csv: column 'y' has no observed value (all missing)"),
        ("a.csv", "series_id,x\na,\nb, \n", "a.csv: column 'x' has no observed value"),
        ("a.npy", np.array([[1.0, np.nan], [2.0, np.nan]]), "a.npy: channel 'ch1' has no observed value"),
        ("a.npz", {"up": np.arange(2.0), "gone": np.full(2, np.nan)}, "channel 'gone' has no observed value"),
    ],
)
def test_a_column_without_any_value_is_refused(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    else:
        np.save(path, content)
    with pytest.raises(DataError) as info:
        load_dataset([path], min_length=1)
    assert message in str(info.value)


def test_not_utf8_and_not_csv_are_data_errors(tmp_path):
    latin = write(tmp_path, "latin.csv", "")
    latin.write_bytes(b"x\n\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8 text"):
        load_dataset([latin], min_length=1)
    huge = write(tmp_path, "huge.csv", "x\n1\n" + "1" * 200_000 + "\n")
    with pytest.raises(DataError, match=r"huge\.csv:3: not valid CSV: field larger than field limit"):
        load_dataset([huge], min_length=1)


@pytest.mark.parametrize("layout", ["range index", "datetime index", "series_id and date", "no index"])
def test_pandas_to_csv_round_trip(tmp_path, layout):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(12, 2)), columns=["a", "b"])
    path = tmp_path / "p.csv"
    if layout == "range index":
        frame.to_csv(path)
    elif layout == "datetime index":
        frame.set_axis(pd.date_range("2024-01-01", periods=12, freq="min", name="ts")).to_csv(path)
    elif layout == "series_id and date":
        keys = pd.MultiIndex.from_arrays(
            [np.repeat(["s1", "s2"], 6), np.tile(pd.date_range("2024-01-01", periods=6), 2)],
            names=["series_id", "date"],
        )
        frame.set_axis(keys).to_csv(path)
    else:
        frame.to_csv(path, index=False)
    data = load_dataset([path], min_length=6)
    assert data.channels == ("a", "b")
    assert (data.index_name is None) == (layout == "no index")
    np.testing.assert_array_equal(np.concatenate(data.series, axis=1), frame.to_numpy().T)


def test_mixed_files_keep_one_entry_per_series(tmp_path):
    """The index name is the first file's that has one; series without an index have None."""
    dated = write(tmp_path, "a.csv", "date,ch0\nd1,1\nd2,2\n")
    unnamed = write(tmp_path, "b.csv", ",ch0\n0,1\n1,2\n")
    np.save(tmp_path / "c.npy", np.arange(3.0))
    data = load_dataset([tmp_path / "c.npy", dated, unnamed], min_length=2)
    assert data.index_name == "date"
    assert [data.index_of(i) for i in range(3)] == [None, ("d1", "d2"), ("0", "1")]
    data = load_dataset([tmp_path / "c.npy", write(tmp_path, "d.csv", "ch0\n1\n2\n")], min_length=2)
    assert (data.index_name, data.index) == (None, ())
