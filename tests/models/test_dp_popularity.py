"""DPPopularity: contract, guarantee, noise calibration, saved without user data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privrec.data import Interactions
from privrec.errors import ConfigError, MissingUserDataError, PrivacyWarning
from privrec.models import load_model
from privrec.models.dp_popularity import DPPopularity
from privrec.privacy.accounting import epsilon_of
from privrec.privacy.mechanisms import gaussian_event

from .contract import RecommenderContract, checkerboard

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


class TestDPPopularityContract(RecommenderContract):
    personalised = False

    def make_model(self) -> DPPopularity:
        return DPPopularity(epsilon=5.0, delta=1e-3, unit="user", seed=0)


def test_requires_privacy_arguments() -> None:
    with pytest.raises(TypeError):
        DPPopularity()  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="unit"):
        DPPopularity(epsilon=1.0, delta=1e-6, unit="household").config()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epsilon"):
        DPPopularity(epsilon=0.0, delta=1e-6, unit="user").config()


def test_guarantee_meets_budget_and_matches_events() -> None:
    data, _ = checkerboard()
    m = DPPopularity(epsilon=1.0, delta=1e-6, unit="user", max_per_user=4, seed=1).fit(data)
    g = m.privacy_guarantee
    assert 0.99 <= g.epsilon <= 1.0
    assert g.epsilon == pytest.approx(
        epsilon_of(gaussian_event(m.noise_multiplier_), 1e-6), rel=1e-12
    )
    assert g.unit.value == "user" and g.seeded_noise


def test_noise_scale_matches_sensitivity() -> None:
    # many users with identical histories: noisy counts spread as N(0, (z·√B)²)
    n = 4000
    data = Interactions.from_arrays(np.repeat(np.arange(n), 3), np.tile([0, 1, 2], n))
    draws = []
    for seed in range(40):
        m = DPPopularity(epsilon=1.0, delta=1e-6, unit="user", max_per_user=3, seed=seed).fit(data)
        draws.append(m.item_popularity_ - n)
    sd = np.std(np.concatenate(draws))
    assert sd == pytest.approx(m.noise_multiplier_ * np.sqrt(3), rel=0.15)


def test_saved_file_holds_no_user_data(tmp_path: Path) -> None:
    data, _ = checkerboard()
    m = DPPopularity(epsilon=1.0, delta=1e-3, unit="user", seed=2).fit(data)
    again = load_model(m.save(tmp_path / "released.npz"))
    assert again.user_items_.nnz == 0
    with pytest.raises(MissingUserDataError, match="recommend_history"):
        again.recommend(0, k=3)
    items, _ = again.recommend_history(data.matrix[[3]], k=3)
    assert items.shape == (1, 3)


def test_large_delta_warns() -> None:
    data, _ = checkerboard()
    with pytest.warns(PrivacyWarning, match="delta"):
        DPPopularity(epsilon=1.0, delta=0.5, unit="user").fit(data)


def test_secure_noise_by_default_is_not_reproducible() -> None:
    data, _ = checkerboard()
    a = DPPopularity(epsilon=1.0, delta=1e-3, unit="user").fit(data).item_popularity_
    b = DPPopularity(epsilon=1.0, delta=1e-3, unit="user").fit(data).item_popularity_
    assert not np.array_equal(a, b)
