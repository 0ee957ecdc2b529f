"""Post-processing of noisy releases (free under differential privacy).

Anything computed from a DP release alone is DP with the same guarantee, so
these functions may clean up noisy statistics without spending budget.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from numba import njit, prange

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
    if out.ndim == 2:
        out = out[None]
        _project_psd_kernel(out, float(floor))
        return np.asarray(out[0])
    _project_psd_kernel(out, float(floor))
    return out


@njit(parallel=True, cache=True)
def _psd_solve_kernel(
    base: npt.NDArray[np.float64],
    stack: npt.NDArray[np.floating],
    rhs: npt.NDArray[np.floating],
    reg: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    projected: npt.NDArray[np.bool_],
    shift: float,
) -> None:
    n, k = rhs.shape
    for j in prange(n):
        a = base + stack[j].astype(np.float64)
        for c in range(k):
            a[c, c] += shift * reg[j]
        low = np.zeros((k, k))
        pd = True
        for c in range(k):  # Cholesky of a (lower), stops at the first non-positive pivot
            s = a[c, c]
            for t in range(c):
                s -= low[c, t] * low[c, t]
            if s <= 0.0:
                pd = False
                break
            d = np.sqrt(s)
            low[c, c] = d
            for i in range(c + 1, k):
                s = a[i, c]
                for t in range(c):
                    s -= low[i, t] * low[c, t]
                low[i, c] = s / d
        if pd:
            m = a.copy()
            for c in range(k):
                m[c, c] += (1.0 - shift) * reg[j]
            out[j] = np.linalg.solve(m, rhs[j].astype(np.float64))
        else:
            projected[j] = True
            for c in range(k):
                a[c, c] -= shift * reg[j]
            w, v = np.linalg.eigh(a)
            z = v.T @ rhs[j].astype(np.float64)
            for c in range(k):
                z[c] /= max(w[c], 0.0) + reg[j]
            out[j] = v @ z


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
    eigendecomposition both projects and solves. Post-processing of noisy
    releases only. Returns the solutions (float64) and a boolean mask of the
    systems that needed projecting. Parallel over the stack (numba).
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
        0.0 if project == "always" else 1.0,
    )
    return out, projected
