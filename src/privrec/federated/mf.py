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
    RDP-dominating event of the KLS21 bound for the **actual** number of survivors,
    Poisson-sampled, with the RDP accountant. The head items are chosen from noisy item
    counts (each user's items weighted ``1/sqrt(|I_u|)``, L2 sensitivity 1, everyone
    participates: one ``GaussianDpEvent``) — or given from public data.
    Everything else (user vectors, the server optimiser, the clip-norm update from the noised
    bit count, recommendations) is post-processing or stays on the device.

Dropouts and aborts
    A sampled client that drops out is still accounted as sampled (its inclusion probability
    is at most ``q`` whatever happens), so ``PoissonSampled(q, ·)`` is an upper bound on the
    true spend; with distributed DP only the survivors' noise is in the sum, so each round is
    charged for its actual survivor count. A round that aborts releases nothing about the
    data (SecAgg reveals no partial sum) and is recorded with no spend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dp_accounting
import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.errors import ConfigError, DataError, InvalidInputError, PrivacyWarning
from privrec.models.base import ModelConfig
from privrec.privacy.accounting import AccountantKind, simplify
from privrec.privacy.budget import Budget
from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder
from privrec.privacy.events import SpentEvent, total_event
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "ClientUpdate",
    "FederatedMFConfig",
    "FederatedMFServer",
    "RoundSpec",
    "client_count_vector",
    "client_update",
    "client_updates",
    "head_count_event",
    "pack_payload",
    "split_noise",
    "user_vectors",
]

Aggregation = Literal["central", "distributed"]

#: Expected cohort size when neither ``sampling_rate`` nor ``clients_per_round`` is given.
DEFAULT_COHORT = 1000


class FederatedMFConfig(ModelConfig):
    """Hyper-parameters of federated MF training (validated, JSON round-trip).

    Parameters
    ----------
    factors
        Embedding size ``k``.
    alpha0
        Confidence weight of every (including unobserved) head cell in the iALS loss
        ``α0 Σ_j (x·y_j)² + Σ_{j ∈ I_u} (1 − x·y_j)² + λ_u ‖x‖²``.
    user_regularization, item_regularization
        ``λ_u`` of the on-device user solves; server-side ridge ``λ_i`` added to the mean
        gradient (``2 λ_i Y``; data-independent, so free).
    head_items
        Number of most popular items the dense update covers (``None`` = whole catalogue,
        no head selection). The head is chosen from **noisy** item counts, charged to ε
        (``head_epsilon_fraction`` of it), unless a public head is given to the server.
    head_epsilon_fraction
        Share of ε spent on the head selection when ``epsilon`` is given.
    head_sampling_rate
        Poisson rate of the one counting round that picks the head (default: the training
        rate ``q``); its cost grows with the catalogue size, not the head size.
    rounds
        Number of training rounds ``T``.
    sampling_rate, clients_per_round
        Poisson sampling rate ``q``, or the expected cohort size (``q = clients_per_round /
        population``, capped at 1). At most one; neither means an expected cohort of
        :data:`DEFAULT_COHORT`.
    server_optimizer, server_lr, adam_beta1, adam_beta2, adam_eps
        Server optimiser on the mean update.
    clip_norm
        Initial clip norm ``C`` (L2 over the whole update).
    adaptive_clipping, target_quantile, clip_lr, clip_count_stddev
        Andrew et al. (2021): ``C ← C·exp(−η(b̄ − γ))``; ``σ_b`` (``clip_count_stddev``)
        defaults to ``expected clients / 20`` as they recommend.
    noise_multiplier, epsilon, delta
        Either the per-round multiplier ``z`` (``0`` = no noise, warns) or a target
        ``(ε, δ)`` from which ``z`` is calibrated for the whole training.
    unit
        Only ``"user"``: a device holds one user's history.
    aggregation
        ``"distributed"`` (SecAgg+ with client-side discrete Gaussian noise; the server only
        sees the noised sum) or ``"central"`` (trusted server adds the noise).
    min_survivor_fraction
        Distributed DP: each client's noise share is sized so that the sum over this fraction
        of the expected cohort has the full noise; fewer survivors → larger (true) ε.
    secagg_bits, ddp_mechanism, secagg_neighbours, secagg_threshold, corrupt_fraction
        Secure-sum modulus (``None`` = chosen by the overflow bound), distributed noise
        (``"dgauss"``/``"skellam"``), SecAgg+ graph degree/threshold and the assumed fraction
        of corrupt clients.
    init_scale
        Std of the (data-independent) initial item factors times ``sqrt(k)``.
    seed
        Seeds noise and sampling (warns: NOT private); ``None`` = CSPRNG.
    """

    factors: int = pydantic.Field(default=16, ge=1, le=512)
    alpha0: float = pydantic.Field(default=2.0, ge=0, allow_inf_nan=False)
    user_regularization: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    item_regularization: float = pydantic.Field(default=0.0, ge=0, allow_inf_nan=False)
    head_items: int | None = pydantic.Field(default=1000, ge=1)
    head_epsilon_fraction: float = pydantic.Field(default=0.1, gt=0, lt=1)
    head_sampling_rate: float | None = pydantic.Field(default=None, gt=0, le=1)
    rounds: int = pydantic.Field(default=50, ge=1, le=100_000)
    sampling_rate: float | None = pydantic.Field(default=None, gt=0, le=1)
    clients_per_round: int | None = pydantic.Field(default=None, ge=1)
    server_optimizer: Literal["sgd", "adam"] = "adam"
    server_lr: float = pydantic.Field(default=0.05, gt=0, allow_inf_nan=False)
    adam_beta1: float = pydantic.Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = pydantic.Field(default=0.999, ge=0, lt=1)
    adam_eps: float = pydantic.Field(default=1e-6, gt=0)
    clip_norm: float = pydantic.Field(default=1.0, gt=0, allow_inf_nan=False)
    adaptive_clipping: bool = True
    target_quantile: float = pydantic.Field(default=0.5, gt=0, lt=1)
    clip_lr: float = pydantic.Field(default=0.2, gt=0, allow_inf_nan=False)
    clip_count_stddev: float | None = pydantic.Field(default=None, gt=0)
    noise_multiplier: float | None = pydantic.Field(default=None, ge=0, allow_inf_nan=False)
    epsilon: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    delta: float = pydantic.Field(default=1e-5, gt=0, lt=1)
    unit: PrivacyUnit = PrivacyUnit.USER
    aggregation: Aggregation = "distributed"
    min_survivor_fraction: float = pydantic.Field(default=0.8, gt=0, le=1)
    secagg_bits: int | None = pydantic.Field(default=None, ge=8, le=64)
    ddp_mechanism: Literal["dgauss", "skellam"] = "dgauss"
    secagg_neighbours: int | None = pydantic.Field(default=None, ge=2)
    secagg_threshold: int | None = pydantic.Field(default=None, ge=2)
    corrupt_fraction: float = pydantic.Field(default=0.05, ge=0, lt=0.5)
    init_scale: float = pydantic.Field(default=0.1, gt=0, allow_inf_nan=False)
    seed: int | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> FederatedMFConfig:
        if self.sampling_rate is not None and self.clients_per_round is not None:
            raise ValueError("give at most one of sampling_rate and clients_per_round")
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise ValueError("give exactly one of noise_multiplier and epsilon")
        if self.unit is not PrivacyUnit.USER:
            raise ValueError("FederatedMF protects users: unit must be 'user'")
        return self

    @classmethod
    def create(cls, **kwargs: Any) -> FederatedMFConfig:
        """Build and validate, turning pydantic errors into :class:`ConfigError`."""
        try:
            return cls(**kwargs)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(f"invalid FederatedMF config {where}: {err['msg']}") from None

    @property
    def accountant(self) -> AccountantKind:
        """PLD for central Gaussian noise; RDP for distributed DP (KLS21's bound is RDP)."""
        return AccountantKind.RDP if self.aggregation == "distributed" else AccountantKind.PLD

    def sampling_probability(self, population: int) -> float:
        """Poisson rate ``q`` for a population of ``population`` users."""
        if population < 1:
            raise ConfigError(f"population must be >= 1, found {population}")
        if self.sampling_rate is not None:
            return float(self.sampling_rate)
        cohort = DEFAULT_COHORT if self.clients_per_round is None else self.clients_per_round
        return min(1.0, cohort / population)


