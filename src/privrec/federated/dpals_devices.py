"""What a federated DPALS device computes, and where the rounds' secure sums run.

:func:`device_vectors` is the code that runs on a device (simulated here, on a Flower SuperNode
in deployment: :mod:`privrec.federated.flower.dpals`): from the round's public
:class:`DeviceTask` and the device's own history it builds the one vector the device encodes —
a one-hot of its history-length bin, its count sample, or its step vector (exact user solve,
clip to Γ, weights, :func:`round_vectors`). Row ``u`` depends on user ``u``'s data, the public
task and the device's secret salt only. :class:`Devices` is the server's view of a round
(encode everywhere, return the decoded sum); :class:`SimulatedDevices` runs it in one process.
The privacy argument — each vector's norm bound, the noise, the events — is
:mod:`privrec.federated.dpals`'s; the distributed-DP encoder clips every vector to the round's
bound again, whatever the task says.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import scipy.sparse as sp

from privrec.errors import ProtocolAbort
from privrec.federated.secure_round import secure_sum
from privrec.models.dp_als import exact_user_solve, user_weights
from privrec.privacy.bounds import LENGTH_EDGES, length_histogram
from privrec.privacy.contribution import clip_rows, sample_per_user
from privrec.privacy.distributed import DistributedDPEncoder
from privrec.privacy.distributed.encoder import padding_generator

if TYPE_CHECKING:
    from privrec.federated.dpals import FederatedDPALSConfig

__all__ = [
    "ARRAY_FIELDS",
    "DeviceTask",
    "Devices",
    "SimulatedDevices",
    "SumResult",
    "device_rng",
    "device_salts",
    "device_vectors",
    "round_vectors",
]


#: the array fields of a :class:`DeviceTask` (sent as arrays, not in its JSON settings)
ARRAY_FIELDS = ("head", "head_counts", "item_factors")


@dataclass(frozen=True)
class DeviceTask:
    """What every device needs for one round: public settings and released state only.

    ``kind`` is ``"lengths"``, ``"counts"`` or ``"step"``; ``label`` names the round
    (``"step 2"``). Steps carry the head items, their noisy counts (for the weights), the
    current item factors and the part scales.
    """

    kind: Literal["lengths", "counts", "step"]
    label: str
    n_items: int
    count_sample: int = 0
    head: np.ndarray | None = None
    head_counts: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    method: str = "adaptive"
    bound: int = 1
    adaptive_exponent: float = 0.5
    alpha0: float = 1.0
    user_regularization: float = 0.1
    clip_norm: float = 1.0
    lhs: str = "none"

    def dim(self, k: int) -> int:
        """Length of one device's vector (``k``: the factors, for step rounds)."""
        if self.kind == "lengths":
            return len(length_histogram(np.zeros(0), self.n_items))
        if self.kind == "counts":
            return self.n_items
        assert self.head is not None
        parts = 2 if self.lhs == "diagonal" else 1
        return k * (k + 1) // 2 + parts * len(self.head) * k

    def settings(self) -> dict[str, Any]:
        """The scalar fields (JSON-able), for the wire."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in ARRAY_FIELDS}


def device_salts(base: int) -> tuple[int, int]:
    """The keys of a device's count sample and of its step weights (uniform/tail), from ``base``.

    ``base`` is the device's secret (drawn from the CSPRNG) — or, in seeded test runs, the
    seed, so that the simulation and a Flower run sample the same items.
    """
    out = []
    for what in ("counts", "weights"):
        digest = hashlib.sha256(f"privrec-dpals-salt/{base}/{what}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "little") >> 1)
    return out[0], out[1]


def device_rng(seed: int, label: str, attempt: int, user: int) -> np.random.Generator:
    """Seeded (test-only) rounding and noise of one device's encoding in one round."""
    from privrec.privacy.randomness import seeded_generator

    digest = hashlib.sha256(f"privrec-dpals/{seed}/{label}/{attempt}/{user}".encode()).digest()
    return seeded_generator(int.from_bytes(digest[:8], "little"), warn=False)


