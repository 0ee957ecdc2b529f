"""Distributed differential privacy around a secure sum modulo 2^b.

With secure aggregation the server learns only ``Σ_i y_i mod 2^b`` over the clients that
survived the round. If every client adds a small share of integer noise, that sum is already
differentially private and no trusted server is needed. This module is the part around the
secure sum (Kairouz, Liu & Steinke, ICML 2021, "The Distributed Discrete Gaussian Mechanism";
Agarwal, Kairouz & Liu, NeurIPS 2021, "The Skellam Mechanism"):

Client (:meth:`DistributedDPEncoder.encode`)
    1. clip to L2 norm ``c``;
    2. rotate with the randomised Walsh–Hadamard transform (public shared seed, padded to
       ``D = 2^k ≥ d``) so every coordinate is small (:mod:`privrec.privacy.hadamard`);
    3. scale by ``1/γ`` (``γ`` = granularity of the integer grid);
    4. conditional randomised rounding: each coordinate goes to its floor or ceiling with the
       probabilities that keep it unbiased; the whole vector is re-rounded until its L2 norm
       is at most ``Δ2`` (KLS21's bound), so the sensitivity is ``Δ2`` *deterministically*;
    5. add integer noise — discrete Gaussian ``N_Z(0, σ²)`` (default) or Skellam with variance
       ``σ²`` — sized so that the sum over **at least** ``min_survivors`` clients has the target
       noise;
    6. wrap to ``[0, 2^b)`` (``uint64``), ready for the SecAgg masked-input phase.

Server (:meth:`DistributedDPEncoder.decode`)
    map the modular sum to the signed range ``[-2^(b-1), 2^(b-1))``, multiply by ``γ``, undo
    the rotation, drop the padding and optionally divide by the number of survivors.

Privacy
    Unit: one client's whole update (the client is the privacy unit, which is the user when a
    client holds one user's data). Neighbouring relation: the surviving set with one client's
    update replaced by zero (equivalently added/removed while the other survivors' noise is
    present). Sensitivity: ``Δ2`` (L2) and ``Δ1 = min(Δ2², sqrt(D)·Δ2)`` (L1) on the integer
    grid, guaranteed by conditional rounding. Accounting:

    * discrete Gaussian — the Rényi-DP bound for a **sum of n independent discrete Gaussians**
      of KLS21 (Proposition 14 of arXiv:2102.06387), with
      ``τ = 10 Σ_{k=1}^{n-1} exp(-2π² σ² k/(k+1))`` measuring how far the sum is from one
      discrete Gaussian; at integer scale ``σ ≥ 1`` the τ terms are below 1e-8.
    * Skellam — the RDP bound of AKL21 (Theorem 3.5 / Corollary 3.6) for Skellam noise of
      variance ``V``, at integer orders.

    The RDP curve is turned into ``(ε, δ)`` with dp-accounting's own conversion
    (``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon``). For composition with other
    releases, :meth:`DistributedDPPlan.dp_event` gives a ``GaussianDpEvent`` whose RDP curve
    dominates the bound; it must be accounted with the **RDP** accountant (the PLD of a
    Gaussian would overstate the privacy of a discrete sum).

Dropouts
    The noise is sized for ``min_survivors``. If fewer clients survive, less noise is in the sum
    and the guarantee is weaker: :meth:`DistributedDPPlan.guarantee_for` computes the true one
    from the actual count, and the decoder reports the guarantee for the count it was given.
    Only honest survivors count: noise added by clients colluding with the server is known to
    it and protects nobody.

Overflow
    ``b`` is chosen (or ``γ`` for a given ``b``) so that, with probability at least
    ``1 - modclip_prob``, **no** coordinate of the sum over up to ``max_clients`` clients
    leaves the signed range (a union bound over coordinates of three tail bounds: Hoeffding for
    the rotated signal, Hoeffding for rounding errors, sub-Gaussian/Chernoff for the noise). The
    signal bound assumes the clients' updates do not depend on the public rotation seed; an
    adversarial client can always wrap the sum, which is a robustness, not a privacy, issue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dp_accounting
import numpy as np
import pydantic
import scipy.optimize
from dp_accounting.rdp import rdp_privacy_accountant

from privrec.errors import ConfigError, DataError
from privrec.privacy.accounting import calibrate
from privrec.privacy.budget import Budget
from privrec.privacy.hadamard import next_power_of_two, rotate, rotation_signs, unrotate
from privrec.privacy.mechanisms import discrete_gaussian
from privrec.privacy.randomness import secure_generator
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "DistributedDPConfig",
    "DistributedDPEncoder",
    "DistributedDPPlan",
    "DistributedGuarantee",
    "calibrate_distributed",
    "ddg_rdp",
    "sample_discrete_gaussian",
    "sample_skellam",
    "skellam_rdp",
]

Mechanism = Literal["dgauss", "skellam"]

#: RDP orders. Integer orders only: AKL21's Skellam bound is stated for integer α, and the same
#: grid keeps the two mechanisms comparable.
RDP_ORDERS: tuple[int, ...] = (*range(2, 129), *range(132, 257, 4), *range(272, 1025, 16))

#: Default probability that one conditional-rounding attempt exceeds ``Δ2`` (KLS21's β). Small,
#: so re-rounding is rare and its bias (at most β/(1-β) per coordinate) negligible; the price is
#: a ``sqrt(2 log(1/β))`` factor on a lower-order term of ``Δ2²``.
DEFAULT_BETA = 1e-3

_MAX_ROUNDING_TRIES = 200
_EXACT_SAMPLER_MAX = 64


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------


def sample_discrete_gaussian(
    sigma: float, size: int | tuple[int, ...], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Vectorised discrete Gaussian ``P(x) ∝ exp(-x²/(2σ²))`` on the integers (int64).

    Canonne, Kamath & Steinke (2020), Algorithm 3, run on whole arrays: propose ``y`` from a
    discrete Laplace of scale ``t = ⌊σ⌋ + 1`` and accept with probability
    ``exp(-(|y| - σ²/t)² / (2σ²))`` (about 0.76 for large σ); rejected draws are replaced by a
    fresh batch until ``size`` values are accepted. The proposal costs one 64-bit word of the
    generator: its top 53 bits give ``u`` and ``|y| = ⌈log(u(1+q)/2) / log q⌉ - 1`` with
    ``q = e^{-1/t}`` (inversion of ``P(|y| ≥ m) = 2q^m/(1+q)``, a geometric tail), its lowest
    bit the sign; a second word gives the acceptance test. This is about 25% faster than
    drawing two geometric variables, and the ChaCha20 stream is the remaining bottleneck.

    Floating-point caveat: the inversion and the acceptance test use float64 (53-bit uniforms,
    ``log``), so the output distribution is the discrete Gaussian up to rounding errors of
    order 1e-16 in each probability; it is not the exact, rational-arithmetic sampler
    :func:`privrec.privacy.mechanisms.discrete_gaussian` (used here instead when ``rng`` is
    ``None`` and at most 64 values are asked for). Randomness: ``rng`` or, if ``None``, a fresh
    :func:`~privrec.privacy.randomness.secure_generator` (ChaCha20).
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"sigma must be > 0 and finite, found {sigma}")
    shape = (size,) if isinstance(size, int) else tuple(size)
    count = int(np.prod(shape, dtype=np.int64))
    if rng is None and count <= _EXACT_SAMPLER_MAX:
        return discrete_gaussian(sigma, count).reshape(shape)
    gen = secure_generator() if rng is None else rng
    t = float(math.floor(sigma) + 1)
    log_q = -1.0 / t
    shift = math.log((1.0 + math.exp(log_q)) / 2.0)
    s2 = sigma * sigma
    centre = s2 / t
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        need = count - filled
        m = need + need // 3 + 64  # acceptance ≥ 0.76 for σ ≥ 1: usually one pass
        raw = gen.bit_generator.random_raw(2 * m)
        u = ((raw[:m] >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        mag = np.ceil((np.log(u) + shift) / log_q) - 1.0
        v = ((raw[m:] >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
        accept = np.log(v) < -((mag - centre) ** 2) / (2.0 * s2)
        signed = np.where((raw[:m] & np.uint64(1)).astype(bool), mag, -mag)[accept][:need]
        out[filled : filled + signed.size] = signed.astype(np.int64)
        filled += signed.size
    return out.reshape(shape)


def sample_skellam(
    variance: float, size: int | tuple[int, ...], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Symmetric Skellam noise ``Poisson(V/2) - Poisson(V/2)`` with variance ``V`` (int64).

    Closed under addition (a sum of independent Skellams is Skellam), which is what makes it a
    natural distributed mechanism. numpy's Poisson sampler works in float64 (same caveat as
    :func:`sample_discrete_gaussian`). Randomness: ``rng`` or a fresh ChaCha20
    :func:`~privrec.privacy.randomness.secure_generator`.
    """
    if not (variance > 0 and math.isfinite(variance)):
        raise ConfigError(f"variance must be > 0 and finite, found {variance}")
    gen = secure_generator() if rng is None else rng
    lam = variance / 2.0
    a = gen.poisson(lam, size=size).astype(np.int64)
    b = gen.poisson(lam, size=size).astype(np.int64)
    out: np.ndarray = a - b
    return out


