"""Differentially private EASE: a noised, contribution-bounded item Gram matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Self

import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, DataError
from privrec.models.base import check_array, register
from privrec.models.dp_popularity import bounded_counts
from privrec.models.dp_rules import (
    COUNT_SHARE_MAX,
    LengthProfile,
    count_share,
    low_signal_blend,
    resolve_bound,
    resolve_shrinkage,
    small_data_warning,
    user_blend,
)
from privrec.models.ease import check_ease_memory, ease_from_gram, item_gram
from privrec.models.file_layout import ArraySpec, FileLayout
from privrec.models.private import (
    PrivateConfig,
    PrivateRecommender,
    blend_popularity,
    read_blend_state,
    read_head_items,
)
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.bounds import LENGTHS_LABEL, length_sensitivity, noisy_length_histogram
from privrec.privacy.contribution import sample_per_user
from privrec.privacy.events import JOINT_MARK, SpentEvent
from privrec.privacy.mechanisms import gaussian, gaussian_event, symmetric_gaussian
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "DPEASE",
    "EaseBudget",
    "NoisyCounts",
    "bounded_gram",
    "ease_head",
    "popularity_prior",
    "resolve_ease_regularization",
    "set_popularity",
]

#: the event of the head-selection counts and the Gram matrix, one Gaussian mechanism
PAIR_LABEL = f"noisy item counts (head selection) and noisy item Gram matrix {JOINT_MARK}"
GRAM_LABEL = "noisy item Gram matrix"

HEAD_SNR = 6.0
REG_SCALE = 3.0
MAX_CONTRIBUTION = 10.0
_MIN_CONTRIBUTION = 5.0
# per-user shrinkage of the blend, in units of β (:func:`~privrec.models.dp_rules.resolve_shrinkage`)
_SHRINKAGE = 32.0
#: the counts' share of the pair's rate from which they join the popularity prior by default
COUNT_PRIOR_SHARE = 0.5
#: the least share of the rate Σ 1/z² the Gram matrix keeps (else a ConfigError before any charge)
_MIN_GRAM_SHARE = 0.1


def gram_sensitivity(unit: PrivacyUnit, max_contribution: float, max_per_user: int) -> float:
    """Frobenius sensitivity of :func:`bounded_gram` (C, or √(2(2B − 1)) per interaction)."""
    if unit is PrivacyUnit.USER:
        return float(max_contribution)
    return float(np.sqrt(2 * (2 * max_per_user - 1)))


def bounded_gram(
    user_items: sp.csr_matrix,
    unit: PrivacyUnit,
    max_contribution: float,
    max_per_user: int,
    rng: np.random.Generator | None,
    *,
    salt: int | None = None,
    row_keys: np.ndarray | None = None,
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

    ``salt`` and ``row_keys`` pass through to :func:`sample_per_user`.
    """
    x = sp.csr_matrix(user_items, copy=True)
    x.sum_duplicates()  # a pair stored twice would count twice in the Gram but once in n_u
    x.data[:] = 1.0
    if unit is PrivacyUnit.USER:
        n_u = np.diff(x.indptr).astype(np.float64)
        w = np.minimum(1.0, max_contribution / np.maximum(n_u, 1.0))
        return item_gram(x, w), gram_sensitivity(unit, max_contribution, max_per_user)
    kept = sample_per_user(x, max_per_user, rng, salt=salt, row_keys=row_keys)
    return item_gram(kept), gram_sensitivity(unit, max_contribution, max_per_user)


