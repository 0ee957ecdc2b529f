"""Private history-length histogram: sensitivity per unit, noise, quantiles, pinned ε of the split."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from privrec.errors import ConfigError
from privrec.models.dp_popularity import split_multipliers
from privrec.models.dp_rules import LengthProfile, resolve_bound, resolve_factors, user_blend
from privrec.privacy.accounting import compose, epsilon_of
from privrec.privacy.bounds import (
    LENGTH_EDGES,
    length_histogram,
    length_sensitivity,
    noisy_length_histogram,
    quantile_from_histogram,
)
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.randomness import seeded_generator
from privrec.privacy.units import PrivacyUnit

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_edges_are_public_and_geometric() -> None:
    assert LENGTH_EDGES[:6].tolist() == [1, 2, 3, 4, 8, 16]
    assert np.all(np.diff(LENGTH_EDGES) > 0)
    h = length_histogram(np.array([0, 1, 2, 3, 4, 7, 8, 100]))
    assert h.sum() == 7  # the empty user is in no bin
    assert h[:5].tolist() == [1, 1, 1, 2, 1]
    # bins stop at the catalogue size; longer histories (impossible there) fold into the last
    capped = length_histogram(np.array([1, 5, 9, 40]), max_length=10)
    assert len(capped) == 5 and capped.tolist() == [1, 0, 0, 1, 2]


@given(
    st.lists(st.integers(0, 300), min_size=1, max_size=40),
    st.integers(0, 39),
    st.integers(1, 400),
)
def test_user_sensitivity_is_one(lengths: list[int], who: int, n_items: int) -> None:
    """Removing any one user moves the histogram by at most 1 in L2 (USER unit)."""
    a = np.array(lengths)
    who = who % len(a)
    b = np.delete(a, who)
    d = length_histogram(a, n_items) - length_histogram(b, n_items)
    assert np.linalg.norm(d) <= length_sensitivity(PrivacyUnit.USER) + 1e-12


@given(
    st.lists(st.integers(0, 300), min_size=1, max_size=40),
    st.integers(0, 39),
    st.sampled_from([-1, 1]),
)
def test_interaction_sensitivity_is_sqrt2(lengths: list[int], who: int, sign: int) -> None:
    """Adding or removing one interaction moves the histogram by at most √2 (INTERACTION unit)."""
    a = np.array(lengths)
    who = who % len(a)
    if sign < 0 and a[who] == 0:
        return
    b = a.copy()
    b[who] += sign
    d = length_histogram(a) - length_histogram(b)
    assert np.linalg.norm(d) <= length_sensitivity(PrivacyUnit.INTERACTION) + 1e-12
    assert length_sensitivity(PrivacyUnit.INTERACTION) == pytest.approx(math.sqrt(2))


def test_noise_has_the_stated_scale() -> None:
    m = sp.csr_matrix(np.ones((50, 6), dtype=np.float32))
    draws = np.concatenate(
        [
            noisy_length_histogram(m, PrivacyUnit.USER, 3.0, seeded_generator(s, warn=False))
            - length_histogram(np.full(50, 6), 6)
            for s in range(300)
        ]
    )
    assert np.std(draws) == pytest.approx(3.0, rel=0.05)
    assert abs(np.mean(draws)) < 0.15


def test_quantiles_from_exact_and_noisy_histograms() -> None:
    rng = np.random.default_rng(0)
    lengths = np.maximum(1, np.rint(np.exp(rng.normal(np.log(20), 1.0, 5000)))).astype(int)
    h = length_histogram(lengths)
    for q in (0.25, 0.5, 0.75, 0.9):
        true = float(np.quantile(lengths, q))
        assert true / 2 <= quantile_from_histogram(h, q) <= true * 2  # within its bin
    noisy = h + rng.normal(0, 30.0, h.shape)
    est = quantile_from_histogram(noisy, 0.75, noise_std=30.0)
    assert np.quantile(lengths, 0.75) / 2 <= est <= np.quantile(lengths, 0.75) * 2
    assert quantile_from_histogram(np.full(5, -3.0), 0.5) == 1.0  # nothing readable
    with pytest.raises(ConfigError):
        quantile_from_histogram(h, 1.0)


def test_split_costs_what_one_gaussian_costs() -> None:
    """Pinned: (z/√f, z/√(1−f)) composed is exactly GaussianDpEvent(z)."""
    z, f = 3.0, 0.05
    a, b = split_multipliers(z, f)
    assert a == pytest.approx(z / math.sqrt(0.05)) and b == pytest.approx(z / math.sqrt(0.95))
    eps = epsilon_of(compose([gaussian_event(a), gaussian_event(b)]), 1e-5)
    assert eps == pytest.approx(dp_accounting.get_epsilon_gaussian(z, 1e-5), rel=1e-9)
    assert eps == pytest.approx(1.27109, abs=1e-4)  # pinned


def test_rules_read_only_the_profile() -> None:
    lengths = np.r_[np.full(300, 3), np.full(100, 40)]
    p = LengthProfile(length_histogram(lengths, 500), 0.0, 500)
    assert p.n_users == 400
    assert 2 <= resolve_bound(None, p, 0.5) <= 4
    assert 32 <= resolve_bound(None, p, 0.9) <= 64
    assert resolve_bound(17, None, 0.5) == 17
    assert resolve_factors(None, p, 1.0, 1000.0) == 8  # n·ε small: the floor
    big = LengthProfile(p.histogram * 100, 0.0, 500)
    assert resolve_factors(None, big, 1.0, 1000.0) == 32  # 40,000 / 1,000 → nearest power of 2
    assert resolve_factors(None, big, 5.0, 1000.0) == 64  # the cap
    assert resolve_factors(12, None, 1.0, 1000.0) == 12
    beta = user_blend(0.3, 8.0, np.array([0, 1, 8, 80]))
    assert beta.shape == (4, 1)
    np.testing.assert_allclose(beta.ravel(), [8.3, 8.3, 1.3, 0.4], rtol=1e-6)
