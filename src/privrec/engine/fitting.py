"""The driver's side of the distributed fits: the single-machine mechanisms, statistic by statistic.

Each function below follows its model's single-machine ``_fit`` release by release — the same
calibration (``calibrate`` over the same event), the same ``_plan`` announcement, the same
random draws in the same order from the model's generator (noise, and the sampling salts the
workers key their samples with), the same post-processing — with every sum over users replaced
by a tree reduce of the workers' partial sums (:meth:`WorkerGroup.reduce`). The functions that
compute those sums on a worker are the single-machine ones
(:mod:`privrec.engine.partition`). What is released, its sensitivity, its accounting events and
so the guarantee are therefore the single-machine model's; the only difference is who holds
the data (a cluster, trusted as the single training server is: central DP). DPALS's noisy
releases and item solves are the model's own methods (``_release_lengths``, ``_release_counts``,
``_private_step``), fed the reduced sums, so its ``on_release`` hook sees on the engine exactly
what it sees on one machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from privrec.data.interactions import Interactions
from privrec.engine.ray_engine import WorkerGroup, _ray
from privrec.errors import ConfigError
from privrec.models.base import _empty_csr
from privrec.models.releases import ReleaseHook
from privrec.privacy.contribution import draw_salt
from privrec.privacy.units import PrivacyUnit

__all__ = ["check_distributable", "fit_distributed"]

_CLUSTER = (
    "The training cluster (the driver and every worker holding user partitions) is trusted, as "
    "the single training server is (central DP)."
)


@dataclass(frozen=True)
class _Sizes:
    """What ``PrivateRecommender._begin`` reads of the data: its numbers of users and interactions."""

    n_users: int
    nnz: int


def fit_distributed(
    model: Any,
    group: WorkerGroup,
    catalogue: np.ndarray,
    n_users: int,
    nnz: int,
    *,
    given: bool,
    progress: Callable[[int, int], None] | None,
    on_release: ReleaseHook | None = None,
) -> Any:
    """Fit ``model`` over ``group``'s partitions and complete it as ``Recommender.fit`` does.

    ``on_release`` is DPALS's ``fit(on_release=…)`` hook: the driver reports every noisy
    release through the model's own ``_release``, as the single-machine fit does.
    """
    fit = check_distributable(model, on_release=on_release)
    if n_users == 0:
        raise ConfigError("no interactions left to train on (after the policy)")
    # as Recommender.fit: a fit that raises (a worker lost mid-way) leaves the model as it was,
    # never a fitted model's guarantee beside the failed run's noise scale or bounds
    with model._unchanged_on_failure():
        config = model.config()
        budget, rng = model._begin(cast(Interactions, _Sizes(n_users, nnz)), config)
        model._on_release = on_release
        try:
            fit(model, config, budget, rng, group, len(catalogue), progress)
        finally:
            model._on_release = None
        model.user_ids_ = np.zeros(0, dtype=catalogue.dtype)
        model.item_ids_ = np.asarray(catalogue)
        model.user_items_ = _empty_csr((0, len(catalogue)))
        model._released_only = True
        model._catalogue_source = "given" if given else "data"
        model._after_fit()
    return model


def check_distributable(
    model: Any, *, on_release: ReleaseHook | None = None
) -> Callable[..., None]:
    """The driver function for ``model``'s class, or :class:`ConfigError` (before any work)."""
    from privrec.models.dp_als import DPALS
    from privrec.models.dp_ease import DPEASE
    from privrec.models.dp_popularity import DPPopularity

    if on_release is not None and not isinstance(model, DPALS):
        # as on one machine, where only DPALS.fit takes the hook
        raise ConfigError(
            f"{getattr(model, 'name', type(model).__name__)}: on_release is supported for dpals "
            "only"
        )

    if getattr(model, "tiers", None):
        # protection tiers need each user's requested ε on the workers (not in the shards)
        raise ConfigError(
            f"{model.name}: protection tiers (tiers=…) are not supported by the Ray engine; "
            "train with per-user epsilons on one machine (privrec train-tiers)"
        )
    if isinstance(model, DPALS):
        return _fit_dpals
    if isinstance(model, DPEASE):
        return _fit_dpease
    if isinstance(model, DPPopularity):
        return _fit_dppopularity
    raise ConfigError(
        f"{getattr(model, 'name', type(model).__name__)} has no distributed implementation; "
        "the Ray engine trains dpals, dppopularity and dpease"
    )


