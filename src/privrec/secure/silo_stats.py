"""What a silo computes from its own users: bounded counts, DPALS item-step statistics, the
DPEASE Gram matrix -- each additive over users (see :mod:`privrec.secure.silo`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from privrec.models.als_kernels import gramian, item_statistics
from privrec.models.dp_als import (
    exact_user_solve,
)
from privrec.models.dp_ease import (
    bounded_gram,
)
from privrec.models.dp_popularity import bounded_counts
from privrec.privacy.contribution import clip_rows
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "binary",
    "silo_counts",
    "silo_gram",
    "silo_statistics",
    "unpack_gram",
    "unpack_statistics",
    "user_solve",
]


# ------------------------------------------------------------------------------- statistics
def silo_counts(x: sp.csr_matrix, count_sample: int, rng: np.random.Generator) -> np.ndarray:
    """Item counts over at most ``count_sample`` sampled items per user (L2 sensitivity √cs)."""
    return bounded_counts(binary(x), PrivacyUnit.USER, count_sample, rng)[0]


def binary(x: Any) -> sp.csr_matrix:
    """A CSR copy of ``x`` with every stored value set to 1 (implicit feedback), sorted indices."""
    out: sp.csr_matrix = sp.csr_matrix(x, dtype=np.float64, copy=True)
    out.sum_duplicates()  # one stored entry per (user, item): the bounds count entries
    out.data[:] = 1.0
    out.sort_indices()
    return out


def user_solve(xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float) -> np.ndarray:
    """Exact iALS user factors from the released item factors (the same solve as DPALS's fold-in)."""
    return exact_user_solve(xh, y, alpha0, reg)


def silo_statistics(
    xh: sp.csr_matrix,
    weights: sp.csr_matrix,
    y: np.ndarray,
    *,
    alpha0: float,
    user_regularization: float,
    clip_norm: float,
) -> np.ndarray:
    """One silo's DPALS item-step statistics as one float64 vector.

    Users are solved exactly, clipped to ``clip_norm`` and contribute ``x_u x_uᵀ`` to the
    Gramian, ``c_uj x_u x_uᵀ`` and ``c_uj x_u`` to item ``j``'s left- and right-hand sides
    (``weights`` holds ``c_uj`` with ``Σ_j c_uj² ≤ B``). Layout: upper triangle of the
    Gramian, upper triangles of the ``n_head`` left-hand sides, the right-hand sides
    (:func:`unpack_statistics`). Symmetric matrices travel as upper triangles: half the
    bytes, and the triangle's L2 norm is at most the Frobenius one, so the sensitivities hold.
    The statistics are additive over users, so the sum over silos equals this function on
    the union of their users.
    """
    u = clip_rows(user_solve(xh, y, alpha0, user_regularization), clip_norm)
    k = y.shape[1]
    iu = np.triu_indices(k)
    g = gramian(u)[iu]
    lhs, rhs = item_statistics(weights, u, weights.data, alpha0=0.0)
    return np.concatenate([g, lhs[:, iu[0], iu[1]].ravel(), rhs.ravel()])


def unpack_statistics(v: np.ndarray, n_head: int, k: int) -> tuple[np.ndarray, ...]:
    """Gramian ``(k, k)``, left-hand sides ``(n_head, k, k)``, right-hand sides ``(n_head, k)``."""
    t = k * (k + 1) // 2
    iu = np.triu_indices(k)
    g = np.zeros((k, k))
    g[iu] = v[:t]
    g = g + np.triu(g, 1).T
    lhs = np.zeros((n_head, k, k))
    lhs[:, iu[0], iu[1]] = v[t : t + n_head * t].reshape(n_head, t)
    lhs = lhs + np.transpose(np.triu(lhs, 1), (0, 2, 1))
    rhs = v[t + n_head * t :].reshape(n_head, k)
    return g, lhs, rhs


def silo_gram(
    x: sp.csr_matrix, max_contribution: float, max_per_user: int, rng: np.random.Generator
) -> np.ndarray:
    """One silo's bounded item Gram matrix (DPEASE, user unit) as its upper triangle.

    :func:`privrec.models.dp_ease.bounded_gram` on the silo's own users (already restricted to
    the head items): user ``u`` enters with weight ``min(1, C/n_u)``, so their term has
    Frobenius norm ≤ C. The upper triangle (row-major, diagonal included) has L2 norm at
    most the Frobenius one and is all that symmetric noise needs. Additive over users: the
    sum over silos is the same function on the union.
    """
    g, _ = bounded_gram(x, PrivacyUnit.USER, max_contribution, max_per_user, rng)
    out: np.ndarray = g[_triu_mask(g.shape[0])]
    return out


def _triu_mask(n: int) -> np.ndarray:
    return np.triu(np.ones((n, n), dtype=bool))


def unpack_gram(v: np.ndarray, n: int) -> np.ndarray:
    """The symmetric ``(n, n)`` matrix from its upper triangle (as :func:`silo_gram` lays it out)."""
    g = np.zeros((n, n))
    g[_triu_mask(n)] = v
    g += np.triu(g, 1).T
    return g
