"""What a round's abort can reveal: the chance that one user decides whether an attempt completes.

Under distributed DP a FederatedMF round aborts (and is retried with a fresh sample) when its
cohort is too small for the honest noise floor or too large for the overflow bound. Both are
decided on counts that one user's device changes by one, so for a cohort that happens to sit at
the boundary, the user decides whether the attempt completes. The privacy events do not cover
that bit; its effect is bounded by the probability of the boundary, a δ-like term
(``docs/distributed_dp.md``, "Neighbouring relation"). It is negligible for cohorts of about a
thousand and more (the floor is far below the expected count) and not for small ones, which is
why :func:`warn_if_aborts_matter` checks it when a server is built. The upper boundary, the
largest cohort a round accepts (:func:`cohort_bound`), is also the padding target of every
released sum.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from privrec.errors import PrivacyWarning

if TYPE_CHECKING:
    from privrec.federated.server import FederatedMFServer

__all__ = ["COHORT_MARGIN", "abort_flip_probability", "cohort_bound", "warn_if_aborts_matter"]


#: Standard deviations above the expected cohort a round still accepts. Every released sum is
#: padded to that many noise shares (docs/distributed_dp.md, "Neighbouring relation"), so the
#: margin is paid in noise: 6 (rather than the 8 used until 2026-12-07) keeps a too-large cohort
#: below 1e-9 per round for every cohort size and pads 2,000 devices to 2,277 shares, not 2,366.
COHORT_MARGIN = 6.0


def cohort_bound(expected: float, floor: int) -> int:
    """``⌈e + COHORT_MARGIN·√e + 8⌉``, at least ``floor``: P(Poisson(e) above it) < 1e-9."""
    return max(int(floor), math.ceil(expected + COHORT_MARGIN * math.sqrt(expected) + 8))


def abort_flip_probability(
    population: int, q: float, floor: int, shares: int, top: int, corrupt_fraction: float
) -> float:
    """P(one user's presence flips whether an attempt completes), with no dropouts.

    An attempt of ``S`` sampled devices completes when ``2 ≤ S ≤ top`` and
    ``S ≥ max(floor, ⌈corrupt_fraction·S⌉ + shares)``. The user is sampled with probability
    ``q`` and the others' count is ``Binomial(population − 1, q)``; the result sums ``q·P(others
    = s)`` over the ``s`` where ``s`` and ``s + 1`` devices disagree. Dropouts that do not depend
    on the data move the boundary but not the order of magnitude; a server that drops devices
    on purpose sees who took part anyway (its guarantee is the unamplified one).
    """
    from scipy.stats import binom

    others = max(int(population) - 1, 0)
    if q <= 0 or others == 0:
        return 0.0
    s = np.arange(0, min(others, int(top) + 1) + 1, dtype=np.int64)

    def completes(n: np.ndarray) -> np.ndarray:
        corrupt = np.ceil(corrupt_fraction * n - 1e-9)
        out: np.ndarray = (n >= 2) & (n <= top) & (n >= np.maximum(floor, corrupt + shares))
        return out

    flip = completes(s) != completes(s + 1)
    return float(q * binom.pmf(s[flip], others, q).sum())


def warn_if_aborts_matter(server: FederatedMFServer) -> float:
    """Warn when the abort boundary's probability over the run is not negligible against δ.

    Returns that probability (the counting round plus every training round, one attempt each).
    """
    c = server.config
    if c.aggregation != "distributed" or server.noise_multiplier == 0:
        return 0.0
    train = abort_flip_probability(
        server.population, server.q, server.min_survivors, server.noise_shares,
        server.max_clients, c.corrupt_fraction,
    )  # fmt: skip
    floor, shares, top = server._count_sizes()
    count = abort_flip_probability(
        server.population, server.q_head, floor, shares, top, c.corrupt_fraction
    )
    total = c.rounds * train + count
    if total > c.delta / 10:
        warnings.warn(
            f"rounds may abort on counts one user decides with probability ≈ {total:.1g} over "
            f"the run, not negligible against δ = {c.delta:g} (the stated guarantee does not "
            "cover it): sample more devices per round or lower min_survivor_fraction",
            PrivacyWarning,
            stacklevel=4,
        )
    return total