# ----------------------------------------------------------------------------- DPPopularity
def _length_profile(
    group: WorkerGroup, unit: PrivacyUnit, z_len: float, rng: np.random.Generator, n_items: int
) -> tuple[np.ndarray, float]:
    """The noisy history-length histogram (:func:`~privrec.privacy.bounds.noisy_length_histogram`).

    The workers' histograms of their users' lengths add up to the whole one; the driver adds the
    noise once. Returns the noisy histogram and its noise std.
    """
    from privrec.privacy.bounds import length_sensitivity
    from privrec.privacy.mechanisms import gaussian

    (hist,) = group.reduce("length_histogram", n_items)
    sens = length_sensitivity(unit)
    return gaussian(hist, z_len, sens, rng), z_len * sens


def _fit_dppopularity(
    model: Any, c: Any, budget: Any, rng: np.random.Generator, group: WorkerGroup, n_items: int,
    progress: Callable[[int, int], None] | None,
) -> None:  # fmt: skip
    from privrec.models.dp_popularity import _FIXED_BOUND, split_multipliers
    from privrec.privacy.accounting import calibrate, compose
    from privrec.privacy.bounds import LENGTHS_LABEL, quantile_from_histogram
    from privrec.privacy.events import SpentEvent
    from privrec.privacy.mechanisms import gaussian, gaussian_event

    adaptive = c.max_per_user is None and c.unit is PrivacyUnit.USER
    f = c.length_budget_fraction
    z_len = 0.0
    if adaptive:
        z = calibrate(
            budget,
            lambda v: compose([gaussian_event(m) for m in split_multipliers(v, f)]),
            kind=c.accountant,
            unit=c.unit,
        )
        z_len, z = split_multipliers(z, f)
        planned = [
            SpentEvent(LENGTHS_LABEL, gaussian_event(z_len)),
            SpentEvent("noisy item counts", gaussian_event(z)),
        ]
    else:
        z = calibrate(budget, gaussian_event, kind=c.accountant, unit=c.unit)
        planned = [SpentEvent("noisy item counts", gaussian_event(z))]
    model._tiers = []
    model._plan(planned)
    if adaptive:
        hist, std = _length_profile(group, c.unit, z_len, rng, n_items)
        model._spend(LENGTHS_LABEL, gaussian_event(z_len))
        q = quantile_from_histogram(hist, c.bound_quantile, noise_std=std)
        bound = max(1, min(round(q), n_items))
    else:
        bound = _FIXED_BOUND if c.max_per_user is None else c.max_per_user
    salt = draw_salt(rng) if c.unit is PrivacyUnit.USER else None
    (counts,) = group.reduce("bounded_counts", c.unit, bound, salt)
    sens = math.sqrt(bound) if c.unit is PrivacyUnit.USER else 1.0
    model.item_popularity_ = gaussian(counts, z, sens, rng).astype(np.float32)
    model.noise_multiplier_ = z
    model.max_per_user_ = bound
    model._spend("noisy item counts", gaussian_event(z))
    if progress is not None:
        progress(1, 1)
    model._finish(
        c,
        released=["noisy item counts", "the popularity ranking and any top-k list derived from it"],
        not_released=[
            "raw interactions",
            "each user's seen-item filter (uses only that user's data)",
        ],
        threat_model=(
            "anyone who sees the released counts or lists, with any side information, learns about "
            f"one {c.unit.value} no more than the (ε, δ) bound allows. " + _CLUSTER
        ),
    )


