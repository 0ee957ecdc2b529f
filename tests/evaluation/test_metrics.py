"""Top-k metrics: hand-computed cases for every metric, then properties."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from privrec.errors import DataError
from privrec.evaluation.metrics import (
    METRICS,
    catalogue_coverage,
    hits_matrix,
    normalize_ks,
    per_user_metrics,
)

# ----------------------------------------------------------------------------- hand cases
# 6 items. User 0 wants {1, 3}; user 1 wants {0, 2, 4, 5}; user 2 wants nothing.
TARGETS = sp.csr_matrix(
    np.array(
        [
            [0, 1, 0, 1, 0, 0],
            [1, 0, 1, 0, 1, 1],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
)
TOP = np.array(
    [
        [1, 0, 3, 5, -1],  # hits at ranks 1 and 3 (then padding)
        [3, 2, 1, 4, 0],  # hits at ranks 2, 4 and 5
        [0, 1, 2, 3, 4],  # no targets: must be skipped
    ]
)
KS = (1, 3, 5)


def _hand() -> dict[str, list[list[float]]]:
    """Expected per-user values, worked out by hand from the definitions."""

    def d(rank: int) -> float:  # DCG discount of a 1-based rank
        return float(1 / np.log2(rank + 1))

    idcg2 = d(1) + d(2)
    idcg3 = d(1) + d(2) + d(3)
    idcg4 = idcg3 + d(4)
    return {
        # user 0: hits@1=1, @3=2, @5=2, |T|=2  | user 1: hits@1=0, @3=1, @5=3, |T|=4
        "recall": [[1 / 1, 2 / 2, 2 / 2], [0 / 1, 1 / 3, 3 / 4]],
        "precision": [[1 / 1, 2 / 3, 2 / 5], [0.0, 1 / 3, 3 / 5]],
        "hitrate": [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]],
        "ndcg": [
            [d(1) / d(1), (d(1) + d(3)) / idcg2, (d(1) + d(3)) / idcg2],
            [0.0, d(2) / idcg3, (d(2) + d(4) + d(5)) / idcg4],
        ],
        # AP: precision at each hit, summed, over min(k, |T|)
        "map": [
            [1 / 1, (1 / 1 + 2 / 3) / 2, (1 / 1 + 2 / 3) / 2],
            [0.0, (1 / 2) / 3, (1 / 2 + 2 / 4 + 3 / 5) / 4],
        ],
        "mrr": [[1.0, 1.0, 1.0], [0.0, 1 / 2, 1 / 2]],
    }


@pytest.mark.parametrize("name", METRICS)
def test_hand_computed_per_user(name: str) -> None:
    r = per_user_metrics(TOP, TARGETS, KS)
    np.testing.assert_allclose(r.values[name], _hand()[name], rtol=1e-12, atol=1e-12)


def test_hand_computed_means_and_bookkeeping() -> None:
    r = per_user_metrics(TOP, TARGETS, KS)
    assert r.ks == KS
    assert r.users.tolist() == [0, 1]
    assert r.n_users == 2
    assert r.n_without_targets == 1
    assert r.n_targets.tolist() == [2, 4]
    means = r.mean()
    assert means["recall"][3] == pytest.approx((1 + 1 / 3) / 2)
    assert means["precision"][5] == pytest.approx((2 / 5 + 3 / 5) / 2)
    assert means["mrr"][1] == pytest.approx(0.5)


def test_coverage_by_hand() -> None:
    r = per_user_metrics(TOP, TARGETS, KS)
    # evaluated users' lists: @1 -> {1, 3}; @3 -> {0, 1, 2, 3}; @5 -> all six items
    assert r.coverage == {1: pytest.approx(2 / 6), 3: pytest.approx(4 / 6), 5: 1.0}
    assert catalogue_coverage(np.array([[-1, -1]]), 4, 2) == 0.0


def test_hits_matrix_by_hand() -> None:
    h = hits_matrix(TOP, TARGETS)
    assert h.tolist() == [
        [True, False, True, False, False],
        [False, True, False, True, True],
        [False, False, False, False, False],
    ]


def test_subset_of_metrics() -> None:
    r = per_user_metrics(TOP, TARGETS, 3, metrics=["ndcg"])
    assert list(r.values) == ["ndcg"]
    assert r.ks == (3,)


def test_recall_is_not_monotone_in_k() -> None:
    # One hit at rank 1 among three targets: Recall@1 = 1/1 but Recall@3 = 1/3.
    top = np.array([[0, 3, 4]])
    tgt = sp.csr_matrix(np.array([[1, 1, 1, 0, 0]], dtype=np.float32))
    r = per_user_metrics(top, tgt, (1, 3))
    assert r.values["recall"].tolist() == [[1.0, 1 / 3]]


def test_short_lists_count_as_misses_beyond_their_end() -> None:
    # A 2-item catalogue asked at k=5: positions 3..5 do not exist.
    top = np.array([[1, 0]])
    tgt = sp.csr_matrix(np.array([[1.0, 1.0]]))
    r = per_user_metrics(top, tgt, (1, 5))
    assert r.values["recall"].tolist() == [[1.0, 1.0]]
    assert r.values["precision"].tolist() == [[1.0, 2 / 5]]


def test_zero_stored_targets_are_not_relevant() -> None:
    tgt = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 3))
    r = per_user_metrics(np.array([[0, 1]]), tgt, 1)
    assert r.values["recall"].tolist() == [[0.0]]
    assert r.n_targets.tolist() == [1]


def test_all_users_without_targets() -> None:
    r = per_user_metrics(np.array([[0, 1]]), sp.csr_matrix((1, 3)), (1, 2))
    assert r.n_users == 0 and r.n_without_targets == 1
    assert np.isnan(r.mean()["recall"][1])


@pytest.mark.parametrize(
    ("top", "match"),
    [
        (np.array([[0, 0]]), "repeats"),
        (np.array([[0, 9]]), "out of range"),
        (np.array([[0, -2]]), "out of range"),
        (np.array([0, 1]), "2-D"),
        (np.array([[0.0, 1.0]]), "integer"),
        (np.array([[0, 1], [1, 0]]), "numbers of users"),
    ],
)
def test_bad_top_items(top: np.ndarray, match: str) -> None:
    tgt = sp.csr_matrix(np.array([[1.0, 0.0, 1.0]]))
    with pytest.raises(DataError, match=match):
        per_user_metrics(top, tgt, 1)


def test_bad_ks_and_metric_names() -> None:
    with pytest.raises(DataError):
        normalize_ks(())
    with pytest.raises(DataError):
        normalize_ks((0, 5))
    with pytest.raises(DataError):
        normalize_ks((True,))  # type: ignore[arg-type]
    assert normalize_ks((20, 10, 20)) == (10, 20)
    with pytest.raises(DataError, match="unknown metric"):
        per_user_metrics(TOP, TARGETS, 1, metrics=["auc"])


def test_padding_is_never_a_hit_even_with_padding_first() -> None:
    tgt = sp.csr_matrix(np.array([[1.0, 1.0, 0.0]]))
    assert hits_matrix(np.array([[-1, -1, 0]]), tgt).tolist() == [[False, False, True]]


# ----------------------------------------------------------------------------- properties
@st.composite
def rankings(draw: st.DrawFn) -> tuple[np.ndarray, sp.csr_matrix]:
    n_users = draw(st.integers(1, 8))
    n_items = draw(st.integers(1, 12))
    width = draw(st.integers(1, n_items))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    top = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :width]
    pad = rng.integers(0, width + 1, size=n_users)  # drop a random tail
    top[np.arange(width)[None, :] >= (width - pad)[:, None]] = -1
    dense = rng.random((n_users, n_items)) < draw(st.floats(0.0, 1.0))
    return top.astype(np.int64), sp.csr_matrix(dense.astype(np.float32))


@given(rankings(), st.lists(st.integers(1, 15), min_size=1, max_size=4))
def test_all_metrics_in_unit_interval(
    data: tuple[np.ndarray, sp.csr_matrix], ks: list[int]
) -> None:
    top, tgt = data
    r = per_user_metrics(top, tgt, ks)
    for arr in r.values.values():
        assert np.all((arr >= 0) & (arr <= 1 + 1e-12))
    for c in r.coverage.values():
        assert 0 <= c <= 1


@given(rankings())
def test_counts_hitrate_and_mrr_are_monotone_in_k(data: tuple[np.ndarray, sp.csr_matrix]) -> None:
    top, tgt = data
    ks = tuple(range(1, 14))
    r = per_user_metrics(top, tgt, ks)
    n_hits = r.values["precision"] * np.array(ks)  # number of hits in the top k
    for name, arr in (("hits", n_hits), ("hitrate", r.values["hitrate"]), ("mrr", r.values["mrr"])):
        assert np.all(np.diff(arr, axis=1) >= -1e-12), name
    # Recall times its normaliser is the hit count too.
    norm = np.minimum(np.array(ks)[None, :], r.n_targets[:, None])
    np.testing.assert_allclose(r.values["recall"] * norm, n_hits, atol=1e-9)


@given(rankings())
def test_hits_match_a_dense_brute_force(data: tuple[np.ndarray, sp.csr_matrix]) -> None:
    top, tgt = data
    dense = tgt.toarray() != 0
    expected = np.take_along_axis(dense, np.maximum(top, 0), axis=1) & (top >= 0)
    assert np.array_equal(hits_matrix(top, tgt), expected)


@given(st.integers(1, 10), st.integers(1, 10), st.integers(0, 2**32 - 1))
def test_perfect_ranking_scores_one(n_targets: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = n_targets + 10
    items = rng.permutation(n_items)
    tgt = np.zeros((1, n_items), dtype=np.float32)
    tgt[0, items[:n_targets]] = 1
    top = items[None, :]  # every target first, in any order
    r = per_user_metrics(top, sp.csr_matrix(tgt), k)
    for name in ("recall", "ndcg", "map", "mrr", "hitrate"):
        assert r.values[name][0, 0] == pytest.approx(1.0), name
    expected_precision = 1.0 if n_targets >= k else n_targets / k
    assert r.values["precision"][0, 0] == pytest.approx(expected_precision)


@given(rankings(), st.integers(0, 2**32 - 1))
def test_user_order_does_not_matter(data: tuple[np.ndarray, sp.csr_matrix], seed: int) -> None:
    top, tgt = data
    perm = np.random.default_rng(seed).permutation(top.shape[0])
    a = per_user_metrics(top, tgt, (1, 3, 7))
    b = per_user_metrics(top[perm], tgt[perm], (1, 3, 7))
    assert a.n_without_targets == b.n_without_targets
    for name in METRICS:
        for k in (1, 3, 7):
            assert a.mean()[name][k] == pytest.approx(b.mean()[name][k], nan_ok=True)
    assert a.coverage == b.coverage
    # per-user rows follow the users: row u of the permuted input is user perm[u]
    back = perm[b.users]
    order = np.argsort(back)
    assert np.array_equal(back[order], a.users)
    for name in METRICS:
        np.testing.assert_allclose(b.values[name][order], a.values[name])
