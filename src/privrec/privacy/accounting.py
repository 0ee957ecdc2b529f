"""Privacy accounting through Google's ``dp-accounting``: never hand-summed ε.

Mechanisms describe what they did as immutable ``dp_accounting.DpEvent``
records (Gaussian with a noise multiplier, Laplace, Poisson-sampled,
self-composed, composed). An accountant — PLD by default because it is tight,
RDP on request because it is the classic reference — turns the composition of
those events into ε at a given δ. Calibration runs the same accountant
backwards to find the smallest noise that meets a budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum

import dp_accounting
import numpy as np
import scipy.optimize
from dp_accounting import pld, rdp

from privrec.errors import ConfigError
from privrec.privacy.budget import Budget
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "INTEGER_RDP_ORDERS",
    "AccountantKind",
    "calibrate",
    "compose",
    "epsilon_of",
    "gaussian_rate",
    "make_accountant",
    "simplify",
]

#: The RDP orders of every RDP accountant in privrec: integers only, because the distributed
#: discrete-Gaussian / Skellam bounds are proven at integer orders, and dp-accounting's
#: fractional-order series for a Poisson-subsampled event is slow. Any set of orders at which
#: the RDP curve holds gives a valid (ε, δ) (ε is a minimum over them); one set everywhere means
#: a model, its re-derivation (`privacy verify`, `check`) and the ledger state the same ε. Until
#: 2026-12-07 central RDP models used dp-accounting's default (fractional) orders, so their ε
#: and a ledger's could differ by up to a few percent.
INTEGER_RDP_ORDERS: tuple[float, ...] = (
    *(float(a) for a in range(2, 65)),
    *(72.0, 80.0, 96.0, 112.0, 128.0, 160.0, 192.0, 256.0),
)

# Noise multipliers are searched in this range; below it ε explodes, above it nothing is learnt.
_BRACKET = (0.05, 1e5)


class AccountantKind(StrEnum):
    PLD = "pld"
    RDP = "rdp"


def _kind(kind: AccountantKind | str) -> AccountantKind:
    try:
        return AccountantKind(kind)
    except ValueError:
        raise ConfigError(f"unknown accountant {kind!r}; choose 'pld' or 'rdp'") from None


def make_accountant(
    kind: AccountantKind | str = AccountantKind.PLD, unit: PrivacyUnit = PrivacyUnit.USER
) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant for the unit's neighbouring relation.

    PLD uses a value discretisation of 1e-4 (pessimistic rounding, so the
    reported ε is an upper bound); RDP uses :data:`INTEGER_RDP_ORDERS`.
    """
    kind = _kind(kind)
    if kind is AccountantKind.PLD:
        return pld.PLDAccountant(
            neighboring_relation=unit.relation, value_discretization_interval=1e-4
        )
    return rdp.RdpAccountant(orders=list(INTEGER_RDP_ORDERS), neighboring_relation=unit.relation)


