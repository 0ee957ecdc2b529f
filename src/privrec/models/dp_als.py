"""DPALS: user-level differentially private alternating least squares (joint DP).

Chien et al. (ICML 2021, "Private Alternating Least Squares") and Krichene et
al. (ICML 2023, adaptive per-item weights): only the item factors are
released; each user's factors are solved from the released item factors and
that user's own data, and are never released (the "billboard" model of joint
differential privacy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import dp_accounting
import numpy as np
import numpy.typing as npt
import pydantic
import scipy.linalg
import scipy.sparse as sp
from numba import njit, prange

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, ModelFileError
from privrec.models.als_kernels import cg_half_step, cholesky_half_step, gramian, item_statistics
from privrec.models.base import check_array, register
from privrec.models.dp_popularity import bounded_counts
from privrec.models.private import (
    PrivateConfig,
    PrivateRecommender,
    blend_popularity,
    head_item_scores,
)
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.contribution import adaptive_weights, clip_rows, sample_per_user
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian, gaussian_event
from privrec.privacy.postprocessing import project_psd, psd_solve
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "DPALS",
    "DPALSSensitivity",
    "blend_popularity",
    "dpals_event",
    "exact_user_solve",
    "user_weights",
]

Method = Literal["uniform", "tail", "adaptive"]


class DPALSSensitivity(pydantic.BaseModel):
    """L2 sensitivities of the released statistics for one privacy unit (in absolute units)."""

    model_config = pydantic.ConfigDict(frozen=True)

    gram: float
    lhs: float
    rhs: float
    counts: float

    @classmethod
    def of(
        cls, unit: PrivacyUnit, clip_norm: float, max_per_user: int, count_sample: int
    ) -> DPALSSensitivity:
        """Sensitivities given the contribution bounds.

        USER (add/remove one user ``u`` whose clipped factors satisfy ‖x_u‖ ≤ Γ
        and whose weights satisfy Σ_j c_uj² ≤ B):

        * Gramian Σ_u x_u x_uᵀ: ‖x_u x_uᵀ‖_F = ‖x_u‖² ≤ Γ².
        * Per-item left-hand sides Σ_u c_uj x_u x_uᵀ, all items stacked:
          √(Σ_j c_uj² ‖x_u‖⁴) ≤ √B Γ².
        * Per-item right-hand sides Σ_u c_uj x_u: √(Σ_j c_uj² ‖x_u‖²) ≤ √B Γ.
        * Item counts over ≤ count_sample sampled items per user: √count_sample.

        INTERACTION (one interaction of user ``u`` added or removed): ``u``'s
        factors are solved from all of ``u``'s data, so the whole of ``u``'s
        contribution may change — from one bounded value to another — which
        doubles the first three bounds; the count sample may swap one item
        (√2). Interaction-level privacy therefore saves nothing here.
        """
        f = 2.0 if unit is PrivacyUnit.INTERACTION else 1.0
        b = math.sqrt(max_per_user)
        counts = math.sqrt(2.0) if unit is PrivacyUnit.INTERACTION else math.sqrt(count_sample)
        return cls(
            gram=f * clip_norm**2, lhs=f * b * clip_norm**2, rhs=f * b * clip_norm, counts=counts
        )


def dpals_event(
    sigma: float,
    iterations: int,
    max_per_user: int,
    ratios: tuple[float, float, float, float],
) -> dp_accounting.DpEvent:
    """The whole training's accounting event for noise scale σ.

    Per step, three Gaussian releases with multipliers ``r0·σ`` (Gramian),
    ``r1·σ/√B`` (left-hand sides) and ``r2·σ/√B`` (right-hand sides) — the
    noise standard deviations are ``r0·σ·Γ²``, ``r1·σ·Γ²`` and ``r2·σ·Γ`` against
    sensitivities ``Γ²``, ``√B Γ²`` and ``√B Γ`` — composed over the
    ``iterations`` steps, plus one noisy-count release with multiplier ``r3·σ``
    (``count_stddev / √count_sample``).
    """
    r0, r1, r2, r3 = ratios
    b = math.sqrt(max_per_user)
    step = compose(
        [gaussian_event(r0 * sigma), gaussian_event(r1 * sigma / b), gaussian_event(r2 * sigma / b)]
    )
    return compose(
        [gaussian_event(r3 * sigma), dp_accounting.SelfComposedDpEvent(step, iterations)]
    )


def dpals_releases(
    sigma: float, iterations: int, max_per_user: int, ratios: tuple[float, float, float, float]
) -> list[SpentEvent]:
    """The labelled releases of one training, in order (:func:`dpals_event` is their composition).

    Announced before any noise is drawn (the write-ahead charge of :mod:`privrec.governance`);
    ``fit`` then records exactly these as it makes them.
    """
    r0, r1, r2, r3 = ratios
    b = math.sqrt(max_per_user)
    out = [SpentEvent("noisy item counts", gaussian_event(r3 * sigma))]
    for step in range(iterations):
        out += [
            SpentEvent(f"step {step + 1}: noisy Gramian", gaussian_event(r0 * sigma)),
            SpentEvent(
                f"step {step + 1}: noisy item left-hand sides", gaussian_event(r1 * sigma / b)
            ),
            SpentEvent(
                f"step {step + 1}: noisy item right-hand sides", gaussian_event(r2 * sigma / b)
            ),
        ]
    return out


class DPALSConfig(PrivateConfig):
    factors: int = pydantic.Field(default=32, ge=1, le=1024)
    iterations: int | None = pydantic.Field(default=None, ge=1, le=100)
    method: Method = "adaptive"
    max_per_user: int = pydantic.Field(default=100, ge=1)
    adaptive_exponent: float = pydantic.Field(default=0.5, ge=0, le=2)
    clip_norm: float = pydantic.Field(default=0.3, gt=0, allow_inf_nan=False)
    regularization: float | None = pydantic.Field(default=None, ge=0, allow_inf_nan=False)
    reg_exponent: float = pydantic.Field(default=0.0, ge=0, le=2)
    user_regularization: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    alpha0: float = pydantic.Field(default=2.0, ge=0, allow_inf_nan=False)
    head_fraction: float | None = pydantic.Field(default=None, gt=0, le=1)
    head_snr: float = pydantic.Field(default=7.0, ge=0, allow_inf_nan=False)
    head_min: int = pydantic.Field(default=300, ge=1)
    count_sample: int | None = pydantic.Field(default=None, ge=1)
    gram_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    lhs_noise_ratio: float = pydantic.Field(default=5.0, gt=0, allow_inf_nan=False)
    rhs_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    count_noise_ratio: float = pydantic.Field(default=0.2, gt=0, allow_inf_nan=False)
    init_scale: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    popularity_blend: float | None = pydantic.Field(default=None, ge=0, le=10, allow_inf_nan=False)


@register
class DPALS(PrivateRecommender):
    """Differentially private ALS for implicit feedback, with per-item adaptive weights.

    Parameters
    ----------
    epsilon, delta, unit
        Budget and privacy unit (required).
    factors
        Embedding size k.
    iterations
        Number T of private item steps. Default (``None``): 2 below ε = 2, else 3
        (every step costs budget; at small ε a third step adds more noise than signal).
    method
        How a user's L2 budget B is spread over their items: ``"uniform"``
        (≤ B random items, weight 1), ``"tail"`` (≤ B least popular items by
        noisy counts, weight 1) or ``"adaptive"`` (all the user's items, weights
        ``c_uj ∝ count_j^(−μ)`` with Σ_j c_uj² = B: tail items get more).
    max_per_user
        B, the per-user weight budget. Since σ grows like √B when the item
        statistics dominate the budget, B mainly moves budget between the item
        statistics and the counts/Gramian; on sparse data with short histories
        (gowalla) B = 30 was better on validation, on ml-1m B = 100.
    adaptive_exponent
        μ of the adaptive weights.
    clip_norm
        Γ: user factors are clipped to this L2 norm before they touch the
        statistics. With the default user ridge, Γ = 0.3 clips (normalises)
        nearly every user.
    regularization, reg_exponent
        Item-step ridge ``λ (1 + ñ_j)^ν`` with noisy counts ñ_j. Default
        (``None``): λ = 400·σ·Γ² (at least 1), proportional to the noise on the
        statistics (:func:`resolve_regularization`), which adapts it to ε.
    user_regularization
        Ridge of the (non-private) user solves.
    alpha0
        Weight of unobserved cells (iALS); it multiplies the noisy Gramian,
        whose signal-to-noise ratio is far higher than the per-item statistics'.
    head_fraction
        Train on this fraction of the catalogue, the most popular by noisy
        counts; other items are never recommended. Default (``None``): an
        ε-aware rule, :func:`select_head` — every item whose noisy count is at
        least ``head_snr`` × the right-hand-side noise std (r2·σ), but never
        fewer than ``head_min`` items.
    head_snr, head_min
        The automatic head rule's threshold and floor.
    count_sample
        Items per user sampled for the noisy counts (their sensitivity is
        √count_sample). Default (``None``): B, the same per-user bound as the
        item statistics — on gowalla (short histories) B = 30 with 30 sampled
        items gave markedly better adaptive weights than 100 sampled items.
    gram_noise_ratio, lhs_noise_ratio, rhs_noise_ratio, count_noise_ratio
        Relative noise (r0, r1, r2, r3) of the four releases; one scale σ is
        calibrated so the composition meets (ε, δ). Defaults (1, 5, 1, 0.2): the
        left-hand sides matter least once λ is large, so they get little budget
        (more noise); the counts drive head selection and the adaptive weights,
        so they get more than a uniform split would give them.
    popularity_blend
        β: a user's scores are their row-standardised factor scores plus β ×
        the standardised log noisy counts
        (:func:`privrec.models.private.blend_popularity`) — at small ε the
        released counts are far less noisy than the item factors. Default
        (``None``): :func:`resolve_popularity_blend` (0.3 below ε = 2, 0.2
        below ε = 10, 0.1 from there), picked on validation data; 0 turns it off.

    Algorithm
    ---------
    Noisy counts → head items (ε-aware rule) → per-user weights → T steps of:
    user solves (warm-started conjugate gradient on the iALS user system, from
    the released item factors and the user's own row), clipping to Γ, noisy
    Gramian / left-hand sides / right-hand sides, and item solves
    ``(P(α0 G̃ + L̃_j) + λ_j I) y_j = r̃_j`` where P projects onto the PSD cone
    only when the regularised system is not positive definite
    (:func:`privrec.privacy.postprocessing.psd_solve`). Final user factors are
    exact (Cholesky) solves, so they match :meth:`fold_in`. Defaults were
    chosen on valid.txt of ml-1m-implicit-r3 and gowalla-lightgcn (train on
    train.txt), never on test; ``benchmarks/privacy_utility.py`` has the figures.

    Privacy
    -------
    Releases, per step t = 1..T: the Gramian Σ_u x_u x_uᵀ (+ symmetric
    Gaussian noise, std r0·σ·Γ²), the per-item left-hand sides Σ_u c_uj x_u
    x_uᵀ (+ symmetric noise, std r1·σ·Γ²) and right-hand sides Σ_u c_uj x_u
    (+ noise, std r2·σ·Γ); once, item counts over ≤ count_sample items per
    user (+ noise, std r3·σ·√count_sample). Noise is drawn from the ChaCha20
    generator in float32. Sensitivities and neighbouring relation:
    :meth:`DPALSSensitivity.of`. Events: :func:`dpals_event`. Everything
    downstream — head selection (from the noisy counts and σ only), the
    default λ and T (from ε and σ only), sampling and weights from noisy
    counts, PSD projection and item solves, and the popularity blend at
    scoring time (released counts and the user's own scores) — is
    post-processing. User factors
    are computed from the released item factors and each user's own data,
    never released: the guarantee is joint DP.
    """

    name = "dpals"
    Config = DPALSConfig
    mechanism_name = "DPALS (private item factors)"

    user_factors_: np.ndarray
    item_factors_: np.ndarray
    head_items_: np.ndarray
    noisy_counts_: np.ndarray
    noise_scale_: float
    iterations_: int
    regularization_: float
    popularity_blend_: float

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user", "interaction"],
        factors: int = 32,
        iterations: int | None = None,
        method: Method = "adaptive",
        max_per_user: int = 100,
        adaptive_exponent: float = 0.5,
        clip_norm: float = 0.3,
        regularization: float | None = None,
        reg_exponent: float = 0.0,
        user_regularization: float = 0.1,
        alpha0: float = 2.0,
        head_fraction: float | None = None,
        head_snr: float = 7.0,
        head_min: int = 300,
        count_sample: int | None = None,
        gram_noise_ratio: float = 1.0,
        lhs_noise_ratio: float = 5.0,
        rhs_noise_ratio: float = 1.0,
        count_noise_ratio: float = 0.2,
        init_scale: float = 0.1,
        popularity_blend: float | None = None,
        accountant: Literal["pld", "rdp"] = "pld",
        seed: int | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.unit = unit
        self.factors = factors
        self.iterations = iterations
        self.method = method
        self.max_per_user = max_per_user
        self.adaptive_exponent = adaptive_exponent
        self.clip_norm = clip_norm
        self.regularization = regularization
        self.reg_exponent = reg_exponent
        self.user_regularization = user_regularization
        self.alpha0 = alpha0
        self.head_fraction = head_fraction
        self.head_snr = head_snr
        self.head_min = head_min
        self.count_sample = count_sample
        self.gram_noise_ratio = gram_noise_ratio
        self.lhs_noise_ratio = lhs_noise_ratio
        self.rhs_noise_ratio = rhs_noise_ratio
        self.count_noise_ratio = count_noise_ratio
        self.init_scale = init_scale
        self.popularity_blend = popularity_blend
        self.accountant = accountant
        self.seed = seed

    # ----------------------------------------------------------------- fit
    def fit(
        self,
        interactions: Interactions | sp.spmatrix | sp.sparray,
        *,
        progress: Callable[[int, int], None] | None = None,
        item_ids: npt.ArrayLike | None = None,
    ) -> DPALS:
        """Fit; ``progress(step, total)`` is called after each private item step.

        ``item_ids`` fixes the item catalogue so that nothing about it is learned from the
        data (:meth:`~privrec.models.base.Recommender.with_catalogue`).
        """
        if item_ids is not None:
            self.with_catalogue(item_ids)
        self._progress = progress
        try:
            super().fit(interactions)
        finally:
            self._progress = None
        return self

    def _ratios(self, c: DPALSConfig) -> tuple[float, float, float, float]:
        return (c.gram_noise_ratio, c.lhs_noise_ratio, c.rhs_noise_ratio, c.count_noise_ratio)

    def _fit(self, data: Interactions, config: Any) -> None:
        c: DPALSConfig = config
        budget, rng = self._begin(data, c)
        count_sample = c.max_per_user if c.count_sample is None else c.count_sample
        sens = DPALSSensitivity.of(c.unit, c.clip_norm, c.max_per_user, count_sample)
        ratios = self._ratios(c)
        iterations = resolve_iterations(c.iterations, c.epsilon)
        # σ for the user unit; the interaction unit's doubled sensitivities are applied to the noise.
        sigma = calibrate(
            budget,
            lambda s: dpals_event(s, iterations, c.max_per_user, ratios),
            kind=c.accountant,
            unit=c.unit,
        )
        self.noise_scale_ = sigma
        self.iterations_ = iterations
        self._plan(dpals_releases(sigma, iterations, c.max_per_user, ratios))
        x = sp.csr_matrix(data.matrix, copy=True)
        x.data[:] = 1.0
        n_items = x.shape[1]

        # 1. noisy counts (one release), used for head selection, sampling, weights, regularisation
        counts, _ = bounded_counts(x, c.unit, count_sample, rng)
        z_counts = ratios[3] * sigma
        noisy_counts = gaussian(counts, z_counts, sens.counts, rng)
        self._spend("noisy item counts", gaussian_event(z_counts))
        head = select_head(
            noisy_counts,
            c.head_fraction,
            head_threshold(c.head_snr, ratios[2] * sigma, count_sample),
            c.head_min,
        )
        xh = sp.csr_matrix(x[:, head])
        xh.sort_indices()
        counts_h = noisy_counts[head]
        n_head = len(head)
        reg = resolve_regularization(c.regularization, sigma, c.clip_norm)
        self.regularization_ = reg

        # 2. bounded per-user weights c_uj (Σ_j c_uj² ≤ B)
        weights = user_weights(xh, counts_h, c.method, c.max_per_user, c.adaptive_exponent, rng)

        # 3. T private item steps
        k = c.factors
        init_rng = np.random.default_rng(None if c.seed is None else c.seed + 1)  # data-independent
        y = (init_rng.standard_normal((n_head, k)) * (c.init_scale / math.sqrt(k))).astype(
            np.float64
        )
        reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
        b = math.sqrt(c.max_per_user)
        xs = np.zeros((xh.shape[0], k), dtype=np.float32)  # (1 + α0)·user factors, CG warm start
        for step in range(iterations):
            xs = _user_cg(xh, y, c.alpha0, c.user_regularization, xs, 8 if step == 0 else 4)
            u = clip_rows(xs / np.float32(1.0 + c.alpha0), c.clip_norm)
            g = _symmetric_noise(gramian(u.astype(np.float64)), ratios[0] * sigma * sens.gram, rng)
            lhs, rhs = item_statistics(weights, u, weights.data, alpha0=0.0)
            # multipliers r1·σ/√B against sensitivities √B Γ² (×2 for interactions): std r1·σ·Γ²·f
            lhs = _symmetric_noise(lhs, ratios[1] * sigma / b * sens.lhs, rng)
            rhs = rhs + _noise(rhs.shape, ratios[2] * sigma / b * sens.rhs, rng)
            self._spend(f"step {step + 1}: noisy Gramian", gaussian_event(ratios[0] * sigma))
            self._spend(
                f"step {step + 1}: noisy item left-hand sides",
                gaussian_event(ratios[1] * sigma / b),
            )
            self._spend(
                f"step {step + 1}: noisy item right-hand sides",
                gaussian_event(ratios[2] * sigma / b),
            )
            g = project_psd(g)
            y, _ = psd_solve(c.alpha0 * g, lhs, rhs, reg_items, _PROJECT)
            if self._progress is not None:
                self._progress(step + 1, iterations)
        self.item_factors_ = np.zeros((n_items, k), dtype=np.float32)
        self.item_factors_[head] = y.astype(np.float32)
        self.head_items_ = head.astype(np.int64)
        self.noisy_counts_ = noisy_counts.astype(np.float32)
        self._fit_alpha0 = c.alpha0
        self._fit_user_reg = c.user_regularization
        self.popularity_blend_ = resolve_popularity_blend(c.popularity_blend, c.epsilon)
        self.user_factors_ = self._fold(xh).astype(np.float32)
        self._finish(
            c,
            released=[
                "item factors (all of them, after the last private step)",
                "noisy item counts and the head item set",
                "the per-step noisy statistics (Gramian, per-item left- and right-hand sides)",
            ],
            not_released=[
                "user factors (each solved from the released item factors and that user's own data)",
                "each user's recommendations (computed from their own data, shown only to them)",
            ],
            threat_model=(
                "joint DP ('billboard' model): the released item factors are (ε, δ)-DP with respect to "
                f"any one {c.unit.value}; your own recommendations use your own data, so joint DP "
                "protects you against every other user and any observer of the released model, not "
                "against someone who sees your own list. The training server is trusted (central DP)."
            ),
        )

    def _fold(self, user_items_head: sp.csr_matrix) -> np.ndarray:
        y = self.item_factors_[self.head_items_].astype(np.float64)
        return exact_user_solve(user_items_head, y, self._fit_alpha0, self._fit_user_reg)

    # ------------------------------------------------------------- scoring
    def fold_in(self, user_items: Any) -> np.ndarray:
        """User factors from the released item factors and the given histories only."""
        from privrec.models.base import as_user_items

        self._check_fitted()
        hist = as_user_items(user_items, self.n_items_)
        return self._fold(sp.csr_matrix(hist[:, self.head_items_])).astype(np.float32)

    def _scores_from_factors(self, u: np.ndarray) -> np.ndarray:
        return head_item_scores(
            u, self.item_factors_, self.head_items_, self.noisy_counts_, self.popularity_blend_
        )

    def _score_users(self, users: np.ndarray) -> np.ndarray:
        return self._scores_from_factors(self.user_factors_[users])

    def _score_histories(self, user_items: sp.csr_matrix) -> np.ndarray:
        return self._scores_from_factors(self.fold_in(user_items))

    def _state(self) -> dict[str, np.ndarray]:
        # user factors are derived from user data and are not part of the release
        return {
            "item_factors": self.item_factors_,
            "head_items": self.head_items_,
            "noisy_counts": self.noisy_counts_,
            "noise_scale": np.asarray(self.noise_scale_),
            "fold": np.asarray([self._fit_alpha0, self._fit_user_reg]),
            "popularity_blend": np.asarray(self.popularity_blend_),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = check_array(
            arrays, "item_factors", kind="f", shape=(self._known_n_items(), None)
        )
        n = self.item_factors_.shape[0]
        head = check_array(arrays, "head_items", kind="iu", shape=(None,), low=0, high=n - 1)
        if len(head) == 0 or np.any(np.diff(head.astype(np.int64)) <= 0):
            raise ModelFileError(
                "head items must be non-empty, sorted and unique", field="state_head_items"
            )
        self.head_items_ = head.astype(np.int64)
        self.noisy_counts_ = check_array(arrays, "noisy_counts", kind="f", shape=(n,))
        self.noise_scale_ = float(check_array(arrays, "noise_scale", kind="f", shape=(), low=0))
        fold = check_array(arrays, "fold", kind="f", shape=(2,), low=0)
        if fold[1] <= 0:
            raise ModelFileError(
                "the user ridge must be positive", field="state_fold", found=float(fold[1])
            )
        self._fit_alpha0, self._fit_user_reg = float(fold[0]), float(fold[1])
        # files written before the blend existed scored with the factors alone
        self.popularity_blend_ = (
            float(check_array(arrays, "popularity_blend", kind="f", shape=(), low=0, high=10))
            if "popularity_blend" in arrays
            else 0.0
        )

    def _check_state(self) -> None:
        # a file's factors must have the width its parameters say
        check_array(
            self.item_factors_, "item_factors", kind="f", shape=(len(self.item_ids_), self.factors)
        )

    def _set_extra_meta(self, extra: dict[str, Any]) -> None:
        super()._set_extra_meta(extra)
        # recompute user factors for known users only when their data came with the file
        if self.user_items_.nnz:
            self.user_factors_ = self._fold(
                sp.csr_matrix(self.user_items_[:, self.head_items_])
            ).astype(np.float32)
        else:
            self.user_factors_ = np.zeros(
                (self.user_items_.shape[0], self.item_factors_.shape[1]), np.float32
            )


def resolve_iterations(iterations: int | None, epsilon: float) -> int:
    """Default T: 2 private steps below ε = 2 (each step costs budget), 3 from there on."""
    if iterations is not None:
        return iterations
    return 2 if epsilon < 2.0 else 3


def resolve_regularization(regularization: float | None, sigma: float, clip_norm: float) -> float:
    """Default item ridge λ = 400·σ·Γ² (at least 1): proportional to the noise on the statistics.

    The noisy left-hand sides carry noise of standard deviation ``r1·σ·Γ²`` per
    entry, so the ridge that keeps the item solves stable grows with σ; the
    factor 400 was fitted on validation data (ml-1m, gowalla) at ε ∈ {1, 5, 10}.
    It depends on σ only (data-independent), so it costs no privacy.
    """
    if regularization is not None:
        return float(regularization)
    return max(1.0, 400.0 * sigma * clip_norm**2)


def resolve_popularity_blend(blend: float | None, epsilon: float) -> float:
    """Default β of the popularity blend (see :func:`blend_popularity`): larger at small ε.

    The noisier the item factors, the more a ranking gains from the (far less
    noisy) released counts; the values were picked on validation data (ml-100k
    validation users, valid.txt of ml-1m-implicit-r3 and gowalla-lightgcn),
    never on test. Depends on ε only, so it costs no privacy.
    """
    if blend is not None:
        return float(blend)
    return (
        _BLEND_BELOW_2 if epsilon < 2.0 else (_BLEND_BELOW_10 if epsilon < 10.0 else _BLEND_ABOVE)
    )


_BLEND_BELOW_2, _BLEND_BELOW_10, _BLEND_ABOVE = 0.3, 0.2, 0.1


def head_threshold(head_snr: float, rhs_std: float, count_sample: int) -> float:
    """Noisy-count threshold of the automatic head rule: ``head_snr · r2σ · √(count_sample / 100)``.

    An item is trained when its count can rise above the right-hand-side noise
    (std ``r2·σ`` in units of Γ). Sampled counts shrink with the per-user
    sample, so the threshold does too; the √ scaling and ``head_snr = 7`` were
    fitted on validation data (ml-1m at 100 sampled items, gowalla at 30).
    From σ and public settings only: no privacy cost.
    """
    return head_snr * rhs_std * math.sqrt(count_sample / 100.0)


def select_head(
    noisy_counts: np.ndarray, fraction: float | None, threshold: float, minimum: int
) -> np.ndarray:
    """Head items from the noisy counts alone (post-processing), sorted by id.

    With ``fraction`` set: the ``ceil(fraction · n_items)`` largest noisy counts.
    Otherwise: every item whose noisy count is at least ``threshold`` (the
    model passes ``head_snr`` × the right-hand-side noise std, so an item is
    trained only when its statistics can rise above the noise), and never fewer
    than ``minimum`` items (or the whole catalogue when smaller).
    """
    n_items = len(noisy_counts)
    if fraction is not None:
        n_head = max(1, math.ceil(fraction * n_items))
    else:
        n_head = int(np.count_nonzero(noisy_counts >= threshold))
        n_head = min(n_items, max(n_head, minimum))
    return np.sort(np.argsort(-noisy_counts, kind="stable")[:n_head])


def user_weights(
    xh: sp.csr_matrix,
    counts: np.ndarray,
    method: str,
    max_per_user: int,
    adaptive_exponent: float,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Per-user weights ``c_uj`` with Σ_j c_uj² ≤ B, spread by ``method`` (see :class:`DPALS`).

    ``counts`` must be the released noisy counts of the columns of ``xh``.
    """
    if method == "uniform":
        return sample_per_user(xh, max_per_user, rng, "uniform")
    if method == "tail":
        return sample_per_user(xh, max_per_user, rng, "least_popular", counts)
    if method == "adaptive":
        return adaptive_weights(xh, np.maximum(counts, 1.0), adaptive_exponent, float(max_per_user))
    raise ConfigError(f"unknown method {method!r}")


_FEW_USERS = 4


def exact_user_solve(xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float) -> np.ndarray:
    """iALS user step: (α0 YᵀY + Σ_{j∈I_u} y_j y_jᵀ + λI) x_u = Σ_{j∈I_u} y_j, exact (Cholesky kernel).

    Float64 throughout; the kernel forms Σ y yᵀ with BLAS ``syrk`` per user and
    factorises with LAPACK, so BLAS is held to one thread inside it.
    """
    from threadpoolctl import threadpool_limits

    n_users, k = xh.shape[0], y.shape[1]
    out = np.zeros((n_users, k), dtype=np.float64)
    yy = np.ascontiguousarray(y, dtype=np.float64)
    if n_users <= _FEW_USERS:
        # A handful of users (a service folding in one request): the same system solved with
        # numpy/LAPACK directly. Starting the parallel kernel and scanning the loaded BLAS
        # libraries for threadpool_limits cost milliseconds; this costs microseconds.
        g = alpha0 * (yy.T @ yy)
        eye = reg * np.eye(k)
        for u in range(n_users):
            yi = yy[xh.indices[xh.indptr[u] : xh.indptr[u + 1]]]
            try:
                c = np.linalg.cholesky(g + yi.T @ yi + eye)
            except np.linalg.LinAlgError:
                continue  # not positive definite: the kernel leaves the row at zero too
            out[u] = scipy.linalg.cho_solve((c, True), yi.sum(axis=0))
        return out
    # The kernel solves (α0 G + Σ w y yᵀ + λI) x = Σ (α0 + w) y; with w = 1 the matrix is ours and the
    # right-hand side is (1 + α0) Σ y, so the solution is (1 + α0) times the one we want.
    w = np.ones(xh.nnz, dtype=np.float64)
    with threadpool_limits(1, "blas"):
        cholesky_half_step(
            xh.indptr.astype(np.int64, copy=False),
            xh.indices.astype(np.int32, copy=False),
            w,
            yy,
            gramian(yy),
            out,
            float(alpha0),
            float(reg),
            0.0,
        )
    out /= 1.0 + alpha0
    return out


_PROJECT: Literal["always", "if_indefinite"] = "if_indefinite"


def _noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. N(0, std²) in float32 (the statistics are float32; noise draws dominate otherwise)."""
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= np.float32(std)
    return out


def _symmetric_noise(stack: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``stack`` (``(..., k, k)``, symmetric) plus symmetric Gaussian noise of standard deviation ``std``.

    One draw per upper-triangle entry (diagonal included), mirrored below: the
    same distribution as :func:`privrec.privacy.mechanisms.symmetric_gaussian`
    (the release is a function of the noisy upper triangle, whose sensitivity is
    at most the Frobenius one), drawn in float32. Only the packed triangle is
    drawn — for a stack of matrices in parallel, from independent ChaCha20
    streams keyed by ``rng`` (:func:`_packed_normals`) — and one numba pass
    writes ``stack + noise`` with the mirroring (no copy-then-add).
    """
    k = stack.shape[-1]
    src = np.ascontiguousarray(stack, dtype=np.float32 if stack.ndim == 3 else np.float64)
    flat = src.reshape(-1, k, k)
    out = np.empty_like(flat)
    noise = _packed_normals(flat.shape[0], k * (k + 1) // 2, rng)
    _add_mirrored(flat, noise, out.dtype.type(std), out)
    return out.reshape(stack.shape)


def _packed_normals(n: int, per: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, per)`` i.i.d. N(0, 1) float32 draws, in parallel for large stacks.

    Drawing tens of millions of normals from one ChaCha20 stream is the
    slowest part of the noise. When ``rng`` is ChaCha-backed (the production
    and seeded generators of :mod:`privrec.privacy.randomness`) and the stack
    is large, it is cut into fixed blocks of rows, each drawn from a child
    ChaCha20 generator (20 rounds) whose 256-bit key is drawn from ``rng``
    itself — still CSPRNG output — by worker threads. The blocks do not depend
    on the thread count, so seeded runs reproduce on any machine. Other
    generators, and small stacks, draw from ``rng`` in one stream.
    """
    import numba
    from randomgen import ChaCha

    out = np.empty((n, per), dtype=np.float32)
    rows = max(1, _NOISE_BLOCK // max(per, 1))
    n_blocks = -(-n // rows)
    if n_blocks <= 1 or not isinstance(rng.bit_generator, ChaCha):
        rng.standard_normal(out.shape, dtype=np.float32, out=out)
        return out
    from concurrent.futures import ThreadPoolExecutor

    keys = rng.integers(0, 2**64, size=(n_blocks, 4), dtype=np.uint64)

    def fill(t: int) -> None:
        key = sum(int(w) << (64 * i) for i, w in enumerate(keys[t]))
        child = np.random.Generator(ChaCha(key=key, counter=0, rounds=20))
        child.standard_normal(dtype=np.float32, out=out[t * rows : (t + 1) * rows])

    with ThreadPoolExecutor(max(1, numba.get_num_threads())) as pool:
        list(pool.map(fill, range(n_blocks)))  # numpy draws release the GIL
    return out


# Normals per independently keyed block of _packed_normals (16 MB of float32).
_NOISE_BLOCK = 1 << 22


@njit(parallel=True, cache=True)
def _add_mirrored(stack: np.ndarray, noise: np.ndarray, std: np.floating, out: np.ndarray) -> None:
    """``out[j] = stack[j] + std · N_j`` with ``N_j`` symmetric, its upper triangle row by row from ``noise[j]``."""
    k = stack.shape[1]
    for j in prange(stack.shape[0]):
        t = 0
        for a in range(k):
            for b in range(a, k):
                v = std * noise[j, t]
                out[j, a, b] = stack[j, a, b] + v
                if a != b:
                    out[j, b, a] = stack[j, b, a] + v
                t += 1


def _user_cg(
    xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float, warm: np.ndarray, steps: int
) -> np.ndarray:
    """Training-time user step by warm-started conjugate gradient (the iALS user system).

    Returns ``(1 + α0)·x_u`` (the scaling of :func:`exact_user_solve`'s kernel) as
    float32; ``warm`` holds the previous step's values. Each user's solve uses
    only the released item factors and that user's own row.
    """
    yy = np.ascontiguousarray(y, dtype=np.float32)
    x = np.array(warm, dtype=np.float32, copy=True)
    cg_half_step(
        xh.indptr.astype(np.int64, copy=False),
        xh.indices.astype(np.int32, copy=False),
        np.ones(xh.nnz, dtype=np.float32),
        yy,
        gramian(yy),
        x,
        float(alpha0),
        float(reg),
        0.0,
        steps,
    )
    return x
