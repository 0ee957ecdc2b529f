"""Differentially private popularity: noisy bounded counts and a private top-k list."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.models.base import check_array, register
from privrec.models.file_layout import ArraySpec, FileLayout
from privrec.models.popularity import PopularityScores
from privrec.models.private import PrivateConfig, PrivateRecommender
from privrec.models.tiers import finish_tiers, plan_tiers
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.bounds import (
    LENGTHS_LABEL,
    length_sensitivity,
    noisy_length_histogram,
    quantile_from_histogram,
)
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian, gaussian_event
from privrec.privacy.units import PrivacyUnit

__all__ = ["DPPopularity", "bounded_counts", "split_multipliers"]


def bounded_counts(
    user_items: sp.csr_matrix,
    unit: PrivacyUnit,
    max_per_user: int,
    rng: np.random.Generator | None,
    user_weights: np.ndarray | None = None,
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
    With ``user_weights`` (≤ 1, personalised budgets) user u's entries count ``w_u``: their
    own sensitivity is ``w_u`` times the one returned (the full-weight bound).

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
    w = None
    if user_weights is not None:
        w = np.repeat(np.asarray(user_weights, dtype=np.float64), np.diff(bounded.indptr))
    counts = np.bincount(bounded.indices, weights=w, minlength=user_items.shape[1])
    return counts.astype(np.float64), sens


def split_multipliers(z: float, fraction: float) -> tuple[float, float]:
    """Two Gaussian releases sharing the privacy "rate" 1/z² of one: ``fraction`` of it to the first.

    A composition of Gaussian mechanisms with multipliers ``z_i`` is exactly one with multiplier
    ``(Σ z_i⁻²)^(-1/2)``, so ``(z/√f, z/√(1 − f))`` costs what ``z`` alone does.
    """
    return z / math.sqrt(fraction), z / math.sqrt(1.0 - fraction)


# the interaction unit counts every pair once: B plays no part there
_FIXED_BOUND = 100


class DPPopularityConfig(PrivateConfig):
    max_per_user: int | None = pydantic.Field(default=None, ge=1)
    bound_quantile: float = pydantic.Field(default=0.5, gt=0, lt=1)
    length_budget_fraction: float = pydantic.Field(default=0.05, gt=0, lt=1)
    tiers: tuple[float, ...] | None = None


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
        B: items counted per user under the user unit. Default (``None``): data-adaptive,
        the ``bound_quantile`` of the users' history lengths read from a noisy
        length histogram (:mod:`privrec.privacy.bounds`) that gets
        ``length_budget_fraction`` of the budget — short histories get a small B
        (less noise), long ones a large B (less truncation).
    tiers
        Personalised budgets: the stricter protection tiers on offer (public, each ≤ ε;
        ε itself is the loosest). Each user then asks for one — ``fit(data,
        user_epsilons=…)`` — and contributes with the weight that gives their tier's ε
        (:mod:`privrec.privacy.personalized`); the guarantee states every tier's ε.
    bound_quantile, length_budget_fraction
        The data-adaptive bound's quantile (median by default: it was the better
        of the median and the 75th percentile on the validation splits of ml-100k,
        ml-1m, gowalla and movietweetings) and its share of the privacy "rate" Σ 1/z².
    accountant
        ``"pld"`` (default, tight) or ``"rdp"``.
    seed
        Seeded noise for reproducible experiments — NOT private, warns.

    Privacy
    -------
    Mechanism: Gaussian on the count vector. Sensitivity: √B (user unit, add/
    remove one user) or 1 (interaction unit). Event: one
    ``GaussianDpEvent(z)`` with z calibrated so the PLD (or RDP) accountant
    gives ε at δ. With the data-adaptive B (user unit), first the noisy
    history-length histogram (sensitivity 1, ``GaussianDpEvent(z/√f)``) and then
    the counts with ``GaussianDpEvent(z/√(1 − f))``; B is post-processing of the
    histogram. Released: the noisy counts and every list derived from them
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
        max_per_user: int | None = None,
        bound_quantile: float = 0.5,
        length_budget_fraction: float = 0.05,
        tiers: tuple[float, ...] | None = None,
        accountant: Literal["pld", "rdp"] = "pld",
        seed: int | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.unit = unit
        self.max_per_user = max_per_user
        self.bound_quantile = bound_quantile
        self.length_budget_fraction = length_budget_fraction
        self.tiers = tiers
        self.accountant = accountant
        self.seed = seed

    def fit(
        self,
        interactions: Interactions | sp.spmatrix | sp.sparray,
        *,
        item_ids: npt.ArrayLike | None = None,
        user_epsilons: np.ndarray | Sequence[float] | None = None,
    ) -> Self:
        """Fit; ``item_ids`` fixes the item catalogue so that nothing about it is learned from
        the data (:meth:`~privrec.models.base.Recommender.with_catalogue`); ``user_epsilons``
        gives each user's protection tier (one of ``tiers`` or ε)."""
        with self._unchanged_on_failure():  # the catalogue too
            if item_ids is not None:
                self.with_catalogue(item_ids)
            self._user_epsilons = user_epsilons
            try:
                super().fit(interactions)
            finally:
                self._user_epsilons = None
        return self

    def _fit(self, data: Interactions, config: DPPopularityConfig) -> None:
        budget, rng = self._begin(data, config)
        adaptive = config.max_per_user is None and config.unit is PrivacyUnit.USER
        f = config.length_budget_fraction
        if adaptive:
            z = calibrate(
                budget,
                lambda v: compose([gaussian_event(m) for m in split_multipliers(v, f)]),
                kind=config.accountant,
                unit=config.unit,
            )
            z_len, z = split_multipliers(z, f)
            planned = [
                SpentEvent(LENGTHS_LABEL, gaussian_event(z_len)),
                SpentEvent("noisy item counts", gaussian_event(z)),
            ]
        else:
            z = calibrate(budget, gaussian_event, kind=config.accountant, unit=config.unit)
            planned = [SpentEvent("noisy item counts", gaussian_event(z))]
        weights = plan_tiers(
            self, config, planned, getattr(self, "_user_epsilons", None), data.n_users
        )
        self._plan(planned)
        if adaptive:
            hist = noisy_length_histogram(data.matrix, config.unit, z_len, rng, weights)
            self._spend(LENGTHS_LABEL, gaussian_event(z_len))
            std = z_len * length_sensitivity(config.unit)
            q = quantile_from_histogram(hist, config.bound_quantile, noise_std=std)
            bound = max(1, min(round(q), data.n_items))
        else:
            bound = _FIXED_BOUND if config.max_per_user is None else config.max_per_user
        counts, sens = bounded_counts(data.matrix, config.unit, bound, rng, weights)
        self.item_popularity_ = gaussian(counts, z, sens, rng).astype(np.float32)
        self.noise_multiplier_ = z
        self.max_per_user_ = bound
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
        finish_tiers(self)

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        return FileLayout(
            {
                "item_popularity": ArraySpec((n_items,), sparse=True),
                "noise_multiplier": ArraySpec(()),
            }
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
