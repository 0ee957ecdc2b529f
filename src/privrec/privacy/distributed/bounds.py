"""The analytic bounds behind distributed DP: sensitivity, Rényi DP of the summed noise, overflow.

Three kinds of bound, all on the integer grid of :mod:`privrec.privacy.distributed`:

* sensitivity after conditional rounding (KLS21's ``Δ2`` and the ``Δ1`` it implies);
* the RDP curve of the sum of ``n`` clients' noise shares — discrete Gaussian (KLS21,
  Proposition 14 of arXiv:2102.06387) or Skellam (AKL21, Theorem 3.5 / Corollary 3.6) — and
  its conversion to ``(ε, δ)`` by dp-accounting's own ``compute_epsilon``;
* tail bounds that size the modulus so the secure sum does not wrap (signal, rounding error and
  noise, union-bounded over coordinates).

Pure functions of numbers: no sampling and no state, so each can be pinned by a test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_BETA",
    "NEIGHBOURING_NOTE",
    "RDP_ORDERS",
    "Mechanism",
    "ddg_rdp",
    "rounded_l2_bound",
    "skellam_rdp",
]

Mechanism = Literal["dgauss", "skellam"]

#: RDP orders. Integer orders only: AKL21's Skellam bound is stated for integer α, and the same
#: grid keeps the two mechanisms comparable.
RDP_ORDERS: tuple[int, ...] = (*range(2, 129), *range(132, 257, 4), *range(272, 1025, 16))

#: The neighbouring relations the stated guarantees cover, for threat-model texts. KLS21 and
#: AKL21 bound sums in which one client's update is replaced by zero while the number of noise
#: shares stays the same; the server's padding (``DistributedDPEncoder.decode``) keeps that
#: number fixed at ``max_clients`` whoever takes part, which is what makes add/remove hold
#: (docs/distributed_dp.md, "Neighbouring relation").
NEIGHBOURING_NOTE = (
    " Neighbouring relation: one user added or removed, for everyone who sees only the "
    "released sums — the server pads every sum with phantom noise shares (drawn like a "
    "device's) up to the largest cohort a round accepts, so the noise does not depend on who "
    "took part. Against the aggregation server, which knows who took part and its own phantom "
    "noise, it is the user's data replaced by nothing (their device still takes part), and "
    "only honest devices' shares count. Assumed public: the number of enrolled devices (it "
    "sets the sampling rate, the cohort bounds and each device's noise share)."
)

#: Default probability that one conditional-rounding attempt exceeds ``Δ2`` (KLS21's β). Small,
#: so re-rounding is rare and its bias (at most β/(1-β) per coordinate) negligible; the price is
#: a ``sqrt(2 log(1/β))`` factor on a lower-order term of ``Δ2²``.
DEFAULT_BETA = 1e-3


def rounded_l2_bound(scaled_clip: float, padded_dim: int, beta: float) -> float:
    """KLS21's bound ``Δ2`` on the L2 norm of a randomly rounded vector (integer units).

    For ``x`` with ``‖x‖ ≤ c`` (already divided by γ) in ``D`` dimensions, randomised rounding
    gives ``‖x̃‖² ≤ c² + D/4 + sqrt(2 log(1/β))·(c + sqrt(D)/2)`` with probability ≥ 1 - β, and
    always ``‖x̃‖ ≤ c + sqrt(D)``; the smaller of the two is used.
    """
    c, d = scaled_clip, float(padded_dim)
    hp = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    return min(math.sqrt(hp), c + math.sqrt(d))


def ddg_rdp(
    orders: Sequence[float], l2: float, l1: float, sigma: float, n: int, padded_dim: int
) -> np.ndarray:
    """RDP of the sum of ``n`` discrete Gaussians ``N_Z(0, σ²)`` per coordinate (KLS21).

    For integer sensitivities ``Δ2 = l2``, ``Δ1 = l1`` and ``τ = 10 Σ_{k=1}^{n-1}
    exp(-2π²σ²·k/(k+1))``, with ``a = Δ2/(sqrt(n)σ)``, ``a1 = Δ1/(sqrt(n)σ)``::

        ε(α) = min( α a²/2 + τD,  α (a² + 2 a1 τ + τ² D)/2,  α (a + τ sqrt(D))²/2 )
    """
    k = np.arange(1, n, dtype=np.float64)
    tau = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))
    a = l2 / (math.sqrt(n) * sigma)
    a1 = l1 / (math.sqrt(n) * sigma)
    al = np.asarray(orders, dtype=np.float64)
    d = float(padded_dim)
    t1 = al * a * a / 2.0 + tau * d
    t2 = al * (a * a + 2.0 * a1 * tau + tau * tau * d) / 2.0
    t3 = al * (a + math.sqrt(d) * tau) ** 2 / 2.0
    out: np.ndarray = np.minimum(np.minimum(t1, t2), t3)
    return out


def skellam_rdp(orders: Sequence[int], l2: float, l1: float, variance: float) -> np.ndarray:
    """RDP of Skellam noise of total variance ``V`` per coordinate (AKL21, integer α > 1)::

    ε(α) = α Δ2²/(2V) + min( ((2α - 1) Δ2² + 6 Δ1)/(4V²),  3 Δ1/(2V) )
    """
    al = np.asarray(orders, dtype=np.float64)
    lead = al * l2 * l2 / (2.0 * variance)
    extra = np.minimum(
        ((2.0 * al - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * variance**2), 3.0 * l1 / (2.0 * variance)
    )
    out: np.ndarray = lead + extra
    return out


def _rdp_to_epsilon(rdp: np.ndarray, delta: float) -> float:
    # imported here, like scipy.optimize below: a client that only encodes (a Flower
    # ClientApp process per message) never pays for dp-accounting's or scipy's import
    from dp_accounting.rdp import rdp_privacy_accountant

    eps, _ = rdp_privacy_accountant.compute_epsilon(list(RDP_ORDERS), list(rdp), delta)
    return float(eps)


def _noise_tail(mechanism: Mechanism, total_var: float, p: float) -> float:
    """t with P(|noise sum coordinate| ≥ t) ≤ p."""
    if mechanism == "dgauss":
        # A sum of independent discrete Gaussians is sub-Gaussian with the sum of the σ² (CKS20).
        return math.sqrt(2.0 * total_var * math.log(2.0 / p))
    # Skellam(V): Chernoff, P(X ≥ t) ≤ exp(-(tλ - V(cosh λ - 1))) at λ = asinh(t/V).
    target = math.log(2.0 / p)

    def gap(t: float) -> float:
        lam = math.asinh(t / total_var)
        return t * lam - total_var * (math.cosh(lam) - 1.0) - target

    hi = max(1.0, math.sqrt(2.0 * total_var * target))
    while gap(hi) < 0:
        hi *= 2.0
    import scipy.optimize

    return float(scipy.optimize.brentq(gap, 0.0, hi))


def _rounding_tail(n: int, padded_dim: int, beta: float, p: float) -> float:
    bias = n * beta / (1.0 - beta)
    return min(float(n), bias + math.sqrt(n * math.log(2.0 * padded_dim / p) / 2.0))


def _half_range(
    mechanism: Mechanism,
    n: int,
    padded_dim: int,
    scaled_clip: float,
    local_variance: float,
    beta: float,
    p: float,
) -> float:
    q = p / (3.0 * padded_dim)
    signal = n * scaled_clip * math.sqrt(2.0 * math.log(2.0 / q) / padded_dim)
    rounding = _rounding_tail(n, padded_dim, beta, p / 3.0)
    noise = _noise_tail(mechanism, n * local_variance, q)
    return signal + rounding + noise


def _sensitivities(clip: float, gamma: float, padded_dim: int, beta: float) -> tuple[float, float]:
    l2 = rounded_l2_bound(clip / gamma, padded_dim, beta)
    # An integer vector has |v_i| ≤ v_i², so ‖v‖₁ ≤ ‖v‖₂²; and ‖v‖₁ ≤ sqrt(D)‖v‖₂.
    l1 = min(l2 * l2, math.sqrt(padded_dim) * l2)
    return l2, l1