# ---------------------------------------------------------------------------------- DPALS
def _fit_dpals(
    model: Any, c: Any, budget: Any, rng: np.random.Generator, group: WorkerGroup, n_items: int,
    progress: Callable[[int, int], None] | None,
) -> None:  # fmt: skip
    ray = _ray()
    from privrec.models.dp_als import initial_item_factors
    from privrec.models.dp_als_accounting import released_outputs
    from privrec.models.dp_rules import dpals_head, head_threshold, resolve_regularization
    from privrec.privacy.mechanisms import gaussian

    cal = model._calibrate(c, budget)
    ratios, iterations, length_ratio, b_plan, sigma, planned = cal
    model._tiers = []
    model._plan(planned)

    # 0. (data-adaptive bounds) noisy history-length histogram → B, count sample, k
    profile = None
    if length_ratio is not None:
        z_len = length_ratio * sigma
        hist, _ = _length_profile(group, c.unit, z_len, rng, n_items)
        profile = model._release_lengths(hist, z_len, c.unit, n_items)
    z_counts, sigma = model._split_counts(c, cal, profile, n_items)  # as DPALS._fit
    bound, count_sample, k, sens, sigma_eff = model._resolve_sizes(c, profile, sigma, b_plan)

    # 1. noisy counts (one release): head, sampling, weights, regularisation
    salt = draw_salt(rng) if c.unit is PrivacyUnit.USER else None
    (counts,) = group.reduce("bounded_counts", c.unit, count_sample, salt)
    noisy_counts = gaussian(counts, z_counts, sens.counts, rng)
    model._release_counts(noisy_counts, z_counts, sens)
    threshold = head_threshold(c.head_snr, ratios[2] * sigma_eff, count_sample)
    head = dpals_head(
        noisy_counts,
        c.head_fraction,
        threshold,
        c.head_min,
        k,
        rhs_std=ratios[2] * sigma_eff,
        count_sample=count_sample,
    )
    counts_h = noisy_counts[head]
    n_head = len(head)
    reg = resolve_regularization(c.regularization, sigma_eff, c.clip_norm)
    model.regularization_ = reg
    alpha0 = model._resolve_alpha0(c, counts_h, profile)  # as DPALS._fit

    # 2. per-user weights on the workers (keyed samples salted by the driver's generator)
    if c.method not in ("uniform", "tail", "adaptive"):
        raise ConfigError(f"unknown method {c.method!r}")
    salt_w = draw_salt(rng) if c.method in ("uniform", "tail") else None
    group.call_all(
        "dpals_prepare", head, counts_h, c.method, bound, c.adaptive_exponent, salt_w,
        setup=True,
    )  # fmt: skip

    # 3. T private item steps
    y = initial_item_factors((n_head, k), c.init_scale, c.seed, counts_h, model.one_round_)
    reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
    history: list[Any] = []
    # one round (as DPALS._fit): every step sums the same user solves (from the count-started
    # factors) under fresh noise, and the item factors are the mean of the steps' solves
    y_start, y_sum = y, np.zeros_like(y)
    y_prev = y
    for step in range(iterations):
        y_prev = y
        if not model.one_round_ or step == 0:
            # the user solves cast the item factors to float32: broadcast them so
            history.append(ray.put(np.ascontiguousarray(y, dtype=np.float32)))
            parts = group.reduce(
                "dpals_step", step, alpha0, c.user_regularization, c.clip_norm, c.lhs, *history
            )
        # the same noise, releases (and hook calls) and item solve as DPALS._fit
        y = model._private_step(
            step + 1, parts[0], parts[2] if c.lhs != "none" else None, parts[1],
            y=y_start if model.one_round_ else y, head=head, reg_items=reg_items, sigma=sigma,
            b_plan=b_plan, sens=sens, c=c, rng=rng, alpha0=alpha0,
        )  # fmt: skip
        if model.one_round_:
            y_sum += y
            y = y_sum / (step + 1)
        if progress is not None:
            progress(step + 1, iterations)
    y = model._final_factors(c, y_prev, y, iterations)  # as DPALS._fit
    model._keep(c, y, head, noisy_counts, n_items, profile)
    model.user_factors_ = np.zeros((0, k), dtype=np.float32)
    model._finish(
        c,
        released=released_outputs(c.lhs, model._split),
        not_released=[
            "user factors (each solved on the worker holding the user, from the released item "
            "factors and that user's own data; dropped at the end)",
            "each user's recommendations (computed from their own data, shown only to them)",
        ],
        threat_model=(
            "joint DP ('billboard' model): the released item factors are (ε, δ)-DP with respect "
            f"to any one {c.unit.value}; your own recommendations use your own data. " + _CLUSTER
        ),
    )


