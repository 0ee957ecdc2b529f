"""Splits: partitions, reproducibility, protocol specifics, validation, real data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from privrec.data.interactions import Interactions
from privrec.errors import DataError, DataWarning
from privrec.evaluation.splits import (
    EvalSet,
    Split,
    leave_last_out,
    load_split,
    random_holdout,
    split_from_frames,
    split_from_interactions,
    strong_generalization,
)


def _random_data(
    seed: int, n_users: int = 30, n_items: int = 40, density: float = 0.3
) -> Interactions:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(dense)
    ts = rng.integers(0, 50, size=u.size)  # coarse: plenty of ties
    return Interactions.from_arrays(
        u, i, timestamps=ts, user_ids=np.arange(n_users), item_ids=np.arange(n_items)
    )


def _scatter(es: EvalSet, n_users: int, which: str = "targets") -> sp.csr_matrix:
    """Put an EvalSet's rows back at their training-row positions (weak splits)."""
    assert es.users is not None
    m = getattr(es, which).tocoo()
    return sp.csr_matrix((m.data, (es.users[m.row], m.col)), shape=(n_users, m.shape[1]))


# ----------------------------------------------------------------------------- random_holdout
def test_random_holdout_partitions_every_interaction() -> None:
    data = _random_data(0)
    s = random_holdout(data, test_fraction=0.2, valid_fraction=0.1, seed=3)
    assert isinstance(s, Split) and s.protocol == "random_holdout" and s.seed == 3
    assert s.valid is not None
    test = _scatter(s.test, data.n_users)
    valid = _scatter(s.valid, data.n_users)
    total = s.train.matrix + test + valid
    assert (total != data.matrix).nnz == 0  # union is the data ...
    assert s.train.nnz + test.nnz + valid.nnz == data.nnz  # ... and no pair is in two parts
    assert s.train.n_users == data.n_users and s.train.n_items == data.n_items
    assert np.array_equal(s.test.user_ids, data.user_ids[s.test.users])


def test_random_holdout_counts_per_user() -> None:
    counts = np.array([10, 5, 1, 2, 3])
    users = np.repeat(np.arange(5), counts)
    items = np.concatenate([np.arange(c) for c in counts])
    data = Interactions.from_arrays(users, items)
    s = random_holdout(data, test_fraction=0.2, seed=0)
    # round(c * 0.2) with at least one; the single-item user keeps it for training
    n_test = np.zeros(5, dtype=int)
    n_test[s.test.users] = s.test.n_targets
    assert n_test.tolist() == [2, 1, 0, 1, 1]
    assert s.train.user_counts.tolist() == [8, 4, 1, 1, 2]
    s2 = random_holdout(data, test_fraction=0.2, seed=0, min_train=2)
    assert s2.test.users.tolist() == [0, 1, 4]


def test_random_holdout_is_reproducible_and_seed_dependent() -> None:
    data = _random_data(1)
    a = random_holdout(data, seed=7)
    b = random_holdout(data, seed=7)
    c = random_holdout(data, seed=8)
    assert (a.train.matrix != b.train.matrix).nnz == 0
    assert (a.test.targets != b.test.targets).nnz == 0
    assert (a.train.matrix != c.train.matrix).nnz > 0
    assert random_holdout(data, seed=None).seed is None


def test_random_holdout_keeps_timestamps_aligned() -> None:
    data = _random_data(2)
    s = random_holdout(data, seed=1)
    assert s.train.timestamps is not None
    full = pd.DataFrame(data.to_dataframe()).set_index(["user", "item"])["timestamp"]
    part = s.train.to_dataframe().set_index(["user", "item"])["timestamp"]
    assert (full.loc[part.index] == part).all()


@given(st.integers(0, 10_000), st.floats(0.05, 0.6), st.floats(0.0, 0.3))
def test_random_holdout_partition_property(seed: int, tf: float, vf: float) -> None:
    data = _random_data(seed % 7, n_users=12, n_items=15)
    s = random_holdout(data, test_fraction=tf, valid_fraction=vf, seed=seed)
    parts = [s.train.matrix, _scatter(s.test, data.n_users)]
    if s.valid is not None:
        parts.append(_scatter(s.valid, data.n_users))
    assert sum(p.nnz for p in parts) == data.nnz
    assert (sum(parts[1:], parts[0]) != data.matrix).nnz == 0
    assert (s.train.user_counts[s.test.users] >= 1).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"test_fraction": 0.0},
        {"test_fraction": 1.0},
        {"test_fraction": -0.1},
        {"valid_fraction": 1.0},
        {"test_fraction": 0.6, "valid_fraction": 0.4},
        {"min_train": -1},
        {"seed": 1.5},
    ],
)
def test_random_holdout_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(DataError):
        random_holdout(_random_data(0), **kwargs)  # type: ignore[arg-type]


def test_random_holdout_needs_a_user_with_enough_interactions() -> None:
    data = Interactions.from_arrays([0, 1], [0, 1])
    with pytest.raises(DataError, match="enough interactions"):
        random_holdout(data)


