"""DPALS: accounting pinned by hand composition, sensitivities, contract, guarantee."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models import load_model
from privrec.models.als_kernels import gramian, item_statistics
from privrec.models.dp_als import (
    DPALS,
    DPALSSensitivity,
    dpals_event,
    dpals_releases,
    head_threshold,
    initial_item_factors,
    resolve_iterations,
    resolve_popularity_blend,
    resolve_regularization,
    select_head,
)
from privrec.models.dp_als_accounting import REST_LABEL
from privrec.models.dp_rules import LengthProfile, head_capacity, head_floor, resolve_one_round
from privrec.models.item_sums import item_sums
from privrec.models.private import blend_popularity
from privrec.models.releases import Release
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.bounds import LENGTHS_LABEL
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import adaptive_weights, clip_rows, sample_per_user
from privrec.privacy.events import total_event
from privrec.privacy.postprocessing import diagonal_solve, project_psd, psd_solve, shared_solve
from privrec.privacy.randomness import seeded_generator
from privrec.privacy.units import PrivacyUnit

from .contract import RecommenderContract, checkerboard

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


class TestDPALSContract(RecommenderContract):
    personalised = False  # 40 users cannot carry a personalised signal through DP noise

    def make_model(self) -> DPALS:
        return DPALS(epsilon=5.0, delta=1e-3, unit="user", factors=4, max_per_user=10, seed=0)


def test_reference_configuration_epsilon_by_hand() -> None:
    """s0 = s1 = s2 = σ, B = 100, T = 3, plus the count release: ε derived by hand composition.

    Per step the multipliers are σ, σ/√B, σ/√B; a composition of Gaussian mechanisms with
    multipliers z_i is one Gaussian mechanism with multiplier (Σ z_i⁻²)^(-1/2).
    """
    sigma, b, t, z_count = 30.0, 100, 3, 15.0
    rate = t * (1 / sigma**2 + b / sigma**2 + b / sigma**2) + 1 / z_count**2
    by_hand = dp_accounting.get_epsilon_gaussian(rate**-0.5, 1e-6)
    event = dpals_event(sigma, t, b, (1.0, 1.0, 1.0, 0.5))
    assert epsilon_of(event, 1e-6) == pytest.approx(by_hand, rel=1e-9)
    # an independent accountant on the un-simplified event agrees up to its discretisation
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    assert acc.get_epsilon(1e-6) == pytest.approx(by_hand, rel=2e-3)
    assert by_hand == pytest.approx(3.91089, abs=1e-4)  # pinned


@pytest.mark.parametrize("eps", [1.0, 5.0])
def test_fit_meets_budget_and_records_events(eps: float) -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(epsilon=eps, delta=1e-4, unit="user", factors=4, iterations=2, seed=1).fit(data)
    g = m.privacy_guarantee
    assert 0.99 * eps <= g.epsilon <= eps
    labels = [e.label for e in g.spent_events]
    # the histogram, then the counts and both steps as one event (their split read from it)
    assert labels == [LENGTHS_LABEL, REST_LABEL]
    assert g.recompute_epsilon() == pytest.approx(g.epsilon, rel=1e-12)
    assert epsilon_of(total_event(g.spent_events), 1e-4) <= eps
    # with the fixed split every release is its own event, at the same σ and ε
    f = DPALS(
        epsilon=eps, delta=1e-4, unit="user", factors=4, iterations=2, seed=1,
        adaptive_count_share=False,
    ).fit(data)  # fmt: skip
    fixed = [e.label for e in f.privacy_guarantee.spent_events]
    assert fixed[:2] == [LENGTHS_LABEL, "noisy item counts"] and len(fixed) == 2 + 2 * 2
    assert f.privacy_guarantee.epsilon == pytest.approx(g.epsilon, rel=1e-9)


def test_adaptive_event_pinned_by_hand() -> None:
    """The data-adaptive plan adds one histogram release (multiplier r_h·σ) to the fixed-B₀ split."""
    sigma, b0, t, ratios, r_h = 40.0, 30, 2, (1.0, 5.0, 1.0, 0.2), 0.5
    rate = 1 / (r_h * sigma) ** 2 + 1 / (0.2 * sigma) ** 2
    rate += t * (1 / sigma**2 + b0 / (5 * sigma) ** 2 + b0 / sigma**2)
    by_hand = dp_accounting.get_epsilon_gaussian(rate**-0.5, 1e-5)
    event = dpals_event(sigma, t, b0, ratios, length_ratio=r_h)
    assert epsilon_of(event, 1e-5) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(0.89231, abs=1e-4)  # pinned
    releases = dpals_releases(sigma, t, b0, ratios, length_ratio=r_h)
    assert [r.label for r in releases][:2] == [LENGTHS_LABEL, "noisy item counts"]
    assert epsilon_of(total_event(releases), 1e-5) == pytest.approx(by_hand, rel=1e-9)
    # without the histogram: exactly the fixed-B design
    assert dpals_event(sigma, t, b0, ratios) == dpals_event(sigma, t, b0, ratios, None)
    assert dpals_releases(sigma, t, b0, ratios)[0].label == "noisy item counts"


def test_fixed_bounds_reduce_to_the_fixed_design() -> None:
    """Given B, k and lhs="full", no histogram is released and σ is calibrated as before."""
    data, _ = checkerboard(n_users=60, n_items=20)
    kw = {"epsilon": 2.0, "delta": 1e-4, "unit": "user", "iterations": 2, "seed": 1}
    m = DPALS(**kw, factors=4, max_per_user=10, lhs="full").fit(data)  # type: ignore[arg-type]
    labels = [e.label for e in m.privacy_guarantee.spent_events]
    assert labels[0] == "noisy item counts" and len(labels) == 1 + 3 * 2
    expected = calibrate(Budget(2.0, 1e-4), lambda s: dpals_event(s, 2, 10, (1.0, 5.0, 1.0, 0.2)))
    assert m.noise_scale_ == pytest.approx(expected, rel=1e-12)
    assert m.effective_noise_scale_ == m.noise_scale_
    assert (m.max_per_user_, m.count_sample_, m.factors_) == (10, 10, 4)


def test_bound_adapts_to_history_length() -> None:
    """Short histories get a small B, long ones a large B (the 75th percentile, privately)."""
    short = synthetic(n_users=3000, n_items=400, interactions_per_user=6, seed=0)
    long = synthetic(n_users=3000, n_items=400, interactions_per_user=80, seed=0)
    kw = {"epsilon": 1.0, "delta": 1e-5, "unit": "user", "iterations": 1, "seed": 0}
    a = DPALS(**kw).fit(short)  # type: ignore[arg-type]
    b = DPALS(**kw).fit(long)  # type: ignore[arg-type]
    for m, d in ((a, short), (b, long)):
        q75 = np.quantile(np.diff(d.matrix.indptr), 0.75)
        assert q75 / 2 <= m.max_per_user_ <= q75 * 2
        q50 = np.quantile(np.diff(d.matrix.indptr), 0.5)
        assert q50 / 2 <= m.count_sample_ <= q50 * 2  # the counts sample the median
        # the item statistics' noise follows B at the budget split of B₀ = 30
        assert m.effective_noise_scale_ == pytest.approx(
            m.noise_scale_ * math.sqrt(m.max_per_user_ / 30)
        )
    assert a.max_per_user_ < 20 < b.max_per_user_
    assert a.privacy_guarantee.epsilon <= 1.0 and b.privacy_guarantee.epsilon <= 1.0


def test_per_user_shrinkage_of_the_blend() -> None:
    """Shrinkage 0 reproduces the constant blend; with it, short histories lean to popularity."""
    data, _ = checkerboard(n_users=80, n_items=20)
    kw = {"epsilon": 2.0, "delta": 1e-4, "unit": "user", "factors": 4, "seed": 1}
    kw |= {"max_per_user": 5, "popularity_blend": 0.3}
    flat = DPALS(**kw).fit(data)  # type: ignore[arg-type]
    zero = DPALS(**kw, popularity_shrinkage=0.0).fit(data)  # type: ignore[arg-type]
    users = np.arange(1, 80)
    # two seeded fits agree up to float32 rounding (threaded user solves and BLAS are not
    # bit-reproducible): compare the ranked scores (robust to near-tie swaps) with a tolerance
    np.testing.assert_allclose(
        flat.recommend(users, k=5)[1], zero.recommend(users, k=5)[1], rtol=1e-4, atol=1e-5
    )
    big = DPALS(**kw, popularity_shrinkage=1e3).fit(data)  # type: ignore[arg-type]
    # the prior dominates: every user's list is the popularity order of the head (unseen part)
    order = big.head_items_[np.argsort(-big.noisy_counts_[big.head_items_], kind="stable")]
    items, _ = big.recommend(3, k=3, exclude_seen=False)
    np.testing.assert_array_equal(items, order[:3])
    assert DPALS(epsilon=1.0, delta=1e-5, unit="user").config().popularity_shrinkage is None


def test_interaction_unit_doubles_sensitivity() -> None:
    u = DPALSSensitivity.of(PrivacyUnit.USER, 2.0, 100, 50)
    i = DPALSSensitivity.of(PrivacyUnit.INTERACTION, 2.0, 100, 50)
    assert (u.gram, u.lhs, u.rhs, u.counts) == pytest.approx((4.0, 40.0, 20.0, math.sqrt(50)))
    assert (i.gram, i.lhs, i.rhs, i.counts) == pytest.approx((8.0, 80.0, 40.0, math.sqrt(2)))


@st.composite
def problem(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_users = draw(st.integers(2, 12))
    n_items = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    x = (rng.random((n_users, n_items)) < draw(st.floats(0.1, 1.0))).astype(np.float32)
    f = rng.standard_normal((n_users, 3)) * draw(st.floats(0.1, 5.0))
    return x, f


@settings(max_examples=40)
@given(problem(), st.sampled_from(["uniform", "tail", "adaptive"]), st.integers(1, 6), st.data())
def test_statistics_user_sensitivity(
    p: tuple[np.ndarray, np.ndarray], method: str, b: int, data: st.DataObject
) -> None:
    """Removing any one user moves Gramian, LHS and RHS by at most the stated sensitivities."""
    x, f = p
    gamma = 1.5
    u = data.draw(st.integers(0, x.shape[0] - 1))
    counts = x.sum(axis=0) + 1.0

    def stats(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = sp.csr_matrix(mat)
        rng = seeded_generator(0, warn=False)
        if method == "adaptive":
            w = adaptive_weights(m, counts, 0.5, float(b))
        else:
            w = sample_per_user(
                m, b, rng, "uniform" if method == "uniform" else "least_popular", counts
            )
        fc = clip_rows(f, gamma)
        lhs, rhs = item_statistics(w, fc, w.data, alpha0=0.0)
        present = np.asarray(m.sum(axis=1)).ravel() > 0
        return gramian(fc[present]), lhs, rhs

    x2 = x.copy()
    x2[u] = 0
    g1, l1, r1 = stats(x)
    g2, l2, r2 = stats(x2)
    s = DPALSSensitivity.of(PrivacyUnit.USER, gamma, b, 1)
    assert np.linalg.norm(g1 - g2) <= s.gram + 1e-6
    assert np.linalg.norm(l1 - l2) <= s.lhs + 1e-6
    assert np.linalg.norm(r1 - r2) <= s.rhs + 1e-6


def test_non_private_limit_learns() -> None:
    """With a huge ε the model is personalised on checkerboard data.

    The checkerboard's items are equally popular, so the popularity prior of the blend is pure
    noise there: it is turned off to test what the factors learn.
    """
    data, answer = checkerboard(n_users=200, n_items=20, hide=2)
    m = DPALS(
        epsilon=1e6, delta=1e-3, unit="user", factors=4, iterations=4, regularization=0.1, seed=2,
        popularity_blend=0.0,
    ).fit(data)  # fmt: skip
    users = np.arange(1, 200)
    items, _ = m.recommend(users, k=2)
    assert np.take_along_axis(answer[users], items, axis=1).mean() >= 0.9


def test_head_fraction_limits_catalogue() -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(epsilon=2.0, delta=1e-4, unit="user", factors=4, head_fraction=0.25, seed=1).fit(data)
    assert len(m.head_items_) == 5
    items, scores = m.recommend(1, k=20, exclude_seen=False)
    assert set(items[np.isfinite(scores)].tolist()) <= set(m.head_items_.tolist())


def test_released_file_has_no_user_data_and_folds_in(tmp_path: Path) -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(epsilon=2.0, delta=1e-4, unit="user", factors=4, seed=1).fit(data)
    again = load_model(m.save(tmp_path / "dpals.npz"))
    assert isinstance(again, DPALS)
    assert again.user_items_.nnz == 0
    np.testing.assert_allclose(
        again.fold_in(data.matrix[[3]]), m.user_factors_[[3]], rtol=1e-4, atol=1e-5
    )
    assert again.privacy_guarantee == m.privacy_guarantee


def test_invalid_method() -> None:
    with pytest.raises(ConfigError, match="method"):
        DPALS(epsilon=1.0, delta=1e-6, unit="user", method="fancy").config()  # type: ignore[arg-type]


def test_item_statistics_blas_path_matches_definition() -> None:
    """The gathered-GEMM item statistics equal Σ w x xᵀ and Σ (α0 + w) x, threaded or not."""
    rng = np.random.default_rng(3)
    m = sp.random(300, 40, density=0.15, format="csr", random_state=4)
    f = rng.standard_normal((300, 6))
    w = rng.random(m.nnz)
    dense_w = sp.csr_matrix((w, m.indices, m.indptr), shape=m.shape).toarray()
    seen = dense_w != 0
    lhs_ref = np.einsum("uj,ua,ub->jab", dense_w, f, f)
    rhs_ref = np.einsum("uj,ua->ja", (0.2 + dense_w) * seen, f)
    for threads in (1, 2):
        lhs, rhs = item_statistics(m, f, w, alpha0=0.2, num_threads=threads)
        np.testing.assert_allclose(lhs, lhs_ref, atol=1e-10)
        np.testing.assert_allclose(rhs, rhs_ref, atol=1e-10)
    lhs32, _ = item_statistics(m, f.astype(np.float32), w, alpha0=0.2)
    assert lhs32.dtype == np.float32
    np.testing.assert_allclose(lhs32, lhs_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("project", ["always", "if_indefinite"])
def test_psd_solve_matches_explicit_projection(project: str) -> None:
    rng = np.random.default_rng(5)
    k, n = 5, 30
    base = np.eye(k) * 0.5
    noise = rng.standard_normal((n, k, k)) * 2.0
    stack = (noise + np.swapaxes(noise, 1, 2)) / 2
    rhs = rng.standard_normal((n, k))
    reg = rng.uniform(1.0, 3.0, n)
    y, projected = psd_solve(base, stack, rhs, reg, project)  # type: ignore[arg-type]
    for j in range(n):
        a = base + stack[j]
        if project == "always" or projected[j]:
            a = project_psd(a)
        assert projected[j] == (
            np.linalg.eigvalsh(
                base + stack[j] + (reg[j] if project == "if_indefinite" else 0) * np.eye(k)
            )[0]
            <= 0
        )
        np.testing.assert_allclose(y[j], np.linalg.solve(a + reg[j] * np.eye(k), rhs[j]), atol=1e-8)


def test_head_capacity_caps_the_noise_rule_only() -> None:
    counts = np.array([50.0, 5.0, 30.0, 1.0, 40.0])
    # one observation per factor parameter: ⌊Σ ñ_j / k⌋, at least 1 (negative totals too)
    assert head_capacity(counts, 4) == 31 and head_capacity(counts, 126) == 1
    assert head_capacity(-counts, 4) == 1
    # no capacity, or one that does not bind: the previous rule exactly
    for capacity in (None, 3, 5):
        assert select_head(counts, None, 25.0, 1, capacity).tolist() == [0, 2, 4]
    assert select_head(counts, None, 25.0, 1, 2).tolist() == [0, 4]  # the largest counts
    assert select_head(counts, None, 25.0, 2, 1).tolist() == [0, 4]  # the floor still holds
    assert select_head(counts, 0.6, 1e9, 1, 1).tolist() == [0, 2, 4]  # a fraction ignores it


def test_head_floor_holds_a_quarter_of_the_count_mass() -> None:
    # concentrated counts: a quarter of the mass is in the first item -> head_min stands
    counts = np.array([90.0, 5.0, 3.0, 1.0, 1.0])
    assert head_floor(counts, 2) == 2 and head_floor(counts, 1) == 1
    # spread counts: a quarter of 10 equal counts takes 3 items
    flat = np.full(10, 4.0)
    assert head_floor(flat, 1) == 3 and head_floor(flat, 5) == 5
    assert head_floor(flat, 1, share=0.5) == 5 and head_floor(flat, 1, share=1.0) == 10
    assert head_floor(-flat, 2) == 2  # no positive mass: head_min
    # with the floor as the minimum, select_head keeps it above the threshold and the cap
    assert len(select_head(flat, None, 100.0, head_floor(flat, 1), 1)) == 3


def test_dpals_head_capacity_binds_only_above_the_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """At large ε the noise threshold admits nearly every item; the cap keeps Σ ñ / k of them,
    and where it does not bind the fit is the previous default's, factor for factor."""
    import privrec.models.dp_rules as dp_rules_module

    data = synthetic(n_users=300, n_items=200, interactions_per_user=8, seed=3)
    kw = {"epsilon": 50.0, "delta": 1e-5, "unit": "user", "head_min": 10, "seed": 2}
    capped = DPALS(**kw, factors=32).fit(data)
    cap = head_capacity(capped.noisy_counts_, 32)
    assert len(capped.head_items_) == max(10, cap) < 200
    loose = DPALS(**kw, factors=2).fit(data)  # Σ ñ / 2 is above the catalogue
    monkeypatch.setattr(dp_rules_module, "head_capacity", lambda counts, k: None)
    uncapped = DPALS(**kw, factors=32).fit(data)
    assert len(uncapped.head_items_) > len(capped.head_items_)
    before = DPALS(**kw, factors=2).fit(data)
    np.testing.assert_array_equal(loose.head_items_, before.head_items_)
    np.testing.assert_allclose(loose.item_factors_, before.item_factors_, rtol=1e-4, atol=1e-6)
    assert capped.noise_scale_ == uncapped.noise_scale_  # post-processing: the same σ


