"""Randomised Walsh–Hadamard rotation: spread a vector's energy evenly over its coordinates.

Distributed DP quantises and wraps every coordinate to a few bits. A vector whose norm sits in a
handful of coordinates would need a huge range for those and waste it on the rest; after the
rotation ``x ↦ H D x / sqrt(D)`` (``D`` random ±1 signs, ``H`` the Hadamard matrix) every
coordinate is a Rademacher sum of the inputs, sub-Gaussian with variance proxy ``‖x‖² / D``, so
one small range fits all of them with high probability (Kairouz, Liu & Steinke 2021, §4).

The transform is orthonormal (it preserves L2 norms, so a clipping bound before it is a bound
after it) and costs O(D log D) with numpy butterflies; no D × D matrix is ever built.
"""

from __future__ import annotations

import numpy as np

from privrec.errors import ConfigError, DataError

__all__ = ["fwht", "next_power_of_two", "rotate", "rotation_signs", "unrotate"]


def next_power_of_two(n: int) -> int:
    """Smallest power of two ≥ ``n`` (the Hadamard transform needs one)."""
    if n < 1:
        raise ConfigError(f"dimension must be >= 1, found {n}")
    return 1 << (int(n) - 1).bit_length()


def fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh–Hadamard transform along the last axis.

    ``H / sqrt(D)`` is symmetric and orthogonal, hence its own inverse: ``fwht(fwht(x)) == x``
    up to rounding. Works on a batch (``(..., D)``); ``D`` must be a power of two.
    Each of the ``log2 D`` stages is one vectorised add/subtract over the whole batch.
    """
    a = np.array(x, dtype=np.float64, copy=True)
    dim = a.shape[-1]
    if dim & (dim - 1) or dim == 0:
        raise DataError(
            "the Hadamard transform needs a power-of-two length",
            field="x",
            expected="length 2^k",
            found=dim,
        )
    lead = a.shape[:-1]
    h = 1
    while h < dim:
        v = a.reshape(*lead, dim // (2 * h), 2, h)
        top = v[..., 0, :].copy()
        v[..., 0, :] += v[..., 1, :]
        v[..., 1, :] = top - v[..., 1, :]
        h *= 2
    a *= 1.0 / np.sqrt(dim)
    return a


def rotation_signs(seed: int, padded_dim: int) -> np.ndarray:
    """The public random ±1 diagonal of the rotation, derived from ``seed``.

    Every client and the server must use the same signs (the server inverts the rotation on the
    sum), so they come from a shared public seed, not from the secret noise generator. They need
    not be secret; they only need to be independent of the clients' data (see the overflow bound's
    caveat in :mod:`privrec.privacy.distributed`).
    """
    rng = np.random.default_rng(np.random.SeedSequence([0x5EC, int(seed)]))
    signs: np.ndarray = rng.integers(0, 2, size=padded_dim).astype(np.float64) * 2.0 - 1.0
    return signs


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Zero-pad the last axis to ``len(signs)``, flip signs, then :func:`fwht`."""
    x = np.asarray(x, dtype=np.float64)
    dim = x.shape[-1]
    padded = signs.shape[0]
    if dim > padded:
        raise DataError("vector longer than the rotation", field="x", expected=f"<= {padded}")
    out = np.zeros((*x.shape[:-1], padded), dtype=np.float64)
    out[..., :dim] = x
    out *= signs
    return fwht(out)


def unrotate(y: np.ndarray, signs: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of :func:`rotate`: :func:`fwht`, flip signs back, drop the padding."""
    out = fwht(y)
    out *= signs
    return out[..., :dim]
