"""A DPALS guarantee lists what its ``lhs`` variant released, and nothing it did not."""

from __future__ import annotations

import pytest

from privrec.data.synthetic import synthetic
from privrec.models import DPALS


@pytest.mark.parametrize(
    ("lhs", "said", "not_said"),
    [
        ("none", "no per-item left-hand side", "left-hand sides (k×k)"),
        ("diagonal", "diagonals of the per-item left-hand sides", "left-hand sides (k×k)"),
        ("full", "per-item left-hand sides (k×k)", "no per-item left-hand side"),
    ],
)
def test_released_statistics_follow_lhs(lhs: str, said: str, not_said: str) -> None:
    data = synthetic(n_users=300, n_items=50, interactions_per_user=8, seed=2)
    m = DPALS(epsilon=2.0, delta=1e-5, unit="user", lhs=lhs, factors=4, iterations=1, seed=0)  # type: ignore[arg-type]
    m.fit(data)
    released = " | ".join(m.privacy_guarantee.released)
    assert said in released and not_said not in released
    assert said in m.privacy_guarantee.explain()
