"""Cross-silo public configuration (:class:`SiloConfig`, :class:`SiloEASEConfig`) and the noise
and post-processing rules every party derives from it (see :mod:`privrec.secure.silo`)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal, TypeVar

import dp_accounting
import numpy as np
import pydantic

from privrec.errors import (
    ConfigError,
)
from privrec.models.dp_als import (
    DPALSSensitivity,
    dpals_event,
    head_threshold,
    resolve_iterations,
    select_head,
)
from privrec.models.dp_ease import (
    HEAD_SNR,
    MAX_CONTRIBUTION,
    REG_SCALE,
)
from privrec.models.dp_rules import dpals_head
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.budget import Budget
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.units import PrivacyUnit
from privrec.secure.silo_wire import DEFAULT_FRAC_BITS, Segment, revealed_std

__all__ = [
    "MAX_RETRIES",
    "AnyConfig",
    "SiloConfig",
    "SiloEASEConfig",
    "check_job",
    "ease_noise",
    "ease_noise_plan",
    "head_by_counts",
    "load_config",
    "noise_plan",
    "noise_scale",
    "release_limits",
    "revealed_sigma",
    "run_fingerprint",
    "silo_head",
]

_C = TypeVar("_C", "SiloConfig", "SiloEASEConfig")


def _with_noise(config: _C) -> _C:
    """``config`` with noise on: post-processing is tuned to the planned noise, so switching
    the noise off (a test hook) changes nothing but the noise."""
    if not config.insecure_disable_noise:
        return config
    return config.model_copy(update={"insecure_disable_noise": False})


# ----------------------------------------------------------------------------------- config
#: at most this many extra releases of each kind (``retries``): each is paid for in the noise
MAX_RETRIES = 10
#: a run id (``privrec silo config`` draws one): letters, digits, ``.``, ``_``, ``-``
RUN_ID_PATTERN = r"^[A-Za-z0-9._-]+$"


class SiloConfig(pydantic.BaseModel):
    """Public training configuration (every field is known to all parties).

    The DPALS hyper-parameters mean what they mean in :class:`privrec.models.DPALS`, with
    the same defaults (``count_sample`` = B, ε-aware ``popularity_blend``, automatic head and
    ridge); the noise-derived defaults see the noise the silo path actually reveals
    (:func:`revealed_sigma`). ``frac_bits`` is the fixed-point precision. ``insecure_disable_noise`` is a **test-only**
    switch: the driver then asks for no noise, the guarantee says ε = ∞, and servers refuse
    such plans unless they were built with ``allow_no_noise=True`` (the CLI never does).

    ``retries`` is how many releases of each kind a server or silo may answer beyond the plan —
    what a resumed run needs to redo a step whose release a party had already answered
    (counted across sessions with a release log, :mod:`privrec.secure.release_log`). The noise
    pays for them: it is sized so that the plan **plus** ``retries`` more releases of each kind
    meet ε (0, the default, changes nothing). ``run_id`` tells one run from another with
    otherwise equal settings (a release log counts per configuration).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    model: Literal["dpals"] = "dpals"
    epsilon: float = pydantic.Field(gt=0, allow_inf_nan=False)
    delta: float = pydantic.Field(gt=0, lt=1)
    n_items: int = pydantic.Field(ge=1)
    factors: int = pydantic.Field(default=32, ge=1, le=1024)
    iterations: int | None = pydantic.Field(default=None, ge=1, le=100)
    method: Literal["uniform", "tail", "adaptive"] = "adaptive"
    max_per_user: int = pydantic.Field(default=100, ge=1)
    adaptive_exponent: float = pydantic.Field(default=0.5, ge=0, le=2)
    clip_norm: float = pydantic.Field(default=0.3, gt=0)
    regularization: float | None = pydantic.Field(default=None, ge=0)
    reg_exponent: float = pydantic.Field(default=0.0, ge=0, le=2)
    user_regularization: float = pydantic.Field(default=0.1, gt=0)
    alpha0: float = pydantic.Field(default=2.0, ge=0)
    head_fraction: float | None = pydantic.Field(default=None, gt=0, le=1)
    head_snr: float = pydantic.Field(default=7.0, ge=0)
    head_min: int = pydantic.Field(default=300, ge=1)
    count_sample: int | None = pydantic.Field(default=None, ge=1)
    gram_noise_ratio: float = pydantic.Field(default=1.0, gt=0)
    lhs_noise_ratio: float = pydantic.Field(default=5.0, gt=0)
    rhs_noise_ratio: float = pydantic.Field(default=1.0, gt=0)
    count_noise_ratio: float = pydantic.Field(default=0.2, gt=0)
    init_scale: float = pydantic.Field(default=0.1, gt=0)
    popularity_blend: float | None = pydantic.Field(default=None, ge=0, le=10, allow_inf_nan=False)
    seed: int | None = None
    frac_bits: int = pydantic.Field(default=DEFAULT_FRAC_BITS, ge=8, le=48)
    retries: int = pydantic.Field(default=0, ge=0, le=MAX_RETRIES)
    run_id: str | None = pydantic.Field(default=None, max_length=64, pattern=RUN_ID_PATTERN)
    insecure_disable_noise: bool = False

    @property
    def ratios(self) -> tuple[float, float, float, float]:
        return (
            self.gram_noise_ratio,
            self.lhs_noise_ratio,
            self.rhs_noise_ratio,
            self.count_noise_ratio,
        )

    @property
    def sampled(self) -> int:
        """Items per user sampled for the noisy counts: ``count_sample``, default B (as DPALS)."""
        return self.max_per_user if self.count_sample is None else self.count_sample