def test_automatic_head_and_regularisation() -> None:
    counts = np.array([50.0, 5.0, 30.0, 1.0, 40.0])
    assert select_head(counts, None, 35.0, 1).tolist() == [0, 4]
    assert select_head(counts, None, 35.0, 3).tolist() == [0, 2, 4]
    assert select_head(counts, 0.2, 1e9, 3).tolist() == [0]
    assert resolve_regularization(None, 10.0, 0.5) == pytest.approx(1000.0)
    assert resolve_regularization(7.0, 10.0, 0.5) == 7.0
    assert resolve_iterations(None, 1.0) == 2 and resolve_iterations(None, 5.0) == 3
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(epsilon=1.0, delta=1e-4, unit="user", factors=4, head_min=7, seed=1).fit(data)
    assert len(m.head_items_) >= 7 and m.iterations_ == 2
    # the ridge follows the noise the statistics actually carry (σ·√(B/B₀) with a data-adaptive B)
    assert m.regularization_ == pytest.approx(max(1.0, 400 * m.effective_noise_scale_ * 0.3**2))


def test_cold_start_falls_back_to_private_popularity() -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(epsilon=2.0, delta=1e-4, unit="user", factors=4, seed=1).fit(data)
    items, _ = m.recommend(0, k=5)  # user 0 has no interactions
    head = m.head_items_
    expected = head[np.argsort(-m.noisy_counts_[head], kind="stable")][:5]
    np.testing.assert_array_equal(np.sort(items), np.sort(expected))