# ----------------------------------------------------------------------------------------------
# Client side (pure numpy; runs on the device)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution: its clipped dense update and clip bit.

    Attributes
    ----------
    delta
        Clipped update (descent direction = minus the gradient of the client's own loss with
        respect to every head item factor), flattened row-major, length ``n_head·k``.
    unclipped
        Whether the update's norm was at most the clip norm before clipping.
    norm
        The update's L2 norm before clipping (stays on the device in deployment).
    """

    delta: np.ndarray
    unclipped: bool
    norm: float


def _check_factors(item_factors: np.ndarray) -> np.ndarray:
    y = np.asarray(item_factors, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 1 or y.shape[1] < 1:
        raise DataError(
            "item factors must be a non-empty 2-D array", field="item_factors", found=y.shape
        )
    if not np.all(np.isfinite(y)):
        raise DataError("item factors contain NaN or infinite values", field="item_factors")
    return y


def _check_items(items: np.ndarray, n_head: int) -> np.ndarray:
    arr = np.asarray(items)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(
            "items must be a 1-D array of integer column indices",
            field="items",
            found=f"shape {arr.shape}, dtype {arr.dtype}",
        )
    arr = np.unique(arr.astype(np.int64))
    if arr.size and (arr[0] < 0 or arr[-1] >= n_head):
        raise DataError(
            "item index out of range", field="items", expected=f"0 <= i < {n_head}", found=arr
        )
    return arr


def _user_vector(
    y: np.ndarray, gram: np.ndarray, items: np.ndarray, alpha0: float, reg: float
) -> np.ndarray:
    k = y.shape[1]
    if items.size == 0:
        return np.zeros(k)
    yi = y[items]
    a = alpha0 * gram + yi.T @ yi + reg * np.eye(k)
    out: np.ndarray = np.linalg.solve(a, yi.sum(axis=0))
    return out


def client_update(
    item_factors: np.ndarray, items: np.ndarray, config: FederatedMFConfig, clip_norm: float
) -> ClientUpdate:
    """One device's clipped update, from the current head item factors and its own items.

    The user vector solves ``(α0 YᵀY + Σ_{j∈I} y_j y_jᵀ + λ_u I) x = Σ_{j∈I} y_j`` exactly (the
    minimiser of the device's iALS loss for fixed ``Y``). The update is minus the gradient of
    that loss with respect to every head item factor,
    ``Δ = −2 r xᵀ`` with ``r_j = α0·(x·y_j) + 1[j∈I]·(x·y_j − 1)`` — dense over all head items,
    so its support reveals nothing about ``I`` — clipped to L2 norm ``clip_norm``.

    Parameters
    ----------
    item_factors
        ``(n_head, k)`` current head item factors as sent by the server.
    items
        The user's items as row indices into ``item_factors`` (binary implicit feedback;
        duplicates are ignored).
    config
        Training configuration (``alpha0``, ``user_regularization``).
    clip_norm
        Current clip norm ``C > 0``.
    """
    y = _check_factors(item_factors)
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ConfigError(f"clip_norm must be > 0 and finite, found {clip_norm}")
    idx = _check_items(items, y.shape[0])
    x = _user_vector(y, y.T @ y, idx, config.alpha0, config.user_regularization)
    s = y @ x
    r = config.alpha0 * s
    r[idx] += s[idx] - 1.0
    norm = 2.0 * float(np.linalg.norm(r)) * float(np.linalg.norm(x))
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    delta = (-2.0 * factor) * np.outer(r, x).ravel()
    return ClientUpdate(delta=delta, unclipped=bool(norm <= clip_norm), norm=norm)


def user_vectors(
    item_factors: np.ndarray, user_items: sp.csr_matrix, alpha0: float, reg: float
) -> np.ndarray:
    """Exact user vectors for a batch of histories (rows; columns = head positions)."""
    from privrec.models.dp_als import exact_user_solve

    y = _check_factors(item_factors)
    m = sp.csr_matrix(user_items)
    m.sort_indices()
    return exact_user_solve(m, y, alpha0, reg)


def client_updates(
    item_factors: np.ndarray,
    user_items: sp.csr_matrix,
    config: FederatedMFConfig,
    clip_norm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`client_update` for many simulated devices at once (same numbers, vectorised).

    Returns ``(deltas (n, n_head·k), unclipped (n,), norms (n,))``. Each row depends only on
    that device's own history and the shared item factors.
    """
    y = _check_factors(item_factors)
    m = sp.csr_matrix(user_items, dtype=np.float64)
    if m.shape[1] != y.shape[0]:
        raise DataError(
            "histories must have one column per head item",
            field="user_items",
            expected=str(y.shape[0]),
            found=m.shape[1],
        )
    m.data[:] = 1.0
    m.sum_duplicates()
    m.data[:] = 1.0
    x = user_vectors(y, m, config.alpha0, config.user_regularization)
    s = x @ y.T
    r = config.alpha0 * s
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    r[rows, m.indices] += s[rows, m.indices] - 1.0
    norms = 2.0 * np.linalg.norm(r, axis=1) * np.linalg.norm(x, axis=1)
    factor = np.where(norms > 0, np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300)), 1.0)
    deltas = ((-2.0 * factor)[:, None, None] * r[:, :, None] * x[:, None, :]).reshape(
        m.shape[0], -1
    )
    return deltas, norms <= clip_norm, norms