def noise_scale(config: SiloConfig) -> tuple[float, int]:
    """``(σ, T)``: DPALS's noise scale for the whole run under the RDP accountant, and T.

    Public (a function of the configuration only), so the driver and each server compute it
    independently.
    """
    iterations = resolve_iterations(config.iterations, config.epsilon)
    r = config.retries

    def event(s: float) -> Any:
        # the plan (one counts release, T steps) and r more of each kind (answered retries)
        planned = dpals_event(s, iterations + r, config.max_per_user, config.ratios)
        if r == 0:
            return planned
        extra = dp_accounting.SelfComposedDpEvent(gaussian_event(config.ratios[3] * s), r)
        return compose([planned, extra])

    sigma = calibrate(
        Budget(epsilon=config.epsilon, delta=config.delta),
        event,
        kind="rdp",
        unit=PrivacyUnit.USER,
    )
    return sigma, iterations


def revealed_sigma(config: SiloConfig, sigma: float, n_head: int) -> float:
    """The σ that central DPALS's noise-derived defaults should see on the silo path.

    Central DPALS sets its ridge from σ because its left-hand sides carry noise of entry std
    ``r1·σ·Γ²`` (:func:`privrec.models.dp_als.resolve_regularization`). Across silos the
    revealed left-hand sides carry :func:`revealed_std` of their segment,
    ``√2·(r1σ/√B)·(√B·Γ² + √d·2^-f)``, i.e. ``r1·σ'·Γ²`` with
    ``σ' = √2·σ·(1 + √d·2^-f / (√B·Γ²))`` — √2σ up to a rounding term below 1e-6 relative.
    Computed from the planned noise even when it is switched off (test hook).
    """
    lhs = noise_plan(_with_noise(config), sigma, "stats", n_head)[1]
    return revealed_std(lhs, config.frac_bits) / (config.lhs_noise_ratio * config.clip_norm**2)


