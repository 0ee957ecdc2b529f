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
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError
from privrec.models.als_kernels import cholesky_half_step, gramian, item_statistics
from privrec.models.base import register
from privrec.models.private import PrivateConfig, PrivateRecommender
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.contribution import adaptive_weights, clip_rows, sample_per_user
from privrec.privacy.mechanisms import gaussian, gaussian_event, symmetric_gaussian
from privrec.privacy.postprocessing import project_psd
from privrec.privacy.units import PrivacyUnit

__all__ = ["DPALS", "DPALSSensitivity", "dpals_event"]

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


class DPALSConfig(PrivateConfig):
    factors: int = pydantic.Field(default=32, ge=1, le=1024)
    iterations: int = pydantic.Field(default=3, ge=1, le=100)
    method: Method = "adaptive"
    max_per_user: int = pydantic.Field(default=100, ge=1)
    adaptive_exponent: float = pydantic.Field(default=0.5, ge=0, le=2)
    clip_norm: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    regularization: float = pydantic.Field(default=50.0, ge=0, allow_inf_nan=False)
    reg_exponent: float = pydantic.Field(default=0.0, ge=0, le=2)
    user_regularization: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    alpha0: float = pydantic.Field(default=0.05, ge=0, allow_inf_nan=False)
    head_fraction: float = pydantic.Field(default=1.0, gt=0, le=1)
    count_sample: int = pydantic.Field(default=100, ge=1)
    gram_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    lhs_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    rhs_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    count_noise_ratio: float = pydantic.Field(default=0.5, gt=0, allow_inf_nan=False)
    init_scale: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)