# ---------------------------------------------------------------------------------- DPEASE
def _fit_dpease(
    model: Any, c: Any, budget: Any, rng: np.random.Generator, group: WorkerGroup, n_items: int,
    progress: Callable[[int, int], None] | None,
) -> None:  # fmt: skip
    from privrec.models.dp_ease import (
        EaseBudget,
        NoisyCounts,
        ease_head,
        gram_sensitivity,
        resolve_contribution,
        resolve_ease_regularization,
        set_popularity,
    )
    from privrec.models.dp_rules import LengthProfile, resolve_bound
    from privrec.models.ease import check_ease_memory, ease_from_gram
    from privrec.privacy.bounds import LENGTHS_LABEL
    from privrec.privacy.mechanisms import gaussian, gaussian_event, symmetric_gaussian

    plan = EaseBudget.calibrate(c, n_items, budget)
    model._plan(plan.planned())
    profile = None
    if plan.z_len > 0:
        hist, std = _length_profile(group, c.unit, plan.z_len, rng, n_items)
        model._spend(LENGTHS_LABEL, gaussian_event(plan.z_len))
        profile = LengthProfile(hist, std, n_items)
    bound = resolve_bound(c.max_per_user, profile, c.bound_quantile, floor=1)
    c_max = resolve_contribution(c.max_contribution, profile)
    model.max_per_user_, model.max_contribution_ = bound, c_max
    sens_g = gram_sensitivity(c.unit, c_max, bound)
    split = plan.split(c, profile)
    z_count, z_gram = split.z_count, split.z_gram
    counts = None
    if plan.restrict:
        salt = draw_salt(rng) if c.unit is PrivacyUnit.USER else None
        (raw,) = group.reduce("bounded_counts", c.unit, bound, salt)
        sens = math.sqrt(bound) if c.unit is PrivacyUnit.USER else 1.0
        noisy = gaussian(raw, z_count, sens, rng)
        head, n_signal = ease_head(noisy, c.head_snr * z_gram * sens_g, c)
        counts = NoisyCounts(noisy[head], z_count * sens, n_signal)
    else:
        head = np.arange(n_items)
    check_ease_memory(len(head), None, "DPEASE")
    salt_g = draw_salt(rng) if c.unit is PrivacyUnit.INTERACTION else None
    (gram,) = group.reduce("ease_gram", head, c.unit, c_max, bound, salt_g)
    noisy_gram = symmetric_gaussian(gram, z_gram, sens_g, rng)
    del gram
    model._spend(*plan.spent_pair())
    reg = resolve_ease_regularization(
        c.regularization, float(z_gram * sens_g), len(head), c.reg_scale
    )
    model.regularization_ = reg
    prior = np.diag(noisy_gram).copy()
    model.weights_ = ease_from_gram(noisy_gram, reg, overwrite=True)
    model.head_items_ = head.astype(np.int64)
    model.noise_multiplier_ = float(z_gram)
    # the same prior, β and shrinkage as the single-machine fit (low-signal fallback included)
    set_popularity(model, c, profile, NoisyCounts(prior, z_gram * sens_g), counts, split)
    if progress is not None:
        progress(1, 1)
    model._finish(
        c,
        released=["the noisy item Gram matrix", "EASE item-item weights derived from it"]
        + (split.released(model.count_prior_) if plan.restrict else []),
        not_released=[
            "raw interactions",
            "each user's scores (computed from that user's own history, shown only to them)",
        ],
        threat_model=(
            "joint DP ('billboard' model): the released item-item weights are (ε, δ)-DP; a user's "
            "recommendations combine them with that user's own data only. " + _CLUSTER
        ),
    )
