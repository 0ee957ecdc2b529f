"""The plan of a distributed-DP round: calibration of grid, modulus and noise, and its guarantee.

:func:`calibrate_distributed` turns a target budget (or a noise multiplier), the clipping norm,
the dimension and the number of clients into every number one round needs — granularity ``γ``,
bits ``b``, per-client noise variance, sensitivities — as a frozen :class:`DistributedDPPlan`.
The plan is also where the guarantee is read back: for the *actual* number of honest survivors
(:meth:`DistributedDPPlan.guarantee_for`), which is what the accountant must be told, since
fewer survivors than planned means less noise in the sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from privrec.errors import ConfigError, DataError
from privrec.privacy.budget import Budget
from privrec.privacy.distributed.bounds import (
    DEFAULT_BETA,
    RDP_ORDERS,
    Mechanism,
    _half_range,
    _rdp_to_epsilon,
    _rounding_tail,
    _sensitivities,
    ddg_rdp,
    skellam_rdp,
)
from privrec.privacy.hadamard import next_power_of_two
from privrec.privacy.units import PrivacyUnit

if TYPE_CHECKING:  # dp-accounting is imported where an event is made: an encoding client never
    import dp_accounting  # needs it, and it is slow to import (see bounds._rdp_to_epsilon)

__all__ = ["DistributedDPPlan", "DistributedGuarantee", "calibrate_distributed"]


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
        import dp_accounting

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


def _check_count(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise DataError(f"{name} must be a positive integer", field=name, found=n)
    return int(n)


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
        import dp_accounting

        from privrec.privacy.accounting import calibrate

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
