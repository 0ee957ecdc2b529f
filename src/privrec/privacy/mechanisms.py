"""Noise-adding mechanisms with their sensitivities and accounting events.

Each function adds noise calibrated to an L2 (Gaussian) or L1 (Laplace)
sensitivity Δ and a noise multiplier z: the noise scale is z·Δ, and the
matching accounting event is ``GaussianDpEvent(z)`` / ``LaplaceDpEvent(z)``
(dp-accounting measures noise in units of sensitivity). The *caller* states
the sensitivity — it follows from the contribution bounds it enforced — and
the privacy unit under which that sensitivity holds.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from privrec.errors import ConfigError
from privrec.privacy.randomness import NoiseRandom

if TYPE_CHECKING:  # imported by the event helpers: the samplers alone need no dp-accounting
    import dp_accounting

__all__ = [
    "discrete_gaussian",
    "discrete_laplace",
    "gaussian",
    "gaussian_event",
    "laplace",
    "laplace_event",
    "symmetric_gaussian",
]


def _check(noise_multiplier: float, sensitivity: float) -> None:
    if not (noise_multiplier >= 0 and np.isfinite(noise_multiplier)):
        raise ConfigError(f"noise multiplier must be finite and >= 0, found {noise_multiplier}")
    if not (sensitivity > 0 and np.isfinite(sensitivity)):
        raise ConfigError(f"sensitivity must be finite and > 0, found {sensitivity}")


def gaussian_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """Accounting record of one Gaussian release (``NonPrivateDpEvent`` when z = 0)."""
    import dp_accounting

    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(noise_multiplier)


def laplace_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    import dp_accounting

    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.LaplaceDpEvent(noise_multiplier)


def gaussian(
    value: np.ndarray | float, noise_multiplier: float, sensitivity: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian mechanism: ``value + N(0, (z·Δ)²)`` elementwise.

    Sensitivity: Δ is the L2 norm of the largest change one privacy unit can
    make to the whole ``value`` array. Event: ``GaussianDpEvent(z)``.
    """
    _check(noise_multiplier, sensitivity)
    v = np.asarray(value, dtype=np.float64)
    if noise_multiplier == 0:
        return v.copy()
    return v + rng.normal(0.0, noise_multiplier * sensitivity, size=v.shape)


