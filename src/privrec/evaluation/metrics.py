"""Top-k ranking metrics, computed for all users at once.

Every metric here is derived from one boolean *hits* matrix (user × rank
position: was the item at that position a target?). The matrix is built once
with a vectorised sparse lookup, and cumulative sums along the rank axis give
the value at every cut-off ``k`` by picking one column, so asking for several
``k`` costs no more than asking for the largest.

Conventions (those of Liang et al. 2018, "Variational Autoencoders for
Collaborative Filtering", which most implicit-feedback papers follow):

* Relevance is binary: an item is relevant when it is stored in the user's
  target row with a non-zero value.
* Recall@k and MAP@k are normalised by ``min(k, |T|)`` so that a perfect list
  scores 1 even for users with more than ``k`` targets. This makes Recall@k
  *not* monotone in ``k`` (the denominator grows with ``k``); the hit count and
  HitRate@k are.
* NDCG@k divides by the DCG of an ideal list holding ``min(k, |T|)`` hits.
* Users without targets have no defined recall; they are left out of every
  average and counted separately so that a report can say how many there were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from privrec.errors import DataError

__all__ = [
    "METRICS",
    "PerUserMetrics",
    "catalogue_coverage",
    "hits_matrix",
    "normalize_ks",
    "per_user_metrics",
]

METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "hitrate", "map", "mrr")
"""Names of the per-user metrics, in report order (``coverage`` is per list set)."""


def normalize_ks(k: int | Sequence[int]) -> tuple[int, ...]:
    """Sorted distinct cut-offs; a single int becomes a 1-tuple.

    Raises :class:`DataError` for an empty sequence or a cut-off below 1, since
    a metric "at 0" has no meaning and silently dropping it would hide a typo.
    """
    ks = (k,) if isinstance(k, int | np.integer) else tuple(k)
    if not ks:
        raise DataError("at least one cut-off k is needed", field="k", expected="k >= 1", found=ks)
    out: list[int] = []
    for v in ks:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise DataError(
                "cut-offs must be positive integers", field="k", expected="k >= 1", found=v
            )
        out.append(int(v))
    return tuple(sorted(set(out)))


def _canonical_targets(targets: Any) -> sp.csr_matrix:
    t: sp.csr_matrix = sp.csr_matrix(targets, copy=True)
    t.sum_duplicates()
    t.eliminate_zeros()
    t.sort_indices()
    return t


def _check_top_items(top_items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    top = np.asarray(top_items)
    if top.ndim != 2:
        raise DataError(
            "top items must be a 2-D array (one row per user)",
            expected="2 dimensions",
            found=top.ndim,
        )
    if top.shape[0] != n_users:
        raise DataError(
            "top items and targets have different numbers of users",
            expected=f"{n_users} rows",
            found=top.shape[0],
        )
    if top.size and not np.issubdtype(top.dtype, np.integer):
        raise DataError("top items must be integer item indices", found=str(top.dtype))
    top = top.astype(np.int64, copy=False)
    if top.size and (top.min() < -1 or top.max() >= n_items):
        bad = top[(top < -1) | (top >= n_items)][0]
        raise DataError(
            "item index out of range",
            field="top_items",
            expected=f"-1 (padding) or 0..{n_items - 1}",
            found=int(bad),
        )
    if top.shape[1] > 1:
        # A repeated item would be counted as two hits and push recall above 1.
        srt = np.sort(top, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise DataError(
                "a recommendation list repeats an item",
                field="top_items",
                expected="distinct items per row",
                found=f"row {row}",
            )
    return top


def hits_matrix(top_items: np.ndarray, targets: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Boolean matrix: ``hits[u, j]`` is true when ``top_items[u, j]`` is a target of ``u``.

    Parameters
    ----------
    top_items
        ``(n_users, K)`` item indices, best first; ``-1`` pads short lists and is
        never a hit.
    targets
        ``(n_users, n_items)`` sparse matrix; stored non-zero entries are relevant.

    Notes
    -----
    Each (user, item) pair is encoded as one integer key ``u * n_items + i``;
    the target keys come out of canonical CSR already sorted, so one
    ``searchsorted`` answers every lookup without densifying the targets.
    """
    t = _canonical_targets(targets)
    n_users, n_items = t.shape
    top = _check_top_items(top_items, n_users, n_items)
    if top.size == 0 or t.nnz == 0:
        return np.zeros(top.shape, dtype=bool)
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(t.indptr))
    keys = rows * n_items + t.indices.astype(np.int64)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top
    pos = np.searchsorted(keys, query)
    pos = np.minimum(pos, keys.size - 1)
    return np.asarray((keys[pos] == query) & (top >= 0), dtype=bool)


