"""Differentially private popularity: noisy bounded counts and a private top-k list."""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.models.base import check_array, register
from privrec.models.popularity import PopularityScores
from privrec.models.private import PrivateConfig, PrivateRecommender
from privrec.privacy.accounting import calibrate
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian, gaussian_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["DPPopularity", "bounded_counts"]


def bounded_counts(
    user_items: sp.csr_matrix,
    unit: PrivacyUnit,
    max_per_user: int,
    rng: np.random.Generator | None,
    *,
    salt: int | None = None,
    row_keys: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Item counts with bounded per-unit contribution, and their L2 sensitivity.

    USER unit: each user keeps at most ``max_per_user`` items (uniform sample,
    independent of other users), each counted once, so adding or removing a
    user changes the count vector by at most √max_per_user in L2.
    INTERACTION unit: every (user, item) pair counts once; one interaction
    changes one count by 1 (sensitivity 1).

    ``salt`` and ``row_keys`` pass through to :func:`sample_per_user` (a distributed worker
    samples its users exactly as the whole matrix would).
    """
    if unit is PrivacyUnit.USER:
        bounded = sample_per_user(user_items, max_per_user, rng, salt=salt, row_keys=row_keys)
        sens = float(np.sqrt(max_per_user))
    else:
        bounded = sp.csr_matrix(user_items, copy=True)
        bounded.data[:] = 1.0
        sens = 1.0
    counts = np.bincount(bounded.indices, minlength=user_items.shape[1]).astype(np.float64)
    return counts, sens


class DPPopularityConfig(PrivateConfig):
    max_per_user: int = pydantic.Field(default=100, ge=1)


@register
class DPPopularity(PopularityScores, PrivateRecommender):
    """Popularity ranking from Gaussian-noised, contribution-bounded item counts.

    Parameters
    ----------
    epsilon, delta
        The privacy budget (required).
    unit
        ``"user"`` (a whole history) or ``"interaction"`` (required).
    max_per_user
        B: items counted per user under the user unit.
    accountant
        ``"pld"`` (default, tight) or ``"rdp"``.
    seed
        Seeded noise for reproducible experiments — NOT private, warns.

    Privacy
    -------
    Mechanism: Gaussian on the count vector. Sensitivity: √B (user unit, add/
    remove one user) or 1 (interaction unit). Event: one
    ``GaussianDpEvent(z)`` with z calibrated so the PLD (or RDP) accountant
    gives ε at δ. Released: the noisy counts and every list derived from them
    (post-processing). A user's own list leaves out items they have seen, using
    only their own data, shown only to them.

    Examples
    --------
    >>> import warnings
    >>> from privrec.data import synthetic
    >>> data = synthetic(n_users=300, n_items=100, seed=0)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # seeded noise warns: not for production
    ...     model = DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0).fit(data)
    >>> round(model.privacy_guarantee.epsilon, 6) <= 1.0
    True
    """

    name = "dppopularity"
    Config = DPPopularityConfig
    mechanism_name = "DPPopularity (noisy item counts)"

    item_popularity_: np.ndarray
    noise_multiplier_: float

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user", "interaction"],
        max_per_user: int = 100,
        accountant: Literal["pld", "rdp"] = "pld",
        seed: int | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.unit = unit
        self.max_per_user = max_per_user
        self.accountant = accountant
        self.seed = seed

    def fit(
        self,
        interactions: Interactions | sp.spmatrix | sp.sparray,
        *,
        item_ids: npt.ArrayLike | None = None,
    ) -> Self:
        """Fit; ``item_ids`` fixes the item catalogue so that nothing about it is learned from
        the data (:meth:`~privrec.models.base.Recommender.with_catalogue`)."""
        if item_ids is not None:
            self.with_catalogue(item_ids)
        return super().fit(interactions)

    def _fit(self, data: Interactions, config: DPPopularityConfig) -> None:
        budget, rng = self._begin(data, config)
        z = calibrate(budget, gaussian_event, kind=config.accountant, unit=config.unit)
        self._plan([SpentEvent("noisy item counts", gaussian_event(z))])
        counts, sens = bounded_counts(data.matrix, config.unit, config.max_per_user, rng)
        self.item_popularity_ = gaussian(counts, z, sens, rng).astype(np.float32)
        self.noise_multiplier_ = z
        self._spend("noisy item counts", gaussian_event(z))
        self._finish(
            config,
            released=[
                "noisy item counts",
                "the popularity ranking and any top-k list derived from it",
            ],
            not_released=[
                "raw interactions",
                "each user's seen-item filter (uses only that user's data)",
            ],
            threat_model=(
                "anyone who sees the released counts or lists, with any side information, learns about one "
                f"{config.unit.value} no more than the (ε, δ) bound allows; the training server is trusted "
                "to add the noise (central DP)."
            ),
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "item_popularity": self.item_popularity_,
            "noise_multiplier": np.asarray(self.noise_multiplier_),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_popularity_ = arrays["item_popularity"]
        self.noise_multiplier_ = float(
            check_array(arrays, "noise_multiplier", kind="f", shape=(), low=0)
        )

    def _check_state(self) -> None:
        check_array(
            self.item_popularity_, "item_popularity", kind="f", shape=(len(self.item_ids_),)
        )
