"""The counting round of a FederatedMF server: its encoder and its release.

Split from :mod:`privrec.federated.server`
(:meth:`~privrec.federated.server.FederatedMFServer.select_head` calls :func:`release_counts`).
The counting round releases, once, the noised sum of every participating device's scaled
count vector (:func:`~privrec.federated.client.client_count_vector`: the device's items and
the bin of its history length, L2 norm ≤ 1). Sensitivity 1 in that vector's units under
add/remove-one-user; the event is the server's ``_charged_head_event`` (central: the
Gaussian of multiplier ``z_h``; distributed: the worst case over the round's fewest honest
noise shares), recorded before any state changes. Everything after the noise — the
rescaling to counts, the head as the largest noisy counts — is post-processing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from privrec.errors import DataError
from privrec.federated.client import count_item_weights
from privrec.federated.config import HEAD_MINIMUM
from privrec.models.dp_rules import federated_head_size, federated_head_threshold
from privrec.privacy.bounds import LENGTH_EDGES
from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder

if TYPE_CHECKING:
    from privrec.federated.server import FederatedMFServer

__all__ = [
    "HEAD_LABEL",
    "count_encoder",
    "holder_weight",
    "learnable_head_size",
    "release_counts",
    "ruled_head",
]

#: Label of the counting round's event (noisy item counts and history lengths; the head).
HEAD_LABEL = "counting round (noisy item counts and history lengths)"


def count_encoder(self: FederatedMFServer, z: float) -> DistributedDPEncoder:
    """Distributed-DP encoder of the counting round for multiplier ``z`` (dimension
    :attr:`~FederatedMFServer.count_dim`, norm ≤ 1), sized for the round's own cohort
    (Poisson rate ``q_head``) rather than a training round's."""
    _, shares, top = self._count_sizes()
    return DistributedDPEncoder(
        DistributedDPConfig(
            clip=1.0,
            dim=self.count_dim,
            min_survivors=shares,
            rotation_seed=self.rotation_seed + 1,
            noise_multiplier=z if z > 0 else 1.0,
            mechanism=self.config.ddp_mechanism,
            max_clients=top,
        )
    )


def holder_weight(self: FederatedMFServer, lengths: np.ndarray | None) -> float:
    """Mean weight ω̄ of a counted item in the released counts, from the noisy histogram.

    Under ``count_weighting="length"`` an item of a user with ``m < B`` counted items weighs
    ``√(B/m)`` in the counts (:func:`~privrec.federated.client.count_item_weights`), so on
    short-history data a count overstates how many users hold the item — the quantity the
    learnable-head rule compares with the training noise (a user's clipped update carries an
    item with weight 1 whatever their length). ω̄ averages the weight over the counted items,
    ``Σ_b h_b·m_b·√(B/m_b) / Σ_b h_b·m_b`` with ``h_b`` the noisy user count of length bin
    ``b`` (negatives as 0) and ``m_b`` the bin's geometric middle length capped at B (the
    last, open bin: its lower edge); counts divided by ω̄ estimate holders. 1 under
    ``"uniform"`` or without a histogram; at most √B. Post-processing of the counting round's
    release and public settings: no privacy cost.
    """
    c = self.config
    if c.count_weighting == "uniform" or lengths is None:
        return 1.0
    n_bins = self.count_dim - self.n_items
    h = np.asarray(lengths, dtype=np.float64)
    if h.shape != (n_bins,) or not np.all(np.isfinite(h)):
        raise DataError(
            "noisy history-length histogram has the wrong shape or non-finite values",
            field="noisy_lengths",
            expected=str(n_bins),
            found=h.shape,
        )
    lo = LENGTH_EDGES[:n_bins].astype(np.float64)
    hi = LENGTH_EDGES[1 : n_bins + 1].astype(np.float64) - 1.0
    hi[-1] = lo[-1]
    b = c.counted_items
    m = np.minimum(np.sqrt(lo * hi), float(b))
    weight = count_item_weights(m, b, c.count_weighting) * np.sqrt(b + 1.0)
    mass = np.maximum(h, 0.0) * m
    total = float(mass.sum())
    if not total > 0:
        return 1.0
    return float(np.clip((mass * weight).sum() / total, 1.0, np.sqrt(b)))


