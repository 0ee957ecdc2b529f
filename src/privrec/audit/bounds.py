"""Statistics of privacy audits: ε lower bounds from guesses, Clopper–Pearson, AUC.

Everything here works on numbers only (guess counts, scores, membership bits), so it
is tested against closed forms and against exact binomial tails, independently of the
models being audited.

One-run audit (Steinke, Nasr & Jagielski, NeurIPS 2023)
    ``m`` canaries are each included with probability ½, independently. From the
    released output the auditor guesses "in" for the ``k₊`` highest scores, "out" for
    the ``k₋`` lowest and abstains on the rest (``r = k₊ + k₋`` guesses). If the
    mechanism is (ε, δ)-DP with respect to each canary, the number ``V`` of correct
    guesses satisfies (their main theorem, with its δ term)::

        P[V ≥ v] ≤ P[W ≥ v] + 2 m δ · max_{1≤i≤v} P[v > W ≥ v − i] / i,
        W ~ Binomial(r, e^ε / (1 + e^ε)).

    The right-hand side is the p-value of "the mechanism is (ε, δ)-DP"; the ε lower
    bound at confidence 1 − β is the largest ε whose p-value is below β (found by
    bisection: the p-value increases with ε).

Multi-run audit (Jagielski, Ullman & Oprea, NeurIPS 2020)
    Scores of many training runs with and without one canary; at a threshold, the
    false-positive and false-negative rates are bounded above with Clopper–Pearson
    intervals and any (ε, δ)-DP mechanism satisfies ``FPR·e^ε + FNR ≥ 1 − δ`` (and
    symmetrically), giving ``ε ≥ log((1 − δ − FNR̄) / FPR̄)``.

Choosing among several guess counts or thresholds after seeing the scores is a
multiple test; both audits pay for it with a Bonferroni correction (each candidate
is tested at β / number of candidates), so the reported maximum holds at the stated
confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.special
import scipy.stats

from privrec.errors import ConfigError

__all__ = [
    "MultiRunBound",
    "OneRunBound",
    "auc",
    "auc_confidence_interval",
    "best_threshold",
    "clopper_pearson",
    "default_guess_grid",
    "multi_run_bound",
    "one_run_bound",
    "one_run_epsilon",
    "one_run_p_value",
]

_EPS_MAX = 60.0  # beyond this e^ε overflows nothing but nothing is learnt either


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), found {confidence}")
    return float(confidence)


def _check_delta(delta: float) -> float:
    if not 0.0 <= delta < 1.0:
        raise ConfigError(f"delta must be in [0, 1), found {delta}")
    return float(delta)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """p-value of "(ε, δ)-DP" after ``v`` correct guesses out of ``r`` on ``m`` canaries.

    ``P[W ≥ v] + 2mδ · max_i P[v > W ≥ v − i] / i`` with ``W ~ Bin(r, e^ε/(1+e^ε))``
    (see the module docstring), capped at 1.

    >>> round(one_run_p_value(1000, 100, 100, 0.0, 0.0), 30) == round(0.5**100, 30)
    True
    """
    if not (0 <= v <= r <= m):
        raise ConfigError(f"need 0 <= v <= r <= m, found v={v}, r={r}, m={m}")
    if epsilon < 0:
        raise ConfigError(f"epsilon must be >= 0, found {epsilon}")
    _check_delta(delta)
    q = float(scipy.special.expit(epsilon))
    tail = float(scipy.stats.binom.sf(v - 1, r, q))  # P[W >= v]
    extra = 0.0
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        window = np.cumsum(scipy.stats.binom.pmf(v - i, r, q))  # P[v > W >= v - i]
        extra = float(np.max(window / i)) * 2.0 * m * delta
    return min(1.0, tail + extra)


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float) -> float:
    """Largest ε rejected at level ``1 − confidence``: the one-run ε lower bound (0 if none).

    Bisection to 1e-6 on ε; the p-value is non-decreasing in ε.
    """
    beta = 1.0 - _check_confidence(confidence)
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2.0
        if hi > _EPS_MAX:
            return _EPS_MAX
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def default_guess_grid(m: int) -> tuple[int, ...]:
    """Guess counts r tried by default: m/40, m/20, m/10, m/5 and m/2 (even, at least 2).

    Small r wins when only the most extreme scores are informative (a correct model at
    small ε), r = m/2 when every canary is separable (a broken model: all guesses right).
    """
    out = sorted({max(2, 2 * round(m * f / 2)) for f in (1 / 40, 1 / 20, 1 / 10, 1 / 5, 1 / 2)})
    return tuple(r for r in out if r <= m)


@dataclass(frozen=True)
class OneRunBound:
    """Result of a one-run audit: the ε lower bound and how it was reached.

    Attributes
    ----------
    epsilon_lb
        ε lower bound at ``confidence`` (after the Bonferroni correction over ``grid``).
    m, guesses, correct, k_plus, k_minus
        Canaries, guesses made (at the winning guess count), correct guesses, and how
        many "in" / "out" guesses.
    grid
        Guess counts tried; each was tested at ``1 − (1 − confidence) / len(grid)``.
    cap
        The largest bound this audit could give (every guess right at the largest r):
        an audit that reaches it could not separate the model from a broken one.
    per_guess_count
        ``{r: (correct, ε lower bound)}`` for every r tried.
    """

    epsilon_lb: float
    m: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    confidence: float
    delta: float
    grid: tuple[int, ...]
    cap: float
    per_guess_count: dict[int, tuple[int, float]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.guesses if self.guesses else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["per_guess_count"] = {str(k): list(v) for k, v in self.per_guess_count.items()}
        d["accuracy"] = self.accuracy
        return d


def one_run_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    grid: Sequence[int] | None = None,
) -> OneRunBound:
    """ε lower bound from per-canary ``scores`` (higher = "more likely included").

    For each guess count ``r`` in ``grid``: guess "in" for the ``r/2`` highest scores and
    "out" for the ``r/2`` lowest, count the correct guesses, and bound ε at confidence
    ``1 − β/len(grid)``; the maximum over the grid holds at ``1 − β`` (Bonferroni).
    Ties in the scores are broken at random (seeded by the data, so reproducible) —
    a constant score then gives chance-level guesses, never a spurious bound.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    inc = np.asarray(included, dtype=bool).ravel()
    if s.shape != inc.shape:
        raise ConfigError(f"scores and included differ in length: {s.size} vs {inc.size}")
    if s.size < 2:
        raise ConfigError("a one-run audit needs at least 2 canaries")
    if not np.isfinite(s).all():
        raise ConfigError("canary scores must be finite")
    m = int(s.size)
    _check_delta(delta)
    conf = _check_confidence(confidence)
    rs = tuple(sorted({int(r) for r in (grid or default_guess_grid(m))}))
    if not rs or rs[0] < 1 or rs[-1] > m:
        raise ConfigError(f"guess counts must lie in 1..{m}, found {rs}")
    per_conf = 1.0 - (1.0 - conf) / len(rs)
    tie = np.random.default_rng(m).random(m)
    order = np.lexsort((tie, -s))  # descending score, random ties
    per: dict[int, tuple[int, float]] = {}
    best: tuple[float, int, int, int, int] = (-1.0, 0, 0, 0, 0)
    for r in rs:
        kp = r // 2
        km = r - kp
        correct = int(inc[order[:kp]].sum() + (~inc[order[m - km :]]).sum())
        e = one_run_epsilon(m, r, correct, delta, per_conf)
        per[r] = (correct, e)
        if e > best[0]:
            best = (e, r, correct, kp, km)
    cap = one_run_epsilon(m, rs[-1], rs[-1], delta, per_conf)
    e, r, correct, kp, km = best
    return OneRunBound(
        epsilon_lb=e,
        m=m,
        guesses=r,
        correct=correct,
        k_plus=kp,
        k_minus=km,
        confidence=conf,
        delta=float(delta),
        grid=rs,
        cap=cap,
        per_guess_count=per,
    )


