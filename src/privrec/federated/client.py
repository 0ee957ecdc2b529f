"""The device's side of FederatedMF: exact user solve, clipped dense update, payload.

Pure numpy; runs on the device (and, vectorised, in the simulator). See
:mod:`privrec.federated.mf` for the mechanism and its privacy argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError, DataError
from privrec.federated.config import Aggregation, CountWeighting, FederatedMFConfig
from privrec.privacy.bounds import LENGTH_EDGES, length_histogram
from privrec.privacy.distributed import DistributedDPConfig

__all__ = [
    "ClientUpdate",
    "RoundSpec",
    "check_round_model",
    "client_count_vector",
    "client_count_vectors",
    "client_update",
    "client_updates",
    "count_dim",
    "count_item_weights",
    "pack_payload",
    "split_noise",
    "user_vectors",
]


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution: its clipped dense update and clip bit.

    Attributes
    ----------
    delta
        Clipped update (descent direction = minus the gradient of the client's own loss with
        respect to every learnable head item factor), flattened row-major, length ``n_head·k``
        (``n_head`` the learnable head the server sent).
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

    ``item_factors`` is the learnable head only: under distributed DP with the learnable-head
    rule the payload still has the planned head's rows, and :func:`pack_payload` sends zeros
    for the rows past the learnable head. Those rows enter neither the user vector, nor ``r``,
    nor the norm, so the clipped update is not diluted by factors nobody trains; the masked
    update is still clipped to the same ``clip_norm`` (its zero rows add nothing to the
    norm), so the payload's norm bound — and the round's sensitivity — are unchanged.

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


def count_dim(n_items: int) -> int:
    """Length of a count vector: the catalogue plus the history-length bins up to ``n_items``."""
    return int(n_items) + len(length_histogram(np.ones(1, np.int64), max_length=int(n_items)))


def count_item_weights(
    lengths: np.ndarray, bound: int, weighting: CountWeighting = "length"
) -> np.ndarray:
    """Weight of each counted item in a counting-round vector, per user (by history length).

    A user's vector holds ``m = min(n_u, B)`` item indicators of weight ``w`` and a length-bin
    one-hot of weight ``1/√(B + 1)``. ``"uniform"``: ``w = 1/√(B + 1)`` for everyone (norm
    ``√(m + 1)/√(B + 1) ≤ 1``). ``"length"`` (default): ``w = √(B / ((B + 1)·m))``, so that
    ``m·w² + 1/(B + 1) = 1`` — every user, not only those with at least B items, sends a vector
    of norm exactly 1; users with ``n_u ≥ B`` get the same weight as under ``"uniform"``. Why:
    with one weight sized for B items, a user with three items used only √(4/11) of the norm
    they may contribute; here the noise (sized for norm 1) is the same, and a short history is
    counted with √(B/m) times the signal — on short-history data, most users' items. Users
    with no items get 0. Public: a function of B and the device's own length only.
    """
    if bound < 1:
        raise ConfigError(f"count bound must be >= 1, found {bound}")
    n = np.minimum(np.asarray(lengths, dtype=np.float64), float(bound))
    if weighting == "uniform":
        return np.where(n > 0, 1.0 / math.sqrt(bound + 1.0), 0.0)
    if weighting != "length":
        raise ConfigError(f"count weighting must be 'length' or 'uniform', found {weighting!r}")
    out: np.ndarray = np.sqrt(bound / ((bound + 1.0) * np.maximum(n, 1.0)))
    # n ≥ B: exactly the uniform weight (bit for bit, so long histories are counted as before)
    return np.where(n >= bound, 1.0 / math.sqrt(bound + 1.0), np.where(n > 0, out, 0.0))


def client_count_vector(
    items: np.ndarray,
    n_items: int,
    bound: int,
    rng: np.random.Generator | None = None,
    weighting: CountWeighting = "length",
) -> np.ndarray:
    """A device's contribution to the counting round: ``[w · indicators, length bin / √(B + 1)]``.

    Mechanism input (unit: one user; neighbouring relation: add/remove one user's history).
    The first ``n_items`` entries are indicators of at most ``bound`` = B of the user's
    distinct items (a uniform sample drawn on the device with ``rng`` — default the CSPRNG —
    when the history is longer) of weight ``w`` (:func:`count_item_weights`), the rest a one-hot
    of the history's length bin (:data:`~privrec.privacy.bounds.LENGTH_EDGES`) of weight
    ``1/√(B + 1)``. The vector's L2 norm is at most 1 (exactly 1 under the default weighting),
    so adding or removing one user moves the sum by at most 1, like every other FederatedMF
    payload. The server multiplies the noised sum by √(B + 1): the histogram counts users, and
    a counted item weighs ``√(B + 1)·w`` — 1 for a user with at least B items, ``√(B/m)`` for a
    user with ``m < B`` under ``"length"``, 1 for everyone under ``"uniform"``.
    """
    from privrec.privacy.randomness import secure_generator

    idx = _check_items(items, n_items)
    w = float(count_item_weights(np.asarray([idx.size]), bound, weighting)[0])
    out = np.zeros(count_dim(n_items))
    if idx.size:
        out[n_items:] = length_histogram(np.asarray([idx.size]), max_length=int(n_items))
        out[n_items:] /= math.sqrt(bound + 1.0)
        if idx.size > bound:
            gen = secure_generator() if rng is None else rng
            idx = gen.choice(idx, size=bound, replace=False)
        out[idx] = w
    return out


def client_count_vectors(
    rows: sp.csr_matrix,
    bound: int,
    rng: np.random.Generator | None,
    weighting: CountWeighting = "length",
) -> sp.csr_matrix:
    """:func:`client_count_vector` of many devices at once (the simulator), as CSR rows.

    The B-item samples are drawn by :func:`~privrec.privacy.contribution.sample_per_user`
    (uniform, keyed with a secret salt from ``rng``), independently per device.
    """
    from privrec.privacy.contribution import sample_per_user

    m = sp.csr_matrix(rows, dtype=np.float64)
    m.sum_duplicates()
    n_items = m.shape[1]
    lengths = np.diff(m.indptr)
    w = count_item_weights(lengths, bound, weighting)
    kept = sp.csr_matrix(sample_per_user(m, bound, rng), dtype=np.float64) if m.nnz else m
    bins = np.minimum(
        np.searchsorted(LENGTH_EDGES, np.maximum(lengths, 1), side="right") - 1,
        count_dim(n_items) - n_items - 1,
    )
    present = np.flatnonzero(lengths > 0)
    hist = sp.csr_matrix(
        (np.full(present.size, 1.0 / math.sqrt(bound + 1.0)), (present, bins[present])),
        shape=(m.shape[0], count_dim(n_items) - n_items),
    )
    return sp.csr_matrix(sp.hstack([sp.diags(w) @ kept, hist], format="csr"))


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
    """The client's float payload ``[a·Δ, 0…0, β·(b − ½)]`` (norm ≤ 1) for this round.

    ``Δ`` covers the learnable head; the zeros pad it to the payload's planned rows
    (``spec.dim − 1`` values; none unless distributed DP's learnable head is smaller than the
    planned one). Zeros leave the norm — and so the sensitivity — as they are.
    """
    delta = np.asarray(update.delta, dtype=np.float64)
    n_values = spec.dim - 1
    if delta.ndim != 1 or delta.size > n_values:
        raise DataError(
            "update has the wrong length",
            field="delta",
            expected=f"at most {n_values}",
            found=delta.shape,
        )
    out = np.zeros(spec.dim)
    out[: delta.size] = spec.value_scale * delta
    out[n_values] = spec.bit_scale * (float(update.unclipped) - 0.5)
    norm = float(np.linalg.norm(out))
    if norm > 1.0:  # only rounding can push it over; keep the sensitivity exact
        out /= norm
    return out


def check_round_model(
    item_factors: np.ndarray, head_items: np.ndarray, dim: int, factors: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """A device's check of what the server sent for a training round, before any use.

    ``head_items`` (the learnable head: catalogue ids, strictly increasing, in
    ``[0, n_items)``), ``item_factors`` (one finite row of ``factors`` per head item) and the
    payload length ``dim`` (``rows·factors + 1`` with ``len(head_items) ≤ rows ≤ n_items``: the
    planned head's rows, zeros past the learnable ones) must agree. Whatever they say, the
    device's update is clipped to the round's clip norm, so a hostile head or length cannot
    raise the sensitivity; this turns an inconsistent one into a :class:`DataError` instead of
    a wrong mapping of the device's items or an oversized allocation. Returns
    ``(item_factors, head_items)`` as float64 / int64 arrays.
    """
    head = np.asarray(head_items)
    if head.ndim != 1 or head.size < 1 or not np.issubdtype(head.dtype, np.integer):
        raise DataError(
            "head items must be a non-empty 1-D array of integer item ids",
            field="head_items",
            found=f"shape {head.shape}, dtype {head.dtype}",
        )
    head = head.astype(np.int64)
    if head[0] < 0 or head[-1] >= n_items or np.any(np.diff(head) <= 0):
        raise DataError(
            "head items must be distinct catalogue ids in increasing order",
            field="head_items",
            expected=f"0 <= i < {n_items}, strictly increasing",
        )
    y = _check_factors(item_factors)
    if y.shape != (head.size, factors):
        raise DataError(
            "item factors do not match the head",
            field="item_factors",
            expected=f"({head.size}, {factors})",
            found=y.shape,
        )
    values = int(dim) - 1
    if values < head.size * factors or values % factors or values // factors > n_items:
        raise DataError(
            "payload length does not fit the head",
            field="payload-dim",
            expected=f"rows·{factors} + 1 with {head.size} <= rows <= {n_items}",
            found=dim,
        )
    return y, head
