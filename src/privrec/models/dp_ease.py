"""Differentially private EASE: a noised, contribution-bounded item Gram matrix."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError
from privrec.models.base import register
from privrec.models.dp_popularity import bounded_counts
from privrec.models.ease import ease_from_gram, item_gram
from privrec.models.private import PrivateConfig, PrivateRecommender
from privrec.privacy.accounting import calibrate
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.mechanisms import gaussian, gaussian_event, symmetric_gaussian
from privrec.privacy.units import PrivacyUnit

__all__ = ["DPEASE", "bounded_gram"]


def bounded_gram(
    user_items: sp.csr_matrix,
    unit: PrivacyUnit,
    max_contribution: float,
    max_per_user: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Item Gram matrix with bounded per-unit contribution, and its Frobenius sensitivity.

    USER unit: user ``u`` (binary row ``x_u`` with ``n_u`` items) enters with
    weight ``w_u = min(1, C / n_u)``; their term ``w_u x_u x_uᵀ`` has Frobenius
    norm ``w_u n_u ≤ C``, so adding or removing a user moves the matrix by at
    most C.

    INTERACTION unit: each user keeps at most B items (keyed per-user sampling,
    independent of other users), weight 1. Removing one interaction either
    changes nothing or swaps one kept item for another, which changes at most
    ``2(2B − 1)`` entries by 1: Frobenius sensitivity ``√(2(2B − 1))``.
    """
    x = sp.csr_matrix(user_items, copy=True)
    x.data[:] = 1.0
    if unit is PrivacyUnit.USER:
        n_u = np.diff(x.indptr).astype(np.float64)
        w = np.minimum(1.0, max_contribution / np.maximum(n_u, 1.0))
        return item_gram(x, w), float(max_contribution)
    kept = sample_per_user(x, max_per_user, rng)
    return item_gram(kept), float(np.sqrt(2 * (2 * max_per_user - 1)))


class DPEASEConfig(PrivateConfig):
    regularization: float = pydantic.Field(default=500.0, gt=0, allow_inf_nan=False)
    max_contribution: float = pydantic.Field(default=30.0, gt=0, allow_inf_nan=False)
    max_per_user: int = pydantic.Field(default=30, ge=1)
    max_items: int = pydantic.Field(default=5000, ge=1)
    count_budget_fraction: float = pydantic.Field(default=0.1, gt=0, lt=1)