@settings(max_examples=40)
@given(problem(), st.sampled_from(["uniform", "tail", "adaptive"]), st.integers(1, 6), st.data())
def test_statistics_interaction_sensitivity(
    p: tuple[np.ndarray, np.ndarray], method: str, b: int, data: st.DataObject
) -> None:
    """Removing one interaction may change that user's factors arbitrarily (within Γ) and their
    weights; every statistic still moves by at most the interaction-unit sensitivity."""
    x, f = p
    rows, cols = np.nonzero(x)
    if len(rows) == 0:
        return
    j = data.draw(st.integers(0, len(rows) - 1))
    u = int(rows[j])
    gamma = 1.5
    counts = x.sum(axis=0) + 1.0
    f2 = f.copy()
    f2[u] = (
        np.random.default_rng(data.draw(st.integers(0, 2**31))).standard_normal(f.shape[1]) * 3.0
    )

    def stats(mat: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = sp.csr_matrix(mat)
        rng = seeded_generator(0, warn=False)
        if method == "adaptive":
            w = adaptive_weights(m, counts, 0.5, float(b))
        else:
            w = sample_per_user(
                m, b, rng, "uniform" if method == "uniform" else "least_popular", counts
            )
        fc = clip_rows(factors, gamma)
        lhs, rhs = item_statistics(w, fc, w.data, alpha0=0.0)
        present = np.asarray(m.sum(axis=1)).ravel() > 0
        return gramian(fc[present]), lhs, rhs

    x2 = x.copy()
    x2[rows[j], cols[j]] = 0
    g1, l1, r1 = stats(x, f)
    g2, l2, r2 = stats(x2, f2)
    s = DPALSSensitivity.of(PrivacyUnit.INTERACTION, gamma, b, 1)
    assert np.linalg.norm(g1 - g2) <= s.gram + 1e-6
    assert np.linalg.norm(l1 - l2) <= s.lhs + 1e-6
    assert np.linalg.norm(r1 - r2) <= s.rhs + 1e-6


def test_blend_popularity_standardises_rows_and_ranks_cold_users_by_popularity() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 6)).astype(np.float32)
    scores[1] *= 1000.0  # the scale of a row does not matter
    scores[3] = 0.0  # a user without history
    counts = np.array([10.0, 500.0, -3.0, 80.0, 20.0, 5.0])
    out = blend_popularity(scores, counts, 0.0)
    np.testing.assert_allclose(out[:3].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:3].std(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_array_equal(np.argsort(-out[0]), np.argsort(-scores[0]))  # β = 0 keeps ranks
    blended = blend_popularity(scores, counts, 0.5)
    np.testing.assert_allclose(
        blended[1], blend_popularity(scores[[1]] / 1000.0, counts, 0.5)[0], rtol=1e-4, atol=1e-5
    )
    assert np.argsort(-blended[3], kind="stable")[:3].tolist() == [1, 3, 4]
    # a huge β gives the popularity ranking for everybody (negative noisy counts count as 0)
    assert np.argsort(-blend_popularity(scores, counts, 1e4)[0])[:3].tolist() == [1, 3, 4]


def test_popularity_blend_default_and_round_trip(tmp_path: Path) -> None:
    assert resolve_popularity_blend(None, 1.0) > resolve_popularity_blend(None, 5.0)
    assert resolve_popularity_blend(None, 5.0) > resolve_popularity_blend(None, 20.0) > 0
    assert resolve_popularity_blend(0.0, 1.0) == 0.0
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(epsilon=2.0, delta=1e-4, unit="user", factors=4, seed=1).fit(data)
    assert m.popularity_blend_ == resolve_popularity_blend(None, 2.0)
    off = DPALS(epsilon=2.0, delta=1e-4, unit="user", factors=4, popularity_blend=0.0, seed=1).fit(
        data
    )
    # same noise draws, same factors: the blend only re-ranks (post-processing, same guarantee)
    np.testing.assert_allclose(m.item_factors_, off.item_factors_, rtol=1e-4, atol=1e-6)
    assert m.privacy_guarantee.epsilon == off.privacy_guarantee.epsilon
    again = load_model(m.save(tmp_path / "dpals.npz"))
    assert isinstance(again, DPALS)
    assert again.popularity_blend_ == m.popularity_blend_
    hist = data.matrix[[5, 7]]
    np.testing.assert_array_equal(
        again.recommend_history(hist, k=5)[0], m.recommend_history(hist, k=5)[0]
    )
    with pytest.raises(ConfigError):
        DPALS(epsilon=1.0, delta=1e-6, unit="user", popularity_blend=-1.0).config()


def test_count_sample_defaults_to_the_weight_budget() -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    kw = {"epsilon": 2.0, "delta": 1e-4, "unit": "user", "factors": 4, "max_per_user": 3, "seed": 4}
    a = DPALS(**kw).fit(data)  # type: ignore[arg-type]
    b = DPALS(**kw, count_sample=3).fit(data)  # type: ignore[arg-type]
    c = DPALS(**kw, count_sample=20).fit(data)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.noisy_counts_, b.noisy_counts_)
    assert not np.array_equal(a.noisy_counts_, c.noisy_counts_)
    assert head_threshold(7.0, 2.0, 100) == pytest.approx(14.0)
    assert head_threshold(7.0, 2.0, 25) == pytest.approx(7.0)


