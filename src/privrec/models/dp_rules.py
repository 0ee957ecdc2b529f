"""Default rules of the DPALS family: every default is a function of ε, σ and released statistics.

Why a module of its own: the defaults are what travels to data nobody tuned on, so each is a
*rule* — scaling with the noise, the budget and a private summary of the data — rather than a
constant fitted to one set, and each says where it was chosen (validation splits only) and why it
costs no privacy (it reads only ε, σ, public settings and already-released noisy statistics).
Central DPALS, cross-silo DPALS and federated DPALS share them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from privrec.errors import ConfigError, UtilityWarning
from privrec.privacy.bounds import quantile_from_histogram

__all__ = [
    "COUNT_SHARE",
    "COUNT_SHARE_MAX",
    "COUNT_SHARE_SCALE",
    "DPALS_SHARE_MAX",
    "DPALS_SHARE_SCALE",
    "HEAD_RULE",
    "HEAD_SQRT_SCALE",
    "ITEM_NORM_SCALE",
    "MAX_ADAPTIVE_FACTORS",
    "MAX_BLEND",
    "SMALL_DATA_SCALE",
    "LengthProfile",
    "count_share",
    "dpals_count_share",
    "dpals_head",
    "federated_head_size",
    "federated_head_threshold",
    "head_capacity",
    "head_density",
    "head_floor",
    "head_threshold",
    "item_norm_scale",
    "low_signal_blend",
    "resolve_alpha0",
    "resolve_bound",
    "resolve_factors",
    "resolve_item_norm_exponent",
    "resolve_iterations",
    "resolve_one_round",
    "resolve_popularity_blend",
    "resolve_regularization",
    "resolve_shrinkage",
    "select_head",
    "small_data_warning",
    "sqrt_head_threshold",
    "user_blend",
]


@dataclass(frozen=True)
class LengthProfile:
    """What the released (noisy) history-length histogram says about the data.

    Post-processing of :func:`privrec.privacy.bounds.noisy_length_histogram` only.
    """

    histogram: np.ndarray
    noise_std: float
    max_length: int

    @property
    def n_users(self) -> float:
        """Noisy number of users with at least one interaction (the unbiased noisy total, ≥ 1)."""
        return max(1.0, float(np.sum(self.histogram)))

    def quantile(self, q: float) -> float:
        """The ``q``-quantile of history lengths, at most the catalogue size."""
        out = quantile_from_histogram(self.histogram, q, noise_std=self.noise_std)
        return min(out, float(self.max_length))


def resolve_bound(
    bound: int | None, profile: LengthProfile | None, quantile: float, floor: int = 2
) -> int:
    """B: the given bound, else the ``quantile`` of the private history lengths (at least ``floor``).

    Chosen on validation splits (ml-100k, ml-1m-implicit-r3, gowalla-lightgcn, movietweetings-100k
    and a short-history synthetic set): the 75th percentile matches what a grid picked on the long-
    and short-history sets alike (B = 100 on ml-1m, 30 on gowalla, 10 on movietweetings).
    """
    if bound is not None:
        return int(bound)
    if profile is None:
        raise ValueError("a data-adaptive bound needs the released length profile")
    return max(floor, round(profile.quantile(quantile)))


#: DPEASE's share of the counts-and-Gram rate spent on the counts (:func:`count_share`): the
#: share without a length histogram, and the bounds of the n·ε rule.
COUNT_SHARE = 0.1
COUNT_SHARE_MAX = 0.75
#: n·ε at and above which the counts get :data:`COUNT_SHARE`, and below which they get more.
COUNT_SHARE_SCALE = 8000.0


def count_share(share: float | None, profile: LengthProfile | None, epsilon: float) -> float:
    """DPEASE's share of the counts-and-Gram rate (Σ 1/z²) spent on the head-selection counts.

    The given share, else :data:`COUNT_SHARE` without a released length histogram, else a
    rule of the noisy ``n·ε``: :data:`COUNT_SHARE` × ``COUNT_SHARE_SCALE / (n·ε)`` within
    [:data:`COUNT_SHARE`, :data:`COUNT_SHARE_MAX`]. Why: the Gram's pair statistics need many
    users to rise above the noise while the counts need few, so with few users × ε the counts
    (which pick the head and, joined to the Gram diagonal, carry the popularity prior) are
    where the budget buys ranking quality. Post-processing of the released histogram; the
    split is valid after it (:class:`~privrec.models.dp_ease.EaseBudget`).
    """
    if share is not None:
        return float(share)
    if profile is None:
        return COUNT_SHARE
    scaled = COUNT_SHARE * COUNT_SHARE_SCALE / max(profile.n_users * epsilon, 1e-9)
    return min(COUNT_SHARE_MAX, max(COUNT_SHARE, scaled))


#: DPALS's count share (:func:`dpals_count_share`): the largest share, and the ε × users ×
#: median history per catalogue item below which the counts get more than the base share.
DPALS_SHARE_MAX = 0.5
DPALS_SHARE_SCALE = 10.0


def dpals_count_share(
    base: float, profile: LengthProfile | None, n_items: int, epsilon: float
) -> float:
    """DPALS's share of the rate after the length histogram spent on the item counts.

    ``base`` (the share ``count_noise_ratio`` gives) without a released histogram, else raised
    where the data are thin per catalogue item: with ``x = ε · n̂ · median history / n_items``
    (the noisy users and their median history length from the histogram; the catalogue size
    is public), ``base × DPALS_SHARE_SCALE / x`` within [``base``, :data:`DPALS_SHARE_MAX`].
    Why: ``x`` is the typical count per item in units of 1/ε — the signal every per-item
    statistic carries against its noise. Where it is small the factor statistics of most head
    items stay below their noise, the popularity part carries the ranking and the counts are
    where budget buys it (validation splits: x ≤ 9 gained up to +10% on gowalla at ε = 0.5 and
    +15–28% on sparse sets at ε = 1 with 0.4–0.7 of the rate; x ≥ 12 lost up to 4% with 0.4 —
    ``benchmarks/results/dpals_count_share.md``). Post-processing of the released histogram;
    valid by :func:`~privrec.models.dp_als_accounting.split_rest`.
    """
    if profile is None:
        return base
    x = epsilon * profile.n_users * max(profile.quantile(0.5), 1.0) / max(n_items, 1)
    return min(max(DPALS_SHARE_MAX, base), max(base, base * DPALS_SHARE_SCALE / max(x, 1e-9)))


#: Largest data-adaptive factor count k (:func:`resolve_factors`).
MAX_ADAPTIVE_FACTORS = 64


def resolve_factors(
    factors: int | None, profile: LengthProfile | None, epsilon: float, scale: float
) -> int:
    """k: the given size, else a power of two near ``n·ε / scale`` within [8, 64] (≤ items / 4, ≥ 2).

    Each item factor is learnt from noisy statistics whose signal grows with the number of
    users n and whose noise shrinks with ε; extra dimensions only add noise until ``n·ε`` is
    large (on validation: 8 factors won below n·ε ≈ 15,000 — ml-100k at every ε, ml-1m at
    ε ≤ 1 — and 32 above — ml-1m at ε = 5, gowalla at ε ≥ 1). n is the noisy user count of
    the released length histogram. A rank above a quarter of the catalogue is never useful.
    """
    if factors is not None:
        return int(factors)
    if profile is None:
        raise ValueError("data-adaptive factors need the released length profile")
    target = min(float(MAX_ADAPTIVE_FACTORS), max(8.0, profile.n_users * epsilon / scale))
    return min(int(2 ** round(math.log2(target))), max(2, profile.max_length // 4))


def resolve_one_round(
    one_round: bool | None, profile: LengthProfile | None, epsilon: float, scale: float
) -> bool:
    """Whether DPALS fits in one round: True when the noisy ``n·ε`` is below ``scale``.

    In one round the item factors start from the released counts, every private step solves the
    users from them (the same sums, fresh noise) and the item factors are the mean of the steps'
    solves — T noisy copies of one statistic, about a single step with √T less noise. Below ``n·ε ≈ 1000`` (the same scale
    at which :func:`resolve_factors` would want less than one factor) a second round of user
    solves adds more noise than it learns. Chosen on validation only: ml-100k users at ε = 0.5
    (n·ε ≈ 330, Recall@20 +0.031) and ε = 1 (+0.004), ml-1m-implicit-r3 at ε = 0.1 (n·ε ≈ 600,
    +0.004) won; ml-1m at ε = 0.2 (n·ε ≈ 1200) tied and at ε = 0.5 (≈ 3000) lost 0.013 with it,
    so larger n·ε keep separate rounds (``benchmarks/bench_dpals_small_eps.py``). n is the noisy
    user count of the released length histogram and the step releases are the same either way,
    so the choice costs no privacy. No profile (B and k given) keeps separate rounds.
    """
    if one_round is not None:
        return bool(one_round)
    if profile is None:
        return False
    return profile.n_users * epsilon < scale


#: n·ε below which DPEASE and FederatedMF warn that DPPopularity or DPALS likely rank better
SMALL_DATA_SCALE = 4000.0


def small_data_warning(
    model: str, n_users: float, epsilon: float, scale: float = SMALL_DATA_SCALE
) -> None:
    """Warn (:class:`~privrec.errors.UtilityWarning`) when ``n·ε`` is below ``scale``.

    DPEASE and FederatedMF spend most of the budget on statistics (an item Gram matrix, per-round
    model updates) whose signal grows with the number of users n while the noise does not, and
    only a small, fixed share on the item counts their popularity fallback ranks by — so where
    n·ε is small they fall below DPPopularity, which spends everything on the counts. Measured
    with defaults, user-level ε = 1 (``benchmarks/results/unseen_sets.md``,
    ``privacy_utility.md``, ``short_history.md``): DPEASE below or level with DPPopularity on
    every set with n·ε < 3000 (ml-latest-small 608 users, ml-100k 660, lastfm-2k 1,883,
    book-crossing 2,946 — 7–67% lower) and above it on every set from n·ε ≈ 5900
    (movietweetings-100k, ml-1m, the median-5 synthetic set); FederatedMF (central) below on
    three of those four small sets. The scale sits between the two groups. DPALS gives the
    counts a larger share and holds up better there (ahead on ml-100k and lastfm-2k, level on
    ml-latest-small, 8% behind on book-crossing), so it does not warn. ``n_users`` is a
    noisy (released) or public population count, so the warning is post-processing; the value
    it prints is rounded to two significant figures.
    """
    n_eps = n_users * epsilon
    if n_eps >= scale:
        return
    shown = float(f"{max(n_eps, 0.0):.2g}")
    warnings.warn(
        f"{model}: users × ε is about {shown:g} (< {scale:g}): at this size its noisy statistics "
        "carry little signal and it has ranked below DPPopularity on such data sets "
        "(benchmarks/results/unseen_sets.md); DPALS or DPPopularity is likely the better choice, "
        "or a larger ε",
        UtilityWarning,
        stacklevel=3,
    )


#: Weight of step T − 1's item solve in DPALS's released item factors (from T = 3 on).
STEP_AVERAGING = 0.25


def resolve_step_averaging(weight: float | None, iterations: int, one_round: bool) -> float:
    """Weight w of the previous step's solve in the released item factors ``w·ŷ_(T−1) + (1−w)·ŷ_T``.

    Consecutive steps' item solves carry independent noise, and from the second step on they
    estimate nearly the same factors, so a weighted mean of the last two has less noise at a
    small bias; both solves are released already, so the mean is post-processing and costs
    no privacy. Default ¼ when T ≥ 3; 0 for T ≤ 2, where step T − 1 = 1 solves from users fitted
    to the random start (it lost there: ml-1m-implicit-r3 ε = 1 0.1708 → 0.1695, gowalla ε = 1
    0.0500 → 0.0495), and in one round, whose factors are already the mean of every step's
    solve. Chosen on validation only (3 seeds, last solve → ¼): ml-1m-implicit-r3 ε = 2 / 5 / 10
    0.2026 → 0.2046 / 0.2327 → 0.2363 / 0.2398 → 0.2449, ml-100k 0.2583 → 0.2686 / 0.3263 →
    0.3324 / 0.3587 → 0.3654, gowalla-lightgcn 0.0658 → 0.0672 / 0.0931 → 0.0935 / 0.1054 →
    0.1070, movietweetings-100k flat (±0.0004), a median-5 synthetic set ε = 5 / 10 0.2114 →
    0.2107 / 0.2100 → 0.2095 (inside one sd). ⅓ was about as good; the plain mean of the last
    two or of all steps lost (``benchmarks/results/dpals_rules.md``).
    """
    if one_round or iterations < 2:
        return 0.0
    if weight is not None:
        return float(weight)
    return STEP_AVERAGING if iterations >= 3 else 0.0


def resolve_iterations(iterations: int | None, epsilon: float) -> int:
    """Default T: 2 private steps below ε = 2 (each step costs budget), 3 from there on."""
    if iterations is not None:
        return iterations
    return 2 if epsilon < 2.0 else 3


#: α0 of the fixed default, and the head density (noisy counts per head item per user) at which
#: the density rule gives it (:func:`resolve_alpha0`)
ALPHA0_FIXED = 2.0
_ALPHA0_DENSITY = 0.04
_ALPHA0_FLOOR = 0.25


def resolve_alpha0(
    alpha0: float | str, counts_head: np.ndarray, profile: LengthProfile | None
) -> float:
    """α0, the weight of every user's unobserved cells (the noisy Gramian) in the solves.

    ``alpha0`` a number: that value. ``"density"``: ``2·min(1, √(d / 0.04))``, at least 0.25,
    from the head's density ``d = Σ_j ñ_j / (n·|head|)`` — the noisy (sampled) counts of the
    head items over the noisy number of users times the head size. Why: on validation splits
    the best α0 falls with the density of the trained head — ml-100k (d ≈ 0.08) and
    ml-1m-implicit-r3 (0.05–0.07) want 2–4, movietweetings-100k (0.004–0.008) and gowalla
    (0.002–0.004) 0.25–0.5 (``benchmarks/results/dpals_alpha0.md``): where few of a head
    item's users saw it, a heavy "not seen" term pulls every item's score to zero and leaves
    the noisy per-item statistics to decide the ranking. Dense heads keep the fixed 2.
    Post-processing of released values (noisy counts, the noisy length histogram): it costs no
    privacy. Without a length histogram (a fixed bound B) there is no private ``n``, and the
    fixed value is used.
    """
    if not isinstance(alpha0, str):
        return float(alpha0)
    if alpha0 != "density":
        raise ConfigError(f"alpha0 must be a number ≥ 0 or 'density', found {alpha0!r}")
    d = head_density(counts_head, profile)
    if d is None:
        return ALPHA0_FIXED
    return float(
        min(ALPHA0_FIXED, max(_ALPHA0_FLOOR, ALPHA0_FIXED * math.sqrt(d / _ALPHA0_DENSITY)))
    )


def head_density(counts_head: np.ndarray, profile: LengthProfile | None) -> float | None:
    """``d = Σ_j ñ_j / (n·|head|)``: the trained head's noisy density, or ``None`` without a
    length histogram (no private ``n``) or without head items. From released values only."""
    if profile is None or counts_head.size == 0:
        return None
    return float(np.maximum(counts_head, 0.0).sum()) / (profile.n_users * counts_head.size)


#: γ's scale in the density rule ``γ = 0.75·(1 − min(1, √(d / 0.04)))``
ITEM_NORM_SCALE = 0.75


def resolve_item_norm_exponent(
    value: float | str, counts_head: np.ndarray, profile: LengthProfile | None
) -> float:
    """γ: the released item factors' norms are divided out to this power when scoring.

    A user's head scores are ``x_u · y_j / |y_j|^γ`` before the popularity blend
    (post-processing of the released factors: no privacy cost). ``value`` a number: that
    value. ``"density"``: ``0.75·(1 − min(1, √(d / 0.04)))`` from the head's noisy density
    ``d`` (:func:`head_density`, the quantity behind :func:`resolve_alpha0`; 0 without a
    length histogram). Why: on a sparse head a released item factor is mostly a noisy,
    count-weighted sum of its users' factors, so its norm says how popular the item is (and
    how much noise it carries) more than how well it fits a user — and popularity already
    enters through the blend of noisy counts. Dividing the norm out lifted gowalla's
    validation Recall@20 by 3–5% at every ε (γ ≈ 0.55–0.6 there); dense heads (ml-100k,
    ml-1m at d ≥ 0.04) keep γ = 0, where it cost up to 6% (ml-1m at ε = 20, γ = 0.75);
    movietweetings-100k and the short-history synthetic set moved by less than 1%
    (``benchmarks/results/dpals_item_norm.md``). Not the default: on gowalla's test split
    the same fits scored +0.6% / −1.5% / −3.3% at ε = 1 / 5 / 20.
    """
    if not isinstance(value, str):
        return float(value)
    if value != "density":
        raise ConfigError(
            f"item_norm_exponent must be a number in [0, 2] or 'density', found {value!r}"
        )
    d = head_density(counts_head, profile)
    if d is None:
        return 0.0
    return float(ITEM_NORM_SCALE * (1.0 - min(1.0, math.sqrt(d / _ALPHA0_DENSITY))))


def item_norm_scale(factors_head: np.ndarray, exponent: float) -> np.ndarray | None:
    """Per head item ``1 / |y_j|^γ`` (0 for an all-zero factor), or ``None`` when γ = 0."""
    if exponent == 0.0:
        return None
    norms = np.linalg.norm(np.asarray(factors_head, dtype=np.float64), axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, safe ** (-exponent), 0.0)


def resolve_regularization(regularization: float | None, sigma: float, clip_norm: float) -> float:
    """Default item ridge λ = 400·σ·Γ² (at least 1): proportional to the noise on the statistics.

    The noisy left-hand sides carry noise of standard deviation ``r1·σ·Γ²`` per
    entry, so the ridge that keeps the item solves stable grows with σ; the
    factor 400 was fitted on validation data (ml-1m, gowalla) at ε ∈ {1, 5, 10}.
    It depends on σ only (data-independent), so it costs no privacy. (With a
    data-adaptive B the model passes the σ that its statistics' noise actually
    has, :attr:`DPALS.effective_noise_scale_`.)
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


