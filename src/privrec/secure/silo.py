"""Cross-silo DPALS: K data holders, two non-colluding aggregation servers, one DP model.

Roles (one process each, or threads for tests — :func:`run_local`)
    * **silos** (:class:`Silo`) hold disjoint sets of users over one shared item catalogue.
      Per step they solve their own users exactly from the released item factors, clip them
      to Γ and compute the DPALS item-step statistics with the per-user bounds of central
      DPALS (:func:`silo_statistics`); once, the sampled item counts (:func:`silo_counts`).
      The vector is encoded in fixed point and split into two additive shares mod 2^64, one
      per server.
    * **aggregation servers** (:class:`AggregationServer`) sum the shares they receive, add
      their own discrete-Gaussian noise share (in fixed point) and send the partial sum to
      the driver. Each sees only uniformly random shares.
    * the **driver** (:class:`Driver`) holds no data: it sends each step's public inputs
      (released item factors, head items, noisy counts), adds the two partials, decodes,
      projects onto the PSD cone and solves the items exactly as DPALS does, checkpointing
      after each completed step. It may run inside a silo's organisation.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    resolve_iterations,
    resolve_regularization,
    select_head,
    user_weights,
)
from privrec.models.dp_popularity import bounded_counts
from privrec.privacy.accounting import calibrate
from privrec.privacy.budget import Budget
from privrec.privacy.contribution import clip_rows
from privrec.privacy.distributed import sample_discrete_gaussian
from privrec.privacy.events import SpentEvent
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.postprocessing import project_psd, psd_solve
from privrec.privacy.randomness import secure_generator
from privrec.privacy.units import PrivacyUnit
from privrec.secure.channel import Channel, Identity, Listener, Roster, connect, generate_keys
from privrec.secure.prg import expand

__all__ = [
    "DEFAULT_FRAC_BITS",
    "AggregationServer",
    "Driver",
    "Segment",
    "Silo",
    "SiloConfig",
    "SiloResult",
    "decode_fixed",
    "encode_fixed",
    "fixed_sigma",
    "noise_plan",
    "noise_scale",
    "run_local",
    "setup_keys",
    "silo_counts",
    "silo_statistics",
    "split_shares",
    "unpack_statistics",
]

DEFAULT_FRAC_BITS = 32
# message types
JOB, SHARE, PLAN, PARTIAL, ABORT, BYE, FAILED = 1, 2, 3, 4, 5, 6, 7
_IDLE = 3600.0  # how long silos and servers wait for the driver's next step
_NOISE_LIMIT = 2.0**60 / 40.0


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
def encode_fixed(x: np.ndarray, frac_bits: int, n_silos: int) -> np.ndarray:
    """``round(x·2^f)`` as two's-complement ``uint64``; refuses values that could overflow the sum.

    Raises :class:`InvalidInputError` when some ``|round(x·2^f)| > 2^62 / n_silos`` (then the
    sum of ``n_silos`` encodings plus the bounded noise might wrap mod 2^64) or ``x`` is not
    finite.
    """
    v = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise InvalidInputError("statistics must be finite")
    z = np.rint(v * 2.0**frac_bits)
    limit = 2.0**62 / n_silos
    if z.size and float(np.max(np.abs(z))) > limit:
        raise InvalidInputError(
            f"a statistic is too large for fixed point with {frac_bits} fractional bits "
            f"and {n_silos} silos (|value| ≤ {limit / 2.0**frac_bits:.3g})"
        )
    return z.astype(np.int64).view(np.uint64)


def decode_fixed(s: np.ndarray, frac_bits: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed` for a (noisy) sum mod 2^64."""
    out: np.ndarray = np.asarray(s, dtype=np.uint64).view(np.int64).astype(np.float64)
    return out * 2.0**-frac_bits