def test_cheaper_left_hand_sides_reduce_to_psd_solve() -> None:
    """The shared and diagonal solvers equal psd_solve on the corresponding stacks."""
    rng = np.random.default_rng(5)
    k, n = 4, 6
    a = rng.standard_normal((k, k))
    base = a @ a.T - 1.0 * np.eye(k)  # indefinite: the projection matters
    rhs = rng.standard_normal((n, k))
    reg = rng.uniform(0.5, 2.0, n)
    want, _ = psd_solve(project_psd(base), np.zeros((n, k, k)), rhs, reg, "always")
    np.testing.assert_allclose(shared_solve(base, rhs, reg), want, atol=1e-9)
    d = rng.standard_normal((n, k))
    stack = np.stack([np.diag(np.maximum(v, 0.0)) for v in d])
    want, _ = psd_solve(project_psd(base), stack, rhs, reg, "if_indefinite")
    np.testing.assert_allclose(diagonal_solve(base, d, rhs, reg), want, atol=1e-9)


@settings(max_examples=30)
@given(problem(), st.integers(1, 6), st.data())
def test_lhs_diagonal_user_sensitivity(
    p: tuple[np.ndarray, np.ndarray], b: int, data: st.DataObject
) -> None:
    """Removing one user moves Σ_u c_uj x_u∘x_u by at most √B Γ² (the full LHS's bound)."""
    x, f = p
    gamma = 1.5
    u = data.draw(st.integers(0, x.shape[0] - 1))
    counts = x.sum(axis=0) + 1.0

    def diag(mat: np.ndarray) -> np.ndarray:
        w = adaptive_weights(sp.csr_matrix(mat), counts, 0.5, float(b))
        fc = clip_rows(f, gamma)
        return np.asarray(w.T @ (fc * fc))

    x2 = x.copy()
    x2[u] = 0
    s = DPALSSensitivity.of(PrivacyUnit.USER, gamma, b, 1)
    assert np.linalg.norm(diag(x) - diag(x2)) <= s.lhs + 1e-6


