"""The Gaussian privacy filter: pinned ε, refusals, and the fully adaptive stopping rule."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from privrec.errors import ConfigError
from privrec.privacy.accounting import INTEGER_RDP_ORDERS, AccountantKind, epsilon_of
from privrec.privacy.budget import Budget
from privrec.privacy.filter import GaussianFilter

G = dp_accounting.GaussianDpEvent


def test_pinned_epsilon_and_refusal() -> None:
    f = GaussianFilter(Budget(epsilon=2.0, delta=1e-5))
    assert f.epsilon() == 0.0
    assert f.admit(G(5.0)) and f.admit(G(5.0))
    assert f.epsilon() == pytest.approx(1.158150595, rel=1e-6)  # RDP, integer orders
    assert f.epsilon_with(G(1.0)) == pytest.approx(4.952728337, rel=1e-6)
    assert not f.admit(G(1.0))
    assert (f.count, f.rate) == (2, pytest.approx(2 / 25))  # a refused release records nothing


def test_the_epsilon_is_dp_accountings_rdp_composition() -> None:
    zs = [3.0, 7.5, 4.2, 12.0]
    f = GaussianFilter(Budget(epsilon=10.0, delta=1e-6))
    for z in zs:
        assert f.admit(G(z))
    acc = dp_accounting.rdp.RdpAccountant(orders=list(INTEGER_RDP_ORDERS))
    acc.compose(dp_accounting.ComposedDpEvent([G(z) for z in zs]))
    assert f.epsilon() == pytest.approx(acc.get_epsilon(1e-6), rel=1e-9)


@pytest.mark.parametrize(
    "event",
    [dp_accounting.NonPrivateDpEvent(), G(0.0), G(math.inf), G(math.nan)],
    ids=["non-private", "zero", "inf", "nan"],
)
def test_releases_without_noise_never_fit(event: dp_accounting.DpEvent) -> None:
    f = GaussianFilter(Budget(epsilon=50.0, delta=1e-5))
    assert not f.admit(event) and (f.count, f.rate) == (0, 0.0)
    assert f.epsilon_with(event) == math.inf


def test_only_gaussian_releases_are_admissible() -> None:
    f = GaussianFilter(Budget(epsilon=5.0, delta=1e-5))
    for event in (
        dp_accounting.LaplaceDpEvent(1.0),
        dp_accounting.PoissonSampledDpEvent(0.1, G(1.0)),  # sampling credit: not a device's
        dp_accounting.ComposedDpEvent([G(2.0)]),
    ):
        with pytest.raises(ConfigError, match="GaussianDpEvent"):
            f.admit(event)


def test_a_stored_filter_is_checked() -> None:
    budget = Budget(epsilon=5.0, delta=1e-5)
    for rate, count in ((-1.0, 1), (math.nan, 1), (math.inf, 1), (0.5, 0), (0.0, 2), (0.1, -1)):
        with pytest.raises(ConfigError, match=r"rate|count"):
            GaussianFilter(budget, rate, count)
    with pytest.raises(ConfigError, match="above the filter's cap"):
        GaussianFilter(Budget(epsilon=1.0, delta=1e-5), 1.0, 1)
    restored = GaussianFilter(budget, 2 / 25, 2)
    assert restored.epsilon() == pytest.approx(1.158150595, rel=1e-6)


def test_an_adaptive_adversary_never_gets_past_the_cap() -> None:
    """Multipliers chosen from the filter's own answers (the fully adaptive setting): the
    admitted releases always compose to at most the cap, and the filter spends close to it."""
    rng = np.random.default_rng(0)
    budget = Budget(epsilon=3.0, delta=1e-5)
    for _ in range(20):
        f = GaussianFilter(budget)
        z = float(rng.uniform(2.0, 20.0))
        admitted = []
        for _ in range(200):
            if f.admit(G(z)):
                admitted.append(z)
                z *= 0.7  # push harder after every admission
            else:
                z *= 1.3
        assert f.epsilon() <= budget.epsilon and f.count == len(admitted)
        assert epsilon_of([G(z) for z in admitted], 1e-5, AccountantKind.RDP) <= 3.0
        assert f.epsilon() > 2.9  # small releases keep fitting until little is left