def split_shares(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two additive shares mod 2^64: ``r`` uniform (AES-256-CTR keyed from ``os.urandom``), ``v - r``.

    Either share alone is uniformly distributed and independent of ``v``.
    """
    v = np.asarray(v, dtype=np.uint64)
    r = expand(os.urandom(32), v.size, 64).astype(np.uint64).reshape(v.shape)
    return r, v - r


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

    The DPALS hyper-parameters mean what they mean in :class:`privrec.models.DPALS`;
    ``frac_bits`` is the fixed-point precision. ``insecure_disable_noise`` is a **test-only**
    switch: the driver then asks for no noise, the guarantee says ε = ∞, and servers refuse
    such plans unless they were built with ``allow_no_noise=True`` (the CLI never does).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

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
    count_sample: int = pydantic.Field(default=100, ge=1)
    gram_noise_ratio: float = pydantic.Field(default=1.0, gt=0)
    lhs_noise_ratio: float = pydantic.Field(default=5.0, gt=0)
    rhs_noise_ratio: float = pydantic.Field(default=1.0, gt=0)
    count_noise_ratio: float = pydantic.Field(default=0.2, gt=0)
    init_scale: float = pydantic.Field(default=0.1, gt=0)
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


def noise_plan(config: SiloConfig, sigma: float, kind: str, n_head: int = 0) -> list[Segment]:
    """The accounted segments of one release (``kind`` ``"counts"`` or ``"stats"``).

    Counts: one segment over the catalogue, multiplier ``r3·σ``, sensitivity √count_sample.
    Stats: Gramian (``r0·σ``, Γ²), left-hand sides (``r1·σ/√B``, √B Γ²) and right-hand sides
    (``r2·σ/√B``, √B Γ), as :func:`dpals_event` accounts them.
    """
    r0, r1, r2, r3 = config.ratios
    mult = 0.0 if config.insecure_disable_noise else 1.0
    sens = DPALSSensitivity.of(
        PrivacyUnit.USER, config.clip_norm, config.max_per_user, config.count_sample
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
    round_seconds: list[float] = field(default_factory=list)
    solve_seconds: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    #: per silo, seconds of local statistics computation per release (filled by run_local)
    silo_seconds: list[list[float]] = field(default_factory=list)

    def user_factors(self, user_items: Any, config: SiloConfig) -> np.ndarray:
        """A silo's own users' factors from the released item factors (never leaves the silo)."""
        xh = binary(sp.csr_matrix(user_items)[:, self.head_items])
        y = self.item_factors[self.head_items].astype(np.float64)
        return user_solve(xh, y, config.alpha0, config.user_regularization)


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


class AggregationServer:
    """One of the two non-colluding servers: sums shares, adds its discrete-Gaussian noise share.

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
        The public training configuration, if this server was given its own copy (CLI:
        ``--config``). Then the server recomputes each release's noise from it and refuses a
        plan with less noise, so a driver cannot lower the noise it adds; without it the
        server only refuses plans without noise.
    """

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        *,
        timeout: float = 60.0,
        allow_no_noise: bool = False,
        crash_at_round: int | None = None,
        config: SiloConfig | None = None,
    ) -> None:
        self.identity = identity
        self.config = config
        self._sigma = None if config is None else noise_scale(config)[0]
        self.roster = roster
        self.timeout = timeout
        self.allow_no_noise = allow_no_noise
        self.crash_at_round = crash_at_round
        self.listener = Listener(identity, roster, timeout=timeout)

    def run(self) -> None:
        """Serve one training session (returns on BYE, raises if the session breaks)."""
        silos = self.roster.names("silo")
        driver_name = self.roster.names("driver")[0]
        chans: dict[str, Channel] = {}
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
                    partial = self._aggregate(step, payload, [chans[s] for s in silos])
                except (PeerUnavailable, MessageRejected, ConfigError, InvalidInputError) as exc:
                    _safe_send(driver, step, FAILED, f"{self.identity.name}: {exc}".encode())
                    if isinstance(exc, PeerUnavailable | MessageRejected):
                        raise  # a broken silo connection ends the session
                    continue
                driver.send(step, PARTIAL, partial.tobytes())
        finally:
            for ch in chans.values():
                ch.close()
            self.listener.close()

    def _aggregate(self, step: int, payload: bytes, silos: list[Channel]) -> np.ndarray:
        meta, _ = _unpack(payload)
        dim = int(meta["dim"])
        segments = [(int(n), float(s)) for n, s in meta["sigmas"]]
        if sum(n for n, _ in segments) != dim:
            raise ConfigError("noise plan does not cover the vector")
        if self.config is not None and self._sigma is not None:
            expected = noise_plan(self.config, self._sigma, str(meta["kind"]), int(meta["n_head"]))
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
        # The noise depends only on the public plan, so it is drawn first, while the silos are
        # still computing: sampling then costs no time on the step's critical path.
        acc = np.zeros(dim, dtype=np.uint64)
        rng = secure_generator()
        start = 0
        for n, s in segments:
            if s > 0:
                acc[start : start + n] = sample_discrete_gaussian(s, n, rng).view(np.uint64)
            start += n
        for ch in silos:
            _, raw = _recv_step(ch, step, {SHARE}, self.timeout)
            share = np.frombuffer(raw, dtype="<u8")
            if share.size != dim:
                raise MessageRejected(f"share from {ch.peer!r} has {share.size} words, not {dim}")
            acc += share
        return acc


class Silo:
    """A data holder: answers the driver's jobs with shares of its bounded statistics.

    ``matrix`` is the silo's users × items interaction matrix over the shared catalogue
    (its users must not appear in any other silo).
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
        self.compute_seconds: list[float] = []

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
                t0 = time.perf_counter()
                vec = self._compute(meta, arrays)
                self.compute_seconds.append(time.perf_counter() - t0)
                a, b = split_shares(encode_fixed(vec, int(meta["frac_bits"]), self.n_silos))
                servers[0].send(step, SHARE, a.tobytes())
                servers[1].send(step, SHARE, b.tobytes())
        finally:
            for ch in [driver, *servers]:
                ch.close()

    def _compute(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
        if int(meta["n_items"]) != self.x.shape[1]:
            raise ConfigError(
                f"silo has {self.x.shape[1]} items, the driver {meta['n_items']} (shared catalogue)"
            )
        rng = secure_generator()
        if meta["kind"] == "counts":
            return silo_counts(self.x, int(meta["count_sample"]), rng)
        head = np.asarray(arrays["head"], dtype=np.int64)
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


class Driver:
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
        self.identity = identity
        self.roster = roster
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.resume = resume
        self.timeout = timeout
        self._silos: dict[str, Channel] = {}
        self._servers: dict[str, Channel] = {}
        self.spent: list[SpentEvent] = []
        self.round = 0
        self.round_seconds: list[float] = []
        self.solve_seconds: list[float] = []
        self._state: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ session
    def _open(self) -> None:
        listener = Listener(self.identity, self.roster, timeout=self.timeout)
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

    # ------------------------------------------------------------------ one release
    def _release(
        self, meta: dict[str, Any], arrays: dict[str, np.ndarray], segments: list[Segment]
    ) -> np.ndarray:
        c = self.config
        self.round += 1
        r = self.round
        t0 = time.perf_counter()
        dim = sum(s.length for s in segments)
        sigmas = [[s.length, fixed_sigma(s, c.frac_bits)] for s in segments]
        if any(sig > _NOISE_LIMIT for _, sig in sigmas):
            raise ConfigError("noise too large for the 64-bit fixed-point sum; lower frac_bits")
        job = _pack({**meta, "frac_bits": c.frac_bits, "n_items": c.n_items}, arrays)
        n_head = int(arrays["head"].size) if "head" in arrays else 0
        plan = _pack({"dim": dim, "sigmas": sigmas, "kind": meta["kind"], "n_head": n_head})
        phase = "job"
        try:
            for ch in self._silos.values():
                ch.send(r, JOB, job)
            for ch in self._servers.values():
                ch.send(r, PLAN, plan)
            phase = "aggregate"
            partials = []
            for ch in self._servers.values():
                kind, payload = _recv_step(ch, r, {PARTIAL, FAILED}, self.timeout)
                if kind == FAILED:
                    raise ProtocolAbort(phase, payload.decode(errors="replace"))
                part = np.frombuffer(payload, dtype="<u8")
                if part.size != dim:
                    raise ProtocolAbort(phase, f"{ch.peer!r} sent {part.size} words, not {dim}")
                partials.append(part)
        except (PeerUnavailable, MessageRejected) as exc:
            self._abort(r)
            raise ProtocolAbort(phase, str(exc)) from None
        except ProtocolAbort:
            self._abort(r)
            raise
        # Both partials are in: the release happens now, so its events are journalled first.
        for s in segments:
            label = s.name if meta["kind"] == "counts" else f"step {meta['step']}: noisy {s.name}"
            self.spent.append(SpentEvent(label, gaussian_event(s.z)))
        self._save_events()
        total = partials[0] + partials[1]
        self.round_seconds.append(time.perf_counter() - t0)
        return decode_fixed(total, c.frac_bits)

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
        if SiloConfig.model_validate_json(cfg_path.read_text()) != self.config:
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

    # ------------------------------------------------------------------ training
    def train(self) -> SiloResult:
        """Run (or resume) the whole training; raises :class:`ProtocolAbort` on a fault."""
        c = self.config
        state = self.prepare()
        r2 = c.rhs_noise_ratio
        sigma, iterations = noise_scale(c)
        k = c.factors
        self._open()
        try:
            if "noisy_counts" not in state:
                noisy = self._release(
                    {"kind": "counts", "count_sample": c.count_sample},
                    {},
                    noise_plan(c, sigma, "counts"),
                )
                seed_rng = np.random.default_rng(None if c.seed is None else c.seed + 1)
                y0 = seed_rng.standard_normal((c.n_items, k)) * (c.init_scale / math.sqrt(k))
                state = {"noisy_counts": noisy, "completed": np.asarray(0), "y_all": y0}
                self._save_state(**state)
            noisy = np.asarray(state["noisy_counts"], dtype=np.float64)
            head = select_head(noisy, c.head_fraction, c.head_snr * r2 * sigma, c.head_min)
            counts_h = noisy[head]
            reg = resolve_regularization(c.regularization, sigma, c.clip_norm)
            reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
            n_head = len(head)
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
                v = self._release(meta, {"head": head, "counts_h": counts_h, "y": y}, segments)
                t1 = time.perf_counter()
                g, lhs, rhs = unpack_statistics(v, n_head, k)
                y, _ = psd_solve(c.alpha0 * project_psd(g), lhs, rhs, reg_items, "if_indefinite")
                self.solve_seconds.append(time.perf_counter() - t1)
                state = {**state, "y": y, "completed": np.asarray(step + 1)}
                self._save_state(**state)
        except BaseException:
            self._close(ABORT)
            raise
        sent = sum(ch.bytes_sent for ch in [*self._silos.values(), *self._servers.values()])
        self._close(BYE)
        items = np.zeros((c.n_items, k), dtype=np.float32)
        items[head] = y.astype(np.float32)
        return SiloResult(
            item_factors=items,
            head_items=head.astype(np.int64),
            noisy_counts=noisy.astype(np.float32),
            noise_scale=sigma,
            guarantee=self.guarantee(),
            round_seconds=list(self.round_seconds),
            solve_seconds=list(self.solve_seconds),
            bytes_sent=sent,
        )

    def guarantee(self) -> PrivacyGuarantee:
        """The guarantee of everything released so far (from the journalled events)."""
        c = self.config
        return PrivacyGuarantee.from_events(
            self.spent,
            delta=c.delta,
            unit=PrivacyUnit.USER,
            accountant="rdp",
            mechanism="cross-silo DPALS (two-server secret sharing, discrete Gaussian)",
            released=[
                "item factors (after the last private step)",
                "noisy item counts and the head item set",
                "the per-step noisy sums (Gramian, per-item left- and right-hand sides), "
                "to the driver",
            ],
            not_released=[
                "each silo's statistics (only uniformly random shares leave a silo)",
                "user factors (solved inside each silo from the released item factors)",
            ],
            threat_model=(
                "honest-but-curious parties; the two aggregation servers do not collude. Either "
                "server alone sees only uniformly random shares and its own noise, and every "
                "revealed sum carries at least the other server's full discrete-Gaussian noise, "
                "which is what the accounting counts (the second share is ignored). Users are "
                "disjoint across silos; joint DP for user factors as in DPALS. Two colluding "
                "servers learn every silo's exact statistics."
                + (" TEST MODE: NO NOISE WAS ADDED." if c.insecure_disable_noise else "")
            ),
            seeded_noise=False,
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
    parties = {
        "driver": ("driver", host, p[0]),
        "server0": ("server", host, p[1]),
        "server1": ("server", host, p[2]),
    }
    for i in range(1, n_silos + 1):
        parties[f"silo{i}"] = ("silo", host, 0)
    return generate_keys(directory, parties)


def run_local(
    matrices: Sequence[Any],
    config: SiloConfig,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    timeout: float = 30.0,
    allow_no_noise: bool = False,
    crash_server_at_round: int | None = None,
    server_config: SiloConfig | None = None,
) -> SiloResult:
    """Whole protocol in one process: servers and silos in threads, real loopback TCP.

    For tests and benchmarks; ``allow_no_noise`` and ``crash_server_at_round`` are test hooks
    (see :class:`AggregationServer`). The servers check every noise plan against
    ``server_config`` (default: ``config``).
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
        driver = Driver(
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
            result.silo_seconds = [list(s.compute_seconds) for s in silos]
            return result
        finally:
            for th in threads:
                th.join(timeout=timeout)