# ----------------------------------------------------------------------------- leave_last_out
def test_leave_last_out_takes_the_latest_and_breaks_ties_by_item() -> None:
    data = Interactions.from_arrays(
        ["a"] * 4 + ["b"] * 3 + ["c"],
        [10, 11, 12, 13, 10, 11, 12, 10],
        timestamps=[4, 1, 3, 2, 5, 5, 1, 9],
    )
    s = leave_last_out(data, n=1, valid=True)
    assert s.seed is None and s.protocol.startswith("leave_last_out")
    assert s.valid is not None
    item = lambda m: data.item_ids[m.indices].tolist()  # noqa: E731
    assert s.test.user_ids.tolist() == ["a", "b"]  # c has one interaction: train only
    assert item(s.test.targets) == [10, 11]  # b: tie at t=5, the higher item index is later
    assert item(s.valid.targets) == [12, 10]
    assert s.train.user_counts.tolist() == [2, 1, 1]


def test_leave_last_out_without_validation_and_n() -> None:
    data = _random_data(4)
    s = leave_last_out(data, n=2, valid=False)
    assert s.valid is None
    assert (s.test.n_targets == 2).all()
    test = _scatter(s.test, data.n_users)
    assert s.train.nnz + test.nnz == data.nnz
    # every target is at least as recent as every training interaction of its user
    assert data.timestamps is not None and s.train.timestamps is not None
    ts = sp.csr_matrix((data.timestamps + 1.0, data.matrix.indices, data.matrix.indptr))
    t_target = test.multiply(ts).tocsr()
    t_train = s.train.matrix.multiply(ts).tocsr()
    for u in s.test.users[:5]:  # spot check a few users
        assert t_target[u].data.min() >= t_train[u].data.max()


def test_leave_last_out_needs_timestamps() -> None:
    with pytest.raises(DataError, match="timestamps"):
        leave_last_out(Interactions.from_arrays([0, 0, 0], [0, 1, 2]))
    with pytest.raises(DataError):
        leave_last_out(_random_data(0), n=0)


# ----------------------------------------------------------------------------- strong
def test_strong_generalization_holds_out_whole_users() -> None:
    data = _random_data(5, n_users=50)
    s = strong_generalization(data, 10, fold_in_fraction=0.75, seed=1)
    assert s.valid is not None
    test_ids, valid_ids = set(s.test.user_ids), set(s.valid.user_ids)
    train_ids = set(s.train.user_ids)
    assert len(test_ids) == len(valid_ids) == 10
    assert not (test_ids & valid_ids) and not (train_ids & (test_ids | valid_ids))
    assert len(train_ids) == 30 and s.train.n_items == data.n_items
    assert s.test.strong and s.test.users is None and s.test.fold_in is not None
    # fold-in + targets rebuild each held-out history exactly, with no overlap
    rows = data.user_index(s.test.user_ids)
    original = data.matrix[rows]
    assert (s.test.fold_in + s.test.targets != original).nnz == 0
    assert s.test.fold_in.multiply(s.test.targets).nnz == 0
    c = np.diff(original.indptr)
    assert s.test.n_targets.tolist() == np.clip(np.floor(c * 0.25 + 0.5), 1, c - 1).tolist()
    assert (s.test.history_counts(s.train) == c - s.test.n_targets).all()


def test_strong_generalization_fraction_and_reproducibility() -> None:
    data = _random_data(6, n_users=40)
    a = strong_generalization(data, 0.1, seed=2, valid=False)
    b = strong_generalization(data, 0.1, seed=2, valid=False)
    assert a.valid is None and a.test.n_users == 4
    assert a.test.user_ids.tolist() == b.test.user_ids.tolist()
    assert (a.test.fold_in != b.test.fold_in).nnz == 0  # type: ignore[operator]


