"""Post-processing of noisy releases (free under differential privacy).

Anything computed from a DP release alone is DP with the same guarantee, so
these functions may clean up noisy statistics without spending budget.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

__all__ = ["project_psd"]


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
