"""Protection tiers (personalised budgets) for the private models: planning and the guarantee.

The mechanism, its proof sketch and the accounting live in :mod:`privrec.privacy.personalized`;
this module is the glue a private model calls: before any noise is drawn, turn the planned
releases and the public tier list into one contribution weight per tier and per user
(:func:`plan_tiers`), and after the fit, state every tier's ε in the guarantee
(:func:`finish_tiers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from privrec.errors import ConfigError
from privrec.privacy.events import SpentEvent
from privrec.privacy.personalized import (
    PrivacyTier,
    resolve_tiers,
    tier_epsilon,
    tier_weight,
    user_weights_for,
)

__all__ = ["finish_tiers", "plan_tiers"]


def plan_tiers(
    model: Any,
    config: Any,
    planned: Sequence[SpentEvent],
    user_epsilons: np.ndarray | Sequence[float] | None,
    n_users: int,
) -> np.ndarray | None:
    """Per-user contribution weights (``None`` without tiers), validated before any release.

    ``config.tiers`` lists the stricter tiers on offer (public); the model's ε is the loosest.
    Every user must have asked for one of them (``user_epsilons``, one per user row).
    """
    tiers = resolve_tiers(config.epsilon, config.tiers)
    model._tiers = []
    if len(tiers) == 1 and user_epsilons is None:
        return None
    if user_epsilons is None:
        raise ConfigError(
            f"tiers {list(tiers)} are declared: pass user_epsilons (one requested epsilon per user)"
        )
    kw = {"delta": config.delta, "kind": config.accountant, "unit": config.unit}
    weights = [tier_weight(planned, t, **kw) for t in tiers]
    out = user_weights_for(user_epsilons, n_users, tiers, weights)
    model._tiers = [
        PrivacyTier(requested_epsilon=t, epsilon=tier_epsilon(planned, w, **kw), weight=w)
        for t, w in zip(tiers, weights, strict=True)
    ]
    return out


def finish_tiers(model: Any) -> None:
    """Add the tiers (ε from the accountant, weight) to the fitted model's guarantee."""
    tiers = getattr(model, "_tiers", [])
    if tiers:
        old = model.guarantee_
        model.guarantee_ = old.model_copy(update={"tiers": tuple(t.model_dump() for t in tiers)})
        model.guarantee_._verified = old._verified  # ε and the events are unchanged
