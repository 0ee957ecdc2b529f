"""Federated DPALS: per-device bounds, the sums equal central statistics, accounting, SecAgg paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from privrec.data import synthetic
from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated.dpals import (
    FederatedDPALS,
    _part_scales,
    _step_norm,
    _unpack,
    round_vectors,
)
from privrec.models.dp_als import dpals_event
from privrec.privacy.accounting import epsilon_of
from privrec.privacy.contribution import adaptive_weights, clip_rows
from privrec.privacy.events import total_event

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")

RATIOS = (1.0, 5.0, 1.0, 0.2)


@settings(max_examples=30)
@given(
    st.integers(2, 12),
    st.integers(1, 9),
    st.integers(2, 5),
    st.integers(1, 40),
    st.sampled_from(["none", "diagonal"]),
    st.integers(0, 2**31),
)
def test_device_vectors_are_bounded_and_sum_to_central_statistics(
    n: int, n_items: int, k: int, b: int, lhs: str, seed: int
) -> None:
    """Every device's row has L2 norm ≤ the round's bound; the decoded sum is central's statistics."""
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix((rng.random((n, n_items)) < 0.5).astype(np.float32))
    gamma = 0.7
    u = clip_rows(rng.standard_normal((n, k)) * 2.0, gamma)
    w = adaptive_weights(x, x.sum(axis=0).A1 + 1.0, 0.5, float(b))
    b0 = 30
    scales = _part_scales(RATIOS, gamma, b, b0)
    vec = round_vectors(u, w, scales, lhs)
    norms = np.sqrt(np.asarray(vec.multiply(vec).sum(axis=1)).ravel())
    assert np.all(norms <= _step_norm(RATIOS, b0, lhs) * (1 + 1e-9))
    g, rhs, diag = _unpack(np.asarray(vec.sum(axis=0)).ravel(), k, n_items, scales, lhs)
    np.testing.assert_allclose(g, u.T @ u, atol=1e-9)
    np.testing.assert_allclose(rhs, w.T @ u, atol=1e-9)
    if lhs == "diagonal":
        np.testing.assert_allclose(diag, w.T @ (u * u), atol=1e-9)


def test_planned_events_are_central_dpals_split_under_rdp() -> None:
    data = synthetic(n_users=300, n_items=60, interactions_per_user=10, seed=0)
    m = FederatedDPALS(epsilon=3.0, delta=1e-4, factors=4, seed=0).fit(data)
    g = m.privacy_guarantee
    assert g.accountant.value == "rdp" and 0.99 * 3.0 <= g.epsilon <= 3.0
    sigma = m.noise_scale_
    central = dpals_event(sigma, m.iterations_, 30, RATIOS, 0.5, "none")
    assert epsilon_of(total_event(g.spent_events), 1e-4, "rdp") == pytest.approx(
        epsilon_of(central, 1e-4, "rdp"), rel=1e-9
    )
    # each step round's multiplier is σ over the combined bound (one Gaussian on the stack)
    step = next(e for e in g.spent_events if e.label.startswith("step 1"))
    assert step.event.noise_multiplier == pytest.approx(sigma / math.sqrt(1 + 30))
    kinds = [r["round"] for r in m.rounds_]
    assert kinds == ["lengths", "counts", "step 1", "step 2", "step 3"]
    for r in m.rounds_:
        assert r["bytes_per_device"] == r["padded_dim"] * (4 if r["bits"] <= 32 else 8)
        assert r["padded_dim"] >= r["dim"] and r["survivors"] == 300


def test_fast_and_full_secagg_release_the_same_model() -> None:
    data = synthetic(n_users=120, n_items=30, interactions_per_user=8, seed=1)
    kw = {"epsilon": 5.0, "delta": 1e-3, "factors": 3, "iterations": 1, "seed": 2}
    fast = FederatedDPALS(**kw, secure="fast", dropout=0.03).fit(data)  # type: ignore[arg-type]
    full = FederatedDPALS(**kw, secure="full", dropout=0.03).fit(data)  # type: ignore[arg-type]
    np.testing.assert_array_equal(fast.item_factors_, full.item_factors_)
    assert [r["survivors"] for r in fast.rounds_] == [r["survivors"] for r in full.rounds_]
    assert fast.rounds_[0]["survivors"] < 120  # dropouts happened and were tolerated


