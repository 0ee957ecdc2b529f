"""Contract and specific tests for Popularity, EASE and ItemKNN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data import Interactions
from privrec.errors import ConfigError
from privrec.models.ease import EASE, ease_from_gram, item_gram
from privrec.models.knn import ItemKNN, cosine_neighbours
from privrec.models.popularity import Popularity

from .contract import RecommenderContract


class TestPopularityContract(RecommenderContract):
    personalised = False

    def make_model(self) -> Popularity:
        return Popularity()


class TestEASEContract(RecommenderContract):
    def make_model(self) -> EASE:
        return EASE(regularization=5.0)


class TestItemKNNContract(RecommenderContract):
    def make_model(self) -> ItemKNN:
        return ItemKNN(neighbours=10)


def test_popularity_counts_users_or_values() -> None:
    x = Interactions.from_arrays([0, 0, 1, 2], [0, 1, 1, 0], [5.0, 1.0, 1.0, 1.0])
    assert Popularity().fit(x).item_popularity_.tolist() == [2.0, 2.0]
    assert Popularity(weighting="values").fit(x).item_popularity_.tolist() == [6.0, 2.0]


def test_ease_matches_dense_formula() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((50, 12)) < 0.3).astype(np.float32))
    lam = 3.0
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + lam * np.eye(12))
    expected = np.eye(12) - p / np.diag(p)
    model = EASE(regularization=lam).fit(x)
    np.testing.assert_allclose(model.weights_, expected, atol=1e-5)
    assert np.allclose(np.diag(model.weights_), 0)


def test_item_gram_row_weights() -> None:
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((20, 6)) < 0.5).astype(np.float32))
    w = rng.random(20)
    d = x.toarray()
    np.testing.assert_allclose(item_gram(x, w), d.T @ np.diag(w) @ d, atol=1e-10)


def test_ease_indefinite_gram_still_solves() -> None:
    g = -np.eye(4) * 2.0
    b = ease_from_gram(g, 1.0)
    assert np.isfinite(b).all()


def test_ease_refuses_huge_catalogue() -> None:
    x = sp.csr_matrix(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ConfigError, match="max_items"):
        EASE(max_items=4).fit(x)


def test_cosine_neighbours_matches_dense() -> None:
    rng = np.random.default_rng(2)
    x = sp.csr_matrix((rng.random((40, 15)) < 0.3).astype(np.float32))
    s = cosine_neighbours(x, neighbours=14).toarray()
    d = x.toarray().astype(np.float64)
    n = np.linalg.norm(d, axis=0)
    dense = (d.T @ d) / np.maximum(np.outer(n, n), 1e-12)
    np.fill_diagonal(dense, 0)
    np.testing.assert_allclose(s, dense, atol=1e-6)
    top3 = cosine_neighbours(x, neighbours=3).toarray()
    assert ((top3 > 0).sum(axis=0) <= 3).all()


def test_invalid_config_is_config_error() -> None:
    with pytest.raises(ConfigError, match="regularization"):
        EASE(regularization=-1).fit(sp.csr_matrix(np.ones((2, 2), dtype=np.float32)))
    with pytest.raises(ConfigError, match="neighbours"):
        ItemKNN(neighbours=0).config()
