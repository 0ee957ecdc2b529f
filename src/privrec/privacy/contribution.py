"""Contribution bounding: limit what one user can add before any noise.

Sensitivity — and so the noise needed — is set by the largest contribution one
privacy unit can make. These functions enforce the bounds the private models
state in their docstrings; all are vectorised over the stored interactions.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError

__all__ = ["adaptive_weights", "clip_rows", "sample_per_user"]


def _row_of(m: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def sample_per_user(
    matrix: sp.csr_matrix,
    max_per_user: int,
    rng: np.random.Generator,
    strategy: Literal["uniform", "least_popular"] = "uniform",
    item_counts: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Keep at most ``max_per_user`` interactions of each user, values set to 1.

    ``uniform`` keeps a uniformly random subset. ``least_popular`` keeps the
    user's least popular items according to ``item_counts`` (which must
    themselves be private — e.g. noisy counts — for the result to be DP), with
    random tie-breaking. Each user is handled independently of all others, so
    removing a user removes at most ``max_per_user`` unit entries: L2
    sensitivity of any count built on the result is √max_per_user (L1:
    max_per_user).
    """
    if max_per_user < 1:
        raise ConfigError(f"max_per_user must be >= 1, found {max_per_user}")
    m = sp.csr_matrix(matrix)
    rows = _row_of(m)
    noise = _keyed_uniform(int(rng.integers(0, 2**63)), rows, m.indices)
    if strategy == "uniform":
        key = noise
    elif strategy == "least_popular":
        if item_counts is None:
            raise ConfigError("least_popular sampling needs (private) item_counts")
        key = np.asarray(item_counts, dtype=np.float64)[m.indices] + noise * 1e-6
    else:
        raise ConfigError(
            f"unknown sampling strategy {strategy!r}; choose 'uniform' or 'least_popular'"
        )
    order = np.lexsort((key, rows))
    starts = m.indptr[:-1]
    rank = np.empty(m.nnz, dtype=np.int64)
    rank[order] = np.arange(m.nnz) - np.repeat(starts, np.diff(m.indptr))
    keep = rank < max_per_user
    out = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], m.indices[keep])), shape=m.shape
    )
    out.sort_indices()
    return out


def _keyed_uniform(salt: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (salt, row, column).

    A user's sample must not depend on anybody else's data; drawing from one
    shared stream would tie every user's sample to the number of interactions
    before them. Hashing (row, column) with a secret random salt (SplitMix64
    finaliser) makes each user's choice a function of their own entries only.
    """
    with np.errstate(over="ignore"):
        z = np.uint64(salt) + rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = z ^ (cols.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
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
