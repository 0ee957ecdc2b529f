"""The Interactions matrix: construction, duplicate policies, transformations, immutability."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from privrec.data import Interactions
from privrec.errors import (
    DataError,
    DataWarning,
    DuplicateInteractionError,
    UnknownItemError,
    UnknownUserError,
)


def as_dict(x: Interactions) -> dict[tuple[object, object], float]:
    df = x.to_dataframe()
    return {(u, i): float(v) for u, i, v in zip(df["user"], df["item"], df["value"], strict=True)}


def times(x: Interactions) -> dict[tuple[object, object], float]:
    df = x.to_dataframe()
    return dict(zip(zip(df["user"], df["item"], strict=True), df["timestamp"], strict=True))


# ------------------------------------------------------------------ construction
def test_from_arrays_basic() -> None:
    x = Interactions.from_arrays(["bob", "ann", "ann"], ["b", "a", "c"], [2.0, 1.0, 5.0])
    assert (x.n_users, x.n_items, x.nnz, len(x)) == (2, 3, 3, 3)
    assert x.user_ids.tolist() == ["ann", "bob"]  # sorted distinct ids
    assert x.item_ids.tolist() == ["a", "b", "c"]
    assert x.matrix.dtype == np.float32
    assert x.matrix.toarray().tolist() == [[1.0, 0.0, 5.0], [0.0, 2.0, 0.0]]
    assert x.density == pytest.approx(3 / 6)
    assert x.user_counts.tolist() == [2, 1] and x.item_counts.tolist() == [1, 1, 1]
    assert "nnz=3" in repr(x)


def test_implicit_default_and_fixed_id_space() -> None:
    x = Interactions.from_arrays([1, 2], [10, 30], user_ids=[0, 1, 2], item_ids=[10, 20, 30])
    assert x.matrix.shape == (3, 3)
    assert x.user_counts.tolist() == [0, 1, 1] and x.item_counts.tolist() == [1, 0, 1]
    assert set(x.matrix.data.tolist()) == {1.0}
    with pytest.raises(DataError, match="outside the given index space") as e:
        Interactions.from_arrays([1, 9], [10, 10], user_ids=[0, 1, 2])
    assert e.value.field == "user" and e.value.found == 9


def test_timestamps_follow_their_entries() -> None:
    x = Interactions.from_arrays([2, 1, 1], [5, 7, 3], timestamps=[100, 200, 300])
    assert times(x) == {(2, 5): 100, (1, 7): 200, (1, 3): 300}


def test_empty() -> None:
    x = Interactions.from_arrays(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert (x.n_users, x.n_items, x.nnz, x.density) == (0, 0, 0, 0.0)


def test_length_mismatch() -> None:
    with pytest.raises(DataError, match="differ in length"):
        Interactions.from_arrays([1, 2], [1])
    with pytest.raises(DataError, match="differ in length"):
        Interactions.from_arrays([1, 2], [1, 2], [1.0])
    with pytest.raises(DataError, match="differ in length"):
        Interactions.from_arrays([1, 2], [1, 2], timestamps=[1.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_and_timestamps(bad: float) -> None:
    with pytest.raises(DataError, match="not finite") as e:
        Interactions.from_arrays([1, 2, 3], [1, 2, 3], [1.0, bad, 2.0])
    assert e.value.field == "value" and "row 1" in str(e.value.found)
    with pytest.raises(DataError, match="not finite") as e:
        Interactions.from_arrays([1, 2], [1, 2], timestamps=[1.0, bad])
    assert e.value.field == "timestamp"


def test_negative_values() -> None:
    with pytest.raises(DataError, match="negative") as e:
        Interactions.from_arrays([1, 2], [1, 2], [1.0, -0.5])
    assert e.value.field == "value"
    x = Interactions.from_arrays([1, 2], [1, 2], [1.0, -0.5], allow_negative=True)
    assert as_dict(x)[(2, 2)] == -0.5


def test_non_numeric_values() -> None:
    with pytest.raises(DataError, match="not numeric"):
        Interactions.from_arrays([1], [1], ["high"])  # type: ignore[list-item]


def test_unknown_policy() -> None:
    with pytest.raises(DataError, match="duplicate policy") as e:
        Interactions.from_arrays([1], [1], duplicates="max")  # type: ignore[arg-type]
    assert e.value.field == "duplicates"


# ------------------------------------------------------------------ duplicates
DUP_USERS = [1, 1, 2, 1, 2, 3]
DUP_ITEMS = [1, 1, 2, 1, 2, 3]
DUP_VALUES = [1.0, 2.0, 5.0, 4.0, 3.0, 1.0]
DUP_TIMES = [10, 30, 5, 20, 1, 7]


def test_duplicates_sum_counts_and_keeps_latest_time() -> None:
    with pytest.warns(DataWarning, match=r"3 duplicate .* policy 'sum'"):
        x = Interactions.from_arrays(DUP_USERS, DUP_ITEMS, DUP_VALUES, DUP_TIMES, source="f.csv")
    assert as_dict(x) == {(1, 1): 7.0, (2, 2): 8.0, (3, 3): 1.0}
    assert times(x) == {(1, 1): 30, (2, 2): 5, (3, 3): 7}


def test_duplicates_last_is_input_order() -> None:
    with pytest.warns(DataWarning, match="3 duplicate"):
        x = Interactions.from_arrays(DUP_USERS, DUP_ITEMS, DUP_VALUES, DUP_TIMES, duplicates="last")
    assert as_dict(x) == {(1, 1): 4.0, (2, 2): 3.0, (3, 3): 1.0}
    assert times(x) == {(1, 1): 20, (2, 2): 1, (3, 3): 7}


def test_duplicates_error_names_the_pair() -> None:
    with pytest.raises(DuplicateInteractionError) as e:
        Interactions.from_arrays(DUP_USERS, DUP_ITEMS, duplicates="error", source="f.csv")
    assert isinstance(e.value, DataError)
    assert e.value.file == "f.csv" and e.value.field == "user,item"


def test_warning_message_names_source_and_silence_without_duplicates() -> None:
    with pytest.warns(DataWarning, match=r"1 duplicate .* in f\.csv"):
        Interactions.from_arrays([1, 1], [1, 1], source="f.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Interactions.from_arrays([1, 1], [1, 2])


@given(
    pairs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 9)), max_size=60)
)
def test_sum_policy_matches_a_dictionary(pairs: list[tuple[int, int, int]]) -> None:
    expected: dict[tuple[object, object], float] = {}
    for u, i, v in pairs:
        expected[(u, i)] = expected.get((u, i), 0.0) + v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        x = Interactions.from_arrays(
            np.array([p[0] for p in pairs], dtype=np.int64),
            np.array([p[1] for p in pairs], dtype=np.int64),
            np.array([p[2] for p in pairs], dtype=np.float64),
        )
    assert as_dict(x) == expected
    assert x.matrix.has_sorted_indices


# ------------------------------------------------------------------ lookups
def test_index_lookups_and_unknown_ids() -> None:
    x = Interactions.from_arrays(["ann", "bob"], ["a", "b"])
    assert x.user_index(["bob", "ann"]).tolist() == [1, 0]
    assert x.item_index("b").tolist() == [1]
    with pytest.raises(UnknownUserError, match="'zoe'") as e:
        x.user_index(["ann", "zoe", "yan"])
    assert "and 1 more" in str(e.value)
    assert isinstance(e.value, KeyError)
    with pytest.raises(UnknownItemError, match="unknown item id 'z';"):
        x.item_index(["z"])


# ------------------------------------------------------------------ transformations
def test_binarize() -> None:
    x = Interactions.from_arrays([1, 1, 2], [1, 2, 2], [5.0, 2.0, 3.0], timestamps=[1, 2, 3])
    b = x.binarize(3)
    assert b.matrix.toarray().tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert times(b) == {(1, 1): 1, (2, 2): 3}
    assert b.n_users == 2 and b.n_items == 2  # id space unchanged
    assert as_dict(x)[(1, 2)] == 2.0  # original untouched


def _filter_reference(
    pairs: set[tuple[int, int]], min_user: int, min_item: int
) -> set[tuple[int, int]]:
    cur = set(pairs)
    while True:
        uc: dict[int, int] = {}
        ic: dict[int, int] = {}
        for u, i in cur:
            uc[u] = uc.get(u, 0) + 1
            ic[i] = ic.get(i, 0) + 1
        nxt = {(u, i) for u, i in cur if uc[u] >= min_user and ic[i] >= min_item}
        if nxt == cur:
            return cur
        cur = nxt


def test_filter_reaches_a_fixed_point() -> None:
    # Dropping item 3 (one user) pushes user 2 under two interactions, which then
    # pushes item 2 under two users: one pass is not enough.
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (0, 2)]
    x = Interactions.from_arrays([p[0] for p in pairs], [p[1] for p in pairs])
    f = x.filter(2, 2)
    assert set(as_dict(f)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert f.user_ids.tolist() == [0, 1] and f.item_ids.tolist() == [0, 1]
    again = f.filter(2, 2)
    assert as_dict(again) == as_dict(f)


@given(
    pairs=st.sets(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=50),
    min_user=st.integers(1, 4),
    min_item=st.integers(1, 4),
)
def test_filter_matches_reference(
    pairs: set[tuple[int, int]], min_user: int, min_item: int
) -> None:
    ordered = sorted(pairs)
    x = Interactions.from_arrays(
        np.array([p[0] for p in ordered], dtype=np.int64),
        np.array([p[1] for p in ordered], dtype=np.int64),
        timestamps=np.array([10 * p[0] + p[1] for p in ordered], dtype=np.float64),
    )
    f = x.filter(min_user, min_item)
    assert set(as_dict(f)) == _filter_reference(pairs, min_user, min_item)
    assert all(t == 10 * u + i for (u, i), t in times(f).items())  # timestamps stay aligned
    if f.nnz:
        assert f.user_counts.min() >= min_user and f.item_counts.min() >= min_item


def test_filter_rejects_negative_thresholds() -> None:
    x = Interactions.from_arrays([1], [1])
    with pytest.raises(DataError):
        x.filter(-1, 1)


def test_subset_users_keeps_items_and_times() -> None:
    x = Interactions.from_arrays(
        [0, 0, 1, 2, 2], [0, 1, 1, 0, 2], [1.0, 2.0, 3.0, 4.0, 5.0], [1, 2, 3, 4, 5]
    )
    s = x.subset_users([2, 0])
    assert s.user_ids.tolist() == [2, 0] and s.n_items == 3
    assert as_dict(s) == {(2, 0): 4.0, (2, 2): 5.0, (0, 0): 1.0, (0, 1): 2.0}
    assert times(s) == {(2, 0): 4, (2, 2): 5, (0, 0): 1, (0, 1): 2}
    m = x.subset_users(np.array([False, True, False]))
    assert m.user_ids.tolist() == [1] and as_dict(m) == {(1, 1): 3.0}
    assert x.subset_users([-1]).user_ids.tolist() == [2]
    with pytest.raises(IndexError):
        x.subset_users([3])
    with pytest.raises(DataError, match="mask length"):
        x.subset_users(np.array([True, False]))


def test_with_matrix_and_from_csr() -> None:
    x = Interactions.from_arrays([0, 1], [0, 1], [1.0, 2.0], [5, 6])
    same_pattern = x.with_matrix(x.matrix * 2)
    assert as_dict(same_pattern) == {(0, 0): 2.0, (1, 1): 4.0}
    assert same_pattern.timestamps is not None  # pattern unchanged: times kept
    other = x.with_matrix(sp.csr_matrix(np.ones((2, 2))))
    assert other.timestamps is None and other.nnz == 4
    y = Interactions.from_csr(sp.coo_matrix(([1.0, 2.0], ([0, 0], [1, 1])), shape=(2, 3)))
    assert as_dict(y) == {(0, 1): 3.0}  # duplicates summed
    assert y.user_ids.tolist() == [0, 1] and y.n_items == 3
    with pytest.raises(DataError, match="non-finite"):
        Interactions.from_csr(sp.csr_matrix(np.array([[np.nan]])))


def test_from_dataframe() -> None:
    df = pd.DataFrame({"u": ["a", "b"], "i": [1, 2], "r": [4.0, 5.0], "t": [1, 2]})
    x = Interactions.from_dataframe(df, "u", "i", "r", "t")
    assert as_dict(x) == {("a", 1): 4.0, ("b", 2): 5.0}
    with pytest.raises(DataError, match="missing column") as e:
        Interactions.from_dataframe(df, "u", "item")
    assert e.value.field == "item"
    bad = df.assign(r=[4.0, np.nan])
    with pytest.raises(DataError) as e:
        Interactions.from_dataframe(bad, "u", "i", "r")
    assert (e.value.line, e.value.field) == (2, "r")
    missing = df.assign(u=["a", None])
    with pytest.raises(DataError, match="missing id") as e:
        Interactions.from_dataframe(missing, "u", "i")
    assert (e.value.line, e.value.field) == (2, "u")


# ------------------------------------------------------------------ immutability
def test_arrays_are_read_only() -> None:
    x = Interactions.from_arrays([1, 2], [1, 2], [1.0, 2.0], [1, 2])
    assert x.timestamps is not None
    for a in (
        x.matrix.data,
        x.matrix.indices,
        x.matrix.indptr,
        x.user_ids,
        x.item_ids,
        x.timestamps,
    ):
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0] = a[0]
    with pytest.raises(AttributeError):
        x.user_ids = np.array([5, 6])  # type: ignore[misc]


def test_transformations_do_not_share_writable_state() -> None:
    x = Interactions.from_arrays([1, 1, 2], [1, 2, 2], [5.0, 2.0, 3.0], [1, 2, 3])
    for y in (x.binarize(3), x.filter(1, 1), x.subset_users([0]), x.with_matrix(x.matrix)):
        assert not y.matrix.data.flags.writeable
        assert not y.user_ids.flags.writeable
    assert as_dict(x) == {(1, 1): 5.0, (1, 2): 2.0, (2, 2): 3.0}


def test_post_init_validates() -> None:
    m = sp.csr_matrix(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(DataError, match="shape"):
        Interactions(m, np.arange(3), np.arange(2))
    with pytest.raises(DataError, match="float32"):
        Interactions(sp.csr_matrix(np.ones((2, 2))), np.arange(2), np.arange(2))
    with pytest.raises(DataError, match="csr_matrix"):
        Interactions(sp.coo_matrix(m), np.arange(2), np.arange(2))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="timestamps"):
        Interactions(m, np.arange(2), np.arange(2), np.arange(3.0))
