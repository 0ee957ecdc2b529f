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
       Below a noisy n·ε of 1000, central DPALS's one-round rule
       (:func:`~privrec.models.dp_rules.resolve_one_round`): every step broadcasts the same
       count-started Y and the model keeps the mean of the steps' solves (same rounds, same
       noise, same events — post-processing of the released histogram and counts).
    A per-item k×k left-hand side would make the payload n_head·k² numbers: the federated
    model uses central DPALS's cheap variants (``lhs="none"`` by default).

Privacy
    Unit: one user = one device (add/remove). Every round is one secure sum of vectors with L2
    norm ≤ c (the parts' bounds combined), carrying the summed discrete-Gaussian noise of at
    least ``min_survivors`` honest devices; its Rényi-DP bound is KLS21's (Prop. 14), recorded
    as a dominating ``GaussianDpEvent`` (:meth:`DistributedDPPlan.dp_event`) and composed over
    the rounds with dp-accounting's RDP accountant. The rounds' noise multipliers are central
    DPALS's (:func:`privrec.models.dp_als.dpals_event`, calibrated under RDP at the integer
    orders the bound is proven at), nudged up until
    the discrete bound meets them. A round with fewer survivors than planned is aborted before
    anything is decoded (less noise would mean a larger ε than announced); the server pads each
    sum to the (public) enrolled device count's noise shares, so neighbouring sums differ in one
    device's vector, never in their number of shares (docs/distributed_dp.md, "Neighbouring
    relation"). Everything after the decoded sums is central DPALS's post-processing.

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
import warnings
from typing import Any, Literal

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.errors import ConfigError, NonFiniteResultError, PrivacyWarning, ProtocolAbort
from privrec.federated.dpals_devices import (
    Devices,
    DeviceTask,
    SimulatedDevices,
    SumResult,
)
from privrec.models.base import register
from privrec.models.dp_als import (
    DEFAULT_SHRINKAGE,
    DPALS,
    DPALSConfig,
    dpals_event,
    initial_item_factors,
)
from privrec.models.dp_rules import (
    LengthProfile,
    dpals_head,
    head_threshold,
    resolve_bound,
    resolve_factors,
    resolve_iterations,
    resolve_one_round,
    resolve_popularity_blend,
    resolve_regularization,
    resolve_shrinkage,
)
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.bounds import LENGTHS_LABEL
from privrec.privacy.contribution import draw_salt
from privrec.privacy.distributed import NEIGHBOURING_NOTE, DistributedDPConfig, DistributedDPEncoder
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.postprocessing import diagonal_solve, project_psd, shared_solve
from privrec.privacy.units import PrivacyUnit

__all__ = ["FederatedDPALS", "FederatedDPALSConfig"]

Secure = Literal["aggregate", "fast", "full"]


class FederatedDPALSConfig(DPALSConfig):
    lhs: Literal["none", "diagonal"] = "none"
    accountant: Literal["rdp"] = "rdp"
    secure: Secure = "fast"
    min_survivor_fraction: float = pydantic.Field(default=0.9, gt=0, le=1)
    corrupt_fraction: float = pydantic.Field(default=0.05, ge=0, lt=1)
    dropout: float = pydantic.Field(default=0.0, ge=0, lt=1)
    mechanism: Literal["dgauss", "skellam"] = "dgauss"
    threat_model: Literal["honest-but-curious", "malicious"] = "honest-but-curious"
    # the fixed split: every round's release is reserved and ticked off the ledger on its own
    # (governance ``cover``), which a share read after the histogram would not match
    adaptive_count_share: Literal[False] = False