# ----------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------


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
    return float(scipy.optimize.brentq(gap, 0.0, hi))


# ----------------------------------------------------------------------------------------------
# Plan (resolved parameters) and its guarantee
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedGuarantee:
    """What the summed release actually guarantees for a given number of survivors."""

    epsilon: float
    delta: float
    n_survivors: int
    event: dp_accounting.DpEvent
    bound: str


@dataclass(frozen=True)
class DistributedDPPlan:
    """Every resolved number of one distributed-DP round (all integer-grid quantities).

    Attributes
    ----------
    local_variance
        Per-client noise variance on the integer grid (σ² of the discrete Gaussian, or the
        Skellam variance); the sum over ``n`` survivors has variance ``n·local_variance``.
    delta2, delta1
        L2 / L1 sensitivity on the grid after conditional rounding.
    """

    mechanism: Mechanism
    clip: float
    dim: int
    padded_dim: int
    gamma: float
    bits: int
    local_variance: float
    delta2: float
    delta1: float
    min_survivors: int
    max_clients: int
    beta: float
    modclip_prob: float
    delta: float
    unit: PrivacyUnit = PrivacyUnit.USER

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def rdp(self, n_survivors: int) -> np.ndarray:
        """The RDP curve (on :data:`RDP_ORDERS`) of the sum over ``n_survivors`` honest clients."""
        n = _check_count(n_survivors, "n_survivors")
        if self.mechanism == "dgauss":
            return ddg_rdp(
                RDP_ORDERS,
                self.delta2,
                self.delta1,
                math.sqrt(self.local_variance),
                n,
                self.padded_dim,
            )
        return skellam_rdp(RDP_ORDERS, self.delta2, self.delta1, n * self.local_variance)

    def epsilon(self, n_survivors: int, delta: float | None = None) -> float:
        """ε at ``delta`` (default: the plan's δ) for ``n_survivors`` honest survivors."""
        return _rdp_to_epsilon(self.rdp(n_survivors), self.delta if delta is None else delta)

    def dp_event(self, n_survivors: int) -> dp_accounting.DpEvent:
        """A ``GaussianDpEvent`` whose RDP curve dominates the bound — account it with RDP.

        The multiplier is ``1/sqrt(2ρ)`` with ``ρ`` the largest slope of the bound over the
        orders (``max_α ε(α)/α``), so ``α/(2z²) ≥ ε(α)`` at every order and composition under
        the RDP accountant stays an upper bound.
        """
        curve = self.rdp(n_survivors)
        rho = float(np.max(curve / np.asarray(RDP_ORDERS, dtype=np.float64)))
        return dp_accounting.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho))

    def guarantee_for(self, n_survivors: int, delta: float | None = None) -> DistributedGuarantee:
        """The true guarantee when ``n_survivors`` honest clients' noise is in the sum.

        Fewer survivors than ``min_survivors`` means less noise and a **larger** ε; this is what
        must be reported to the accountant, never the planned guarantee.
        """
        d = self.delta if delta is None else delta
        bound = (
            "KLS21 Prop. 14 (sum of discrete Gaussians, RDP)"
            if self.mechanism == "dgauss"
            else "AKL21 Thm. 3.5 (Skellam, RDP)"
        )
        return DistributedGuarantee(
            epsilon=self.epsilon(n_survivors, d),
            delta=d,
            n_survivors=int(n_survivors),
            event=self.dp_event(n_survivors),
            bound=bound,
        )

    def decoded_noise_std(self, n_survivors: int) -> float:
        """Standard deviation of the noise in each coordinate of the decoded **sum** (real units).

        The rotation is orthonormal and the noise i.i.d., so the decoded noise per coordinate has
        variance ``γ²·n·local_variance`` (rounding error adds at most ``γ²n/4`` more).
        """
        return self.gamma * math.sqrt(n_survivors * self.local_variance)

    def overflow_half_range(self, n_clients: int | None = None) -> float:
        """``T`` such that every coordinate of the integer sum is in ``(-T, T)`` w.p. ≥ 1-p.

        ``p = modclip_prob``, split in thirds between (i) the rotated clipped signal —
        Hoeffding over the random signs, ``‖Σx‖ ≤ n c``; (ii) rounding errors — each in an
        interval of length 1 with conditional bias ≤ β/(1-β), Hoeffding over clients, never
        more than ``n``; (iii) the noise — sub-Gaussian (discrete Gaussian) or Chernoff
        (Skellam); each union-bounded over the ``D`` coordinates.
        """
        n = self.max_clients if n_clients is None else _check_count(n_clients, "n_clients")
        return _half_range(
            self.mechanism,
            n,
            self.padded_dim,
            self.clip / self.gamma,
            self.local_variance,
            self.beta,
            self.modclip_prob,
        )

    def quantisation_error_bound(self, n_clients: int, prob: float | None = None) -> float:
        """Bound on ``‖decoded noise-free sum - clipped sum‖₂`` (real units).

        Always ``γ·n·sqrt(D)`` (each rounding error is below 1 in every coordinate); with
        ``prob`` given, the tighter bound that holds with probability ≥ 1 - prob:
        ``γ·sqrt(D)·min(n, nβ/(1-β) + sqrt(n log(2D/prob)/2))``.
        """
        n = _check_count(n_clients, "n_clients")
        root_d = math.sqrt(self.padded_dim)
        if prob is None:
            return self.gamma * n * root_d
        return self.gamma * root_d * _rounding_tail(n, self.padded_dim, self.beta, prob)


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


