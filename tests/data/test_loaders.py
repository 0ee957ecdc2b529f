"""Loaders: each format on small hand-written files, every bad-input path, real-data counts."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privrec.data import (
    FORMATS,
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
from privrec.errors import DataError, DataWarning, DuplicateInteractionError


def write(tmp_path: Path, name: str, text: str, newline: str = "\n") -> Path:
    p = tmp_path / name
    p.write_bytes(text.replace("\n", newline).encode())
    return p


def entries(x: Interactions) -> dict[tuple[object, object], float]:
    df = x.to_dataframe()
    return {(u, i): float(v) for u, i, v in zip(df["user"], df["item"], df["value"], strict=True)}


# ------------------------------------------------------------------ good files
def test_ml100k(tmp_path: Path) -> None:
    p = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t1\n")
    x = load_ml100k(p)
    assert (x.n_users, x.n_items, x.nnz) == (3, 3, 3)
    assert x.user_ids.tolist() == [22, 186, 196]
    assert entries(x) == {(196, 242): 3.0, (186, 302): 3.0, (22, 377): 1.0}
    assert x.timestamps is not None
    assert sorted(x.timestamps.tolist()) == [1.0, 881250949.0, 891717742.0]
    assert x.user_index([196]).tolist() == [2]


def test_movielens_dat_and_timestamps_follow_entries(tmp_path: Path) -> None:
    p = write(
        tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::7\n"
    )
    x = load_movielens_dat(p)
    assert entries(x) == {(1, 1193): 5.0, (1, 661): 3.0, (2, 1193): 4.0}
    df = x.to_dataframe()
    ts = dict(zip(zip(df["user"], df["item"], strict=True), df["timestamp"], strict=True))
    assert ts[(1, 661)] == 978302109 and ts[(2, 1193)] == 7


def test_movielens_csv_half_stars(tmp_path: Path) -> None:
    p = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,3,0.5,10\n")
    x = load_movielens_csv(p)
    assert entries(x) == {(1, 1): 4.0, (1, 3): 0.5}


def test_lastfm_crlf(tmp_path: Path) -> None:
    text = "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n3\t51\t0\n"
    p = write(tmp_path, "user_artists.dat", text, newline="\r\n")
    x = load_lastfm(p)
    assert entries(x) == {(2, 51): 13883.0, (2, 52): 11690.0, (3, 51): 0.0}
    assert x.timestamps is None


def test_movietweetings_zero_padded_imdb_ids(tmp_path: Path) -> None:
    p = write(
        tmp_path, "ratings.dat", "1::0104257::8::1364690142\n2::1074638::10::5\n3::0000001::0::6\n"
    )
    x = load_movietweetings(p)
    assert entries(x) == {(1, 104257): 8.0, (2, 1074638): 10.0, (3, 1): 0.0}


def test_user_item_lists_keeps_users_without_items(tmp_path: Path) -> None:
    p = write(tmp_path, "train.txt", "0 0 1 2\n1\n2 2\t5 \n\n")
    users, items, all_users = read_user_item_lists(p)
    assert users.dtype == np.int64 and items.dtype == np.int64
    assert users.tolist() == [0, 0, 0, 2, 2]
    assert items.tolist() == [0, 1, 2, 2, 5]
    assert all_users.tolist() == [0, 1, 2]
    x = load_user_item_lists(p)
    assert x.n_users == 3 and x.user_counts.tolist() == [3, 0, 2]
    assert x.item_ids.tolist() == [0, 1, 2, 5]
    assert set(x.matrix.data.tolist()) == {1.0}


def test_user_item_lists_fixed_item_space(tmp_path: Path) -> None:
    p = write(tmp_path, "test.txt", "0 3\n1 0\n")
    x = load_user_item_lists(p, item_ids=np.arange(6))
    assert x.n_items == 6 and x.item_index([3]).tolist() == [3]


def test_generic_csv_tsv_parquet(tmp_path: Path) -> None:
    csv = write(tmp_path, "x.csv", 'uid,extra,iid,score,when\n"a",x,007,1.5,10\nb,,12,2,11\n')
    x = load_csv(csv, user_col="uid", item_col="iid", value_col="score", timestamp_col="when")
    assert entries(x) == {("a", "007"): 1.5, ("b", "12"): 2.0}  # "007" kept as text
    tsv = write(tmp_path, "x.tsv", "user\titem\n1\t2\n3\t4\n")
    y = load_tsv(tsv)
    assert entries(y) == {(1, 2): 1.0, (3, 4): 1.0}
    assert y.user_ids.dtype == np.int64
    df = pd.DataFrame({"u": [1, 2], "i": ["p", "q"], "v": [1.0, 3.0]})
    pq = tmp_path / "x.parquet"
    df.to_parquet(pq)
    z = load_parquet(pq, user_col="u", item_col="i", value_col="v")
    assert entries(z) == {(1, "p"): 1.0, (2, "q"): 3.0}


def test_generic_csv_date_timestamps(tmp_path: Path) -> None:
    p = write(tmp_path, "x.csv", "user,item,t\n1,2,1970-01-01T00:01:00Z\n1,3,1970-01-02\n")
    x = load_csv(p, timestamp_col="t")
    assert x.timestamps is not None
    assert sorted(x.timestamps.tolist()) == [60.0, 86400.0]


def test_from_dataframe_reexport() -> None:
    x = from_dataframe(pd.DataFrame({"user": [1], "item": [2]}))
    assert x.nnz == 1


def test_binarize_keeps_id_space(tmp_path: Path) -> None:
    p = write(tmp_path, "u.data", "1\t1\t5\t1\n1\t2\t2\t2\n2\t1\t1\t3\n")
    x = load_ml100k(p, binarize=4)
    assert x.n_users == 2 and x.nnz == 1
    assert entries(x) == {(1, 1): 1.0}


def test_duplicates_counted_and_policies(tmp_path: Path) -> None:
    p = write(tmp_path, "u.data", "1\t1\t5\t1\n1\t1\t3\t2\n2\t2\t1\t3\n2\t2\t4\t4\n3\t3\t1\t5\n")
    with pytest.warns(DataWarning, match="2 duplicate"):
        x = load_ml100k(p)
    assert entries(x)[(1, 1)] == 8.0
    with pytest.warns(DataWarning, match="2 duplicate"):
        y = load_ml100k(p, duplicates="last")
    assert entries(y) == {(1, 1): 3.0, (2, 2): 4.0, (3, 3): 1.0}
    with pytest.raises(DuplicateInteractionError):
        load_ml100k(p, duplicates="error")


def test_no_warning_without_duplicates(tmp_path: Path) -> None:
    p = write(tmp_path, "u.data", "1\t1\t5\t1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_ml100k(p)


# ------------------------------------------------------------------ dispatch
@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("u.data", "1\t2\t3\t4\n", "ml-100k"),
        ("ratings.dat", "1::2::3::4\n", "movielens-dat"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n", "movielens-csv"),
        ("user_artists.dat", "userID\tartistID\tweight\n1\t2\t3\n", "lastfm"),
    ],
)
def test_load_infers_format(tmp_path: Path, name: str, text: str, fmt: str) -> None:
    p = write(tmp_path, name, text)
    assert entries(load(p)) == entries(load(p, format=fmt)) == {(1, 2): 3.0}


def test_load_infers_movietweetings_and_parquet(tmp_path: Path) -> None:
    d = tmp_path / "movietweetings-100k"
    d.mkdir()
    p = write(d, "ratings.dat", "1::2::9::4\n")
    assert entries(load(p)) == {(1, 2): 9.0}  # 9 is outside MovieLens' range
    pq = tmp_path / "data.parquet"
    pd.DataFrame({"user": [1], "item": [2]}).to_parquet(pq)
    assert load(pq).nnz == 1


def test_load_passes_options(tmp_path: Path) -> None:
    p = write(tmp_path, "x.txt", "0 1 2\n")
    assert load(p, format="user-item-lists").nnz == 2
    q = write(tmp_path, "y.csv", "a,b\n1,2\n")
    assert load(q, format="csv", user_col="a", item_col="b").nnz == 1


def test_a_folder_is_refused_as_a_folder_naming_what_to_give(tmp_path: Path) -> None:
    """A dataset's download folder where a file was expected: the error says it is a folder
    (not "cannot tell the format") and names the interaction file inside it, if any."""
    ml = tmp_path / "ml-100k"
    ml.mkdir()
    write(ml, "u.data", "1\t2\t3\t4\n")
    write(ml, "u.item", "2|Toy Story\n")
    for fmt in (None, "ml-100k"):
        with pytest.raises(DataError, match="this is a folder, not a file") as e:
            load(ml, format=fmt)
        assert e.value.field is None and "'u.data'" in str(e.value)
    empty = tmp_path / "other"
    empty.mkdir()
    with pytest.raises(DataError, match=r"folder.*no file in it is named u\.data"):
        load(empty)
    split = tmp_path / "split"
    split.mkdir()
    write(split, "train.txt", "0 1 2\n")
    with pytest.raises(DataError, match=r"split folder.*load_split"):
        load(split)


def test_unknown_format_lists_known(tmp_path: Path) -> None:
    p = write(tmp_path, "x.txt", "1 2\n")
    with pytest.raises(DataError) as e:
        load(p, format="netflix")
    assert e.value.field == "format" and e.value.found == "netflix"
    assert e.value.expected is not None
    assert all(name in e.value.expected for name in FORMATS)


def test_ambiguous_name_asks_for_format(tmp_path: Path) -> None:
    p = write(tmp_path, "train.txt", "1 2\n")
    with pytest.raises(DataError, match="format"):
        load(p)


def test_file_not_found(tmp_path: Path) -> None:
    loaders: list[Callable[..., Interactions]] = [
        load_ml100k,
        load_movielens_dat,
        load_lastfm,
        load_user_item_lists,
        load_csv,
        load_parquet,
    ]
    for loader in loaders:
        with pytest.raises(DataError, match="not found") as e:
            loader(tmp_path / "missing.dat")
        assert e.value.file == str(tmp_path / "missing.dat")


# ------------------------------------------------------------------ bad input
BAD_ML100K = [
    # (text, line, field, message fragment)
    ("1\t2\t3\t4\n1\t2\t3\n", 2, "timestamp", "missing field"),
    ("1\t2\t3\t4\n5\t6\t4\t8\n1\t2\t3\t4\t5\n", 3, "column 5", "too many fields"),
    ("1\t2\t3\t4\nx\t2\t3\t4\n", 2, "user", "not an integer"),
    ("1\t2\t3\t4\n1\t2.5\t3\t4\n", 2, "item", "not an integer"),
    ("1\t2\t3\t4\n1\t2\tfive\t4\n", 2, "rating", "not a number"),
    ("1\t2\t3\t4\n1\t2\tnan\t4\n", 2, "rating", "not finite"),
    ("1\t2\t3\t4\n1\t2\tinf\t4\n", 2, "rating", "not finite"),
    ("1\t2\t3\t4\n1\t2\t-1\t4\n", 2, "rating", "negative"),
    ("1\t2\t3\t4\n1\t2\t6\t4\n", 2, "rating", "above"),
    ("1\t2\t3\t4\n\n1\t2\t3\tnow\n", 3, "timestamp", "not an integer"),  # blank line counted
    ("1\t2\t3\t4\n1\t\t3\t4\n", 2, "item", "not an integer"),
]


@pytest.mark.parametrize(("text", "line", "field", "msg"), BAD_ML100K)
def test_ml100k_bad_input(tmp_path: Path, text: str, line: int, field: str, msg: str) -> None:
    p = write(tmp_path, "u.data", text)
    with pytest.raises(DataError, match=msg) as e:
        load_ml100k(p)
    assert (e.value.line, e.value.field, e.value.file) == (line, field, str(p))
    assert e.value.expected is not None and e.value.found is not None


@pytest.mark.parametrize(
    ("text", "line", "field", "msg"),
    [
        ("1::2::3::4\n1:2::3::4\n", 2, "timestamp", "missing field"),
        ("1::2::3::4\n1::2::3::4::5\n", 2, "column 5", "too many"),
        ("1::2::3::4\n1::tt2::3::4\n", 2, "item", "not an integer"),
        ("1::2::3::4\n1::2::3.5.1::4\n", 2, "rating", "not a number"),
        ("1::2::3::4\r\n1::2::-3::4\r\n", 2, "rating", "negative"),
    ],
)
def test_double_colon_bad_input(tmp_path: Path, text: str, line: int, field: str, msg: str) -> None:
    p = write(tmp_path, "ratings.dat", text)
    with pytest.raises(DataError, match=msg) as e:
        load_movielens_dat(p)
    assert (e.value.line, e.value.field) == (line, field)


def test_movietweetings_range(tmp_path: Path) -> None:
    p = write(tmp_path, "ratings.dat", "1::2::10::4\n1::3::11::4\n")
    with pytest.raises(DataError, match="above") as e:
        load_movietweetings(p)
    assert (e.value.line, e.value.field) == (2, "rating")


def test_lastfm_negative_weight_line_counts_header(tmp_path: Path) -> None:
    text = "userID\tartistID\tweight\n2\t51\t13\n2\t52\t-4\n"
    p = write(tmp_path, "user_artists.dat", text, newline="\r\n")
    with pytest.raises(DataError, match="negative") as e:
        load_lastfm(p)
    assert (e.value.line, e.value.field, e.value.found) == (3, "weight", "-4")


def test_header_required(tmp_path: Path) -> None:
    p = write(tmp_path, "ratings.csv", "1,2,3.0,4\n")
    with pytest.raises(DataError, match="header") as e:
        load_movielens_csv(p)
    assert (e.value.line, e.value.field) == (1, "header")


@pytest.mark.parametrize(
    ("loader", "text", "line"),
    [
        (load_ml100k, "", 1),
        (load_movielens_dat, "", 1),
        (load_movielens_csv, "userId,movieId,rating,timestamp\n", 2),
        (load_lastfm, "userID\tartistID\tweight\r\n", 2),
        (load_user_item_lists, "\n\n", 1),
        (load_csv, "user,item\n", 2),
        (load_csv, "", 1),
    ],
)
def test_empty_files(
    tmp_path: Path, loader: Callable[..., Interactions], text: str, line: int
) -> None:
    p = write(tmp_path, "f.dat", text)
    with pytest.raises(DataError, match="no data rows") as e:
        loader(p)
    assert (e.value.line, e.value.field) == (line, "rows")


def test_user_item_lists_bad_token(tmp_path: Path) -> None:
    p = write(tmp_path, "train.txt", "0 1 2\n1 3 x4\n")
    with pytest.raises(DataError, match="not a non-negative integer") as e:
        read_user_item_lists(p)
    assert (e.value.line, e.value.field, e.value.found) == (2, "item", "x4")
    q = write(tmp_path, "valid.txt", "0 1\n\n-1 3\n")
    with pytest.raises(DataError) as e:
        load_user_item_lists(q)
    assert (e.value.line, e.value.field) == (3, "user")


def test_csv_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path, "x.csv", "user,item\n1,2\n")
    with pytest.raises(DataError, match="missing column") as e:
        load_csv(p, value_col="rating")
    assert (e.value.line, e.value.field) == (1, "rating")
    pq = tmp_path / "x.parquet"
    pd.DataFrame({"user": [1], "item": [2]}).to_parquet(pq)
    with pytest.raises(DataError, match="missing column") as e:
        load_parquet(pq, timestamp_col="ts")
    assert e.value.field == "ts"


@pytest.mark.parametrize(
    ("text", "line", "field", "msg"),
    [
        ("user,item,v\n1,2,3\n\n1,3,abc\n", 4, "v", "not a number"),
        ("user,item,v\n1,2,3\n1,3,-1\n", 3, "v", "negative"),
        ("user,item,v\n1,2,3\n1,3,nan\n", 3, "v", "not finite"),
        ("user,item,v\n1,2,3\n1,3\n", 3, "v", "missing field"),
        ("user,item,v\n1,2,3\n1,3,4,5\n", 3, "column 4", "too many"),
        ("user,item,v\n1,2,3\n,3,4\n", 3, "user", "missing id"),
    ],
)
def test_csv_bad_input(tmp_path: Path, text: str, line: int, field: str, msg: str) -> None:
    p = write(tmp_path, "x.csv", text)
    with pytest.raises(DataError, match=msg) as e:
        load_csv(p, value_col="v")
    assert (e.value.line, e.value.field) == (line, field)


def test_csv_negative_allowed(tmp_path: Path) -> None:
    p = write(tmp_path, "x.csv", "user,item,v\n1,2,-3\n")
    assert entries(load_csv(p, value_col="v", allow_negative=True)) == {(1, 2): -3.0}


def test_parquet_bad_value_row(tmp_path: Path) -> None:
    pq = tmp_path / "x.parquet"
    pd.DataFrame({"user": [1, 2, 3], "item": [1, 2, 3], "v": [1.0, np.inf, 2.0]}).to_parquet(pq)
    with pytest.raises(DataError, match="not finite") as e:
        load_parquet(pq, value_col="v")
    assert (e.value.line, e.value.field) == (2, "v")
    bad = write(tmp_path, "bad.parquet", "not parquet")
    with pytest.raises(DataError, match="Parquet"):
        load_parquet(bad)


# ------------------------------------------------------------------ properties
triples = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 5), st.integers(0, 2**31)),
    min_size=1,
    max_size=40,
    unique_by=lambda t: (t[0], t[1]),
)


@given(rows=triples)
def test_ml100k_roundtrip(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[int, ...]]
) -> None:
    d = tmp_path_factory.mktemp("rt")
    p = write(d, "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    x = load_ml100k(p)
    assert entries(x) == {(u, i): float(r) for u, i, r, _ in rows}
    df = x.to_dataframe()
    got = {(u, i): t for u, i, t in zip(df["user"], df["item"], df["timestamp"], strict=True)}
    assert got == {(u, i): float(t) for u, i, _, t in rows}


@given(
    lists=st.dictionaries(
        st.integers(0, 10**12),
        st.lists(st.integers(0, 10**12), max_size=6),
        min_size=1,
        max_size=15,
    )
)
def test_user_item_lists_roundtrip(
    tmp_path_factory: pytest.TempPathFactory, lists: dict[int, list[int]]
) -> None:
    d = tmp_path_factory.mktemp("rt")
    text = "".join(" ".join(map(str, [u, *its])) + "\n" for u, its in lists.items())
    users, items, all_users = read_user_item_lists(write(d, "l.txt", text))
    assert all_users.tolist() == sorted(lists)
    assert list(zip(users.tolist(), items.tolist(), strict=True)) == [
        (u, i) for u, its in lists.items() for i in its
    ]


# ------------------------------------------------------------------ real data
@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "file", "fmt", "nnz", "users", "items"),
    [
        ("ml-100k", "u.data", "ml-100k", 100_000, 943, 1_682),
        ("ml-latest-small", "ratings.csv", "movielens-csv", 100_836, 610, 9_724),
        ("hetrec2011-lastfm-2k", "user_artists.dat", "lastfm", 92_834, 1_892, 17_632),
        ("movietweetings-100k", "ratings.dat", "movietweetings", 100_000, 16_554, 10_506),
    ],
)
def test_real_counts(
    dataset: Callable[[str], Path],
    name: str,
    file: str,
    fmt: str,
    nnz: int,
    users: int,
    items: int,
) -> None:
    path = dataset(name) / file
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # none of these files has duplicates
        x = load(path, format=fmt)
    assert (x.nnz, x.n_users, x.n_items) == (nnz, users, items)
    assert entries(load(path)) == entries(x)  # the file name alone gives the format


@pytest.mark.realdata
def test_real_lastfm_weight_sum(dataset: Callable[[str], Path]) -> None:
    x = load_lastfm(dataset("hetrec2011-lastfm-2k") / "user_artists.dat")
    assert float(x.matrix.data.astype(np.float64).sum()) == 69_183_975


@pytest.mark.realdata
def test_real_ml100k_ratings(dataset: Callable[[str], Path]) -> None:
    x = load_ml100k(dataset("ml-100k") / "u.data")
    values, counts = np.unique(x.matrix.data, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        1.0: 6110,
        2.0: 11370,
        3.0: 27145,
        4.0: 34174,
        5.0: 21201,
    }
    assert x.timestamps is not None
    assert (x.timestamps.min(), x.timestamps.max()) == (874724710, 893286638)


@pytest.mark.realdata
def test_real_user_item_lists(dataset: Callable[[str], Path]) -> None:
    path = dataset("ml-1m-implicit-r3") / "train.txt"
    users, items, all_users = read_user_item_lists(path)
    assert users.size == items.size == 590_733
    assert all_users.size == 6_039
    x = load_user_item_lists(path)
    assert (x.nnz, x.n_users) == (590_733, 6_039)