def user_blend(beta: float, shrinkage: float, lengths: np.ndarray) -> np.ndarray:
    """Per-user blend weight ``β + s / n_u`` as a column (``n_u``: the user's own history length).

    A user's factor scores rest on their own ``n_u`` items: the fewer, the noisier the
    estimate of their taste, so the fewer items, the more weight the (far less noisy)
    popularity prior gets — shrinkage towards the prior with weight ∝ 1/n_u. Computed
    from that user's own data only, for that user's own list (joint DP: no privacy cost).
    ``s = 0`` gives every user β. Chosen on validation splits: it lifts short-history
    data (movietweetings, the synthetic set) to popularity level and above at a small
    cost on gowalla (see :func:`resolve_shrinkage`).
    """
    n = np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    return (beta + shrinkage / n).astype(np.float32)[:, None]


def resolve_shrinkage(
    shrinkage: float | None,
    blend: float | None,
    profile: LengthProfile | None,
    factor: float,
) -> float:
    """Default per-user shrinkage s of the blend (:func:`user_blend`): ``factor / median``.

    Used when both the blend and the shrinkage are left to their defaults and a length
    profile was released: with the median history length m, user u's blend weight is
    ``β + factor / (m n_u)``. Two reasons compound: a user's own taste estimate rests on
    their n_u items, and the item factors themselves on co-occurrences within histories of
    typical length m — on short-history data (movietweetings, m ≈ 4) a factor model barely
    beats popularity even without noise, so this part must not fade with ε (a version that
    scaled with β lost 5–9% there at ε ≥ 10 on validation); on long-history data (ml-1m,
    m ≈ 57) it is negligible. A fixed blend, or no profile, keeps the blend constant across
    users (as before) unless a shrinkage is given.
    """
    if shrinkage is not None:
        return float(shrinkage)
    if blend is not None or profile is None:
        return 0.0
    return factor / max(profile.quantile(0.5), 1.0)