@register
class FederatedDPALS(DPALS):
    """DPALS trained by devices through secure aggregation with distributed DP (simulated).

    Parameters are :class:`~privrec.models.dp_als.DPALS`'s (same defaults and rules; ``lhs`` is
    ``"none"`` or ``"diagonal"``, the accountant RDP) plus the simulation's:

    secure
        ``"fast"`` (default: every device encodes its contribution, summed without the
        cryptography), ``"full"`` SecAgg+, or ``"aggregate"`` (utility sweeps: the decoded sum's
        noise drawn in one place; module docstring).
    min_survivor_fraction
        A round needs this fraction of the devices to survive; with fewer it is aborted before
        decoding.
    corrupt_fraction
        Up to this fraction of all devices may collude with the server and remove their own
        noise shares (default 0.05, as FederatedMF): the noise is sized for the honest floor,
        the planned survivors minus ⌈corrupt_fraction · n⌉.
    dropout
        Probability that a device drops out of a round (simulated fault).
    mechanism
        ``"dgauss"`` (distributed discrete Gaussian) or ``"skellam"``.
    threat_model
        The server SecAgg+ is secured against: ``"honest-but-curious"`` (default) or
        ``"malicious"`` (Bell et al.'s threshold, signed keys and the survivor-set consistency
        check, as FederatedMF: ``docs/secagg.md``). The noise, events and ε are the same.
    adaptive_count_share
        Always ``False``: the counts keep the fixed share of the rate (central DPALS reads it
        from the length histogram); each round's release is charged to a ledger on its own.

    After ``fit``, ``rounds_`` lists every round: kind, vector length (padded), bits,
    bytes each device sends, survivors, and the measured device and server seconds.
    """

    name = "federated_dpals"
    Config = FederatedDPALSConfig
    mechanism_name = "federated DPALS (SecAgg+ with distributed discrete-Gaussian noise)"

    @property
    def rdp_only_events(self) -> bool:
        """Always: every round's distributed discrete-Gaussian bound is an RDP bound."""
        return True

    def epsilon_spent(self, *, with_next_round: bool = False) -> float:
        """ε (RDP, at the model's δ) of the rounds charged so far — with ``with_next_round``,
        plus the round in progress: what a round log may say once that round's sum is decoded
        (the fit charges it next); an aborted attempt adds nothing."""
        planned = getattr(self, "_planned", None) or []
        done = len(getattr(self, "_spent", [])) + (1 if with_next_round else 0)
        events = [p.event for p in planned[:done]]
        if not events:
            return 0.0
        return epsilon_of(events, self.delta, "rdp", PrivacyUnit.USER)

    rounds_: list[dict[str, Any]]
    #: seed of the (data-independent) initial item factors when the model has no ``seed``: set
    #: by a resumable deployment so that a replayed run starts from the same factors
    init_seed: int | None = None

    def __init__(
        self,
        epsilon: float,
        delta: float,
        unit: PrivacyUnit | Literal["user"] = "user",
        *,
        secure: Secure = "fast",
        min_survivor_fraction: float = 0.9,
        corrupt_fraction: float = 0.05,
        dropout: float = 0.0,
        mechanism: Literal["dgauss", "skellam"] = "dgauss",
        threat_model: Literal["honest-but-curious", "malicious"] = "honest-but-curious",
        lhs: Literal["none", "diagonal"] = "none",
        accountant: Literal["rdp"] = "rdp",
        adaptive_count_share: Literal[False] = False,
        **dpals: Any,
    ) -> None:
        super().__init__(
            epsilon, delta, unit, lhs=lhs, accountant=accountant,
            adaptive_count_share=adaptive_count_share, **dpals,
        )  # fmt: skip
        self.secure = secure
        self.min_survivor_fraction = min_survivor_fraction
        self.corrupt_fraction = corrupt_fraction
        self.dropout = dropout
        self.mechanism = mechanism
        self.threat_model = threat_model

    @classmethod
    def _param_names(cls) -> list[str]:
        extra = [
            "secure", "min_survivor_fraction", "corrupt_fraction", "dropout", "mechanism",
            "threat_model",
        ]  # fmt: skip
        return [*DPALS._param_names(), *extra]

    # ----------------------------------------------------------------------------- training
    def _fit(self, data: Interactions, config: Any) -> None:
        c: FederatedDPALSConfig = config
        x = sp.csr_matrix(data.matrix, copy=True)
        x.data[:] = 1.0
        budget, rng = self._begin(data, c)
        fault_rng = np.random.default_rng(None if c.seed is None else c.seed + 7)
        salt = draw_salt(rng) if c.seed is None else c.seed
        devices = SimulatedDevices(x, c, rng, fault_rng, salt)
        self._train(devices, x.shape[0], x.shape[1], c, budget, rng)
        xh = sp.csr_matrix(x[:, self.head_items_])
        xh.sort_indices()
        self.user_factors_ = self._fold(xh).astype(np.float32)

    def fit_devices(self, devices: Devices, n_users: int, n_items: int) -> FederatedDPALS:
        """Train with devices the server cannot see (Flower): the server side of :meth:`fit`.

        ``devices`` runs each round's secure sum (:class:`Devices`); the server knows only
        the population size and the catalogue. The model holds its released parameters only
        (no training users: serve users from their own histories with ``recommend_history``).
        """
        from types import SimpleNamespace

        c = self.config()
        assert isinstance(c, FederatedDPALSConfig)
        self._progress, self._user_epsilons = None, None
        budget, rng = self._begin(SimpleNamespace(n_users=n_users, nnz=0), c)  # type: ignore[arg-type]
        self._catalogue_source = "given"
        self._train(devices, n_users, n_items, c, budget, rng)
        self.user_factors_ = np.zeros((0, self.factors_), dtype=np.float32)
        self.user_ids_ = np.zeros(0, dtype=np.int64)
        catalogue = getattr(self, "_catalogue", None)
        given = catalogue is not None and len(catalogue) == n_items
        self.item_ids_ = np.asarray(catalogue) if given else np.arange(n_items, dtype=np.int64)
        self.user_items_ = sp.csr_matrix(np.zeros((0, n_items), dtype=np.float32))
        self._released_only = True
        self._after_fit()
        return self

    def _train(
        self,
        devices: Devices,
        n_users: int,
        n_items: int,
        c: FederatedDPALSConfig,
        budget: Any,
        rng: np.random.Generator,
    ) -> None:
        """The server's side of training: plan, rounds of secure sums, item solves, release."""
        if c.unit is not PrivacyUnit.USER:
            raise ConfigError("federated DPALS protects devices: the unit is the user")
        if c.tiers:
            raise ConfigError("personalised budgets are not available in federated DPALS")
        n_min = max(2, math.ceil(c.min_survivor_fraction * n_users))
        # devices colluding with the server take their noise shares out of the sum: the noise
        # is sized for the honest floor among the fewest survivors a round accepts
        honest = n_min - math.ceil(c.corrupt_fraction * n_users)
        if honest < 2:
            raise ConfigError(
                f"corrupt_fraction={c.corrupt_fraction:g} of {n_users} devices leaves fewer than "
                f"two honest devices among the {n_min} survivors a round needs"
            )
        if c.min_survivor_fraction >= 1.0:
            warnings.warn(
                "min_survivor_fraction=1 leaves no margin: every device must survive every round "
                "(one dropout aborts it)",
                PrivacyWarning,
                stacklevel=3,
            )
        if c.corrupt_fraction == 0:
            warnings.warn(
                "corrupt_fraction=0 leaves no margin: the noise assumes no device colludes with "
                "the server — one that does removes its noise share, leaving less noise than the "
                "announced ε needs",
                PrivacyWarning,
                stacklevel=3,
            )
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
        self._devices, self._n_min, self._n_users, self._config = devices, n_min, n_users, c
        self._honest = honest
        self._rng, self.rounds_ = rng, []
        # dimensions are public: the histogram grid, the catalogue, and (for steps) k and the
        # head size, known only after the counts round — steps are planned with their noise
        # multiplier, which does not depend on the dimension.
        # each round's encoder is tuned so its discrete bound is dominated by Gaussian(z)
        planned = [SpentEvent(_label(kind), gaussian_event(z)) for kind, z in targets]
        self._plan(planned)

        profile = None
        if r_len is not None:
            task = DeviceTask("lengths", "lengths", n_items)
            hist = self._round(task, 1.0, r_len * sigma, planned[0])
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
            DeviceTask("counts", "counts", n_items, count_sample=count_sample),
            math.sqrt(count_sample),
            ratios[3] * sigma,
            planned[len(targets) - iterations - 1],
        )
        threshold = head_threshold(c.head_snr, ratios[2] * sigma_eff, count_sample)
        head = dpals_head(
            noisy_counts,
            c.head_fraction,
            threshold,
            c.head_min,
            k,
            rhs_std=ratios[2] * sigma_eff,
            count_sample=count_sample,
        )
        counts_h = noisy_counts[head]
        reg = resolve_regularization(c.regularization, sigma_eff, c.clip_norm)
        self.regularization_ = reg
        alpha0 = self._resolve_alpha0(c, counts_h, profile)  # as central DPALS
        reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
        # central DPALS's one-round rule (post-processing of the released histogram): below a
        # noisy n·ε of 1000 every round's devices solve from the same count-started factors and
        # the item factors are the mean of the rounds' solves (same rounds, noise and events)
        one_round = resolve_one_round(c.one_round, profile, c.epsilon, 1000.0)
        self.one_round_ = one_round
        init_seed = c.seed if c.seed is not None else self.init_seed
        y = initial_item_factors((len(head), k), c.init_scale, init_seed, counts_h, one_round)
        y_start, y_sum = y, np.zeros_like(y)
        y_prev = y
        scales = _part_scales(ratios, c.clip_norm, bound, b_plan)
        for t in range(iterations):
            y_prev = y
            task = DeviceTask(
                "step",
                f"step {t + 1}",
                n_items,
                head=head,
                head_counts=counts_h,
                item_factors=y_start if one_round else y,
                scales=scales,
                method=c.method,
                bound=bound,
                adaptive_exponent=c.adaptive_exponent,
                alpha0=alpha0,
                user_regularization=c.user_regularization,
                clip_norm=c.clip_norm,
                lhs=c.lhs,
            )
            event = planned[len(targets) - iterations + t]
            decoded = self._round(task, step_norm, sigma / step_norm, event)
            g, rhs, diag = _unpack(decoded, k, len(head), scales, c.lhs)
            g = project_psd(g)
            if diag is not None:
                y = diagonal_solve(alpha0 * g, diag, rhs, reg_items)
            else:
                y = shared_solve(alpha0 * g, rhs, reg_items)
            if one_round:
                y_sum += y
                y = y_sum / (t + 1)
            if not np.all(np.isfinite(y)):  # never broadcast non-finite factors to the devices
                raise NonFiniteResultError(
                    f"step {t + 1}'s item solve is not finite: a setting is out of its useful range"
                )
            if self._progress is not None:
                self._progress(t + 1, iterations)
        y = self._final_factors(c, y_prev, y, iterations)  # central DPALS's step averaging
        self.item_factors_ = np.zeros((n_items, k), dtype=np.float32)
        self.item_factors_[head] = y.astype(np.float32)
        self.head_items_ = head.astype(np.int64)
        self.noisy_counts_ = noisy_counts.astype(np.float32)
        self._fit_alpha0, self._fit_user_reg = alpha0, c.user_regularization
        self.popularity_blend_ = resolve_popularity_blend(c.popularity_blend, c.epsilon)
        self.popularity_shrinkage_ = resolve_shrinkage(
            c.popularity_shrinkage, c.popularity_blend, profile, DEFAULT_SHRINKAGE
        )
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
                "devices' discrete-Gaussian noise (a round needs "
                f"{c.min_survivor_fraction:.0%} of the devices to survive, and the noise is sized "
                f"for those survivors less {c.corrupt_fraction:.0%} of all devices colluding with "
                "the server and removing their own noise shares); the released model is (ε, δ)-DP "
                "per user without a trusted server. SecAgg+ is secured against "
                + (
                    "a malicious server (Bell et al.'s threshold, signed keys, consistency check)."
                    if c.threat_model == "malicious"
                    else "an honest-but-curious server."
                )
                + NEIGHBOURING_NOTE
                + " Joint DP for each user's own list. "
                + devices.description
            ),
        )
        del self._rng, self._config, self._devices

    def _round(self, task: DeviceTask, norm: float, z: float, planned: SpentEvent) -> np.ndarray:
        """One secure sum with distributed DP: decoded noisy sum (and the round's report).

        Every device's contribution (:func:`device_vectors`) has L2 norm ≤ ``norm``; the
        round's sum carries noise of multiplier ``z`` (std ``z·norm``) for ``n_min`` survivors.
        """
        c = self._config
        dim = task.dim(self.factors_ if task.kind == "step" else 0)
        enc = _encoder(dim, norm, z, self._honest, self._n_users, c.mechanism)
        t0 = time.perf_counter()
        res = self._devices.secure_sum(task, enc, self._n_min)
        server_s = time.perf_counter() - t0
        decoded = _checked_sum(res, task.label, dim, self._n_min, self._n_users)
        self._spend(planned.label, planned.event)
        word = 4 if enc.bits <= 32 else 8
        self.rounds_.append(
            {
                "round": task.label,
                "dim": dim,
                "padded_dim": enc.encoded_dim,
                "bits": enc.bits,
                "bytes_per_device": enc.encoded_dim * word,
                "survivors": res.survivors,
                "devices": self._n_users,
                "noise_multiplier": z,
                "device_seconds": res.device_seconds,
                "seconds": server_s,
                **res.extra,
            }
        )
        return decoded