def learnable_head_size(
    self: FederatedMFServer,
    items: np.ndarray,
    n_head: int,
    rounds: int | None = None,
    lengths: np.ndarray | None = None,
) -> int:
    """Size of the head chosen from the noisy item counts ``items`` (at most ``n_head``).

    With ``head_snr`` set: the items whose noisy count clears
    :func:`~privrec.models.dp_rules.federated_head_threshold` for the calibrated training
    multiplier ``z``, rate ``q`` and ``T`` rounds, at least :data:`HEAD_MINIMUM` — the head an
    item's factor can be learnt above the training noise for. Otherwise ``n_head`` (the
    configured ``head_items``). Post-processing of the released counts and of ``z``, ``q``,
    ``T`` (public): no privacy cost. The counts are divided by :func:`holder_weight` of the
    released histogram ``lengths`` (default the server's) first: the rule is about how many
    users hold an item. ``rounds`` is the ``T`` of the rule (default the
    configured rounds; a checkpoint's check passes the ``T`` the head was chosen with, which a
    resumed run with another target no longer has). Both aggregations: distributed DP's worst-case events are
    planned (and a ledger reserves them) for a payload of ``n_head`` rows before the count, so
    there the payload keeps ``n_head`` rows (:attr:`~FederatedMFServer.payload_rows`) and the
    devices send zeros past the learnable head (:func:`~privrec.federated.client.pack_payload`).
    """
    c = self.config
    if c.head_snr is None or self.noise_multiplier <= 0:
        return n_head
    t = c.rounds if rounds is None else int(rounds)
    tau = federated_head_threshold(c.head_snr, self.noise_multiplier, self.q, t)
    omega = holder_weight(self, self.noisy_lengths if lengths is None else lengths)
    return federated_head_size(np.asarray(items) / omega, tau, n_head, HEAD_MINIMUM)


def ruled_head(
    self: FederatedMFServer,
    items: np.ndarray | None,
    rounds: int | None = None,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``(head items, payload rows)`` the model's rule gives for the noisy item counts ``items``.

    The one rule both the counting round's release and a checkpoint's check apply: the whole
    catalogue when ``head_items`` is unset or covers it (chosen before the count, ``items`` is
    not read); else the largest noisy counts, sorted by id — ``head_items`` of them, or fewer
    under the learnable-head rule (:func:`learnable_head_size`, with ``T = rounds``). The
    payload carries the head's rows, except under distributed DP, which keeps the planned
    ``head_items`` rows (zeros past the learnable head). Post-processing of the released
    counts and public settings.
    """
    c = self.config
    if c.head_items is None or c.head_items >= self.n_items:
        return np.arange(self.n_items, dtype=np.int64), self.n_items
    if items is None:
        raise DataError("the head rule needs the noisy item counts", field="noisy_counts")
    planned = int(c.head_items)
    n_head = learnable_head_size(self, items, planned, rounds, lengths)
    head = np.sort(np.argsort(-items, kind="stable")[:n_head]).astype(np.int64)
    return head, planned if c.aggregation == "distributed" else head.size


def release_counts(
    self: FederatedMFServer,
    noisy_counts: np.ndarray,
    *,
    survivors: int | None = None,
    sampled: int | None = None,
) -> np.ndarray:
    """Check, charge and apply the counting round's noised sum; return the head items.

    ``noisy_counts`` is rescaled by :attr:`~FederatedMFServer.count_scale` into
    ``noisy_counts`` (items) and ``noisy_lengths`` (history-length bins). Without a head yet,
    the head is the largest noisy counts (post-processing), sorted by id: ``head_items`` of
    them, or fewer under the learnable-head rule (:func:`learnable_head_size`; distributed DP
    keeps the planned ``head_items`` rows in the payload, zeros past the learnable head). With
    distributed DP, ``survivors`` is how many clients' noise is in the sum and ``sampled``
    the round's cohort (unknown: the largest cohort). Only honest survivors count; fewer than
    the counting round's planned noise shares are refused (the secure sum should have
    aborted), and the round is charged that worst case. Nothing changes before every check
    has passed and the ledger hook has accepted the event.
    """
    c = np.asarray(noisy_counts, dtype=np.float64)
    if c.shape != (self.count_dim,):
        raise DataError(
            "noisy counts have the wrong length",
            field="noisy_counts",
            expected=str(self.count_dim),
            found=c.shape,
        )
    if not np.all(np.isfinite(c)):
        raise DataError("noisy counts contain NaN or infinite values", field="noisy_counts")
    c = c * self.count_scale
    items = c[: self.n_items]
    lengths = c[self.n_items :]
    chosen = ruled_head(self, items, lengths=lengths) if self.head_items is None else None
    z = self.head_noise_multiplier
    if self.config.aggregation == "distributed" and z > 0:
        if survivors is None or survivors < 1:
            raise DataError(
                "distributed counting round needs its survivor count", field="survivors"
            )
        _, shares, top = self._count_sizes()
        honest = int(survivors) - self.corrupt_bound(top if sampled is None else sampled)
        if honest < shares:
            raise DataError(
                f"only {honest} honest survivors' noise in the counting round's sum, "
                f"planned for at least {shares}; the secure sum should have aborted",
                field="survivors",
                found=survivors,
            )
    event = self._charged_head_event(z)
    self._announce(HEAD_LABEL, event)
    self._spend(HEAD_LABEL, event)
    self.noisy_counts = items
    self.noisy_lengths = lengths
    if chosen is not None:
        self._set_head(chosen[0], payload_rows=chosen[1])
        self.head_rounds = self.config.rounds
    assert self.head_items is not None
    return self.head_items