def _check_count(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise DataError(f"{name} must be a positive integer", field=name, found=n)
    return int(n)


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------


def _sensitivities(clip: float, gamma: float, padded_dim: int, beta: float) -> tuple[float, float]:
    l2 = rounded_l2_bound(clip / gamma, padded_dim, beta)
    # An integer vector has |v_i| ≤ v_i², so ‖v‖₁ ≤ ‖v‖₂²; and ‖v‖₁ ≤ sqrt(D)‖v‖₂.
    l1 = min(l2 * l2, math.sqrt(padded_dim) * l2)
    return l2, l1


def _local_variance(
    budget: Budget,
    mechanism: Mechanism,
    l2: float,
    l1: float,
    n: int,
    padded_dim: int,
    gaussian_z: float,
) -> float:
    """Smallest per-client variance whose sum over ``n`` clients meets ``budget``."""

    def eps(var: float) -> float:
        if mechanism == "dgauss":
            curve = ddg_rdp(RDP_ORDERS, l2, l1, math.sqrt(var), n, padded_dim)
        else:
            curve = skellam_rdp(RDP_ORDERS, l2, l1, n * var)
        return _rdp_to_epsilon(curve, budget.delta)

    # Start from the Gaussian answer (exact for dgauss when τ vanishes), then bracket and bisect.
    hi = (gaussian_z * l2) ** 2 / n
    while eps(hi) > budget.epsilon:
        hi *= 1.05
    lo = hi
    while eps(lo) <= budget.epsilon and lo > 1e-12:
        lo /= 1.05
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if eps(mid) <= budget.epsilon:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-7:
            break
    return hi


def calibrate_distributed(
    budget: Budget | None,
    clip: float,
    dim: int,
    n_min_survivors: int,
    *,
    bits: int | None = None,
    gamma: float | None = None,
    mechanism: Mechanism = "dgauss",
    modclip_prob: float = 1e-6,
    max_clients: int | None = None,
    beta: float = DEFAULT_BETA,
    noise_multiplier: float | None = None,
    unit: PrivacyUnit = PrivacyUnit.USER,
) -> DistributedDPPlan:
    """Resolve granularity ``γ``, bits ``b`` and per-client noise for a target budget.

    Parameters
    ----------
    budget
        Target (ε, δ) for the sum over ``n_min_survivors`` honest clients. ``None`` only with
        ``noise_multiplier``.
    clip, dim
        L2 clipping norm of each update and its length.
    n_min_survivors
        The noise is sized so the sum over this many clients carries the target noise.
    bits, gamma
        Either, both or neither: ``gamma`` only → the smallest ``b`` whose
        overflow probability is ≤ ``modclip_prob``; ``bits`` only → the smallest ``γ`` (finest
        grid) that fits in ``b`` bits at that probability; neither → ``γ = c/(10 sqrt(D))``
        (about ten grid steps per rotated coordinate, so rounding inflates ``Δ2²`` by a few
        per mille) and ``b`` as in the first case; both → checked, :class:`ConfigError` if the
        overflow bound is not met.
    noise_multiplier
        Instead of a budget: the sum's noise standard deviation as a multiple of ``Δ2``
        (the plan then reports ε at δ = 1e-5 unless another δ is passed).
    max_clients
        Most clients whose inputs may be summed (for the overflow bound); default
        ``n_min_survivors``.
    beta
        Failure probability of one conditional-rounding attempt (KLS21's β).

    Notes
    -----
    The dgauss search starts from the RDP-calibrated Gaussian multiplier (which the KLS21 bound
    reduces to when τ → 0) and bisects on the full bound; Skellam bisects on its RDP bound.
    """
    if (budget is None) == (noise_multiplier is None):
        raise ConfigError("give exactly one of budget and noise_multiplier")
    if not (clip > 0 and math.isfinite(clip)):
        raise ConfigError(f"clip must be > 0 and finite, found {clip}")
    if mechanism not in ("dgauss", "skellam"):
        raise ConfigError(f"unknown mechanism {mechanism!r}; choose 'dgauss' or 'skellam'")
    if not 0 < modclip_prob < 1:
        raise ConfigError(f"modclip_prob must be in (0, 1), found {modclip_prob}")
    if not 0 < beta < 1:
        raise ConfigError(f"beta must be in (0, 1), found {beta}")
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise ConfigError(f"dim must be a positive integer, found {dim}")
    if isinstance(n_min_survivors, bool) or int(n_min_survivors) != n_min_survivors:
        raise ConfigError(f"n_min_survivors must be an integer, found {n_min_survivors}")
    if n_min_survivors < 1:
        raise ConfigError(f"n_min_survivors must be >= 1, found {n_min_survivors}")
    n = int(n_min_survivors)
    n_max = n if max_clients is None else int(max_clients)
    if n_max < n:
        raise ConfigError(f"max_clients ({n_max}) must be >= n_min_survivors ({n})")
    if bits is not None and not 2 <= bits <= 64:
        raise ConfigError(f"bits must be in [2, 64], found {bits}")
    if gamma is not None and not (gamma > 0 and math.isfinite(gamma)):
        raise ConfigError(f"gamma must be > 0 and finite, found {gamma}")
    padded = next_power_of_two(int(dim))

    if budget is not None:
        budget.check_delta(n_max)  # warns when δ > 1/(number of clients)
        z = calibrate(budget, lambda s: dp_accounting.GaussianDpEvent(s), kind="rdp", unit=unit)
        delta = budget.delta
    else:
        assert noise_multiplier is not None
        if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
            raise ConfigError(f"noise_multiplier must be > 0, found {noise_multiplier}")
        z = noise_multiplier
        delta = 1e-5

    def local_var(g: float) -> tuple[float, float, float]:
        l2, l1 = _sensitivities(clip, g, padded, beta)
        if budget is None:
            return (z * l2) ** 2 / n, l2, l1
        return _local_variance(budget, mechanism, l2, l1, n, padded, z), l2, l1

    def half_range(g: float) -> float:
        var = local_var(g)[0]
        return _half_range(mechanism, n_max, padded, clip / g, var, beta, modclip_prob)

    if bits is None:
        g = clip / (10.0 * math.sqrt(padded)) if gamma is None else float(gamma)
        needed = half_range(g)
        b = max(2, math.ceil(math.log2(needed + 1.0)) + 1)
        if b > 64:
            raise ConfigError(
                f"the sum needs {b} bits at gamma={g:g}; choose a coarser gamma (at most 64 bits)"
            )
    elif gamma is None:
        limit = 2.0 ** (bits - 1) - 1.0
        # half_range(γ)·γ is nearly constant while the signal dominates, so bisect on log γ.
        hi_g = clip
        while half_range(hi_g) > limit:
            hi_g *= 2.0
            if hi_g > clip * 2.0**40:
                raise ConfigError(
                    f"{bits} bits cannot hold the sum of {n_max} clients in {padded} dimensions "
                    f"at modclip_prob={modclip_prob:g}, whatever the granularity; use more bits"
                )
        lo_g = hi_g / 2.0
        while half_range(lo_g) <= limit:
            hi_g, lo_g = lo_g, lo_g / 2.0
        for _ in range(30):
            mid = math.sqrt(lo_g * hi_g)
            if half_range(mid) <= limit:
                hi_g = mid
            else:
                lo_g = mid
        g, b = hi_g, int(bits)
    else:
        g, b = float(gamma), int(bits)
        needed = half_range(g)
        if needed > 2.0 ** (b - 1) - 1.0:
            need_b = math.ceil(math.log2(needed + 1.0)) + 1
            raise ConfigError(
                f"bits={b} overflows with probability above {modclip_prob:g} at gamma={g:g} "
                f"(needs {need_b} bits); raise bits, raise gamma, or leave one of them None"
            )
    var, l2, l1 = local_var(g)
    return DistributedDPPlan(
        mechanism=mechanism,
        clip=float(clip),
        dim=int(dim),
        padded_dim=padded,
        gamma=g,
        bits=b,
        local_variance=var,
        delta2=l2,
        delta1=l1,
        min_survivors=n,
        max_clients=n_max,
        beta=beta,
        modclip_prob=modclip_prob,
        delta=delta,
        unit=unit,
    )


# ----------------------------------------------------------------------------------------------
# Config, encoder, decoder
# ----------------------------------------------------------------------------------------------


class DistributedDPConfig(pydantic.BaseModel):
    """Validated settings of a distributed-DP round; see :func:`calibrate_distributed`.

    Give ``budget`` (calibrate the noise) or ``noise_multiplier`` (sum's noise std / Δ2).
    ``rotation_seed`` is public and must be shared by all clients and the server.
    ``mechanism="dgauss"`` (default) uses KLS21's distributed discrete Gaussian; ``"skellam"``
    AKL21's Skellam (cheaper to sample, slightly more noise at the same ε for small n).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    clip: float
    dim: int
    min_survivors: int
    rotation_seed: int
    budget: Budget | None = None
    noise_multiplier: float | None = None
    bits: int | None = None
    gamma: float | None = None
    modclip_prob: float = 1e-6
    mechanism: Mechanism = "dgauss"
    max_clients: int | None = None
    beta: float = DEFAULT_BETA
    unit: PrivacyUnit = PrivacyUnit.USER

    @pydantic.model_validator(mode="after")
    def _check(self) -> DistributedDPConfig:
        if (self.budget is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of budget and noise_multiplier")
        if self.clip <= 0 or not math.isfinite(self.clip):
            raise ValueError(f"clip must be > 0 and finite, found {self.clip}")
        if self.dim < 1 or self.min_survivors < 1:
            raise ValueError("dim and min_survivors must be >= 1")
        return self

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"invalid distributed-DP config {where}: {err['msg']}") from None


class DistributedDPEncoder:
    """Client-side encoder and server-side decoder of distributed DP around a secure sum.

    Mechanism: per-client discrete Gaussian (default) or Skellam integer noise on the rotated,
    scaled and conditionally rounded clipped update, wrapped modulo ``2^b``.
    Sensitivity: ``Δ2 = plan.delta2``, ``Δ1 = plan.delta1`` on the integer grid (conditional
    rounding makes them hold for every encoded vector). Privacy unit: one client's update.
    Neighbouring relation: the survivors' updates with one client's update replaced by zero.
    Accounting: KLS21 Prop. 14 (dgauss) or AKL21 Thm. 3.5 (Skellam), as an RDP curve converted
    by dp-accounting; :meth:`guarantee_for` gives the guarantee for the true survivor count.

    >>> import numpy as np
    >>> from privrec.privacy import Budget
    >>> enc = DistributedDPEncoder(DistributedDPConfig(
    ...     clip=1.0, dim=8, min_survivors=10, rotation_seed=7, budget=Budget(2.0, 1e-5)))
    >>> y = enc.encode(np.ones(8) / 8)
    >>> y.dtype, bool(y.max() < 2 ** enc.plan.bits)
    (dtype('uint64'), True)
    """

    def __init__(self, config: DistributedDPConfig) -> None:
        self.config = config
        self.plan = calibrate_distributed(
            config.budget,
            config.clip,
            config.dim,
            config.min_survivors,
            bits=config.bits,
            gamma=config.gamma,
            mechanism=config.mechanism,
            modclip_prob=config.modclip_prob,
            max_clients=config.max_clients,
            beta=config.beta,
            noise_multiplier=config.noise_multiplier,
            unit=config.unit,
        )
        self._signs = rotation_signs(config.rotation_seed, self.plan.padded_dim)

    @property
    def bits(self) -> int:
        return self.plan.bits

    @property
    def encoded_dim(self) -> int:
        """Length of an encoded vector: the dimension padded to a power of two."""
        return self.plan.padded_dim

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.plan.dim:
            raise DataError(
                "update has the wrong shape",
                field="x",
                expected=f"(..., {self.plan.dim})",
                found=arr.shape,
            )
        if not np.all(np.isfinite(arr)):
            raise DataError("update contains NaN or infinite values", field="x")
        return arr

    def quantise(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Steps 1–4 (clip, rotate, scale, conditional rounding), no noise: int64 grid vectors.

        Accepts one update ``(d,)`` or a batch ``(n, d)`` (rows rounded independently).
        """
        arr = self._check_input(x)
        gen = secure_generator() if rng is None else rng
        rows = np.atleast_2d(arr)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        factor = np.minimum(1.0, self.plan.clip / np.maximum(norms, 1e-300))
        scaled = rotate(rows * factor, self._signs) / self.plan.gamma
        floor = np.floor(scaled)
        frac = scaled - floor
        out = np.empty(scaled.shape, dtype=np.int64)
        todo = np.arange(rows.shape[0])
        bound_sq = self.plan.delta2**2
        for _ in range(_MAX_ROUNDING_TRIES):
            up = gen.random((todo.size, scaled.shape[1])) < frac[todo]
            cand = floor[todo] + up
            ok = np.einsum("ij,ij->i", cand, cand) <= bound_sq
            out[todo[ok]] = cand[ok].astype(np.int64)
            todo = todo[~ok]
            if todo.size == 0:
                break
        else:  # probability ≤ β^200 per row
            raise DataError("conditional rounding did not meet the norm bound", field="x")
        return out[0] if arr.ndim == 1 else out

    def encode(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One client's (or a batch's) SecAgg input: ``uint64`` values in ``[0, 2^b)``.

        ``rng`` defaults to a fresh ChaCha20 :func:`secure_generator`; pass a
        :func:`~privrec.privacy.randomness.seeded_generator` only for tests (it warns).
        The output can go straight into the masked-input phase of secure aggregation.
        """
        gen = secure_generator() if rng is None else rng
        q = self.quantise(x, gen)
        if self.plan.mechanism == "dgauss":
            noise = sample_discrete_gaussian(math.sqrt(self.plan.local_variance), q.shape, gen)
        else:
            noise = sample_skellam(self.plan.local_variance, q.shape, gen)
        return self.wrap(q + noise)

    def wrap(self, z: np.ndarray) -> np.ndarray:
        """Signed integers → ``uint64`` in ``[0, 2^b)`` (two's complement, then mask)."""
        u = np.asarray(z, dtype=np.int64).view(np.uint64)
        if self.plan.bits < 64:
            u = u & np.uint64(self.plan.modulus - 1)
        return u

    def unwrap(self, s: np.ndarray) -> np.ndarray:
        """``[0, 2^b)`` → signed integers in ``[-2^(b-1), 2^(b-1))``."""
        u = np.asarray(s)
        if u.dtype != np.uint64:
            if not np.issubdtype(u.dtype, np.integer) or (u.size and int(u.min()) < 0):
                raise DataError("modular sum must be non-negative integers", field="sum_mod")
            u = u.astype(np.uint64)
        b = self.plan.bits
        if b < 64:
            if u.size and int(u.max()) >= self.plan.modulus:
                raise DataError("modular sum out of range", field="sum_mod", expected=f"< 2^{b}")
            signed = u.astype(np.int64)
            signed -= (signed >= (1 << (b - 1))).astype(np.int64) << b
            return signed
        return u.view(np.int64)

    def decode(self, sum_mod: np.ndarray, n_survivors: int, *, mean: bool = False) -> np.ndarray:
        """Server side: the modular sum over ``n_survivors`` clients → float sum (or mean).

        Raises :class:`DataError` on a wrong length, out-of-range values, or more survivors than
        ``max_clients`` (the overflow bound would not hold). Report
        ``self.guarantee_for(n_survivors)`` to the accountant, not the planned budget.
        """
        n = _check_count(n_survivors, "n_survivors")
        if n > self.plan.max_clients:
            raise DataError(
                "more survivors than the overflow bound was planned for",
                field="n_survivors",
                expected=f"<= max_clients={self.plan.max_clients}",
                found=n,
            )
        s = np.asarray(sum_mod)
        if s.shape != (self.plan.padded_dim,):
            raise DataError(
                "modular sum has the wrong shape",
                field="sum_mod",
                expected=f"({self.plan.padded_dim},)",
                found=s.shape,
            )
        signed = self.unwrap(s).astype(np.float64) * self.plan.gamma
        out = unrotate(signed, self._signs, self.plan.dim)
        return out / n if mean else out

    def guarantee_for(self, n_survivors: int) -> DistributedGuarantee:
        """See :meth:`DistributedDPPlan.guarantee_for`."""
        return self.plan.guarantee_for(n_survivors)
