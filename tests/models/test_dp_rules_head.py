"""DPALS's head rules: the capacity rule (default) and the √σ threshold (``rule="sqrt"``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import privrec.models.dp_rules as dp_rules
from privrec.data import synthetic
from privrec.models.dp_als import DPALS
from privrec.models.dp_rules import (
    HEAD_SQRT_SCALE,
    dpals_head,
    head_capacity,
    head_floor,
    head_threshold,
    select_head,
    sqrt_head_threshold,
)


def _counts(seed: int = 4, n: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).gamma(0.4, 30.0, size=n)


def test_sqrt_threshold_is_the_geometric_mean_of_noise_and_counts_per_factor() -> None:
    counts = np.full(100, 8.0)  # Σ ñ = 800
    t = sqrt_head_threshold(counts, 2.0, 25, 16)
    assert t == pytest.approx(HEAD_SQRT_SCALE * math.sqrt(2.0 * 800 / 16) * 0.5)
    # ∝ √σ (four times the noise: twice the threshold), ∝ √(Σ ñ / k)
    assert sqrt_head_threshold(counts, 8.0, 25, 16) == pytest.approx(2 * t)
    assert sqrt_head_threshold(counts, 2.0, 25, 64) == pytest.approx(t / 2)
    assert sqrt_head_threshold(counts, 2.0, 100, 16) == pytest.approx(2 * t)  # √(count_sample)
    assert sqrt_head_threshold(-counts, 2.0, 25, 16) == 0.0  # no positive mass
    assert sqrt_head_threshold(counts, 0.0, 25, 16) == 0.0  # no noise


def test_default_head_rule_is_the_capacity_rule_unchanged() -> None:
    """``HEAD_RULE = "capacity"``: exactly the previous ``dpals_head`` (threshold, floor, Σ ñ / k),
    with or without the noise arguments the √σ rule needs."""
    counts = _counts()
    assert dp_rules.HEAD_RULE == "capacity"
    for k, thr in ((2, 5.0), (64, 5.0), (64, 40.0), (8, 1e9)):
        old = select_head(counts, None, thr, head_floor(counts, 30), head_capacity(counts, k))
        assert np.array_equal(dpals_head(counts, None, thr, 30, k), old)
        assert np.array_equal(
            dpals_head(counts, None, thr, 30, k, rhs_std=3.0, count_sample=9), old
        )
        assert np.array_equal(dpals_head(counts, None, thr, 30, k, rule="capacity"), old)
    frac = dpals_head(counts, 0.1, 5.0, 30, 64, rule="sqrt", rhs_std=1.0, count_sample=9)
    assert np.array_equal(frac, dpals_head(counts, 0.1, 5.0, 30, 64))  # a fixed fraction wins


def test_sqrt_rule_raises_the_threshold_only_where_noise_is_small() -> None:
    counts = _counts()
    k, cs, snr = 64, 16, 7.0

    def heads(rhs_std: float) -> tuple[np.ndarray, np.ndarray, float, float]:
        thr = head_threshold(snr, rhs_std, cs)
        sq = dpals_head(counts, None, thr, 30, k, rule="sqrt", rhs_std=rhs_std, count_sample=cs)
        noise_only = select_head(counts, None, thr, head_floor(counts, 30))
        return sq, noise_only, thr, sqrt_head_threshold(counts, rhs_std, cs, k)

    # large noise: the noise threshold is the larger one -> the noise rule (no capacity) exactly
    sq, noise_only, thr, root = heads(20.0)
    assert root < thr and np.array_equal(sq, noise_only)
    # small noise: the √σ threshold is larger -> fewer items, all above it, none capped
    sq, noise_only, thr, root = heads(0.2)
    assert root > thr and len(sq) < len(noise_only)
    assert np.array_equal(sq, select_head(counts, None, root, head_floor(counts, 30)))
    assert len(sq) > head_capacity(counts, 4096)  # not the capacity's size
    # the floor still wins over any threshold
    huge = dpals_head(counts, None, 1e9, 30, k, rule="sqrt", rhs_std=1e6, count_sample=cs)
    assert len(huge) == head_floor(counts, 30)


def test_sqrt_rule_needs_the_noise_and_a_known_name() -> None:
    counts = _counts()
    with pytest.raises(ValueError, match="rhs_std"):
        dpals_head(counts, None, 5.0, 30, 64, rule="sqrt")
    with pytest.raises(ValueError, match="unknown head rule"):
        dpals_head(counts, None, 5.0, 30, 64, rule="cap")  # type: ignore[arg-type]


def test_dpals_sqrt_rule_is_post_processing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Central DPALS with the √σ rule: same σ, events and noisy counts; only the head moves,
    and the √σ threshold sees the noise std and count sample the noise threshold saw."""
    import privrec.models.dp_als as dp_als_module

    data = synthetic(n_users=400, n_items=300, interactions_per_user=8, seed=3)
    kw = {"epsilon": 30.0, "delta": 1e-5, "unit": "user", "head_min": 10, "seed": 2}
    cap = DPALS(**kw, factors=32).fit(data)
    seen: dict[str, tuple[float, int]] = {}

    def noise_thr(snr: float, rhs_std: float, count_sample: int) -> float:
        seen["noise"] = (rhs_std, count_sample)
        return head_threshold(snr, rhs_std, count_sample)

    def root_thr(counts: np.ndarray, rhs_std: float, count_sample: int, k: int) -> float:
        seen["sqrt"] = (rhs_std, count_sample)
        return sqrt_head_threshold(counts, rhs_std, count_sample, k)

    monkeypatch.setattr(dp_als_module, "head_threshold", noise_thr)
    monkeypatch.setattr(dp_rules, "sqrt_head_threshold", root_thr)
    monkeypatch.setattr(dp_rules, "HEAD_RULE", "sqrt")
    sq = DPALS(**kw, factors=32).fit(data)
    assert seen["sqrt"] == seen["noise"]
    assert sq.noise_scale_ == cap.noise_scale_
    assert [e.event for e in sq.privacy_guarantee.spent_events] == [
        e.event for e in cap.privacy_guarantee.spent_events
    ]
    np.testing.assert_array_equal(sq.noisy_counts_, cap.noisy_counts_)
    counts, (rhs_std, cs) = sq.noisy_counts_, seen["noise"]
    thr = max(head_threshold(7.0, rhs_std, cs), sqrt_head_threshold(counts, rhs_std, cs, 32))
    np.testing.assert_array_equal(
        sq.head_items_, select_head(counts, None, thr, head_floor(counts, 10))
    )
    assert len(sq.head_items_) > len(cap.head_items_) == head_capacity(counts, 32)  # cap binds


