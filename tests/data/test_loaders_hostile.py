"""Hostile input the issue-11 probe found: each case here failed (raw error or wrong data) before."""

from __future__ import annotations

import codecs
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from privrec.data import (
    Interactions,
    from_dataframe,
    load,
    load_csv,
    load_lastfm,
    load_ml100k,
    load_movielens_csv,
    load_movielens_dat,
    load_movietweetings,
    load_parquet,
    load_tsv,
    load_user_item_lists,
    read_user_item_lists,
)
from privrec.errors import ConfigError, DataError, DataWarning

Loader = Callable[..., Interactions]


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def entries(x: Interactions) -> dict[tuple[object, object], float]:
    df = x.to_dataframe()
    return {(u, i): float(v) for u, i, v in zip(df["user"], df["item"], df["value"], strict=True)}


def refused(loader: Loader, path: Path, **kw: object) -> DataError:
    with pytest.raises(DataError) as e:
        loader(path, **kw)
    assert e.value.file == str(path)
    return e.value


# ------------------------------------------------------------------ line endings
def test_cr_only_user_item_lists_keep_every_user(tmp_path: Path) -> None:
    p = write(tmp_path, "train.txt", "0 1 2\r1 3\r2 4 5\r")
    users, items, all_users = read_user_item_lists(p)
    assert all_users.tolist() == [0, 1, 2]  # was one user holding every item
    assert list(zip(users.tolist(), items.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (2, 5),
    ]


def test_mixed_line_endings_and_line_numbers(tmp_path: Path) -> None:
    p = write(tmp_path, "train.txt", "0 1\r\n1 2\r2 3\n3 x\r\n")
    e = refused(read_user_item_lists, p)
    assert (e.line, e.field) == (4, "item")
    q = write(tmp_path, "u.data", "1\t1\t5\t1\r2\t2\t4\t2\r\n3\t3\t3\t3\n")
    assert entries(load_ml100k(q)) == {(1, 1): 5.0, (2, 2): 4.0, (3, 3): 3.0}
    r = write(tmp_path, "bad.data", "1\t1\t5\t1\r2\t2\t4\t2\r\n3\t3\t9\t3\n")
    assert (refused(load_ml100k, r).line, refused(load_ml100k, r).field) == (3, "rating")


# ------------------------------------------------------------------ extra fields
@pytest.mark.parametrize(
    ("loader", "text", "line"),
    [
        (load_ml100k, "1\t2\t3\t4\t9\n5\t6\t4\t8\n", 1),  # first line: pandas cut it silently
        (load_ml100k, "1\t2\t3\t4\t\n5\t6\t4\t8\t\n", 1),  # trailing tab on every line
        (load_movielens_dat, "1::2::3::4::5\n", 1),
        (load_movielens_dat, "1::2::3::4::\n", 1),
        (load_movietweetings, "1::2::3::4\n1::2::3::4::5\n", 2),
        (load_lastfm, "a\tb\tc\n1\t2\t3\t4\n", 2),
        (load_movielens_csv, "a,b,c,d\n1,2,3,4,5\n", 2),
        (load_csv, "user,item\n1,2,3\n4,5\n", 2),
    ],
)
def test_extra_fields_are_refused_not_dropped(
    tmp_path: Path, loader: Loader, text: str, line: int
) -> None:
    e = refused(loader, write(tmp_path, "f.dat", text))
    assert "too many fields" in e.message and e.line == line and e.field is not None


def test_a_colon_inside_a_double_colon_field(tmp_path: Path) -> None:
    e = refused(load_movielens_dat, write(tmp_path, "r.dat", "1::2::3::4:5\n"))
    assert (e.line, e.field, e.found) == (1, "timestamp", "4:5")


def test_short_row_balanced_by_a_long_row(tmp_path: Path) -> None:
    # Same separator count as a valid file: a long row followed by a short one.
    e = refused(load_csv, write(tmp_path, "x.csv", "item,user\n158,28,\n7\n"))
    assert (e.line, e.message) == (2, "too many fields")


# ------------------------------------------------------------------ encodings
@pytest.mark.parametrize(
    ("loader", "name", "text"),
    [
        (load_ml100k, "u.data", "1\t2\t3\t4\n"),
        (load_movielens_dat, "ratings.dat", "1::2::3::4\n"),
        (load_movielens_csv, "ratings.csv", "u,i,r,t\n1,2,3,4\n"),
        (load_lastfm, "user_artists.dat", "u\ti\tw\n1\t2\t3\n"),
        (load_user_item_lists, "train.txt", "1 2\n"),
        (load_csv, "x.csv", "user,item\n1,2\n"),
        (load_tsv, "x.tsv", "user\titem\n1\t2\n"),
    ],
)
@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files(
    tmp_path: Path, loader: Loader, name: str, text: str, codec: str
) -> None:
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    e = refused(loader, write(tmp_path, name, data))
    assert e.line == 1 and "UTF-8" in str(e.expected) and "byte-order mark" in str(e.found)


@pytest.mark.parametrize(
    ("loader", "data", "line", "field"),
    [
        (load_ml100k, b"1\t2\t3\t4\n1\t2\xff\t3\t4\n", 2, "item"),
        (load_movielens_csv, b"u,i,r,t\n1,2,3,4\n1,2,3,\xc3\n", 3, "timestamp"),
        (load_csv, b"user,item\n1,a\n1,b\xff\n", 3, "item"),
        (load_csv, b'user,item\n1,"a"\n1,b\xfe\n', 3, "item"),  # the exact (quoted) reader
        (read_user_item_lists, b"0 1\n1 2 \xed\xa0\x80\n", 2, "item"),
    ],
)
def test_undecodable_bytes(
    tmp_path: Path, loader: Loader, data: bytes, line: int, field: str
) -> None:
    e = refused(loader, write(tmp_path, "f.txt", data))
    assert (e.line, e.field, e.expected) == (line, field, "UTF-8 text")
    assert "not valid UTF-8" in e.message


def test_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    bom = codecs.BOM_UTF8
    assert load_ml100k(write(tmp_path, "u.data", bom + b"1\t2\t3\t4\n")).nnz == 1
    assert load_csv(write(tmp_path, "x.csv", bom + b"user,item\n1,2\n")).nnz == 1
    assert read_user_item_lists(write(tmp_path, "l.txt", bom + b"1 2\n"))[2].tolist() == [1]
    e = refused(load_ml100k, write(tmp_path, "v.data", bom + bom + b"1\t2\t3\t4\n"))
    assert (e.line, e.field) == (1, "user")


# ------------------------------------------------------------------ sizes and ranges
def test_megabyte_field(tmp_path: Path) -> None:
    big = "a" * 1_000_000
    for text in (f"user,item\n1,2\n1,{big}\n", f'user,item\n1,"2"\n1,{big}\n'):
        e = refused(load_csv, write(tmp_path, "x.csv", text))
        assert (e.line, e.field, e.message) == (3, "item", "id too long")
    # A long field elsewhere in a quoted file no longer trips csv's 128 KiB limit.
    text = f'user,item,note\n1,"2",{big}\n1,3,x\n'
    assert load_csv(write(tmp_path, "y.csv", text)).nnz == 2
    e = refused(load_ml100k, write(tmp_path, "u.data", "1\t2\t3\t" + "7" * 1_000_000 + "\n"))
    assert (e.line, e.field, e.message) == (1, "timestamp", "integer out of range")


@pytest.mark.parametrize(
    ("loader", "text", "line", "field"),
    [
        (load_csv, "user,item,t\n1,2,3\n1,3,99999999999999999999999\n", 3, "t"),
        (load_csv, "user,item,t\n1,2,3\n1,3,1e300\n", 3, "t"),
        (load_ml100k, "1\t2\t3\t4\n1\t3\t3\t99999999999999999999999\n", 2, "timestamp"),
        (load_ml100k, "1\t2\t3\t18446744073709551615\n", 1, "timestamp"),
    ],
)
def test_huge_timestamps(tmp_path: Path, loader: Loader, text: str, line: int, field: str) -> None:
    kw = {"timestamp_col": "t"} if loader is load_csv else {}
    e = refused(loader, write(tmp_path, "f.dat", text), **kw)
    assert (e.line, e.field) == (line, field) and "out of range" in e.message


def test_ids_beyond_int64(tmp_path: Path) -> None:
    for uid in (2**63, 2**64, 2**64 + 1, 10**30):
        e = refused(load_ml100k, write(tmp_path, "u.data", f"{uid}\t2\t3\t4\n"))
        assert (e.line, e.field, e.message) == (1, "user", "integer out of range")
        e = refused(read_user_item_lists, write(tmp_path, "l.txt", f"1 2\n{uid} 1\n"))
        assert (e.line, e.field, e.message) == (2, "user", "integer id out of range")
    # 19 digits within int64 are ids like any other.
    users, _, _ = read_user_item_lists(write(tmp_path, "l.txt", f"1 {2**63 - 1}\n{2**63 - 1}\n"))
    assert users.tolist() == [1]
    # In a CSV, a big id is kept exactly, as text.
    x = load_csv(write(tmp_path, "x.csv", f"user,item\n{2**64},2\n7,3\n"))
    assert x.user_ids.tolist() == ["18446744073709551616", "7"]


def test_float32_overflow_is_refused(tmp_path: Path) -> None:
    e = refused(load_lastfm, write(tmp_path, "ua.dat", "u\ti\tw\n1\t2\t1e39\n"))
    assert (e.line, e.field, e.message) == (2, "weight", "value too large to store as float32")
    with pytest.raises(DataError, match="float32"):
        Interactions.from_arrays([1, 1], [1, 1], [3e38, 3e38])  # the merged sum overflows


# ------------------------------------------------------------------ text ids
def test_na_and_null_are_ids_not_missing(tmp_path: Path) -> None:
    x = load_csv(write(tmp_path, "x.csv", "user,item\nNA,2\nnull,3\nnan,4\nNone,5\n"))
    assert sorted(x.user_ids.tolist()) == ["NA", "None", "nan", "null"]
    e = refused(load_csv, write(tmp_path, "y.csv", "user,item\nNA,2\n,3\n"))
    assert (e.line, e.field, e.message, e.found) == (3, "user", "missing id", "empty")
    e = refused(load_csv, write(tmp_path, "z.csv", "user,item,v\n1,2,NA\n"), value_col="v")
    assert (e.line, e.field, e.message) == (2, "v", "value is not a number")
    pq.write_table(pa.table({"user": ["NA", "null"], "item": [1, 2]}), tmp_path / "t.parquet")
    assert sorted(load_parquet(tmp_path / "t.parquet").user_ids.tolist()) == ["NA", "null"]


def test_text_ids_are_never_merged(tmp_path: Path) -> None:
    # "+5", "05" and "5" are three ids; so are Arabic-Indic "١٢" and "12".
    x = load_csv(write(tmp_path, "x.csv", "user,item\n+5,1\n05,1\n5,1\n\u0661\u0662,1\n12,1\n"))
    assert x.n_users == 5 and x.user_ids.dtype == object
    y = load_csv(write(tmp_path, "y.csv", "user,item\n5,1\n-3,1\n0,1\n"))
    assert y.user_ids.dtype == np.int64 and sorted(y.user_ids.tolist()) == [-3, 0, 5]


def test_iso_dates_only(tmp_path: Path) -> None:
    x = load_csv(
        write(tmp_path, "x.csv", "user,item,t\n1,2,2024-01-02\n1,3,2024-01-02T00:00:01Z\n"),
        timestamp_col="t",
    )
    assert x.timestamps is not None and sorted(x.timestamps.tolist()) == [1704153600, 1704153601]
    e = refused(
        load_csv,
        write(tmp_path, "y.csv", "user,item,t\n1,2,2024-01-02\n1,3,now\n"),
        timestamp_col="t",
    )
    assert (e.line, e.field, e.found) == (3, "t", "now")


# ------------------------------------------------------------------ typed tables
@pytest.mark.parametrize(
    "column",
    [
        pa.array([[1], [2]]),
        pa.array([{"a": 1}, {"a": 2}]),
        pa.array([True, False]),
        pa.array([b"x", b"y"]),
    ],
)
def test_parquet_ids_of_unsupported_types(tmp_path: Path, column: pa.Array) -> None:
    pq.write_table(pa.table({"user": column, "item": [1, 2]}), tmp_path / "x.parquet")
    e = refused(load_parquet, tmp_path / "x.parquet")
    assert e.field == "user" and e.message == "column of an unsupported type"
    assert str(column.type).split("<")[0] in str(e.found)


def test_parquet_null_id_and_boolean_values(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user": [1, None], "item": [1, 2]}), tmp_path / "n.parquet")
    e = refused(load_parquet, tmp_path / "n.parquet")
    assert (e.line, e.field, e.message) == (2, "user", "missing id")
    pq.write_table(
        pa.table({"user": [1, 2], "item": [1, 2], "v": [True, False]}), tmp_path / "b.parquet"
    )
    x = load_parquet(tmp_path / "b.parquet", value_col="v")
    assert entries(x) == {(1, 1): 1.0, (2, 2): 0.0}


@pytest.mark.parametrize(
    ("users", "row", "message"),
    [
        ([[1], [2]], 1, "id is not an integer or a string"),
        ([1, "a"], 2, "ids mix integers and strings"),
        (["a", 2], 2, "ids mix strings and integers"),
        ([1, 2.5], 2, "ids mix integers and floats"),
        ([{"a": 1}, 1], 1, "id is not an integer or a string"),
        (["a", ""], 2, "missing id"),
        ([1.0, float("inf")], 2, "id is not finite"),
    ],
)
def test_dataframe_ids(users: list[object], row: int, message: str) -> None:
    df = pd.DataFrame({"user": pd.Series(users, dtype=object), "item": [1, 2]})
    with pytest.raises(DataError) as e:
        from_dataframe(df)
    assert (e.value.line, e.value.field, e.value.message) == (row, "user", message)


def test_from_arrays_refuses_nested_ids() -> None:
    with pytest.raises(DataError, match=r"one-dimensional|not an integer or a string"):
        Interactions.from_arrays([[1, 2], [3, 4]], [1, 2])
    with pytest.raises(DataError, match="not an integer or a string"):
        Interactions.from_arrays([[1, 2], [3]], [1, 2])
    with pytest.raises(DataError, match=r"unsupported type|not an integer or a string"):
        Interactions.from_arrays([True, False], [1, 2])
    with pytest.raises(DataError, match="repeat"):
        Interactions.from_arrays([1], [1], item_ids=[1, 1, 2])


def test_one_person_cannot_become_several_users() -> None:
    """Each way one person's data could span several rows (or one pair several entries) — each
    would multiply that person's contribution past every stated sensitivity — is refused."""
    dup = sp.csr_matrix(
        (np.ones(3, np.float32), np.array([3, 3, 1]), np.array([0, 2, 3])), shape=(2, 5)
    )  # user 0 stores item 3 twice: a non-canonical CSR straight into the constructor
    with pytest.raises(DataError, match="more than once"):
        Interactions(dup, np.array(["a", "b"]), np.arange(5))
    unsorted = sp.csr_matrix(
        (np.ones(3, np.float32), np.array([3, 1, 1]), np.array([0, 2, 3])), shape=(2, 5)
    )  # unsorted but distinct: fine
    assert Interactions(unsorted, np.array(["a", "b"]), np.arange(5)).nnz == 3
    with pytest.raises(DataError, match="user ids repeat"):
        Interactions.from_csr(sp.csr_matrix(np.ones((3, 2), np.float32)), user_ids=["a", "a", "b"])
    with pytest.raises(DataError, match="item ids repeat"):
        Interactions(sp.csr_matrix(np.ones((1, 2), np.float32)), np.array([0]), np.array([7, 7]))
    with pytest.raises(DataError, match="user index repeats"):
        Interactions.from_arrays([1, 2], [1, 2]).subset_users([0, 0, 1])
    # a plain list mixing numbers and text was turned into text: 1 and 1.0 became two people
    with pytest.raises(DataError):
        Interactions.from_arrays([1, 1.0, "2"], [1, 2, 3])
    with pytest.raises(DataError):
        Interactions.from_arrays(["a", 2], [1, 2])
    assert Interactions.from_arrays([1, 1.0, 2], [1, 2, 3]).n_users == 2
    # given as an object array, 1 and "1" are two keys to pandas but one person to the ledger
    mixed = np.array([1, "1"], dtype=object)
    with pytest.raises(DataError, match="user ids repeat"):
        Interactions.from_csr(sp.csr_matrix(np.ones((2, 2), np.float32)), user_ids=mixed)
    with pytest.raises(DataError, match="integers"):
        Interactions.from_arrays([1, 2], [1, 2]).subset_users(np.array([0.7]))
    x = Interactions.from_arrays([1, 2], [1, 2])
    for bad in (np.nan, -1.0, np.inf, 1e39):
        with pytest.raises(DataError, match="finite and non-negative"):
            x.with_matrix(sp.csr_matrix(np.array([[bad, 0.0], [0.0, 1.0]])))


def test_dataframe_far_future_datetimes() -> None:
    t = pd.Series(np.array(["4013-10-04T23:07:59", "2000-01-01"], dtype="datetime64[us]"))
    x = from_dataframe(pd.DataFrame({"user": [1, 2], "item": [1, 2], "t": t}), timestamp_col="t")
    assert x.timestamps is not None and sorted(x.timestamps.tolist())[1] > 6.4e10


# ------------------------------------------------------------------ arguments and files
def test_binarize_nan_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "u.data", "1\t2\t3\t4\n")
    with pytest.raises(ConfigError, match="finite"):
        load_ml100k(p, binarize=float("nan"))


def test_load_with_an_option_the_format_does_not_take(tmp_path: Path) -> None:
    p = write(tmp_path, "u.data", "1\t2\t3\t4\n")
    with pytest.raises(ConfigError, match="user_col"):
        load(p, user_col="x")


def test_csv_separator_must_be_one_character(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sep"):
        load_csv(write(tmp_path, "x.csv", "user::item\n1::2\n"), sep="::")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_before_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "u.data"
    os.mkfifo(fifo)
    e = refused(load_ml100k, fifo)  # would block forever on read
    assert e.message == "not a regular file"


def test_user_on_two_lines_warns(tmp_path: Path) -> None:
    p = write(tmp_path, "train.txt", "0 1\n1 2\n0 3\n")
    with pytest.warns(DataWarning, match="more than one line"):
        users, items, all_users = read_user_item_lists(p)
    assert all_users.tolist() == [0, 1] and sorted(zip(users, items, strict=True)) == [
        (0, 1),
        (0, 3),
        (1, 2),
    ]


def test_unclosed_quote_names_its_line(tmp_path: Path) -> None:
    e = refused(load_csv, write(tmp_path, "x.csv", 'user,item\n1,2\n"3,4\n5,6\n'))
    assert (e.line, e.field, e.message) == (3, "user", "quoted field is not closed")


def test_valid_files_load_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_csv(write(tmp_path, "x.csv", 'user,item\n"a, b",2\n'))
        load_ml100k(write(tmp_path, "u.data", "1\t2\t3\t4\n"))


def test_a_catalogue_listing_an_item_twice_once_cast_is_a_typed_error() -> None:
    from privrec.models.base import on_catalogue

    x = Interactions.from_arrays([1, 2], [1, 2])
    with pytest.raises(DataError, match="catalogue lists an item twice"):
        on_catalogue(x, np.array(["1", "01", "2"]))  # a text file: both read as item 1
