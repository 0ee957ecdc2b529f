"""One request's fold-in and top-k, with everything that does not depend on the request precomputed.

``ServedModel.recommend`` answers one history at a time. The models' own
``recommend_history`` is written for batches: it builds a sparse matrix, slices the released
columns, forms the item Gramian, scores the whole catalogue and masks it — about 0.35 ms per
request, most of it scipy.sparse bookkeeping and work that is the same for every request.

:class:`DPALSKernel` does DPALS's fold-in for one history with the request-independent parts
computed once when the model is loaded: the released (head) item factors in float64, the
regularised Gramian ``α0 YᵀY`` and ``λI``, the catalogue → head position map and the
standardised popularity prior. Per request it gathers the history's head rows, solves the same
Cholesky system, scores only the head (every other item scores ``-inf`` in DPALS and is never
recommended) and takes the top ``k`` with the same tie rule. The arithmetic is the model's own,
operation for operation, so the answer is *identical*, not merely close: :func:`kernel_for`
checks that on probe histories when the model is loaded and falls back to the model's own path
if a single item or score differs (e.g. if DPALS's fold-in changes and this file does not).

Privacy: the kernel holds only the released model (post-processing); a history lives in local
variables of one call and is never stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dpotrs

from privrec.models.dp_rules import item_norm_scale

__all__ = ["DPALSKernel", "GenericKernel", "Kernel", "kernel_for"]

log = logging.getLogger("privrec.serve")

#: (sorted unique catalogue indices of a history, k) -> (catalogue items, scores), best first;
#: entries the model does not release are ``-1`` / ``-inf`` (as ``recommend_history`` returns)
Kernel = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class GenericKernel:
    """Any model: its own ``recommend_history`` on a one-row CSR."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.n_items = int(model.n_items_)

    def __call__(self, known: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        row = sp.csr_matrix(
            (np.ones(known.shape[0], np.float32), known, np.array([0, known.shape[0]])),
            shape=(1, self.n_items),
        )
        items, scores = self.model.recommend_history(row, k=min(k, self.n_items))
        return np.asarray(items[0]), np.asarray(scores[0])


class DPALSKernel:
    """DPALS fold-in + head scoring + top-k for one history (see the module docstring).

    Mirrors ``DPALS._fold`` (``exact_user_solve``'s few-users branch), ``head_item_scores``
    with ``blend_popularity`` (or, with a per-user shrinkage ``s``, the blend weight
    ``β + s / n_u`` of ``DPALS._scores_from_factors``), ``mask_seen`` and ``top_k``, restricted
    to the head items.
    """

    def __init__(self, model: Any) -> None:
        head = np.asarray(model.head_items_, dtype=np.int64)
        factors = np.asarray(model.item_factors_)
        self.n_items = int(model.n_items_)
        self.head = head
        # the fold: (α0 YᵀY + Σ_{j∈I_u} y_j y_jᵀ + λI) x = Σ_{j∈I_u} y_j, float64 (as _fold)
        self.y64 = np.ascontiguousarray(factors[head].astype(np.float64), dtype=np.float64)
        k = self.y64.shape[1]
        self.gram = float(model._fit_alpha0) * (self.y64.T @ self.y64)
        self.ridge = float(model._fit_user_reg) * np.eye(k)
        # scoring: u (float32) @ item_factors[head].T, as head_item_scores, each item's column
        # divided by |y_j|^γ (item_norm_exponent_, as ReleasedItemFactors._rank_head)
        self.y32 = factors[head]
        scale = item_norm_scale(self.y32, float(getattr(model, "item_norm_exponent_", 0.0)))
        self.scale32 = None if scale is None else scale.astype(np.float32)[None, :]
        self.pos = np.full(self.n_items, -1, dtype=np.int64)
        self.pos[head] = np.arange(head.shape[0])
        counts = np.asarray(model.noisy_counts_)[head]
        self.beta = float(model.popularity_blend_)
        self.cold = counts  # beta = 0: a user without history gets the noisy-count ranking
        prior = np.log1p(np.maximum(np.asarray(counts, dtype=np.float64), 0.0))
        prior = (prior - prior.mean()) / max(float(prior.std()), 1e-12)
        self.prior32 = prior.astype(np.float32)
        self.prior = np.float32(self.beta) * self.prior32
        # per-user shrinkage of the blend (β + s / n_u, n_u the history's length), as
        # DPALS._scores_from_factors with dp_rules.user_blend
        self.shrink = float(getattr(model, "popularity_shrinkage_", 0.0))

    def _fold(self, hp: np.ndarray) -> np.ndarray:
        yi = self.y64[hp]
        try:
            c = np.linalg.cholesky(self.gram + yi.T @ yi + self.ridge)
        except np.linalg.LinAlgError:
            return np.zeros((1, self.y64.shape[1]), dtype=np.float32)
        # cho_solve's LAPACK call without its argument checks (c is finite: it factorised)
        x, info = dpotrs(c, yi.sum(axis=0), lower=1)
        if info != 0:  # pragma: no cover - potrs fails only on bad arguments
            raise np.linalg.LinAlgError(f"potrs info {info}")
        return np.asarray(x, dtype=np.float32)[None, :]

    def __call__(self, known: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        hp = self.pos[known]
        hp = hp[hp >= 0]  # sorted: known is sorted and the head is sorted
        u = self._fold(hp)
        s = u @ self.y32.T
        if self.scale32 is not None:
            s = s * self.scale32
        if self.beta > 0:
            s = np.asarray(s, dtype=np.float32)
            sd = s.std(axis=1, keepdims=True)
            z = (s - s.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, np.float32(1.0))
            if self.shrink > 0:
                b = np.float32(self.beta + self.shrink / max(float(known.shape[0]), 1.0))
                s = (z + b * self.prior32).astype(np.float32)
            else:
                s = (z + self.prior).astype(np.float32)
        elif not np.any(u != 0):
            s = self.cold[None, :].astype(np.float32)
        s = np.asarray(s, dtype=np.float32)
        row = np.asarray(s, dtype=np.float32)[0]
        row[hp] = -np.inf  # seen items are never recommended
        kk = int(min(max(k, 0), self.n_items))
        items = np.full(kk, -1, dtype=np.int64)
        scores = np.full(kk, -np.inf, dtype=np.float32)
        if kk == 0:
            return items, scores
        hi, hv = _top_k_row(row, min(kk, row.shape[0]))
        n = hi.shape[0]  # more asked than released: the rest stay (-1, -inf)
        items[:n] = np.where(hi >= 0, self.head[np.maximum(hi, 0)], -1)
        scores[:n] = hv
        return items, scores


def _top_k_row(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`privrec.models.ranking.top_k` for one row (same partition, same tie rule)."""
    n = s.shape[0]
    part = np.argpartition(-s, k - 1)[:k] if k < n else np.arange(n)
    vals = s[part]
    order = np.lexsort((part, -vals))
    items = part[order].astype(np.int64)
    vals = vals[order]
    items[~np.isfinite(vals) & (vals < 0)] = -1
    return items, vals


def _probes(n_items: int, head: np.ndarray | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Histories to compare a kernel with the model on: empty, head only, mixed, off-head only."""
    out = [np.zeros(0, dtype=np.int64)]
    pool = np.arange(n_items)
    off = np.setdiff1d(pool, head) if head is not None else pool
    for size in (1, 3, 8, 25, 80):
        out.append(np.unique(rng.choice(pool, size=min(size, n_items), replace=False)))
        if head is not None and head.size:
            out.append(np.unique(rng.choice(head, size=min(size, head.size), replace=False)))
    if off.size:
        out.append(np.unique(rng.choice(off, size=min(5, off.size), replace=False)))
    return out


def kernel_for(model: Any) -> Kernel:
    """The fastest kernel that answers exactly as ``model.recommend_history`` (checked here)."""
    generic = GenericKernel(model)
    from privrec.models.dp_als import DPALS

    if type(model) is not DPALS or float(getattr(model, "neighbour_blend", 0.0) or 0.0) > 0:
        return generic  # the fast kernel mirrors the plain fold-in ranking only
    try:
        fast = DPALSKernel(model)
        rng = np.random.default_rng(0)
        for known in _probes(generic.n_items, fast.head, rng):
            for k in (1, 10, generic.n_items + 5):
                gi, gs = generic(known, k)
                fi, fs = fast(known, k)
                if not (np.array_equal(gi, fi) and np.array_equal(gs, fs)):
                    raise ValueError("differs from the model's own recommend_history")
    except Exception as exc:  # never serve an answer the model would not give
        log.warning("DPALS fast fold-in disabled (%s): using the model's own path", exc)
        return generic
    return fast
