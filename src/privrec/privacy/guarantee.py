"""What a fitted private model promises, in numbers and in words."""

from __future__ import annotations

import json
from typing import Any

import pydantic

from privrec.privacy.accounting import AccountantKind, epsilon_of
from privrec.privacy.events import SpentEvent, total_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["PrivacyGuarantee"]


class PrivacyGuarantee(pydantic.BaseModel):
    """The (ε, δ) guarantee of a fitted private model and what it covers.

    ``epsilon`` is computed by the accountant from ``events`` (never summed by
    hand); :meth:`recompute_epsilon` lets a reviewer redo that from the saved
    records. ``released`` / ``not_released`` and ``threat_model`` say which
    outputs the guarantee is about — e.g. for joint-DP ("billboard") models the
    item factors are released with DP while each user's own recommendations
    use that user's data and are shown only to them.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    epsilon: float
    delta: float
    unit: PrivacyUnit
    accountant: AccountantKind
    mechanism: str
    events: tuple[dict[str, Any], ...]
    released: tuple[str, ...]
    not_released: tuple[str, ...]
    threat_model: str
    seeded_noise: bool = False
    #: Personalised budgets (protection tiers), one ``{"requested_epsilon", "epsilon", "weight"}``
    #: per tier; the loosest tier's ε is ``epsilon`` (:mod:`privrec.privacy.personalized`).
    tiers: tuple[dict[str, float], ...] = ()

    @classmethod
    def from_events(
        cls,
        spent: list[SpentEvent],
        *,
        delta: float,
        unit: PrivacyUnit,
        accountant: AccountantKind | str,
        mechanism: str,
        released: list[str],
        not_released: list[str],
        threat_model: str,
        seeded_noise: bool,
    ) -> PrivacyGuarantee:
        kind = AccountantKind(accountant)
        eps = epsilon_of(total_event(spent), delta, kind, unit)
        return cls(
            epsilon=eps,
            delta=delta,
            unit=unit,
            accountant=kind,
            mechanism=mechanism,
            events=tuple(s.to_dict() for s in spent),
            released=tuple(released),
            not_released=tuple(not_released),
            threat_model=threat_model,
            seeded_noise=seeded_noise,
        )

    @property
    def spent_events(self) -> list[SpentEvent]:
        return [SpentEvent.from_dict(e) for e in self.events]

    def recompute_epsilon(self, accountant: AccountantKind | str | None = None) -> float:
        """ε re-derived from the recorded events (optionally with another accountant)."""
        kind = self.accountant if accountant is None else AccountantKind(accountant)
        return epsilon_of(total_event(self.spent_events), self.delta, kind, self.unit)

    def explain(self) -> str:
        """A paragraph a product manager can read."""
        who = (
            "any single user (their whole history)"
            if self.unit is PrivacyUnit.USER
            else "any single interaction"
        )
        lines = [
            f"{self.mechanism} is ({self.epsilon:.3g}, {self.delta:.1e})-differentially private "
            f"with respect to {who}.",
            f"In words: whether or not {who.split(' (')[0]} is in the training data changes the probability "
            f"of any released result by a factor of at most e^{self.epsilon:.3g} ≈ {_exp(self.epsilon)}, "
            f"except with probability {self.delta:.1e}.",
            f"Released with this guarantee: {'; '.join(self.released)}.",
        ]
        if self.not_released:
            lines.append(
                f"Not released (covered by the threat model below): {'; '.join(self.not_released)}."
            )
        lines.append(f"Threat model: {self.threat_model}")
        lines.append(
            f"Accounting: {len(self.events)} noisy releases composed with the "
            f"{self.accountant.value.upper()} accountant of dp-accounting."
        )
        for t in self.tiers:
            lines.append(
                f"Protection tier: users who asked for epsilon {t['requested_epsilon']:g} contribute "
                f"with weight {t['weight']:.3g} and are ({t['epsilon']:.3g}, {self.delta:.1e})-DP."
            )
        if self.unit is PrivacyUnit.INTERACTION:
            lines.append(
                "Caution: interaction-level privacy does not protect a person with many interactions; "
                "a user with n interactions gets roughly n times the stated epsilon."
            )
        if self.seeded_noise:
            lines.append(
                "WARNING: this model was trained with seeded (reproducible) noise and is NOT private."
            )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrivacyGuarantee:
        return cls.model_validate(json.loads(text))


def _exp(eps: float) -> str:
    import math

    return f"{math.exp(eps):.3g}" if eps < 50 else "∞ (no meaningful protection)"
