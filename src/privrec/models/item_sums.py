"""Per-item weighted sums of user vectors: DPALS's right-hand sides without per-item k×k work.

``Σ_u c_uj x_u`` for every item j (and, for the diagonal left-hand side, ``Σ_u c_uj x_u∘x_u``)
is a sparse-transposed-times-dense product. scipy computes it on one thread, column by
column of the transpose; here each thread streams a contiguous range of users (each user's
factors read once, in order) and scatters into its own item accumulator, which for real
catalogues (≤ 100k items × 64 factors in float32) stays cache-friendly; the per-thread
accumulators are then added. Memory: threads × n_items × k floats.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from numba import njit, prange

from privrec.models.als_kernels import _row_chunks

__all__ = ["item_sums"]


@njit(parallel=True, fastmath=True, cache=True)
def _item_sums_kernel(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float32],
    factors: npt.NDArray[np.float32],
    bounds: npt.NDArray[np.int64],
    square: bool,
    out: npt.NDArray[np.float32],
    out_sq: npt.NDArray[np.float32],
) -> None:
    k = factors.shape[1]
    for c in prange(bounds.shape[0] - 1):
        acc = out[c]
        acc_sq = out_sq[c]
        for u in range(bounds[c], bounds[c + 1]):
            for e in range(indptr[u], indptr[u + 1]):
                j = indices[e]
                w = weights[e]
                for a in range(k):
                    v = factors[u, a]
                    acc[j, a] += w * v
                    if square:
                        acc_sq[j, a] += w * v * v


def item_sums(
    weights: sp.csr_matrix, factors: np.ndarray, *, square: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(Wᵀ X, Wᵀ (X∘X))`` for a users × items CSR ``weights`` and user factors ``X`` (float32).

    The second array is ``None`` unless ``square``. Equal to ``weights.T @ factors`` (and
    ``weights.T @ (factors * factors)``) up to float32 rounding.
    """
    w = sp.csr_matrix(weights)
    x = np.ascontiguousarray(factors, dtype=np.float32)
    if x.shape[0] != w.shape[0]:
        raise ValueError(f"factors must have {w.shape[0]} rows, got {x.shape[0]}")
    n_items, k = w.shape[1], x.shape[1]
    indptr = w.indptr.astype(np.int64, copy=False)
    bounds = _row_chunks(indptr, max(1, numba.get_num_threads()))
    n_chunks = len(bounds) - 1
    out = np.zeros((n_chunks, n_items, k), dtype=np.float32)
    out_sq = np.zeros((n_chunks if square else 1, n_items if square else 1, k), dtype=np.float32)
    _item_sums_kernel(
        indptr,
        w.indices.astype(np.int32, copy=False),
        w.data.astype(np.float32, copy=False),
        x,
        bounds,
        square,
        out,
        out_sq,
    )
    return out.sum(axis=0), (out_sq.sum(axis=0) if square else None)
