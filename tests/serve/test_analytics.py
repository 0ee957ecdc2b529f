"""The DP queries' privacy: pinned calibration, sensitivities checked by removing one unit, noise."""

from __future__ import annotations

import math
import warnings

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp

from privrec.errors import ConfigError
from privrec.privacy.accounting import epsilon_of
from privrec.privacy.randomness import seeded_generator
from privrec.privacy.units import PrivacyUnit
from privrec.serve import analytics
from privrec.serve.analytics import (
    _exact_item_counts,
    _exact_pairs,
    _exact_segments,
    noise_multiplier,
    plan_query,
)

USER, INTER = PrivacyUnit.USER, PrivacyUnit.INTERACTION


@pytest.mark.parametrize(
    ("epsilon", "delta", "z"),
    [
        (1.0, 1e-6, 4.224683015083926),
        (0.5, 1e-6, 8.057626538342033),
        (0.1, 1e-5, 30.74956625558125),
    ],
)
def test_calibration_is_pinned_and_charged_epsilon_matches(
    epsilon: float, delta: float, z: float
) -> None:
    assert noise_multiplier(epsilon, delta) == pytest.approx(z, rel=1e-9)
    plan = plan_query("item_counts", epsilon=epsilon, delta=delta, unit=USER, m=10, bound=4)
    (spent,) = plan.events()
    assert spent.event == dp_accounting.GaussianDpEvent(plan.noise_multiplier)
    charged = epsilon_of(spent.event, delta)
    assert epsilon * (1 - 1e-5) <= charged <= epsilon  # never more than asked, and tight


@pytest.mark.parametrize(
    ("kind", "unit", "m", "bound", "sens"),
    [
        ("item_counts", USER, 10, 4, 2.0),
        ("item_counts", USER, 3, 32, math.sqrt(3)),
        ("item_counts", INTER, 10, 4, 1.0),
        ("top_k", USER, 500, 16, 4.0),
        ("cooccurrence", USER, 6, 4, math.sqrt(6)),
        ("cooccurrence", USER, 3, 32, math.sqrt(3)),
        ("cooccurrence", INTER, 6, 4, math.sqrt(5)),
        ("segment_counts", USER, 4, 32, 1.0),
        ("segment_counts", INTER, 4, 32, 1.0),
    ],
)
def test_stated_sensitivities(
    kind: str, unit: PrivacyUnit, m: int, bound: int, sens: float
) -> None:
    plan = plan_query(kind, epsilon=1.0, delta=1e-6, unit=unit, m=m, bound=bound)
    assert plan.sensitivity == pytest.approx(sens)
    assert plan.sigma == pytest.approx(sens * 4.224683015083926, rel=1e-9)


def test_invalid_plans_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 items"):
        plan_query("cooccurrence", epsilon=1.0, delta=1e-6, unit=USER, m=1, bound=4)
    with pytest.raises(ConfigError, match="unknown query"):
        plan_query("median", epsilon=1.0, delta=1e-6, unit=USER, m=3, bound=4)
    with pytest.raises(ConfigError):
        plan_query("top_k", epsilon=0.0, delta=1e-6, unit=USER, m=3, bound=4)


def _data(seed: int, n_users: int = 40, n_items: int = 12, density: float = 0.45) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    return sp.csr_matrix(dense)


def _without_user(m: sp.csr_matrix, u: int) -> sp.csr_matrix:
    """Remove user ``u`` (an empty row contributes nothing; the other rows keep their index)."""
    out = m.tolil(copy=True)
    out.rows[u] = []
    out.data[u] = []
    return sp.csr_matrix(out, dtype=np.float32)


def _without_interaction(m: sp.csr_matrix, u: int, j: int) -> sp.csr_matrix:
    out = m.tolil(copy=True)
    out[u, j] = 0
    out = sp.csr_matrix(out, dtype=np.float32)
    out.eliminate_zeros()
    return out


def _rng(seed: int) -> np.random.Generator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return seeded_generator(seed, warn=False)