# ----------------------------------------------------------------------------- multi-run
def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) interval for a binomial proportion ``k / n``.

    >>> lo, hi = clopper_pearson(0, 100, 0.95)
    >>> lo, round(hi, 4)
    (0.0, 0.0362)
    """
    if not (0 <= k <= n) or n < 1:
        raise ConfigError(f"need 0 <= k <= n and n >= 1, found k={k}, n={n}")
    a = 1.0 - _check_confidence(confidence)
    lo = 0.0 if k == 0 else float(scipy.stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(scipy.stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper–Pearson upper bound at ``confidence``."""
    return clopper_pearson(k, n, 1.0 - 2.0 * (1.0 - confidence))[1]


@dataclass(frozen=True)
class MultiRunBound:
    """Result of a multi-run audit at its best threshold (after Bonferroni over thresholds)."""

    epsilon_lb: float
    runs_in: int
    runs_out: int
    threshold: float
    fpr: float
    fnr: float
    fpr_upper: float
    fnr_upper: float
    confidence: float
    delta: float
    n_thresholds: int
    cap: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _eps_from_rates(fpr_u: float, fnr_u: float, delta: float) -> float:
    best = 0.0
    for a, b in ((fpr_u, fnr_u), (fnr_u, fpr_u)):
        num = 1.0 - delta - b
        if num > 0 and a > 0:
            best = max(best, math.log(num / a))
    return best