@pytest.mark.parametrize("lhs", ["diagonal", "none"])
def test_cheaper_lhs_releases_and_budget(lhs: str) -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPALS(
        epsilon=2.0,
        delta=1e-4,
        unit="user",
        factors=4,
        iterations=2,
        lhs=lhs,
        seed=1,  # type: ignore[arg-type]
        adaptive_count_share=False,  # every release its own event
    ).fit(data)
    labels = [e.label for e in m.privacy_guarantee.spent_events]
    per_step = 3 if lhs == "diagonal" else 2
    assert len(labels) == 2 + per_step * 2
    assert ("step 1: noisy item left-hand-side diagonals" in labels) == (lhs == "diagonal")
    assert 0.99 * 2.0 <= m.privacy_guarantee.epsilon <= 2.0
    # the diagonal release costs what the full one does (same multiplier, bound ≤ the full one's)
    assert dpals_event(30.0, 2, 30, (1.0, 5.0, 1.0, 0.2), lhs="diagonal") == dpals_event(
        30.0, 2, 30, (1.0, 5.0, 1.0, 0.2), lhs="full"
    )


def test_one_round_rule_follows_noisy_n_times_epsilon() -> None:
    # 400 users (noise-free histogram): one round below n·ε = 1000, separate rounds above
    p = LengthProfile(np.array([0.0, 0.0, 0.0, 400.0]), 0.0, 50)
    assert resolve_one_round(None, p, 2.0, 1000.0)  # n·ε = 800
    assert not resolve_one_round(None, p, 3.0, 1000.0)  # n·ε = 1200
    assert resolve_one_round(True, p, 100.0, 1000.0)
    assert not resolve_one_round(False, p, 0.1, 1000.0)
    assert not resolve_one_round(None, None, 0.1, 1000.0)  # no profile (B and k given)