def client_count_vector(items: np.ndarray, n_items: int) -> np.ndarray:
    """A device's contribution to the private item counts (head selection): L2 norm ≤ 1.

    ``1/sqrt(|I|)`` on each of its (distinct) items, so adding or removing one user moves the
    count vector by at most 1 in L2 — sensitivity 1 whatever the history length.
    """
    idx = _check_items(items, n_items)
    out = np.zeros(n_items)
    if idx.size:
        out[idx] = 1.0 / math.sqrt(idx.size)
    return out


def head_count_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """Accounting event of the noisy head counts (sensitivity 1, everyone participates)."""
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(noise_multiplier)


def split_noise(noise_multiplier: float, clip_count_stddev: float) -> float:
    """Values' noise multiplier ``z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2)`` (Andrew et al. 2021).

    The round releases the clipped values (sensitivity ``C``) and the centred clip-bit count
    (sensitivity ½) with one noise budget ``z``: Gaussian mechanisms compose like one with
    ``z⁻² = z_Δ⁻² + (σ_b/½)⁻²``. Raises :class:`ConfigError` when ``2σ_b ≤ z`` (the bit count
    alone would already exceed the budget).
    """
    z, sb = float(noise_multiplier), float(clip_count_stddev)
    if z == 0:
        return 0.0
    if 2.0 * sb <= z:
        raise ConfigError(
            f"clip_count_stddev={sb:g} is too small for noise_multiplier={z:g}: "
            "need 2·σ_b > z (raise clip_count_stddev or disable adaptive clipping)"
        )
    return float((z**-2 - (2.0 * sb) ** -2) ** -0.5)


@dataclass(frozen=True)
class RoundSpec:
    """What a client needs, besides the item factors, to build its payload in one round.

    ``payload = [value_scale·Δ, bit_scale·(b − ½)]`` has L2 norm ≤ 1 (see the module
    docstring); with distributed DP it is then encoded with ``ddp`` (a
    :class:`~privrec.privacy.distributed.DistributedDPConfig`, public) and summed by SecAgg+.
    """

    round: int
    clip_norm: float
    value_scale: float
    bit_scale: float
    dim: int
    aggregation: Aggregation
    ddp: DistributedDPConfig | None


def pack_payload(update: ClientUpdate, spec: RoundSpec) -> np.ndarray:
    """The client's float payload ``[a·Δ, β·(b − ½)]`` (norm ≤ 1) for this round."""
    delta = np.asarray(update.delta, dtype=np.float64)
    n_values = spec.dim - 1
    if delta.shape != (n_values,):
        raise DataError(
            "update has the wrong length", field="delta", expected=str(n_values), found=delta.shape
        )
    out = np.empty(spec.dim)
    out[:n_values] = spec.value_scale * delta
    out[n_values] = spec.bit_scale * (float(update.unclipped) - 0.5)
    norm = float(np.linalg.norm(out))
    if norm > 1.0:  # only rounding can push it over; keep the sensitivity exact
        out /= norm
    return out


# ----------------------------------------------------------------------------------------------
# Accounting helpers
# ----------------------------------------------------------------------------------------------

#: PLD grid of the per-round and calibration accounting. Coarser than the library's 1e-4 (a
#: Poisson-subsampled Gaussian PLD on the 1e-4 grid takes seconds to build); dp-accounting rounds
#: pessimistically, so ε on this grid is an upper bound of ε on the finer one.
PLD_INTERVAL = 1e-3

