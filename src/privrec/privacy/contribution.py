"""Contribution bounding: limit what one user can add before any noise.

Sensitivity — and so the noise needed — is set by the largest contribution one
privacy unit can make. These functions enforce the bounds the private models
state in their docstrings; all are vectorised over the stored interactions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from numba import njit, prange

from privrec.errors import ConfigError

__all__ = ["adaptive_weights", "clip_rows", "draw_salt", "sample_per_user"]


def _row_of(m: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def sample_per_user(
    matrix: sp.csr_matrix,
    max_per_user: int,
    rng: np.random.Generator | None,
    strategy: Literal["uniform", "least_popular"] = "uniform",
    item_counts: np.ndarray | None = None,
    *,
    salt: int | None = None,
    row_keys: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Keep at most ``max_per_user`` interactions of each user, values set to 1.

    ``uniform`` keeps a uniformly random subset. ``least_popular`` keeps the
    user's least popular items according to ``item_counts`` (which must
    themselves be private — e.g. noisy counts — for the result to be DP), with
    random tie-breaking. Each user is handled independently of all others, so
    removing a user removes at most ``max_per_user`` unit entries: L2
    sensitivity of any count built on the result is √max_per_user (L1:
    max_per_user).

    The choice is keyed: entry (u, j) is ranked by a hash of (salt, key of row u, column j),
    with the secret salt drawn from ``rng`` (:func:`draw_salt`) unless ``salt`` is given.
    ``row_keys`` (uint64, one per row; default the row index) lets a matrix that holds only a
    partition of the users sample exactly as the whole matrix would — a distributed worker
    passes each user's row in the whole data set — so a user's sample, and so their bounded
    contribution, does not depend on which worker holds them.
    """
    if max_per_user < 1:
        raise ConfigError(f"max_per_user must be >= 1, found {max_per_user}")
    if strategy not in ("uniform", "least_popular"):
        raise ConfigError(
            f"unknown sampling strategy {strategy!r}; choose 'uniform' or 'least_popular'"
        )
    if strategy == "least_popular" and item_counts is None:
        raise ConfigError("least_popular sampling needs (private) item_counts")
    m = sp.csr_matrix(matrix)
    counts = (
        np.asarray(item_counts, dtype=np.float64).ravel()
        if strategy == "least_popular"
        else np.zeros(0, dtype=np.float64)
    )
    if strategy == "least_popular" and counts.shape[0] < m.shape[1]:
        raise ConfigError(f"item_counts must have {m.shape[1]} entries, found {counts.shape[0]}")
    salt = draw_salt(rng) if salt is None else int(salt)
    keys = (
        np.arange(m.shape[0], dtype=np.uint64)
        if row_keys is None
        else np.ascontiguousarray(row_keys, dtype=np.uint64)
    )
    if keys.shape != (m.shape[0],):
        raise ConfigError(f"row_keys must have {m.shape[0]} entries, found {keys.shape[0]}")
    indptr = m.indptr.astype(np.int64, copy=False)
    indices = m.indices  # int32 or int64: the kernel is compiled per dtype
    keep = np.ones(m.nnz, dtype=np.bool_)
    _select_rows(indptr, indices, keys, counts, np.uint64(salt), int(max_per_user),
                 strategy == "least_popular", keep)  # fmt: skip
    kept_per_row = np.minimum(np.diff(indptr), max_per_user)  # every longer row keeps exactly B
    out_indptr = np.concatenate([[0], np.cumsum(kept_per_row)]).astype(m.indptr.dtype)
    out_indices = m.indices[keep]
    out = sp.csr_matrix(
        (np.ones(out_indices.shape[0], dtype=np.float32), out_indices, out_indptr), shape=m.shape
    )
    out.sum_duplicates()  # canonical (sorted, duplicates summed), as a COO → CSR build gives
    return out


