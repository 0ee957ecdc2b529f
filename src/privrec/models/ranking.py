"""Top-k selection over dense score blocks, shared by models and evaluation."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["mask_seen", "top_k"]


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> None:
    """Set ``scores[u, i] = -inf`` in place wherever ``seen[u, i]`` is stored.

    ``seen`` must have one row per row of ``scores``. Vectorised: one fancy
    assignment for the whole block.
    """
    if seen.nnz == 0:
        return
    rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
    scores[rows, seen.indices] = -np.inf


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` highest scores of each row, best first.

    Ties are broken by the lower item index so that the same scores always give
    the same list. Entries scored ``-inf`` (excluded items) are returned as item
    ``-1`` with score ``-inf``, so every row has exactly ``min(k, n_items)``
    columns even when fewer items are eligible.

    >>> top_k(np.array([[0.1, 0.9, 0.5]]), 2)[0].tolist()
    [[1, 2]]
    """
    n_rows, n_items = scores.shape
    k = int(min(max(k, 0), n_items))
    if k == 0 or n_rows == 0:
        return np.zeros((n_rows, k), dtype=np.int64), np.zeros((n_rows, k), dtype=scores.dtype)
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_items), (n_rows, n_items))
    vals = np.take_along_axis(scores, part, axis=1)
    # sort by score descending, then by item index ascending
    order = np.lexsort((part, -vals), axis=1)
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)
    items[~np.isfinite(vals) & (vals < 0)] = -1
    return items, vals
