"""Federated DPALS: devices send DPALS's sufficient statistics through SecAgg+ with distributed DP.

Why: FederatedMF's dense gradients trail central DPALS by a third on gowalla — the method, not
the noise. DPALS needs only *sums over users* of bounded per-user terms, and a sum is exactly
what secure aggregation computes; so every device computes its own contribution to the same
statistics central DPALS releases, the secure sum (SecAgg+, :mod:`privrec.federated.secure_round`)
carries them with distributed discrete-Gaussian noise (:mod:`privrec.privacy.distributed`), and
the server solves the items. Nobody — not the server — sees a user's data or factors.

Rounds (every device of the population takes part; dropouts are tolerated)
    1. *lengths* (with data-adaptive bounds): a one-hot of the device's history-length bin
       (:mod:`privrec.privacy.bounds`) → the noisy histogram → B, count sample, k, shrinkage;
    2. *counts*: ≤ count_sample of the device's items, sampled on the device, each 1 → noisy
       item counts → head items, adaptive weights, ridge (central DPALS's rules);
    3. T *steps*: the server broadcasts the head item factors Y; each device solves its own
       factors exactly (iALS, from Y and its own items), clips them to Γ and sends
       ``[x xᵀ / (r0 Γ²), c_uj x / (r2' Γ) for its head items (zeros elsewhere),
       (c_uj x∘x / (r1' Γ²) with ``lhs="diagonal"``)]`` — one vector whose parts are scaled so
       that one noise level on the sum gives central DPALS's noise ratios; the server decodes
       the Gramian and right-hand sides (and diagonals) and solves
       ``(α0 G̃ + diag + λ I) y_j = r̃_j`` (:func:`privrec.privacy.postprocessing.shared_solve`).
    A per-item k×k left-hand side would make the payload n_head·k² numbers: the federated
    model uses central DPALS's cheap variants (``lhs="none"`` by default).

Privacy
    Unit: one user = one device (add/remove). Every round is one secure sum of vectors with L2
    norm ≤ c (the parts' bounds combined), carrying the summed discrete-Gaussian noise of at
    least ``min_survivors`` honest devices; its Rényi-DP bound is KLS21's (Prop. 14), recorded
    as a dominating ``GaussianDpEvent`` (:meth:`DistributedDPPlan.dp_event`) and composed over
    the rounds with dp-accounting's RDP accountant. The rounds' noise multipliers are central
    DPALS's (:func:`privrec.models.dp_als.dpals_event`, calibrated under RDP), nudged up until
    the discrete bound meets them. A round with fewer survivors than planned is aborted before
    anything is decoded (less noise would mean a larger ε than announced); more survivors only
    add noise. Everything after the decoded sums is central DPALS's post-processing.

Simulation modes (``secure=``)
    ``"full"``: every device encodes (clip, rotate, round, noise) and the real SecAgg+ state
    machines run — for tests, payload and round-time measurements; ``"fast"``: the same
    encodings summed without cryptography (bit-identical when SecAgg+ completes);
    ``"aggregate"`` (**utility sweeps only, no per-device encoding**): the exact sum of the
    clipped contributions plus noise with the decoded sum's variance (the devices' summed
    discrete-Gaussian noise and their rounding errors, ``γ²·n·(σ_local² + 1/4)`` per
    coordinate). All three account identically.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated.secure_round import secure_sum
from privrec.models.base import register
from privrec.models.dp_als import (
    DEFAULT_SHRINKAGE,
    DPALS,
    DPALSConfig,
    dpals_event,
    exact_user_solve,
    user_weights,
)
from privrec.models.dp_rules import (
    LengthProfile,
    head_threshold,
    resolve_bound,
    resolve_factors,
    resolve_iterations,
    resolve_popularity_blend,
    resolve_regularization,
    resolve_shrinkage,
    select_head,
)
from privrec.privacy.accounting import calibrate
from privrec.privacy.bounds import LENGTH_EDGES, LENGTHS_LABEL, length_histogram
from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.postprocessing import diagonal_solve, project_psd, shared_solve
from privrec.privacy.units import PrivacyUnit

__all__ = ["FederatedDPALS", "FederatedDPALSConfig", "round_vectors"]

Secure = Literal["aggregate", "fast", "full"]


class FederatedDPALSConfig(DPALSConfig):
    lhs: Literal["none", "diagonal"] = "none"
    accountant: Literal["rdp"] = "rdp"
    secure: Secure = "aggregate"
    min_survivor_fraction: float = pydantic.Field(default=0.9, gt=0, le=1)
    dropout: float = pydantic.Field(default=0.0, ge=0, lt=1)
    mechanism: Literal["dgauss", "skellam"] = "dgauss"


@register
class FederatedDPALS(DPALS):
    """DPALS trained by devices through secure aggregation with distributed DP (simulated).

    Parameters are :class:`~privrec.models.dp_als.DPALS`'s (same defaults and rules; ``lhs`` is
    ``"none"`` or ``"diagonal"``, the accountant RDP) plus the simulation's:

    secure
        ``"aggregate"`` (utility sweeps), ``"fast"`` or ``"full"`` SecAgg+ (module docstring).
    min_survivor_fraction
        The noise is sized for this fraction of the devices surviving each round; a round with
        fewer is aborted before decoding.
    dropout
        Probability that a device drops out of a round (simulated fault).
    mechanism
        ``"dgauss"`` (distributed discrete Gaussian) or ``"skellam"``.

    After ``fit``, ``rounds_`` lists every round: kind, vector length (padded), bits,
    bytes each device sends, survivors, and the measured device and server seconds.
    """

    name = "federated_dpals"
    Config = FederatedDPALSConfig
    mechanism_name = "federated DPALS (SecAgg+ with distributed discrete-Gaussian noise)"

    rounds_: list[dict[str, Any]]

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user"] = "user",
        *,
        secure: Secure = "aggregate",
        min_survivor_fraction: float = 0.9,
        dropout: float = 0.0,
        mechanism: Literal["dgauss", "skellam"] = "dgauss",
        lhs: Literal["none", "diagonal"] = "none",
        accountant: Literal["rdp"] = "rdp",
        **dpals: Any,
    ) -> None:
        super().__init__(epsilon, delta, unit, lhs=lhs, accountant=accountant, **dpals)
        self.secure = secure
        self.min_survivor_fraction = min_survivor_fraction
        self.dropout = dropout
        self.mechanism = mechanism

    @classmethod
    def _param_names(cls) -> list[str]:
        extra = ["secure", "min_survivor_fraction", "dropout", "mechanism"]
        return [*DPALS._param_names(), *extra]

    # ----------------------------------------------------------------------------- training
    def _fit(self, data: Interactions, config: Any) -> None:
        c: FederatedDPALSConfig = config
        if c.unit is not PrivacyUnit.USER:
            raise ConfigError("federated DPALS protects devices: the unit is the user")
        if c.tiers:
            raise ConfigError("personalised budgets are not available in federated DPALS")
        budget, rng = self._begin(data, c)
        x = sp.csr_matrix(data.matrix, copy=True)
        x.data[:] = 1.0
        n_users, n_items = x.shape
        n_min = max(2, math.ceil(c.min_survivor_fraction * n_users))
        ratios = self._ratios(c)
        iterations = resolve_iterations(c.iterations, c.epsilon)
        adaptive = c.max_per_user is None or c.factors is None
        r_len = c.length_noise_ratio if adaptive else None
        b_plan = c.nominal_bound if c.max_per_user is None else c.max_per_user
        # central DPALS's split, calibrated under RDP (the distributed bound is an RDP bound)
        sigma = calibrate(
            budget,
            lambda s: dpals_event(s, iterations, b_plan, ratios, r_len, c.lhs),
            kind="rdp",
            unit=c.unit,
        )
        self.noise_scale_, self.iterations_ = sigma, iterations
        step_norm = _step_norm(ratios, b_plan, c.lhs)
        targets = ([("lengths", r_len * sigma)] if r_len is not None else []) + [
            ("counts", ratios[3] * sigma)
        ]
        targets += [(f"step {t + 1}", sigma / step_norm) for t in range(iterations)]
        self._rng, self._n_min, self._config, self.rounds_ = rng, n_min, c, []
        self._fault_rng = np.random.default_rng(None if c.seed is None else c.seed + 7)
        # dimensions are public: the histogram grid, the catalogue, and (for steps) k and the
        # head size, known only after the counts round — steps are planned with their noise
        # multiplier, which does not depend on the dimension.
        # each round's encoder is tuned so its discrete bound is dominated by Gaussian(z)
        planned = [SpentEvent(_label(kind), gaussian_event(z)) for kind, z in targets]
        self._plan(planned)

        profile = None
        if r_len is not None:
            onehot = _onehot_lengths(np.diff(x.indptr), n_items)
            hist = self._round("lengths", onehot, 1.0, r_len * sigma, planned[0])
            profile = LengthProfile(hist, r_len * sigma, n_items)
        bound = resolve_bound(c.max_per_user, profile, c.bound_quantile)
        count_sample = resolve_bound(
            c.count_sample if c.max_per_user is None else (c.count_sample or bound),
            profile,
            0.5,
            floor=1,
        )
        k = resolve_factors(c.factors, profile, c.epsilon, 1000.0)
        self.max_per_user_, self.count_sample_, self.factors_ = bound, count_sample, k
        sigma_eff = sigma * math.sqrt(bound / b_plan)
        self.effective_noise_scale_ = sigma_eff

        # counts: each device samples ≤ count_sample of its items (its own randomness)
        noisy_counts = self._round(
            "counts",
            _sampled_rows(x, count_sample, rng),
            math.sqrt(count_sample),
            ratios[3] * sigma,
            planned[len(targets) - iterations - 1],
        )
        head = select_head(
            noisy_counts,
            c.head_fraction,
            head_threshold(c.head_snr, ratios[2] * sigma_eff, count_sample),
            c.head_min,
        )
        xh = sp.csr_matrix(x[:, head])
        xh.sort_indices()
        counts_h = noisy_counts[head]
        reg = resolve_regularization(c.regularization, sigma_eff, c.clip_norm)
        self.regularization_ = reg
        weights = user_weights(xh, counts_h, c.method, bound, c.adaptive_exponent, rng)
        reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
        init_rng = np.random.default_rng(None if c.seed is None else c.seed + 1)
        y = init_rng.standard_normal((len(head), k)) * (c.init_scale / math.sqrt(k))
        scales = _part_scales(ratios, c.clip_norm, bound, b_plan)
        for t in range(iterations):
            u = exact_user_solve(xh, y, c.alpha0, c.user_regularization)  # on each device
            u = _clip(u, c.clip_norm)
            vectors = round_vectors(u, weights, scales, c.lhs)
            event = planned[len(targets) - iterations + t]
            decoded = self._round(f"step {t + 1}", vectors, step_norm, sigma / step_norm, event)
            g, rhs, diag = _unpack(decoded, k, len(head), scales, c.lhs)
            g = project_psd(g)
            if diag is not None:
                y = diagonal_solve(c.alpha0 * g, diag, rhs, reg_items)
            else:
                y = shared_solve(c.alpha0 * g, rhs, reg_items)
            if self._progress is not None:
                self._progress(t + 1, iterations)
        self.item_factors_ = np.zeros((n_items, k), dtype=np.float32)
        self.item_factors_[head] = y.astype(np.float32)
        self.head_items_ = head.astype(np.int64)
        self.noisy_counts_ = noisy_counts.astype(np.float32)
        self._fit_alpha0, self._fit_user_reg = c.alpha0, c.user_regularization
        self.popularity_blend_ = resolve_popularity_blend(c.popularity_blend, c.epsilon)
        self.popularity_shrinkage_ = resolve_shrinkage(
            c.popularity_shrinkage, c.popularity_blend, profile, DEFAULT_SHRINKAGE
        )
        self.user_factors_ = self._fold(xh).astype(np.float32)
        self._finish(
            c,
            released=[
                "item factors (after the last round)",
                "noisy item counts and the head item set",
                "each round's noisy sum (Gramian and right-hand sides; the length histogram)",
            ],
            not_released=[
                "any device's data, factors or statistics (only secure sums leave the devices)",
                "each user's recommendations (computed on the device from the released model)",
            ],
            threat_model=(
                "distributed DP: the server learns only secure sums that already carry the "
                f"devices' discrete-Gaussian noise (sized for ≥ {n_min} honest survivors); the "
                "released model is (ε, δ)-DP per user without a trusted server. Devices colluding "
                "with the server remove their own noise share only. Joint DP for each user's own "
                "list. Simulated rounds"
                + (
                    " ('aggregate' mode: the noise of the decoded sums is drawn centrally)."
                    if c.secure == "aggregate"
                    else f" ('{c.secure}' SecAgg+ path)."
                )
            ),
        )
        del self._rng, self._config

    def _round(
        self, kind: str, vectors: sp.csr_matrix, norm: float, z: float, planned: SpentEvent
    ) -> np.ndarray:
        """One secure sum with distributed DP: decoded noisy sum (and the round's report).

        ``vectors`` holds every device's contribution (one row each, L2 norm ≤ ``norm``); the
        round's sum carries noise of multiplier ``z`` (std ``z·norm``) for ``n_min`` survivors.
        """
        c = self._config
        rng: np.random.Generator = self._rng
        n, dim = vectors.shape
        alive = self._fault_rng.random(n) >= c.dropout
        survivors = int(alive.sum())
        enc = _encoder(dim, norm, z, self._n_min, n, c.mechanism)
        if survivors < self._n_min:
            raise ProtocolAbort(
                "masked_input", f"{kind}: {survivors} survivors, {self._n_min} planned for"
            )
        t0 = time.perf_counter()
        if c.secure == "aggregate":
            total = np.asarray(vectors[alive].sum(axis=0), dtype=np.float64).ravel()
            plan = enc.plan
            std = plan.gamma * math.sqrt(survivors * (plan.local_variance + 0.25))
            decoded = total + rng.standard_normal(total.shape) * std
            device_s = float("nan")
        else:
            dense = vectors.toarray()
            ids = np.flatnonzero(alive)
            d0 = time.perf_counter()
            encoded = enc.encode(dense[ids], rng)
            device_s = (time.perf_counter() - d0) / max(len(ids), 1)
            crash = {int(i): "masked_input" for i in np.flatnonzero(~alive)}
            full = np.zeros((n, enc.encoded_dim), dtype=np.uint64)
            full[ids] = encoded
            res = secure_sum(
                n, enc.encoded_dim, enc.bits, lambda i: full[i], crash=crash, mode=c.secure,
                min_survivors=self._n_min,
            )  # fmt: skip
            decoded = enc.decode(res.sum, len(res.survivors))
            survivors = len(res.survivors)
        server_s = time.perf_counter() - t0
        self._spend(planned.label, planned.event)
        word = 4 if enc.bits <= 32 else 8
        self.rounds_.append(
            {
                "round": kind,
                "dim": dim,
                "padded_dim": enc.encoded_dim,
                "bits": enc.bits,
                "bytes_per_device": enc.encoded_dim * word,
                "survivors": survivors,
                "devices": n,
                "noise_multiplier": z,
                "device_seconds": device_s,
                "seconds": server_s,
            }
        )
        return decoded


# ------------------------------------------------------------------------------- helpers
def _label(kind: str) -> str:
    if kind == "lengths":
        return LENGTHS_LABEL + " (secure sum)"
    if kind == "counts":
        return "noisy item counts (secure sum)"
    return f"{kind}: noisy Gramian and item statistics (secure sum)"


def _step_norm(ratios: tuple[float, float, float, float], b_plan: int, lhs: str) -> float:
    """L2 bound of one device's scaled step vector: central DPALS's step multipliers combined."""
    r0, r1, r2, _ = ratios
    rate = 1.0 / r0**2 + b_plan / r2**2 + (b_plan / r1**2 if lhs == "diagonal" else 0.0)
    return math.sqrt(rate)


def _part_scales(
    ratios: tuple[float, float, float, float], gamma: float, bound: int, b_plan: int
) -> tuple[float, float, float]:
    """Divisors of the Gramian, right-hand-side and diagonal parts.

    With them one noise std σ on the summed vector is central DPALS's noise on each part:
    ``r0·σ·Γ²`` on the Gramian, ``r2·σ·√(B/B₀)·Γ`` and ``r1·σ·√(B/B₀)·Γ²`` on the item parts.
    """
    r0, r1, r2, _ = ratios
    f = math.sqrt(bound / b_plan)
    return r0 * gamma**2, r2 * f * gamma, r1 * f * gamma**2


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


def _unpack(
    decoded: np.ndarray, k: int, n_head: int, scales: tuple[float, float, float], lhs: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n_tri = k * (k + 1) // 2
    iu = np.triu_indices(k)
    g = np.zeros((k, k))
    g[iu] = decoded[:n_tri] * scales[0]
    g = g + np.triu(g, 1).T
    rhs = decoded[n_tri : n_tri + n_head * k].reshape(n_head, k) * scales[1]
    diag = None
    if lhs == "diagonal":
        diag = decoded[n_tri + n_head * k :].reshape(n_head, k) * scales[2]
    return g, rhs, diag


def _clip(u: np.ndarray, gamma: float) -> np.ndarray:
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    out: np.ndarray = u * np.minimum(1.0, gamma / np.maximum(norms, 1e-30))
    return out


def _onehot_lengths(lengths: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Each device's histogram contribution: a one-hot of its length bin (empty when no items)."""
    n = len(lengths)
    n_bins = len(length_histogram(np.zeros(0), n_items))
    present = lengths > 0
    bins = np.minimum(np.searchsorted(LENGTH_EDGES, lengths, side="right") - 1, n_bins - 1)
    return sp.csr_matrix(
        (np.ones(int(present.sum())), (np.flatnonzero(present), bins[present])), shape=(n, n_bins)
    )


def _sampled_rows(x: sp.csr_matrix, count_sample: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Each device's count vector: ≤ count_sample of its items, 1 each (sampled on the device)."""
    from privrec.privacy.contribution import sample_per_user

    return sample_per_user(x, count_sample, rng)


def _encoder(
    dim: int, norm: float, z: float, n_min: int, n_max: int, mechanism: str
) -> DistributedDPEncoder:
    """The round's distributed-DP encoder whose bound meets multiplier ``z`` at ``n_min`` survivors.

    The discrete sum's RDP bound is slightly above the continuous Gaussian's (rounding inflates
    Δ2 a little): the sum's multiplier is raised by 0.5% steps until the dominating Gaussian
    event has multiplier ≥ ``z``.
    """
    m = 1.0
    for _ in range(200):
        enc = DistributedDPEncoder(
            DistributedDPConfig(
                clip=norm,
                dim=dim,
                min_survivors=n_min,
                rotation_seed=0,
                noise_multiplier=z * m,
                max_clients=n_max,
                mechanism=mechanism,
            )
        )
        got = enc.plan.dp_event(n_min).noise_multiplier
        if got >= z:
            return enc
        m *= 1.005
    raise ConfigError(f"no distributed plan reaches noise multiplier {z:g}")