def draw_salt(rng: np.random.Generator | None) -> int:
    """The secret salt of one keyed sample (:func:`sample_per_user`), drawn from ``rng``."""
    if rng is None:
        raise ConfigError("sampling needs a random generator or a salt")
    return int(rng.integers(0, 2**63))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_COL = np.uint64(0xD1B54A32D192ED03)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _keyed_uniform_one(salt: np.uint64, row: np.uint64, col: np.uint64) -> float:
    """Scalar :func:`_keyed_uniform` (bit-identical: the same wrapping uint64 arithmetic)."""
    z = salt + row * _GOLDEN
    z = z ^ (col * _MIX_COL)
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) / 9007199254740992.0  # 2**53


@njit(parallel=True, cache=True)
def _select_rows(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.integer],
    row_keys: npt.NDArray[np.uint64],
    counts: npt.NDArray[np.float64],
    salt: np.uint64,
    max_per_user: int,
    least_popular: bool,
    keep: npt.NDArray[np.bool_],
) -> None:
    """Mark the ``max_per_user`` smallest-key entries of every longer row (``keep`` starts all True).

    The key of entry (u, j) is the keyed uniform of (salt, row_keys[u], j) — or the item
    count plus 1e-6 × it (least popular first, random ties) — and the order is
    a stable sort, so the selection equals a lexsort by (row, key) exactly.
    Rows with at most ``max_per_user`` entries are kept whole without hashing.
    Parallel over rows; no fastmath, so the keys are bit-identical to numpy's.
    """
    n_rows = indptr.shape[0] - 1
    for r in prange(n_rows):
        start = indptr[r]
        n = indptr[r + 1] - start
        if n <= max_per_user:
            continue
        key = np.empty(n, dtype=np.float64)
        ur = row_keys[r]
        for t in range(n):
            j = indices[start + t]
            h = _keyed_uniform_one(salt, ur, np.uint64(j))
            key[t] = counts[j] + h * 1e-6 if least_popular else h
        order = np.argsort(key, kind="mergesort")
        for t in range(max_per_user, n):
            keep[start + order[t]] = False


def _keyed_uniform(salt: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (salt, row, column).

    A user's sample must not depend on anybody else's data; drawing from one
    shared stream would tie every user's sample to the number of interactions
    before them. Hashing (row, column) with a secret random salt (SplitMix64
    finaliser) makes each user's choice a function of their own entries only.
    (Vectorised reference of the scalar kernel used by :func:`sample_per_user`.)
    """
    with np.errstate(over="ignore"):
        z = np.uint64(salt) + rows.astype(np.uint64) * _GOLDEN
        z = z ^ (cols.astype(np.uint64) * _MIX_COL)
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def clip_rows(x: np.ndarray, max_norm: float) -> np.ndarray:
    """Scale each row to L2 norm at most ``max_norm`` (rows already inside are unchanged)."""
    if not max_norm > 0:
        raise ConfigError(f"clip norm must be > 0, found {max_norm}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    scale = np.minimum(1.0, max_norm / np.maximum(norms, 1e-30))
    return np.asarray(x * scale, dtype=x.dtype)


def adaptive_weights(
    matrix: sp.csr_matrix, item_counts: np.ndarray, exponent: float, budget: float
) -> sp.csr_matrix:
    """Per-interaction weights ``c_ij ∝ count_j^(−μ)`` with ``Σ_j c_ij² = budget`` per user.

    Krichene et al. (2023): spending a user's fixed L2 budget unevenly, more on
    rare (tail) items whose statistics are otherwise drowned by noise. The
    counts must be private (noisy) for the weights to be; they are floored at
    1. ``exponent = 0`` gives uniform weights ``√(budget/n_u)``. Rows without
    interactions stay empty.
    """
    if budget <= 0:
        raise ConfigError(f"weight budget must be > 0, found {budget}")
    m = sp.csr_matrix(matrix)
    raw = np.maximum(np.asarray(item_counts, dtype=np.float64), 1.0)[m.indices] ** (-exponent)
    rows = _row_of(m)
    sq = np.bincount(rows, weights=raw**2, minlength=m.shape[0])
    scale = np.sqrt(budget / np.maximum(sq, 1e-300))[rows]
    out = sp.csr_matrix((raw * scale, m.indices.copy(), m.indptr.copy()), shape=m.shape)
    return out
