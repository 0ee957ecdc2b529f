"""Tests every recommender must pass (mix into a test class, define ``make_model``).

Modelled on the contract suites of ``implicit`` and LensKit: a fitted model must
recover the obvious answer on checkerboard data, give the same list to a user
whether asked alone or in a batch, survive save/load unchanged, and fail
clearly on unknown users and before ``fit``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data import Interactions
from privrec.errors import (
    ConfigError,
    DataError,
    NotFittedError,
    UnknownItemError,
    UnknownUserError,
)
from privrec.models import Recommender, load_model


def checkerboard(
    n_users: int = 40, n_items: int = 30, hide: int = 3, seed: int = 0
) -> tuple[Interactions, np.ndarray]:
    """Two communities: even users like even items, odd users odd items.

    Each user misses ``hide`` items of their own parity (plus user 0 has no
    interactions at all); returns the data and a (n_users, n_items) boolean
    matrix of the held-back "right answers".
    """
    rng = np.random.default_rng(seed)
    users, items = [], []
    answer = np.zeros((n_users, n_items), dtype=bool)
    for u in range(1, n_users):  # test fixture construction, not a hot path
        own = np.arange(u % 2, n_items, 2)
        hidden = rng.choice(own, size=hide, replace=False)
        answer[u, hidden] = True
        for i in np.setdiff1d(own, hidden):
            users.append(f"u{u:03d}")
            items.append(f"i{i:03d}")
    # user 0 exists but has no interactions: fix the index spaces explicitly
    data = Interactions.from_arrays(
        users,
        items,
        user_ids=[f"u{u:03d}" for u in range(n_users)],
        item_ids=[f"i{i:03d}" for i in range(n_items)],
    )
    return data, answer


class RecommenderContract:
    """Mixin: subclasses implement ``make_model`` returning an unfitted model."""

    personalised = True  # False for models that rank the same way for everyone

    def make_model(self) -> Recommender:
        raise NotImplementedError

    @pytest.fixture
    def data(self) -> tuple[Interactions, np.ndarray]:
        return checkerboard()

    @pytest.fixture
    def fitted(self, data: tuple[Interactions, np.ndarray]) -> Recommender:
        return self.make_model().fit(data[0])

    # ------------------------------------------------------------------ tests
    def test_init_stores_parameters_only(self) -> None:
        model = self.make_model()
        assert not any(a.endswith("_") and not a.startswith("_") for a in vars(model))
        params = model.get_params()
        assert type(model)(**params).get_params() == params

    def test_config_round_trip(self) -> None:
        model = self.make_model()
        cfg = model.config()
        again = type(cfg).model_validate_json(cfg.model_dump_json())
        assert type(model).from_config(again).get_params() == model.get_params()
        with pytest.raises(ConfigError):
            type(model).from_config({"no_such_parameter": 1})

    def test_fit_returns_self(self, data: tuple[Interactions, np.ndarray]) -> None:
        model = self.make_model()
        assert model.fit(data[0]) is model
        assert model.n_users_ == data[0].n_users and model.n_items_ == data[0].n_items

    def test_not_fitted(self) -> None:
        model = self.make_model()
        with pytest.raises(NotFittedError, match="fit"):
            model.recommend(0, k=3)
        with pytest.raises(NotFittedError):
            model.save("/nonexistent/never-written.npz")

    def test_checkerboard_right_answer(
        self, fitted: Recommender, data: tuple[Interactions, np.ndarray]
    ) -> None:
        x, answer = data
        users = np.arange(1, x.n_users)
        items, scores = fitted.recommend(users, k=3)
        assert items.shape == (len(users), 3)
        assert np.all(np.diff(scores, axis=1) <= 0), "scores must be sorted best first"
        seen = x.matrix[users].toarray() > 0
        assert not np.take_along_axis(seen, items, axis=1).any(), "seen items must be excluded"
        if self.personalised:
            hit = np.take_along_axis(answer[users], items, axis=1)
            assert hit.mean() >= 0.9, (
                f"only {hit.mean():.2f} of recommendations are the held-back items"
            )
        else:
            same_parity = (items % 2) == (users[:, None] % 2)
            assert same_parity.mean() >= 0.0  # popularity is not personal; only validity is checked

    def test_batch_equals_single(self, fitted: Recommender) -> None:
        users = np.array([5, 1, 2, 5, 17])
        b_items, b_scores = fitted.recommend(users, k=5)
        for row, u in enumerate(users):
            s_items, s_scores = fitted.recommend(int(u), k=5)
            assert s_items.ndim == 1
            np.testing.assert_array_equal(s_items, b_items[row])
            np.testing.assert_allclose(s_scores, b_scores[row], rtol=1e-5, atol=1e-6)

    def test_save_load_round_trip(self, fitted: Recommender, tmp_path: Path) -> None:
        path = fitted.save(tmp_path / "model.npz", include_user_data=True)
        again = load_model(path)
        assert type(again) is type(fitted)
        assert again.get_params() == fitted.get_params()
        users = np.arange(fitted.n_users_)
        a = fitted.recommend(users, k=7)
        b = again.recommend(users, k=7)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
        np.testing.assert_array_equal(again.item_ids_, fitted.item_ids_)
        assert type(fitted).load(path).get_params() == fitted.get_params()
        assert getattr(again, "guarantee_", None) == getattr(fitted, "guarantee_", None)

    def test_unknown_users(self, fitted: Recommender) -> None:
        with pytest.raises(IndexError, match="out of range"):
            fitted.recommend(fitted.n_users_, k=3)
        with pytest.raises(IndexError):
            fitted.recommend([-1], k=3)
        with pytest.raises(KeyError, match="unknown user id"):
            fitted.recommend_ids(["nobody"], k=3)
        with pytest.raises(UnknownUserError):
            fitted.recommend_ids("nobody", k=3)
        items, _ = fitted.recommend_ids("u003", k=2)
        assert all(str(i).startswith("i") for i in items)

    def test_empty_user(self, fitted: Recommender) -> None:
        items, scores = fitted.recommend(0, k=4)  # user 0 has no training interactions
        assert items.shape == (4,) and (items >= 0).all()
        assert np.isfinite(scores).all()
        h_items, _ = fitted.recommend_history(np.zeros(fitted.n_items_), k=4)
        assert h_items.shape == (4,) and (h_items >= 0).all()

    def test_k_larger_than_catalogue(
        self, fitted: Recommender, data: tuple[Interactions, np.ndarray]
    ) -> None:
        n_items = fitted.n_items_
        items, scores = fitted.recommend(3, k=n_items + 10, exclude_seen=False)
        assert items.shape == (n_items,)
        assert sorted(items.tolist()) == list(range(n_items))
        items, scores = fitted.recommend(3, k=n_items + 10)
        n_seen = data[0].matrix[3].nnz
        assert (items >= 0).sum() == n_items - n_seen
        assert np.isneginf(scores[items < 0]).all()

    def test_fold_in_new_users(
        self, fitted: Recommender, data: tuple[Interactions, np.ndarray]
    ) -> None:
        x, answer = data
        hist = sp.csr_matrix(x.matrix[[3, 4]])
        items, _ = fitted.recommend_history(hist, k=3)
        assert items.shape == (2, 3)
        assert not np.take_along_axis(hist.toarray() > 0, items, axis=1).any()
        if self.personalised:
            assert np.take_along_axis(answer[[3, 4]], items, axis=1).mean() >= 0.8
        reps = fitted.fold_in(hist)
        assert reps.shape[0] == 2 and np.isfinite(reps).all()
        with pytest.raises(ValueError, match="catalogue"):
            fitted.recommend_history(np.zeros(fitted.n_items_ + 1), k=3)

    def test_history_from_item_ids(
        self, fitted: Recommender, data: tuple[Interactions, np.ndarray]
    ) -> None:
        """A list of item ids is not a history row: the error says what is expected and
        how to build it; ``history_row`` builds it and serves the same as the matrix row."""
        x, _ = data
        ids = x.item_ids[x.matrix[3].indices]
        with pytest.raises(DataError, match=r"users × items matrix.*history_row"):
            fitted.recommend_history(ids[:3], k=3)  # the checkerboard's ids are strings
        with pytest.raises(DataError, match=r"users × items matrix.*history_row") as e:
            fitted.recommend_history([1, 2, 5], k=3)  # integer ids look like a short row
        assert e.value.expected == f"{fitted.n_items_} columns" and e.value.found == 3
        row = fitted.history_row(ids)
        assert row.shape == (fitted.n_items_,) and row.sum() == len(ids)
        by_ids, _ = fitted.recommend_history(row, k=3)
        by_row, _ = fitted.recommend_history(x.matrix[3].toarray()[0], k=3)
        assert by_ids.tolist() == by_row.tolist()
        with pytest.raises(UnknownItemError):
            fitted.history_row([ids[0], "no-such-item"])
        both = fitted.history_row([ids[0], "no-such-item"], ignore_unknown=True)
        assert both.sum() == 1.0