#: Integer RDP orders of the distributed variant's accountant (a subset of dp-accounting's
#: defaults; ε at fewer orders is an upper bound of ε at more).
RDP_ACCOUNTING_ORDERS: tuple[float, ...] = (
    *(float(a) for a in range(2, 65)),
    *(72.0, 80.0, 96.0, 112.0, 128.0, 160.0, 192.0, 256.0),
)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's RDP code logs a warning per fractional order it skips; silence it."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def fast_epsilon(event: dp_accounting.DpEvent, delta: float, kind: AccountantKind) -> float:
    """ε of ``event`` at ``delta`` through dp-accounting (PLD on :data:`PLD_INTERVAL`, or RDP)."""
    simple = simplify(event)
    if kind is AccountantKind.PLD and isinstance(simple, dp_accounting.GaussianDpEvent):
        return float(dp_accounting.get_epsilon_gaussian(simple.noise_multiplier, delta))
    with _quiet_absl():
        if kind is AccountantKind.PLD:
            acc: dp_accounting.PrivacyAccountant = dp_accounting.pld.PLDAccountant(
                neighboring_relation=PrivacyUnit.USER.relation,
                value_discretization_interval=PLD_INTERVAL,
            )
        else:
            # Integer orders only: dp-accounting's series for fractional orders of a subsampled
            # Gaussian is slow, and its integer-order cost grows with the order.
            acc = dp_accounting.rdp.RdpAccountant(
                orders=list(RDP_ACCOUNTING_ORDERS),
                neighboring_relation=PrivacyUnit.USER.relation,
            )
        acc.compose(event)
        return float(acc.get_epsilon(delta))


def calibrate_multiplier(
    budget: Budget,
    factory: Callable[[float], dp_accounting.DpEvent],
    kind: AccountantKind,
    rel_tol: float = 1e-3,
) -> float:
    """Smallest multiplier ``z`` (within ``rel_tol``) with ``ε(factory(z)) ≤ budget.epsilon``.

    Bisection on ``log z`` with :func:`fast_epsilon`; the returned ``z`` is always on the
    feasible side, so the budget holds (and holds a fortiori on the finer PLD grid).
    """

    def ok(z: float) -> bool:
        return fast_epsilon(factory(z), budget.delta, kind) <= budget.epsilon

    hi = 1.0
    while not ok(hi):
        hi *= 2.0
        if hi > 1e5:
            raise ConfigError(
                f"no noise multiplier up to 1e5 reaches epsilon={budget.epsilon:g} "
                f"at delta={budget.delta:g}: fewer rounds or a smaller sampling rate"
            )
    lo = hi / 2.0
    while ok(lo):
        hi, lo = lo, lo / 2.0
        if lo < 1e-3:
            return hi
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------------------------
# Server
# ----------------------------------------------------------------------------------------------


def _same_event(a: dp_accounting.DpEvent, b: dp_accounting.DpEvent) -> bool:
    return bool(a == b)


