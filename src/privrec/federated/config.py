"""Hyper-parameters of FederatedMF (:class:`FederatedMFConfig`); see :mod:`privrec.federated.mf`."""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from privrec.errors import ConfigError
from privrec.models.base import ModelConfig
from privrec.privacy.accounting import AccountantKind
from privrec.privacy.units import PrivacyUnit

__all__ = [
    "DEFAULT_COHORT",
    "HEAD_MINIMUM",
    "HEAD_SNR",
    "Aggregation",
    "CountWeighting",
    "FederatedMFConfig",
]

Aggregation = Literal["central", "distributed"]
#: How the counting round weighs a device's items (:func:`~privrec.federated.client.count_item_weights`).
CountWeighting = Literal["length", "uniform"]

#: Expected cohort size when neither ``sampling_rate`` nor ``clients_per_round`` is given.
DEFAULT_COHORT = 1000

#: Default ``head_snr`` (:func:`~privrec.models.dp_rules.federated_head_threshold`), chosen on
#: validation splits only (see ``benchmarks/results/short_history-validation.md``).
HEAD_SNR = 7.0
#: The learnable head never drops below this many items (or ``head_items`` when smaller).
HEAD_MINIMUM = 100


def _round_up(x: float, digits: int = 2) -> float:
    """``x > 0`` rounded up to ``digits`` significant digits (as a decimal, e.g. 0.0347 → 0.035)."""
    import math
    from decimal import ROUND_CEILING, Decimal

    exponent = math.floor(math.log10(x)) - digits + 1
    step = Decimal(1).scaleb(exponent)
    return float(Decimal(repr(x)).quantize(step, rounding=ROUND_CEILING))


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
        Number of most popular items the dense update covers (``None`` = whole catalogue).
        The head is chosen from the **noisy** item counts of the counting round (which
        always runs, see ``count_bound``), unless a public head is given to the server.
    head_snr
        Learnable head (head chosen from the noisy counts): of the
        ``head_items`` largest noisy counts, only the items whose count clears
        ``head_snr · z / (q √T)`` are trained
        (:func:`~privrec.models.dp_rules.federated_head_threshold`; at least
        :data:`HEAD_MINIMUM` items). ``None``: the ``head_items`` largest, as before. Post-
        processing of the counting round and of the calibrated ``z``: no privacy cost. With
        distributed aggregation the payload keeps ``head_items`` rows (its worst-case discrete
        noise events are planned, and reserved, for that payload before the count): devices
        train the learnable rows only and send zeros for the rest, which the server ignores.
    count_bound
        B: items of each user's history counted in the counting round (a uniform sample of
        B items on the device when the history is longer). The released counts are the
        popularity prior of the ranking and choose the head; L2 sensitivity √B for the counts
        (√(B + 1) with the history-length histogram released in the same sum). Default
        (``None``): 30 below ε = 3, else 10 (:func:`~privrec.federated.accounting.resolve_count_bound`;
        :attr:`counted_items` is the resolved B).
    count_weighting
        ``"length"`` (default): a device with ``m = min(n_u, B)`` counted items weighs each by
        ``√(B / ((B + 1)·m))`` (:func:`~privrec.federated.client.count_item_weights`), so every
        count vector has L2 norm 1 — a short history uses the whole norm the noise is sized for;
        the released counts weigh an item of a user with ≥ B items 1 and of a shorter history
        ``√(B/m)``, at the same noise and sensitivity 1. ``"uniform"``: every counted item
        weighs 1 (the counts estimate how many users hold each item; short histories use only
        part of their norm).
    head_epsilon_fraction
        Share of ε spent on the counting round when ``epsilon`` is given. ``None``: the rule
        :func:`~privrec.federated.accounting.count_epsilon_fraction` (more of ε for the counts
        when ε is small, the population small or B large).
    head_sampling_rate
        Poisson rate of the counting round (default ``None``: 1, every device once); its
        cost grows with the catalogue size, not the head size.
    popularity_blend, popularity_shrinkage
        The ranking blends each user's factor scores with the released noisy counts
        (:func:`~privrec.models.private.head_item_scores`): weight ``β + s / n_u`` for a user
        with ``n_u`` items, so short histories lean on popularity. Defaults (``None``): DPALS's
        rules (:func:`~privrec.models.dp_rules.resolve_popularity_blend` for β,
        :func:`~privrec.models.dp_rules.resolve_shrinkage` for s, from the released
        history-length histogram). Post-processing: no privacy cost.
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
        of each round's devices that collude with the server (their noise shares are known to
        it, so only the other survivors' noise is charged; see :mod:`privrec.federated.mf`).
    threat_model
        The aggregation server SecAgg+ is secured against: ``"honest-but-curious"`` (follows
        the protocol) or ``"malicious"`` (may lie; Bell et al.'s threshold, signed keys and the
        signed consistency check -- a PKI of device identity keys is needed in deployment).
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
    head_snr: float | None = pydantic.Field(default=HEAD_SNR, ge=0, allow_inf_nan=False)
    count_bound: int | None = pydantic.Field(default=None, ge=1, le=10_000)
    count_weighting: CountWeighting = "length"
    head_epsilon_fraction: float | None = pydantic.Field(default=None, gt=0, lt=1)
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
    threat_model: Literal["honest-but-curious", "malicious"] = "honest-but-curious"
    popularity_blend: float | None = pydantic.Field(default=None, ge=0, le=10, allow_inf_nan=False)
    popularity_shrinkage: float | None = pydantic.Field(
        default=None, ge=0, le=1000, allow_inf_nan=False
    )
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
    def counted_items(self) -> int:
        """B: ``count_bound``, else the ε rule (the same on the server and every device)."""
        from privrec.federated.accounting import resolve_count_bound

        return resolve_count_bound(self.count_bound, self.epsilon)

    @property
    def accountant(self) -> AccountantKind:
        """PLD for central Gaussian noise; RDP for distributed DP (KLS21's bound is RDP)."""
        return AccountantKind.RDP if self.aggregation == "distributed" else AccountantKind.PLD

    def sampling_probability(self, population: int) -> float:
        """Poisson rate ``q`` for a population of ``population`` users.

        From ``clients_per_round``, ``q = cohort / population`` rounded **up** to two
        significant digits: the rate is stored in every accounting event of the released
        model, and the exact ratio would reveal the exact number of users. Rounding up samples
        (and charges) slightly more, never less.
        """
        if population < 1:
            raise ConfigError(f"population must be >= 1, found {population}")
        if self.sampling_rate is not None:
            return float(self.sampling_rate)
        cohort = DEFAULT_COHORT if self.clients_per_round is None else self.clients_per_round
        return min(1.0, _round_up(cohort / population))