def _checked_sum(res: SumResult, label: str, dim: int, n_min: int, n_max: int) -> np.ndarray:
    """The decoded sum of a :class:`Devices` backend, checked by the server itself.

    A backend (a plug-in, or devices that lie) may report fewer survivors than the noise was
    sized for — the sum would then carry less noise than the announced ε needs — or return a
    sum of the wrong shape or with non-finite entries: the round is aborted before anything is
    solved from it (:class:`~privrec.errors.ProtocolAbort`).
    """
    survivors = res.survivors
    if isinstance(survivors, bool) or not isinstance(survivors, (int, np.integer)):
        raise ProtocolAbort("unmask", f"{label}: the backend reported no survivor count")
    if not n_min <= int(survivors) <= n_max:
        raise ProtocolAbort(
            "unmask",
            f"{label}: {int(survivors)} survivors reported, the noise is sized for {n_min} to "
            f"{n_max} devices",
        )
    try:
        decoded = np.asarray(res.decoded, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProtocolAbort("unmask", f"{label}: the decoded sum is not numeric") from exc
    if decoded.shape != (dim,):
        raise ProtocolAbort(
            "unmask", f"{label}: the decoded sum has shape {decoded.shape}, expected ({dim},)"
        )
    if not np.all(np.isfinite(decoded)):
        raise ProtocolAbort("unmask", f"{label}: the decoded sum has non-finite entries")
    return decoded


# ------------------------------------------------------------------------------- helpers
def _label(kind: str) -> str:
    fixed = {"lengths": LENGTHS_LABEL, "counts": "noisy item counts"}
    return fixed.get(kind, f"{kind}: noisy Gramian and item statistics") + " (secure sum)"


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