def symmetric_gaussian(
    matrices: np.ndarray, noise_multiplier: float, sensitivity: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise on symmetric matrices (a stack ``(..., k, k)``), kept symmetric.

    Noise is drawn for the upper triangle (diagonal included) and mirrored, so
    each released degree of freedom gets noise once. Sensitivity: Δ bounds the
    Frobenius norm of one unit's change to the whole stack; since the release
    is a function of the upper triangle only, whose norm is at most the
    Frobenius norm, ``GaussianDpEvent(z)`` holds with noise scale z·Δ.
    """
    _check(noise_multiplier, sensitivity)
    m = np.array(matrices, dtype=np.float64, copy=True)
    if noise_multiplier == 0:
        return m
    k = m.shape[-1]
    iu = np.triu_indices(k)
    noise = rng.normal(0.0, noise_multiplier * sensitivity, size=(*m.shape[:-2], len(iu[0])))
    full = np.zeros_like(m)
    full[..., iu[0], iu[1]] = noise
    full = full + np.swapaxes(full, -1, -2)
    full[..., np.arange(k), np.arange(k)] /= 2.0  # diagonal was added twice
    return m + full


def laplace(
    value: np.ndarray | float, noise_multiplier: float, sensitivity: float, rng: np.random.Generator
) -> np.ndarray:
    """Laplace mechanism: ``value + Lap(z·Δ)``; Δ is the L1 sensitivity. Event: ``LaplaceDpEvent(z)``."""
    _check(noise_multiplier, sensitivity)
    v = np.asarray(value, dtype=np.float64)
    if noise_multiplier == 0:
        return v.copy()
    return v + rng.laplace(0.0, noise_multiplier * sensitivity, size=v.shape)


# ---------------------------------------------------------------------------
# Exact discrete samplers (Canonne, Kamath, Steinke, NeurIPS 2020).
# Only integer and rational arithmetic: no floating point, hence no
# floating-point side channel (Mironov 2012) and an exactly known pmf.


def _bernoulli(p: Fraction, rnd: NoiseRandom) -> bool:
    return rnd.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_le1(gamma: Fraction, rnd: NoiseRandom) -> bool:
    """Bernoulli(exp(-γ)) for 0 ≤ γ ≤ 1 (CKS Algorithm 1, first part)."""
    k = 1
    while _bernoulli(gamma / k, rnd):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction, rnd: NoiseRandom) -> bool:
    """Bernoulli(exp(-γ)) for any γ ≥ 0."""
    while gamma > 1:
        if not _bernoulli_exp_le1(Fraction(1), rnd):
            return False
        gamma -= 1
    return _bernoulli_exp_le1(gamma, rnd)


def _discrete_laplace_one(scale: Fraction, rnd: NoiseRandom) -> int:
    """One draw with P(x) ∝ exp(-|x|/t), t = s/t' rational (CKS Algorithm 2)."""
    s, t = scale.numerator, scale.denominator  # exp(-|x| t / s)
    while True:
        u = rnd.randbelow(s)
        if not _bernoulli_exp(Fraction(u, s), rnd):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1), rnd):
            v += 1
        x = (u + s * v) // t
        negative = rnd.randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def discrete_laplace(scale: float | Fraction, size: int, seed: int | None = None) -> np.ndarray:
    """Exact discrete Laplace samples, P(x) ∝ exp(-|x|/scale) on the integers."""
    sc = Fraction(scale).limit_denominator(1 << 32)
    if sc <= 0:
        raise ConfigError(f"scale must be > 0, found {scale}")
    rnd = NoiseRandom(seed)
    return np.fromiter(
        (_discrete_laplace_one(sc, rnd) for _ in range(size)), dtype=np.int64, count=size
    )


def _discrete_gaussian_one(sigma2: Fraction, rnd: NoiseRandom) -> int:
    t = _isqrt_floor(sigma2) + 1
    while True:
        y = _discrete_laplace_one(Fraction(t), rnd)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(gamma, rnd):
            return y


def _isqrt_floor(x: Fraction) -> int:
    """floor(sqrt(x)) for a non-negative rational, exactly."""
    r = int(x.numerator // x.denominator)
    lo, hi = 0, max(1, r + 1)
    while lo < hi:  # binary search on integers: O(log x) steps
        mid = (lo + hi + 1) // 2
        if mid * mid <= x:
            lo = mid
        else:
            hi = mid - 1
    return lo


def discrete_gaussian(sigma: float | Fraction, size: int, seed: int | None = None) -> np.ndarray:
    """Exact discrete Gaussian samples, P(x) ∝ exp(-x²/(2σ²)) on the integers.

    Canonne, Kamath & Steinke (2020), Algorithm 3: rejection sampling from a
    discrete Laplace with scale ⌊σ⌋+1 using only rational arithmetic. σ² is
    taken as the rational closest to ``sigma**2`` with denominator ≤ 2³².

    Used for integer statistics (noisy counts, secure-aggregation inputs)
    where continuous noise cannot be added. Randomness: the OS CSPRNG via
    :mod:`secrets`, or a seeded generator with a :class:`PrivacyWarning`.
    Cost: pure Python, about 0.1–0.2 ms per sample; fine for
    counts, to be vectorised before it meets secure-aggregation-sized vectors.
    """
    s2 = Fraction(sigma) ** 2 if isinstance(sigma, Fraction) else Fraction(float(sigma) ** 2)
    s2 = s2.limit_denominator(1 << 32)
    if s2 <= 0:
        raise ConfigError(f"sigma must be > 0, found {sigma}")
    rnd = NoiseRandom(seed)
    return np.fromiter(
        (_discrete_gaussian_one(s2, rnd) for _ in range(size)), dtype=np.int64, count=size
    )