def test_federated_and_cross_silo_dpals_pass_the_noise_to_the_sqrt_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every DPALS variant hands ``dpals_head`` the noise std and count sample (the √σ rule
    raises without them), so switching :data:`HEAD_RULE` switches them all."""
    from privrec.federated import FederatedDPALS
    from privrec.secure.silo_config import SiloConfig, silo_head

    monkeypatch.setattr(dp_rules, "HEAD_RULE", "sqrt")
    data = synthetic(n_users=300, n_items=200, interactions_per_user=5, seed=1)
    fed = FederatedDPALS(epsilon=50.0, delta=1e-4, factors=32, head_min=5, seed=0)
    fed.fit(data)
    assert 5 <= len(fed.head_items_) <= 200
    c = SiloConfig(epsilon=2.0, delta=1e-6, n_items=500, max_per_user=30, head_min=5)
    counts, sigma = _counts(4, 500), 0.05
    rhs_std = math.sqrt(2.0) * c.rhs_noise_ratio * sigma
    thr = max(
        head_threshold(c.head_snr, rhs_std, c.sampled),
        sqrt_head_threshold(counts, rhs_std, c.sampled, c.factors),
    )
    expected = select_head(counts, None, thr, head_floor(counts, 5))
    np.testing.assert_array_equal(silo_head(c, sigma, counts), expected)
