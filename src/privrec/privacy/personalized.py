"""Personalised budgets: protection tiers by per-user contribution scaling.

Users choose a protection tier — a smaller ε_u for more protection — from a public list
(e.g. ε ∈ {0.5, 1, 3}); the model is calibrated to the loosest tier ε, and every statistic a
user touches counts that user's contribution with a weight ``w_u ≤ 1``.

Mechanism and guarantee
-----------------------
Each release i is a Gaussian mechanism ``f_i(D) + N(0, (z_i Δ_i)²)`` whose sensitivity Δ_i
holds for a full-weight user. A user whose contribution to every ``f_i`` is scaled by w
moves ``f_i`` by at most ``w Δ_i`` when added or removed (neighbouring relation: add/remove
that one user, or one of their interactions under the interaction unit). With the noise
unchanged, the privacy loss of that user is exactly that of the same mechanism with
multipliers ``z_i / w`` — :func:`scale_event` builds that event and the accountant turns it
into the tier's ε (:func:`tier_epsilon`). So a tier's weight is the largest ``w`` whose
scaled event meets the tier's ε (:func:`tier_weight`): for Gaussian compositions it is
``z / z_t`` in closed form, with ``z`` the composition's effective multiplier and ``z_t`` the
multiplier one Gaussian needs for ε_t.

The tier assignment is the user's own data (covered like the rest of their record); the tier
list and the weights are public (they depend on ε, δ and σ only). This is the "stretching"
idea of heterogeneous DP (Alaggan et al. 2016) made exact for Gaussian mechanisms through
the accountant; the sample mechanism of Jorgensen et al. (ICDE 2015) reaches a tier by
sampling a user with probability instead, which keeps the same expected contribution but
adds sampling variance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dp_accounting
import numpy as np
import pydantic

from privrec.errors import ConfigError, DataError
from privrec.privacy.accounting import AccountantKind, epsilon_of
from privrec.privacy.events import SpentEvent, total_event
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "MAX_TIERS",
    "PrivacyTier",
    "declared_tiers",
    "resolve_tiers",
    "scale_event",
    "tier_epsilon",
    "tier_weight",
    "user_weights_for",
    "weight_meeting",
]


class PrivacyTier(pydantic.BaseModel):
    """One protection tier of a fitted model: its ε (from the accountant) and contribution weight."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    requested_epsilon: float
    epsilon: float
    weight: float


def scale_event(event: dp_accounting.DpEvent, weight: float) -> dp_accounting.DpEvent:
    """The privacy loss of a user whose contribution is scaled by ``weight``: multipliers ÷ weight.

    Gaussian and Laplace releases get multiplier ``z / weight`` (their sensitivity for that
    user is ``weight × Δ``); compositions are scaled throughout; no-op events stay.
    """
    if not 0 < weight <= 1:
        raise ConfigError(f"contribution weight must be in (0, 1], found {weight}")
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return dp_accounting.GaussianDpEvent(event.noise_multiplier / weight)
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        return dp_accounting.LaplaceDpEvent(event.noise_multiplier / weight)
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return dp_accounting.SelfComposedDpEvent(scale_event(event.event, weight), event.count)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return dp_accounting.ComposedDpEvent([scale_event(e, weight) for e in event.events])
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return event
    raise ConfigError(f"cannot scale a {type(event).__name__} for personalised budgets")


def tier_epsilon(
    spent: Sequence[SpentEvent],
    weight: float,
    delta: float,
    kind: AccountantKind | str = AccountantKind.PLD,
    unit: PrivacyUnit = PrivacyUnit.USER,
) -> float:
    """ε at ``delta`` for a user whose contribution to every release in ``spent`` is × ``weight``."""
    return epsilon_of(scale_event(total_event(list(spent)), weight), delta, kind, unit)


def tier_weight(
    spent: Sequence[SpentEvent],
    epsilon: float,
    delta: float,
    kind: AccountantKind | str = AccountantKind.PLD,
    unit: PrivacyUnit = PrivacyUnit.USER,
) -> float:
    """The largest weight (at most 1) whose scaled releases meet ``epsilon`` (checked by the accountant)."""
    return weight_meeting(lambda w: tier_epsilon(spent, w, delta, kind, unit), epsilon, delta)