@dataclass(frozen=True, eq=False)
class PerUserMetrics:
    """Metric values of every evaluated user, ready for averaging or grouping.

    Attributes
    ----------
    ks
        The cut-offs, ascending; column ``j`` of each array is ``k = ks[j]``.
    values
        ``{metric name: (n_evaluated, len(ks)) float64 array}``.
    users
        Row positions (in the input) of the evaluated users, i.e. those with at
        least one target; row ``r`` of every array belongs to ``users[r]``.
    n_targets
        Number of targets of each evaluated user.
    n_without_targets
        Users of the input that were left out because they had no target.
    coverage
        ``{k: catalogue coverage}`` over the evaluated users' lists.
    """

    ks: tuple[int, ...]
    values: dict[str, np.ndarray]
    users: np.ndarray
    n_targets: np.ndarray
    n_without_targets: int
    coverage: dict[int, float]

    @property
    def n_users(self) -> int:
        """Number of evaluated users (those with targets)."""
        return int(self.users.size)

    def mean(self) -> dict[str, dict[int, float]]:
        """Average of each metric over the evaluated users: ``{name: {k: value}}``.

        NaN when no user could be evaluated, rather than a misleading 0.
        """
        out: dict[str, dict[int, float]] = {}
        for name, arr in self.values.items():
            means = arr.mean(axis=0) if arr.shape[0] else np.full(len(self.ks), np.nan)
            out[name] = {k: float(means[j]) for j, k in enumerate(self.ks)}
        return out


def catalogue_coverage(top_items: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one top-``k`` list.

    A model that recommends the same few blockbusters to everyone can score
    well on recall while covering a sliver of the catalogue; this shows it.
    """
    if n_items <= 0:
        return float("nan")
    head = np.asarray(top_items)[:, :k].ravel()
    head = head[head >= 0]
    seen = np.zeros(n_items, dtype=bool)
    seen[head] = True
    return float(seen.sum() / n_items)


def per_user_metrics(
    top_items: np.ndarray,
    targets: sp.spmatrix | sp.sparray,
    k: int | Sequence[int] = (10, 20, 50),
    metrics: Sequence[str] | None = None,
) -> PerUserMetrics:
    """Compute ranking metrics for every user with targets, at every cut-off.

    Parameters
    ----------
    top_items
        ``(n_users, K)`` recommended item indices, best first, ``-1`` for
        padding. ``K`` may be smaller than ``max(k)`` (e.g. a tiny catalogue):
        the missing positions count as misses.
    targets
        ``(n_users, n_items)`` held-out items of each user (row ``u`` belongs to
        row ``u`` of ``top_items``).
    k
        One cut-off or several.
    metrics
        Subset of :data:`METRICS`; all of them by default.

    Returns
    -------
    PerUserMetrics
        Values for users with at least one target; the others are counted.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> top = np.array([[2, 0, 1]])
    >>> tgt = sp.csr_matrix(np.array([[1.0, 0.0, 0.0]]))
    >>> r = per_user_metrics(top, tgt, k=(1, 2))
    >>> r.values["recall"].tolist(), r.values["mrr"].tolist()
    ([[0.0, 1.0]], [[0.0, 0.5]])
    """
    ks = normalize_ks(k)
    names = METRICS if metrics is None else tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise DataError(
            "unknown metric", field="metrics", expected=" | ".join(METRICS), found=unknown[0]
        )
    t = _canonical_targets(targets)
    n_items = int(t.shape[1])
    hits = hits_matrix(top_items, t)
    top = np.asarray(top_items)
    n_t_all = np.diff(t.indptr)
    has = n_t_all > 0
    users = np.flatnonzero(has)
    hits = hits[has]
    top = top[has]
    n_t = n_t_all[has].astype(np.int64)

    kmax = ks[-1]
    if hits.shape[1] < kmax:  # short lists: the absent positions are misses
        pad = kmax - hits.shape[1]
        hits = np.pad(hits, ((0, 0), (0, pad)))
        top = np.pad(top.astype(np.int64), ((0, 0), (0, pad)), constant_values=-1)
    hits = hits[:, :kmax]
    h = hits.astype(np.float64)
    ranks = np.arange(1, kmax + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)

    cum_hits = np.cumsum(h, axis=1)
    cum_dcg = np.cumsum(h * discount, axis=1)
    cum_prec_at_hits = np.cumsum(h * cum_hits / ranks, axis=1)
    ideal = np.cumsum(discount)
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, np.argmax(hits, axis=1), kmax)  # 0-based rank of the first hit

    values: dict[str, np.ndarray] = {m: np.empty((users.size, len(ks))) for m in names}
    for j, kk in enumerate(ks):
        n_hit = cum_hits[:, kk - 1]
        denom = np.minimum(n_t, kk)
        if "recall" in values:
            values["recall"][:, j] = n_hit / denom
        if "precision" in values:
            values["precision"][:, j] = n_hit / kk
        if "hitrate" in values:
            values["hitrate"][:, j] = (n_hit > 0).astype(np.float64)
        if "ndcg" in values:
            values["ndcg"][:, j] = cum_dcg[:, kk - 1] / ideal[denom - 1]
        if "map" in values:
            values["map"][:, j] = cum_prec_at_hits[:, kk - 1] / denom
        if "mrr" in values:
            values["mrr"][:, j] = np.where(first < kk, 1.0 / (first + 1.0), 0.0)
    coverage = {kk: catalogue_coverage(top, n_items, kk) for kk in ks}
    return PerUserMetrics(
        ks=ks,
        values=values,
        users=users,
        n_targets=n_t,
        n_without_targets=int((~has).sum()),
        coverage=coverage,
    )
