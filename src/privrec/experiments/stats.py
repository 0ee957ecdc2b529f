"""Paired statistics for comparing privacy variants on the same users.

Every variant is evaluated on the same users of the same split with the same noise-draw
seeds, so the comparison is *paired*: per user and per draw, the difference between a
variant and the baseline. Two sources of variation matter — which users were evaluated
and which noise the mechanism drew — and the two-level bootstrap resamples both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats

from privrec.errors import ConfigError

__all__ = [
    "PairedComparison",
    "coverage",
    "paired_comparison",
    "power",
    "users_needed",
]


@dataclass(frozen=True)
class PairedComparison:
    """A variant against the baseline on one metric (and one user group).

    Attributes
    ----------
    mean_diff
        Mean over users and draws of (variant − baseline).
    ci_low, ci_high
        Two-level (draws × users) paired bootstrap interval of ``mean_diff``.
    p_bootstrap
        Two-sided bootstrap p-value of "no difference".
    t_stat, p_value
        Paired t-test over users (per-user differences averaged over draws).
    sd_diff
        Standard deviation of those per-user differences (the power calculation's input).
    users, draws
        Sizes.
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    t_stat: float
    p_value: float
    sd_diff: float
    users: int
    draws: int

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def paired_comparison(
    variant: np.ndarray,
    baseline: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """Compare per-user metric arrays of shape ``(draws, users)`` (same users, paired draws).

    Bootstrap: each replicate draws the noise draws with replacement and the users with
    replacement (the same users for every draw, keeping the pairing) and averages the
    differences; the interval is the percentile interval.
    """
    a = np.atleast_2d(np.asarray(variant, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline, dtype=np.float64))
    if a.shape != b.shape or a.shape[1] < 2:
        raise ConfigError(
            f"need two equal (draws, users) arrays with >= 2 users, got {a.shape}, {b.shape}"
        )
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), found {confidence}")
    d = a - b
    r, n = d.shape
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    chunk = max(1, (1 << 22) // (n * r))
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        users = rng.integers(0, n, size=(hi - lo, n))
        draws = rng.integers(0, r, size=(hi - lo, r))
        per_draw = d[:, users].mean(axis=2)  # (r, reps): user-resampled mean of each draw
        reps[lo:hi] = np.take_along_axis(per_draw.T, draws, axis=1).mean(axis=1)
    alpha = 1.0 - confidence
    per_user = d.mean(axis=0)
    sd = float(per_user.std(ddof=1))
    if sd > 0:
        t, p = scipy.stats.ttest_rel(a.mean(axis=0), b.mean(axis=0))
        t_stat, p_val = float(t), float(p)
    else:
        t_stat, p_val = (0.0, 1.0) if float(per_user.mean()) == 0 else (math.inf, 0.0)
    p_boot = min(1.0, 2.0 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return PairedComparison(
        mean_diff=float(d.mean()),
        ci_low=float(np.quantile(reps, alpha / 2)),
        ci_high=float(np.quantile(reps, 1 - alpha / 2)),
        p_bootstrap=p_boot,
        t_stat=t_stat,
        p_value=p_val,
        sd_diff=sd,
        users=n,
        draws=r,
    )


def users_needed(
    sd_diff: float, difference: float, alpha: float = 0.05, power_: float = 0.8
) -> int:
    """Users a paired two-sided test needs to detect ``difference`` with probability ``power_``.

    Normal approximation: ``n = ((z_{1−α/2} + z_{power}) · sd / difference)²``.

    >>> users_needed(0.1, 0.01)
    785
    """
    if difference == 0:
        raise ConfigError("the difference to detect must be non-zero")
    if sd_diff <= 0:
        return 2
    z = scipy.stats.norm.ppf(1 - alpha / 2) + scipy.stats.norm.ppf(power_)
    return max(2, math.ceil((z * sd_diff / abs(difference)) ** 2))


def power(n: int, sd_diff: float, difference: float, alpha: float = 0.05) -> float:
    """Power of the paired two-sided test with ``n`` users to detect ``difference``."""
    if sd_diff <= 0:
        return 1.0
    z = scipy.stats.norm.ppf(1 - alpha / 2)
    shift = abs(difference) * math.sqrt(n) / sd_diff
    return float(scipy.stats.norm.cdf(shift - z) + scipy.stats.norm.cdf(-shift - z))


def coverage(top: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue in at least one of the top-``k`` lists (padding ``-1`` ignored)."""
    t = np.asarray(top)[:, :k].ravel()
    t = t[t >= 0]
    return float(np.unique(t).size / max(n_items, 1))


def coverage_comparison(
    variant_tops: list[np.ndarray],
    baseline_tops: list[np.ndarray],
    n_items: int,
    k: int,
    *,
    confidence: float = 0.95,
    n_boot: int = 300,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of the catalogue-coverage difference (a set-level metric).

    Each replicate resamples draws and users (the same users for both variants) and
    recomputes both coverages. Resampling users with replacement shrinks coverage (repeated
    users add no items), so the replicates are centred on the point estimate before taking
    percentiles. No per-user t-test exists for coverage (``p_value`` is NaN).
    """
    r = len(variant_tops)
    n = variant_tops[0].shape[0]
    rng = np.random.default_rng(seed)

    def cov(top: np.ndarray, users: np.ndarray) -> float:
        t = top[users, :k].ravel()
        return float(np.count_nonzero(np.bincount(t[t >= 0], minlength=n_items)) / n_items)

    full = np.arange(n)
    point = float(
        np.mean(
            [cov(v, full) - cov(b, full) for v, b in zip(variant_tops, baseline_tops, strict=True)]
        )
    )
    reps = np.empty(n_boot)
    for t in range(n_boot):
        users = np.asarray(rng.integers(0, n, size=n))
        draws = rng.integers(0, r, size=r)
        reps[t] = np.mean(
            [cov(variant_tops[j], users) - cov(baseline_tops[j], users) for j in draws]
        )
    reps += point - reps.mean()
    alpha = 1.0 - confidence
    return PairedComparison(
        mean_diff=point,
        ci_low=float(np.quantile(reps, alpha / 2)),
        ci_high=float(np.quantile(reps, 1 - alpha / 2)),
        p_bootstrap=min(1.0, 2.0 * min(float((reps <= 0).mean()), float((reps >= 0).mean()))),
        t_stat=math.nan,
        p_value=math.nan,
        sd_diff=math.nan,
        users=n,
        draws=r,
    )