def weight_meeting(eps_at: Callable[[float], float], epsilon: float, delta: float) -> float:
    """The largest weight in ``[1e-6, 1]`` with ``eps_at(weight) ≤ epsilon`` (bisection; ε grows
    with the weight). Training picks each tier's weight this way, and a file's stored weight is
    checked against it: the weight is determined by the events and the requested ε."""
    if eps_at(1.0) <= epsilon:
        return 1.0
    lo, hi = 1e-6, 1.0
    if eps_at(lo) > epsilon:
        raise ConfigError(f"no contribution weight reaches epsilon={epsilon:g} at delta={delta:g}")
    for _ in range(60):  # bisection to ~1e-12 relative
        mid = (lo + hi) / 2
        if eps_at(mid) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


#: At most this many protection tiers: each costs a weight search at training and at every load
#: (a hostile file with hundreds of tiers took half a minute to load).
MAX_TIERS = 64


def resolve_tiers(epsilon: float, tiers: Sequence[float] | None) -> tuple[float, ...]:
    """The public tier list: the stricter tiers given, then the model's ε (the loosest), sorted."""
    extra = tuple(float(t) for t in (tiers or ()))
    if len(set(extra) | {float(epsilon)}) > MAX_TIERS:
        raise ConfigError(f"at most {MAX_TIERS} protection tiers, found {len(extra) + 1}")
    for t in extra:
        if not (0 < t <= epsilon and np.isfinite(t)):
            raise ConfigError(f"every tier must be in (0, epsilon={epsilon:g}], found {t}")
    return tuple(sorted(set(extra) | {float(epsilon)}))


def declared_tiers(
    eps: np.ndarray, tiers: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(index, ok)``: each requested ε's position in the sorted ``tiers`` and whether it is one.

    Equal up to 1e-9 relative only: with a tiny tier (1e-9) an absolute tolerance would accept
    ε = 0, and a value between two tiers is refused rather than rounded to either.
    """
    table = np.asarray(tiers, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64)
    idx = np.searchsorted(table, eps)
    near = np.isclose(table[np.minimum(idx, len(table) - 1)], eps, rtol=1e-9, atol=0.0)
    ok = np.isfinite(eps) & (eps > 0) & (idx < len(table)) & near
    return idx, ok


def user_weights_for(
    user_epsilons: np.ndarray | Sequence[float],
    n_users: int,
    tiers: Sequence[float],
    weights: Sequence[float],
) -> np.ndarray:
    """Per-user contribution weights from each user's requested ε (which must be a declared tier).

    Validated before anything is computed: one value per user, each one of ``tiers``.
    """
    index = getattr(user_epsilons, "index", None)  # a pandas Series: matched by position
    if index is not None and not callable(index) and list(index) != list(range(len(index))):
        raise DataError(
            "requested epsilons are taken by position, in the data's user order",
            field="user_epsilons",
            expected="a sequence or array (or a Series with a default 0..n-1 index)",
            found="a Series with its own index",
        )
    try:
        raw = np.asarray(user_epsilons)
        # real numbers in one flat list: a complex part, booleans or a 2-D table would be
        # silently dropped, read as 1.0 or ravelled into another user order
        if raw.ndim != 1 or raw.dtype.kind not in "iuf":
            raise TypeError
        eps = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise DataError(
            "requested epsilons must be real numbers in a flat list, one per user",
            field="user_epsilons",
            found=type(user_epsilons).__name__,
        ) from None
    if eps.shape[0] != n_users:
        raise DataError(
            "one requested epsilon per user is needed",
            field="user_epsilons",
            expected=f"{n_users} values",
            found=eps.shape[0],
        )
    table = np.asarray(tiers, dtype=np.float64)
    idx, ok = declared_tiers(eps, table)
    if not ok.all():
        bad = eps[~ok][0]
        raise DataError(
            "a user asked for an epsilon that is not a declared tier",
            field="user_epsilons",
            expected="one of " + ", ".join(f"{t:g}" for t in table),
            found=float(bad),
        )
    out: np.ndarray = np.asarray(weights, dtype=np.float64)[idx]
    return out
