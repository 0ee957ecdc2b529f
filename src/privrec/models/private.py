"""Shared machinery of the differentially private models.

A private model takes its privacy parameters as required constructor
arguments — ε, δ and the **privacy unit** — because they are part of what the
model *is*, not tuning knobs with safe defaults. It records every noisy
release as a labelled dp-accounting event while fitting, and carries the
resulting :class:`~privrec.privacy.guarantee.PrivacyGuarantee` (saved with the
model). Noise is drawn from a ChaCha20 CSPRNG unless ``seed`` is set, which
warns that the result is not private.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import pydantic

from privrec.data.interactions import Interactions
from privrec.models.base import ModelConfig, Recommender
from privrec.privacy.accounting import AccountantKind
from privrec.privacy.budget import Budget
from privrec.privacy.events import SpentEvent
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.randomness import resolve_generator
from privrec.privacy.units import PrivacyUnit

__all__ = ["PrivateConfig", "PrivateRecommender", "blend_popularity"]


class PrivateConfig(ModelConfig):
    """Privacy fields every private model's config has (no defaults for ε, δ, unit)."""

    epsilon: float = pydantic.Field(gt=0, allow_inf_nan=False)
    delta: float = pydantic.Field(gt=0, lt=1)
    unit: PrivacyUnit
    accountant: Literal["pld", "rdp"] = "pld"
    seed: int | None = None


class PrivateRecommender(Recommender):
    """Base of private models: budget checks, noise source, event ledger, guarantee."""

    save_user_data: ClassVar[bool] = False
    mechanism_name: ClassVar[str] = "private model"

    guarantee_: PrivacyGuarantee

    #: Write-ahead hook (set by :mod:`privrec.governance`): called by :meth:`_plan` with every
    #: release ``fit`` is about to make, before any noise is drawn; it may refuse by raising.
    release_gate: Callable[[list[SpentEvent]], None] | None = None

    def _begin(self, data: Interactions, config: Any) -> tuple[Budget, np.random.Generator]:
        """Validate the budget against the data and open a fresh noise source and ledger."""
        budget = Budget(config.epsilon, config.delta)
        n_units = data.n_users if config.unit is PrivacyUnit.USER else max(data.nnz, 1)
        budget.check_delta(n_units)
        self._spent: list[SpentEvent] = []
        self._planned: list[SpentEvent] | None = None
        return budget, resolve_generator(config.seed)

    def _plan(self, planned: list[SpentEvent]) -> None:
        """Announce the releases ``fit`` will make, after calibration and before any noise is drawn.

        A ledger attached as :attr:`release_gate` reserves their charge here (and refuses when a
        budget would be exceeded, so no noise is ever drawn); :meth:`_finish` checks that the
        releases actually made are exactly the ones announced.
        """
        self._planned = list(planned)
        if self.release_gate is not None:
            self.release_gate(list(planned))

    def _spend(self, label: str, event: Any) -> None:
        self._spent.append(SpentEvent(label, event))

    def _finish(
        self, config: Any, *, released: list[str], not_released: list[str], threat_model: str
    ) -> None:
        planned = getattr(self, "_planned", None)
        if planned is not None and [p.to_dict() for p in planned] != [
            s.to_dict() for s in self._spent
        ]:
            raise RuntimeError(  # a bug in the model: its write-ahead charge would be wrong
                f"{type(self).__name__} released other events than it announced to _plan"
            )
        self.guarantee_ = PrivacyGuarantee.from_events(
            self._spent,
            delta=config.delta,
            unit=config.unit,
            accountant=AccountantKind(config.accountant),
            mechanism=self.mechanism_name,
            released=released,
            not_released=not_released,
            threat_model=threat_model,
            seeded_noise=config.seed is not None,
        )

    @property
    def privacy_guarantee(self) -> PrivacyGuarantee:
        self._check_fitted()
        return self.guarantee_

    def _extra_meta(self) -> dict[str, Any]:
        return {"guarantee": self.guarantee_.model_dump(mode="json")}

    def _set_extra_meta(self, extra: dict[str, Any]) -> None:
        self.guarantee_ = PrivacyGuarantee.model_validate(extra["guarantee"])


def head_item_scores(
    u: np.ndarray, item_factors: np.ndarray, head: np.ndarray, noisy_counts: np.ndarray, beta: float
) -> np.ndarray:
    """Catalogue scores of users ``u`` from factors released for the ``head`` items only.

    Off the head, ``-inf``. With ``beta > 0`` the factor scores are blended with the
    released noisy counts (:func:`blend_popularity`); with ``beta = 0`` they are kept raw
    and a user with no history (all-zero factors) gets the noisy-count ranking of the
    head. Post-processing of released statistics and the user's own factors only.
    """
    out = np.full((u.shape[0], item_factors.shape[0]), -np.inf, dtype=np.float32)
    scores = u @ item_factors[head].T
    if beta > 0:
        out[:, head] = blend_popularity(scores, noisy_counts[head], beta)
        return out
    out[:, head] = scores
    cold = ~np.any(u != 0, axis=1)
    if cold.any():
        out[np.ix_(cold, head)] = noisy_counts[head]
    return out


def blend_popularity(scores: np.ndarray, noisy_counts: np.ndarray, beta: float) -> np.ndarray:
    """Row-standardised ``scores`` plus ``beta`` × the standardised log noisy counts.

    ``scores`` are one user per row over the same items as ``noisy_counts``.
    Standardising each row (mean 0, std 1) makes β comparable across users,
    data sets and ε (the scale of factor scores varies with the noise and the
    ridge); the prior ``log(1 + max(ñ_j, 0))`` is standardised over the items.
    Pure post-processing: the counts are already released (and charged), and a
    row uses only that user's own scores. A constant row (a user with no
    history) becomes the popularity ranking.
    """
    s = np.asarray(scores, dtype=np.float32)
    prior = np.log1p(np.maximum(np.asarray(noisy_counts, dtype=np.float64), 0.0))
    prior = (prior - prior.mean()) / max(float(prior.std()), 1e-12)
    sd = s.std(axis=1, keepdims=True)
    z = (s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, np.float32(1.0))
    out: np.ndarray = (z + np.float32(beta) * prior.astype(np.float32)).astype(np.float32)
    return out