@register
class DPEASE(PrivateRecommender):
    """EASE from a differentially private item Gram matrix.

    Parameters
    ----------
    epsilon, delta, unit
        The budget and privacy unit (required).
    regularization
        λ of EASE; noise on the Gram matrix calls for more than the
        non-private optimum.
    max_contribution
        C: Frobenius bound of one user's Gram term (user unit).
    max_per_user
        B: items kept per user under the interaction unit (and for the head
        selection counts under the user unit).
    max_items
        When the catalogue is larger, first pick this many head items by noisy
        counts (charged to the budget) and learn EASE on them only; other
        items are never recommended.
    count_budget_fraction
        Share of the privacy "rate" (Σ 1/z²) spent on the head-selection counts.

    Privacy
    -------
    Mechanism: symmetric Gaussian noise on the bounded Gram matrix
    (sensitivity C under the user unit, √(2(2B−1)) under the interaction unit;
    add/remove neighbouring), event ``GaussianDpEvent(z_g)``; plus, when the
    catalogue exceeds ``max_items``, Gaussian noisy counts (sensitivity √B /
    1), event ``GaussianDpEvent(z_c)``. The multipliers are calibrated jointly
    so the composed event meets (ε, δ). Released: the noisy Gram matrix and the
    EASE weights computed from it. A user's scores ``x_u B`` use that user's
    own history only (joint DP).
    """

    name = "dpease"
    Config = DPEASEConfig
    mechanism_name = "DPEASE (noisy item Gram matrix)"

    weights_: np.ndarray
    head_items_: np.ndarray
    item_popularity_: np.ndarray
    noise_multiplier_: float

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user", "interaction"],
        regularization: float = 500.0,
        max_contribution: float = 30.0,
        max_per_user: int = 30,
        max_items: int = 5000,
        count_budget_fraction: float = 0.1,
        accountant: Literal["pld", "rdp"] = "pld",
        seed: int | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.unit = unit
        self.regularization = regularization
        self.max_contribution = max_contribution
        self.max_per_user = max_per_user
        self.max_items = max_items
        self.count_budget_fraction = count_budget_fraction
        self.accountant = accountant
        self.seed = seed

    def _fit(self, data: Interactions, config: DPEASEConfig) -> None:
        budget, rng = self._begin(data, config)
        restrict = data.n_items > config.max_items
        f = config.count_budget_fraction if restrict else 0.0
        z_eff = calibrate(budget, gaussian_event, kind=config.accountant, unit=config.unit)
        if config.accountant == "rdp":
            # RDP does not compose Gaussians exactly; calibrate the split directly.
            def split(z: float) -> list[float]:
                return [z / np.sqrt(f), z / np.sqrt(1 - f)] if restrict else [z]

            from privrec.privacy.accounting import compose

            z_eff = calibrate(
                budget,
                lambda z: compose([gaussian_event(v) for v in split(z)]),
                kind="rdp",
                unit=config.unit,
            )
        z_gram = z_eff / np.sqrt(1.0 - f)
        m = data.matrix
        if restrict:
            z_count = z_eff / np.sqrt(f)
            counts, sens = bounded_counts(m, config.unit, config.max_per_user, rng)
            noisy = gaussian(counts, z_count, sens, rng)
            head = np.sort(np.argsort(-noisy, kind="stable")[: config.max_items])
            self._spend("noisy item counts (head selection)", gaussian_event(z_count))
            m = sp.csr_matrix(m[:, head])
        else:
            head = np.arange(data.n_items)
        if len(head) > 40_000:
            raise ConfigError(f"DPEASE needs a dense {len(head)}² matrix; lower max_items")
        gram, sens_g = bounded_gram(
            m, config.unit, config.max_contribution, config.max_per_user, rng
        )
        noisy_gram = symmetric_gaussian(gram, z_gram, sens_g, rng)
        self._spend("noisy item Gram matrix", gaussian_event(z_gram))
        self.weights_ = ease_from_gram(noisy_gram, config.regularization)
        # the diagonal of the released Gram matrix is a (bounded, noisy) item count: the
        # cold-start ranking for users without history, at no extra privacy cost
        self.item_popularity_ = np.diag(noisy_gram).astype(np.float32)
        self.head_items_ = head.astype(np.int64)
        self.noise_multiplier_ = float(z_gram)
        self._finish(
            config,
            released=["the noisy item Gram matrix", "EASE item-item weights derived from it"]
            + (["the head item set chosen from noisy counts"] if restrict else []),
            not_released=[
                "raw interactions",
                "each user's scores (computed from that user's own history, shown only to them)",
            ],
            threat_model=(
                "joint DP ('billboard' model): the released item-item weights are (ε, δ)-DP; a user's "
                "recommendations combine them with that user's own data only, so other users' data "
                "reach them only through the DP release. The training server is trusted (central DP)."
            ),
        )

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        n_items = user_items.shape[1]
        out = np.full((user_items.shape[0], n_items), -np.inf, dtype=np.float32)
        sub = sp.csr_matrix(user_items[:, self.head_items_])
        out[:, self.head_items_] = np.asarray(sub @ self.weights_, dtype=np.float32)
        cold = np.diff(sub.indptr) == 0
        if cold.any():
            out[np.ix_(cold, self.head_items_)] = self.item_popularity_
        return out

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._score_histories(self.user_items_[users])

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "weights": self.weights_,
            "head_items": self.head_items_,
            "item_popularity": self.item_popularity_,
            "noise_multiplier": np.asarray(self.noise_multiplier_),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = arrays["weights"]
        self.head_items_ = arrays["head_items"]
        self.item_popularity_ = arrays["item_popularity"]
        self.noise_multiplier_ = float(arrays["noise_multiplier"])