def multi_run_bound(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    n_thresholds: int = 15,
    threshold: float | None = None,
) -> MultiRunBound:
    """ε lower bound from scores of runs with (``scores_in``) and without the canary.

    With ``threshold`` given (chosen on other runs), FPR and FNR at it get one-sided
    Clopper–Pearson upper bounds at ``1 − β/2`` each. Otherwise the thresholds are
    ``n_thresholds`` quantiles of the pooled scores, each tested at
    ``1 − β / (2·n_thresholds)`` (union bound over the rates and the thresholds). Then
    ε ≥ max(log((1−δ−FNR̄)/FPR̄), log((1−δ−FPR̄)/FNR̄)). A run's guess is "in" when its
    score exceeds the threshold.
    """
    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    if a.size < 1 or b.size < 1:
        raise ConfigError("a multi-run audit needs runs with and without the canary")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ConfigError("run scores must be finite")
    _check_delta(delta)
    conf = _check_confidence(confidence)
    if n_thresholds < 1:
        raise ConfigError(f"n_thresholds must be >= 1, found {n_thresholds}")
    if threshold is not None:
        thresholds = np.asarray([float(threshold)])
        n_thresholds = 1
    else:
        pooled = np.concatenate([a, b])
        thresholds = np.unique(np.quantile(pooled, np.linspace(0, 1, n_thresholds + 2)[1:-1]))
    per_conf = 1.0 - (1.0 - conf) / (2 * n_thresholds)
    best: MultiRunBound | None = None
    for t in thresholds:
        fp = int((b > t).sum())  # "in" guessed for a run without the canary
        fn = int((a <= t).sum())
        fpr_u, fnr_u = _upper(fp, b.size, per_conf), _upper(fn, a.size, per_conf)
        e = _eps_from_rates(fpr_u, fnr_u, delta)
        if best is None or e > best.epsilon_lb:
            best = MultiRunBound(
                epsilon_lb=e,
                runs_in=int(a.size),
                runs_out=int(b.size),
                threshold=float(t),
                fpr=fp / b.size,
                fnr=fn / a.size,
                fpr_upper=fpr_u,
                fnr_upper=fnr_u,
                confidence=conf,
                delta=float(delta),
                n_thresholds=n_thresholds,
                cap=_eps_from_rates(
                    _upper(0, b.size, per_conf), _upper(0, a.size, per_conf), delta
                ),
            )
    assert best is not None
    return best


def best_threshold(
    scores_in: np.ndarray, scores_out: np.ndarray, delta: float, confidence: float = 0.95
) -> float:
    """The threshold whose Clopper–Pearson ε bound is largest on these runs.

    Candidates are the 5%–95% quantiles of the pooled scores (extreme thresholds have
    too few runs beyond them to bound anything). Meant for a first half of the runs;
    the bound is then computed on the other half at this threshold.
    """
    a = np.asarray(scores_in, dtype=np.float64).ravel()
    b = np.asarray(scores_out, dtype=np.float64).ravel()
    pooled = np.concatenate([a, b])
    best, best_t = -1.0, float(np.median(pooled))
    for t in np.unique(np.quantile(pooled, np.linspace(0.05, 0.95, 37))):
        fpr_u = _upper(int((b > t).sum()), b.size, 1.0 - (1.0 - confidence) / 2)
        fnr_u = _upper(int((a <= t).sum()), a.size, 1.0 - (1.0 - confidence) / 2)
        e = _eps_from_rates(fpr_u, fnr_u, delta)
        if e > best:
            best, best_t = e, float(t)
    return best_t


# ---------------------------------------------------------------------------------- AUC
def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count ½.

    >>> auc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    1.0
    """
    p = np.asarray(positive, dtype=np.float64).ravel()
    n = np.asarray(negative, dtype=np.float64).ravel()
    if p.size == 0 or n.size == 0:
        raise ConfigError("AUC needs at least one positive and one negative score")
    ranks = scipy.stats.rankdata(np.concatenate([p, n]))  # average ranks for ties
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2.0
    return float(u / (p.size * n.size))


def auc_confidence_interval(
    positive: np.ndarray,
    negative: np.ndarray,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auc` (positives and negatives resampled apart)."""
    conf = _check_confidence(confidence)
    p = np.asarray(positive, dtype=np.float64).ravel()
    n = np.asarray(negative, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for t in range(n_boot):
        vals[t] = auc(p[rng.integers(0, p.size, p.size)], n[rng.integers(0, n.size, n.size)])
    a = (1.0 - conf) / 2.0
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1.0 - a))
