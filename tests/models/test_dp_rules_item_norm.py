"""DPALS's scoring exponent γ (``item_norm_exponent``): head scores ``x_u·y_j / |y_j|^γ``.

A number (default 0: off), or the head-density rule (``"density"``) from released values. Post-processing: it
changes no released array and no ε, only the ranking — the same in every scoring path (the
model, the service's fast kernel, a private-scoring client's ``_rank_head``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data import synthetic
from privrec.errors import ConfigError, ModelFileError
from privrec.models import load_model
from privrec.models.dp_als import DPALS
from privrec.models.dp_rules import (
    ITEM_NORM_SCALE,
    LengthProfile,
    item_norm_scale,
    resolve_alpha0,
    resolve_item_norm_exponent,
)
from privrec.serve.foldin import DPALSKernel, kernel_for


def _profile(n_users: float) -> LengthProfile:
    return LengthProfile(histogram=np.array([n_users]), noise_std=1.0, max_length=10)


def test_the_rule_pinned() -> None:
    """0.75·(1 − min(1, √(d/0.04))), d as for α0; a number passes through; 0 without a
    private user count."""
    counts = np.full(100, 40.0)  # d = 0.04 at 1,000 users: dense, γ = 0
    assert resolve_item_norm_exponent("density", counts, _profile(1000)) == 0.0
    assert resolve_item_norm_exponent("density", counts, _profile(4000)) == pytest.approx(
        ITEM_NORM_SCALE * 0.5
    )  # d = 0.01
    gowalla_like = resolve_item_norm_exponent("density", counts, _profile(40000))  # d = 0.001
    assert gowalla_like == pytest.approx(0.75 * (1 - math.sqrt(0.001 / 0.04)))
    # the same density as α0's rule: γ = 0.75·(1 − α0/2) wherever α0 is above its floor
    for n in (1500, 4000, 20000):
        a0 = resolve_alpha0("density", counts, _profile(n))
        assert resolve_item_norm_exponent("density", counts, _profile(n)) == pytest.approx(
            0.75 * (1 - a0 / 2)
        )
    assert resolve_item_norm_exponent(0.3, counts, None) == 0.3
    assert resolve_item_norm_exponent("density", counts, None) == 0.0
    with pytest.raises(ConfigError, match="item_norm_exponent"):
        resolve_item_norm_exponent("sparse", counts, None)
    y = np.array([[3.0, 4.0], [0.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(item_norm_scale(y, 0.5), [5**-0.5, 0.0, 1.0])  # type: ignore[arg-type]
    assert item_norm_scale(y, 0.0) is None


def _data() -> sp.csr_matrix:
    # sparse: 6 items per user over 300 items, so the rule gives γ > 0
    return synthetic(n_users=600, n_items=300, interactions_per_user=6.0, seed=1)


def _fit(**kw: object) -> DPALS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPALS(epsilon=5.0, delta=1e-5, unit="user", seed=0, **kw).fit(_data())  # type: ignore[arg-type]


def test_post_processing_only_and_the_same_in_every_scoring_path(tmp_path: Path) -> None:
    assert _fit().item_norm_exponent_ == 0.0  # off by default
    m = _fit(item_norm_exponent="density")
    assert 0.0 < m.item_norm_exponent_ < ITEM_NORM_SCALE
    plain = _fit(item_norm_exponent=0.0)
    # the same releases and guarantee: γ only reads them (equal up to the last float32 bits: two
    # seeded fits can differ there with threaded BLAS — 5.6e-9 apart once in a CI run)
    np.testing.assert_allclose(m.item_factors_, plain.item_factors_, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(m.noisy_counts_, plain.noisy_counts_)
    assert m.privacy_guarantee.epsilon == plain.privacy_guarantee.epsilon
    hist = sp.csr_matrix(m.user_items_[:40])
    ranked, _ = m.recommend_history(hist, k=10)
    assert not np.array_equal(ranked, plain.recommend_history(hist, k=10)[0])
    # by hand: the raw head scores divided by |y_j|^γ, then the model's own ranking
    head = m.head_items_
    u = m.fold_in(hist)
    norms = np.linalg.norm(m.item_factors_[head].astype(np.float64), axis=1)
    raw = (u @ m.item_factors_[head].T) * (norms**-m.item_norm_exponent_)[None, :].astype(
        np.float32
    )
    unscaled = plain._rank_head(raw, np.diff(hist.indptr), cold=~np.any(u != 0, axis=1))
    np.testing.assert_allclose(m._scores_from_factors(u, np.diff(hist.indptr)), unscaled)
    # the service's fast kernel answers exactly as the model (kernel_for checks it too)
    kernel = kernel_for(m)
    assert isinstance(kernel, DPALSKernel)
    for row in range(5):
        known = np.sort(hist[row].indices.astype(np.int64))
        items, scores = kernel(known, 10)
        want_items, want_scores = m.recommend_history(hist[row], k=10)
        np.testing.assert_array_equal(items, want_items[0])
        np.testing.assert_array_equal(scores, want_scores[0])
    # saved and loaded with its γ; a file from before the rule scores with γ = 0
    again = load_model(m.save(tmp_path / "m.npz"))
    assert again.item_norm_exponent_ == pytest.approx(m.item_norm_exponent_)
    np.testing.assert_array_equal(again.recommend_history(hist, k=10)[0], ranked)
    state = m._state()
    state.pop("item_norm_exponent")
    old = _fit(item_norm_exponent="density")
    old._set_state(state)
    assert old.item_norm_exponent_ == 0.0
    bad = m._state()
    bad["item_norm_exponent"] = np.asarray(3.0)
    with pytest.raises(ModelFileError, match="item_norm_exponent"):
        old._set_state(bad)


def test_a_number_is_used_and_validated() -> None:
    assert _fit(item_norm_exponent=0.4).item_norm_exponent_ == 0.4
    for bad in ("sparse", -0.1, 2.5, float("nan")):
        with pytest.raises((ConfigError, ValueError)):
            _fit(item_norm_exponent=bad)
