"""Personalised budgets: per-tier ε pinned, sensitivity per tier, validation before any release."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from privrec.data import synthetic
from privrec.errors import ConfigError, DataError
from privrec.models import DPALS, DPPopularity, load_model
from privrec.models.als_kernels import gramian, item_statistics
from privrec.models.dp_als import DPALSSensitivity
from privrec.models.dp_popularity import bounded_counts
from privrec.models.item_sums import item_sums
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.bounds import length_histogram, length_sensitivity
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import adaptive_weights, clip_rows
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.personalized import (
    resolve_tiers,
    scale_event,
    tier_epsilon,
    tier_weight,
    user_weights_for,
)
from privrec.privacy.randomness import seeded_generator
from privrec.privacy.units import PrivacyUnit

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_tier_epsilon_pinned() -> None:
    """A user at weight w of Gaussian(z) releases has the loss of Gaussian(z / w)."""
    spent = [SpentEvent("a", gaussian_event(2.0)), SpentEvent("b", gaussian_event(4.0))]
    z_eff = (1 / 2.0**2 + 1 / 4.0**2) ** -0.5
    for w in (1.0, 0.5, 0.2):
        by_hand = dp_accounting.get_epsilon_gaussian(z_eff / w, 1e-5)
        assert tier_epsilon(spent, w, 1e-5) == pytest.approx(by_hand, rel=1e-9)
    assert tier_epsilon(spent, 0.5, 1e-5) == pytest.approx(1.04705, abs=1e-4)  # pinned
    # the weight meeting a tier is z_eff / z_t in closed form
    z_t = calibrate(Budget(0.5, 1e-5), gaussian_event)
    assert tier_weight(spent, 0.5, 1e-5) == pytest.approx(z_eff / z_t, rel=1e-6)
    assert tier_weight(spent, 100.0, 1e-5) == 1.0
    scaled = scale_event(compose([gaussian_event(2.0), gaussian_event(4.0)]), 0.5)
    assert isinstance(scaled, dp_accounting.ComposedDpEvent)
    assert [e.noise_multiplier for e in scaled.events] == [4.0, 8.0]
    with pytest.raises(ConfigError):
        scale_event(gaussian_event(1.0), 0.0)


def test_tier_epsilon_with_rdp_and_self_composition() -> None:
    step = compose([gaussian_event(3.0), gaussian_event(5.0)])
    spent = [SpentEvent("steps", dp_accounting.SelfComposedDpEvent(step, 3))]
    w = tier_weight(spent, 1.0, 1e-5, "rdp")
    assert tier_epsilon(spent, w, 1e-5, "rdp") <= 1.0 + 1e-9
    assert tier_epsilon(spent, w * 1.01, 1e-5, "rdp") > 1.0


def test_tier_list_and_user_weights_are_validated() -> None:
    assert resolve_tiers(3.0, [1.0, 0.5]) == (0.5, 1.0, 3.0)
    assert resolve_tiers(3.0, None) == (3.0,)
    with pytest.raises(ConfigError):
        resolve_tiers(1.0, [2.0])
    w = user_weights_for([3.0, 0.5, 1.0, 0.5], 4, (0.5, 1.0, 3.0), (0.1, 0.3, 1.0))
    np.testing.assert_allclose(w, [1.0, 0.1, 0.3, 0.1])
    with pytest.raises(DataError, match="declared tier"):
        user_weights_for([0.7], 1, (0.5, 1.0), (0.1, 1.0))
    with pytest.raises(DataError, match="one requested epsilon per user"):
        user_weights_for([0.5, 1.0], 3, (0.5, 1.0), (0.1, 1.0))
    # a tiny tier does not swallow ε = 0 or a negative ε (no absolute tolerance)
    for bad in (0.0, -5e-9, float("nan")):
        with pytest.raises(DataError, match="declared tier"):
            user_weights_for([bad], 1, (1e-9, 3.0), (0.1, 1.0))
    pd = pytest.importorskip("pandas")
    with pytest.raises(DataError, match="by position"):  # a shuffled Series would mis-assign
        user_weights_for(pd.Series([0.5, 1.0], index=[1, 0]), 2, (0.5, 1.0), (0.1, 1.0))
    np.testing.assert_allclose(
        user_weights_for(pd.Series([1.0, 0.5]), 2, (0.5, 1.0), (0.1, 1.0)), [1.0, 0.1]
    )
    with pytest.raises(DataError, match="numbers"):
        user_weights_for(["high", "low"], 2, (0.5, 1.0), (0.1, 1.0))


@st.composite
def weighted_problem(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_users = draw(st.integers(2, 10))
    n_items = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = (rng.random((n_users, n_items)) < draw(st.floats(0.1, 1.0))).astype(np.float32)
    f = rng.standard_normal((n_users, 3)) * draw(st.floats(0.1, 5.0))
    w = rng.choice([0.1, 0.4, 1.0], size=n_users)
    return x, f, w


@settings(max_examples=40)
@given(weighted_problem(), st.integers(1, 5), st.data())
def test_removing_a_tier_user_moves_statistics_by_their_weight(
    p: tuple[np.ndarray, np.ndarray, np.ndarray], b: int, data: st.DataObject
) -> None:
    """Counts ≤ w√B; Gramian ≤ w Γ²; LHS ≤ w √B Γ²; RHS ≤ w √B Γ (w ≤ 1, so w² ≤ w)."""
    x, f, w = p
    gamma = 1.5
    u = data.draw(st.integers(0, x.shape[0] - 1))
    prior = x.sum(axis=0) + 1.0

    def stats(mat: np.ndarray) -> tuple[np.ndarray, ...]:
        m = sp.csr_matrix(mat)
        rng = seeded_generator(0, warn=False)
        counts, _ = bounded_counts(m, PrivacyUnit.USER, b, rng, w)
        c = adaptive_weights(m, prior, 0.5, float(b))
        fc = clip_rows(f, gamma) * w[:, None]
        lhs, rhs = item_statistics(c, fc, c.data, alpha0=0.0)
        present = np.asarray(m.sum(axis=1)).ravel() > 0
        return counts, gramian(fc[present]), lhs, rhs

    x2 = x.copy()
    x2[u] = 0
    s = DPALSSensitivity.of(PrivacyUnit.USER, gamma, b, b)
    for d, bound in zip(
        (a - c for a, c in zip(stats(x), stats(x2), strict=True)),
        (s.counts, s.gram, s.lhs, s.rhs),
        strict=True,
    ):
        assert np.linalg.norm(d) <= w[u] * bound + 1e-6


def _tiered_data() -> tuple[object, np.ndarray]:
    data = synthetic(n_users=600, n_items=80, interactions_per_user=10, seed=3)
    eps = np.random.default_rng(0).choice([0.5, 1.0, 3.0], size=data.n_users)
    return data, eps


@pytest.mark.parametrize("model", ["dppopularity", "dpals"])
def test_fitted_guarantee_states_every_tier(model: str, tmp_path: Path) -> None:
    data, eps = _tiered_data()
    kw = {"epsilon": 3.0, "delta": 1e-5, "unit": "user", "tiers": (0.5, 1.0), "seed": 0}
    m = (
        DPPopularity(**kw)  # type: ignore[arg-type]
        if model == "dppopularity"
        else DPALS(**kw, factors=4, iterations=1)  # type: ignore[arg-type]
    )
    m.fit(data, user_epsilons=eps)  # type: ignore[arg-type]
    g = m.privacy_guarantee
    assert [t["requested_epsilon"] for t in g.tiers] == [0.5, 1.0, 3.0]
    for t in g.tiers:
        assert t["epsilon"] <= t["requested_epsilon"] * (1 + 1e-9)
        assert t["epsilon"] >= 0.99 * t["requested_epsilon"]
        # a reviewer re-derives every tier's ε from the saved events
        assert tier_epsilon(g.spent_events, t["weight"], g.delta) == pytest.approx(t["epsilon"])
    assert g.tiers[-1]["weight"] == 1.0 and g.tiers[0]["weight"] < g.tiers[1]["weight"] < 1.0
    assert "users who asked for epsilon 0.5" in g.explain()
    again = load_model(m.save(tmp_path / "m.npz"))
    assert again.privacy_guarantee.tiers == g.tiers


@pytest.mark.parametrize("model", ["dppopularity", "dpals"])
def test_everyone_at_the_top_tier_is_the_untiered_model(model: str) -> None:
    data, _ = _tiered_data()
    kw = {"epsilon": 2.0, "delta": 1e-5, "unit": "user", "seed": 4}
    extra = {} if model == "dppopularity" else {"factors": 4, "iterations": 1}
    cls = DPPopularity if model == "dppopularity" else DPALS
    plain = cls(**kw, **extra).fit(data)  # type: ignore[arg-type]
    tiered = cls(**kw, **extra, tiers=(0.5,)).fit(  # type: ignore[arg-type]
        data, user_epsilons=np.full(data.n_users, 2.0)
    )
    a, b = plain.recommend(np.arange(20), k=10), tiered.recommend(np.arange(20), k=10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])


def test_bad_tiers_fail_before_any_release() -> None:
    data, eps = _tiered_data()
    calls: list[object] = []
    m = DPPopularity(epsilon=3.0, delta=1e-5, unit="user", tiers=(0.5, 1.0), seed=0)
    m.release_gate = calls.append
    with pytest.raises(DataError):
        m.fit(data, user_epsilons=np.where(eps == 1.0, 0.7, eps))
    with pytest.raises(ConfigError, match="user_epsilons"):
        m.fit(data)
    assert calls == []  # refused before the write-ahead charge, before any noise
    # real numbers in a flat list only: a complex part, booleans or a 2-D table were accepted
    for odd in (eps.astype(complex) + 1j, np.ones(len(eps), dtype=bool), eps.reshape(-1, 1)):
        with pytest.raises(DataError, match="real numbers in a flat list"):
            m.fit(data, user_epsilons=odd)
    assert calls == []


def test_a_failed_refit_leaves_the_fitted_model_as_it_was(tmp_path: Path) -> None:
    """A reviewer's refit with a new ε, a new catalogue and invalid tiers raised, but had
    already replaced the noise scale and the catalogue: the saved file paired the new σ with
    the old guarantee, and the stale catalogue stuck for the next fit."""
    data, eps = _tiered_data()
    m = DPALS(epsilon=3.0, delta=1e-5, unit="user", tiers=(0.5, 1.0), factors=4, seed=0)
    m.fit(data, user_epsilons=eps)
    before = {k: v for k, v in m.__dict__.items()}
    sigma, guarantee = m.noise_scale_, m.privacy_guarantee
    m.set_params(epsilon=4.0)
    with pytest.raises(DataError):
        m.fit(data, user_epsilons=np.full(len(eps), 0.3), item_ids=np.arange(data.n_items + 5))
    m.set_params(epsilon=3.0)
    assert m.noise_scale_ == sigma and m.privacy_guarantee == guarantee
    assert getattr(m, "_catalogue", None) is before.get("_catalogue")
    assert set(m.__dict__) == set(before)
    again = load_model(m.save(tmp_path / "m.npz"))
    assert again.noise_scale_ == sigma
    assert "tiers" not in m.privacy_guarantee.non_default_params  # a privacy parameter


@settings(max_examples=20)  # ~0.1 s per example (the numba kernels' per-call overhead)
@given(weighted_problem(), st.integers(1, 5), st.data())
def test_removing_a_tier_interaction_moves_statistics_by_their_weight(
    p: tuple[np.ndarray, np.ndarray, np.ndarray], b: int, data: st.DataObject
) -> None:
    """Interaction unit: one interaction of user u removed, u's factors free to change (within Γ).

    Every statistic — counts, length histogram, Gramian, full and diagonal LHS, RHS — moves by
    at most w_u times the interaction-unit bound (DPALSSensitivity; √2 for the histogram, as
    ``length_sensitivity`` states)."""
    x, f, w = p
    rows, cols = np.nonzero(x)
    if len(rows) == 0:
        return
    j = data.draw(st.integers(0, len(rows) - 1))
    u = int(rows[j])
    gamma = 1.5
    prior = x.sum(axis=0) + 1.0
    f2 = f.copy()
    f2[u] = np.random.default_rng(data.draw(st.integers(0, 2**31))).standard_normal(3) * 3.0

    def stats(mat: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, ...]:
        m = sp.csr_matrix(mat)
        counts, _ = bounded_counts(m, PrivacyUnit.INTERACTION, b, None, w)
        hist = length_histogram(np.diff(m.indptr), max_length=m.shape[1], weights=w)
        c = adaptive_weights(m, prior, 0.5, float(b))
        fc = clip_rows(factors, gamma) * w[:, None]
        lhs, rhs = item_statistics(c, fc, c.data, alpha0=0.0)
        _, diag = item_sums(c, fc, square=True)
        assert diag is not None
        present = np.asarray(m.sum(axis=1)).ravel() > 0
        return counts, hist, gramian(fc[present]), lhs, np.asarray(diag, np.float64), rhs

    x2 = x.copy()
    x2[rows[j], cols[j]] = 0
    s = DPALSSensitivity.of(PrivacyUnit.INTERACTION, gamma, b, b)
    hist_bound = length_sensitivity(PrivacyUnit.INTERACTION)
    assert hist_bound == pytest.approx(np.sqrt(2.0))
    bounds = (s.counts, hist_bound, s.gram, s.lhs, s.lhs, s.rhs)
    for d, bound in zip(
        (a - c for a, c in zip(stats(x, f), stats(x2, f2), strict=True)), bounds, strict=True
    ):
        assert np.linalg.norm(d) <= w[u] * bound * (1 + 1e-5) + 1e-5


@settings(max_examples=40)
@given(weighted_problem(), st.integers(1, 5), st.data())
def test_removing_a_tier_user_moves_histogram_and_diagonals_by_their_weight(
    p: tuple[np.ndarray, np.ndarray, np.ndarray], b: int, data: st.DataObject
) -> None:
    """User unit: the weighted length histogram moves by ≤ w_u (sensitivity 1) and the diagonal
    LHS Σ_u c_uj (w_u x_u)∘(w_u x_u) by ≤ w_u √B Γ² (the full LHS's bound)."""
    x, f, w = p
    gamma = 1.5
    u = data.draw(st.integers(0, x.shape[0] - 1))
    prior = x.sum(axis=0) + 1.0

    def stats(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = sp.csr_matrix(mat)
        hist = length_histogram(np.diff(m.indptr), max_length=m.shape[1], weights=w)
        c = adaptive_weights(m, prior, 0.5, float(b))
        _, diag = item_sums(c, clip_rows(f, gamma) * w[:, None], square=True)
        assert diag is not None
        return hist, np.asarray(diag, np.float64)

    x2 = x.copy()
    x2[u] = 0
    (h1, d1), (h2, d2) = stats(x), stats(x2)
    s = DPALSSensitivity.of(PrivacyUnit.USER, gamma, b, b)
    assert length_sensitivity(PrivacyUnit.USER) == 1.0
    assert np.linalg.norm(h1 - h2) <= w[u] * 1.0 + 1e-9
    assert np.linalg.norm(d1 - d2) <= w[u] * s.lhs * (1 + 1e-5) + 1e-5
