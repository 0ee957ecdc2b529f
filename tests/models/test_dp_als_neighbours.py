"""DPALS's ``neighbour_blend``: an item-kNN reading of the released factors, post-processing only."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data import Interactions, synthetic
from privrec.models import DPALS, load_model
from privrec.models.private import blend_neighbours


@pytest.fixture(scope="module")
def fitted() -> tuple[DPALS, Interactions]:
    data = synthetic(n_users=300, n_items=60, interactions_per_user=10, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded noise
        model = DPALS(epsilon=8.0, delta=1e-5, unit="user", factors=6, seed=0).fit(data)
    return model, data


def test_off_by_default_and_zero_is_the_plain_ranking(fitted: tuple[DPALS, Interactions]) -> None:
    model, _ = fitted
    assert model.neighbour_blend == 0.0 and model.config().neighbour_blend == 0.0
    users = np.arange(40)
    plain = model._score_users(users)
    ranked = model._scores_from_factors(
        model.user_factors_[users], np.diff(sp.csr_matrix(model.user_items_[users]).indptr)
    )
    np.testing.assert_array_equal(plain, ranked)


def test_the_blend_is_post_processing_of_released_factors(
    fitted: tuple[DPALS, Interactions],
) -> None:
    model, data = fitted
    m = copy.deepcopy(model)
    eps, factors = m.guarantee_.epsilon, m.item_factors_.copy()
    hist = data.matrix[:30]
    before = m.recommend_history(hist, k=10)[0]
    m.set_params(neighbour_blend=0.5)  # no refit: nothing new is released, nothing charged
    after = m.recommend_history(hist, k=10)[0]
    assert m.guarantee_.epsilon == eps and np.array_equal(m.item_factors_, factors)
    assert not np.array_equal(before, after)
    # by hand: the standardised plain head scores and the summed cosines, half and half
    head = m.head_items_
    plain = model._score_histories(hist)[:, head].astype(np.float64)
    v = m.item_factors_[head].astype(np.float64)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    h = sp.csr_matrix(hist[:, head], dtype=np.float64)
    h.data[:] = 1.0
    near = np.asarray(h @ unit @ unit.T)

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)

    want = 0.5 * z(plain) + 0.5 * z(near)
    got = m._score_histories(hist)[:, head]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.all(np.isneginf(np.delete(m._score_histories(hist), head, axis=1)))


def test_users_without_head_history_keep_their_ranking() -> None:
    ranked = np.array([[0.3, -np.inf, 0.1], [0.2, -np.inf, 0.9]], dtype=np.float32)
    head = np.array([0, 2])
    hist = sp.csr_matrix(np.array([[0, 0], [1, 0]], dtype=np.float32))
    out = blend_neighbours(ranked, hist, np.array([[1.0, 0.0], [0.6, 0.8]]), head, 0.5)
    np.testing.assert_array_equal(out[0], ranked[0])
    assert np.isneginf(out[1, 1]) and np.isfinite(out[1, [0, 2]]).all()
    assert blend_neighbours(ranked, hist, np.ones((2, 2)), head, 0.0) is ranked


def test_the_setting_travels_with_the_file(
    fitted: tuple[DPALS, Interactions], tmp_path: Path
) -> None:
    model, data = fitted
    m = copy.deepcopy(model).set_params(neighbour_blend=0.4)
    m.save(tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    assert back.neighbour_blend == 0.4
    hist = data.matrix[:20]
    np.testing.assert_array_equal(
        back.recommend_history(hist, k=8)[0], m.recommend_history(hist, k=8)[0]
    )


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_out_of_range_weights_are_refused(bad: float) -> None:
    from privrec.errors import ConfigError

    with pytest.raises(ConfigError):
        DPALS(epsilon=1.0, delta=1e-5, unit="user", neighbour_blend=bad).config()