class FederatedMFServer:
    """Server state of federated MF: item factors, optimiser, clip norm, round, accountant.

    Parameters
    ----------
    config
        Training configuration.
    n_items
        Catalogue size.
    population
        Number of users (devices) that may be sampled; fixes ``q`` with ``clients_per_round``.
    head_items
        Catalogue indices the model trains (``None``: the whole catalogue if
        ``config.head_items`` is ``None``, else chosen later by :meth:`select_head` from
        private counts). A given head must come from **public** data: it is not charged.
    rng
        Noise source for the central variant (default: seeded ChaCha20 if ``config.seed`` is set
        — with a warning — else the CSPRNG).
    """

    def __init__(
        self,
        config: FederatedMFConfig,
        n_items: int,
        population: int,
        head_items: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        *,
        _calibrate: bool = True,
    ) -> None:
        from privrec.privacy.randomness import resolve_generator

        if n_items < 1:
            raise ConfigError(f"n_items must be >= 1, found {n_items}")
        self.config = config
        self.n_items = int(n_items)
        self.population = int(population)
        self.q = config.sampling_probability(self.population)
        self.expected_clients = max(1.0, self.q * self.population)
        self.rng = resolve_generator(config.seed) if rng is None else rng
        self.round = 0
        self.clip_norm = float(config.clip_norm)
        self.spent: list[SpentEvent] = []
        self._runs: list[int] = []  # rounds summarised by each spent record
        self.history: list[dict[str, Any]] = []
        self.head_items: np.ndarray | None = None
        self.item_factors = np.zeros((0, config.factors))
        self.adam_m = np.zeros(0)
        self.adam_v = np.zeros(0)
        self.rotation_seed = int(self.rng.integers(0, 2**31 - 1))
        sb = config.clip_count_stddev
        self.clip_count_stddev = self.expected_clients / 20.0 if sb is None else float(sb)
        self.noise_multiplier = 0.0
        self.head_noise_multiplier = 0.0
        self.public_head = head_items is not None
        self._encoder: DistributedDPEncoder | None = None
        self._count_encoder: DistributedDPEncoder | None = None
        self._eps_cache: tuple[object, float] = (None, 0.0)
        if _calibrate:
            self._calibrate()
            if head_items is not None:
                self._set_head(np.asarray(head_items, dtype=np.int64))
            elif config.head_items is None or config.head_items >= self.n_items:
                self._set_head(np.arange(self.n_items, dtype=np.int64))

    # ------------------------------------------------------------------ noise & accounting
    @property
    def needs_head(self) -> bool:
        """Whether :meth:`select_head` must run (private head selection) before round 1."""
        return self.head_items is None

    def _round_event(self, z: float) -> dp_accounting.DpEvent:
        if z == 0:
            return dp_accounting.NonPrivateDpEvent()
        inner = dp_accounting.GaussianDpEvent(z)
        return inner if self.q >= 1.0 else dp_accounting.PoissonSampledDpEvent(self.q, inner)

    @property
    def q_head(self) -> float:
        """Poisson rate of the head-selection counting round."""
        r = self.config.head_sampling_rate
        return self.q if r is None else float(r)

    def _head_event(
        self, z: float, inner: dp_accounting.DpEvent | None = None
    ) -> dp_accounting.DpEvent:
        base = head_count_event(z) if inner is None else inner
        if z == 0 or self.q_head >= 1.0:
            return base
        return dp_accounting.PoissonSampledDpEvent(self.q_head, base)

    def _planned_event(self, z: float, z_head: float) -> dp_accounting.DpEvent:
        rounds = dp_accounting.SelfComposedDpEvent(self._round_event(z), self.config.rounds)
        if not self._charges_head:
            return rounds
        return dp_accounting.ComposedDpEvent([self._head_event(z_head), rounds])

    @property
    def _charges_head(self) -> bool:
        c = self.config
        return not self.public_head and c.head_items is not None and c.head_items < self.n_items

    def _calibrate(self) -> None:
        c = self.config
        if c.epsilon is None:
            assert c.noise_multiplier is not None
            self.noise_multiplier = float(c.noise_multiplier)
            self.head_noise_multiplier = float(c.noise_multiplier)
            if self.noise_multiplier == 0:
                warnings.warn(
                    "noise_multiplier=0: federated training without noise is NOT differentially "
                    "private (use only to test the protocol)",
                    PrivacyWarning,
                    stacklevel=3,
                )
        else:
            budget = Budget(c.epsilon, c.delta)
            budget.check_delta(self.population)
            kind = c.accountant
            z_head = 0.0
            if self._charges_head:
                head_budget = Budget(c.epsilon * c.head_epsilon_fraction, c.delta)
                z_head = calibrate_multiplier(head_budget, self._head_event, kind)
            self.head_noise_multiplier = z_head
            self.noise_multiplier = calibrate_multiplier(
                budget, lambda z: self._planned_event(z, z_head), kind
            )
        if c.adaptive_clipping and self.noise_multiplier > 0:
            split_noise(self.noise_multiplier, self.clip_count_stddev)  # validates 2σ_b > z
        self._encoder = None

    def _spend(self, label: str, event: dp_accounting.DpEvent) -> None:
        """Record a release; identical consecutive round events are kept as one run."""
        if (
            label.startswith("round")
            and self.spent
            and self.spent[-1].label.startswith("round")
            and isinstance(self.spent[-1].event, dp_accounting.SelfComposedDpEvent)
            and _same_event(self.spent[-1].event.event, event)
        ):
            n = self._runs[-1] + 1
            first = self.round - n + 1
            self.spent[-1] = SpentEvent(
                f"rounds {first}-{self.round}", dp_accounting.SelfComposedDpEvent(event, n)
            )
            self._runs[-1] = n
            return
        if label.startswith("round"):
            event = dp_accounting.SelfComposedDpEvent(event, 1)
        self.spent.append(SpentEvent(label, event))
        self._runs.append(1)

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far (at the config's δ), computed by dp-accounting from the records."""
        if not self.spent:
            return 0.0
        key = (len(self.spent), self._runs[-1], delta)
        if self._eps_cache[0] != key:
            d = self.config.delta if delta is None else delta
            self._eps_cache = (
                key,
                fast_epsilon(total_event(self.spent), d, self.config.accountant),
            )
        return self._eps_cache[1]

    def epsilon_against_server(self) -> float | None:
        """Distributed DP: ε against the aggregation server itself, which sees who took part.

        Amplification by sampling needs the sample to be secret; the SecAgg server knows which
        clients sent inputs, so against it each round is the unsampled event. ``None`` for the
        central variant (the trusted server sees the raw updates).
        """
        if self.config.aggregation != "distributed" or not self.spent:
            return None

        def strip(e: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
            if isinstance(e, dp_accounting.PoissonSampledDpEvent):
                return e.event
            if isinstance(e, dp_accounting.SelfComposedDpEvent):
                return dp_accounting.SelfComposedDpEvent(strip(e.event), e.count)
            if isinstance(e, dp_accounting.ComposedDpEvent):
                return dp_accounting.ComposedDpEvent([strip(x) for x in e.events])
            return e

        return fast_epsilon(strip(total_event(self.spent)), self.config.delta, AccountantKind.RDP)

    # ------------------------------------------------------------------ distributed encoding
    @property
    def min_survivors(self) -> int:
        return max(2, math.floor(self.config.min_survivor_fraction * self.expected_clients))

    @property
    def max_clients(self) -> int:
        """Overflow bound of the secure sum: expected cohort + 8 standard deviations."""
        e = self.expected_clients
        return max(self.min_survivors, math.ceil(e + 8.0 * math.sqrt(e) + 8))

    def ddp_config(self, dim: int) -> DistributedDPConfig:
        """Public distributed-DP settings for a payload of ``dim`` coordinates (norm ≤ 1).

        The per-client noise makes the sum over ``min_survivors`` clients carry noise of
        standard deviation ``z·Δ2`` on the grid (``Δ2`` the rounded sensitivity), i.e. a
        Gaussian multiplier ``z`` relative to the payload norm bound 1.
        """
        z = self.noise_multiplier if self.noise_multiplier > 0 else 1.0
        return DistributedDPConfig(
            clip=1.0,
            dim=dim,
            min_survivors=self.min_survivors,
            rotation_seed=self.rotation_seed,
            noise_multiplier=z,
            bits=self.config.secagg_bits,
            mechanism=self.config.ddp_mechanism,
            max_clients=self.max_clients,
        )

    def encoder(self) -> DistributedDPEncoder:
        """The (cached) distributed-DP encoder of the training payload."""
        if self._encoder is None:
            self._encoder = DistributedDPEncoder(self.ddp_config(self.payload_dim))
        return self._encoder

    @property
    def payload_dim(self) -> int:
        if self.head_items is None:
            raise ConfigError("the head items are not chosen yet: call select_head first")
        return len(self.head_items) * self.config.factors + 1

    def scales(self) -> tuple[float, float, float]:
        """``(value_scale a, bit_scale β, z_Δ)`` for the current clip norm (payload norm ≤ 1)."""
        z, c = self.noise_multiplier, self.clip_norm
        if not self.config.adaptive_clipping:
            return 1.0 / c, 0.0, z
        if z == 0:  # no noise: any split with a²C² + β²/4 ≤ 1
            return 1.0 / (math.sqrt(2.0) * c), 1.0 / math.sqrt(2.0), 0.0
        z_delta = split_noise(z, self.clip_count_stddev)
        return z / (z_delta * c), z / self.clip_count_stddev, z_delta

    def round_spec(self) -> RoundSpec:
        """Everything public a client needs this round (with the item factors)."""
        a, b, _ = self.scales()
        dim = self.payload_dim
        ddp = self.encoder().config if self.config.aggregation == "distributed" else None
        return RoundSpec(
            round=self.round + 1,
            clip_norm=self.clip_norm,
            value_scale=a,
            bit_scale=b,
            dim=dim,
            aggregation=self.config.aggregation,
            ddp=ddp,
        )

    def validate_payload(self, payload: np.ndarray) -> np.ndarray:
        """Central variant: check one device's payload before it enters the sum.

        Raises :class:`~privrec.errors.InvalidInputError` for a wrong length, non-finite values
        or a norm above 1 (which would break the sensitivity bound); the caller drops that
        device from the round.
        """
        v = np.asarray(payload, dtype=np.float64)
        if v.shape != (self.payload_dim,):
            raise InvalidInputError(f"payload has shape {v.shape}, expected ({self.payload_dim},)")
        if not np.all(np.isfinite(v)):
            raise InvalidInputError("payload contains NaN or infinite values")
        norm = float(np.linalg.norm(v))
        if norm > 1.0 + 1e-9:
            raise InvalidInputError(f"payload norm {norm:.6g} exceeds the bound 1")
        return v

    def central_noise(self, payload_sum: np.ndarray) -> np.ndarray:
        """Central variant: the trusted server adds ``N(0, z²)`` to each summed coordinate.

        Mechanism: Gaussian, L2 sensitivity 1 (payload norm bound), multiplier ``z``;
        event ``PoissonSampled(q, Gaussian(z))`` recorded by :meth:`apply`.
        """
        s = np.asarray(payload_sum, dtype=np.float64)
        if self.noise_multiplier == 0:
            return s.copy()
        return s + self.noise_multiplier * self.rng.standard_normal(s.shape)

    def unpack(self, noisy_payload_sum: np.ndarray, n_clients: float) -> tuple[np.ndarray, float]:
        """Noised payload sum → (noised sum of clipped updates, noised count of unclipped).

        ``n_clients`` is the denominator used for the mean (the expected cohort in
        simulation): the centred bits' sum plus ``n_clients/2``.
        """
        s = np.asarray(noisy_payload_sum, dtype=np.float64)
        if s.shape != (self.payload_dim,):
            raise DataError(
                "payload sum has the wrong length",
                field="payload_sum",
                expected=str(self.payload_dim),
                found=s.shape,
            )
        a, b, _ = self.scales()
        update_sum = s[:-1] / a
        unclipped = float(s[-1] / b + n_clients / 2.0) if b > 0 else float("nan")
        return update_sum, unclipped

    # ------------------------------------------------------------------ head selection
    def count_encoder(self) -> DistributedDPEncoder:
        """Distributed-DP encoder of the counting round (dimension = catalogue, norm ≤ 1)."""
        if self._count_encoder is None:
            z = self.head_noise_multiplier if self.head_noise_multiplier > 0 else 1.0
            e = max(1.0, self.q_head * self.population)
            m = max(2, math.floor(self.config.min_survivor_fraction * e))
            self._count_encoder = DistributedDPEncoder(
                DistributedDPConfig(
                    clip=1.0,
                    dim=self.n_items,
                    min_survivors=m,
                    rotation_seed=self.rotation_seed + 1,
                    noise_multiplier=z,
                    mechanism=self.config.ddp_mechanism,
                    max_clients=max(m, math.ceil(e + 8.0 * math.sqrt(e) + 8)),
                )
            )
        return self._count_encoder

    def select_head(self, noisy_counts: np.ndarray, *, survivors: int | None = None) -> np.ndarray:
        """Choose the ``head_items`` largest **noisy** counts (post-processing), sorted by id.

        ``noisy_counts`` is the noised sum of :func:`client_count_vector` over the clients of
        the counting round (Poisson rate :attr:`q_head`); with distributed DP, ``survivors`` is
        how many clients' noise is in it (the round is charged for that count).
        """
        c = np.asarray(noisy_counts, dtype=np.float64)
        if c.shape != (self.n_items,):
            raise DataError(
                "noisy counts have the wrong length",
                field="noisy_counts",
                expected=str(self.n_items),
                found=c.shape,
            )
        n_head = self.n_items if self.config.head_items is None else self.config.head_items
        head = np.sort(np.argsort(-c, kind="stable")[: min(n_head, self.n_items)])
        z = self.head_noise_multiplier
        if self.config.aggregation == "distributed" and z > 0:
            if survivors is None or survivors < 1:
                raise DataError(
                    "distributed counting round needs its survivor count", field="survivors"
                )
            event = self._head_event(z, self.count_encoder().plan.dp_event(int(survivors)))
        else:
            event = self._head_event(z)
        self._spend("private head selection (noisy item counts)", event)
        self.noisy_counts = c
        self._set_head(head)
        return head

    def count_noise(self, count_sum: np.ndarray) -> np.ndarray:
        """Central variant of the count release: ``N(0, z_h²)`` per item (sensitivity 1)."""
        s = np.asarray(count_sum, dtype=np.float64)
        if self.head_noise_multiplier == 0:
            return s.copy()
        return s + self.head_noise_multiplier * self.rng.standard_normal(s.shape)

    def _set_head(self, head: np.ndarray) -> None:
        if head.ndim != 1 or head.size == 0 or head.min() < 0 or head.max() >= self.n_items:
            raise DataError("invalid head items", field="head_items", found=head)
        if np.unique(head).size != head.size:
            raise DataError("head items must be distinct", field="head_items")
        self.head_items = np.sort(head.astype(np.int64))
        k = self.config.factors
        init = np.random.default_rng(None if self.config.seed is None else self.config.seed + 1)
        self.item_factors = init.standard_normal((head.size, k)) * (
            self.config.init_scale / math.sqrt(k)
        )
        self.adam_m = np.zeros(self.item_factors.size)
        self.adam_v = np.zeros(self.item_factors.size)
        self._encoder = None

    def to_head(self, items: np.ndarray) -> np.ndarray:
        """Catalogue item indices → positions in the head (items outside it are dropped)."""
        assert self.head_items is not None
        items = np.asarray(items, dtype=np.int64)
        pos = np.searchsorted(self.head_items, items)
        pos = np.minimum(pos, self.head_items.size - 1)
        out: np.ndarray = pos[self.head_items[pos] == items]
        return out

    # ------------------------------------------------------------------ one round
    def apply(
        self,
        update_sum: np.ndarray,
        n_clients: float,
        unclipped_sum: float,
        *,
        survivors: int | None = None,
    ) -> None:
        """Apply the decoded, already-noised sum of clipped updates as a mean step.

        Parameters
        ----------
        update_sum
            Noised sum of the clipped updates (length ``n_head·k``).
        n_clients
            Denominator of the mean: the expected cohort ``q·N`` (public; dividing by the
            actual count would leak it) — or the fixed cohort size.
        unclipped_sum
            Noised count of the clients whose update was within the clip norm.
        survivors
            Clients whose inputs (and, with distributed DP, noise) are in the sum; the round is
            charged for this count (distributed DP). Default: ``round(n_clients)``.

        The clip norm moves geometrically, ``C ← C·exp(−η(b̄ − γ))`` with
        ``b̄ = unclipped_sum / n_clients`` clamped to [0, 1]: too many unclipped updates
        (``b̄ > γ``) shrink ``C``, too few grow it. Validation happens before any state changes.
        """
        if self.head_items is None:
            raise ConfigError("the head items are not chosen yet: call select_head first")
        g = np.asarray(update_sum, dtype=np.float64)
        if g.shape != (self.item_factors.size,):
            raise DataError(
                "update sum has the wrong length",
                field="update_sum",
                expected=str(self.item_factors.size),
                found=g.shape,
            )
        if not np.all(np.isfinite(g)):
            raise DataError("update sum contains NaN or infinite values", field="update_sum")
        if not (n_clients > 0 and math.isfinite(n_clients)):
            raise DataError("n_clients must be > 0", field="n_clients", found=n_clients)
        n_surv = round(n_clients) if survivors is None else int(survivors)
        if n_surv < 1:
            raise DataError("survivors must be >= 1", field="survivors", found=survivors)
        event = self._charge(n_surv)

        c = self.config
        mean_update = g / n_clients  # descent direction
        grad = -mean_update + 2.0 * c.item_regularization * self.item_factors.ravel()
        if c.server_optimizer == "sgd":
            step = c.server_lr * grad
        else:
            t = self.round + 1
            self.adam_m = c.adam_beta1 * self.adam_m + (1 - c.adam_beta1) * grad
            self.adam_v = c.adam_beta2 * self.adam_v + (1 - c.adam_beta2) * grad * grad
            m_hat = self.adam_m / (1 - c.adam_beta1**t)
            v_hat = self.adam_v / (1 - c.adam_beta2**t)
            step = c.server_lr * m_hat / (np.sqrt(v_hat) + c.adam_eps)
        self.item_factors = self.item_factors - step.reshape(self.item_factors.shape)
        old_clip = self.clip_norm
        b_bar = float("nan")
        if c.adaptive_clipping and math.isfinite(unclipped_sum):
            b_bar = min(1.0, max(0.0, unclipped_sum / n_clients))
            self.clip_norm = old_clip * math.exp(-c.clip_lr * (b_bar - c.target_quantile))
        self.round += 1
        self._spend(f"round {self.round}", event)
        self.history.append(
            {
                "round": self.round,
                "clip_norm": old_clip,
                "unclipped_fraction": b_bar,
                "survivors": n_surv,
            }
        )

    def _charge(self, survivors: int) -> dp_accounting.DpEvent:
        z = self.noise_multiplier
        if z == 0:
            return dp_accounting.NonPrivateDpEvent()
        if self.config.aggregation == "central":
            return self._round_event(z)
        plan = self.encoder().plan
        inner = plan.dp_event(survivors)
        return inner if self.q >= 1.0 else dp_accounting.PoissonSampledDpEvent(self.q, inner)

    def record_abort(self, phase: str, reason: str) -> None:
        """A round that aborted released nothing about the data: logged, no privacy spend."""
        self.history.append(
            {"round": self.round + 1, "aborted": True, "phase": phase, "reason": reason}
        )

    # ------------------------------------------------------------------ guarantee
    def guarantee(self) -> PrivacyGuarantee:
        """The (ε, δ) guarantee of what has been released so far, with its threat model."""
        c = self.config
        if c.aggregation == "distributed":
            eps_server = self.epsilon_against_server()
            threat = (
                "distributed DP with secure aggregation (SecAgg+): each sampled device clips its "
                "update and adds its share of discrete Gaussian noise before masking; the server "
                "learns only the noised sum modulo 2^b of the surviving devices. Assumes an "
                "honest-but-curious server and at most a "
                f"{c.corrupt_fraction:g} fraction of corrupt devices colluding with it; the noise "
                f"is sized for at least {self.min_survivors} honest survivors per round "
                f"({c.min_survivor_fraction:g} of the expected {self.expected_clients:.0f}), and "
                "each round is charged for its actual survivor count. The stated ε uses "
                "amplification by Poisson sampling, which holds for everyone who sees only the "
                "released item factors; the aggregation server knows which devices took part, "
                f"and against it the guarantee is ε = {eps_server:.4g} (no amplification)."
                if eps_server is not None
                else "distributed DP with secure aggregation (nothing released yet)"
            )
        else:
            threat = (
                "central DP: a TRUSTED server receives the clipped updates in the clear and adds "
                "Gaussian noise to their sum; the released item factors are DP with respect to any "
                "one user (with amplification by Poisson sampling, the sample being kept secret). "
                "Nothing protects a user against the server itself."
            )
        threat += (
            " User vectors and recommendations are computed on the device from the released "
            "item factors (joint DP / billboard model)."
        )
        released = [
            "item factors of the head items after every round",
            "the head item set (from noisy counts unless public)",
            "the clip norm of every round (from noised clip-bit counts)",
        ]
        not_released = [
            "user vectors (solved and kept on each device)",
            "each user's recommendations (computed on the device)",
        ]
        mechanism = f"FederatedMF ({c.aggregation} DP)"
        if c.accountant is AccountantKind.PLD:
            return PrivacyGuarantee.from_events(
                self.spent,
                delta=c.delta,
                unit=PrivacyUnit.USER,
                accountant=c.accountant,
                mechanism=mechanism,
                released=released,
                not_released=not_released,
                threat_model=threat,
                seeded_noise=c.seed is not None,
            )
        # RDP: ε at the integer orders of RDP_ACCOUNTING_ORDERS, an upper bound of what
        # recompute_epsilon() finds at dp-accounting's default (denser) orders.
        return PrivacyGuarantee(
            epsilon=self.epsilon(),
            delta=c.delta,
            unit=PrivacyUnit.USER,
            accountant=c.accountant,
            mechanism=mechanism,
            events=tuple(e.to_dict() for e in self.spent),
            released=tuple(released),
            not_released=tuple(not_released),
            threat_model=threat,
            seeded_noise=c.seed is not None,
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: numpy arrays and JSON-able metadata (no pickle anywhere)."""
        arrays = {
            "item_factors": self.item_factors,
            "adam_m": self.adam_m,
            "adam_v": self.adam_v,
            "head_items": np.zeros(0, np.int64) if self.head_items is None else self.head_items,
        }
        meta = {
            "config": self.config.model_dump(mode="json"),
            "n_items": self.n_items,
            "population": self.population,
            "round": self.round,
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "head_noise_multiplier": self.head_noise_multiplier,
            "clip_count_stddev": self.clip_count_stddev,
            "rotation_seed": self.rotation_seed,
            "public_head": self.public_head,
            "has_head": self.head_items is not None,
            "spent": [s.to_dict() for s in self.spent],
            "runs": self._runs,
            "history": self.history,
        }
        return arrays, meta

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        rng: np.random.Generator | None = None,
    ) -> FederatedMFServer:
        """Rebuild a server from :meth:`state_dict` output (no re-calibration)."""
        config = FederatedMFConfig.model_validate(meta["config"])
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", PrivacyWarning
            )  # seeded rng re-created: warned at start
            srv = cls(
                config, int(meta["n_items"]), int(meta["population"]), rng=rng, _calibrate=False
            )
        srv.round = int(meta["round"])
        srv.clip_norm = float(meta["clip_norm"])
        srv.noise_multiplier = float(meta["noise_multiplier"])
        srv.head_noise_multiplier = float(meta["head_noise_multiplier"])
        srv.clip_count_stddev = float(meta["clip_count_stddev"])
        srv.rotation_seed = int(meta["rotation_seed"])
        srv.public_head = bool(meta["public_head"])
        srv.spent = [SpentEvent.from_dict(d) for d in meta["spent"]]
        srv._runs = [int(r) for r in meta["runs"]]
        srv.history = list(meta["history"])
        srv._encoder = None
        if meta["has_head"]:
            srv.head_items = np.asarray(arrays["head_items"], dtype=np.int64)
            srv.item_factors = np.asarray(arrays["item_factors"], dtype=np.float64)
            srv.adam_m = np.asarray(arrays["adam_m"], dtype=np.float64)
            srv.adam_v = np.asarray(arrays["adam_v"], dtype=np.float64)
        return srv

    def save(self, path: str | Path) -> Path:
        """Checkpoint to ``path`` (``.npz`` with the metadata as a JSON byte array)."""
        arrays, meta = self.state_dict()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                **arrays,  # type: ignore[arg-type]
            )
        tmp.replace(path)  # atomic: a crash mid-write never leaves a half checkpoint
        return path

    @classmethod
    def load(cls, path: str | Path, rng: np.random.Generator | None = None) -> FederatedMFServer:
        """Read a checkpoint written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise DataError("not a FederatedMF checkpoint", file=path, found=str(exc)) from None
        if "__meta__" not in arrays:
            raise DataError("not a FederatedMF checkpoint (no metadata)", file=path)
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        return cls.from_state(arrays, meta, rng)