class DPEASEConfig(PrivateConfig):
    regularization: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    reg_scale: float = pydantic.Field(default=REG_SCALE, gt=0, allow_inf_nan=False)
    max_contribution: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    max_per_user: int | None = pydantic.Field(default=None, ge=1)
    bound_quantile: float = pydantic.Field(default=0.75, gt=0, lt=1)
    length_budget_fraction: float = pydantic.Field(default=0.05, gt=0, lt=1)
    max_items: int = pydantic.Field(default=5000, ge=1)
    head_snr: float = pydantic.Field(default=HEAD_SNR, ge=0, allow_inf_nan=False)
    head_min: int = pydantic.Field(default=100, ge=1)
    count_budget_fraction: float | None = pydantic.Field(default=None, gt=0, lt=1)
    count_prior: bool | None = None
    popularity_blend: float | None = pydantic.Field(default=None, ge=0, le=10, allow_inf_nan=False)
    popularity_shrinkage: float | None = pydantic.Field(
        default=None, ge=0, le=1000, allow_inf_nan=False
    )
    popularity_fallback: bool = True


def resolve_contribution(max_contribution: float | None, profile: LengthProfile | None) -> float:
    """C: the given bound, else the private median history length within [5, 10] (10 without one).

    A user's Gram term has Frobenius norm ``min(n_u, C)``: a C far above what most users
    contribute only adds noise. On the validation splits C = 5 beat 10 where the median
    history is a few items (movietweetings, the synthetic short-history set) and lost where
    it is long (ml-1m, ml-100k at ε = 5); post-processing of the length histogram.
    """
    if max_contribution is not None:
        return float(max_contribution)
    if profile is None:
        return MAX_CONTRIBUTION
    return min(MAX_CONTRIBUTION, max(_MIN_CONTRIBUTION, profile.quantile(0.5)))


def resolve_ease_regularization(
    regularization: float | None, noise_std: float, n_items: int, scale: float
) -> float:
    """Default EASE ridge: ``scale`` × the spectral norm of the Gram noise, at least 100.

    A symmetric n×n Gaussian matrix of entry std s has spectral norm ≈ 2 s √n,
    so a ridge of that order keeps the noise from dominating the inverse;
    ``scale`` was picked on validation data. From σ and the head size only
    (both already public), so it costs no privacy.
    """
    if regularization is not None:
        return float(regularization)
    return max(100.0, scale * 2.0 * noise_std * math.sqrt(n_items))


