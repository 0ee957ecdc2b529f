"""Federated matrix factorisation for implicit feedback with user-level DP (FederatedMF).

Each device keeps its own history and its own user vector; only clipped, noised item-factor
updates leave it (federated collaborative filtering, Ammad-ud-din et al. 2019; federated
reconstruction, Singhal et al. 2021). One round:

1. the server Poisson-samples clients (each user independently with probability ``q``) and
   sends them the current head item factors ``Y`` (``n_head × k``);
2. each sampled client solves its user vector exactly from ``Y`` and its own items
   (:func:`client_update`), computes the gradient of its own iALS loss with respect to
   **every** head item factor (dense, so the update's support does not reveal which items the
   user touched), clips it to L2 norm ``C`` and reports whether it was already within ``C``;
3. the clipped updates and the (centred) clip bits are summed — by SecAgg+ with distributed
   discrete-Gaussian noise added by the clients (``aggregation="distributed"``) or by a trusted
   server that adds Gaussian noise (``aggregation="central"``);
4. the server takes a mean step with SGD or Adam (:meth:`FederatedMFServer.apply`) and moves
   the clip norm towards the ``γ``-quantile of the update norms (Andrew et al. 2021).

Privacy (shared by both variants)
    Unit: one user (a device holds one user's whole history). Neighbouring relation:
    add/remove one user's whole history (dp-accounting's ``ADD_OR_REMOVE_ONE``).
    Per round, the released quantity is the sum over the sampled users of the payload
    ``v_u = [a·Δ_u, β·(b_u − ½)]`` where ``Δ_u`` is the clipped update (``‖Δ_u‖ ≤ C``),
    ``b_u ∈ {0, 1}`` the clip bit, ``a = z/(z_Δ C)`` and ``β = z/σ_b``. Then
    ``‖v_u‖² ≤ z²(z_Δ⁻² + (2σ_b)⁻²) = 1``, i.e. **L2 sensitivity 1**, and the sum gets noise of
    standard deviation ``z`` per coordinate: one Gaussian mechanism with multiplier ``z``, which
    gives the values noise ``z_Δ·C`` and the bit count noise ``σ_b``, where (Andrew et al. 2021)
    ``z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2)``. Rounds are ``PoissonSampledDpEvent(q, Gaussian(z))``
    composed over the rounds with the PLD accountant (central) or, for distributed DP, the
    RDP-dominating event of the KLS21 bound for the fewest honest survivors a completed round
    can have (``noise_shares``), Poisson-sampled, with the RDP accountant. The server pads every
    sum to ``max_clients`` noise shares before decoding, so adding a user changes the sum's
    signal but not how many noise shares it holds — what the bound and amplification by
    sampling assume (docs/distributed_dp.md, "Neighbouring relation"). One counting round
    always runs first (:func:`client_count_vector`): indicators of at most B = ``count_bound``
    of the user's items, each of weight ``√(B/((B + 1)·m))`` for ``m = min(n_u, B)``
    (``count_weighting="length"``; ``"uniform"``: ``1/√(B + 1)``), and a one-hot of their
    history-length bin of weight ``1/√(B + 1)`` — L2 norm ≤ 1 (exactly 1 by default), so
    sensitivity 1; the server's counts (× √(B + 1)) move by at most √B; one
    ``GaussianDpEvent(z_h)`` (Poisson-sampled below rate 1) through the same aggregation
    as the rounds. Its noisy counts choose the head (unless it is public) and are the
    ranking's popularity prior; its histogram sets the per-user blend. With ``head_snr`` the
    trained head is cut to the items whose noisy count clears the training noise
    (post-processing); with distributed DP the payload keeps the planned ``head_items`` rows
    and the devices send zeros for the rows past the learnable head — their update over the
    learnable rows is still clipped to ``C``, so ``‖v_u‖ ≤ 1`` and the events are unchanged.
    Everything else (user vectors, the server optimiser, the clip-norm update from the noised
    bit count, recommendations) is post-processing or stays on the device.

Dropouts and aborts
    A sampled client that drops out is still accounted as sampled (its inclusion probability
    is at most ``q`` whatever happens), so ``PoissonSampled(q, ·)`` is an upper bound on the
    true spend; with distributed DP only the honest survivors' noise protects anyone, so a
    round with fewer than ``noise_shares`` of them aborts, and every completed round is charged
    that worst case (a bound independent of the cohort size; see
    :class:`~privrec.federated.server.FederatedMFServer`). A round that aborts releases nothing
    about the data (SecAgg reveals no partial sum) and is recorded with no spend.
"""

from __future__ import annotations

from privrec.federated.accounting import (
    PLD_INTERVAL,
    RDP_ACCOUNTING_ORDERS,
    calibrate_multiplier,
    fast_epsilon,
    head_count_event,
)
from privrec.federated.client import (
    ClientUpdate,
    RoundSpec,
    _user_vector,
    client_count_vector,
    client_count_vectors,
    client_update,
    client_updates,
    pack_payload,
    split_noise,
    user_vectors,
)
from privrec.federated.config import DEFAULT_COHORT, Aggregation, FederatedMFConfig
from privrec.federated.server import FederatedMFServer

__all__ = [
    "DEFAULT_COHORT",
    "PLD_INTERVAL",
    "RDP_ACCOUNTING_ORDERS",
    "Aggregation",
    "ClientUpdate",
    "FederatedMFConfig",
    "FederatedMFServer",
    "RoundSpec",
    "_user_vector",
    "calibrate_multiplier",
    "client_count_vector",
    "client_count_vectors",
    "client_update",
    "client_updates",
    "fast_epsilon",
    "head_count_event",
    "pack_payload",
    "split_noise",
    "user_vectors",
]
