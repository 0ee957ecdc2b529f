"""Post-processing of noisy releases (free under differential privacy).

Anything computed from a DP release alone is DP with the same guarantee, so
these functions may clean up noisy statistics without spending budget.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from privrec.errors import NonFiniteResultError

__all__ = ["project_psd", "psd_solve"]


@njit(parallel=True, cache=True)
def _project_psd_kernel(stack: npt.NDArray[np.float64], floor: float) -> None:
    n = stack.shape[0]
    for j in prange(n):
        w, v = np.linalg.eigh(stack[j])
        if w[0] >= floor:
            continue  # already inside the cone: leave untouched
        for a in range(w.shape[0]):
            if w[a] < floor:
                w[a] = floor
        stack[j] = (v * w) @ v.T


def project_psd(stack: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Project each symmetric matrix of a ``(n, k, k)`` stack onto {A : A ⪰ floor·I}.

    The projection in Frobenius norm clips eigenvalues below ``floor``. A
    noisy second-moment matrix ``Σ c x xᵀ + E`` is PSD before the noise, so the
    projection can only bring it closer to the truth (the cone is convex and
    contains it). Runs in parallel over the stack (numba), in float64.
    """
    out = np.array(stack, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(out)):  # the kernel's eigensolver would fail without a reason
        raise NonFiniteResultError(
            "a noisy second-moment matrix is not finite: a setting is out of its useful range "
            "(e.g. an extreme clip_norm or regularization 0); nothing is released"
        )
    if out.ndim == 2:
        out = out[None]
        _project_psd_kernel(out, float(floor))
        return np.asarray(out[0])
    _project_psd_kernel(out, float(floor))
    return out


@njit(fastmath=True, cache=True, inline="always")
def _cholesky_lower(a: npt.NDArray[np.float64]) -> bool:
    """In-place Cholesky ``a = L Lᵀ`` of the lower triangle; False at a non-positive pivot.

    Row-oriented: every inner loop is a dot product of contiguous row prefixes
    (vectorised by LLVM).
    """
    k = a.shape[0]
    for j in range(k):
        s = a[j, j]
        for t in range(j):
            s -= a[j, t] * a[j, t]
        if s <= 0.0:
            return False
        d = np.sqrt(s)
        a[j, j] = d
        for i in range(j + 1, k):
            s = a[i, j]
            for t in range(j):
                s -= a[i, t] * a[j, t]
            a[i, j] = s / d
    return True


@njit(fastmath=True, cache=True, inline="always")
def _cholesky_solve_lower(low: npt.NDArray[np.float64], v: npt.NDArray[np.float64]) -> None:
    """Solve ``L Lᵀ z = v`` in place, ``L`` the lower triangle of ``low``."""
    k = low.shape[0]
    for i in range(k):
        s = v[i]
        for t in range(i):
            s -= low[i, t] * v[t]
        v[i] = s / low[i, i]
    for i in range(k - 1, -1, -1):
        s = v[i]
        for t in range(i + 1, k):
            s -= low[t, i] * v[t]
        v[i] = s / low[i, i]


@njit(fastmath=True, cache=True, inline="always")
def _load_system(
    base: npt.NDArray[np.float64],
    mat: npt.NDArray[np.floating],
    diag: float,
    a: npt.NDArray[np.float64],
) -> None:
    """``a ← base + mat + diag·I`` (lower triangle only, in float64)."""
    k = a.shape[0]
    for i in range(k):
        for t in range(i + 1):
            a[i, t] = base[i, t] + mat[i, t]
        a[i, i] += diag


@njit(parallel=True, cache=True)
def _psd_solve_kernel(
    base: npt.NDArray[np.float64],
    stack: npt.NDArray[np.floating],
    rhs: npt.NDArray[np.floating],
    reg: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    projected: npt.NDArray[np.bool_],
    always: bool,
) -> None:
    n, k = rhs.shape
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        a = np.empty((k, k), dtype=np.float64)
        v = np.empty(k, dtype=np.float64)
        for j in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            for c in range(k):
                v[c] = rhs[j, c]
            # if_indefinite: the test factorises the regularised matrix M + reg·I
            # itself, so when it passes the same factor solves the system.
            # always: M itself must pass; then M + reg·I is factorised to solve.
            _load_system(base, stack[j], 0.0 if always else reg[j], a)
            pd = _cholesky_lower(a)
            if pd and always:
                _load_system(base, stack[j], reg[j], a)
                pd = _cholesky_lower(a)
            if pd:
                _cholesky_solve_lower(a, v)
                for c in range(k):
                    out[j, c] = v[c]
                continue
            projected[j] = True
            full = base + stack[j].astype(np.float64)
            for r in range(k):  # symmetrise from the lower triangle
                for c in range(r + 1, k):
                    full[r, c] = full[c, r]
            w, vec = np.linalg.eigh(full)
            z = vec.T @ v
            for c in range(k):
                z[c] /= max(w[c], 0.0) + reg[j]
            out[j] = vec @ z


