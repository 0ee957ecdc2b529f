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
    add ``max_clients − survivors`` phantom noise shares (drawn like a client's), map the
    modular sum to the signed range ``[-2^(b-1), 2^(b-1))``, multiply by ``γ``, undo the
    rotation, drop the zero-padding and optionally divide by the number of survivors.

Privacy
    Unit: one client's whole update (the client is the privacy unit, which is the user when a
    client holds one user's data). Neighbouring relation: one client added or removed — the
    bounds need the two sums to hold equally many noise shares, which the server's padding to
    ``max_clients`` shares guarantees (against the server itself, which knows who took part:
    the client's update replaced by zero, honest shares only). Sensitivity: ``Δ2`` (L2) and ``Δ1 = min(Δ2², sqrt(D)·Δ2)`` (L1) on the integer
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

Layout
    :mod:`~privrec.privacy.distributed.noise` (integer samplers),
    :mod:`~privrec.privacy.distributed.bounds` (sensitivity, RDP and overflow bounds),
    :mod:`~privrec.privacy.distributed.plan` (calibration and the guarantee of a round) and
    :mod:`~privrec.privacy.distributed.encoder` (settings, client encoder, server decoder).
    Every public name is importable from this package.
"""

from __future__ import annotations

from privrec.privacy.distributed.bounds import DEFAULT_BETA as DEFAULT_BETA
from privrec.privacy.distributed.bounds import NEIGHBOURING_NOTE as NEIGHBOURING_NOTE
from privrec.privacy.distributed.bounds import RDP_ORDERS as RDP_ORDERS
from privrec.privacy.distributed.bounds import Mechanism as Mechanism
from privrec.privacy.distributed.bounds import ddg_rdp, skellam_rdp
from privrec.privacy.distributed.bounds import rounded_l2_bound as rounded_l2_bound
from privrec.privacy.distributed.encoder import (
    DistributedDPConfig,
    DistributedDPEncoder,
    padding_generator,
)
from privrec.privacy.distributed.noise import sample_discrete_gaussian, sample_skellam
from privrec.privacy.distributed.plan import (
    DistributedDPPlan,
    DistributedGuarantee,
    calibrate_distributed,
)

__all__ = [
    "DistributedDPConfig",
    "DistributedDPEncoder",
    "DistributedDPPlan",
    "DistributedGuarantee",
    "calibrate_distributed",
    "ddg_rdp",
    "padding_generator",
    "sample_discrete_gaussian",
    "sample_skellam",
    "skellam_rdp",
]