def test_initial_item_factors_start_from_the_counts_only_in_one_round() -> None:
    counts = np.array([100.0, -3.0, 10.0, 0.0, 50.0])
    rand = initial_item_factors((5, 4), 0.1, 7, counts, False)
    expect = np.random.default_rng(8).standard_normal((5, 4)) * (0.1 / 2)  # seed + 1
    np.testing.assert_allclose(rand, expect, rtol=1e-12)
    one = initial_item_factors((5, 4), 0.1, 7, counts, True)
    np.testing.assert_allclose(one[:, 1:], rand[:, 1:], rtol=1e-12)
    prior = np.log1p(np.maximum(counts, 0.0))
    np.testing.assert_allclose(one[:, 0] / one[0, 0], prior / prior[0], rtol=1e-12)
    assert np.sqrt(np.mean(one[:, 0] ** 2)) == pytest.approx(0.1 / 2)


def test_one_round_costs_nothing_and_averages_the_step_solves() -> None:
    """Same releases, events and σ either way; one round keeps the mean of the steps' solves."""
    data = synthetic(n_users=200, n_items=60, seed=1)
    kw = {"epsilon": 2.0, "delta": 1e-5, "unit": "user", "seed": 5}
    seen: list[Release] = []
    one = DPALS(**kw, one_round=True).fit(data, on_release=seen.append)
    two = DPALS(**kw, one_round=False).fit(data)
    assert DPALS(**kw).fit(data).one_round_  # the rule: n·ε ≈ 400 < 1000
    assert one.one_round_ and not two.one_round_
    assert one.noise_scale_ == two.noise_scale_
    assert one.privacy_guarantee.epsilon == two.privacy_guarantee.epsilon
    assert [e.label for e in one.privacy_guarantee.spent_events] == [
        e.label for e in two.privacy_guarantee.spent_events
    ]
    assert [e.event for e in one.privacy_guarantee.spent_events] == [
        e.event for e in two.privacy_guarantee.spent_events
    ]
    np.testing.assert_array_equal(one.noisy_counts_, two.noisy_counts_)  # same draws up to here
    grams = [r.value for r in seen if r.name == "gramian"]
    rhs = [r.value for r in seen if r.name == "rhs"]
    t = one.iterations_
    assert len(grams) == len(rhs) == t == 3  # ε = 2: three steps
    assert not np.array_equal(rhs[0], rhs[1])  # fresh noise on the same statistic
    reg = np.full(len(one.head_items_), one.regularization_)
    a0 = one.alpha0_  # the resolved α0 (the density rule by default)
    y = sum(shared_solve(a0 * project_psd(g), r, reg) for g, r in zip(grams, rhs, strict=True)) / t
    np.testing.assert_allclose(one.item_factors_[one.head_items_], y, rtol=1e-4, atol=1e-6)


