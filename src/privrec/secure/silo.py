"""Cross-silo DPALS and DPEASE: K data holders, two non-colluding aggregation servers, one DP model.

Roles (one process each, or threads for tests — :func:`run_local`)
    * **silos** (:class:`Silo`) hold disjoint sets of users over one shared item catalogue.
      Per step they solve their own users exactly from the released item factors, clip them
      to Γ and compute the DPALS item-step statistics with the per-user bounds of central
      DPALS (:func:`silo_statistics`); once, the sampled item counts (:func:`silo_counts`).
      For DPEASE (:class:`SiloEASEConfig`) they compute central DPEASE's bounded item Gram
      matrix instead (:func:`silo_gram`). The vector is encoded in fixed point and split into
      two additive shares mod 2^64: server 0 gets the first as its 32-byte PRG seed (sent
      before the silo computes), server 1 the second as an array (:func:`seed_share`); both
      sends run at once.
    * **aggregation servers** (:class:`AggregationServer`) sum the shares they receive, add
      their own discrete-Gaussian noise share (in fixed point, drawn in the background while
      the shares arrive, or ahead of a repeated plan) and send the partial sum to the driver.
      Each sees only uniformly random shares or their seeds.
    * the **driver** (:class:`Driver`, :class:`EASEDriver`) holds no data: it sends each
      step's public inputs (released item factors, head items, noisy counts), waits for both
      partials at once, adds them, decodes, and solves as DPALS (PSD projection, item solve)
      or DPEASE (EASE on the noisy Gram matrix) does, checkpointing after each completed
      release. It may run inside a silo's organisation. Head rules, ridges and the popularity
      blend are central DPALS's and DPEASE's own functions, fed with the noise the driver
      actually sees (both servers' shares: :func:`revealed_std`).

All traffic goes over :mod:`privrec.secure.channel` (X25519 + HKDF-SHA256 + AES-GCM with
static keys from the set-up roster).

Fixed point
    A statistic ``v`` is sent as ``round(v · 2^f)`` (``f = frac_bits``, default 32) in two's
    complement mod 2^64. Each silo refuses values with ``|round(v·2^f)| > 2^62 / K`` and each
    server's noise is required to satisfy ``40·σ_int < 2^60`` (a discrete Gaussian exceeds
    40σ with probability < 1e-340), so the noisy sum stays inside ``(-2^63, 2^63)`` and is
    decoded exactly. Rounding error: at most ``K · 2^-(f+1)`` per coordinate of the sum
    (1.2e-10·K for f = 32), and the largest statistic is ``2^(62-f)/K`` (2^30/K for f = 32,
    far above the ``n_users·√B·Γ`` bound of DPALS statistics on any realistic data).

Privacy (user level, over the union of the silos; users must be disjoint across silos)
    Release ``i`` (counts, Gramian, item left- and right-hand sides of each step) has L2
    sensitivity ``Δ_i`` (:meth:`DPALSSensitivity.of`, same bounds as central DPALS). In fixed
    point a silo's encoded vector changes by at most ``Δ_i·2^f + √d_i`` when one of its users
    is removed (rounding moves each of the ``d_i`` coordinates by < 1 more). Each server adds
    ``N_Z(0, σ_i²)`` per coordinate with ``σ_i = z_i·(Δ_i·2^f + √d_i)``, ``z_i`` the DPALS
    multiplier of that release. *Against either server alone* (and a fortiori against the
    silos, the driver and anyone who sees the model): that server knows its own noise, so
    what it learns is at most the sum plus the *other* server's noise — one discrete
    Gaussian of multiplier ``z_i`` — while its shares are uniformly random and independent of
    the data. One discrete Gaussian has the Rényi-DP curve ``α/(2 z²)`` of the continuous
    Gaussian (Canonne, Kamath & Steinke 2020; :func:`privrec.privacy.distributed.ddg_rdp`
    with n = 1), so each release is recorded as ``GaussianDpEvent(z_i)`` and composed with
    dp-accounting's **RDP** accountant (not PLD, which would be exact only for continuous
    noise). The second server's noise is ignored by the accounting (conservative): the
    revealed sum carries variance ``2σ_i²``, the price of not trusting either server. Budget
    is calibrated with the same event structure as DPALS (:func:`dpals_event`).
    Non-collusion is an assumption: the two servers together can remove all noise and
    recover every silo's statistics.

Faults
    A silo or server that disconnects, times out, or sends a message that fails
    authentication makes the step abort with :class:`~privrec.errors.ProtocolAbort`;
    the driver tells everyone to drop the step. Nothing is revealed: a single partial is the
    sum of one server's uniformly random shares plus noise, independent of the data, and
    every retry uses fresh shares and noise. The driver journals a release's events to the
    checkpoint *before* it combines the two partials, so a crash can only over-count the
    budget; ``resume`` restarts from the last completed step.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.errors import (
    ConfigError,
    InvalidInputError,
    MessageRejected,
    PeerUnavailable,
    ProtocolAbort,
)
from privrec.models.als_kernels import gramian, item_statistics
from privrec.models.dp_als import (
    DPALSSensitivity,
    dpals_event,
    exact_user_solve,
    head_threshold,
    resolve_iterations,
    resolve_popularity_blend,
    resolve_regularization,
    select_head,
    user_weights,
)
from privrec.models.dp_ease import (
    HEAD_SNR,
    MAX_CONTRIBUTION,
    REG_SCALE,
    bounded_gram,
    resolve_ease_blend,
    resolve_ease_regularization,
)
from privrec.models.dp_popularity import bounded_counts
from privrec.models.ease import ease_from_gram
from privrec.models.private import blend_popularity, head_item_scores
from privrec.privacy.accounting import calibrate, compose
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import clip_rows
from privrec.privacy.distributed import sample_discrete_gaussian
from privrec.privacy.events import SpentEvent
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.postprocessing import project_psd, psd_solve
from privrec.privacy.randomness import secure_generator
from privrec.privacy.units import PrivacyUnit
from privrec.secure.channel import (
    Channel,
    Identity,
    Listener,
    Roster,
    check_port,
    connect,
    generate_keys,
)
from privrec.secure.prg import add_mask, expand

__all__ = [
    "DEFAULT_FRAC_BITS",
    "AggregationServer",
    "AnyConfig",
    "Driver",
    "EASEDriver",
    "Segment",
    "Silo",
    "SiloConfig",
    "SiloEASEConfig",
    "SiloEASEResult",
    "SiloResult",
    "decode_fixed",
    "ease_noise",
    "ease_noise_plan",
    "encode_fixed",
    "fixed_sigma",
    "head_by_counts",
    "load_config",
    "make_driver",
    "noise_plan",
    "noise_scale",
    "revealed_sigma",
    "revealed_std",
    "run_local",
    "seed_share",
    "setup_keys",
    "silo_counts",
    "silo_gram",
    "silo_head",
    "silo_statistics",
    "split_shares",
    "unpack_gram",
    "unpack_statistics",
]

DEFAULT_FRAC_BITS = 32
# message types
JOB, SHARE, PLAN, PARTIAL, ABORT, BYE, FAILED, SEED = 1, 2, 3, 4, 5, 6, 7, 8
_IDLE = 3600.0  # how long silos and servers wait for the driver's next step
_NOISE_LIMIT = 2.0**60 / 40.0
_C = TypeVar("_C", "SiloConfig", "SiloEASEConfig")


# ------------------------------------------------------------------------------------ codec
_DTYPES = {"<f8", "<f4", "<i8", "<i4", "<u8"}


def _pack(meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """JSON header + raw little-endian arrays (no pickle: a payload can never run code)."""
    arrays = arrays or {}
    specs, blobs, offset = [], [], 0
    for name, a in arrays.items():
        arr = np.ascontiguousarray(a)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        specs.append([name, arr.dtype.str, list(arr.shape), offset, arr.nbytes])
        blobs.append(arr.tobytes())
        offset += arr.nbytes
    head = json.dumps({"meta": meta, "arrays": specs}).encode()
    return struct.pack("<I", len(head)) + head + b"".join(blobs)


def _unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        (n,) = struct.unpack("<I", data[:4])
        head = json.loads(data[4 : 4 + n])
        body = memoryview(data)[4 + n :]
        arrays = {}
        for name, dtype, shape, offset, nbytes in head["arrays"]:
            if dtype not in _DTYPES or offset + nbytes > len(body):
                raise ValueError(f"bad array {name!r}")
            a = np.frombuffer(body[offset : offset + nbytes], dtype=np.dtype(dtype))
            arrays[str(name)] = a.reshape(shape)
        return dict(head["meta"]), arrays
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise MessageRejected(f"malformed payload: {exc}") from None


# ------------------------------------------------------------------------------ fixed point
def encode_fixed(
    x: np.ndarray,
    frac_bits: int,
    n_silos: int,
    *,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """``round(x·2^f)`` as two's-complement ``uint64``; refuses values that could overflow the sum.

    Raises :class:`InvalidInputError` when some ``|round(x·2^f)| > 2^62 / n_silos`` (then the
    sum of ``n_silos`` encodings plus the bounded noise might wrap mod 2^64) or ``x`` is not
    finite. ``out`` (``uint64``) and ``scratch`` (``float64``), both of ``x``'s size, are
    optional reused buffers: a silo encodes a vector of the same size every step, and fresh
    multi-megabyte arrays cost more in page faults than the arithmetic.
    """
    v = np.asarray(x, dtype=np.float64).ravel()
    z = np.empty(v.size) if scratch is None else scratch[: v.size]
    np.multiply(v, 2.0**frac_bits, out=z)
    np.rint(z, out=z)
    limit = 2.0**62 / n_silos
    if z.size:
        big = max(float(z.max()), -float(z.min()))  # NaN propagates into both
        if not math.isfinite(big):
            raise InvalidInputError("statistics must be finite")
        if big > limit:
            raise InvalidInputError(
                f"a statistic is too large for fixed point with {frac_bits} fractional bits "
                f"and {n_silos} silos (|value| ≤ {limit / 2.0**frac_bits:.3g})"
            )
    res = np.empty(v.size, dtype=np.uint64) if out is None else out[: v.size]
    np.copyto(res.view(np.int64), z, casting="unsafe")  # |z| ≤ 2^62: exact
    return res


def decode_fixed(s: np.ndarray, frac_bits: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed` for a (noisy) sum mod 2^64."""
    out: np.ndarray = np.multiply(np.asarray(s, dtype=np.uint64).view(np.int64), 2.0**-frac_bits)
    return out