# Systems per parallel task (scratch allocated once per block).
_BLOCK = 32


def psd_solve(
    base: np.ndarray,
    stack: np.ndarray,
    rhs: np.ndarray,
    reg: np.ndarray,
    project: Literal["always", "if_indefinite"] = "always",
) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``(P(base + stack_j) + reg_j I) y_j = rhs_j`` for every j, P = projection onto PSD.

    ``base`` is one symmetric ``(k, k)`` matrix shared by every system (e.g.
    ``α0·G̃``), ``stack`` ``(n, k, k)`` symmetric, ``rhs`` ``(n, k)``, ``reg``
    ``(n,)`` positive. The projection is exact (eigenvalues clipped at 0) but
    only paid where needed: a Cholesky factorisation first tests whether
    ``base + stack_j`` is already positive definite — then it is its own
    projection and the system is solved directly; otherwise the
    eigendecomposition both projects and solves. With ``"if_indefinite"`` the
    test is made on ``base + stack_j + reg_j I`` (the projection is skipped
    whenever the regularised system is positive definite), and the factor of
    that test is the one that solves — one factorisation per system, in float64
    on the lower triangle, with scratch space allocated once per block of
    systems. Post-processing of noisy releases only. Returns the solutions
    (float64) and a boolean mask of the systems that needed projecting.
    Parallel over the stack (numba).
    """
    n, k = rhs.shape
    out = np.zeros((n, k), dtype=np.float64)
    projected = np.zeros(n, dtype=np.bool_)
    _psd_solve_kernel(
        np.ascontiguousarray(base, dtype=np.float64),
        np.ascontiguousarray(stack),
        np.ascontiguousarray(rhs),
        np.ascontiguousarray(reg, dtype=np.float64),
        out,
        projected,
        project == "always",
    )
    return out, projected


def shared_solve(base: np.ndarray, rhs: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Solve ``(P(base) + reg_j I) y_j = rhs_j`` for every j with one eigendecomposition.

    Every system shares the matrix up to its ridge, so ``P(base) = Q Λ Qᵀ`` once gives
    ``y_j = Q (Λ + reg_j)⁻¹ Qᵀ rhs_j`` for all j in two matrix products (P clips Λ at 0:
    the projection onto the PSD cone). Post-processing of noisy releases only.
    """
    w, q = np.linalg.eigh(np.asarray(base, dtype=np.float64))
    z = np.asarray(rhs, dtype=np.float64) @ q
    z /= np.maximum(w, 0.0)[None, :] + np.asarray(reg, dtype=np.float64)[:, None]
    out: np.ndarray = z @ q.T
    return out


def diagonal_solve(
    base: np.ndarray, diag: np.ndarray, rhs: np.ndarray, reg: np.ndarray
) -> np.ndarray:
    """Solve ``(P(base) + diag(max(d_j, 0)) + reg_j I) y_j = rhs_j`` for every j.

    The per-system correction is diagonal (``diag`` is ``(n, k)``); negative noisy entries
    are clipped at 0 — the diagonal of a sum of ``c x xᵀ`` is non-negative, so clipping
    only brings it closer — and P projects ``base`` onto the PSD cone, so every system is
    positive definite and one Cholesky factorisation solves it. Parallel (numba).
    """
    b = project_psd(np.asarray(base, dtype=np.float64))
    n, k = rhs.shape
    out = np.zeros((n, k), dtype=np.float64)
    _diagonal_solve_kernel(
        np.ascontiguousarray(b),
        np.ascontiguousarray(diag),
        np.ascontiguousarray(rhs),
        np.ascontiguousarray(reg, dtype=np.float64),
        out,
    )
    return out


@njit(parallel=True, cache=True)
def _diagonal_solve_kernel(
    base: npt.NDArray[np.float64],
    diag: npt.NDArray[np.floating],
    rhs: npt.NDArray[np.floating],
    reg: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
) -> None:
    n, k = rhs.shape
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        a = np.empty((k, k), dtype=np.float64)
        v = np.empty(k, dtype=np.float64)
        for j in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            for i in range(k):
                for t in range(i + 1):
                    a[i, t] = base[i, t]
                a[i, i] += max(float(diag[j, i]), 0.0) + reg[j]
                v[i] = rhs[j, i]
            if _cholesky_lower(a):
                _cholesky_solve_lower(a, v)
                for i in range(k):
                    out[j, i] = v[i]
