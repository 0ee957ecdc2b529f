"""DPALS: user-level differentially private alternating least squares (joint DP).

Chien et al. (ICML 2021, "Private Alternating Least Squares") and Krichene et
al. (ICML 2023, adaptive per-item weights): only the item factors are
released; each user's factors are solved from the released item factors and
that user's own data, and are never released (the "billboard" model of joint
differential privacy).

The accounting (sensitivities, releases, the DP event) lives in
:mod:`privrec.models.dp_als_accounting` and the user side (contribution weights, user solves)
in :mod:`privrec.models.dp_als_users`; both are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.models.als_kernels import gramian, item_statistics
from privrec.models.base import register
from privrec.models.dp_als_accounting import (
    LHS,
    DPALSSensitivity,
    dpals_event,
    dpals_releases,
    released_outputs,
)
from privrec.models.dp_als_accounting import _step_releases as _step_releases
from privrec.models.dp_als_stages import DPALSReleases, _Calibration
from privrec.models.dp_als_users import _FEW_USERS as _FEW_USERS
from privrec.models.dp_als_users import _user_cg as _user_cg
from privrec.models.dp_als_users import exact_user_solve, initial_item_factors, user_weights
from privrec.models.dp_noise import gaussian_noise, symmetric_noise
from privrec.models.dp_popularity import bounded_counts
from privrec.models.dp_rules import (
    LengthProfile,
    dpals_head,
    head_threshold,
    resolve_alpha0,
    resolve_bound,
    resolve_factors,
    resolve_item_norm_exponent,
    resolve_iterations,
    resolve_one_round,
    resolve_popularity_blend,
    resolve_regularization,
    resolve_shrinkage,
    resolve_step_averaging,
    select_head,
)
from privrec.models.item_sums import item_sums
from privrec.models.private import (
    PrivateConfig,
    blend_popularity,
)
from privrec.models.releases import ReleaseHook
from privrec.models.tiers import finish_tiers, plan_tiers
from privrec.privacy.accounting import calibrate
from privrec.privacy.bounds import noisy_length_histogram
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import clip_rows
from privrec.privacy.mechanisms import gaussian
from privrec.privacy.postprocessing import diagonal_solve, project_psd, psd_solve, shared_solve
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "DPALS",
    "DPALSSensitivity",
    "blend_popularity",
    "dpals_event",
    "dpals_releases",
    "exact_user_solve",
    "head_threshold",
    "initial_item_factors",
    "resolve_iterations",
    "resolve_popularity_blend",
    "resolve_regularization",
    "select_head",
    "user_weights",
]

Method = Literal["uniform", "tail", "adaptive"]


# quantile of the history lengths that sets the count sample with a data-adaptive B (as
# DPPopularity's bound: the median beat the 75th percentile for counts on ml-100k validation users)
_COUNT_QUANTILE = 0.5
# per-user shrinkage of the blend, in units of β (:func:`~privrec.models.dp_rules.resolve_shrinkage`)
DEFAULT_SHRINKAGE = 40.0
# n·ε per factor of the data-adaptive k (:func:`~privrec.models.dp_rules.resolve_factors`)
_FACTOR_SCALE = 1000.0
_PROJECT: Literal["always", "if_indefinite"] = "if_indefinite"


class DPALSConfig(PrivateConfig):
    factors: int | None = pydantic.Field(default=None, ge=1, le=1024)
    iterations: int | None = pydantic.Field(default=None, ge=1, le=100)
    method: Method = "adaptive"
    lhs: LHS = "none"
    max_per_user: int | None = pydantic.Field(default=None, ge=1)
    bound_quantile: float = pydantic.Field(default=0.75, gt=0, lt=1)
    nominal_bound: int = pydantic.Field(default=30, ge=1)
    length_noise_ratio: float = pydantic.Field(default=0.5, gt=0, allow_inf_nan=False)
    adaptive_exponent: float = pydantic.Field(default=0.5, ge=0, le=2)
    clip_norm: float = pydantic.Field(default=0.3, ge=1e-6, le=1e6, allow_inf_nan=False)
    regularization: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    reg_exponent: float = pydantic.Field(default=0.0, ge=0, le=2)
    user_regularization: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    alpha0: Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)] | Literal["density"] = (
        "density"
    )
    head_fraction: float | None = pydantic.Field(default=None, gt=0, le=1)
    head_snr: float = pydantic.Field(default=7.0, ge=0, allow_inf_nan=False)
    head_min: int = pydantic.Field(default=300, ge=1)
    count_sample: int | None = pydantic.Field(default=None, ge=1)
    gram_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    lhs_noise_ratio: float = pydantic.Field(default=5.0, gt=0, allow_inf_nan=False)
    rhs_noise_ratio: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    count_noise_ratio: float = pydantic.Field(default=0.2, gt=0, allow_inf_nan=False)
    adaptive_count_share: bool = True
    init_scale: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    one_round: bool | None = None
    step_averaging: float | None = pydantic.Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    popularity_blend: float | None = pydantic.Field(default=None, ge=0, le=10, allow_inf_nan=False)
    popularity_shrinkage: float | None = pydantic.Field(
        default=None, ge=0, le=1000, allow_inf_nan=False
    )
    neighbour_blend: float = pydantic.Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    item_norm_exponent: (
        Annotated[float, pydantic.Field(ge=0, le=2, allow_inf_nan=False)] | Literal["density"]
    ) = 0.0
    tiers: tuple[float, ...] | None = None


@register
class DPALS(DPALSReleases):
    """Differentially private ALS for implicit feedback, with per-item adaptive weights.

    Parameters
    ----------
    epsilon, delta, unit
        Budget and privacy unit (required).
    factors
        Embedding size k. Default (``None``): data-adaptive, a power of two near
        n·ε / 1000 within [8, 64] with n the noisy user count of the length
        histogram (:func:`~privrec.models.dp_rules.resolve_factors`): extra
        dimensions only add noise until there is enough signal.
    iterations
        Number T of private item steps. Default (``None``): 2 below ε = 2, else 3
        (every step costs budget; at small ε a third step adds more noise than signal).
    method
        How a user's L2 budget B is spread over their items: ``"uniform"``
        (≤ B random items, weight 1), ``"tail"`` (≤ B least popular items by
        noisy counts, weight 1) or ``"adaptive"`` (all the user's items, weights
        ``c_uj ∝ count_j^(−μ)`` with Σ_j c_uj² = B: tail items get more).
    lhs
        The item solves' per-item left-hand sides: ``"none"`` (default) releases
        no per-item k×k statistic — the items share α0·G̃ and differ only in their
        ridge, ``(α0 G̃ + λ_j I) y_j = r̃_j``, solved with one eigendecomposition
        (:func:`~privrec.privacy.postprocessing.shared_solve`) — and the budget the
        left-hand sides got goes to the other releases; ``"diagonal"`` releases
        only their diagonals Σ_u c_uj x_u∘x_u; ``"full"`` the whole Σ_u c_uj x_u
        x_uᵀ per item (Chien et al.'s method, 41 G multiply-adds per step at 20M
        interactions). On validation (ml-100k, ml-1m, gowalla, movietweetings at
        ε ∈ {1, 5, 10}; re-run with the α0 density rule at ε ∈ {1, 5}) ``"none"``
        matched or beat ``"full"`` everywhere but ml-1m at ε = 1 and movietweetings at
        ε = 5 (−1%, about one seed's spread) — with a ridge
        proportional to the noise, the noisy per-item second moments add noise
        rather than signal — and it makes a step as cheap as the user solves.
    max_per_user
        B, the per-user weight budget. Default (``None``): data-adaptive — the
        ``bound_quantile`` (75th percentile) of the users' history lengths, read
        from a noisy length histogram released first
        (:mod:`privrec.privacy.bounds`, charged). A B far above what users
        contribute sizes the noise for contributions nobody makes (short-history
        data); far below, it discards data. The grid's picks on validation were
        B = 100 on ml-1m (q75 ≈ 125), 30 on gowalla (q75 ≈ 27) and 10 on
        movietweetings (q75 ≈ 8). Given explicitly, σ is calibrated with B itself
        and no histogram is released (unless ``factors`` is left to its rule).
    bound_quantile
        Quantile of history lengths that sets the data-adaptive B.
    nominal_bound
        B₀: with a data-adaptive B the events must be fixed before the data is
        read, so the budget split between the releases is that of a fixed
        B = B₀ (the statistics' multipliers are r·σ/√B₀); the chosen B then only
        scales the statistics' noise, by √(B/B₀), and the noise-scaled defaults
        (ridge, head threshold) follow σ_eff = σ·√(B/B₀). B₀ = 30 beat 10 and 100
        on validation.
    length_noise_ratio
        The histogram's multiplier in units of σ (r_h; about 4% of the budget).
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
        Default ``"density"``: from the noisy density of the trained head
        (:func:`~privrec.models.dp_rules.resolve_alpha0`: 2 on dense heads such
        as ml-1m's, down to 0.25 on sparse ones such as gowalla's, where a heavy
        "not seen" term pulls every score to zero), resolved as ``alpha0_``; it
        was a fixed 2 before 2026-12-07 (give ``alpha0=2`` for that).
    head_fraction
        Train on this fraction of the catalogue, the most popular by noisy
        counts; other items are never recommended. Default (``None``): an
        ε-aware rule, :func:`~privrec.models.dp_rules.dpals_head` — every item
        whose noisy count is at least ``head_snr`` × the right-hand-side noise
        std (r2·σ), at most Σ_j ñ_j / k of them (``head_capacity``), never fewer
        than ``head_min`` nor than the items holding a quarter of the noisy count
        mass (``head_floor``; their docstrings say why, with the validation runs).
    head_snr, head_min
        The automatic head rule's threshold and floor.
    count_sample
        Items per user sampled for the noisy counts (their sensitivity is
        √count_sample). Default (``None``): with a data-adaptive B, the median
        history length (as DPPopularity's bound: the median beat the 75th
        percentile for counts on ml-100k); with a given B, B itself.
    gram_noise_ratio, lhs_noise_ratio, rhs_noise_ratio, count_noise_ratio
        Relative noise (r0, r1, r2, r3) of the four releases; one scale σ is
        calibrated so the composition meets (ε, δ). Defaults (1, 5, 1, 0.2): the
        left-hand sides matter least once λ is large, so they get little budget
        (more noise); the counts drive head selection and the adaptive weights,
        so they get more than a uniform split would give them.
    adaptive_count_share
        With a released length histogram (data-adaptive B or k), read the counts' share of the
        rate after it from the histogram (default ``True``): ``count_noise_ratio``'s share
        (0.29 at T = 2, 0.21 at T = 3), raised up to 0.5 where ε × users × median history per
        catalogue item is below 10 (:func:`~privrec.models.dp_rules.dpals_count_share`); the
        steps' σ rises so the rate, and ε, stay as announced
        (:func:`~privrec.models.dp_als_accounting.split_rest`). ``False``: the fixed split.
    init_scale
        Scale of the initial item factors (random, data-independent; in one round the first
        column is the released log counts instead).
    one_round
        Fit in one round: the item factors start from the released counts (their first column
        the log noisy counts, the others random), every private step solves the users from
        them — the same clipped user factors, so the same sums under fresh noise — and the
        item factors are the mean of the steps' item solves: the T steps act as one step with
        about √T less noise. Default (``None``): a rule,
        :func:`~privrec.models.dp_rules.resolve_one_round` — one round when the noisy ``n·ε``
        is below 1000, where a second round of user solves adds more noise than it learns (on
        ml-100k validation users at ε = 0.5 it lifted Recall@20 from 0.144 to 0.175, above
        DPPopularity's 0.154). The releases and their noise are the same either way: the
        choice is post-processing of the length histogram and costs no privacy.
    step_averaging
        w: with separate rounds, the released item factors are ``w·ŷ_(T−1) + (1 − w)·ŷ_T``,
        a weighted mean of the last two steps' solves (their noise is independent; both are
        released anyway, so this is post-processing). Default (``None``):
        :func:`~privrec.models.dp_rules.resolve_step_averaging` — ¼ when T ≥ 3, else 0.
    popularity_blend
        β: a user's scores are their row-standardised factor scores plus β ×
        the standardised log noisy counts
        (:func:`privrec.models.private.blend_popularity`) — at small ε the
        released counts are far less noisy than the item factors. Default
        (``None``): :func:`resolve_popularity_blend` (0.3 below ε = 2, 0.2
        below ε = 10, 0.1 from there), picked on validation data; 0 turns it off.
    popularity_shrinkage
        s: with both left to their defaults, user u's blend weight is
        ``β + s / n_u`` with ``n_u`` their own history length and s = 40 / m,
        m the private median history length
        (:func:`~privrec.models.dp_rules.resolve_shrinkage`): the fewer items a user
        has, and the shorter histories are in the data set, the noisier the factor
        scores and the more the counts count. It lifted short-history data
        (movietweetings: from 0.20 to 0.27 Recall@20 at ε = 5 on validation) at a
        small cost on gowalla. A fixed ``popularity_blend`` turns it off unless
        given too.
    neighbour_blend
        a ∈ [0, 1]: a user's head scores become ``(1 − a)`` × their standardised
        scores above plus ``a`` × the standardised sum, over their own head items i,
        of the cosine between item i's and item j's released factors (an item-kNN
        reading of the same factors: several clusters of interest are not averaged
        into one user vector). Post-processing of the released factors and the
        user's own history, so it costs no ε and may be changed after ``fit``
        (``set_params``). Default 0 (off): on validation it lifted gowalla (Recall@20
        at a = 0.5: ε = 1 0.0500 → 0.0556, ε = 5 0.0936 → 0.1004; on its test split
        only 0.0627 → 0.0633 and 0.0970 → 0.0971) and lost on ml-1m (ε = 1 0.1708 →
        0.1645) and movietweetings (ε = 1 0.2714 → 0.2583) — check it on your own
        validation data (privately: :func:`privrec.tuning.private.private_tune`).
    item_norm_exponent
        γ: a user's head scores are ``x_u · y_j / |y_j|^γ`` before the popularity blend — the
        released item factors' norms divided out to the power γ (post-processing: no privacy
        cost; resolved as ``item_norm_exponent_`` and saved with the model). ``"density"``:
        from the trained head's noisy density
        (:func:`~privrec.models.dp_rules.resolve_item_norm_exponent`: 0 on dense heads such
        as ml-1m's, ≈ 0.55–0.6 on sparse ones such as gowalla's, where a released factor's
        norm says how popular and how noisy the item is — popularity already enters through
        the blend). Default 0 (off): on validation the rule lifted gowalla by 3–5% at every ε
        and left the other sets within 1%, but on gowalla's test split (the same fits) it
        scored +0.6% / −1.5% / −3.3% at ε = 1 / 5 / 20. Its validation split is a random
        per-user holdout of the training data, but its test split (LightGCN's) holds more
        popular items (mean training count 91 against 74 for a random holdout), and the rule
        makes the factor scores less popular — ``neighbour_blend`` went the same way; on
        movietweetings' random holdout it moved test by −1.3% to +0.6%. Check it on your own
        validation data (privately: :func:`privrec.tuning.private.private_tune`).
    tiers
        Personalised budgets: the stricter protection tiers on offer (public, each
        ≤ ε; ε is the loosest). Each user asks for one — ``fit(data,
        user_epsilons=…)`` — and enters every statistic with the weight w_t that
        gives their tier's ε: counts and histogram × w_t, factors clipped to w_t·Γ
        (so the Gramian and left-hand sides move by ≤ w_t², the right-hand sides
        by ≤ w_t times the full-weight sensitivity; :mod:`privrec.privacy.personalized`).

    Algorithm
    ---------
    (Data-adaptive defaults) noisy history-length histogram → B, count sample,
    k; noisy counts → head items (ε-aware rule) → per-user weights → T steps of:
    user solves (warm-started conjugate gradient on the iALS user system, from
    the released item factors and the user's own row), clipping to Γ, noisy
    Gramian / right-hand sides (/ left-hand sides with ``lhs="full"``), and item
    solves ``(P(α0 G̃ + L̃_j) + λ_j I) y_j = r̃_j`` (L̃_j = 0 with ``lhs="none"``,
    diagonal with ``"diagonal"``) where P projects onto the PSD cone
    only when the regularised system is not positive definite
    (:func:`privrec.privacy.postprocessing.psd_solve`). In one round (small
    n·ε, ``one_round``) every step solves the users from the same count-started
    item factors, so its sums are the same and only the noise is fresh; the item
    factors are the mean of the steps' solves. Final user factors are
    exact (Cholesky) solves, so they match :meth:`fold_in`. Defaults were
    chosen on validation splits only — valid.txt of ml-1m-implicit-r3 and
    gowalla-lightgcn (train on train.txt), held-out ml-100k users, and a split of
    the training part of movietweetings-100k and of a short-history synthetic
    set — never on test; ``benchmarks/privacy_utility.py`` has the figures.

    Privacy
    -------
    Releases, with data-adaptive defaults first the history-length histogram
    (users per length bin, sensitivity 1 per user, multiplier r_h·σ); then per
    step t = 1..T: the Gramian Σ_u x_u x_uᵀ (+ symmetric
    Gaussian noise, std r0·σ·Γ²), the per-item left-hand sides Σ_u c_uj x_u
    x_uᵀ (+ symmetric noise, std r1·σ·Γ²) and right-hand sides Σ_u c_uj x_u
    (+ noise, std r2·σ·Γ) — with a data-adaptive B these stds are in units of
    σ_eff = σ·√(B/B₀); once, item counts over ≤ count_sample items per
    user (+ noise, std r3·σ·√count_sample). With the histogram (and
    ``adaptive_count_share``) the counts and all steps are announced as ONE
    Gaussian event of their summed rate Σ 1/z², whose split is read from the
    histogram: the counts' multiplier z_c and the steps' σ_s replace r3·σ and σ
    with the same summed rate (:func:`~privrec.models.dp_als_accounting.split_rest`), so by
    adaptive composition of
    Gaussian DP the announced event is exact; each release keeps its own event
    for the hook, and :meth:`_finish` checks they add up. Noise is drawn from the
    ChaCha20 generator in float32. Sensitivities and neighbouring relation:
    :meth:`DPALSSensitivity.of`. Events: :func:`dpals_event`. Everything
    downstream — the counts' share, B, the count sample, k and the one-round choice (from the noisy
    histogram: one round changes which clipped user factors a step sums, never
    its sensitivity or noise, so the events are the same), head selection (from
    the noisy counts, σ and k only), the default λ and T (from ε and σ only),
    sampling and weights from noisy counts, the count-started item factors, PSD
    projection, item solves and their mean, and the popularity blend at scoring
    time (released counts and the user's own scores) — is post-processing. User factors
    are computed from the released item factors and each user's own data,
    never released: the guarantee is joint DP.
    """

    name = "dpals"
    Config = DPALSConfig
    mechanism_name = "DPALS (private item factors)"
    #: what files saved before a parameter existed were trained with (read by ``load_model``)
    params_before_added: ClassVar[dict[str, Any]] = {"adaptive_count_share": False}

    user_factors_: np.ndarray
    iterations_: int
    regularization_: float
    alpha0_: float
    item_norm_exponent_: float
    one_round_: bool
    step_averaging_: float

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user", "interaction"],
        factors: int | None = None,
        iterations: int | None = None,
        method: Method = "adaptive",
        lhs: LHS = "none",
        max_per_user: int | None = None,
        bound_quantile: float = 0.75,
        nominal_bound: int = 30,
        length_noise_ratio: float = 0.5,
        adaptive_exponent: float = 0.5,
        clip_norm: float = 0.3,
        regularization: float | None = None,
        reg_exponent: float = 0.0,
        user_regularization: float = 0.1,
        alpha0: float | Literal["density"] = "density",
        head_fraction: float | None = None,
        head_snr: float = 7.0,
        head_min: int = 300,
        count_sample: int | None = None,
        gram_noise_ratio: float = 1.0,
        lhs_noise_ratio: float = 5.0,
        rhs_noise_ratio: float = 1.0,
        count_noise_ratio: float = 0.2,
        adaptive_count_share: bool = True,
        init_scale: float = 0.1,
        one_round: bool | None = None,
        step_averaging: float | None = None,
        popularity_blend: float | None = None,
        popularity_shrinkage: float | None = None,
        neighbour_blend: float = 0.0,
        item_norm_exponent: float | Literal["density"] = 0.0,
        tiers: tuple[float, ...] | None = None,
        accountant: Literal["pld", "rdp"] = "pld",
        seed: int | None = None,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.unit = unit
        self.factors = factors
        self.iterations = iterations
        self.method = method
        self.lhs = lhs
        self.max_per_user = max_per_user
        self.bound_quantile = bound_quantile
        self.nominal_bound = nominal_bound
        self.length_noise_ratio = length_noise_ratio
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
        self.adaptive_count_share = adaptive_count_share
        self.init_scale = init_scale
        self.one_round = one_round
        self.step_averaging = step_averaging
        self.popularity_blend = popularity_blend
        self.popularity_shrinkage = popularity_shrinkage
        self.neighbour_blend = neighbour_blend
        self.item_norm_exponent = item_norm_exponent
        self.tiers = tiers
        self.accountant = accountant
        self.seed = seed

    # ----------------------------------------------------------------- fit
    def fit(
        self,
        interactions: Interactions | sp.spmatrix | sp.sparray,
        *,
        progress: Callable[[int, int], None] | None = None,
        item_ids: npt.ArrayLike | None = None,
        user_epsilons: np.ndarray | Sequence[float] | None = None,
        on_release: ReleaseHook | None = None,
    ) -> DPALS:
        """Fit; ``progress(step, total)`` is called after each private item step.

        ``item_ids`` fixes the item catalogue so that nothing about it is learned from the
        data (:meth:`~privrec.models.base.Recommender.with_catalogue`); ``user_epsilons``
        gives each user's protection tier (one of ``tiers`` or ε), see ``tiers``.

        ``on_release(release)`` is called once for every noisy statistic the guarantee
        counts, in the order of :func:`dpals_releases` (same labels): the length histogram
        (data-adaptive bounds), the counts, then per step the Gramian, the left-hand sides
        (``lhs`` ≠ ``"none"``) and the right-hand sides — each a
        :class:`~privrec.models.releases.Release` with the array **after** its noise was
        added (never the clean statistic), its noise std and sensitivity as the accounting
        states them, and for a step's statistics the item factors its users were solved
        from. The model keeps only its final item factors; this shows an auditor
        (:mod:`privrec.audit`) everything else it released. Post-processing: the hook gets
        read-only copies and cannot change the fit (the same seeded fit gives the same
        factors with or without it); an exception it raises aborts the fit.
        """
        with self._unchanged_on_failure():  # the catalogue too
            if item_ids is not None:
                self.with_catalogue(item_ids)
            self._progress = progress
            self._user_epsilons = user_epsilons
            self._on_release = on_release
            try:
                super().fit(interactions)
            finally:
                self._progress = None
                self._user_epsilons = None
                self._on_release = None
        return self

    def _ratios(self, c: DPALSConfig) -> tuple[float, float, float, float]:
        return (c.gram_noise_ratio, c.lhs_noise_ratio, c.rhs_noise_ratio, c.count_noise_ratio)

    # The fit's stages, shared with the Ray engine's driver (privrec.engine.fitting).
    def _calibrate(self, c: DPALSConfig, budget: Budget) -> _Calibration:
        """σ for ``budget`` and the releases it plans: (ratios, T, r_h, B₀, σ, releases)."""
        ratios = self._ratios(c)
        iterations = resolve_iterations(c.iterations, c.epsilon)
        # A data-adaptive B or k needs the private length histogram; the budget split is then
        # fixed by the nominal bound B₀ (the events cannot depend on a B read from the data).
        adaptive = c.max_per_user is None or c.factors is None
        length_ratio = c.length_noise_ratio if adaptive else None
        b_plan = c.nominal_bound if c.max_per_user is None else c.max_per_user
        # σ for the user unit; the interaction unit's doubled sensitivities are applied to the noise.
        # with the histogram, the counts and steps are announced as one event and split after it
        whole = c.adaptive_count_share and length_ratio is not None
        sigma = calibrate(
            budget,
            lambda s: dpals_event(s, iterations, b_plan, ratios, length_ratio, c.lhs, whole),
            kind=c.accountant,
            unit=c.unit,
        )
        self.noise_scale_ = sigma
        self.iterations_ = iterations
        planned = dpals_releases(sigma, iterations, b_plan, ratios, length_ratio, c.lhs, whole)
        return _Calibration(ratios, iterations, length_ratio, b_plan, sigma, planned)

    def _resolve_sizes(
        self, c: DPALSConfig, profile: LengthProfile | None, sigma: float, b_plan: int
    ) -> tuple[int, int, int, DPALSSensitivity, float]:
        """B, the count sample and k (given, or from the noisy lengths), sensitivities, σ_eff."""
        bound = resolve_bound(c.max_per_user, profile, c.bound_quantile)
        count_sample = resolve_bound(
            c.count_sample if c.max_per_user is None else (c.count_sample or bound),
            profile,
            _COUNT_QUANTILE,
            floor=1,
        )
        k = resolve_factors(c.factors, profile, c.epsilon, _FACTOR_SCALE)
        self.one_round_ = resolve_one_round(c.one_round, profile, c.epsilon, _FACTOR_SCALE)
        self.max_per_user_, self.count_sample_, self.factors_ = bound, count_sample, k
        sens = DPALSSensitivity.of(c.unit, c.clip_norm, bound, count_sample)
        # the item statistics' multipliers are r·σ/√B₀ against sensitivities ∝ √B: their noise is
        # that of σ_eff = σ·√(B/B₀) (= σ with a fixed B), which the noise-scaled defaults follow
        sigma_eff = sigma * math.sqrt(bound / b_plan)
        self.effective_noise_scale_ = sigma_eff
        return bound, count_sample, k, sens, sigma_eff

    def _resolve_alpha0(
        self, c: DPALSConfig, counts_head: np.ndarray, profile: LengthProfile | None
    ) -> float:
        """α0 (given, or the density rule from released values), kept as ``alpha0_``; the
        scoring's γ (``item_norm_exponent_``) is resolved from the same density."""
        self.alpha0_ = resolve_alpha0(c.alpha0, counts_head, profile)
        # the scoring's γ follows the same released density (post-processing)
        self.item_norm_exponent_ = resolve_item_norm_exponent(
            c.item_norm_exponent, counts_head, profile
        )
        return self.alpha0_

    def _keep(
        self,
        c: DPALSConfig,
        y: np.ndarray,
        head: np.ndarray,
        noisy_counts: np.ndarray,
        n_items: int,
        profile: LengthProfile | None,
    ) -> None:
        """Keep what the model scores with: the last step's item factors (zero off the head),
        the noisy counts, the user-solve settings and the popularity blend (post-processing)."""
        self.item_factors_ = np.zeros((n_items, y.shape[1]), dtype=np.float32)
        self.item_factors_[head] = y.astype(np.float32)
        self.head_items_ = head.astype(np.int64)
        self.noisy_counts_ = noisy_counts.astype(np.float32)
        self._fit_alpha0 = self.alpha0_
        self._fit_user_reg = c.user_regularization
        self.popularity_blend_ = resolve_popularity_blend(c.popularity_blend, c.epsilon)
        self.popularity_shrinkage_ = resolve_shrinkage(
            c.popularity_shrinkage, c.popularity_blend, profile, DEFAULT_SHRINKAGE
        )

    def _private_step(
        self,
        step: int,
        gram: np.ndarray,
        lhs: np.ndarray | None,
        rhs: np.ndarray,
        *,
        y: np.ndarray,
        head: np.ndarray,
        reg_items: np.ndarray,
        sigma: float,
        b_plan: int,
        sens: DPALSSensitivity,
        c: DPALSConfig,
        rng: np.random.Generator,
        alpha0: float,
    ) -> np.ndarray:
        """Private item step ``step`` (1..T) from its clean sums; returns the new item factors.

        ``gram`` is Σ_u x_u x_uᵀ, ``lhs`` the per-item left-hand sides (``None`` with
        ``lhs="none"``; diagonals with ``"diagonal"``), ``rhs`` Σ_u c_uj x_u over the head items;
        ``y`` the item factors the step's users were solved from. Adds the noise (Gramian,
        left-hand sides, right-hand sides, in that order), records every release (and shows it
        to the hook) in the order of ``_step_releases``, then solves the items: post-processing.
        """
        ratios = self._ratios(c)
        b = math.sqrt(b_plan)
        gram_std = ratios[0] * sigma * sens.gram
        # multipliers r1·σ/√B₀ and r2·σ/√B₀ against sensitivities √B Γ², √B Γ (×2 per interaction)
        lhs_std, rhs_std = ratios[1] * sigma / b * sens.lhs, ratios[2] * sigma / b * sens.rhs
        g = symmetric_noise(gram, gram_std, rng)
        noisy: list[tuple[str, np.ndarray, float, float, np.ndarray | None]] = [
            ("gramian", g, gram_std, sens.gram, None)
        ]
        if c.lhs == "none":
            lhs = None
        else:
            if lhs is None:
                raise ValueError(f"lhs={c.lhs!r} needs the per-item left-hand sides")
            if c.lhs == "full":
                lhs = symmetric_noise(lhs, lhs_std, rng)
            else:
                lhs = lhs + gaussian_noise(lhs.shape, lhs_std, rng)
            name = "lhs" if c.lhs == "full" else "lhs_diagonal"
            noisy.append((name, lhs, lhs_std, sens.lhs, head))
        rhs = rhs + gaussian_noise(rhs.shape, rhs_std, rng)
        noisy.append(("rhs", rhs, rhs_std, sens.rhs, head))
        # every statistic now carries its noise: record it (and show it to the hook), with the
        # item factors this step's users were solved from
        spent = _step_releases(step, sigma, b_plan, ratios, c.lhs)
        for release, (name, value, std, delta_l2, items) in zip(spent, noisy, strict=True):
            self._release(
                release,
                value,
                name=name,
                noise_std=std,
                sensitivity=delta_l2,
                step=step,
                items=items,
                item_factors=y,
            )
        g = project_psd(g)
        if lhs is None:  # lhs="none"
            return shared_solve(alpha0 * g, rhs, reg_items)
        if c.lhs == "full":
            y_new, _ = psd_solve(alpha0 * g, lhs, rhs, reg_items, _PROJECT)
            return y_new
        return diagonal_solve(alpha0 * g, lhs, rhs, reg_items)

    def _final_factors(
        self, c: DPALSConfig, y_prev: np.ndarray, y: np.ndarray, iterations: int
    ) -> np.ndarray:
        """The released item factors: the weighted mean of the last two steps' solves.

        ``y_prev`` is step T − 1's solve, ``y`` step T's; the weight is ``step_averaging``'s
        rule (0 in one round and for T ≤ 2). Post-processing of released solves.
        """
        self.step_averaging_ = resolve_step_averaging(c.step_averaging, iterations, self.one_round_)
        if self.step_averaging_ == 0.0:
            return y
        w = self.step_averaging_
        out: np.ndarray = w * y_prev + (1.0 - w) * y
        return out

    def _fit(self, data: Interactions, config: Any) -> None:
        c: DPALSConfig = config
        budget, rng = self._begin(data, c)
        cal = self._calibrate(c, budget)
        ratios, iterations, length_ratio, b_plan, sigma, planned = cal
        tier_w = plan_tiers(self, c, planned, self._user_epsilons, data.n_users)
        self._plan(planned)
        x = sp.csr_matrix(data.matrix, copy=True)
        x.data[:] = 1.0
        n_items = x.shape[1]

        # 0. (data-adaptive bounds) noisy history-length histogram → B, count sample, k
        profile = None
        if length_ratio is not None:
            z_len = length_ratio * sigma
            hist = noisy_length_histogram(x, c.unit, z_len, rng, tier_w)
            profile = self._release_lengths(hist, z_len, c.unit, n_items)
        z_counts, sigma = self._split_counts(c, cal, profile, n_items)
        bound, count_sample, k, sens, sigma_eff = self._resolve_sizes(c, profile, sigma, b_plan)

        # 1. noisy counts (one release), used for head selection, sampling, weights, regularisation
        counts, _ = bounded_counts(x, c.unit, count_sample, rng, tier_w)
        noisy_counts = gaussian(counts, z_counts, sens.counts, rng)
        self._release_counts(noisy_counts, z_counts, sens)
        rhs_std = ratios[2] * sigma_eff
        threshold = head_threshold(c.head_snr, rhs_std, count_sample)
        head = dpals_head(noisy_counts, c.head_fraction, threshold, c.head_min, k,
                          rhs_std=rhs_std, count_sample=count_sample)  # fmt: skip
        xh = sp.csr_matrix(x[:, head])
        xh.sort_indices()
        counts_h = noisy_counts[head]
        n_head = len(head)
        reg = resolve_regularization(c.regularization, sigma_eff, c.clip_norm)
        self.regularization_ = reg
        alpha0 = self._resolve_alpha0(c, counts_h, profile)

        # 2. bounded per-user weights c_uj (Σ_j c_uj² ≤ B)
        weights = user_weights(xh, counts_h, c.method, bound, c.adaptive_exponent, rng)

        # 3. T private item steps
        y = initial_item_factors((n_head, k), c.init_scale, c.seed, counts_h, self.one_round_)
        reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
        xs = np.zeros((xh.shape[0], k), dtype=np.float32)  # (1 + α0)·user factors, CG warm start
        y_start, y_sum = y, np.zeros_like(y)  # one round: every step's users solve from y_start
        y_prev = y
        clean: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None
        for step in range(iterations):
            if clean is None:
                if self.one_round_:
                    y, xs = y_start, np.zeros_like(xs)
                first = step == 0 or self.one_round_
                xs = _user_cg(xh, y, alpha0, c.user_regularization, xs, 8 if first else 4)
                u = clip_rows(xs / np.float32(1.0 + alpha0), c.clip_norm)
                if tier_w is not None:  # personalised budgets: user u enters with norm ≤ w_u·Γ
                    u *= tier_w.astype(np.float32)[:, None]
                g = gramian(u.astype(np.float64))
                lhs: np.ndarray | None = None
                if c.lhs == "full":
                    lhs, rhs = item_statistics(weights, u, weights.data, alpha0=0.0)
                else:  # Σ_u c_uj x_u (and Σ_u c_uj x_u∘x_u): no k×k per item
                    rhs, lhs = item_sums(weights, u, square=c.lhs == "diagonal")
                if self.one_round_:
                    # one round: every step's users solve from y_start, so their clean sums are
                    # the same every step — computed once; only the noise is fresh (the noise
                    # functions add out of place, so the clean sums stay clean)
                    clean = (g, lhs, rhs)
            else:
                (g, lhs, rhs), y = clean, y_start
            y_prev = y
            y = self._private_step(
                step + 1, g, lhs, rhs, y=y, head=head, reg_items=reg_items, sigma=sigma,
                b_plan=b_plan, sens=sens, c=c, rng=rng, alpha0=alpha0,
            )  # fmt: skip
            if self.one_round_:  # the item factors: the mean of the steps' solves so far
                y_sum += y
                y = y_sum / (step + 1)
            del g, lhs, rhs
            if self._progress is not None:
                self._progress(step + 1, iterations)
        y = self._final_factors(c, y_prev, y, iterations)
        self._keep(c, y, head, noisy_counts, n_items, profile)
        self.user_factors_ = self._fold(xh).astype(np.float32)
        self._finish(
            c,
            released=released_outputs(c.lhs, self._split),
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
        finish_tiers(self)
