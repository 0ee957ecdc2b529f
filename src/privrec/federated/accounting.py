"""FederatedMF's accounting helpers: fast ε through dp-accounting and noise calibration."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator

import dp_accounting

from privrec.errors import ConfigError
from privrec.privacy.accounting import INTEGER_RDP_ORDERS, AccountantKind, simplify
from privrec.privacy.budget import Budget
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "COUNT_NOISE_TARGET",
    "PLD_INTERVAL",
    "RDP_ACCOUNTING_ORDERS",
    "calibrate_multiplier",
    "count_epsilon_fraction",
    "fast_epsilon",
    "head_count_event",
    "resolve_count_bound",
]


def head_count_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """Accounting event of the counting round's sum, before sampling.

    Each device sends a count vector of L2 norm ≤ 1
    (:func:`~privrec.federated.client.client_count_vector`), so the sum has sensitivity 1 and
    noise of multiplier ``z`` is one ``GaussianDpEvent(z)`` (the counts, rescaled by √(B + 1),
    carry noise ``z·√(B + 1)``).
    """
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(noise_multiplier)


#: B of the counting round by default (:func:`resolve_count_bound`): from :data:`SMALL_EPSILON_BOUND`
#: below ε = :data:`SMALL_EPSILON`, else :data:`COUNT_BOUND`.
COUNT_BOUND = 10
SMALL_EPSILON_BOUND = 30
SMALL_EPSILON = 3.0


def resolve_count_bound(bound: int | None, epsilon: float | None) -> int:
    """B: the given bound, else 30 items below ε = 3 and 10 from there (or with a given noise).

    At small ε the factors are mostly noise and the released counts carry the ranking; an
    item's count from users with more than B items grows with B (each counts B of its
    items) while the noise grows with √(B + 1), and shorter histories lose nothing
    (``count_weighting="length"`` gives every device norm 1 whatever B). Chosen on validation
    splits (Recall@20, 2 seeds, B = 10 → 30, central aggregation): at ε = 1 gowalla 0.0321 →
    0.0378, lastfm-2k 0.0967 → 0.1136, ml-latest-small 0.049 → 0.060, ml-100k 0.166 → 0.202,
    book-crossing 0.0126 → 0.0186, movietweetings-100k and the median-5 synthetic set level,
    ml-1m 0.1546 → 0.1498 (its long histories: the one loss); at ε = 2 book-crossing +10%, ml-1m
    level; at ε = 5 mixed (gowalla +3%, lastfm +2%, ml-1m −1.5%, ml-100k −5%), so 10 stays
    there (``benchmarks/bench_federated_count_bound.py``). Reads ε and the config only: both
    server and devices resolve it alike, at no privacy cost.
    """
    if bound is not None:
        return int(bound)
    if epsilon is not None and epsilon < SMALL_EPSILON:
        return SMALL_EPSILON_BOUND
    return COUNT_BOUND


#: Noise of the released counts the default ε share aims at, as a fraction of the counted users
#: (:func:`count_epsilon_fraction`); chosen on validation splits (movietweetings-100k, a
#: median-5 synthetic set, ml-100k).
COUNT_NOISE_TARGET = 0.002
#: Bounds of the default ε share of the counting round.
COUNT_SHARE_RANGE = (0.1, 0.5)


def count_epsilon_fraction(
    epsilon: float,
    delta: float,
    population: int,
    bound: int,
    rate: float,
    target: float = COUNT_NOISE_TARGET,
) -> float:
    """Default share of ε for the counting round: what the counts need, within [0.1, 0.5].

    The counts are the popularity prior every ranking leans on — short-history users almost
    entirely — so they should be accurate before the factors get the rest. The released counts
    carry noise ``z·√(B + 1)``; they are useful when that is a small fraction ``target`` of
    the ``rate · population`` users counted. The share is the ε of a Gaussian mechanism of
    that multiplier (no credit taken for sampling) divided by ε: it grows as ε shrinks, as
    the population shrinks and as B grows, and is clamped to :data:`COUNT_SHARE_RANGE`.

    Reads only ε, δ and public settings, and the population rounded to two significant
    digits (the share is visible in the released events; the exact number of users must not
    be), so it costs no privacy.
    """
    n = float(f"{max(int(population), 1):.2g}") * float(rate)
    z = target * n / math.sqrt(bound + 1.0)
    need = float(dp_accounting.get_epsilon_gaussian(z, delta)) if z > 0 else math.inf
    lo, hi = COUNT_SHARE_RANGE
    return min(hi, max(lo, need / float(epsilon)))


#: PLD grid of the per-round and calibration accounting. Coarser than the library's 1e-4 (a
#: Poisson-subsampled Gaussian PLD on the 1e-4 grid takes seconds to build); dp-accounting rounds
#: pessimistically, so ε on this grid is an upper bound of ε on the finer one.
PLD_INTERVAL = 1e-3

#: Integer RDP orders of the distributed variant's accountant (a subset of dp-accounting's
#: defaults; ε at fewer orders is an upper bound of ε at more). The ledger composes
#: RDP-only charges at the same orders.
RDP_ACCOUNTING_ORDERS: tuple[float, ...] = INTEGER_RDP_ORDERS


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's RDP code logs a warning per fractional order it skips; silence it."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def fast_epsilon(event: dp_accounting.DpEvent, delta: float, kind: AccountantKind) -> float:
    """ε of ``event`` at ``delta`` through dp-accounting (PLD on :data:`PLD_INTERVAL`, or RDP)."""
    simple = simplify(event)
    if kind is AccountantKind.PLD and isinstance(simple, dp_accounting.GaussianDpEvent):
        return float(dp_accounting.get_epsilon_gaussian(simple.noise_multiplier, delta))
    with _quiet_absl():
        if kind is AccountantKind.PLD:
            acc: dp_accounting.PrivacyAccountant = dp_accounting.pld.PLDAccountant(
                neighboring_relation=PrivacyUnit.USER.relation,
                value_discretization_interval=PLD_INTERVAL,
            )
        else:
            # Integer orders only: dp-accounting's series for fractional orders of a subsampled
            # Gaussian is slow, and its integer-order cost grows with the order.
            acc = dp_accounting.rdp.RdpAccountant(
                orders=list(RDP_ACCOUNTING_ORDERS),
                neighboring_relation=PrivacyUnit.USER.relation,
            )
        acc.compose(event)
        return float(acc.get_epsilon(delta))


def calibrate_multiplier(
    budget: Budget,
    factory: Callable[[float], dp_accounting.DpEvent],
    kind: AccountantKind,
    rel_tol: float = 1e-3,
) -> float:
    """Smallest multiplier ``z`` (within ``rel_tol``) with ``ε(factory(z)) ≤ budget.epsilon``.

    Bisection on ``log z`` with :func:`fast_epsilon`; the returned ``z`` is always on the
    feasible side, so the budget holds (and holds a fortiori on the finer PLD grid).
    """

    def ok(z: float) -> bool:
        return fast_epsilon(factory(z), budget.delta, kind) <= budget.epsilon

    hi = 1.0
    while not ok(hi):
        hi *= 2.0
        if hi > 1e5:
            raise ConfigError(
                f"no noise multiplier up to 1e5 reaches epsilon={budget.epsilon:g} "
                f"at delta={budget.delta:g}: fewer rounds or a smaller sampling rate"
            )
    lo = hi / 2.0
    while ok(lo):
        hi, lo = lo, lo / 2.0
        if lo < 1e-3:
            return hi
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