def silo_head(config: SiloConfig, sigma: float, noisy_counts: np.ndarray) -> np.ndarray:
    """DPALS's head rule on the released counts, with the silo path's right-hand-side noise.

    :func:`~privrec.models.dp_als.head_threshold` gets the revealed right-hand-side noise std
    in units of Γ, ``√2·r2·σ`` (its rounding term depends on the head size, which this
    chooses, and is below 1e-6 relative: left out), and the sampled count ``count_sample``;
    as central DPALS, at most :func:`~privrec.models.dp_rules.head_capacity` items (Σ ñ / k)
    and at least :func:`~privrec.models.dp_rules.head_floor` (the items holding a quarter of
    the noisy count mass, or ``head_min``). Post-processing of the released counts and public
    settings.
    """
    rhs_std = math.sqrt(2.0) * config.rhs_noise_ratio * sigma
    threshold = head_threshold(config.head_snr, rhs_std, config.sampled)
    counts = np.asarray(noisy_counts, dtype=np.float64)
    return dpals_head(
        counts,
        config.head_fraction,
        threshold,
        config.head_min,
        config.factors,
        rhs_std=rhs_std,
        count_sample=config.sampled,
    )


def noise_plan(config: SiloConfig, sigma: float, kind: str, n_head: int = 0) -> list[Segment]:
    """The accounted segments of one release (``kind`` ``"counts"`` or ``"stats"``).

    Counts: one segment over the catalogue, multiplier ``r3·σ``, sensitivity √count_sample.
    Stats: Gramian (``r0·σ``, Γ²), left-hand sides (``r1·σ/√B``, √B Γ²) and right-hand sides
    (``r2·σ/√B``, √B Γ), as :func:`dpals_event` accounts them.
    """
    r0, r1, r2, r3 = config.ratios
    mult = 0.0 if config.insecure_disable_noise else 1.0
    sens = DPALSSensitivity.of(
        PrivacyUnit.USER, config.clip_norm, config.max_per_user, config.sampled
    )
    if kind == "counts":
        return [Segment("noisy item counts", config.n_items, mult * r3 * sigma, sens.counts)]
    if kind != "stats":
        raise ConfigError(f"unknown release kind {kind!r}")
    k, b = config.factors, math.sqrt(config.max_per_user)
    t = k * (k + 1) // 2
    return [
        Segment("Gramian", t, mult * r0 * sigma, sens.gram),
        Segment("item left-hand sides", n_head * t, mult * r1 * sigma / b, sens.lhs),
        Segment("item right-hand sides", n_head * k, mult * r2 * sigma / b, sens.rhs),
    ]


_MAX_EASE_ITEMS = 40_000  # a dense n² Gram matrix, as in DPEASE


def head_by_counts(
    noisy_counts: np.ndarray, max_items: int, threshold: float = math.inf, minimum: int = 1
) -> np.ndarray:
    """DPEASE's head set, sorted by id: the items whose noisy count is at least ``threshold``,
    at least ``minimum`` and at most ``max_items`` of them, the largest counts first.

    The same rule as central DPEASE (:func:`~privrec.models.dp_als.select_head` capped at
    ``max_items``); with the default ``threshold`` (∞) and ``minimum`` 1 it is simply the
    ``max_items`` largest counts. Post-processing of the released counts.
    """
    counts = np.asarray(noisy_counts, dtype=np.float64)
    head = select_head(counts, None, threshold, minimum)
    if len(head) > max_items:
        head = np.sort(np.argsort(-counts, kind="stable")[:max_items])
    return head


