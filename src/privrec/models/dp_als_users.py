"""DPALS's user side: contribution weights and the user solves (never released).

Split out of :mod:`privrec.models.dp_als` (which re-exports everything here). Each user's
factors are solved from the released item factors and that user's own data only — exactly
(:func:`exact_user_solve`, serving and fold-in) or by warm-started conjugate gradient during
training (:func:`_user_cg`); :func:`user_weights` spreads a user's bounded contribution
``Σ_j c_uj² ≤ B`` over their items (uniform, tail or adaptive); :func:`initial_item_factors`
are what the first user solves start from.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from privrec.errors import ConfigError
from privrec.models.als_kernels import cg_half_step, cholesky_half_step, gramian
from privrec.privacy.contribution import adaptive_weights, sample_per_user

__all__ = ["exact_user_solve", "initial_item_factors", "user_weights"]


def initial_item_factors(
    shape: tuple[int, int],
    init_scale: float,
    seed: int | None,
    noisy_counts: np.ndarray,
    one_round: bool,
) -> np.ndarray:
    """The item factors (head items × k, float64) the first user solves start from.

    Random with std ``init_scale / √k``, seeded by ``seed + 1`` (data-independent). In one
    round (:func:`~privrec.models.dp_rules.resolve_one_round`) the first column is the released
    log noisy counts of the head items at the same root-mean-square instead, so the single round
    of user solves already carries each user's popularity profile: post-processing of the
    released counts.
    """
    rng = np.random.default_rng(None if seed is None else seed + 1)
    scale = init_scale / np.sqrt(shape[1])
    y: np.ndarray = rng.standard_normal(shape) * scale
    if one_round:
        prior = np.log1p(np.maximum(np.asarray(noisy_counts, dtype=np.float64), 0.0))
        y[:, 0] = prior * (scale / max(float(np.sqrt(np.mean(prior**2))), 1e-12))
    return y


def user_weights(
    xh: sp.csr_matrix,
    counts: np.ndarray,
    method: str,
    max_per_user: int,
    adaptive_exponent: float,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Per-user weights ``c_uj`` with Σ_j c_uj² ≤ B, spread by ``method`` (see :class:`DPALS`).

    ``counts`` must be the released noisy counts of the columns of ``xh``.
    """
    if method == "uniform":
        return sample_per_user(xh, max_per_user, rng, "uniform")
    if method == "tail":
        return sample_per_user(xh, max_per_user, rng, "least_popular", counts)
    if method == "adaptive":
        return adaptive_weights(xh, np.maximum(counts, 1.0), adaptive_exponent, float(max_per_user))
    raise ConfigError(f"unknown method {method!r}")


_FEW_USERS = 4


def exact_user_solve(xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float) -> np.ndarray:
    """iALS user step: (α0 YᵀY + Σ_{j∈I_u} y_j y_jᵀ + λI) x_u = Σ_{j∈I_u} y_j, exact (Cholesky kernel).

    Float64 throughout; the kernel forms Σ y yᵀ with BLAS ``syrk`` per user and
    factorises with LAPACK, so BLAS is held to one thread inside it.
    """
    from threadpoolctl import threadpool_limits

    n_users, k = xh.shape[0], y.shape[1]
    out = np.zeros((n_users, k), dtype=np.float64)
    yy = np.ascontiguousarray(y, dtype=np.float64)
    if n_users <= _FEW_USERS:
        # A handful of users (a service folding in one request): the same system solved with
        # numpy/LAPACK directly. Starting the parallel kernel and scanning the loaded BLAS
        # libraries for threadpool_limits cost milliseconds; this costs microseconds.
        g = alpha0 * (yy.T @ yy)
        eye = reg * np.eye(k)
        for u in range(n_users):
            yi = yy[xh.indices[xh.indptr[u] : xh.indptr[u + 1]]]
            try:
                c = np.linalg.cholesky(g + yi.T @ yi + eye)
            except np.linalg.LinAlgError:
                continue  # not positive definite: the kernel leaves the row at zero too
            out[u] = scipy.linalg.cho_solve((c, True), yi.sum(axis=0))
        return out
    # The kernel solves (α0 G + Σ w y yᵀ + λI) x = Σ (α0 + w) y; with w = 1 the matrix is ours and the
    # right-hand side is (1 + α0) Σ y, so the solution is (1 + α0) times the one we want.
    w = np.ones(xh.nnz, dtype=np.float64)
    with threadpool_limits(1, "blas"):
        cholesky_half_step(
            xh.indptr.astype(np.int64, copy=False),
            xh.indices.astype(np.int32, copy=False),
            w,
            yy,
            gramian(yy),
            out,
            float(alpha0),
            float(reg),
            0.0,
        )
    out /= 1.0 + alpha0
    return out


def _user_cg(
    xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float, warm: np.ndarray, steps: int
) -> np.ndarray:
    """Training-time user step by warm-started conjugate gradient (the iALS user system).

    Returns ``(1 + α0)·x_u`` (the scaling of :func:`exact_user_solve`'s kernel) as
    float32; ``warm`` holds the previous step's values. Each user's solve uses
    only the released item factors and that user's own row.
    """
    yy = np.ascontiguousarray(y, dtype=np.float32)
    x = np.array(warm, dtype=np.float32, copy=True)
    cg_half_step(
        xh.indptr.astype(np.int64, copy=False),
        xh.indices.astype(np.int32, copy=False),
        np.ones(xh.nnz, dtype=np.float32),
        yy,
        gramian(yy),
        x,
        float(alpha0),
        float(reg),
        0.0,
        steps,
    )
    return x