def test_too_few_survivors_abort_before_decoding() -> None:
    data = synthetic(n_users=100, n_items=30, interactions_per_user=8, seed=1)
    calls: list[object] = []
    m = FederatedDPALS(epsilon=5.0, delta=1e-3, factors=3, dropout=0.5, seed=0)
    m.release_gate = calls.append
    with pytest.raises(ProtocolAbort):
        m.fit(data)
    assert len(calls) == 1  # charged (write-ahead) before the first round, then aborted
    with pytest.raises(ConfigError):
        FederatedDPALS(epsilon=1.0, delta=1e-3, lhs="full").config()  # type: ignore[arg-type]


def test_released_model_scores_like_dpals(tmp_path: object) -> None:
    from pathlib import Path

    from privrec.models import load_model

    data = synthetic(n_users=200, n_items=40, interactions_per_user=8, seed=3)
    m = FederatedDPALS(epsilon=5.0, delta=1e-3, factors=4, seed=0).fit(data)
    again = load_model(m.save(Path(str(tmp_path)) / "fed.npz"))
    hist = data.matrix[[3, 4]]
    np.testing.assert_array_equal(
        again.recommend_history(hist, k=5)[0], m.recommend_history(hist, k=5)[0]
    )


def test_one_round_rule_is_central_dpals_and_costs_nothing() -> None:
    """Below noisy n·ε = 1000 the devices solve every step from the same count-started factors
    and the model keeps the mean of the steps' solves; rounds, noise and events are unchanged."""
    data = synthetic(n_users=200, n_items=40, interactions_per_user=8, seed=3)
    kw = {"epsilon": 2.0, "delta": 1e-4, "seed": 4}
    assert FederatedDPALS(**kw).fit(data).one_round_  # type: ignore[arg-type]  # n·ε ≈ 400
    one = FederatedDPALS(**kw, one_round=True).fit(data)  # type: ignore[arg-type]
    two = FederatedDPALS(**kw, one_round=False).fit(data)  # type: ignore[arg-type]
    assert one.one_round_ and not two.one_round_
    assert one.noise_scale_ == two.noise_scale_
    g1, g2 = one.privacy_guarantee, two.privacy_guarantee
    assert g1.epsilon == g2.epsilon
    assert [(e.label, e.event) for e in g1.spent_events] == [
        (e.label, e.event) for e in g2.spent_events
    ]
    assert [r["round"] for r in one.rounds_] == [r["round"] for r in two.rounds_]
    np.testing.assert_array_equal(one.noisy_counts_, two.noisy_counts_)
    assert not np.allclose(one.item_factors_, two.item_factors_)
    big = synthetic(n_users=600, n_items=40, interactions_per_user=8, seed=3)
    assert not FederatedDPALS(**kw).fit(big).one_round_  # type: ignore[arg-type]  # n·ε ≈ 1200


def test_head_follows_central_dpals_capacity_rule() -> None:
    """The server's head is central DPALS's: at most Σ ñ / k items (binding without a threshold)."""
    data = synthetic(n_users=300, n_items=200, interactions_per_user=5, seed=1)
    kw = {"epsilon": 50.0, "delta": 1e-4, "factors": 32, "head_min": 5, "head_snr": 0.0}
    m = FederatedDPALS(**kw, seed=0).fit(data)  # type: ignore[arg-type]
    lengths = np.diff(data.matrix.tocsr().indptr)
    # Σ ñ / k: each device counts ≤ count_sample of its items; the noise is small at this ε
    cap = np.minimum(lengths, m.count_sample_).sum() / 32
    held = np.count_nonzero(np.asarray((data.matrix > 0).sum(axis=0)).ravel())
    assert abs(len(m.head_items_) - cap) <= 3 and 2 * len(m.head_items_) < held
