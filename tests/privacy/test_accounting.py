"""Accounting: pinned ε values, independent recomputation with dp-accounting, calibration."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from privrec.errors import ConfigError, PrivacyWarning
from privrec.privacy.accounting import INTEGER_RDP_ORDERS, calibrate, compose, epsilon_of, simplify
from privrec.privacy.budget import Budget
from privrec.privacy.units import PrivacyUnit


def test_pinned_single_gaussian() -> None:
    # ε of the Gaussian mechanism with z = 1 at δ = 1e-5 (Balle & Wang's exact analysis)
    assert epsilon_of(dp_accounting.GaussianDpEvent(1.0), 1e-5) == pytest.approx(4.377178, abs=1e-5)
    # RDP at privrec's integer orders (4.7285 at dp-accounting's denser default orders)
    assert epsilon_of(dp_accounting.GaussianDpEvent(1.0), 1e-5, "rdp") == pytest.approx(
        4.7527, abs=1e-3
    )


def test_matches_independent_pld_grid() -> None:
    events = [dp_accounting.GaussianDpEvent(2.0), dp_accounting.GaussianDpEvent(3.0)] * 3
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    for e in events:
        acc.compose(e)
    grid = acc.get_epsilon(1e-6)
    ours = epsilon_of(events, 1e-6)
    # the grid is a pessimistic discretisation of the same quantity
    assert ours <= grid + 1e-9
    assert ours == pytest.approx(grid, rel=1e-3)


def test_matches_independent_rdp() -> None:
    ev = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)), 50
    )
    acc = rdp.RdpAccountant(orders=list(INTEGER_RDP_ORDERS))  # privrec's orders
    acc.compose(ev)
    assert epsilon_of(ev, 1e-5, "rdp") == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    dense = rdp.RdpAccountant()  # dp-accounting's defaults: a valid bound too, a little apart
    dense.compose(ev)
    assert epsilon_of(ev, 1e-5, "rdp") == pytest.approx(dense.get_epsilon(1e-5), rel=0.05)


def test_simplify_gaussian_composition_is_exact() -> None:
    ev = compose([dp_accounting.GaussianDpEvent(1.0), dp_accounting.GaussianDpEvent(1.0)])
    s = simplify(ev)
    assert isinstance(s, dp_accounting.GaussianDpEvent)
    assert s.noise_multiplier == pytest.approx(1 / math.sqrt(2))
    self_c = simplify(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(3.0), 9))
    assert self_c.noise_multiplier == pytest.approx(1.0)
    sampled = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0))
    assert simplify(sampled) is sampled


@pytest.mark.parametrize("target", [0.5, 1.0, 4.0, 10.0])
def test_calibrate_meets_and_nearly_uses_budget(target: float) -> None:
    budget = Budget(target, 1e-5)

    def factory(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 6)

    z = calibrate(budget, factory)
    eps = epsilon_of(factory(z), 1e-5)
    assert eps <= target
    assert eps >= 0.99 * target


def test_calibrate_rdp_sampled() -> None:
    budget = Budget(2.0, 1e-5)

    def factory(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(z)), 20
        )

    z = calibrate(budget, factory, kind="rdp")
    eps = epsilon_of(factory(z), 1e-5, "rdp")
    assert 0.99 * 2.0 <= eps <= 2.0


def test_calibrate_impossible_budget() -> None:
    with pytest.raises(ConfigError, match="no noise multiplier"):
        calibrate(
            Budget(1e-9, 1e-12), lambda z: dp_accounting.GaussianDpEvent(z), bracket=(0.05, 10.0)
        )


def test_unknown_accountant() -> None:
    with pytest.raises(ConfigError, match="accountant"):
        epsilon_of(dp_accounting.GaussianDpEvent(1.0), 1e-5, "moments")


@pytest.mark.parametrize(
    ("eps", "delta"), [(0, 1e-5), (-1, 1e-5), (math.inf, 1e-5), (1, 0), (1, 1), (1, -1)]
)
def test_budget_validation(eps: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        Budget(eps, delta)


def test_budget_warns_on_large_delta() -> None:
    with pytest.warns(PrivacyWarning, match="delta"):
        Budget(1.0, 1e-3).check_delta(10_000)


def test_privacy_unit_parse() -> None:
    assert PrivacyUnit.parse("USER") is PrivacyUnit.USER
    assert "one user" in PrivacyUnit.USER.neighbouring
    with pytest.raises(ConfigError, match="privacy unit"):
        PrivacyUnit.parse("household")