def split_shares(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two additive shares mod 2^64: ``r`` uniform (AES-256-CTR keyed from ``os.urandom``), ``v - r``.

    Either share alone is uniformly distributed and independent of ``v``. The protocol sends
    the first share in compressed form, as its 32-byte seed (:func:`seed_share`).
    """
    v = np.asarray(v, dtype=np.uint64)
    r = expand(os.urandom(32), v.size, 64).astype(np.uint64).reshape(v.shape)
    return r, v - r


def seed_share(v: np.ndarray, seed: bytes) -> np.ndarray:
    """The second share ``v - PRG(seed)`` mod 2^64, computed in place in ``v`` (``uint64``).

    The first share is ``PRG(seed)`` = :func:`privrec.secure.prg.expand` ``(seed, len(v), 64)``
    (AES-256-CTR), so a silo sends the first server only the 32-byte ``seed`` (drawn from
    ``os.urandom``) and the second server ``v - PRG(seed)``; the first server expands the seed
    itself (:func:`privrec.secure.prg.add_mask`). Either server's view is still independent of
    ``v``: the seed is, and ``v - PRG(seed)`` is uniform to anyone without the seed. This
    halves the bytes a silo sends and encrypts, and the seed can leave before the statistics
    are computed, so the first server's partial sum never waits for the silos.
    """
    add_mask(v, seed, subtract=True)
    return v


@dataclass(frozen=True)
class Segment:
    """One accounted release inside a shared vector: its length, multiplier z and sensitivity Δ."""

    name: str
    length: int
    z: float
    sensitivity: float


def fixed_sigma(seg: Segment, frac_bits: int) -> float:
    """Each server's discrete-Gaussian σ (integer units): ``z·(Δ·2^f + √d)`` (rounding included)."""
    return seg.z * (seg.sensitivity * 2.0**frac_bits + math.sqrt(seg.length))


def revealed_std(seg: Segment, frac_bits: int) -> float:
    """Per-coordinate noise std of the revealed (decoded) sum: ``√2 · fixed_sigma · 2^-f``.

    Both servers' partial sums are added, so the driver sees two independent discrete
    Gaussians of σ each (variance ``2σ²``; the accounting counts only one of them). This,
    not the accounted multiplier, is the noise the post-processing has to cope with, so the
    noise-derived defaults (head threshold, ridge) are computed from it. Public: a function
    of the configuration only.
    """
    return math.sqrt(2.0) * fixed_sigma(seg, frac_bits) * 2.0**-frac_bits


def _with_noise(config: _C) -> _C:
    """``config`` with noise on: post-processing is tuned to the planned noise, so switching
    the noise off (a test hook) changes nothing but the noise."""
    if not config.insecure_disable_noise:
        return config
    return config.model_copy(update={"insecure_disable_noise": False})


# ------------------------------------------------------------------------------- statistics
def silo_counts(x: sp.csr_matrix, count_sample: int, rng: np.random.Generator) -> np.ndarray:
    """Item counts over at most ``count_sample`` sampled items per user (L2 sensitivity √cs)."""
    return bounded_counts(binary(x), PrivacyUnit.USER, count_sample, rng)[0]


def binary(x: Any) -> sp.csr_matrix:
    """A CSR copy of ``x`` with every stored value set to 1 (implicit feedback), sorted indices."""
    out: sp.csr_matrix = sp.csr_matrix(x, dtype=np.float64, copy=True)
    out.data[:] = 1.0
    out.sort_indices()
    return out


def user_solve(xh: sp.csr_matrix, y: np.ndarray, alpha0: float, reg: float) -> np.ndarray:
    """Exact iALS user factors from the released item factors (the same solve as DPALS's fold-in)."""
    return exact_user_solve(xh, y, alpha0, reg)


def silo_statistics(
    xh: sp.csr_matrix,
    weights: sp.csr_matrix,
    y: np.ndarray,
    *,
    alpha0: float,
    user_regularization: float,
    clip_norm: float,
) -> np.ndarray:
    """One silo's DPALS item-step statistics as one float64 vector.

    Users are solved exactly, clipped to ``clip_norm`` and contribute ``x_u x_uᵀ`` to the
    Gramian, ``c_uj x_u x_uᵀ`` and ``c_uj x_u`` to item ``j``'s left- and right-hand sides
    (``weights`` holds ``c_uj`` with ``Σ_j c_uj² ≤ B``). Layout: upper triangle of the
    Gramian, upper triangles of the ``n_head`` left-hand sides, the right-hand sides
    (:func:`unpack_statistics`). Symmetric matrices travel as upper triangles: half the
    bytes, and the triangle's L2 norm is at most the Frobenius one, so the sensitivities hold.
    The statistics are additive over users, so the sum over silos equals this function on
    the union of their users.
    """
    u = clip_rows(user_solve(xh, y, alpha0, user_regularization), clip_norm)
    k = y.shape[1]
    iu = np.triu_indices(k)
    g = gramian(u)[iu]
    lhs, rhs = item_statistics(weights, u, weights.data, alpha0=0.0)
    return np.concatenate([g, lhs[:, iu[0], iu[1]].ravel(), rhs.ravel()])


def unpack_statistics(v: np.ndarray, n_head: int, k: int) -> tuple[np.ndarray, ...]:
    """Gramian ``(k, k)``, left-hand sides ``(n_head, k, k)``, right-hand sides ``(n_head, k)``."""
    t = k * (k + 1) // 2
    iu = np.triu_indices(k)
    g = np.zeros((k, k))
    g[iu] = v[:t]
    g = g + np.triu(g, 1).T
    lhs = np.zeros((n_head, k, k))
    lhs[:, iu[0], iu[1]] = v[t : t + n_head * t].reshape(n_head, t)
    lhs = lhs + np.transpose(np.triu(lhs, 1), (0, 2, 1))
    rhs = v[t + n_head * t :].reshape(n_head, k)
    return g, lhs, rhs


# ----------------------------------------------------------------------------------- config
class SiloConfig(pydantic.BaseModel):
    """Public training configuration (every field is known to all parties).

    The DPALS hyper-parameters mean what they mean in :class:`privrec.models.DPALS`, with
    the same defaults (``count_sample`` = B, ε-aware ``popularity_blend``, automatic head and
    ridge); the noise-derived defaults see the noise the silo path actually reveals
    (:func:`revealed_sigma`). ``frac_bits`` is the fixed-point precision. ``insecure_disable_noise`` is a **test-only**
    switch: the driver then asks for no noise, the guarantee says ε = ∞, and servers refuse
    such plans unless they were built with ``allow_no_noise=True`` (the CLI never does).
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
    sigma = calibrate(
        Budget(epsilon=config.epsilon, delta=config.delta),
        lambda s: dpals_event(s, iterations, config.max_per_user, config.ratios),
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
    chooses, and is below 1e-6 relative: left out), and the sampled count ``count_sample``.
    Post-processing of the released counts and public settings.
    """
    rhs_std = math.sqrt(2.0) * config.rhs_noise_ratio * sigma
    threshold = head_threshold(config.head_snr, rhs_std, config.sampled)
    return select_head(
        np.asarray(noisy_counts, dtype=np.float64), config.head_fraction, threshold, config.head_min
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


@dataclass
class SiloResult:
    """What cross-silo training releases, with its guarantee and timings."""

    item_factors: np.ndarray
    head_items: np.ndarray
    noisy_counts: np.ndarray
    noise_scale: float
    guarantee: PrivacyGuarantee
    #: the item ridge λ the driver used (from public settings and the planned noise)
    regularization: float = 0.0
    #: β of the popularity blend at scoring time (0: factor scores alone)
    popularity_blend: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    solve_seconds: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    #: per silo, seconds of local statistics computation per release (filled by run_local)
    silo_seconds: list[list[float]] = field(default_factory=list)
    #: per-release timings of every role (filled by run_local): ``driver`` (round, receive,
    #: decode), ``servers`` (noise, receive, sum, send, per server) and ``silos`` (compute,
    #: encode, send, per silo); "receive" counts from the first byte of a message, not waiting
    timings: dict[str, Any] = field(default_factory=dict)

    def user_factors(self, user_items: Any, config: SiloConfig) -> np.ndarray:
        """A silo's own users' factors from the released item factors (never leaves the silo)."""
        xh = binary(sp.csr_matrix(user_items)[:, self.head_items])
        y = self.item_factors[self.head_items].astype(np.float64)
        return user_solve(xh, y, config.alpha0, config.user_regularization)

    def scores(self, user_items: Any, config: SiloConfig) -> np.ndarray:
        """Scores over the catalogue for each row of ``user_items`` (``-inf`` off the head), as
        central DPALS scores: factor scores blended with the released noisy counts
        (:func:`~privrec.models.private.blend_popularity`, β = ``popularity_blend``); with
        β = 0, raw factor scores and the noisy-count ranking for users without history.

        Runs inside a silo on its own users' histories (joint DP: post-processing of the
        released item factors and counts plus the user's own data).
        """
        u = self.user_factors(user_items, config).astype(np.float32)  # float32, as central
        return head_item_scores(
            u, self.item_factors, self.head_items, self.noisy_counts, self.popularity_blend
        )


# ---------------------------------------------------------------------------------- DPEASE
_MAX_EASE_ITEMS = 40_000  # a dense n² Gram matrix, as in DPEASE


def silo_gram(
    x: sp.csr_matrix, max_contribution: float, max_per_user: int, rng: np.random.Generator
) -> np.ndarray:
    """One silo's bounded item Gram matrix (DPEASE, user unit) as its upper triangle.

    :func:`privrec.models.dp_ease.bounded_gram` on the silo's own users (already restricted to
    the head items): user ``u`` enters with weight ``min(1, C/n_u)``, so their term has
    Frobenius norm ≤ C. The upper triangle (row-major, diagonal included) has L2 norm at
    most the Frobenius one and is all that symmetric noise needs. Additive over users: the
    sum over silos is the same function on the union.
    """
    g, _ = bounded_gram(x, PrivacyUnit.USER, max_contribution, max_per_user, rng)
    out: np.ndarray = g[_triu_mask(g.shape[0])]
    return out


def _triu_mask(n: int) -> np.ndarray:
    return np.triu(np.ones((n, n), dtype=bool))


def unpack_gram(v: np.ndarray, n: int) -> np.ndarray:
    """The symmetric ``(n, n)`` matrix from its upper triangle (as :func:`silo_gram` lays it out)."""
    g = np.zeros((n, n))
    g[_triu_mask(n)] = v
    g += np.triu(g, 1).T
    return g


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
    blend. The noise-derived ones see the noise the silo path reveals (:func:`revealed_std`,
    √2 × one server's σ). ``frac_bits`` and ``insecure_disable_noise`` are as in
    :class:`SiloConfig`.
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
    frac_bits: int = pydantic.Field(default=DEFAULT_FRAC_BITS, ge=8, le=48)
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
    if not config.restricted:
        z = calibrate(budget, gaussian_event, kind="rdp", unit=PrivacyUnit.USER)
        return z, None
    f = config.count_budget_fraction
    z = calibrate(
        budget,
        lambda v: compose([gaussian_event(v / math.sqrt(f)), gaussian_event(v / math.sqrt(1 - f))]),
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


@dataclass
class SiloEASEResult:
    """What cross-silo DPEASE releases, with its guarantee and timings."""

    weights: np.ndarray
    head_items: np.ndarray
    item_popularity: np.ndarray
    noisy_counts: np.ndarray | None
    noise_multiplier: float
    guarantee: PrivacyGuarantee
    #: the EASE ridge λ the driver used (from public settings and the planned noise)
    regularization: float = 0.0
    #: β of the popularity blend at scoring time (0: EASE scores alone)
    popularity_blend: float = 0.0
    round_seconds: list[float] = field(default_factory=list)
    solve_seconds: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    #: per-release timings of every role (filled by run_local; see SiloResult.timings)
    timings: dict[str, Any] = field(default_factory=dict)

    def scores(self, user_items: Any) -> np.ndarray:
        """Scores for each row of ``user_items`` over the catalogue (``-inf`` off the head), as
        central DPEASE scores: ``x_u B`` blended with the released popularity (the Gram
        diagonal; :func:`~privrec.models.private.blend_popularity`, β = ``popularity_blend``);
        with β = 0, raw ``x_u B`` and the popularity for users without head history. Uses
        each user's own history only (joint DP)."""
        x = binary(sp.csr_matrix(user_items)[:, self.head_items])
        out = np.full((x.shape[0], sp.csr_matrix(user_items).shape[1]), -np.inf, np.float32)
        raw = np.asarray(x @ self.weights, dtype=np.float32)
        if self.popularity_blend > 0:
            out[:, self.head_items] = blend_popularity(
                raw, self.item_popularity, self.popularity_blend
            )
            return out
        out[:, self.head_items] = raw
        cold = np.diff(x.indptr) == 0
        if cold.any():
            out[np.ix_(cold, self.head_items)] = self.item_popularity
        return out


# ------------------------------------------------------------------------------------ roles
def _safe_send(ch: Channel, step: int, kind: int, payload: bytes) -> None:
    with contextlib.suppress(PeerUnavailable, OSError):
        ch.send(step, kind, payload)


def _accept(listener: Listener, timeout: float) -> Channel:
    """Next roster party to complete the handshake; failed handshakes are dropped, not fatal.

    A port scanner or an impostor without a roster key must not be able to stop a session,
    so only silence until ``timeout`` (overall) raises :class:`PeerUnavailable`.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerUnavailable(f"{listener.me.name}: not every party connected in time")
        try:
            return listener.accept(left)
        except MessageRejected:
            continue


def _recv_step(ch: Channel, step: int, kinds: set[int], timeout: float) -> tuple[int, bytes]:
    """Next frame for ``step`` with a type in ``kinds``; frames of older (aborted) steps are skipped."""
    while True:
        got_step, kind, payload = ch.recv_any(timeout)
        if got_step < step:
            continue
        if got_step != step or kind not in kinds:
            raise MessageRejected(
                f"unexpected message type {kind} for step {got_step} from {ch.peer!r}"
            )
        return kind, payload


def _recv_array(
    ch: Channel, step: int, kind: int, out: np.ndarray, timeout: float
) -> tuple[float, float]:
    """Receive ``out.nbytes`` bytes of type ``kind`` for ``step`` straight into ``out``.

    Frames of older (aborted) steps are authenticated and skipped; a ``FAILED`` message
    raises :class:`ProtocolAbort` with the sender's reason. Returns the wall seconds from the
    first byte of the message to its last chunk being authenticated and decrypted (transfer
    and AES-GCM, not the wait for the sender), and this thread's CPU seconds for it.
    """
    view = out.reshape(-1).view(np.uint8).data
    total, pos, t0 = len(view), 0, 0.0
    c0 = time.thread_time()
    while True:
        got_step, got_kind, body = ch.recv_frame(timeout)
        if pos == 0:
            t0 = time.perf_counter()
        if got_step < step:
            ch.open_frame(got_step, got_kind, body)
            continue
        if got_step == step and got_kind == FAILED and pos == 0:
            raise ProtocolAbort("aggregate", ch.open_frame(got_step, got_kind, body).decode())
        n = len(body) - 16
        if got_step != step or got_kind != kind or pos + n > total or n <= 0:
            ch.open_frame(got_step, got_kind, body)  # authentic, but not what was expected
            raise MessageRejected(
                f"unexpected message type {got_kind} ({n} bytes) for step {got_step} "
                f"from {ch.peer!r}"
            )
        ch.open_frame(got_step, got_kind, body, view[pos : pos + n])
        pos += n
        if pos == total:
            return time.perf_counter() - t0, time.thread_time() - c0


class AggregationServer:
    """One of the two non-colluding servers: sums shares, adds its discrete-Gaussian noise share.

    The first server in the roster's order receives each silo's share as a 32-byte seed
    (:func:`seed_share`) and expands it; the second receives the other share as an array.

    Parameters
    ----------
    identity, roster
        This server's key and the set-up roster (it listens on its roster address).
    timeout
        Seconds to wait for any single share once a step has started.
    allow_no_noise
        TEST ONLY: accept plans without noise (the CLI never sets it).
    crash_at_round
        TEST ONLY: drop every connection when this round's plan arrives (a killed server).
    config
        The public training configuration (:class:`SiloConfig` or :class:`SiloEASEConfig`),
        if this server was given its own copy (CLI: ``--config``). Then the server recomputes
        each release's noise from it and refuses a plan with less noise, so a driver cannot
        lower the noise it adds; without it the server only refuses plans without noise.
    """

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        *,
        timeout: float = 60.0,
        allow_no_noise: bool = False,
        crash_at_round: int | None = None,
        config: AnyConfig | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self._z: Any = None
        if isinstance(config, SiloConfig):
            self._z = noise_scale(config)[0]
        elif isinstance(config, SiloEASEConfig):
            self._z = ease_noise(config)
        self.roster = roster
        self.timeout = timeout
        self.allow_no_noise = allow_no_noise
        self.crash_at_round = crash_at_round
        self.listener = Listener(identity, roster, timeout=timeout)
        self.seed_holder = roster.names("server").index(identity.name) == 0
        self.timings: list[dict[str, float]] = []
        self._scratch = np.empty(0, dtype=np.uint64)
        self._sum = np.empty(0, dtype=np.uint64)

    def run(self) -> None:
        """Serve one training session (returns on BYE, raises if the session breaks)."""
        silos = self.roster.names("silo")
        driver_name = self.roster.names("driver")[0]
        chans: dict[str, Channel] = {}
        # Noise depends only on the public plan: it is drawn in the background while the shares
        # arrive, and since every DPALS step has the same plan, the next step's noise is drawn
        # right after a partial is sent (while the driver solves and the silos compute) and
        # used if the next plan is the same.
        pool = ThreadPoolExecutor(2, thread_name_prefix=f"{self.identity.name}-noise")
        ahead: tuple[bytes, Future[tuple[np.ndarray, tuple[float, float]]]] | None = None
        try:
            while len(chans) < len(silos) + 1:
                ch = _accept(self.listener, max(self.timeout, 30.0))
                if ch.peer in chans or self.roster[ch.peer].role == "server":
                    ch.close()
                    raise MessageRejected(f"unexpected connection from {ch.peer!r}")
                chans[ch.peer] = ch
            driver = chans[driver_name]
            while True:
                step, kind, payload = driver.recv_any(_IDLE)
                if kind == BYE:
                    return
                if kind == ABORT:
                    continue
                if kind != PLAN:
                    raise MessageRejected(f"server expected a plan, got type {kind}")
                if self.crash_at_round is not None and step >= self.crash_at_round:
                    return  # the finally block drops every connection, like a killed process
                try:
                    segments, dim, repeats = self._check_plan(payload)
                    drawn_ahead = ahead is not None and ahead[0] == payload
                    if ahead is None or not drawn_ahead:  # draw it while the shares arrive
                        ahead = (payload, pool.submit(_draw_noise, segments, dim))
                    noise_future, ahead = ahead[1], None
                    partial, noise_s = self._aggregate(
                        step, dim, noise_future, [chans[s] for s in silos]
                    )
                except (PeerUnavailable, MessageRejected, ConfigError, InvalidInputError) as exc:
                    _safe_send(driver, step, FAILED, f"{self.identity.name}: {exc}".encode())
                    if isinstance(exc, PeerUnavailable | MessageRejected):
                        raise  # a broken silo connection ends the session
                    continue
                clock = _Clock()
                driver.send_array(step, PARTIAL, partial)
                sent_s = clock.read()
                self.timings[-1].update(
                    send=sent_s[0],
                    send_cpu=sent_s[1],
                    noise=noise_s[0],
                    noise_cpu=noise_s[1],
                    noise_ahead=float(drawn_ahead),
                )
                if repeats:
                    ahead = (payload, pool.submit(_draw_noise, segments, dim))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for ch in chans.values():
                ch.close()
            self.listener.close()

    def _check_plan(self, payload: bytes) -> tuple[list[tuple[int, float]], int, bool]:
        """The plan's segments ``(length, σ)`` and dimension, and whether the next release is
        likely to repeat it (DPALS steps), after checking its noise."""
        meta, _ = _unpack(payload)
        dim = int(meta["dim"])
        segments = [(int(n), float(s)) for n, s in meta["sigmas"]]
        if sum(n for n, _ in segments) != dim or dim < 1:
            raise ConfigError("noise plan does not cover the vector")
        if self.config is not None:
            kind, n_head = str(meta["kind"]), int(meta["n_head"])
            if isinstance(self.config, SiloConfig):
                expected = noise_plan(self.config, self._z, kind, n_head)
            else:
                expected = ease_noise_plan(self.config, self._z, kind, n_head)
            if [n for n, _ in segments] != [e.length for e in expected] or any(
                s < fixed_sigma(e, self.config.frac_bits) * (1 - 1e-9)
                for (_, s), e in zip(segments, expected, strict=True)
            ):
                raise ConfigError("the plan has less noise than the configuration requires")
        for _, s in segments:
            if s == 0 and not self.allow_no_noise:
                raise ConfigError("refusing a plan without noise (test-only mode)")
            if s > _NOISE_LIMIT:
                raise ConfigError(f"noise σ = {s:.3g} could overflow the 64-bit sum")
        return segments, dim, meta["kind"] == "stats"

    def _aggregate(
        self,
        step: int,
        dim: int,
        noise: Future[tuple[np.ndarray, tuple[float, float]]],
        silos: list[Channel],
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """Every silo's share (seeds expanded, or arrays received) plus the noise, mod 2^64.

        The noise is drawn in another thread (or was drawn ahead) while the shares arrive;
        ``noise_wait`` in :attr:`timings` is how long the partial then still waited for it.
        """
        got = np.zeros(2)  # receive wall, CPU
        summed = np.zeros(2)  # sum wall, CPU
        if self._sum.size != dim:
            self._sum = np.empty(dim, dtype=np.uint64)
        acc = self._sum
        acc.fill(0)
        if self.seed_holder:
            for ch in silos:
                _, seed = _recv_step(ch, step, {SEED}, self.timeout)
                if len(seed) != 32:
                    raise MessageRejected(f"seed from {ch.peer!r} is not 32 bytes")
                clock = _Clock()
                add_mask(acc, seed)
                summed += clock.read()
        else:
            if self._scratch.size != acc.size:
                self._scratch = np.empty(acc.size, dtype=np.uint64)
            for ch in silos:
                got += _recv_array(ch, step, SHARE, self._scratch, self.timeout)
                clock = _Clock()
                np.add(acc, self._scratch, out=acc)
                summed += clock.read()
        clock = _Clock()
        partial, noise_s = noise.result()
        waited = clock.read()[0]
        clock = _Clock()
        np.add(partial, acc, out=partial)
        summed += clock.read()
        self.timings.append(
            {
                "receive": float(got[0]),
                "receive_cpu": float(got[1]),
                "sum": float(summed[0]),
                "sum_cpu": float(summed[1]),
                "noise_wait": waited,
            }
        )
        return partial, noise_s


def _draw_noise(
    segments: list[tuple[int, float]], dim: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """One server's noise for a plan, in fixed point (``uint64``), and its wall and CPU seconds.

    Each segment gets i.i.d. discrete Gaussians of its σ from
    :func:`privrec.privacy.distributed.sample_discrete_gaussian` with a fresh ChaCha20
    :func:`~privrec.privacy.randomness.secure_generator`.
    """
    clock = _Clock()
    acc = np.zeros(dim, dtype=np.uint64)
    rng = secure_generator()
    start = 0
    for n, s in segments:
        if s > 0:
            acc[start : start + n] = sample_discrete_gaussian(s, n, rng).view(np.uint64)
        start += n
    return acc, clock.read()


class _Clock:
    """Wall seconds and this thread's CPU seconds since creation (CPU time does not count
    waiting for a peer or for a core, so it stays meaningful on a loaded machine)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.thread_time() - self.cpu


def _timed_send_array(ch: Channel, step: int, kind: int, data: np.ndarray) -> tuple[float, float]:
    clock = _Clock()
    ch.send_array(step, kind, data)
    return clock.read()


class Silo:
    """A data holder: answers the driver's jobs with shares of its bounded statistics.

    ``matrix`` is the silo's users × items interaction matrix over the shared catalogue
    (its users must not appear in any other silo). Each job's seed share goes to the first
    server as soon as the job arrives and the array share to the second once computed; the
    two sends run concurrently, so a server that stops reading can only stall its own share
    (and is the one the driver names).
    """

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        matrix: Any,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.identity = identity
        self.roster = roster
        self.x = binary(matrix)
        self.timeout = timeout
        self.n_silos = len(roster.names("silo"))
        self._weights: tuple[bytes, sp.csr_matrix, sp.csr_matrix] | None = None
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.compute_seconds: list[float] = []
        self.timings: list[dict[str, float]] = []
        _warm_kernels()

    def run(self) -> None:
        """Serve one training session (returns on BYE, raises if the session breaks)."""
        t, wait = self.timeout, max(self.timeout, 30.0)
        driver = connect(
            self.identity, self.roster, self.roster.names("driver")[0], timeout=t, retry_for=wait
        )
        servers = [
            connect(self.identity, self.roster, s, timeout=t, retry_for=wait)
            for s in self.roster.names("server")
        ]
        pool = ThreadPoolExecutor(2, thread_name_prefix=f"{self.identity.name}-send")
        try:
            while True:
                step, kind, payload = driver.recv_any(_IDLE)
                if kind == BYE:
                    return
                if kind == ABORT:
                    continue
                if kind != JOB:
                    raise MessageRejected(f"silo expected a job, got type {kind}")
                meta, arrays = _unpack(payload)
                dim = int(meta["dim"])
                seed = os.urandom(32)
                sent = [pool.submit(servers[0].send, step, SEED, seed)]  # before computing
                clock = _Clock()
                vec = self._compute(meta, arrays)
                computed = clock.read()
                t_end = time.perf_counter()
                if vec.size != dim:
                    raise ConfigError(f"statistics have {vec.size} values, the plan {dim}")
                clock = _Clock()
                out, scratch = self._buffer(dim)
                share = seed_share(
                    encode_fixed(
                        vec, int(meta["frac_bits"]), self.n_silos, out=out, scratch=scratch
                    ),
                    seed,
                )
                encoded = clock.read()
                clock = _Clock()
                big = pool.submit(_timed_send_array, servers[1], step, SHARE, share)
                sent[0].result()  # a server that is gone raises PeerUnavailable here
                send_cpu = big.result()[1]
                self.compute_seconds.append(computed[0])
                self.timings.append(
                    {
                        "compute": computed[0],
                        # CLOCK_MONOTONIC: comparable across processes on one machine
                        "t_start": t_end - computed[0],
                        "t_end": t_end,
                        "encode": encoded[0],
                        "encode_cpu": encoded[1],
                        "send": clock.read()[0],
                        "send_cpu": send_cpu,
                    }
                )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for ch in [driver, *servers]:
                ch.close()

    def _buffer(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if dim not in self._buffers:
            self._buffers = {dim: (np.empty(dim, dtype=np.uint64), np.empty(dim))}
        return self._buffers[dim]

    def _compute(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
        if int(meta["n_items"]) != self.x.shape[1]:
            raise ConfigError(
                f"silo has {self.x.shape[1]} items, the driver {meta['n_items']} (shared catalogue)"
            )
        rng = secure_generator()
        if meta["kind"] == "counts":
            return silo_counts(self.x, int(meta["count_sample"]), rng)
        head = np.asarray(arrays["head"], dtype=np.int64)
        if meta["kind"] == "gram":
            return silo_gram(
                self.x[:, head], float(meta["max_contribution"]), int(meta["max_per_user"]), rng
            )
        key = head.tobytes() + np.asarray(arrays["counts_h"]).tobytes()
        if self._weights is None or self._weights[0] != key:
            xh = binary(self.x[:, head])
            w = user_weights(
                xh,
                arrays["counts_h"],
                str(meta["method"]),
                int(meta["max_per_user"]),
                float(meta["adaptive_exponent"]),
                rng,
            )
            self._weights = (key, xh, w)
        _, xh, w = self._weights
        return silo_statistics(
            xh,
            w,
            np.asarray(arrays["y"], dtype=np.float64),
            alpha0=float(meta["alpha0"]),
            user_regularization=float(meta["user_regularization"]),
            clip_norm=float(meta["clip_norm"]),
        )


_warmed = threading.Event()


def _warm_kernels() -> None:
    """Load (or compile) the numba kernels a silo uses, once per process, before it connects.

    Otherwise the first step pays it, and a peer's short timeout can mistake a healthy silo
    loading its kernels for a stalled one.
    """
    if _warmed.is_set():
        return
    x = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    y = np.full((3, 2), 0.1)
    silo_statistics(x, x, y, alpha0=1.0, user_regularization=0.1, clip_norm=1.0)
    _warmed.set()


class _DriverBase:
    """Session, releases and checkpoints shared by the DPALS and DPEASE drivers."""

    config: AnyConfig

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        config: AnyConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.identity = identity
        self.roster = roster
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.resume = resume
        self.timeout = timeout
        self._silos: dict[str, Channel] = {}
        self._servers: dict[str, Channel] = {}
        self._partials: dict[str, np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.spent: list[SpentEvent] = []
        self.round = 0
        self.round_seconds: list[float] = []
        self.solve_seconds: list[float] = []
        self.timings: list[dict[str, float]] = []
        self._state: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ session
    def _open(self) -> None:
        listener = Listener(self.identity, self.roster, timeout=self.timeout)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="driver-recv")
        try:
            for s in self.roster.names("server"):
                self._servers[s] = connect(
                    self.identity,
                    self.roster,
                    s,
                    timeout=self.timeout,
                    retry_for=max(self.timeout, 30.0),
                )
            silos = set(self.roster.names("silo"))
            while len(self._silos) < len(silos):
                ch = _accept(listener, max(self.timeout, 30.0))
                if ch.peer not in silos or ch.peer in self._silos:
                    ch.close()
                    raise MessageRejected(f"unexpected connection from {ch.peer!r}")
                self._silos[ch.peer] = ch
        except PeerUnavailable as exc:
            self._close(BYE)
            raise ProtocolAbort("connect", str(exc)) from None
        finally:
            listener.close()

    def _close(self, kind: int) -> None:
        for ch in [*self._silos.values(), *self._servers.values()]:
            _safe_send(ch, self.round, kind, b"")
            ch.close()
        self._silos.clear()
        self._servers.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def bytes_sent(self) -> int:
        return sum(ch.bytes_sent for ch in [*self._silos.values(), *self._servers.values()])

    # ------------------------------------------------------------------ one release
    def _release(
        self,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        segments: list[Segment],
        labels: list[str],
    ) -> np.ndarray:
        c = self.config
        self.round += 1
        r = self.round
        t0 = time.perf_counter()
        dim = sum(s.length for s in segments)
        sigmas = [[s.length, fixed_sigma(s, c.frac_bits)] for s in segments]
        if any(sig > _NOISE_LIMIT for _, sig in sigmas):
            raise ConfigError("noise too large for the 64-bit fixed-point sum; lower frac_bits")
        job = _pack({**meta, "frac_bits": c.frac_bits, "n_items": c.n_items, "dim": dim}, arrays)
        n_head = int(arrays["head"].size) if "head" in arrays else 0
        plan = _pack({"dim": dim, "sigmas": sigmas, "kind": meta["kind"], "n_head": n_head})
        phase = "job"
        try:
            for ch in self._silos.values():
                ch.send(r, JOB, job)
            for ch in self._servers.values():
                ch.send(r, PLAN, plan)
        except (PeerUnavailable, MessageRejected) as exc:
            self._abort(r)
            raise ProtocolAbort(phase, str(exc)) from None
        t_sent = time.perf_counter()
        # Both partials are awaited at once, so the abort names the server(s) that stalled.
        assert self._pool is not None
        waits = {
            name: self._pool.submit(self._receive_partial, ch, r, dim)
            for name, ch in self._servers.items()
        }
        failures: list[str] = []
        busy = (0.0, 0.0)
        for fut in waits.values():
            try:
                got = fut.result()
                busy = (max(busy[0], got[0]), busy[1] + got[1])
            except ProtocolAbort as exc:
                failures.append(exc.reason)
            except (PeerUnavailable, MessageRejected) as exc:
                failures.append(str(exc))
        if failures:
            self._abort(r)
            raise ProtocolAbort("aggregate", "; ".join(failures))
        # Both partials are in: the release happens now, so its events are journalled first.
        for s, label in zip(segments, labels, strict=True):
            self.spent.append(SpentEvent(label, gaussian_event(s.z)))
        self._save_events()
        clock = _Clock()
        p0, p1 = (self._partials[name] for name in self._servers)
        np.add(p0, p1, out=p0)
        out = decode_fixed(p0, c.frac_bits)
        decoded = clock.read()
        t_done = time.perf_counter()
        self.round_seconds.append(t_done - t0)
        self.timings.append(
            {
                "round": self.round_seconds[-1],
                "t_sent": t_sent,
                "t_done": t_done,
                "receive": busy[0],
                "receive_cpu": busy[1],
                "decode": decoded[0],
                "decode_cpu": decoded[1],
            }
        )
        return out

    def _receive_partial(self, ch: Channel, r: int, dim: int) -> tuple[float, float]:
        buf = self._partials.get(ch.peer)
        if buf is None or buf.size != dim:
            buf = self._partials[ch.peer] = np.empty(dim, dtype=np.uint64)
        return _recv_array(ch, r, PARTIAL, buf, self.timeout)

    def _abort(self, r: int) -> None:
        for ch in [*self._silos.values(), *self._servers.values()]:
            _safe_send(ch, r, ABORT, b"")

    # ------------------------------------------------------------------ checkpoints
    def _save_events(self) -> None:
        if self.checkpoint is None:
            return
        _atomic_write(
            self.checkpoint / "events.json",
            json.dumps({"round": self.round, "events": [e.to_dict() for e in self.spent]}).encode(),
        )

    def _save_state(self, **arrays: np.ndarray) -> None:
        if self.checkpoint is None:
            return
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        _atomic_write(self.checkpoint / "state.npz", buf.getvalue())

    def prepare(self) -> dict[str, np.ndarray]:
        """Check and load the checkpoint (once); call early to fail before any party connects."""
        if self._state is None:
            self._state = self._load()
        return self._state

    def _load(self) -> dict[str, np.ndarray]:
        if self.checkpoint is None:
            return {}
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        cfg_path = self.checkpoint / "config.json"
        if not self.resume:
            if (self.checkpoint / "events.json").exists():
                raise ConfigError(
                    f"{self.checkpoint} already holds a training run; pass resume=True "
                    "(CLI: --resume) or choose an empty directory"
                )
            _atomic_write(cfg_path, self.config.model_dump_json().encode())
            return {}
        if not cfg_path.exists():
            raise ConfigError(f"nothing to resume in {self.checkpoint}")
        if load_config(cfg_path.read_text()) != self.config:
            raise ConfigError("resume needs the configuration the run was started with")
        ev = self.checkpoint / "events.json"
        if ev.exists():
            d = json.loads(ev.read_text())
            self.round = int(d["round"])
            self.spent = [SpentEvent.from_dict(e) for e in d["events"]]
        st = self.checkpoint / "state.npz"
        if not st.exists():
            return {}
        with np.load(st, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def _guarantee(
        self, mechanism: str, released: list[str], not_released: list[str]
    ) -> PrivacyGuarantee:
        c = self.config
        return PrivacyGuarantee.from_events(
            self.spent,
            delta=c.delta,
            unit=PrivacyUnit.USER,
            accountant="rdp",
            mechanism=mechanism,
            released=released,
            not_released=not_released,
            threat_model=(
                "honest-but-curious parties; the two aggregation servers do not collude. Either "
                "server alone sees only uniformly random shares (or their seeds) and its own "
                "noise, and every revealed sum carries at least the other server's full "
                "discrete-Gaussian noise, which is what the accounting counts (the second share "
                "is ignored). Users are disjoint across silos; joint DP for each user's own "
                "recommendations. Two colluding servers learn every silo's exact statistics."
                + (" TEST MODE: NO NOISE WAS ADDED." if c.insecure_disable_noise else "")
            ),
            seeded_noise=False,
        )


class Driver(_DriverBase):
    """Drives cross-silo DPALS: public inputs out, noisy sums in, item solves, checkpoints.

    Parameters
    ----------
    identity, roster
        The driver's key and the roster (it listens on its roster address for the silos and
        connects to both servers).
    config
        Public training configuration.
    checkpoint
        Directory for ``state.npz``, ``events.json`` and ``config.json`` after every completed
        release; with ``resume=True`` training continues from it (same config required).
    timeout
        Seconds to wait for each server's partial sum once a step is sent.
    """

    config: SiloConfig

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        config: SiloConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(
            identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )

    def train(self) -> SiloResult:
        """Run (or resume) the whole training; raises :class:`ProtocolAbort` on a fault."""
        c = self.config
        state = self.prepare()
        sigma, iterations = noise_scale(c)
        k = c.factors
        self._open()
        try:
            if "noisy_counts" not in state:
                seg = noise_plan(c, sigma, "counts")
                noisy = self._release(
                    {"kind": "counts", "count_sample": c.sampled}, {}, seg, [seg[0].name]
                )
                seed_rng = np.random.default_rng(None if c.seed is None else c.seed + 1)
                y0 = seed_rng.standard_normal((c.n_items, k)) * (c.init_scale / math.sqrt(k))
                state = {"noisy_counts": noisy, "completed": np.asarray(0), "y_all": y0}
                self._save_state(**state)
            noisy = np.asarray(state["noisy_counts"], dtype=np.float64)
            head = silo_head(c, sigma, noisy)
            counts_h = noisy[head]
            n_head = len(head)
            reg = resolve_regularization(
                c.regularization, revealed_sigma(c, sigma, n_head), c.clip_norm
            )
            reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
            segments = noise_plan(c, sigma, "stats", n_head)
            y = (
                np.asarray(state["y_all"], dtype=np.float64)[head]
                if "y" not in state
                else state["y"]
            )
            y = np.asarray(y, dtype=np.float64)
            for step in range(int(state["completed"]), iterations):
                meta = {
                    "kind": "stats",
                    "step": step + 1,
                    "method": c.method,
                    "max_per_user": c.max_per_user,
                    "adaptive_exponent": c.adaptive_exponent,
                    "alpha0": c.alpha0,
                    "user_regularization": c.user_regularization,
                    "clip_norm": c.clip_norm,
                }
                labels = [f"step {step + 1}: noisy {s.name}" for s in segments]
                v = self._release(
                    meta, {"head": head, "counts_h": counts_h, "y": y}, segments, labels
                )
                t1 = time.perf_counter()
                g, lhs, rhs = unpack_statistics(v, n_head, k)
                y, _ = psd_solve(c.alpha0 * project_psd(g), lhs, rhs, reg_items, "if_indefinite")
                self.solve_seconds.append(time.perf_counter() - t1)
                state = {**state, "y": y, "completed": np.asarray(step + 1)}
                self._save_state(**state)
        except BaseException:
            self._close(ABORT)
            raise
        sent = self.bytes_sent
        self._close(BYE)
        items = np.zeros((c.n_items, k), dtype=np.float32)
        items[head] = y.astype(np.float32)
        return SiloResult(
            item_factors=items,
            head_items=head.astype(np.int64),
            noisy_counts=noisy.astype(np.float32),
            noise_scale=sigma,
            guarantee=self.guarantee(),
            regularization=reg,
            popularity_blend=resolve_popularity_blend(c.popularity_blend, c.epsilon),
            round_seconds=list(self.round_seconds),
            solve_seconds=list(self.solve_seconds),
            bytes_sent=sent,
        )

    def guarantee(self) -> PrivacyGuarantee:
        """The guarantee of everything released so far (from the journalled events)."""
        return self._guarantee(
            "cross-silo DPALS (two-server secret sharing, discrete Gaussian)",
            [
                "item factors (after the last private step)",
                "noisy item counts and the head item set",
                "the per-step noisy sums (Gramian, per-item left- and right-hand sides), "
                "to the driver",
            ],
            [
                "each silo's statistics (only uniformly random shares leave a silo)",
                "user factors (solved inside each silo from the released item factors)",
            ],
        )


class EASEDriver(_DriverBase):
    """Drives cross-silo DPEASE: (noisy counts →) one noisy item Gram matrix → EASE weights.

    Same session, checkpoint and fault handling as :class:`Driver`. With the head rule on
    (``head_snr > 0``) or a catalogue larger than ``max_items`` the noisy counts are released
    first and the head is chosen from them (central DPEASE's rule at the revealed noise,
    :func:`head_by_counts`); then each silo sends shares of its bounded Gram matrix over the
    head, the servers add noise, and the driver solves EASE on the decoded sum
    (:func:`privrec.models.ease.ease_from_gram`) with central's noise-scaled ridge at the
    revealed Gram noise std (:func:`revealed_std`). Resume reuses released counts.
    """

    config: SiloEASEConfig

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        config: SiloEASEConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(
            identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )

    def train(self) -> SiloEASEResult:
        """Run (or resume) the training; raises :class:`ProtocolAbort` on a fault."""
        c = self.config
        state = self.prepare()
        z = ease_noise(c)
        self._open()
        try:
            noisy: np.ndarray | None = None
            if c.restricted:
                if "noisy_counts" not in state:
                    seg = ease_noise_plan(c, z, "counts")
                    counts = self._release(
                        {"kind": "counts", "count_sample": c.max_per_user}, {}, seg, [seg[0].name]
                    )
                    state = {"noisy_counts": counts}
                    self._save_state(**state)
                noisy = np.asarray(state["noisy_counts"], dtype=np.float64)
                # central DPEASE's rule: count ≥ head_snr × the Gram noise std, here the
                # revealed one, √2·z_gram·C (the rounding term needs the head size; < 1e-6)
                gram_std = math.sqrt(2.0) * z[0] * c.max_contribution
                head = head_by_counts(noisy, c.max_items, c.head_snr * gram_std, c.head_min)
            else:
                head = np.arange(c.n_items)
            n_head = len(head)
            seg = ease_noise_plan(c, z, "gram", n_head)
            meta = {
                "kind": "gram",
                "max_contribution": c.max_contribution,
                "max_per_user": c.max_per_user,
            }
            v = self._release(meta, {"head": head}, seg, [seg[0].name])
            t1 = time.perf_counter()
            gram = unpack_gram(v, n_head)
            # the ridge from the revealed Gram noise std (both servers' shares), as planned
            noise_std = revealed_std(
                ease_noise_plan(_with_noise(c), z, "gram", n_head)[0], c.frac_bits
            )
            reg = resolve_ease_regularization(c.regularization, noise_std, n_head, c.reg_scale)
            weights = ease_from_gram(gram, reg)
            self.solve_seconds.append(time.perf_counter() - t1)
        except BaseException:
            self._close(ABORT)
            raise
        sent = self.bytes_sent
        self._close(BYE)
        return SiloEASEResult(
            weights=weights,
            head_items=head.astype(np.int64),
            item_popularity=np.diag(gram).astype(np.float32),
            noisy_counts=None if noisy is None else noisy.astype(np.float32),
            noise_multiplier=z[0],
            guarantee=self.guarantee(),
            regularization=reg,
            popularity_blend=resolve_ease_blend(c.popularity_blend, c.epsilon),
            round_seconds=list(self.round_seconds),
            solve_seconds=list(self.solve_seconds),
            bytes_sent=sent,
        )

    def guarantee(self) -> PrivacyGuarantee:
        """The guarantee of everything released so far (from the journalled events)."""
        return self._guarantee(
            "cross-silo DPEASE (two-server secret sharing, discrete Gaussian)",
            ["the noisy item Gram matrix (to the driver)", "EASE item-item weights derived from it"]
            + (["noisy item counts and the head item set"] if self.config.restricted else []),
            [
                "each silo's Gram matrix (only uniformly random shares leave a silo)",
                "each user's scores (computed from that user's own history, shown only to them)",
            ],
        )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def setup_keys(
    directory: str | Path, n_silos: int, *, host: str = "127.0.0.1", ports: Sequence[int] = ()
) -> tuple[Roster, dict[str, Identity]]:
    """Set-up files for ``driver``, ``server0``, ``server1`` and ``silo1..K``.

    ``ports`` gives the listening ports of driver, server0 and server1 (free loopback ports
    are picked when empty).
    """
    if n_silos < 1:
        raise ConfigError("at least one silo is needed")
    p = list(ports) or [_free_port() for _ in range(3)]
    if len(p) != 3:
        raise ConfigError(f"ports: three listening ports (driver, server0, server1), found {p}")
    for port in p:
        check_port(port, "listening port of driver/server0/server1")
    parties = {
        "driver": ("driver", host, p[0]),
        "server0": ("server", host, p[1]),
        "server1": ("server", host, p[2]),
    }
    for i in range(1, n_silos + 1):
        parties[f"silo{i}"] = ("silo", host, 0)
    return generate_keys(directory, parties)


def make_driver(
    identity: Identity,
    roster: Roster,
    config: AnyConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    timeout: float = 60.0,
) -> Driver | EASEDriver:
    """The driver for ``config``'s model (:class:`Driver` or :class:`EASEDriver`)."""
    if isinstance(config, SiloEASEConfig):
        return EASEDriver(
            identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )
    return Driver(identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout)


@overload
def run_local(
    matrices: Sequence[Any],
    config: SiloConfig,
    *,
    checkpoint: str | Path | None = ...,
    resume: bool = ...,
    timeout: float = ...,
    allow_no_noise: bool = ...,
    crash_server_at_round: int | None = ...,
    server_config: AnyConfig | None = ...,
) -> SiloResult: ...
@overload
def run_local(
    matrices: Sequence[Any],
    config: SiloEASEConfig,
    *,
    checkpoint: str | Path | None = ...,
    resume: bool = ...,
    timeout: float = ...,
    allow_no_noise: bool = ...,
    crash_server_at_round: int | None = ...,
    server_config: AnyConfig | None = ...,
) -> SiloEASEResult: ...
def run_local(
    matrices: Sequence[Any],
    config: AnyConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    timeout: float = 30.0,
    allow_no_noise: bool = False,
    crash_server_at_round: int | None = None,
    server_config: AnyConfig | None = None,
) -> SiloResult | SiloEASEResult:
    """Whole protocol in one process: servers and silos in threads, real loopback TCP.

    For tests and benchmarks; ``allow_no_noise`` and ``crash_server_at_round`` are test hooks
    (see :class:`AggregationServer`). The servers check every noise plan against
    ``server_config`` (default: ``config``). A :class:`SiloConfig` trains DPALS and returns a
    :class:`SiloResult`; a :class:`SiloEASEConfig` trains DPEASE (:class:`SiloEASEResult`).
    """
    with tempfile.TemporaryDirectory() as keys:
        roster, ids = setup_keys(keys, len(matrices))
        servers = [
            AggregationServer(
                ids[s],
                roster,
                timeout=timeout,
                allow_no_noise=allow_no_noise,
                crash_at_round=crash_server_at_round if s == "server1" else None,
                config=config if server_config is None else server_config,
            )
            for s in ("server0", "server1")
        ]
        silos = [
            Silo(ids[f"silo{i + 1}"], roster, m, timeout=timeout) for i, m in enumerate(matrices)
        ]
        driver = make_driver(
            ids["driver"], roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )
        driver.prepare()
        errors: list[BaseException] = []

        def guard(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:  # reported through the driver
                errors.append(exc)

        threads = [
            threading.Thread(target=guard, args=(run,), daemon=True)
            for run in [*(s.run for s in servers), *(s.run for s in silos)]
        ]
        for th in threads:
            th.start()
        try:
            result = driver.train()
        except BaseException as exc:
            for th in threads:
                th.join(timeout=timeout)
            for err in errors:  # what the other roles saw, for the reader of the traceback
                exc.add_note(f"a role failed with {type(err).__name__}: {err}")
            raise
        finally:
            for th in threads:
                th.join(timeout=timeout)
        result.timings = {
            "driver": list(driver.timings),
            "servers": [list(s.timings) for s in servers],
            "silos": [list(s.timings) for s in silos],
        }
        if isinstance(result, SiloResult):
            result.silo_seconds = [list(s.compute_seconds) for s in silos]
        return result
