"""Data-adaptive contribution bounds: a private quantile of users' history lengths.

Why: the per-user bound B sizes every noise a user-level model adds (counts of
≤ B items per user have sensitivity √B). A bound far above what users actually
contribute buys nothing but noise — with a median of five items per user, B = 100
makes the count noise ten times larger than the signal B = 10 would carry — while
one far below them throws data away. Which B is right depends on the data, so it
is estimated *from* the data, privately, and charged like any other release.

Mechanism
---------
Users are binned by history length on a fixed, data-independent geometric grid
(:data:`LENGTH_EDGES`: lengths 1, 2 and 3 exactly, then one bin per doubling, so a
quantile is resolved within a factor of two and interpolated geometrically inside its
bin), and the bin counts are released with Gaussian noise. Everything after —
the noisy cumulative distribution, the quantile and the bound derived from it —
is post-processing of that release.

* Neighbouring relation and sensitivity: USER (add/remove one user) changes one
  bin by 1, L2 sensitivity 1; INTERACTION (add/remove one interaction) moves
  one user to an adjacent bin (or adds/removes a user with one item), L2
  sensitivity √2. Users without interactions are in no bin.
* Event: ``GaussianDpEvent(z)`` for noise std ``z × sensitivity``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError
from privrec.privacy.mechanisms import gaussian
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "LENGTHS_LABEL",
    "LENGTH_EDGES",
    "length_histogram",
    "length_sensitivity",
    "noisy_length_histogram",
    "quantile_from_histogram",
]


def _edges(limit: int = 1 << 24) -> np.ndarray:
    out = [1, 2, 3]
    p = 4
    while p < limit:
        out += [p]
        p *= 2
    return np.asarray(out, dtype=np.int64)


#: Lower edges of the history-length bins: 1, 2, 3, 4, 8, 16, 32, 64, … (public,
#: data-independent). Bin ``b`` holds lengths in ``[LENGTH_EDGES[b], LENGTH_EDGES[b + 1])``.
LENGTH_EDGES = _edges()

#: The label of the histogram release in a model's accounting records.
LENGTHS_LABEL = "noisy history-length histogram"


def _n_bins(max_length: int | None) -> int:
    if max_length is None:
        return len(LENGTH_EDGES)
    return max(1, int(np.searchsorted(LENGTH_EDGES, max(int(max_length), 1), side="right")))


def length_histogram(
    lengths: np.ndarray, max_length: int | None = None, weights: np.ndarray | None = None
) -> np.ndarray:
    """Number of users per bin of :data:`LENGTH_EDGES` (users with no interaction are left out).

    With ``max_length`` (e.g. the catalogue size, which no history can exceed) only the bins
    starting at or below it are kept, and longer histories count in the last of them. With
    ``weights`` (per user, in [0, 1]: personalised budgets) a user counts ``weights[u]``.
    """
    n = np.asarray(lengths, dtype=np.int64).ravel()
    present = n > 0
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()[present]
    n = n[present]
    n_bins = _n_bins(max_length)
    bins = np.minimum(np.searchsorted(LENGTH_EDGES, n, side="right") - 1, n_bins - 1)
    return np.bincount(bins, weights=w, minlength=n_bins).astype(np.float64)


def length_sensitivity(unit: PrivacyUnit) -> float:
    """L2 sensitivity of :func:`length_histogram` under ``unit`` (1 per user, √2 per interaction)."""
    return 1.0 if unit is PrivacyUnit.USER else math.sqrt(2.0)


def noisy_length_histogram(
    user_items: sp.csr_matrix,
    unit: PrivacyUnit,
    noise_multiplier: float,
    rng: np.random.Generator,
    user_weights: np.ndarray | None = None,
) -> np.ndarray:
    """The Gaussian-noised history-length histogram (event ``GaussianDpEvent(noise_multiplier)``).

    Bins run up to the number of columns (the catalogue size, public): no history is longer.
    ``user_weights`` (≤ 1) scale each user's count (:mod:`privrec.privacy.personalized`).
    """
    m = user_items
    hist = length_histogram(np.diff(m.indptr), max_length=m.shape[1], weights=user_weights)
    return gaussian(hist, noise_multiplier, length_sensitivity(unit), rng)


def quantile_from_histogram(noisy: np.ndarray, q: float, *, noise_std: float = 0.0) -> float:
    """The ``q``-quantile of history lengths read off a (noisy) histogram: post-processing.

    Bins whose noisy count is below ``2 × noise_std`` count as empty (mostly noise: with
    many empty bins in the tail, their positive noise alone would pull a quantile far out). Within the bin where the cumulative count reaches ``q`` of the
    total, the length is interpolated geometrically between the bin's edges. Returns 1.0
    when nothing is left (nothing can be read; the smallest bound is the safe choice).
    """
    if not 0.0 < q < 1.0:
        raise ConfigError(f"quantile must be in (0, 1), found {q}")
    h = np.asarray(noisy, dtype=np.float64).copy()
    h[h < max(2.0 * noise_std, 0.0)] = 0.0
    h = np.maximum(h, 0.0)
    total = float(h.sum())
    if not total > 0:
        return 1.0
    cdf = np.cumsum(h)
    b = int(np.searchsorted(cdf, q * total, side="left"))
    b = min(b, len(h) - 1)
    below = float(cdf[b - 1]) if b > 0 else 0.0
    frac = (q * total - below) / max(float(h[b]), 1e-12)
    lo = float(LENGTH_EDGES[b])
    hi = float(LENGTH_EDGES[b + 1]) if b + 1 < len(LENGTH_EDGES) else 2 * lo
    return float(lo * (hi / lo) ** min(max(frac, 0.0), 1.0))