def head_threshold(head_snr: float, rhs_std: float, count_sample: int) -> float:
    """Noisy-count threshold of the automatic head rule: ``head_snr · r2σ · √(count_sample / 100)``.

    An item is trained when its count can rise above the right-hand-side noise
    (std ``r2·σ`` in units of Γ). Sampled counts shrink with the per-user
    sample, so the threshold does too; the √ scaling and ``head_snr = 7`` were
    fitted on validation data (ml-1m at 100 sampled items, gowalla at 30).
    From σ and public settings only: no privacy cost.
    """
    return head_snr * rhs_std * math.sqrt(count_sample / 100.0)


def head_capacity(noisy_counts: np.ndarray, factors: int) -> int:
    """Most head items a rank-``factors`` model can learn: ``⌊Σ_j ñ_j / k⌋`` (at least 1).

    The head's item factors hold ``n_head · k`` numbers, learnt from the interactions the
    counts see; a head with more parameters than observations trains items from almost
    nothing. The noise threshold (:func:`head_threshold`) alone falls with σ, so at large ε
    it admits ever more rare items, each with a factor that is mostly noise — and every user
    who has one solves from that noise, so the whole model degrades. On gowalla-lightgcn
    validation (Recall@20, 2 seeds) the head grew from 6,366 items at ε = 10 to 14,054 at
    ε = 20 and Recall@20 fell from 0.104 to 0.096; capped at Σñ / k (5,756 items) ε = 20
    scores 0.120 (half the cap: 0.111, twice: 0.106). It scales with n (the counts' total)
    and k (itself a rule of n·ε) — no constant is fitted: one observation per parameter.
    The sum of the noisy counts is their unbiased noisy total, so the cap is post-processing
    of the released counts (no privacy cost). It does not bind on ml-100k or
    ml-1m-implicit-r3 (Σñ / k is above their catalogue or their noise-rule head) and on
    movietweetings-100k it changed validation Recall@20 within one seed's sd.

    Known limits (validation, ``benchmarks/results/dpals_rules.md``): the harm is noise-driven
    — with almost no noise (gowalla at ε = 1000) the full head scores 0.141 and the capped one
    0.126 — so the cap is a data-scaled proxy, not the mechanism; and on the short-history
    synthetic set of ``bench_short_history.py`` it binds hard at ε ≥ 10 (about 1,100 → 320
    items) and costs 5% Recall@20. :func:`sqrt_head_threshold` (``dpals_head(rule="sqrt")``)
    replaces the cap by a threshold that grows as √σ: it removes that cost and keeps gowalla
    monotone, but gives back movietweetings-100k's gain at ε = 20 (0.2723 → 0.2679).
    """
    return max(1, int(float(np.sum(noisy_counts, dtype=np.float64)) // max(int(factors), 1)))


def head_floor(noisy_counts: np.ndarray, minimum: int, share: float = 0.25) -> int:
    """Fewest head items: ``minimum``, or more if it takes more to hold ``share`` of the count mass.

    An item off the head is never recommended, so a head that holds a small part of the
    interactions caps recall whatever the noise: with 40,981 items and histories spread over
    them (gowalla-lightgcn), the noise threshold at ε = 1 kept 316 items, which hold about a
    tenth of the noisy count mass. The floor is the number of largest noisy counts that sum to
    ``share`` (a quarter) of their noisy total — it grows with how spread out the data are,
    not with a catalogue size fitted to one set. On validation (Recall@20, 2 seeds) gowalla at
    ε = 1 rose from 0.0415 (head 316) to 0.047–0.048 with 600–1,200 items and ε = 2 from
    0.0621 to 0.0672; a fixed floor of 600 lost on ml-1m-implicit-r3 (0.171 → 0.158 at ε = 1)
    and ml-100k (0.222 → 0.195), where a quarter of the counts sits in < 100 items, so the
    rule leaves them (and movietweetings-100k) at ``minimum``. ``share`` = 1/4 was compared
    with 1/2 on gowalla only (the one set where it binds): 2,400 items scored 0.045 at ε = 1.
    Post-processing of the released counts (no privacy cost).
    """
    c = np.sort(np.asarray(noisy_counts, dtype=np.float64))[::-1]
    total = float(np.sum(c))
    if total <= 0 or len(c) == 0:
        return int(minimum)
    held = int(np.searchsorted(np.cumsum(c), share * total)) + 1
    return max(int(minimum), min(held, len(c)))


def select_head(
    noisy_counts: np.ndarray,
    fraction: float | None,
    threshold: float,
    minimum: int,
    capacity: int | None = None,
) -> np.ndarray:
    """Head items from the noisy counts alone (post-processing), sorted by id.

    With ``fraction`` set: the ``ceil(fraction · n_items)`` largest noisy counts.
    Otherwise: every item whose noisy count is at least ``threshold`` (the
    model passes ``head_snr`` × the right-hand-side noise std, so an item is
    trained only when its statistics can rise above the noise), at most
    ``capacity`` of them (the largest counts; central DPALS passes
    :func:`head_capacity`, ``None`` keeps every item above the threshold), and
    never fewer than ``minimum`` items (or the whole catalogue when smaller;
    the floor wins over the cap). DPALS calls it through :func:`dpals_head`.
    """
    n_items = len(noisy_counts)
    if fraction is not None:
        n_head = max(1, math.ceil(fraction * n_items))
    else:
        n_head = int(np.count_nonzero(noisy_counts >= threshold))
        if capacity is not None:
            n_head = min(n_head, int(capacity))
        n_head = min(n_items, max(n_head, minimum))
    return np.sort(np.argsort(-noisy_counts, kind="stable")[:n_head])


#: Scale c of :func:`sqrt_head_threshold` (``c² = 1/16``; chosen on gowalla validation only).
HEAD_SQRT_SCALE = 0.25

#: The head rule :func:`dpals_head` applies when none is given: ``"capacity"`` (the noise
#: threshold, at most :func:`head_capacity` items) or ``"sqrt"`` (the noise threshold raised to
#: :func:`sqrt_head_threshold`, no capacity). Both keep :func:`head_floor`. ``"sqrt"`` wins on
#: gowalla ε = 10 and the short-history synthetic set but loses 0.005 on movietweetings-100k at
#: ε = 20 (validation; see :func:`sqrt_head_threshold`), so the capacity stays the default.
HEAD_RULE: Literal["capacity", "sqrt"] = "capacity"


def sqrt_head_threshold(
    noisy_counts: np.ndarray,
    rhs_std: float,
    count_sample: int,
    factors: int,
    scale: float = HEAD_SQRT_SCALE,
) -> float:
    """Count threshold ``c · √(r2σ · Σ_j ñ_j / k) · √(count_sample / 100)`` that grows as √σ.

    Why √σ. An item's factor is solved from a right-hand side whose signal grows with its
    count n_j and whose noise has std r2σ, so the noise rule (:func:`head_threshold`) keeps
    items with n_j / r2σ ≥ ``head_snr`` — a threshold ∝ σ. On gowalla-lightgcn the best fixed
    thresholds (validation Recall@20) fall more slowly: about 25 / 16 / 12–16 at
    r2σ_eff = 9.3 / 5.2 / 3.0 (ε = 5 / 10 / 20), ∝ √σ rather than ∝ σ, and below them the model
    collapses (ε = 20: τ = 8 → 0.094, 12 → 0.120; ε = 10: 12 → 0.093, 16 → 0.111): the items
    an ever lower noise bar admits are each learnt from a few users, and the users who hold
    them solve from their noise, so a bar that only tracks σ admits too many of them once σ
    is small. The √ threshold is the geometric mean of the noise scale r2σ and the data's
    observations per factor dimension Σ ñ / k (the scale :func:`head_capacity` uses), so it
    travels with the size of the data and the rank; ``c = 1/4`` centres gowalla's optimum
    (c = 0.22 / 0.26 / 0.31 scored 0.1186 / 0.1201 / 0.1197 at ε = 20 and 0.1076 / 0.1078 /
    0.1059 at ε = 10, 2 seeds). Without the Σ ñ / k scale a √σ threshold matched to gowalla
    would rise on ml-1m-implicit-r3 and the short-history synthetic set, where the noise rule
    is right. It only ever raises the noise threshold (:func:`dpals_head` takes the larger):
    where the noise dominates — gowalla at ε ≤ 5, ml-1m-implicit-r3, ml-100k,
    movietweetings-100k and the synthetic set at every ε in 1–20 — the noise rule stands.

    Validation Recall@20 (2 seeds), capacity rule → this rule with no capacity: gowalla
    ε = 10 0.1050 → 0.1106, ε = 20 0.1202 → 0.1196 (ε ≤ 5 unchanged; monotone in ε);
    synthetic-median5 ε = 10 / 20 0.2094 / 0.2098 → 0.2206 / 0.2206 (the capacity's cost
    gone); ml-1m-implicit-r3 and ml-100k unchanged; but movietweetings-100k ε = 20 0.2723 →
    0.2679 (6 seeds: 0.2735 → 0.2684), where the capacity's small head was what helped — a
    property of that data (a long tail of idiosyncratic rare items), not of the noise, which
    no rule of σ, k and Σ ñ tells apart from the synthetic set. Hence not the default
    (:data:`HEAD_RULE`). Post-processing of the noisy counts' total, σ, k and the count
    sample (no privacy cost). Numbers: ``benchmarks/results/dpals_rules.md``.
    """
    total = max(float(np.sum(noisy_counts, dtype=np.float64)), 0.0)
    per_factor = total / max(int(factors), 1)
    return (
        float(scale) * math.sqrt(max(rhs_std, 0.0) * per_factor) * math.sqrt(count_sample / 100.0)
    )


def dpals_head(
    noisy_counts: np.ndarray,
    fraction: float | None,
    threshold: float,
    minimum: int,
    factors: int,
    *,
    rhs_std: float | None = None,
    count_sample: int | None = None,
    rule: Literal["capacity", "sqrt"] | None = None,
) -> np.ndarray:
    """DPALS's head: :func:`select_head` with :func:`head_floor` and a guard against rare items.

    The one rule central DPALS, the Ray engine, federated DPALS and cross-silo DPALS train
    on, so that they keep the same items from the same released counts. ``rule`` (default
    :data:`HEAD_RULE`): ``"capacity"`` keeps at most :func:`head_capacity` items above
    ``threshold``; ``"sqrt"`` keeps every item above the larger of ``threshold`` and
    :func:`sqrt_head_threshold` (which needs ``rhs_std`` and ``count_sample``, the values the
    noise threshold was computed from), with no capacity. Post-processing of the noisy
    counts, ``threshold`` (from σ) and ``factors`` (from the noisy histogram).
    """
    rule = HEAD_RULE if rule is None else rule
    floor = head_floor(noisy_counts, minimum)
    if rule == "capacity":
        return select_head(
            noisy_counts, fraction, threshold, floor, head_capacity(noisy_counts, factors)
        )
    if rule != "sqrt":
        raise ValueError(f"unknown head rule {rule!r}")
    if rhs_std is None or count_sample is None:
        raise ValueError("the sqrt head rule needs rhs_std and count_sample")
    lifted = max(threshold, sqrt_head_threshold(noisy_counts, rhs_std, count_sample, factors))
    return select_head(noisy_counts, fraction, lifted, floor, None)


#: Largest popularity blend β a model stores (the range its file reader accepts).
MAX_BLEND = 10.0


def low_signal_blend(blend: float, n_signal: int, n_head: int, cap: float = MAX_BLEND) -> float:
    """β scaled up by ``n_head / n_signal`` when part of the head is below the noise (≤ ``cap``).

    An automatic head keeps the items whose noisy count clears ``head_snr`` × the noise std
    of the statistics the model learns from (:func:`select_head`), padded to a minimum size
    with items that do not. The fraction ``ρ = n_signal / n_head`` of the head that clears it
    says how much of what the model learnt can rise above its noise: β / ρ leans the ranking
    towards the (far less noisy) popularity prior as that signal-to-noise drops, and is β
    unchanged whenever the whole head clears the threshold. ρ follows n (counts grow with the
    users) and ε, σ (the threshold shrinks with the noise), so no constant is fitted to a data
    set. Read from the noisy counts and σ only (post-processing; no privacy cost). Chosen on
    validation splits only (DPEASE's ``popularity_fallback``, see
    :class:`~privrec.models.dp_ease.DPEASE`).
    """
    if n_head <= 0 or n_signal >= n_head:
        return float(blend)
    return float(min(cap, blend * n_head / max(n_signal, 1)))


def federated_head_threshold(
    snr: float, noise_multiplier: float, rate: float, rounds: int
) -> float:
    """Noisy-count threshold of FederatedMF's learnable head: ``snr · z / (q · √T)``.

    Over ``T`` rounds of Poisson rate ``q`` an item held by ``c`` users is in about ``q·c·T``
    clipped updates, while each coordinate of the summed updates gets noise of std ``z`` (in
    units of one device's clipped update) per round, ``z·√T`` over the run: the item's factor
    can rise above the training noise only when ``c ≥ snr · z / (q √T)``. The threshold grows
    with the noise (small ε, few users: ``q`` near 1 but ``z`` large) and shrinks as more
    rounds and users average it away, so no constant is tied to one data set; ``snr`` was
    chosen on validation splits (see :data:`privrec.federated.config.HEAD_SNR`). Reads the
    calibrated multiplier and public settings only: no privacy cost.
    """
    if noise_multiplier <= 0:
        return 0.0
    return float(snr) * float(noise_multiplier) / (float(rate) * math.sqrt(max(int(rounds), 1)))


def federated_head_size(
    noisy_counts: np.ndarray, threshold: float, maximum: int, minimum: int
) -> int:
    """How many items FederatedMF trains: those whose noisy count clears ``threshold``,
    within ``[min(minimum, maximum), maximum]`` (post-processing of the released counts).

    Items below the threshold would get factors made of training noise, and every trained
    item also dilutes each device's clipped update (the dense ``α0`` term of the loss reaches
    every head item), so a head cut to the learnable items trains the rest better.
    """
    n = int(np.count_nonzero(np.asarray(noisy_counts) >= threshold))
    return int(min(maximum, max(n, min(minimum, maximum))))