@register
class DPEASE(PrivateRecommender):
    """EASE from a differentially private item Gram matrix.

    Parameters
    ----------
    epsilon, delta, unit
        The budget and privacy unit (required).
    regularization
        λ of EASE. Default (``None``): ``reg_scale`` × the spectral norm of the
        Gram noise (:func:`resolve_ease_regularization`), so it grows as ε
        shrinks — noise on the Gram matrix calls for far more than the
        non-private optimum.
    reg_scale
        Multiplier of the automatic λ.
    max_contribution
        C: Frobenius bound of one user's Gram term (user unit). Default
        (``None``): the private median history length within [5, 10]
        (:func:`resolve_contribution`).
    max_per_user
        B: items kept per user under the interaction unit (and for the
        head-selection counts under the user unit). Default (``None``):
        data-adaptive, the ``bound_quantile`` of the history lengths read from a
        noisy length histogram (:mod:`privrec.privacy.bounds`) that gets
        ``length_budget_fraction`` of the privacy rate.
    bound_quantile, length_budget_fraction
        The data-adaptive B's quantile and the histogram's share of Σ 1/z².
    max_items, head_snr, head_min
        Head selection: learn EASE only on the items whose noisy count is at
        least ``head_snr`` × the Gram noise std (an item pair's co-occurrence
        can only rise above the noise when both items are that popular), at
        least ``head_min`` and at most ``max_items`` of them; other items are
        never recommended. ``head_snr = 0`` with a catalogue of at most
        ``max_items`` items skips the selection (and its count release).
    count_budget_fraction
        Share of the counts-and-Gram rate (Σ 1/z² after the length histogram) spent on the
        head-selection counts. Default (``None``): chosen after the histogram from its noisy
        user count n̂, ``0.1 × 8000 / (n̂·ε)`` within [0.1, 0.75]
        (:func:`~privrec.models.dp_rules.count_share`; 0.1 without a histogram): with few
        users × ε the Gram's pair statistics stay below the noise and the counts carry the
        ranking. Chosen on validation splits (``benchmarks/results/dpease_split.md``).
    count_prior
        Whether the head-selection counts join the Gram diagonal in the popularity prior
        (:func:`popularity_prior`, inverse-variance weights). Default (``None``): when the
        counts got at least half of the pair's rate — below that, the head's counts, selected
        from the same noise, are biased upward enough to hurt (validation splits).
    popularity_blend
        β: scores are the row-standardised EASE scores plus β × the
        standardised log popularity from the released Gram diagonal
        (:func:`privrec.models.private.blend_popularity`). Default (``None``):
        ε-aware, larger at small ε (picked on validation data).
    popularity_shrinkage
        s: user u's blend weight is ``β + s / n_u`` (their own history length
        n_u); default ``32 β / m`` with m the private median history length
        (:func:`privrec.models.dp_rules.resolve_shrinkage`).
    popularity_fallback
        With a head selected from noisy counts (default): the default β is
        divided by the fraction ρ of the head whose noisy count clears the
        ``head_snr`` threshold (:func:`privrec.models.dp_rules.low_signal_blend`,
        at most 10; the shrinkage, ∝ β, follows), so the ranking falls back
        towards the popularity prior as the Gram's signal-to-noise drops
        (small n·ε); ρ = 1 leaves β as it was. Post-processing of the released
        counts and σ: no privacy cost. ``False`` gives the model without it.
        Chosen on validation splits only (Recall@20, 3 noise draws, user-level
        ε = 1, without → with the rule, DPPopularity in brackets):
        movietweetings-100k 0.2697 → 0.2734 (0.2736), the median-5 synthetic
        set 0.1924 → 0.1937 (0.1927), ml-100k 0.1425 → 0.1529 (0.2060),
        gowalla-lightgcn 0.0324 → 0.0324 (0.0288); ml-1m-implicit-r3 at ε = 1
        and every set at ε = 5 have ρ = 1 (unchanged). Also averaging the Gram
        diagonal with the released counts as the prior was tried and dropped:
        with the β rule it lost 0.0010 on gowalla and 0.0011 on the synthetic
        set (``benchmarks/bench_short_history.py --validation``).
    Privacy
    -------
    Mechanism: with the data-adaptive defaults, first a noisy history-length
    histogram (sensitivity 1 per user, √2 per interaction; event
    ``GaussianDpEvent(z_l)``), from which B, C, the shrinkage and the count
    share are read (post-processing); then, when a head is selected, Gaussian
    noisy counts (sensitivity √B / 1, multiplier z_c) and symmetric Gaussian
    noise on the bounded Gram matrix of the head (sensitivity C under the user
    unit, √(2(2B−1)) under the interaction unit; add/remove neighbouring;
    multiplier z_g), with ``1/z_c² + 1/z_g² = 1/z_r²``: for every histogram
    output this adaptively composed pair is (1/z_r)-GDP (Gaussian DP
    composition), which one event ``GaussianDpEvent(z_r)`` accounts tightly
    (:class:`EaseBudget`; without a head selection the Gram matrix alone,
    z_g = z_r). z_l and z_r are calibrated jointly, before
    any noise, so the composed event meets (ε, δ). Released: the head set, the
    noisy Gram matrix and the EASE weights computed from it. The head size, the
    default λ and β depend only on the noisy counts, σ and ε (post-processing),
    and so does the popularity prior (the released Gram diagonal, joined by the
    released counts). A user's scores ``x_u B`` use that user's own history
    only (joint DP).
    """

    name = "dpease"
    Config = DPEASEConfig
    mechanism_name = "DPEASE (noisy item Gram matrix)"

    weights_: np.ndarray
    head_items_: np.ndarray
    item_popularity_: np.ndarray
    noise_multiplier_: float
    regularization_: float
    popularity_blend_: float
    popularity_shrinkage_: float
    signal_fraction_: float
    count_budget_fraction_: float
    count_noise_multiplier_: float
    count_prior_: bool

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user", "interaction"],
        regularization: float | None = None,
        reg_scale: float = REG_SCALE,
        max_contribution: float | None = None,
        max_per_user: int | None = None,
        bound_quantile: float = 0.75,
        length_budget_fraction: float = 0.05,
        max_items: int = 5000,
        head_snr: float = HEAD_SNR,
        head_min: int = 100,
        count_budget_fraction: float | None = None,
        count_prior: bool | None = None,
        popularity_blend: float | None = None,
        popularity_shrinkage: float | None = None,
        popularity_fallback: bool = True,
        accountant: Literal["pld", "rdp"] = "pld",
        seed: int | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.unit = unit
        self.regularization = regularization
        self.reg_scale = reg_scale
        self.max_contribution = max_contribution
        self.max_per_user = max_per_user
        self.bound_quantile = bound_quantile
        self.length_budget_fraction = length_budget_fraction
        self.max_items = max_items
        self.head_snr = head_snr
        self.head_min = head_min
        self.count_budget_fraction = count_budget_fraction
        self.count_prior = count_prior
        self.popularity_blend = popularity_blend
        self.popularity_shrinkage = popularity_shrinkage
        self.popularity_fallback = popularity_fallback
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
        with self._unchanged_on_failure():  # the catalogue too
            if item_ids is not None:
                self.with_catalogue(item_ids)
            return super().fit(interactions)

    def _fit(self, data: Interactions, config: DPEASEConfig) -> None:
        if data.n_items == 0:  # else LAPACK refuses an empty Gram matrix (untyped, on stderr)
            raise DataError("DPEASE needs at least one item", field="items", found=0)
        budget, rng = self._begin(data, config)
        plan = EaseBudget.calibrate(config, data.n_items, budget)
        self._plan(plan.planned())
        profile = None
        if plan.z_len > 0:
            hist = noisy_length_histogram(data.matrix, config.unit, plan.z_len, rng)
            self._spend(LENGTHS_LABEL, gaussian_event(plan.z_len))
            profile = LengthProfile(
                hist, plan.z_len * length_sensitivity(config.unit), data.n_items
            )
        bound = resolve_bound(config.max_per_user, profile, config.bound_quantile, floor=1)
        c_max = resolve_contribution(config.max_contribution, profile)
        self.max_per_user_, self.max_contribution_ = bound, c_max
        sens_g = gram_sensitivity(config.unit, c_max, bound)
        split = plan.split(config, profile)
        z_count, z_gram = split.z_count, split.z_gram
        m = data.matrix
        counts = None
        if plan.restrict:
            raw, sens = bounded_counts(m, config.unit, bound, rng)
            noisy = gaussian(raw, z_count, sens, rng)
            head, n_signal = ease_head(noisy, config.head_snr * z_gram * sens_g, config)
            counts = NoisyCounts(noisy[head], z_count * sens, n_signal)
            m = sp.csr_matrix(m[:, head])
        else:
            head = np.arange(data.n_items)
        check_ease_memory(len(head), None, "DPEASE")
        gram, sens_g = bounded_gram(m, config.unit, c_max, bound, rng)
        noisy_gram = symmetric_gaussian(gram, z_gram, sens_g, rng)
        del gram
        self._spend(*plan.spent_pair())
        reg = resolve_ease_regularization(
            config.regularization, float(z_gram * sens_g), len(head), config.reg_scale
        )
        self.regularization_ = reg
        # the diagonal of the released Gram matrix is a (bounded, noisy) item count: the
        # popularity prior and the cold-start ranking, at no extra privacy cost
        prior = np.diag(noisy_gram).copy()
        self.weights_ = ease_from_gram(noisy_gram, reg, overwrite=True)
        self.head_items_ = head.astype(np.int64)
        self.noise_multiplier_ = float(z_gram)
        set_popularity(self, config, profile, NoisyCounts(prior, z_gram * sens_g), counts, split)
        self._finish(
            config,
            released=["the noisy item Gram matrix", "EASE item-item weights derived from it"]
            + (split.released(self.count_prior_) if plan.restrict else []),
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
        scores = np.asarray(sub @ self.weights_, dtype=np.float32)
        if self.popularity_blend_ > 0:
            # a user without history has constant (zero) scores: the popularity ranking
            beta = user_blend(
                self.popularity_blend_, self.popularity_shrinkage_, np.diff(sub.indptr)
            )
            prior = blend_popularity(
                np.zeros((1, len(self.head_items_))), self.item_popularity_, 1.0
            )
            out[:, self.head_items_] = blend_popularity(scores, self.item_popularity_, 0.0)
            out[:, self.head_items_] += beta * prior
            return out
        out[:, self.head_items_] = scores
        cold = np.diff(sub.indptr) == 0
        if cold.any():
            out[np.ix_(cold, self.head_items_)] = self.item_popularity_
        return out

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._score_histories(self.user_items_[users])

    @classmethod
    def _file_layout(cls, config: Any, n_items: int) -> FileLayout:
        # the h × h weights are released noise: dense, so the ratio bound applies
        return FileLayout(
            {
                "head_items": ArraySpec(("h",), kinds="iu"),
                "weights": ArraySpec(("h", "h")),
                "item_popularity": ArraySpec(("h",), sparse=True),
                "noise_multiplier": ArraySpec(()),
                "popularity_blend": ArraySpec((), optional=True),
                "popularity_shrinkage": ArraySpec((), optional=True),
            },
            bounds={"h": n_items},
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "weights": self.weights_,
            "head_items": self.head_items_,
            "item_popularity": self.item_popularity_,
            "noise_multiplier": np.asarray(self.noise_multiplier_),
            "popularity_blend": np.asarray(self.popularity_blend_),
            "popularity_shrinkage": np.asarray(self.popularity_shrinkage_),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        n = self._known_n_items()
        self.head_items_ = read_head_items(arrays, n)
        h = len(self.head_items_)
        self.weights_ = check_array(arrays, "weights", kind="f", shape=(h, h))
        self.item_popularity_ = check_array(arrays, "item_popularity", kind="f", shape=(h,))
        self.noise_multiplier_ = float(
            check_array(arrays, "noise_multiplier", kind="f", shape=(), low=0)
        )
        # files older than the blend read as 0: see read_blend_state
        self.popularity_blend_, self.popularity_shrinkage_ = read_blend_state(arrays)


class NoisyCounts(NamedTuple):
    """Released noisy per-item counts (a Gram diagonal or the head-selection counts) and their
    noise std; ``n_signal``: how many cleared the head threshold (head-selection counts only)."""

    values: np.ndarray
    std: float
    n_signal: int | None = None


def popularity_prior(diagonal: NoisyCounts, counts: NoisyCounts | None) -> np.ndarray:
    """The popularity prior over the head: the Gram diagonal, joined by the head counts if any.

    Both are noisy item counts — the diagonal weighted by ``min(1, C / n_u)``, the counts by
    the B-item sample — so the counts are put on the diagonal's scale (the ratio of their
    sums) and the two are averaged with inverse-variance weights: the prior follows whichever
    release got the larger share of the rate. Where no usable scale or weight comes out
    (totals swamped by noise, a zero or non-finite std) it is the diagonal alone.
    Post-processing of released values only.
    """
    d = np.asarray(diagonal.values, dtype=np.float64)
    if counts is None:
        return d
    c = np.asarray(counts.values, dtype=np.float64)
    total_c, total_d = float(np.sum(c)), float(np.sum(d))
    with np.errstate(all="ignore"):
        scale = total_d / total_c if total_c > 0 and total_d > 0 else math.nan
        # the counts' weight relative to the diagonal's: var_d / (var_d + scale² var_c)
        ratio = (scale * counts.std / diagonal.std) ** 2 if diagonal.std > 0 else math.nan
        weight = 1.0 / (1.0 + ratio)
        joined = weight * scale * c + (1.0 - weight) * d
    if not (math.isfinite(weight) and counts.std > 0 and np.all(np.isfinite(joined))):
        return d
    return np.asarray(joined)


def set_popularity(
    model: DPEASE,
    config: DPEASEConfig,
    profile: LengthProfile | None,
    diagonal: NoisyCounts,
    counts: NoisyCounts | None,
    split: PairSplit,
) -> None:
    """Set the popularity prior, β, the shrinkage, the head's signal fraction and the split of
    ``model``.

    ``diagonal`` is the released Gram matrix's diagonal; ``counts`` the released head-selection
    counts of the head items (``None`` without a head selection), joined into the prior by
    :func:`popularity_prior` when ``config.count_prior`` says so (default: when ``split`` gave
    the counts at least :data:`COUNT_PRIOR_SHARE` of the pair's rate). With ``popularity_fallback``
    the default β is raised as the fraction of the head above the noise drops
    (:func:`~privrec.models.dp_rules.low_signal_blend`). Warns
    (:func:`~privrec.models.dp_rules.small_data_warning`) when the noisy user count × ε is
    small. Post-processing of accounted releases only. Shared by the single-machine fit and the
    engine's (:mod:`privrec.engine.fitting`), so both give the same model.
    """
    if profile is not None and PrivacyUnit(config.unit) is PrivacyUnit.USER:
        small_data_warning("DPEASE", profile.n_users, config.epsilon)
    n_head = len(diagonal.values)
    n_signal = None if counts is None else counts.n_signal
    beta = ease_blend(
        config.popularity_blend, config.epsilon, config.popularity_fallback, n_signal, n_head
    )
    model.count_budget_fraction_, model.count_noise_multiplier_ = split.share, split.z_count
    join = config.count_prior
    if join is None:  # the counts join when they got at least half of the pair's rate
        join = split.share >= COUNT_PRIOR_SHARE
    model.count_prior_ = bool(join and counts is not None)
    prior = popularity_prior(diagonal, counts if model.count_prior_ else None)
    model.signal_fraction_ = 1.0 if n_signal is None else min(1.0, n_signal / max(n_head, 1))
    model.item_popularity_ = prior.astype(np.float32)
    model.popularity_blend_ = beta
    model.popularity_shrinkage_ = resolve_shrinkage(
        config.popularity_shrinkage,
        config.popularity_blend,
        profile,
        _SHRINKAGE * beta,  # DPEASE's fades with its β (chosen so)
    )


def ease_head(noisy: np.ndarray, threshold: float, config: DPEASEConfig) -> tuple[np.ndarray, int]:
    """The head (sorted item indices) read from noisy counts, and how many cleared ``threshold``.

    The items whose noisy count reaches ``threshold`` (``head_snr`` × the Gram noise std), at
    least ``head_min`` and at most ``max_items`` of them, by noisy count. Post-processing.
    """
    n_signal = int(np.count_nonzero(noisy >= threshold))
    n_head = min(max(n_signal, config.head_min), config.max_items, len(noisy))
    return np.sort(np.argsort(-noisy, kind="stable")[:n_head]), n_signal


class PairSplit(NamedTuple):
    """How the counts-and-Gram pair's rate was split (:meth:`EaseBudget.split`)."""

    share: float
    z_count: float
    z_gram: float

    def released(self, joined: bool) -> list[str]:
        """What the head selection releases; ``joined``: the counts are in the prior."""
        out = [
            "the head item set chosen from noisy counts (count noise multiplier "
            f"{self.z_count:.4g}, Gram {self.z_gram:.4g}: {self.share:.3g} of the pair's rate "
            "to the counts)"
        ]
        if joined:
            out.append(
                "the popularity prior: the Gram diagonal joined with the head's noisy counts"
            )
        return out


@dataclass(frozen=True)
class EaseBudget:
    """DPEASE's calibrated noise: the length histogram's multiplier, then the pair's.

    The budget is met by at most two Gaussian events: the history-length histogram
    (``z_len``, only with the data-adaptive bound) and one of multiplier ``z_rest`` that
    covers the head-selection counts and the Gram matrix together. Their split is chosen
    after the histogram (:meth:`split`, from its noisy user count), which is valid because
    for every histogram output the two releases have multipliers with
    ``1/z_count² + 1/z_gram² = 1/z_rest²``: adaptively composed Gaussian mechanisms whose
    parameters are fixed given the earlier outputs are GDP with the summed μ² (Dong, Roth &
    Su 2022), so the pair is (1/z_rest)-GDP — the privacy curve of the
    ``GaussianDpEvent(z_rest)`` announced before any noise is drawn, tightly.
    """

    z_len: float
    z_rest: float
    restrict: bool

    @classmethod
    def calibrate(cls, config: DPEASEConfig, n_items: int, budget: Any) -> EaseBudget:
        """Calibrate to ``budget``; ``n_items`` decides whether a head is selected."""
        restrict = n_items > config.max_items or config.head_snr > 0
        f_len = config.length_budget_fraction if config.max_per_user is None else 0.0
        given = config.count_budget_fraction
        most = COUNT_SHARE_MAX if given is None else given
        if (1.0 - f_len) * (1.0 - (most if restrict else 0.0)) <= _MIN_GRAM_SHARE:
            raise ConfigError(  # before anything is charged: the split is known up to the rule
                "length_budget_fraction and count_budget_fraction leave the Gram matrix at most "
                f"{_MIN_GRAM_SHARE:.0%} of the privacy rate: lower them"
            )
        shares = ([f_len] if f_len > 0 else []) + [1.0 - f_len]
        z_eff = calibrate(
            budget,
            lambda z: compose([gaussian_event(z / math.sqrt(f)) for f in shares]),
            kind=config.accountant,
            unit=config.unit,
        )
        z_len = z_eff / math.sqrt(f_len) if f_len > 0 else 0.0
        return cls(z_len, z_eff / math.sqrt(1.0 - f_len), restrict)

    def spent_pair(self) -> tuple[str, Any]:
        """The pair's label and event, as :meth:`planned` announces it."""
        return (PAIR_LABEL if self.restrict else GRAM_LABEL), gaussian_event(self.z_rest)

    def planned(self) -> list[SpentEvent]:
        lengths = [SpentEvent(LENGTHS_LABEL, gaussian_event(self.z_len))] if self.z_len else []
        return [*lengths, SpentEvent(*self.spent_pair())]

    def split(self, config: DPEASEConfig, profile: LengthProfile | None) -> PairSplit:
        """The counts' share of the pair's rate and the two multipliers.

        ``count_budget_fraction`` when given, else :func:`~privrec.models.dp_rules.count_share`
        of the noisy n·ε (post-processing of the released histogram). Without a head
        selection the Gram matrix gets the whole rate.
        """
        if not self.restrict:
            return PairSplit(0.0, 0.0, self.z_rest)
        share = count_share(config.count_budget_fraction, profile, config.epsilon)
        return PairSplit(
            share, self.z_rest / math.sqrt(share), self.z_rest / math.sqrt(1.0 - share)
        )


def ease_blend(
    blend: float | None, epsilon: float, fallback: bool, n_signal: int | None, n_head: int
) -> float:
    """DPEASE's β: the given one, else the ε rule raised by the low-signal fallback.

    With ``fallback`` and a head chosen from noisy counts (``n_signal`` of its ``n_head``
    items clearing the threshold) the ε rule's β is divided by their fraction
    (:func:`~privrec.models.dp_rules.low_signal_blend`). Shared by central and cross-silo
    DPEASE; post-processing of the released counts and σ.
    """
    beta = resolve_ease_blend(blend, epsilon)
    if fallback and blend is None and n_signal is not None:
        beta = low_signal_blend(beta, n_signal, n_head)
    return beta


def resolve_ease_blend(blend: float | None, epsilon: float) -> float:
    """Default β of DPEASE's popularity blend: larger at small ε (picked on validation data)."""
    if blend is not None:
        return float(blend)
    if epsilon < 2.0:
        return 1.0
    return 0.5 if epsilon < 5.0 else 0.25
