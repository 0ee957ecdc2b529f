"""The (ε, δ) target a private computation must stay within."""

from __future__ import annotations

import math
import warnings

import pydantic

from privrec.errors import ConfigError, PrivacyWarning

__all__ = ["WEAK_DELTA", "WEAK_EPSILON", "Budget", "warn_weak_budget"]

#: above this ε a guarantee is weak (a guesser is right 73% of the time at ε = 1, 99.995% at 10):
#: the command line and the ledger warn (:func:`warn_weak_budget`)
WEAK_EPSILON = 10.0

#: with the number of privacy units unknown, a δ at or above this is weak for any data set of
#: more than 100 units; when the number is known, δ ≥ 1/n is the rule
WEAK_DELTA = 0.01


def warn_weak_budget(
    epsilon: float | None,
    delta: float | None = None,
    *,
    n_units: int | None = None,
    what: str = "",
    stacklevel: int = 2,
) -> None:
    """Warn (:class:`PrivacyWarning`) about an (ε, δ) setting that weakens privacy.

    ε above :data:`WEAK_EPSILON` warns, in the plain-language reading of ``explain`` (how often
    someone guessing whether a person's data was used could be right). δ warns at or above
    ``1/n_units`` — a mechanism could publish one unit's data outright and still meet it — or,
    with ``n_units`` unknown, at or above :data:`WEAK_DELTA`. Invalid values (ε ≤ 0, non-finite,
    δ outside (0, 1)) are the caller's typed errors, not warnings. ``what`` prefixes the
    message (e.g. ``"budget cap: "``).

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     warn_weak_budget(1.0, 1e-6, n_units=10_000)
    ...     warn_weak_budget(50.0)
    >>> [str(x.message)[:33] for x in w]
    ['epsilon=50 is a weak guarantee: s']
    """
    if isinstance(epsilon, int | float) and epsilon > WEAK_EPSILON:
        right = 100.0 / (1.0 + math.exp(-min(float(epsilon), 700.0)))
        odds = "more than 99.99%" if right > 99.99 else f"up to {right:.4g}%"
        warnings.warn(
            f"{what}epsilon={epsilon:g} is a weak guarantee: someone guessing whether a person's "
            f"data was used could be right {odds} of the time (a coin flip: 50%)",
            PrivacyWarning,
            stacklevel=stacklevel + 1,
        )
    if not isinstance(delta, int | float):
        return
    if n_units is not None and n_units > 0:
        if delta >= 1.0 / n_units:
            warnings.warn(
                f"{what}delta={delta:g} is not below 1/{n_units:,} (one over the number of "
                "privacy units): a mechanism could publish one unit's data outright and still "
                f"meet it. Use delta <= {1.0 / n_units:.1e}, ideally much smaller",
                PrivacyWarning,
                stacklevel=stacklevel + 1,
            )
    elif delta >= WEAK_DELTA:
        warnings.warn(
            f"{what}delta={delta:g} is a weak guarantee for any data set of more than "
            f"{round(1 / WEAK_DELTA)} people: a mechanism could publish one person's data "
            "outright with that probability and still meet it",
            PrivacyWarning,
            stacklevel=stacklevel + 1,
        )


class Budget(pydantic.BaseModel):
    """An (ε, δ) differential-privacy budget.

    ε must be positive and finite; δ in (0, 1). δ should be well below one
    over the number of privacy units: a mechanism may otherwise publish one
    unit's data outright with probability δ and still be "(ε, δ)-DP", which is
    why :meth:`check_delta` warns.

    >>> Budget(epsilon=1.0, delta=1e-6)
    Budget(epsilon=1.0, delta=1e-06)
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    epsilon: float
    delta: float

    @pydantic.field_validator("epsilon")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"epsilon must be > 0 and finite, found {v}")
        return v

    @pydantic.field_validator("delta")
    @classmethod
    def _delta(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"delta must be in (0, 1), found {v}")
        return v

    def __init__(self, epsilon: float, delta: float) -> None:
        try:
            super().__init__(epsilon=epsilon, delta=delta)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"invalid privacy budget: {exc.errors()[0]['msg']}") from None

    def check_delta(self, n_units: int) -> None:
        """Warn (:class:`PrivacyWarning`) when δ ≥ 1 / number of privacy units (as
        :func:`warn_weak_budget` and the CLI do)."""
        if n_units > 0 and self.delta >= 1.0 / n_units:
            warnings.warn(
                f"delta={self.delta:g} is at least 1/{n_units} (one over the number of privacy units): "
                "a mechanism could expose one unit's data outright and still meet the budget. "
                f"Use delta <= {1.0 / n_units:.1e}, ideally much smaller.",
                PrivacyWarning,
                stacklevel=2,
            )