@pytest.mark.parametrize("seed", range(4))
def test_removing_one_user_moves_each_answer_by_at_most_its_sensitivity(seed: int) -> None:
    m = _data(seed)
    cols = np.array([0, 2, 3, 5, 7, 8, 11])
    codes = np.random.default_rng(seed).integers(-1, 3, size=m.shape[0])
    worst = {"item_counts": 0.0, "cooccurrence": 0.0, "segment_counts": 0.0}
    for kind in worst:
        plan = plan_query(
            kind,
            epsilon=1.0,
            delta=1e-6,
            unit=USER,
            m=len(cols) if kind != "segment_counts" else 3,
            bound=3,
        )
        for u in range(m.shape[0]):
            d = _without_user(m, u)
            if kind == "item_counts":
                a = _exact_item_counts(m, cols, plan, _rng(seed))
                b = _exact_item_counts(d, cols, plan, _rng(seed))
            elif kind == "cooccurrence":
                a = _exact_pairs(m, cols, plan, _rng(seed))
                b = _exact_pairs(d, cols, plan, _rng(seed))
            else:
                a = _exact_segments(m, codes, 3, cols)
                b = _exact_segments(d, codes, 3, cols)
            gap = float(np.linalg.norm(a - b))
            assert gap <= plan.sensitivity + 1e-9, (kind, u, gap, plan.sensitivity)
            worst[kind] = max(worst[kind], gap / plan.sensitivity)
    assert all(w == pytest.approx(1.0) for w in worst.values())  # the bounds are attained: tight


@pytest.mark.parametrize("seed", range(3))
def test_removing_one_interaction_under_the_interaction_unit(seed: int) -> None:
    m = _data(seed, n_users=15)
    cols = np.array([1, 2, 4, 6, 9])
    codes = np.zeros(m.shape[0], dtype=np.int64)
    plans = {
        k: plan_query(
            k,
            epsilon=1.0,
            delta=1e-6,
            unit=INTER,
            m=len(cols) if k != "segment_counts" else 1,
            bound=3,
        )
        for k in ("item_counts", "cooccurrence", "segment_counts")
    }
    coo = m.tocoo()
    for u, j in zip(coo.row.tolist(), coo.col.tolist(), strict=True):
        d = _without_interaction(m, u, j)
        for kind, plan in plans.items():
            if kind == "item_counts":
                gap = np.linalg.norm(
                    _exact_item_counts(m, cols, plan, _rng(0))
                    - _exact_item_counts(d, cols, plan, _rng(0))
                )
            elif kind == "cooccurrence":
                gap = np.linalg.norm(
                    _exact_pairs(m, cols, plan, _rng(0)) - _exact_pairs(d, cols, plan, _rng(0))
                )
            else:
                gap = np.linalg.norm(
                    _exact_segments(m, codes, 1, cols) - _exact_segments(d, codes, 1, cols)
                )
            assert gap <= plan.sensitivity + 1e-9


def test_noise_has_the_stated_standard_deviation() -> None:
    """2,000 counts of an empty matrix are pure noise: their spread is σ = z·Δ (chi-square bound)."""
    m = sp.csr_matrix((5, 2000), dtype=np.float32)
    plan = plan_query("item_counts", epsilon=1.0, delta=1e-6, unit=USER, m=2000, bound=4)
    noisy = analytics.item_counts(m, np.arange(2000), plan, _rng(1))
    sd = float(np.std(noisy))
    # the sample variance of n normals: relative s.e. sqrt(2/n) ≈ 3.2%; allow 5 standard errors
    assert abs(sd / plan.sigma - 1) < 5 * math.sqrt(2 / 2000) / 2 + 0.01
    assert abs(float(np.mean(noisy))) < 5 * plan.sigma / math.sqrt(2000)


def test_top_k_is_post_processing_of_the_noisy_counts() -> None:
    m = _data(0, n_users=200, n_items=30, density=0.2)
    plan = plan_query("top_k", epsilon=1.0, delta=1e-6, unit=USER, m=30, bound=8)
    top, counts = analytics.top_k_popular(m, 5, plan, _rng(3))
    assert len(top) == 5 and np.all(np.diff(counts) <= 0)
    full = analytics.item_counts(m, np.arange(30), plan, _rng(3))
    assert np.array_equal(top, np.argsort(-full, kind="stable")[:5])