class SiloEASEConfig(pydantic.BaseModel):
    """Public configuration of cross-silo DPEASE (every field is known to all parties).

    The hyper-parameters mean what they mean in :class:`privrec.models.DPEASE` (user unit),
    with the same defaults: C = ``MAX_CONTRIBUTION``, a noisy head (``head_snr``,
    ``head_min``, at most ``max_items``), the noise-scaled ridge
    (:func:`~privrec.models.dp_ease.resolve_ease_regularization`) and the ε-aware popularity
    blend, raised by central's low-signal fallback (``popularity_fallback``,
    :func:`~privrec.models.dp_rules.low_signal_blend`) when part of the head is below the
    noise. The noise-derived ones see the noise the silo path reveals (:func:`revealed_std`,
    √2 × one server's σ). ``frac_bits``, ``retries``, ``run_id`` and ``insecure_disable_noise``
    are as in :class:`SiloConfig`.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    model: Literal["dpease"] = "dpease"
    epsilon: float = pydantic.Field(gt=0, allow_inf_nan=False)
    delta: float = pydantic.Field(gt=0, lt=1)
    n_items: int = pydantic.Field(ge=1)
    regularization: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    reg_scale: float = pydantic.Field(default=REG_SCALE, gt=0, allow_inf_nan=False)
    max_contribution: float = pydantic.Field(default=MAX_CONTRIBUTION, gt=0, allow_inf_nan=False)
    max_per_user: int = pydantic.Field(default=30, ge=1)
    max_items: int = pydantic.Field(default=5000, ge=1)
    head_snr: float = pydantic.Field(default=HEAD_SNR, ge=0, allow_inf_nan=False)
    head_min: int = pydantic.Field(default=100, ge=1)
    count_budget_fraction: float = pydantic.Field(default=0.1, gt=0, lt=1)
    popularity_blend: float | None = pydantic.Field(default=None, ge=0, le=10, allow_inf_nan=False)
    popularity_fallback: bool = True
    frac_bits: int = pydantic.Field(default=DEFAULT_FRAC_BITS, ge=8, le=48)
    retries: int = pydantic.Field(default=0, ge=0, le=MAX_RETRIES)
    run_id: str | None = pydantic.Field(default=None, max_length=64, pattern=RUN_ID_PATTERN)
    insecure_disable_noise: bool = False

    @pydantic.model_validator(mode="after")
    def _dense_size(self) -> SiloEASEConfig:
        if min(self.n_items, self.max_items) > _MAX_EASE_ITEMS:
            raise ValueError(
                f"DPEASE needs a dense {min(self.n_items, self.max_items)}² Gram matrix; "
                f"lower max_items to at most {_MAX_EASE_ITEMS}"
            )
        return self

    @property
    def restricted(self) -> bool:
        """Whether a head set is chosen first from noisy counts (catalogue > ``max_items``, or
        the head rule is on: ``head_snr > 0``), as central DPEASE decides."""
        return self.n_items > self.max_items or self.head_snr > 0


AnyConfig = SiloConfig | SiloEASEConfig


def load_config(text: str) -> AnyConfig:
    """A :class:`SiloConfig` or :class:`SiloEASEConfig` from its JSON (by its ``model`` field)."""
    try:
        kind = json.loads(text).get("model", "dpals")
        if kind == "dpease":
            return SiloEASEConfig.model_validate_json(text)
        return SiloConfig.model_validate_json(text)
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"not a silo configuration: {exc}") from None


def ease_noise(config: SiloEASEConfig) -> tuple[float, float | None]:
    """``(z_gram, z_count)``: DPEASE's multipliers under the RDP accountant (``z_count`` is
    ``None`` when the whole catalogue is used).

    Same split as central DPEASE with ``accountant="rdp"``: a share ``f`` of the rate Σ 1/z²
    goes to the head-selection counts when a head is selected (:attr:`SiloEASEConfig.restricted`). Public (a
    function of the configuration only), so the driver and each server compute it.
    """
    budget = Budget(epsilon=config.epsilon, delta=config.delta)
    times = 1 + config.retries  # each release and its answered retries (SiloConfig.retries)

    def repeated(event: Any) -> Any:
        return event if times == 1 else dp_accounting.SelfComposedDpEvent(event, times)

    if not config.restricted:
        z = calibrate(
            budget, lambda v: repeated(gaussian_event(v)), kind="rdp", unit=PrivacyUnit.USER
        )
        return z, None
    f = config.count_budget_fraction
    z = calibrate(
        budget,
        lambda v: repeated(
            compose([gaussian_event(v / math.sqrt(f)), gaussian_event(v / math.sqrt(1 - f))])
        ),
        kind="rdp",
        unit=PrivacyUnit.USER,
    )
    return z / math.sqrt(1 - f), z / math.sqrt(f)


def ease_noise_plan(
    config: SiloEASEConfig, z: tuple[float, float | None], kind: str, n_head: int = 0
) -> list[Segment]:
    """The accounted segment of one DPEASE release (``kind`` ``"counts"`` or ``"gram"``).

    Counts: the catalogue, multiplier ``z_count``, sensitivity √max_per_user (at most that
    many sampled items per user). Gram: its upper triangle over the head, multiplier
    ``z_gram``, sensitivity C (``max_contribution``), as DPEASE accounts them.
    """
    mult = 0.0 if config.insecure_disable_noise else 1.0
    z_gram, z_count = z
    if kind == "counts" and z_count is not None:
        return [
            Segment(
                "noisy item counts (head selection)",
                config.n_items,
                mult * z_count,
                math.sqrt(config.max_per_user),
            )
        ]
    if kind != "gram":
        raise ConfigError(f"unknown DPEASE release kind {kind!r}")
    t = n_head * (n_head + 1) // 2
    return [Segment("noisy item Gram matrix", t, mult * z_gram, config.max_contribution)]


def release_limits(config: AnyConfig) -> dict[str, int]:
    """How many releases of each kind a run of ``config`` may be answered (DPALS: one counts
    release and T steps; DPEASE: at most one counts release and one Gramian), each plus the
    configuration's ``retries``, which its noise pays for. A server or silo refuses more:
    answering a repeated release would let a driver average its noise away."""
    r = config.retries
    if isinstance(config, SiloConfig):
        return {"counts": 1 + r, "stats": noise_scale(config)[1] + r}
    # without a head to select (not restricted) DPEASE releases no counts: none is paid for
    return {"counts": 1 + r, "gram": 1 + r} if config.restricted else {"gram": 1 + r}


def run_fingerprint(config: AnyConfig) -> str:
    """SHA-256 of the configuration's canonical JSON: what a release log counts a run by (two
    runs with equal settings are one run to it, unless their ``run_id`` differs)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_job(config: AnyConfig, meta: dict[str, Any]) -> None:
    """Refuse a job whose parameters would make the silo's statistics more sensitive (or its
    fixed-point encoding finer) than ``config`` — the noise the servers add is sized from
    ``config``, so a driver lying in the job could otherwise lower the noise relative to the
    signal — or whose settings differ from the configuration's where the silo's computation
    could then fail depending on its data (bounds must be positive; the weighting and solve
    settings must be the configuration's). Raises :class:`~privrec.errors.ConfigError` naming
    the field."""

    def at_most(field: str, limit: float) -> None:
        # positive too: a negative bound has the same size as a large one (min(1, C/n) with
        # C < 0), and a review made a silo's encoding fail only when one user held an item
        if not 0 < float(meta[field]) <= limit:
            raise ConfigError(
                f"the job's {field} {meta[field]!r} is not in (0, {limit:g}], the configuration's"
            )

    def same(field: str, value: object) -> None:
        # settings the noise plan takes from the configuration: a job may not change them (an
        # adaptive exponent of −200 turned one user's weight into NaN — an error only when that
        # user held a chosen item, a noise-free bit to the driver)
        if meta.get(field) != value:
            raise ConfigError(
                f"the job's {field} {meta.get(field)!r} is not the configuration's {value!r}"
            )

    if int(meta["frac_bits"]) != config.frac_bits:
        raise ConfigError(
            f"the job's frac_bits {meta['frac_bits']!r} is not the configuration's {config.frac_bits}"
        )
    if int(meta["n_items"]) != config.n_items:
        raise ConfigError(
            f"the job's catalogue has {meta['n_items']!r} items, the configuration {config.n_items}"
        )
    kind = meta["kind"]
    if kind not in release_limits(config):
        raise ConfigError(f"a {config.model} session makes no {kind!r} release")
    if isinstance(config, SiloConfig):
        if kind == "counts":
            at_most("count_sample", config.sampled)
        else:
            at_most("max_per_user", config.max_per_user)
            at_most("clip_norm", config.clip_norm)
            for field in ("method", "adaptive_exponent", "alpha0", "user_regularization"):
                same(field, getattr(config, field))
    elif kind == "counts":
        at_most("count_sample", config.max_per_user)
    else:
        at_most("max_contribution", config.max_contribution)
        at_most("max_per_user", config.max_per_user)