def device_vectors(
    task: DeviceTask, x: sp.csr_matrix, row_keys: np.ndarray, salt: int
) -> sp.csr_matrix:
    """Each device's contribution to one round, one row per device (what runs on the device).

    ``x`` holds the devices' binary histories over the whole catalogue, ``row_keys`` their
    global user ids (the keyed samples do not depend on which rows a caller holds) and
    ``salt`` the devices' secret (:func:`device_salts`). Row ``u`` depends on user ``u``'s data,
    the public task and the secret only. Shared by the simulation and the Flower nodes.
    """
    keys = np.asarray(row_keys, dtype=np.uint64)
    count_salt, weight_salt = device_salts(salt)
    if task.kind == "lengths":
        return _onehot_lengths(np.diff(x.indptr), task.n_items)
    if task.kind == "counts":
        return sample_per_user(x, task.count_sample, None, salt=count_salt, row_keys=keys)
    assert task.head is not None and task.head_counts is not None
    assert task.item_factors is not None
    xh = sp.csr_matrix(x[:, task.head])
    xh.sort_indices()
    if task.method == "adaptive":
        weights = user_weights(
            xh,
            task.head_counts,
            "adaptive",
            task.bound,
            task.adaptive_exponent,
            None,  # type: ignore[arg-type]
        )
    else:  # central DPALS's uniform / tail samples, keyed per device
        strategy: Literal["uniform", "least_popular"] = (
            "uniform" if task.method == "uniform" else "least_popular"
        )
        weights = sample_per_user(
            xh, task.bound, None, strategy, task.head_counts, salt=weight_salt, row_keys=keys
        )
    u = exact_user_solve(xh, task.item_factors, task.alpha0, task.user_regularization)
    return round_vectors(clip_rows(u, task.clip_norm), weights, task.scales, task.lhs)


@dataclass(frozen=True)
class SumResult:
    """A decoded secure sum and what the round's report records about it."""

    decoded: np.ndarray
    survivors: int
    device_seconds: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


class Devices(Protocol):
    """Where the rounds' secure sums run: simulated here, Flower SuperNodes in deployment."""

    description: str

    def secure_sum(self, task: DeviceTask, enc: DistributedDPEncoder, n_min: int) -> SumResult:
        """Every device computes :func:`device_vectors` for ``task``, encodes it with ``enc``;
        the decoded sum of the survivors (:class:`~privrec.errors.ProtocolAbort` below
        ``n_min``)."""
        ...