@register
class DPALS(PrivateRecommender):
    """Differentially private ALS for implicit feedback, with per-item adaptive weights.

    Parameters
    ----------
    epsilon, delta, unit
        Budget and privacy unit (required).
    factors, iterations
        Embedding size k and number T of private item steps.
    method
        How a user's L2 budget B is spread over their items: ``"uniform"``
        (≤ B random items, weight 1), ``"tail"`` (≤ B least popular items by
        noisy counts, weight 1) or ``"adaptive"`` (all the user's items, weights
        ``c_uj ∝ count_j^(−μ)`` with Σ_j c_uj² = B: tail items get more).
    max_per_user
        B, the per-user weight budget.
    adaptive_exponent
        μ of the adaptive weights.
    clip_norm
        Γ: user factors are clipped to this L2 norm before they touch the
        statistics.
    regularization, reg_exponent
        Item-step ridge ``λ (1 + ñ_j)^ν`` with noisy counts ñ_j; noise calls for
        a larger λ than non-private ALS.
    user_regularization
        Ridge of the (exact, non-private) user solves.
    alpha0
        Weight of unobserved cells (iALS).
    head_fraction
        Train on this fraction of the catalogue, the most popular by noisy
        counts; other items are never recommended.
    count_sample
        Items per user sampled for the noisy counts.
    gram_noise_ratio, lhs_noise_ratio, rhs_noise_ratio, count_noise_ratio
        Relative noise (r0, r1, r2, r3) of the four releases; one scale σ is
        calibrated so the composition meets (ε, δ).

    Privacy
    -------
    Releases, per step t = 1..T: the Gramian Σ_u x_u x_uᵀ (+ symmetric
    Gaussian noise, std r0·σ·Γ²), the per-item left-hand sides Σ_u c_uj x_u
    x_uᵀ (+ symmetric noise, std r1·σ·Γ², then projected to PSD) and
    right-hand sides Σ_u c_uj x_u (+ noise, std r2·σ·Γ); once, item counts
    over ≤ count_sample items per user (+ noise, std r3·σ·√count_sample).
    Sensitivities and neighbouring relation: :meth:`DPALSSensitivity.of`.
    Events: :func:`dpals_event`. Everything downstream — item solves, head
    selection, sampling and weights from noisy counts — is post-processing.
    User factors are computed from the released item factors and each user's
    own data, never released: the guarantee is joint DP.
    """

    name = "dpals"
    Config = DPALSConfig
    mechanism_name = "DPALS (private item factors)"

    user_factors_: np.ndarray
    item_factors_: np.ndarray
    head_items_: np.ndarray
    noisy_counts_: np.ndarray
    noise_scale_: float

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user", "interaction"],
        factors: int = 32,
        iterations: int = 3,
        method: Method = "adaptive",
        max_per_user: int = 100,
        adaptive_exponent: float = 0.5,
        clip_norm: float = 1.0,
        regularization: float = 50.0,
        reg_exponent: float = 0.0,
        user_regularization: float = 0.1,
        alpha0: float = 0.05,
        head_fraction: float = 1.0,
        count_sample: int = 100,
        gram_noise_ratio: float = 1.0,
        lhs_noise_ratio: float = 1.0,
        rhs_noise_ratio: float = 1.0,
        count_noise_ratio: float = 0.5,
        init_scale: float = 0.1,
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
        self.count_sample = count_sample
        self.gram_noise_ratio = gram_noise_ratio
        self.lhs_noise_ratio = lhs_noise_ratio
        self.rhs_noise_ratio = rhs_noise_ratio
        self.count_noise_ratio = count_noise_ratio
        self.init_scale = init_scale
        self.accountant = accountant
        self.seed = seed

    # ----------------------------------------------------------------- fit
    def fit(
        self,
        interactions: Interactions | sp.spmatrix | sp.sparray,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> DPALS:
        """Fit; ``progress(step, total)`` is called after each private item step."""
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
        sens = DPALSSensitivity.of(c.unit, c.clip_norm, c.max_per_user, c.count_sample)
        ratios = self._ratios(c)
        # σ for the user unit; the interaction unit's doubled sensitivities are applied to the noise.
        sigma = calibrate(
            budget,
            lambda s: dpals_event(s, c.iterations, c.max_per_user, ratios),
            kind=c.accountant,
            unit=c.unit,
        )
        self.noise_scale_ = sigma
        x = sp.csr_matrix(data.matrix, copy=True)
        x.data[:] = 1.0
        n_items = x.shape[1]

        # 1. noisy counts (one release), used for head selection, sampling, weights, regularisation
        sampled = sample_per_user(x, c.count_sample, rng) if c.unit is PrivacyUnit.USER else x
        counts = np.bincount(sampled.indices, minlength=n_items).astype(np.float64)
        z_counts = ratios[3] * sigma
        noisy_counts = gaussian(counts, z_counts, sens.counts, rng)
        self._spend("noisy item counts", gaussian_event(z_counts))
        n_head = max(1, math.ceil(c.head_fraction * n_items))
        head = np.sort(np.argsort(-noisy_counts, kind="stable")[:n_head])
        xh = sp.csr_matrix(x[:, head])
        xh.sort_indices()
        counts_h = noisy_counts[head]

        # 2. bounded per-user weights c_uj (Σ_j c_uj² ≤ B)
        weights = self._weights(xh, counts_h, c, rng)

        # 3. T private item steps
        k = c.factors
        init_rng = np.random.default_rng(None if c.seed is None else c.seed + 1)  # data-independent
        y = (init_rng.standard_normal((n_head, k)) * (c.init_scale / math.sqrt(k))).astype(
            np.float64
        )
        reg_items = c.regularization * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
        b = math.sqrt(c.max_per_user)
        unit_factor = 2.0 if c.unit is PrivacyUnit.INTERACTION else 1.0
        for step in range(c.iterations):
            u = self._solve_users(xh, y, c)
            u = clip_rows(u, c.clip_norm)
            g = symmetric_gaussian(gramian(u), ratios[0] * sigma, sens.gram, rng)
            lhs, rhs = item_statistics(weights, u, weights.data, alpha0=0.0)
            # multipliers r1·σ/√B against sensitivities √B Γ² (×2 for interactions): std r1·σ·Γ²·f
            lhs = symmetric_gaussian(lhs, ratios[1] * sigma / b, sens.lhs, rng)
            rhs = gaussian(rhs, ratios[2] * sigma / b, sens.rhs, rng)
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
            lhs = project_psd(lhs)
            y = _solve_items(g, lhs, rhs, c.alpha0, reg_items)
            if self._progress is not None:
                self._progress(step + 1, c.iterations)
        del unit_factor
        self.item_factors_ = np.zeros((n_items, k), dtype=np.float32)
        self.item_factors_[head] = y.astype(np.float32)
        self.head_items_ = head.astype(np.int64)
        self.noisy_counts_ = noisy_counts.astype(np.float32)
        self._fit_alpha0 = c.alpha0
        self._fit_user_reg = c.user_regularization
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

    def _weights(
        self, xh: sp.csr_matrix, counts: np.ndarray, c: DPALSConfig, rng: np.random.Generator
    ) -> sp.csr_matrix:
        if c.method == "uniform":
            return sample_per_user(xh, c.max_per_user, rng, "uniform")
        if c.method == "tail":
            return sample_per_user(xh, c.max_per_user, rng, "least_popular", counts)
        if c.method == "adaptive":
            return adaptive_weights(
                xh, np.maximum(counts, 1.0), c.adaptive_exponent, float(c.max_per_user)
            )
        raise ConfigError(f"unknown method {c.method!r}")

    def _solve_users(self, xh: sp.csr_matrix, y: np.ndarray, c: DPALSConfig) -> np.ndarray:
        """Exact user solves (non-private: each uses only the released ``y`` and the user's own row)."""
        return _user_solve(xh, y, c.alpha0, c.user_regularization)

    def _fold(self, user_items_head: sp.csr_matrix) -> np.ndarray:
        y = self.item_factors_[self.head_items_].astype(np.float64)
        return _user_solve(user_items_head, y, self._fit_alpha0, self._fit_user_reg)

    # ------------------------------------------------------------- scoring
    def fold_in(self, user_items: Any) -> np.ndarray:
        """User factors from the released item factors and the given histories only."""
        from privrec.models.base import as_user_items

        self._check_fitted()
        hist = as_user_items(user_items, self.n_items_)
        return self._fold(sp.csr_matrix(hist[:, self.head_items_])).astype(np.float32)

    def _scores_from_factors(self, u: np.ndarray) -> np.ndarray:
        out = np.full((u.shape[0], self.item_factors_.shape[0]), -np.inf, dtype=np.float32)
        out[:, self.head_items_] = u @ self.item_factors_[self.head_items_].T
        return out

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
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = arrays["item_factors"]
        self.head_items_ = arrays["head_items"]
        self.noisy_counts_ = arrays["noisy_counts"]
        self.noise_scale_ = float(arrays["noise_scale"])
        self._fit_alpha0, self._fit_user_reg = (float(v) for v in arrays["fold"])

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


def _user_solve(xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float) -> np.ndarray:
    """iALS user step: (α0 YᵀY + Σ_{j∈I_u} y_j y_jᵀ + λI) x_u = Σ_{j∈I_u} y_j, exact (Cholesky kernel)."""
    n_users, k = xh.shape[0], y.shape[1]
    out = np.zeros((n_users, k), dtype=np.float64)
    yy = np.ascontiguousarray(y, dtype=np.float64)
    # The kernel solves (α0 G + Σ w y yᵀ + λI) x = Σ (α0 + w) y; with w = 1 the matrix is ours and the
    # right-hand side is (1 + α0) Σ y, so the solution is (1 + α0) times the one we want.
    w = np.ones(xh.nnz, dtype=np.float64)
    cholesky_half_step(
        xh.indptr.astype(np.int64),
        xh.indices.astype(np.int32),
        w,
        yy,
        gramian(yy),
        out,
        float(alpha0),
        float(reg),
        0.0,
    )
    return out / (1.0 + alpha0)


def _solve_items(
    g: np.ndarray, lhs: np.ndarray, rhs: np.ndarray, alpha0: float, reg: np.ndarray
) -> np.ndarray:
    """(α0 G̃ + L̃_j + λ_j I) y_j = r̃_j for every head item, batched, in float64."""
    k = rhs.shape[1]
    a = alpha0 * g[None] + lhs
    a[:, np.arange(k), np.arange(k)] += reg[:, None]
    try:
        out = np.linalg.solve(a, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = (np.linalg.pinv(a, hermitian=True) @ rhs[..., None])[..., 0]
    return np.asarray(out, dtype=np.float64)
