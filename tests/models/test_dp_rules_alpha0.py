"""DPALS's α0: a number, or the head-density rule (``alpha0="density"``) from released values."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models import load_model
from privrec.models.dp_als import DPALS
from privrec.models.dp_rules import ALPHA0_FIXED, LengthProfile, resolve_alpha0


def _profile(n_users: float) -> LengthProfile:
    return LengthProfile(histogram=np.array([n_users]), noise_std=1.0, max_length=10)


def test_the_rule_pinned() -> None:
    """2·min(1, √(d/0.04)) ≥ 0.25, d = Σ ñ_head / (n·|head|); a number passes through."""
    counts = np.full(100, 40.0)  # 100 head items seen by 40 of 1,000 users: d = 0.04
    assert resolve_alpha0("density", counts, _profile(1000)) == pytest.approx(2.0)
    assert resolve_alpha0("density", counts, _profile(4000)) == pytest.approx(1.0)  # d = 0.01
    assert resolve_alpha0("density", counts, _profile(10**6)) == 0.25  # the floor
    assert resolve_alpha0("density", counts * 10, _profile(1000)) == 2.0  # never above 2
    # negative noisy counts count as 0 (noise is not negative density)
    mixed = np.array([80.0, -80.0])
    assert resolve_alpha0("density", mixed, _profile(1000)) == pytest.approx(
        2.0 * math.sqrt((80.0 / 2000) / 0.04)
    )
    assert resolve_alpha0(0.7, counts, None) == 0.7
    # no private user count (a fixed bound B: no length histogram): the fixed default
    assert resolve_alpha0("density", counts, None) == ALPHA0_FIXED
    with pytest.raises(ConfigError, match="density"):
        resolve_alpha0("dense", counts, None)


def _fit(**kw: object) -> DPALS:
    data = synthetic(n_users=600, n_items=300, interactions_per_user=6.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPALS(epsilon=5.0, delta=1e-5, unit="user", seed=0, **kw).fit(data)  # type: ignore[arg-type]


def test_density_is_resolved_from_released_values_and_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved as alpha0_ from the released noisy counts of the head and the released length
    histogram's user count; the file keeps the resolved value for fold-in; a fixed α0 equal to
    it reproduces the model (the rule changes nothing else)."""
    import privrec.models.dp_als as dp_als

    seen: list[tuple[np.ndarray, LengthProfile | None]] = []

    def spy(alpha0: object, counts_head: np.ndarray, profile: LengthProfile | None) -> float:
        seen.append((counts_head.copy(), profile))
        return resolve_alpha0(alpha0, counts_head, profile)  # type: ignore[arg-type]

    monkeypatch.setattr(dp_als, "resolve_alpha0", spy)
    m = _fit(alpha0="density")
    ((counts_head, profile),) = seen
    head = np.asarray(m.head_items_)
    np.testing.assert_allclose(counts_head, m.noisy_counts_[head], rtol=1e-6)  # float32 kept
    assert profile is not None  # the data-adaptive bounds' noisy histogram
    d = float(np.maximum(counts_head, 0).sum()) / (profile.n_users * head.size)
    assert m.alpha0_ == pytest.approx(min(2.0, max(0.25, 2.0 * math.sqrt(d / 0.04))))
    assert m.alpha0_ < 2.0  # a sparse synthetic head
    same = _fit(alpha0=m.alpha0_)  # the same seed and α0: the same released factors
    np.testing.assert_allclose(same.item_factors_, m.item_factors_, rtol=1e-5, atol=1e-6)
    again = load_model(m.save(tmp_path / "m.npz"))
    assert again._fit_alpha0 == pytest.approx(m.alpha0_)
    hist = m.user_items_[:3]
    np.testing.assert_array_equal(
        again.recommend_history(hist, k=5)[0], m.recommend_history(hist, k=5)[0]
    )


def test_alpha0_is_validated() -> None:
    for bad in ("dense", -1.0, float("nan"), 1e308):
        with pytest.raises((ConfigError, ValueError)):
            _fit(alpha0=bad)
