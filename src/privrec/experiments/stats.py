"""Paired statistics for comparing privacy variants on the same users.

Every variant is evaluated on the same users of the same split, ``repeats`` times (noise
draws), so a comparison works on per-user, per-draw differences ``d[r, u]``. Two sources of
variation matter, and they do not shrink alike:

* **the noise draw.** One draw of a DP mechanism shifts *every* user's score together (a noisy
  popularity ranking is the same list for everyone), so the users of one draw are not
  independent replicates: the draw is the unit of replication. Its variance shrinks only with
  more draws, never with more users.
* **the users.** Which users were evaluated; this part shrinks with more users.

The model is the crossed random-effects one, ``d[r, u] = μ + g_r + u_u + e[r, u]``. The variance
of the mean difference is estimated as ``s²(d̄_r) / R`` (the sample variance of the ``R``
per-draw mean differences: draw effect and per-draw user noise, conditional on the users) plus
``σ̂²_u / n`` (the users' own spread, from the two-way ANOVA mean squares; what generalises the
result to other users like these). The first term rests on only ``R − 1`` degrees of freedom,
so the interval is Banerjee's: half-width ``√(t²_{R−1}·a + t²_{n−1}·b)``, which is never
narrower than nominal whatever the mix of the two terms (a plain t-interval with Satterthwaite
degrees of freedom was measured at 89% coverage with 2 draws; this one at 95–98%). The p-value
inverts the same interval, so "the interval excludes 0" and "p < 1 − confidence" agree.

A per-user t-test or a percentile bootstrap over 2–5 draws ignores or under-estimates the first
term: in an A/A test on ml-100k they missed a true zero difference in up to 22 of 60 runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats

from privrec.errors import ConfigError
from privrec.evaluation.protocol import approx_count

__all__ = [
    "FEW_DRAWS_WIDENING",
    "IDENTICAL_DRAWS_NOTE",
    "MIN_USEFUL_DRAWS",
    "PairedComparison",
    "VarianceComponents",
    "coverage",
    "paired_comparison",
    "power",
    "repeats_needed",
    "significant",
    "users_needed",
]

#: an interval more than this many times as wide as it would be were the between-draw
#: variance known is flagged "too few noise draws" (1.5: t_{0.975} at 3 degrees of freedom is
#: 1.6 times the normal quantile; with 5 draws and the draws dominating it is 1.4)
FEW_DRAWS_WIDENING = 1.5
#: below this many draws every interval is flagged, whatever its estimated widening: a variance
#: from 1–2 degrees of freedom can come out near zero by chance (two draws of a discrete metric
#: such as coverage often agree exactly), and then the widening looks harmless when it is not
MIN_USEFUL_DRAWS = 4
#: why a comparison whose draws did not vary has no interval (see ``identical_draws``)
IDENTICAL_DRAWS_NOTE = (
    "the difference was the same in every noise draw although a side is private (by chance, "
    "with few draws of a coarse metric, or because the noise is fixed or too small to change a "
    "list): the variance between draws estimates as zero, so an interval would count only the "
    "users and be too narrow — none is given"
)
#: users and draws beyond which a planning search gives up (the answer is "not reachable")
_MAX_USERS = 10**9
_MAX_REPEATS = 1000
#: quantiles of χ² at which :func:`power` averages over the estimated between-draw variance
_CHI2_NODES = (np.arange(200) + 0.5) / 200


def significant(x: float | None, digits: int) -> float | None:
    """``x`` to ``digits`` significant figures; ``None`` for NaN, ±inf or ``None``.

    Published statistics are rounded so that no exact count can be solved for from several of
    them at full precision (a t statistic, a standard deviation and a mean once gave the exact
    number of evaluated users); JSON has no NaN or infinity either.
    """
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class VarianceComponents:
    """Where the variance of a per-user, per-draw difference comes from.

    ``d[r, u] = μ + g_r + u_u + e[r, u]``; the estimates are the two-way ANOVA ones, truncated
    at 0. Kept in memory for planning (:func:`power`, :func:`users_needed`,
    :func:`repeats_needed`) and never published: together with the published standard error
    they would give away the number of evaluated users.

    Attributes
    ----------
    draw
        ``σ²_g``: the shift one noise draw gives every user's difference.
    user
        ``σ²_u``: the spread of the users' expected differences.
    residual
        ``σ²_e``: what is left (a user's difference in one draw).
    """

    draw: float
    user: float
    residual: float

    @classmethod
    def estimate(cls, d: np.ndarray) -> tuple[VarianceComponents, float]:
        """Components of a ``(draws, users)`` difference array, and ``s²(d̄_r) / R`` (the
        between-draw term of the mean's variance, not truncated: it is unbiased as it is)."""
        r, n = d.shape
        per_draw = d.mean(axis=1)
        per_user = d.mean(axis=0)
        ms_draw = n * float(per_draw.var(ddof=1))
        ms_user = r * float(per_user.var(ddof=1))
        resid = d - per_draw[:, None] - per_user[None, :] + float(d.mean())
        ms_err = float(np.einsum("ij,ij->", resid, resid)) / ((r - 1) * (n - 1))
        comps = cls(
            draw=max(0.0, (ms_draw - ms_err) / n),
            user=max(0.0, (ms_user - ms_err) / r),
            residual=ms_err,
        )
        return comps, ms_draw / (r * n)

    def draw_term(self, repeats: int, users: int) -> float:
        """Variance of the mean contributed by the draws: ``(σ²_g + σ²_e / n) / R``."""
        return (self.draw + self.residual / users) / repeats

    def user_term(self, users: int) -> float:
        """Variance of the mean contributed by the choice of users: ``σ²_u / n``."""
        return self.user / users


def _half_width(a: float, b: float, draws: int, users: int, alpha: float) -> float:
    """Banerjee's half-width ``√(t²_{R−1}·a + t²_{n−1}·b)`` (``hypot``: no overflow at tiny
    ``alpha``, and a zero term stays zero instead of becoming ``0 · inf``)."""
    ta = float(scipy.stats.t.isf(alpha / 2, draws - 1)) * math.sqrt(a) if a > 0 else 0.0
    tb = float(scipy.stats.t.isf(alpha / 2, users - 1)) * math.sqrt(b) if b > 0 else 0.0
    return math.hypot(ta, tb)


def _p_value(mean: float, a: float, b: float, draws: int, users: int) -> float:
    """The ``alpha`` at which the interval's edge touches 0 (the interval, inverted)."""
    if mean == 0:
        return 1.0
    if a + b <= 0:
        return 0.0

    def gap(log_alpha: float) -> float:
        return _half_width(a, b, draws, users, 10.0**log_alpha) - abs(mean)

    if gap(-300.0) <= 0:
        return 0.0
    return float(10.0 ** scipy.optimize.brentq(gap, -300.0, 0.0, xtol=1e-9))


@dataclass(frozen=True)
class PairedComparison:
    """A variant against its reference on one metric (and one user group).

    Attributes
    ----------
    mean_diff
        Mean over users and draws of (variant − reference).
    ci_low, ci_high
        Banerjee interval at ``confidence``, the draw as the unit of replication (see the
        module docstring); wide when there are few draws, because then it has to be.
    p_value
        Two-sided p-value of "no difference", the interval inverted.
    t_stat
        ``mean_diff / se``.
    se
        Standard error of ``mean_diff``: ``√(draw_var + user_var)``.
    draw_var
        The draws' part of ``se²``: ``s²(d̄_r) / R``.
    user_var
        The users' part of ``se²``: ``σ̂²_u / n`` (zero for catalogue coverage with one user set).
    users, draws
        Sizes (``users`` is exact here and rounded in :meth:`to_dict`).
    confidence
        Of the interval.
    components
        Variance components for planning (``None`` for coverage); never published.
    identical_draws
        Set by the runner when a noisy side's draws did not vary (the difference was the same
        in every draw, or a private variant gave the same lists in every draw): the draws'
        term then estimates as zero where noise is expected, and ``ci_low``/``ci_high`` would
        count only the users. Reports give no interval and no p-value then, only a warning.
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    t_stat: float
    se: float
    draw_var: float
    user_var: float
    users: int
    draws: int
    confidence: float = 0.95
    components: VarianceComponents | None = None
    identical_draws: bool = False

    @property
    def draw_share(self) -> float:
        """Share of ``se²`` that comes from the noise draws (more users cannot shrink it)."""
        total = self.draw_var + self.user_var
        return self.draw_var / total if total > 0 else 0.0

    @property
    def widening(self) -> float:
        """How many times wider the interval is than if the draws' variance were known
        (``t_{R−1}`` instead of the normal quantile): the price of having few draws."""
        if self.se <= 0:
            return 1.0
        alpha = 1.0 - self.confidence
        z = float(scipy.stats.norm.isf(alpha / 2))
        h = _half_width(self.draw_var, self.user_var, self.draws, self.users, alpha)
        return h / (z * self.se)

    @property
    def few_draws(self) -> bool:
        """Too few noise draws for a useful interval: fewer than :data:`MIN_USEFUL_DRAWS`, or
        widened more than :data:`FEW_DRAWS_WIDENING` times by the draws' few degrees of freedom."""
        return self.draws < MIN_USEFUL_DRAWS or self.widening > FEW_DRAWS_WIDENING

    def note(self) -> str | None:
        """One sentence for reports when :attr:`identical_draws` or :attr:`few_draws`, else
        ``None``."""
        if self.identical_draws:
            return IDENTICAL_DRAWS_NOTE
        if not self.few_draws:
            return None
        head = (
            f"only {self.draws} noise draws: the variance between draws rests on "
            f"{self.draws - 1} degree(s) of freedom, so"
        )
        if self.widening > FEW_DRAWS_WIDENING:
            body = f"the interval is {self.widening:.1f}× as wide as with many draws"
        else:
            body = "the interval may be too wide or too narrow (the draws may agree by chance)"
        return f"{head} {body} — run 5 or more repeats for a useful interval"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, rounded: the number of users as ``"≈ 940"`` and every statistic to
        a few significant figures, so that no exact count (of all users or of an activity
        group) can be solved for; the variance components are left out for the same reason.
        With :attr:`identical_draws` the interval and p-value are ``null``: they would count
        only the users, and the ``note`` says so."""
        honest = not self.identical_draws
        return {
            "mean_diff": significant(self.mean_diff, 4),
            "ci_low": significant(self.ci_low, 4) if honest else None,
            "ci_high": significant(self.ci_high, 4) if honest else None,
            "confidence": self.confidence,
            "p_value": significant(self.p_value, 2) if honest else None,
            "t_stat": significant(self.t_stat, 3),
            "se": significant(self.se, 3),
            "draw_share": None if self.se <= 0 else round(self.draw_share, 2),
            "draws": self.draws,
            "users": approx_count(self.users),
            "few_draws": self.few_draws,
            "identical_draws": self.identical_draws,
            "note": self.note(),
        }


def _comparison(
    mean: float,
    draw_var: float,
    user_var: float,
    draws: int,
    users: int,
    confidence: float,
    components: VarianceComponents | None,
) -> PairedComparison:
    se = math.sqrt(max(draw_var, 0.0) + max(user_var, 0.0))
    h = _half_width(draw_var, user_var, draws, users, 1.0 - confidence)
    # an exact zero standard error: identical draws of identical models, or a constant shift
    t_stat = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return PairedComparison(
        mean_diff=mean,
        ci_low=mean - h,
        ci_high=mean + h,
        p_value=_p_value(mean, draw_var, user_var, draws, users),
        t_stat=t_stat,
        se=se,
        draw_var=draw_var,
        user_var=user_var,
        users=users,
        draws=draws,
        confidence=confidence,
        components=components,
    )


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), found {confidence}")


def paired_comparison(
    variant: np.ndarray, baseline: np.ndarray, *, confidence: float = 0.95
) -> PairedComparison:
    """Compare per-user metric arrays of shape ``(draws, users)`` (same users, paired draws).

    At least 2 draws: with one, nothing measures how much a noise draw moves every user at
    once, and an interval from the users alone is too narrow.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base = rng.random((5, 300))
    >>> c = paired_comparison(base + 0.05 + rng.normal(0, 0.01, (5, 1)), base)
    >>> bool(c.ci_low > 0 and c.p_value < 0.01), c.draws, round(c.draw_share, 1)
    (True, 5, 1.0)
    """
    a = np.atleast_2d(np.asarray(variant, dtype=np.float64))
    b = np.atleast_2d(np.asarray(baseline, dtype=np.float64))
    if a.shape != b.shape or a.shape[0] < 2 or a.shape[1] < 2:
        raise ConfigError(
            "need two equal (draws, users) arrays with >= 2 draws and >= 2 users, "
            f"got {a.shape}, {b.shape}"
        )
    _check_confidence(confidence)
    d = a - b
    r, n = d.shape
    comps, draw_var = VarianceComponents.estimate(d)
    return _comparison(
        float(d.mean()), draw_var, comps.user_term(n), r, n, confidence, components=comps
    )


def power(
    components: VarianceComponents,
    difference: float,
    *,
    repeats: int,
    users: int,
    alpha: float = 0.05,
) -> float:
    """Probability that :func:`paired_comparison` with ``repeats`` draws and ``users`` users
    finds ``difference`` (two-sided, level ``alpha``).

    The interval's width is itself random — its draw term is estimated from ``repeats − 1``
    degrees of freedom — so the power averages over that estimate's χ² distribution: with 2
    draws even a large difference is often missed.
    """
    if repeats < 2 or users < 2:
        raise ConfigError(f"power needs >= 2 draws and >= 2 users, found {repeats}, {users}")
    a = components.draw_term(repeats, users)
    b = components.user_term(users)
    se = math.sqrt(a + b)
    if se <= 0:
        return 1.0 if difference != 0 else alpha
    ta = float(scipy.stats.t.isf(alpha / 2, repeats - 1))
    tb = float(scipy.stats.t.isf(alpha / 2, users - 1))
    spread = scipy.stats.chi2.ppf(_CHI2_NODES, repeats - 1) / (repeats - 1)
    h = np.hypot(ta * np.sqrt(a * spread), tb * math.sqrt(b))
    shift = abs(difference)
    p = scipy.stats.norm.cdf((shift - h) / se) + scipy.stats.norm.cdf((-shift - h) / se)
    return float(p.mean())


def _smallest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Smallest ``x`` in ``[lo, hi]`` with ``ok(x)`` for a monotone ``ok``; ``None`` if none."""
    if not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def users_needed(
    components: VarianceComponents,
    difference: float,
    *,
    repeats: int,
    alpha: float = 0.05,
    power_: float = 0.8,
) -> int | None:
    """Users needed, at ``repeats`` draws, to detect ``difference`` with probability ``power_``.

    ``None`` when no number of users suffices: the draws' own variance ``σ²_g / R`` does not
    shrink with users, and when it alone hides ``difference`` only more draws help
    (:func:`repeats_needed`).

    >>> c = VarianceComponents(draw=0.0, user=0.04, residual=0.01)
    >>> users_needed(c, 0.01, repeats=5)
    3410
    >>> noisy = VarianceComponents(draw=1e-4, user=0.04, residual=0.01)
    >>> users_needed(noisy, 0.01, repeats=3) is None  # σ²_g / 3 alone hides 0.01
    True
    """
    if difference == 0:
        raise ConfigError("the difference to detect must be non-zero")

    def ok(n: int) -> bool:
        return power(components, difference, repeats=repeats, users=n, alpha=alpha) >= power_

    return _smallest(ok, 2, _MAX_USERS)


def repeats_needed(
    components: VarianceComponents,
    difference: float,
    *,
    users: int,
    alpha: float = 0.05,
    power_: float = 0.8,
) -> int | None:
    """Noise draws needed, with ``users`` users, to detect ``difference`` with probability
    ``power_``; ``None`` beyond 1000 draws (then the users' spread ``σ²_u / n`` is what hides
    it, and more users are needed).

    >>> noisy = VarianceComponents(draw=1e-4, user=0.04, residual=0.01)
    >>> repeats_needed(noisy, 0.01, users=20_000), repeats_needed(noisy, 0.01, users=900)
    (12, None)
    """
    if difference == 0:
        raise ConfigError("the difference to detect must be non-zero")

    def ok(r: int) -> bool:
        return power(components, difference, repeats=r, users=users, alpha=alpha) >= power_

    return _smallest(ok, 2, _MAX_REPEATS)


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
    """Catalogue-coverage difference (a set-level metric: no per-user values to pair).

    The draw is again the unit: the draws' term is the variance of the ``R`` per-draw coverage
    differences over ``R``. The users' term comes from a bootstrap over users (the same
    resample for every draw and both variants): with ``x[b, r]`` the difference in draw ``r``
    on resample ``b``, ``Var(x̄_b) = U + E / R`` and ``mean_r Var(x[b, r]) = U + E``, so the
    users' own part is ``U = (R·Var(x̄_b) − mean_r Var(x[b, r])) / (R − 1)`` — the per-draw
    part ``E`` is already in the draws' term.
    """
    _check_confidence(confidence)
    r = len(variant_tops)
    if r < 2 or len(baseline_tops) != r:
        raise ConfigError(f"coverage needs >= 2 paired draws, found {r} and {len(baseline_tops)}")
    n = variant_tops[0].shape[0]
    rng = np.random.default_rng(seed)

    def cov(top: np.ndarray, users: np.ndarray) -> float:
        t = top[users, :k].ravel()
        return float(np.count_nonzero(np.bincount(t[t >= 0], minlength=n_items)) / n_items)

    full = np.arange(n)
    per_draw = np.array(
        [cov(v, full) - cov(b, full) for v, b in zip(variant_tops, baseline_tops, strict=True)]
    )
    reps = np.empty((n_boot, r))
    for t in range(n_boot):
        users = np.asarray(rng.integers(0, n, size=n))
        reps[t] = [
            cov(v, users) - cov(b, users) for v, b in zip(variant_tops, baseline_tops, strict=True)
        ]
    user_var = r * float(reps.mean(axis=1).var(ddof=1)) - float(reps.var(axis=0, ddof=1).mean())
    user_var = max(0.0, user_var / (r - 1))
    draw_var = float(per_draw.var(ddof=1)) / r
    return _comparison(
        float(per_draw.mean()), draw_var, user_var, r, max(n, 2), confidence, components=None
    )