def test_strong_generalization_skips_tiny_histories() -> None:
    users = np.array([0, 1, 1, 2, 2, 3, 3])
    data = Interactions.from_arrays(users, [0, 0, 1, 0, 1, 0, 1])
    s = strong_generalization(data, 3, seed=0, valid=False)
    assert 0 not in set(s.test.user_ids)  # one interaction: cannot give fold-in and target
    with pytest.raises(DataError, match="too few users"):
        strong_generalization(data, 2, seed=0)  # 4 needed, 3 eligible


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_heldout_users": 0},
        {"n_heldout_users": 1.0},
        {"n_heldout_users": "3"},
        {"n_heldout_users": 2, "fold_in_fraction": 1.0},
        {"n_heldout_users": 2, "min_interactions": 1},
        {"n_heldout_users": 15},
    ],
)
def test_strong_generalization_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(DataError):
        strong_generalization(_random_data(0), **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- given splits
def _write(folder: Path, name: str, lines: list[str]) -> None:
    (folder / name).write_text("\n".join(lines) + "\n")


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    _write(tmp_path, "train.txt", ["0 1 2", "1 0", "3 4"])
    _write(tmp_path, "valid.txt", ["0 3", "1 5"])
    _write(tmp_path, "test.txt", ["0 4", "1 1 2", "2 7", "3"])
    return tmp_path


def test_load_split_shares_one_index_space(split_folder: Path) -> None:
    s = load_split(split_folder)
    assert s.protocol == "given split" and s.valid is not None
    assert s.train.user_ids.tolist() == [0, 1, 2, 3]  # user 2 only in test
    assert s.train.item_ids.tolist() == [0, 1, 2, 3, 4, 5, 7]
    assert s.train.nnz == 4
    assert s.test.users.tolist() == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert s.test.n_targets.tolist() == [1, 2, 1, 0]  # user 3 listed without items
    assert s.valid.users.tolist() == [0, 1]  # type: ignore[union-attr]
    col = s.train.item_index([7])[0]
    assert s.test.targets[2, col] == 1


def test_load_split_merge_valid_into_train(split_folder: Path) -> None:
    s = load_split(split_folder, merge_valid_into_train=True)
    assert s.valid is None and "train+valid" in s.protocol
    assert s.train.nnz == 6
    assert s.train.matrix.data.tolist() == [1.0] * 6


def test_load_split_from_mapping_and_without_valid(split_folder: Path) -> None:
    s = load_split({"train": split_folder / "train.txt", "test": split_folder / "test.txt"})
    assert s.valid is None and s.train.item_ids.tolist() == [0, 1, 2, 4, 7]  # no 3, 5: valid only
    s2 = load_split(split_folder, valid=None)
    assert s2.valid is None


def test_load_split_errors_and_overlap_warning(split_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nowhere")
    with pytest.raises(DataError, match="valid=None"):
        load_split(split_folder, valid="missing.txt")
    with pytest.raises(DataError, match="'train' and 'test'"):
        load_split({"train": split_folder / "train.txt"})
    _write(split_folder, "test.txt", ["0 1 4"])  # (0, 1) is also in train
    with pytest.warns(DataWarning, match="1 \\(user, item\\) pairs"):
        load_split(split_folder)


def test_split_from_interactions_maps_onto_a_union_space() -> None:
    train = Interactions.from_arrays(["u", "u", "v"], ["a", "b", "b"])
    test = Interactions.from_arrays(["v", "w"], ["c", "a"])
    valid = Interactions.from_arrays(["u"], ["c"])
    s = split_from_interactions(train, test, valid)
    assert s.train.user_ids.tolist() == ["u", "v", "w"]  # train ids keep their indices
    assert s.train.item_ids.tolist() == ["a", "b", "c"]
    assert (s.train.matrix[:2, :2] != train.matrix).nnz == 0
    assert s.test.user_ids.tolist() == ["v", "w"]
    assert s.test.users.tolist() == [1, 2]  # type: ignore[union-attr]
    assert s.test.targets.toarray().tolist() == [[0, 0, 1], [1, 0, 0]]
    assert s.valid is not None and s.valid.user_ids.tolist() == ["u"]


def test_split_from_frames() -> None:
    tr = pd.DataFrame({"user": [1, 1, 2], "item": [10, 11, 10]})
    te = pd.DataFrame({"user": [2], "item": [11]})
    s = split_from_frames(tr, te)
    assert s.test.targets.nnz == 1 and s.train.nnz == 3


def test_evalset_and_split_validation() -> None:
    t = sp.csr_matrix((2, 3), dtype=np.float32)
    with pytest.raises(DataError, match="exactly one"):
        EvalSet(targets=t, user_ids=np.arange(2))
    with pytest.raises(DataError, match="one entry per"):
        EvalSet(targets=t, user_ids=np.arange(3), users=np.arange(2))
    train = Interactions.from_arrays([0, 1], [0, 1])
    es = EvalSet(targets=t, user_ids=np.arange(2), users=np.array([0, 5]))
    with pytest.raises(DataError, match="item space"):
        Split(train, None, es, "x")
    es2 = EvalSet(
        targets=sp.csr_matrix((2, 2), dtype=np.float32),
        user_ids=np.arange(2),
        users=np.array([0, 5]),
    )
    with pytest.raises(DataError, match="rows of the training"):
        Split(train, None, es2, "x")
    ok = Split(
        train,
        None,
        EvalSet(targets=sp.csr_matrix((1, 2)), user_ids=np.arange(1), users=np.array([1])),
        "x",
    )
    with pytest.raises(DataError, match="no validation"):
        ok.eval_set("valid")
    assert "in-train" in repr(ok)


# ----------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_ml1m_implicit_given_split(dataset) -> None:  # type: ignore[no-untyped-def]
    path = dataset("ml-1m-implicit-r3")
    s = load_split(path)
    assert s.train.n_users == 6039 and s.train.n_items == 3628
    assert s.train.nnz == 590_733
    assert s.valid is not None and s.valid.targets.nnz == 80_897
    assert s.test.targets.nnz == 164_848
    m = load_split(path, merge_valid_into_train=True)
    assert m.test.targets.nnz == 164_848
    assert m.train.nnz == 590_733 + 80_897


@pytest.mark.realdata
def test_gowalla_given_split(dataset) -> None:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the README says the splits are disjoint
        s = load_split(dataset("gowalla-lightgcn"), merge_valid_into_train=True)
    assert s.train.n_users == 29_858 and s.train.n_items == 40_981
    assert s.train.nnz == 810_128 and s.test.targets.nnz == 217_242
