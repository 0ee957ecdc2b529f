"""The client-side encoder and server-side decoder of distributed DP, and their settings.

:class:`DistributedDPConfig` is what travels (validated, public: a noise multiplier or a
budget, the public rotation seed); :class:`DistributedDPEncoder` resolves it once into a
:class:`~privrec.privacy.distributed.plan.DistributedDPPlan` and then runs the client steps
(clip, rotate, scale, conditional rounding, integer noise, wrap) and the server's decode.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pydantic

from privrec.errors import ConfigError, DataError
from privrec.privacy.budget import Budget
from privrec.privacy.distributed.bounds import DEFAULT_BETA, Mechanism
from privrec.privacy.distributed.noise import sample_discrete_gaussian, sample_skellam
from privrec.privacy.distributed.plan import (
    DistributedGuarantee,
    _check_count,
    calibrate_distributed,
)
from privrec.privacy.hadamard import rotate, rotation_signs, unrotate
from privrec.privacy.randomness import secure_generator, seeded_generator
from privrec.privacy.units import PrivacyUnit

__all__ = ["DistributedDPConfig", "DistributedDPEncoder", "padding_generator"]

#: Conditional-rounding attempts per row before giving up: each fails with probability ≤ β, so
#: running out has probability ≤ β^200.
_MAX_ROUNDING_TRIES = 200


def padding_generator(seed: int | None, *where: object) -> np.random.Generator:
    """The server's generator for the phantom noise shares of one release (:meth:`decode`).

    ``seed=None`` (every private run): a fresh ChaCha20 CSPRNG. A seed (tests only, already
    warned by the caller): ChaCha20 keyed from the seed and ``where`` (round, attempt, task), so
    a simulation and a Flower run of the same seeded task pad with the same draws.
    """
    if seed is None:
        return secure_generator()
    tag = "/".join(str(w) for w in (int(seed), *where))
    digest = hashlib.sha256(f"privrec-padding/{tag}".encode()).digest()
    return seeded_generator(int.from_bytes(digest[:8], "little"), warn=False)


class DistributedDPConfig(pydantic.BaseModel):
    """Validated settings of a distributed-DP round; see :func:`calibrate_distributed`.

    Give ``budget`` (calibrate the noise) or ``noise_multiplier`` (sum's noise std / Δ2).
    ``rotation_seed`` is public and must be shared by all clients and the server.
    ``mechanism="dgauss"`` (default) uses KLS21's distributed discrete Gaussian; ``"skellam"``
    AKL21's Skellam (cheaper to sample, slightly more noise at the same ε for small n).
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    clip: float
    dim: int
    min_survivors: int
    rotation_seed: int
    budget: Budget | None = None
    noise_multiplier: float | None = None
    bits: int | None = None
    gamma: float | None = None
    modclip_prob: float = 1e-6
    mechanism: Mechanism = "dgauss"
    max_clients: int | None = None
    beta: float = DEFAULT_BETA
    unit: PrivacyUnit = PrivacyUnit.USER

    @pydantic.model_validator(mode="after")
    def _check(self) -> DistributedDPConfig:
        if (self.budget is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of budget and noise_multiplier")
        if self.clip <= 0 or not math.isfinite(self.clip):
            raise ValueError(f"clip must be > 0 and finite, found {self.clip}")
        if self.dim < 1 or self.min_survivors < 1:
            raise ValueError("dim and min_survivors must be >= 1")
        return self

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"invalid distributed-DP config {where}: {err['msg']}") from None


class DistributedDPEncoder:
    """Client-side encoder and server-side decoder of distributed DP around a secure sum.

    Mechanism: per-client discrete Gaussian (default) or Skellam integer noise on the rotated,
    scaled and conditionally rounded clipped update, wrapped modulo ``2^b``.
    Sensitivity: ``Δ2 = plan.delta2``, ``Δ1 = plan.delta1`` on the integer grid (conditional
    rounding makes them hold for every encoded vector). Privacy unit: one client's update.
    Neighbouring relation: one client's update added or removed — :meth:`decode` pads the sum to
    ``max_clients`` noise shares, so the noise does not change with it (against the server,
    which knows who took part, the update replaced by zero).
    Accounting: KLS21 Prop. 14 (dgauss) or AKL21 Thm. 3.5 (Skellam), as an RDP curve converted
    by dp-accounting; :meth:`guarantee_for` gives the guarantee for the true survivor count.

    >>> import numpy as np
    >>> from privrec.privacy import Budget
    >>> enc = DistributedDPEncoder(DistributedDPConfig(
    ...     clip=1.0, dim=8, min_survivors=10, rotation_seed=7, budget=Budget(2.0, 1e-5)))
    >>> y = enc.encode(np.ones(8) / 8)
    >>> y.dtype, bool(y.max() < 2 ** enc.plan.bits)
    (dtype('uint64'), True)
    """

    def __init__(self, config: DistributedDPConfig) -> None:
        self.config = config
        self.plan = calibrate_distributed(
            config.budget,
            config.clip,
            config.dim,
            config.min_survivors,
            bits=config.bits,
            gamma=config.gamma,
            mechanism=config.mechanism,
            modclip_prob=config.modclip_prob,
            max_clients=config.max_clients,
            beta=config.beta,
            noise_multiplier=config.noise_multiplier,
            unit=config.unit,
        )
        self._signs = rotation_signs(config.rotation_seed, self.plan.padded_dim)

    @property
    def bits(self) -> int:
        return self.plan.bits

    @property
    def encoded_dim(self) -> int:
        """Length of an encoded vector: the dimension padded to a power of two."""
        return self.plan.padded_dim

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.plan.dim:
            raise DataError(
                "update has the wrong shape",
                field="x",
                expected=f"(..., {self.plan.dim})",
                found=arr.shape,
            )
        if not np.all(np.isfinite(arr)):
            raise DataError("update contains NaN or infinite values", field="x")
        return arr

    def quantise(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Steps 1–4 (clip, rotate, scale, conditional rounding), no noise: int64 grid vectors.

        Accepts one update ``(d,)`` or a batch ``(n, d)`` (rows rounded independently).
        """
        arr = self._check_input(x)
        gen = secure_generator() if rng is None else rng
        rows = np.atleast_2d(arr)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        factor = np.minimum(1.0, self.plan.clip / np.maximum(norms, 1e-300))
        scaled = rotate(rows * factor, self._signs) / self.plan.gamma
        floor = np.floor(scaled)
        frac = scaled - floor
        out = np.empty(scaled.shape, dtype=np.int64)
        todo = np.arange(rows.shape[0])
        bound_sq = self.plan.delta2**2
        for _ in range(_MAX_ROUNDING_TRIES):
            up = gen.random((todo.size, scaled.shape[1])) < frac[todo]
            cand = floor[todo] + up
            ok = np.einsum("ij,ij->i", cand, cand) <= bound_sq
            out[todo[ok]] = cand[ok].astype(np.int64)
            todo = todo[~ok]
            if todo.size == 0:
                break
        else:  # probability ≤ β^200 per row
            raise DataError("conditional rounding did not meet the norm bound", field="x")
        return out[0] if arr.ndim == 1 else out

    def encode(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One client's (or a batch's) SecAgg input: ``uint64`` values in ``[0, 2^b)``.

        ``rng`` defaults to a fresh ChaCha20 :func:`secure_generator`; pass a
        :func:`~privrec.privacy.randomness.seeded_generator` only for tests (it warns).
        The output can go straight into the masked-input phase of secure aggregation.
        """
        gen = secure_generator() if rng is None else rng
        q = self.quantise(x, gen)
        if self.plan.mechanism == "dgauss":
            noise = sample_discrete_gaussian(math.sqrt(self.plan.local_variance), q.shape, gen)
        else:
            noise = sample_skellam(self.plan.local_variance, q.shape, gen)
        return self.wrap(q + noise)

    def wrap(self, z: np.ndarray) -> np.ndarray:
        """Signed integers → ``uint64`` in ``[0, 2^b)`` (two's complement, then mask)."""
        u = np.asarray(z, dtype=np.int64).view(np.uint64)
        if self.plan.bits < 64:
            u = u & np.uint64(self.plan.modulus - 1)
        return u

    def unwrap(self, s: np.ndarray) -> np.ndarray:
        """``[0, 2^b)`` → signed integers in ``[-2^(b-1), 2^(b-1))``."""
        u = np.asarray(s)
        if u.dtype != np.uint64:
            if not np.issubdtype(u.dtype, np.integer) or (u.size and int(u.min()) < 0):
                raise DataError("modular sum must be non-negative integers", field="sum_mod")
            u = u.astype(np.uint64)
        b = self.plan.bits
        if b < 64:
            if u.size and int(u.max()) >= self.plan.modulus:
                raise DataError("modular sum out of range", field="sum_mod", expected=f"< 2^{b}")
            signed = u.astype(np.int64)
            signed -= (signed >= (1 << (b - 1))).astype(np.int64) << b
            return signed
        return u.view(np.int64)

    def share_noise(self, n_shares: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The sum of ``n_shares`` independent noise shares, each exactly a client's (int64).

        Discrete Gaussian shares are drawn one by one (a sum of discrete Gaussians is not one,
        and KLS21's bound is for the sum of i.i.d. shares), in blocks of about four million
        values; a Skellam sum is one Skellam draw of the summed variance (exact).
        """
        k = int(n_shares)
        d = self.plan.padded_dim
        gen = secure_generator() if rng is None else rng
        if k <= 0:
            return np.zeros(d, dtype=np.int64)
        if self.plan.mechanism == "skellam":
            return sample_skellam(k * self.plan.local_variance, d, gen)
        sigma = math.sqrt(self.plan.local_variance)
        out = np.zeros(d, dtype=np.int64)
        rows = max(1, (1 << 22) // d)
        for start in range(0, k, rows):
            m = min(rows, k - start)
            out += sample_discrete_gaussian(sigma, (m, d), gen).sum(axis=0)
        return out

    def decode(
        self,
        sum_mod: np.ndarray,
        n_survivors: int,
        *,
        mean: bool = False,
        pad: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Server side: the modular sum over ``n_survivors`` clients → float sum (or mean).

        With ``pad`` (the default, and what every release must use) the server first adds
        ``max_clients − n_survivors`` phantom noise shares, drawn exactly like a client's, so the
        released sum always carries ``max_clients`` shares: its noise no longer depends on how
        many devices took part, and adding or removing one user's device changes only the
        signal. Without it the neighbouring sums also differ in variance — a difference the
        per-round bound does not cover and amplification by sampling turns into a large one
        (docs/distributed_dp.md, "Neighbouring relation"). The phantom noise is known to the
        server, so against the server only the honest clients' shares count, as before.
        ``rng`` draws the phantom shares (default: a fresh CSPRNG).

        Raises :class:`DataError` on a wrong length, out-of-range values, or more survivors than
        ``max_clients`` (the overflow bound would not hold). Report
        ``self.guarantee_for(honest survivors)`` to the accountant, not the planned budget.
        """
        n = _check_count(n_survivors, "n_survivors")
        if n > self.plan.max_clients:
            raise DataError(
                "more survivors than the overflow bound was planned for",
                field="n_survivors",
                expected=f"<= max_clients={self.plan.max_clients}",
                found=n,
            )
        s = np.asarray(sum_mod)
        if s.shape != (self.plan.padded_dim,):
            raise DataError(
                "modular sum has the wrong shape",
                field="sum_mod",
                expected=f"({self.plan.padded_dim},)",
                found=s.shape,
            )
        signed_int = self.unwrap(s)
        if pad and n < self.plan.max_clients:
            # the padded sum is still within the overflow bound: it is sized for max_clients
            signed_int = self.unwrap(
                self.wrap(signed_int + self.share_noise(self.plan.max_clients - n, rng))
            )
        signed = signed_int.astype(np.float64) * self.plan.gamma
        out = unrotate(signed, self._signs, self.plan.dim)
        return out / n if mean else out

    def guarantee_for(self, n_survivors: int) -> DistributedGuarantee:
        """See :meth:`DistributedDPPlan.guarantee_for`."""
        return self.plan.guarantee_for(n_survivors)
