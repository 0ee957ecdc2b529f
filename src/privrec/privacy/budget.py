"""The (ε, δ) target a private computation must stay within."""

from __future__ import annotations

import math
import warnings

import pydantic

from privrec.errors import ConfigError, PrivacyWarning

__all__ = ["Budget"]


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
        """Warn (:class:`PrivacyWarning`) when δ > 1 / number of privacy units."""
        if n_units > 0 and self.delta > 1.0 / n_units:
            warnings.warn(
                f"delta={self.delta:g} exceeds 1/{n_units} (one over the number of privacy units): "
                "a mechanism could expose one unit's data outright and still meet the budget. "
                f"Use delta <= {1.0 / n_units:.1e}, ideally much smaller.",
                PrivacyWarning,
                stacklevel=2,
            )