class SimulatedDevices:
    """All devices in one process (:class:`FederatedDPALS`'s ``secure`` modes)."""

    def __init__(
        self,
        x: sp.csr_matrix,
        c: FederatedDPALSConfig,
        rng: np.random.Generator,
        fault_rng: np.random.Generator,
        salt: int,
    ) -> None:
        self.x, self.secure, self.dropout, self.corrupt = x, c.secure, c.dropout, c.corrupt_fraction
        self.threat_model = c.threat_model
        self.rng, self.fault_rng, self.salt, self.seed = rng, fault_rng, salt, c.seed
        self.keys = np.arange(x.shape[0], dtype=np.uint64)
        self.description = "Simulated rounds" + (
            " ('aggregate' mode: the noise of the decoded sums is drawn centrally)."
            if c.secure == "aggregate"
            else f" ('{c.secure}' SecAgg+ path)."
        )

    def secure_sum(self, task: DeviceTask, enc: DistributedDPEncoder, n_min: int) -> SumResult:
        vectors = device_vectors(task, self.x, self.keys, self.salt)
        n = vectors.shape[0]
        alive = self.fault_rng.random(n) >= self.dropout
        survivors = int(alive.sum())
        if survivors < n_min:
            raise ProtocolAbort(
                "masked_input", f"{task.label}: {survivors} survivors, {n_min} planned for"
            )
        if self.secure == "aggregate":
            total = np.asarray(vectors[alive].sum(axis=0), dtype=np.float64).ravel()
            plan = enc.plan
            # max_clients noise shares after the server's padding, the survivors' rounding
            std = plan.gamma * math.sqrt(plan.max_clients * plan.local_variance + survivors / 4)
            return SumResult(total + self.rng.standard_normal(total.shape) * std, survivors)
        dense = vectors.toarray()
        ids = np.flatnonzero(alive)
        d0 = time.perf_counter()
        if self.seed is None:
            encoded = enc.encode(dense[ids], self.rng)
        else:  # seeded tests: each device's own stream, as a Flower node in test mode draws it
            encoded = (
                np.stack(
                    [
                        enc.encode(dense[i], device_rng(self.seed, task.label, 0, int(i)))
                        for i in ids
                    ]
                )
                if len(ids)
                else np.zeros((0, enc.encoded_dim), dtype=np.uint64)
            )
        device_s = (time.perf_counter() - d0) / max(len(ids), 1)
        crash = {int(i): "masked_input" for i in np.flatnonzero(~alive)}
        full = np.zeros((n, enc.encoded_dim), dtype=np.uint64)
        full[ids] = encoded
        res = secure_sum(
            n, enc.encoded_dim, enc.bits, lambda i: full[i], crash=crash, mode=self.secure,
            min_survivors=n_min, corrupt_fraction=self.corrupt, threat_model=self.threat_model,
            dropout_rate=max(self.dropout, 0.05),  # the graph for the colluders the noise assumes
        )  # fmt: skip
        pad_rng = padding_generator(self.seed, "dpals", task.label, 0)
        decoded = enc.decode(res.sum, len(res.survivors), rng=pad_rng)
        return SumResult(decoded, len(res.survivors), device_s)


def round_vectors(
    u: np.ndarray, weights: sp.csr_matrix, scales: tuple[float, float, float], lhs: str
) -> sp.csr_matrix:
    """Every device's scaled step vector, one row each (sparse: a device touches its items only).

    Layout: the upper triangle of ``x xᵀ`` (row-major), then ``c_uj x`` for every head item j
    (k numbers each), then, with ``lhs="diagonal"``, ``c_uj x∘x``. Row u depends on user u's
    data only (their factors, their items and the public weights' rule).
    """
    n, k = u.shape
    n_head = weights.shape[1]
    iu = np.triu_indices(k)
    tri = (u[:, iu[0]] * u[:, iu[1]]) / scales[0]
    rows = np.repeat(np.arange(n), np.diff(weights.indptr))
    cols = weights.indices
    c = weights.data
    parts_data = [tri.ravel()]
    parts_rows = [np.repeat(np.arange(n), tri.shape[1])]
    parts_cols = [np.tile(np.arange(tri.shape[1]), n)]
    offset = tri.shape[1]
    blocks = [(u, scales[1])] + ([(u * u, scales[2])] if lhs == "diagonal" else [])
    for base, scale in blocks:
        vals = (c[:, None] * base[rows]) / scale
        parts_data.append(vals.ravel())
        parts_rows.append(np.repeat(rows, k))
        parts_cols.append((offset + cols[:, None] * k + np.arange(k)).ravel())
        offset += n_head * k
    return sp.csr_matrix(
        (np.concatenate(parts_data), (np.concatenate(parts_rows), np.concatenate(parts_cols))),
        shape=(n, offset),
    )


def _onehot_lengths(lengths: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Each device's histogram contribution: a one-hot of its length bin (empty when no items)."""
    n = len(lengths)
    n_bins = len(length_histogram(np.zeros(0), n_items))
    present = lengths > 0
    bins = np.minimum(np.searchsorted(LENGTH_EDGES, lengths, side="right") - 1, n_bins - 1)
    return sp.csr_matrix(
        (np.ones(int(present.sum())), (np.flatnonzero(present), bins[present])), shape=(n, n_bins)
    )