def test_one_round_solves_the_users_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """In one round every step's users solve from the same start: their clean sums are computed
    once and only the noise is drawn per step (the steps' releases still differ)."""
    import privrec.models.dp_als as mod

    calls: list[int] = []
    real = mod._user_cg

    def counting(*args: object, **kw: object) -> np.ndarray:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mod, "_user_cg", counting)
    data = synthetic(n_users=200, n_items=60, seed=1)
    kw = {"epsilon": 2.0, "delta": 1e-5, "unit": "user", "seed": 5}
    seen: list[Release] = []
    one = DPALS(**kw, one_round=True).fit(data, on_release=seen.append)
    assert one.iterations_ == 3 and len(calls) == 1
    rhs = [r.value for r in seen if r.name == "rhs"]
    assert len(rhs) == 3 and not np.array_equal(rhs[0], rhs[2])
    calls.clear()
    DPALS(**kw, one_round=False).fit(data)
    assert len(calls) == 3


def _gdp_epsilon(mu: float, delta: float) -> float:
    """ε(δ) of μ-Gaussian DP, from the analytic trade-off (Dong, Roth & Su; Balle & Wang):
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), decreasing in ε; solved by bisection."""
    from scipy.stats import norm

    def delta_of(eps: float) -> float:
        return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))

    lo, hi = 0.0, 1.0
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_default_lhs_none_event_pinned_by_closed_form() -> None:
    """The default ``lhs="none"`` plan with the length histogram: ε from the GDP closed form.

    Each release's multiplier is its noise std over its sensitivity (DPALSSensitivity, USER):
    Gramian r0·σ·Γ² / Γ², right-hand sides r2·σ·Γ / (√B Γ), counts r3·σ·√s / √s, histogram
    r_h·σ / 1 — no left-hand side. Gaussians compose to μ² = Σ (sensitivity/std)².
    """
    sigma, t, b, ratios, r_h, gamma, s, delta = 20.0, 3, 30, (1.0, 5.0, 1.0, 0.2), 0.5, 0.7, 9, 1e-5
    r0, _, r2, r3 = ratios
    sens = DPALSSensitivity.of(PrivacyUnit.USER, gamma, b, s)
    gram_std, rhs_std, counts_std = r0 * sigma * gamma**2, r2 * sigma * gamma, r3 * sigma * s**0.5
    mu2 = (sens.counts / counts_std) ** 2 + (1.0 / (r_h * sigma)) ** 2
    mu2 += t * ((sens.gram / gram_std) ** 2 + (sens.rhs / rhs_std) ** 2)
    # the same μ² written out: 1/(r3σ)² + 1/(r_hσ)² + T(1/(r0σ)² + B/(r2σ)²)
    assert mu2 == pytest.approx(
        1 / (r3 * sigma) ** 2
        + 1 / (r_h * sigma) ** 2
        + t * (1 / (r0 * sigma) ** 2 + b / (r2 * sigma) ** 2),
        rel=1e-12,
    )
    by_hand = _gdp_epsilon(math.sqrt(mu2), delta)
    event = dpals_event(sigma, t, b, ratios, r_h, "none")
    assert epsilon_of(event, delta) == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(2.22760, abs=1e-4)  # pinned
    assert epsilon_of(total_event(dpals_releases(sigma, t, b, ratios, r_h, "none")), delta) == (
        pytest.approx(by_hand, rel=1e-6)
    )
    # dropping the left-hand sides is strictly cheaper than releasing them
    assert epsilon_of(dpals_event(sigma, t, b, ratios, r_h, "full"), delta) > by_hand