def compose(events: Sequence[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
    """One event for a sequence of mechanisms run one after another."""
    events = list(events)
    if len(events) == 1:
        return events[0]
    return dp_accounting.ComposedDpEvent(events)


def gaussian_rate(event: dp_accounting.DpEvent) -> float | None:
    """Σ 1/z² over an event made only of (unsampled) Gaussian releases, else ``None``.

    The composition's "rate": m Gaussian releases with multipliers z_i are exactly one Gaussian
    release with multiplier (Σ z_i⁻²)^(−1/2) (see :func:`simplify`). The ledger uses it to bound
    how many releases a request may hold; anything sampled or non-Gaussian gives ``None``.
    """
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return float("inf") if event.noise_multiplier == 0 else 1.0 / event.noise_multiplier**2
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return 0.0
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        inner = gaussian_rate(event.event)
        return None if inner is None else inner * event.count
    if isinstance(event, dp_accounting.ComposedDpEvent):
        total = 0.0
        for e in event.events:
            r = gaussian_rate(e)
            if r is None:
                return None
            total += r
        return total
    return None


def simplify(event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """Collapse a composition of (unsampled) Gaussian releases into one Gaussian event.

    Exact, not an approximation: releasing ``f_i(D) + N(0, z_i² Δ_i²)`` for
    i = 1..m is, after rescaling each output by ``1/(z_i Δ_i)``, one Gaussian
    mechanism on the stacked vector whose L2 sensitivity is
    ``sqrt(Σ 1/z_i²)`` with unit noise, i.e. multiplier ``(Σ z_i⁻²)^{-1/2}``.
    The accountant still computes ε from that event; this only spares the PLD
    accountant from convolving many identical distributions (and makes the
    result tighter than the discretised convolution).
    """
    rate = gaussian_rate(event)
    if rate is not None and (math.isnan(rate) or rate < 0):
        # a NaN multiplier would become GaussianDpEvent(nan), whose closed-form ε is 0
        raise ConfigError(
            f"a Gaussian release has a non-finite or negative rate Σ 1/z² = {rate!r}: "
            "its noise multiplier is not a positive number"
        )
    if rate is None or rate == 0.0:
        return event
    if rate == float("inf"):
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(rate**-0.5)


def epsilon_of(
    events: dp_accounting.DpEvent | Sequence[dp_accounting.DpEvent],
    delta: float,
    kind: AccountantKind | str = AccountantKind.PLD,
    unit: PrivacyUnit = PrivacyUnit.USER,
) -> float:
    """ε at ``delta`` of the composition of ``events``.

    >>> import dp_accounting
    >>> round(epsilon_of(dp_accounting.GaussianDpEvent(1.0), 1e-5), 2)
    4.38
    """
    kind = _kind(kind)
    event = events if isinstance(events, dp_accounting.DpEvent) else compose(events)
    event = simplify(event)
    if kind is AccountantKind.PLD and isinstance(event, dp_accounting.GaussianDpEvent):
        # The PLD of one Gaussian mechanism is known in closed form (Balle & Wang 2018);
        # dp-accounting evaluates it exactly instead of on a discretised grid.
        eps = float(dp_accounting.get_epsilon_gaussian(event.noise_multiplier, delta))
    else:
        acc = make_accountant(kind, unit)
        acc.compose(event)
        eps = float(acc.get_epsilon(delta))
    if math.isnan(eps):  # never let a NaN read as "no privacy spent" (NaN ≤ cap is False, 0 is not)
        raise ConfigError(
            f"the accountant returned ε = nan at δ = {delta!r}: an event is malformed"
        )
    return eps


def calibrate(
    budget: Budget,
    event_factory: Callable[[float], dp_accounting.DpEvent],
    kind: AccountantKind | str = AccountantKind.PLD,
    unit: PrivacyUnit = PrivacyUnit.USER,
    bracket: tuple[float, float] = _BRACKET,
) -> float:
    """Smallest noise multiplier σ whose event meets ``budget``.

    ``event_factory(σ)`` builds the whole training's event for multiplier σ
    (e.g. every step's Gaussian events composed). dp-accounting's Brent search
    returns a value within its tolerance of the optimum on either side, so the
    result is nudged up until the accountant confirms ``ε(σ) ≤ budget.epsilon``.

    Raises :class:`ConfigError` when even the largest multiplier in ``bracket``
    cannot meet the budget.
    """
    lo, hi = bracket

    def eps(z: float) -> float:
        return epsilon_of(event_factory(z), budget.delta, kind, unit)

    # Bracket by doubling from 1: tiny multipliers make PLD grids enormous, so never probe them blindly.
    upper = 1.0
    # (a huge multiplier makes dp-accounting's closed forms divide by zero on the way to a
    # refusal: the typed error below says it, numpy's warning would only confuse)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        while eps(upper) > budget.epsilon:
            upper *= 2.0
            if upper > hi:
                raise ConfigError(
                    f"no noise multiplier up to {hi:g} reaches epsilon={budget.epsilon:g} "
                    f"at delta={budget.delta:g}"
                )
    lower = upper / 2.0
    while eps(lower) <= budget.epsilon:
        if lower / 2.0 < lo:
            return lower
        upper, lower = lower, lower / 2.0

    if isinstance(simplify(event_factory(upper)), dp_accounting.GaussianDpEvent) and (
        AccountantKind(kind) is AccountantKind.PLD
    ):
        # Pure Gaussian: ε(σ) is dp-accounting's closed form, so a plain root search is exact and fast.
        sigma = float(
            scipy.optimize.brentq(
                lambda z: eps(z) - budget.epsilon, lower, upper, xtol=lower * 1e-7
            )
        )
    else:

        def fresh() -> dp_accounting.PrivacyAccountant:
            return make_accountant(kind, unit)

        sigma = float(
            dp_accounting.calibrate_dp_mechanism(
                fresh,
                lambda z: simplify(event_factory(z)),
                budget.epsilon,
                budget.delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(lower, upper),
                tol=lower * 1e-6,
            )
        )
    step = max(sigma * 1e-6, 1e-9)
    while eps(sigma) > budget.epsilon:
        sigma += step  # at most a few nudges: Brent's tolerance is tiny
        step *= 2
    return sigma
