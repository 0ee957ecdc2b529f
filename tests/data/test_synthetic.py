"""Synthetic data: shape, reproducibility, exact sampling law, and a learnable signal."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from privrec.data import Interactions, synthetic
from privrec.errors import ConfigError

# ``privrec.data.synthetic`` the attribute is the function; the module is reached this way.
synth_module = sys.modules["privrec.data.synthetic"]


@pytest.fixture(scope="module")
def default() -> Interactions:
    return synthetic()


def test_default_shape_and_values(default: Interactions) -> None:
    x = default
    assert (x.n_users, x.n_items) == (2000, 1000)
    assert x.user_ids.tolist() == list(range(2000))
    assert x.item_ids.tolist() == list(range(1000))
    assert set(np.unique(x.matrix.data).tolist()) == {1.0}
    assert x.user_counts.min() >= 1
    assert 25 <= x.nnz / x.n_users <= 35  # mean ~30 (log-normal, clipped)
    assert x.user_counts.max() > 4 * 30  # skewed activity: some heavy users
    m = x.matrix
    for u in range(0, 2000, 97):  # each user's items are distinct and sorted
        row = m.indices[m.indptr[u] : m.indptr[u + 1]]
        assert (np.diff(row) > 0).all()


def test_popularity_is_long_tailed(default: Interactions) -> None:
    counts = np.sort(default.item_counts)[::-1]
    top_decile_share = counts[:100].sum() / counts.sum()
    assert top_decile_share > 0.25  # 0.10 without popularity bias
    flat = synthetic(popularity_exponent=0.0, temperature=1e6)  # neither bias nor taste
    flat_counts = np.sort(flat.item_counts)[::-1]
    assert flat_counts[:100].sum() / flat_counts.sum() < 0.15


def test_timestamps_increase_along_each_history(default: Interactions) -> None:
    x = default
    assert x.timestamps is not None
    users = np.repeat(np.arange(x.n_users), x.user_counts)
    order = np.lexsort((x.timestamps, users))
    same_user = np.diff(users[order]) == 0
    assert (np.diff(x.timestamps[order])[same_user] > 0).all()  # distinct: last item is unique
    assert synthetic(n_users=50, timestamps=False).timestamps is None


def test_reproducible(default: Interactions) -> None:
    again = synthetic()
    one_thread = synthetic(n_threads=1)
    for y in (again, one_thread):
        assert np.array_equal(default.matrix.indptr, y.matrix.indptr)
        assert np.array_equal(default.matrix.indices, y.matrix.indices)
        assert default.timestamps is not None and y.timestamps is not None
        assert np.array_equal(default.timestamps, y.timestamps)
    other = synthetic(seed=1)
    assert not np.array_equal(default.matrix.indices[:500], other.matrix.indices[:500])


def _inclusion_two(p: np.ndarray) -> np.ndarray:
    """P(item in a without-replacement sample of two, drawn proportionally to p)."""
    second = np.array(
        [sum(p[j] * p[i] / (1 - p[j]) for j in range(len(p)) if j != i) for i in range(len(p))]
    )
    return p + second


@pytest.mark.parametrize("force_fallback", [False, True])
def test_sampling_law_is_exact(monkeypatch: pytest.MonkeyPatch, force_fallback: bool) -> None:
    # With an enormous temperature taste vanishes and picks follow popularity alone,
    # whose law is known: p_i ∝ rank**-1. Two picks per user, without replacement.
    if force_fallback:  # thresholds far too high: most rows take the full-row path
        monkeypatch.setattr(synth_module, "_SUBSAMPLE_STRIDE", 1)
        monkeypatch.setattr(synth_module, "_OVERSAMPLE", 1e-6)
    n_users, n_items = 20_000, 40
    x = synthetic(n_users, n_items, 2, temperature=1e9, activity_sigma=0.0, timestamps=False)
    assert (x.user_counts == 2).all()
    freq = np.sort(x.item_counts / n_users)[::-1]
    p = 1 / np.arange(1, n_items + 1)
    expected = _inclusion_two(p / p.sum())
    sd = np.sqrt(expected * (1 - expected) / n_users)
    assert np.all(np.abs(freq - expected) < 5 * sd + 1e-3)


def test_larger_catalogue_small_run() -> None:
    x = synthetic(300, 20_000, 145, rank=8, seed=3)
    assert x.nnz == int(x.user_counts.sum()) and x.n_items == 20_000
    assert 100 < x.nnz / x.n_users < 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_users": 0},
        {"n_items": -1},
        {"rank": 0},
        {"interactions_per_user": 0.5},
        {"temperature": 0.0},
        {"activity_sigma": -1.0},
    ],
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        synthetic(**kwargs)  # type: ignore[arg-type]


def _recall_at_20(scores: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    scores = np.where(train > 0, -np.inf, scores)
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    hits = np.take_along_axis(test, top, axis=1).sum(axis=1)
    n = test.sum(axis=1)
    has = n > 0
    return float(np.mean(hits[has] / np.minimum(20, n[has])))


def test_collaborative_signal_beats_popularity(default: Interactions) -> None:
    """EASE (closed form, in numpy) must clearly beat popularity on held-out items."""
    rng = np.random.default_rng(0)
    train = default.matrix.toarray().astype(np.float64)
    test = np.zeros_like(train)
    for u in range(train.shape[0]):
        items = np.flatnonzero(train[u])
        if items.size >= 5:
            held = rng.choice(items, size=items.size // 5, replace=False)
            test[u, held] = 1.0
            train[u, held] = 0.0
    gram = train.T @ train
    gram[np.diag_indices_from(gram)] += 100.0
    inv = np.linalg.inv(gram)
    weights = -inv / np.diag(inv)
    np.fill_diagonal(weights, 0.0)
    ease = _recall_at_20(train @ weights, train, test)
    popular = _recall_at_20(np.broadcast_to(train.sum(axis=0), train.shape), train, test)
    assert ease >= 1.5 * popular, (ease, popular)