@settings(max_examples=40)
@given(problem(), st.sampled_from(["uniform", "tail", "adaptive"]), st.integers(1, 6), st.data())
def test_lhs_diagonal_interaction_sensitivity(
    p: tuple[np.ndarray, np.ndarray], method: str, b: int, data: st.DataObject
) -> None:
    """Removing one interaction (that user's factors may change arbitrarily within Γ, and their
    weights with them) moves Σ_u c_uj x_u∘x_u by at most the interaction unit's LHS bound."""
    x, f = p
    rows, cols = np.nonzero(x)
    if len(rows) == 0:
        return
    j = data.draw(st.integers(0, len(rows) - 1))
    u = int(rows[j])
    gamma = 1.5
    counts = x.sum(axis=0) + 1.0
    f2 = f.copy()
    f2[u] = (
        np.random.default_rng(data.draw(st.integers(0, 2**31))).standard_normal(f.shape[1]) * 3.0
    )

    def diag(mat: np.ndarray, factors: np.ndarray) -> np.ndarray:
        m = sp.csr_matrix(mat)
        if method == "adaptive":
            w = adaptive_weights(m, counts, 0.5, float(b))
        else:
            rng = seeded_generator(0, warn=False)
            w = sample_per_user(
                m, b, rng, "uniform" if method == "uniform" else "least_popular", counts
            )
        fc = clip_rows(factors, gamma)
        _, sq = item_sums(w, fc, square=True)
        assert sq is not None
        np.testing.assert_allclose(sq, w.T @ (fc * fc), rtol=1e-4, atol=1e-4)
        return np.asarray(sq, dtype=np.float64)

    x2 = x.copy()
    x2[rows[j], cols[j]] = 0
    s = DPALSSensitivity.of(PrivacyUnit.INTERACTION, gamma, b, 1)
    assert np.linalg.norm(diag(x, f) - diag(x2, f2)) <= s.lhs * (1 + 1e-5) + 1e-5
