"""Homomorphic private scoring: the server scores a user it cannot see.

A recommender's released item factors ``Y`` (n_items × k) are public to the
serving server; a user's factor vector ``u`` and the scores ``Y u`` reveal the
user's taste. Here the **client** folds itself in from its own history, encrypts
``u`` under CKKS (approximate arithmetic on encrypted real vectors) and sends it
with a *public* context (public key, and rotation keys when the packing needs
them; never the secret key). The **server** multiplies the ciphertext by its
plaintext item matrix and returns encrypted scores for the whole catalogue; only
the client can decrypt them, remove its seen items and take the top-k.

Two packings are offered because they trade upload against server work:

``Packing.REPLICATED``
    The client sends k ciphertexts, the f-th holding ``u_f`` in every slot. The
    server computes ``Σ_f enc(u_f) ⊙ Y[:, f]`` per chunk of ``slot_count`` items
    with plaintext multiplications and additions only: **no rotation (Galois)
    keys**, the fastest server compute, but a k-fold larger upload.
``Packing.COMPACT`` (default)
    The client sends one ciphertext holding ``u`` (zero-padded to a power-of-two
    period p ≥ k and repeated across the slots) plus, once per session, the
    rotation key for one slot. The server forms the p rotations of that
    ciphertext once per query and multiplies them by the generalised diagonals
    of each chunk of the item matrix (the diagonal method of Halevi and Shoup):
    the smallest upload, paid for by p - 1 key-switching rotations per query.

Both are ciphertext × plaintext-matrix products with one rescale per chunk of
``slot_count`` items; the server encodes its item matrix once and reuses it.

Security: parameters must meet 128-bit security under the HE-standard bounds
(:data:`HE_STANDARD_MAX_BITS`); this is checked when a context is created *and*
when one is loaded from bytes, and a context carrying a secret key is refused by
the server (:class:`~privrec.errors.InsecureParametersError`).

Model extraction: the client learns the scores, so without noise k linearly
independent queries reveal ``Y`` exactly. :class:`ScoreNoise` makes the server
add calibrated Gaussian noise to every encrypted score (see
``docs/secure_scoring.md`` for what that does and does not protect).

Response re-randomisation: a plaintext product's second component is the
client's own second component times the server's plaintext, which a client that
kept its ciphertext can divide out — the item factors, exactly, whatever noise
was added to the first component. Every returned ciphertext therefore gets a
fresh encryption of zero under the client's public key added
(:meth:`HEBackend.rerandomise`), and a context without a public key is refused.

The cryptography sits behind the small :class:`HEBackend` protocol, implemented
by :class:`TenSEALBackend`, so that another library can be plugged in.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import dp_accounting
import numpy as np
import numpy.typing as npt

from privrec.errors import ConfigError, DataError, InsecureParametersError, MessageRejected
from privrec.models.ranking import top_k
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.budget import Budget
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.randomness import secure_generator
from privrec.secure.he_backend import (
    HE_STANDARD_MAX_BITS,
    CKKSParams,
    TenSEALBackend,
    _bool_field,
    _int_field,
    _pack,
    _unpack,
    check_security,
)

__all__ = [
    "DEFAULT_PACKING",
    "HE_STANDARD_MAX_BITS",
    "CKKSParams",
    "HEBackend",
    "Packing",
    "PrivateScoringClient",
    "PrivateScoringServer",
    "ScoreNoise",
    "ScoringRequest",
    "ScoringResponse",
    "TenSEALBackend",
    "check_security",
    "private_recommend",
]


class Packing(StrEnum):
    """How the user vector is laid out in ciphertexts (see the module docstring)."""

    REPLICATED = "replicated"
    COMPACT = "compact"


#: Default: 64× smaller upload and ~60× less client work than the replicated packing at 64
#: factors, for one 0.7 MB rotation key per session and a server compute still within the
#: 0.3 s target at 10k items (measurements in ``docs/secure_scoring.md``).
DEFAULT_PACKING = Packing.COMPACT


_MAGIC_REQUEST = b"PRHEQ1"
_MAGIC_RESPONSE = b"PRHER1"
#: Most factors a request can carry: the slots of the largest standard ring (degree 32768)
_MAX_FACTORS = 16384
_CONTEXT_ID = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- backend
@runtime_checkable
class HEBackend(Protocol):
    """What private scoring needs from a homomorphic-encryption library.

    Contexts, ciphertexts and encoded plaintexts are opaque handles (``Any``)
    owned by the backend. A *secret* context can encrypt and decrypt; a
    *public* one (loaded from :meth:`context_bytes` without the secret key) can
    only encrypt and compute. The ciphertext × plaintext-matrix product is
    expressed by two primitives so a backend can share work across chunks:
    :meth:`weighted_sum` (Σ_f ct_f ⊙ p_f, one rescale) and :meth:`rotations`.
    """

    name: str

    def keygen(self, params: CKKSParams, *, rotations: bool) -> Any:
        """A fresh secret context (keys included), after validating ``params``."""
        ...

    def context_bytes(
        self, context: Any, *, include_secret_key: bool = False, include_public_key: bool = True
    ) -> bytes:
        """Serialise ``context``; the secret key only when explicitly asked (client backups).

        ``include_public_key=False`` drops the public key (a context only for computing); a
        scoring server refuses such a context, as it cannot re-randomise its responses.
        """
        ...

    def load_context(self, data: bytes, *, expected: CKKSParams | None = None) -> Any:
        """Deserialise a context, checking 128-bit security before and after parsing.

        ``expected`` (a server's own parameters): anything else is refused with
        :class:`~privrec.errors.MessageRejected` before a key is parsed. A context's primes
        must be exactly those its parameters derive, so two contexts with equal parameters
        are interchangeable (a server encodes its item matrix once, for all clients).
        """
        ...

    def context_params(self, context: Any) -> CKKSParams: ...

    def is_private(self, context: Any) -> bool:
        """Whether the context holds a secret key."""
        ...

    def has_rotation_keys(self, context: Any) -> bool: ...

    def has_public_key(self, context: Any) -> bool:
        """Whether the context can encrypt (holds a public key): :meth:`rerandomise` needs it."""
        ...

    def encrypt(self, context: Any, values: npt.NDArray[np.float64]) -> Any: ...

    def decrypt(self, context: Any, ciphertext: Any) -> npt.NDArray[np.float64]: ...

    def serialize(self, ciphertext: Any) -> bytes: ...

    def deserialize(self, context: Any, data: bytes) -> Any:
        """A ciphertext from a peer; refused unless it fits ``context``'s parameters."""
        ...

    def check_fresh(self, context: Any, ciphertext: Any) -> None:
        """Refuse (:class:`~privrec.errors.MessageRejected`) anything but a fresh encryption at
        the agreed level and scale — what a server accepts as a request."""
        ...

    def encode(self, context: Any, values: npt.NDArray[np.float64]) -> Any:
        """A plaintext at the level and scale of a fresh ciphertext (servers cache these)."""
        ...

    def weighted_sum(self, context: Any, ciphertexts: Sequence[Any], plains: Sequence[Any]) -> Any:
        """``Σ_f ciphertexts[f] ⊙ plains[f]`` slot-wise, rescaled once; needs no rotation keys."""
        ...

    def rotations(self, context: Any, ciphertext: Any, n: int) -> list[Any]:
        """``ciphertext`` rotated left by 0, 1, …, n-1 slots (needs rotation keys)."""
        ...

    def add_plain(
        self,
        context: Any,
        ciphertext: Any,
        values: npt.NDArray[np.float64] | npt.NDArray[np.complex128],
    ) -> Any:
        """``ciphertext + values``, encoded at the ciphertext's own level and scale.

        Complex ``values`` fill the imaginary half of the slots too: noise meant to cover
        everything a client can decrypt must be drawn there as well.
        """
        ...

    def rerandomise(self, context: Any, ciphertext: Any) -> Any:
        """``ciphertext`` plus a fresh encryption of zero under the context's public key.

        Decrypts to the same values (up to the fresh encryption's own tiny error), but no
        component is any longer a function of the request and the server's plaintexts alone:
        without it, a product's second component is the client's own second component times
        the server's plaintext, which the client can divide out. Raises
        :class:`~privrec.errors.MessageRejected` when the context holds no public key.
        """
        ...


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class ScoringRequest:
    """Client → server: the encrypted user vector and (first time) the public context.

    ``context`` is ``None`` when the server already holds the context named by
    ``context_id`` (SHA-256 of its bytes), so rotation keys travel once per session.
    """

    packing: Packing
    n_factors: int
    context_id: str
    ciphertexts: tuple[bytes, ...]
    context: bytes | None = None

    @property
    def ciphertext_bytes(self) -> int:
        return sum(len(c) for c in self.ciphertexts)

    @property
    def context_bytes(self) -> int:
        return 0 if self.context is None else len(self.context)

    def to_bytes(self) -> bytes:
        header = {
            "packing": self.packing.value,
            "n_factors": self.n_factors,
            "context_id": self.context_id,
            "has_context": self.context is not None,
        }
        blobs = ([self.context] if self.context is not None else []) + list(self.ciphertexts)
        return _pack(_MAGIC_REQUEST, header, blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoringRequest:
        """Parse a client's request; anything malformed is :class:`MessageRejected`.

        Fields are typed strictly (a JSON int for ``n_factors``, not ``1e999`` or ``"8"``) and
        nothing the client wrote is echoed back in the refusal.
        """
        header, blobs = _unpack(_MAGIC_REQUEST, data)
        values = {p.value: p for p in Packing}
        packing = values.get(header["packing"]) if isinstance(header.get("packing"), str) else None
        if packing is None:
            raise MessageRejected("malformed request header: unknown packing")
        n_factors = _int_field(header, "n_factors", 1, _MAX_FACTORS)
        has_context = _bool_field(header, "has_context")
        context_id = header.get("context_id")
        if not isinstance(context_id, str) or not _CONTEXT_ID.fullmatch(context_id):
            raise MessageRejected("malformed request header: context_id must be a SHA-256 in hex")
        context = blobs.pop(0) if has_context and blobs else None
        if has_context and context is None:
            raise MessageRejected("request announces a context but carries none")
        return cls(packing, n_factors, context_id, tuple(blobs), context)


@dataclass(frozen=True)
class ScoringResponse:
    """Server → client: encrypted scores, ``slot_count`` items per ciphertext.

    ``noise_sigma`` is the standard deviation of the Gaussian noise the server
    added to each score (0 when none), so the client knows how noisy they are.
    """

    n_items: int
    ciphertexts: tuple[bytes, ...]
    noise_sigma: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.ciphertexts)

    def to_bytes(self) -> bytes:
        header = {"n_items": self.n_items, "noise_sigma": self.noise_sigma}
        return _pack(_MAGIC_RESPONSE, header, self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoringResponse:
        """Parse a server's response (strictly, like :meth:`ScoringRequest.from_bytes`)."""
        header, blobs = _unpack(_MAGIC_RESPONSE, data)
        n_items = _int_field(header, "n_items", 0, 1 << 40)
        sigma = header.get("noise_sigma")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float):
            sigma = -1.0
        if not (math.isfinite(sigma) and sigma >= 0):
            raise MessageRejected("malformed response header: noise_sigma must be finite, >= 0")
        return cls(n_items, tuple(blobs), float(sigma))


# --------------------------------------------------------------------------- DP noise
@dataclass(frozen=True)
class ScoreNoise:
    """Gaussian noise on every returned score, against model extraction.

    Privacy unit: **one item's factor row**. The server clips its released rows
    to ``item_clip_norm`` (C_Y) and the protocol states that clients clip their
    vector to ``user_clip_norm`` (C_u); zeroing one row then changes one score
    by at most ``C_u · C_Y``, the L2 sensitivity of the whole score vector. Each
    query is one Gaussian mechanism with noise multiplier calibrated by
    privrec's accountant to ``(epsilon, delta)`` *per query*; ``n`` queries
    compose (:meth:`epsilon_after`).

    The server cannot check ``‖u‖ ≤ C_u`` on an encrypted vector, so the
    guarantee holds against clients that follow the protocol; a client that
    scales its vector up divides the effective noise by that factor.
    """

    epsilon: float
    delta: float
    item_clip_norm: float
    user_clip_norm: float
    noise_multiplier: float = field(init=False)

    def __post_init__(self) -> None:
        budget = Budget(self.epsilon, self.delta)
        for name in ("item_clip_norm", "user_clip_norm"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be finite and > 0, found {value}")
        z = calibrate(budget, gaussian_event)
        object.__setattr__(self, "noise_multiplier", float(z))

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one query's score vector to one item row: ``C_u · C_Y``."""
        return self.item_clip_norm * self.user_clip_norm

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise on each score."""
        return self.noise_multiplier * self.sensitivity

    def event(self, n_queries: int = 1) -> dp_accounting.DpEvent:
        one = gaussian_event(self.noise_multiplier)
        return one if n_queries == 1 else dp_accounting.SelfComposedDpEvent(one, n_queries)

    def epsilon_after(self, n_queries: int, delta: float | None = None) -> float:
        """ε (at ``delta``, default the per-query δ) of ``n_queries`` answered queries."""
        return epsilon_of(self.event(n_queries), self.delta if delta is None else delta)


# --------------------------------------------------------------------------- parties
@dataclass
class _Timings:
    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.values[name] = self.values.get(name, 0.0) + seconds


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


class PrivateScoringServer:
    """Holds the released item factors and scores encrypted user vectors.

    Parameters
    ----------
    item_factors
        Released item factors, shape (n_items, k) — what the model publishes.
    params
        The CKKS parameters the server accepts; a context with any other
        parameters (or below 128-bit security, or holding a secret key) is refused.
    noise
        Optional :class:`ScoreNoise`; rows are then clipped to its ``item_clip_norm``.
    backend
        The :class:`HEBackend` (TenSEAL by default).
    rng
        Noise source; a ChaCha20 CSPRNG by default. Pass a seeded one only in tests.
    max_sessions
        How many client contexts to keep (least recently used are dropped).
    """

    def __init__(
        self,
        item_factors: npt.ArrayLike,
        *,
        params: CKKSParams | None = None,
        noise: ScoreNoise | None = None,
        backend: HEBackend | None = None,
        rng: np.random.Generator | None = None,
        max_sessions: int = 8,
    ) -> None:
        y = np.asarray(item_factors, dtype=np.float64)
        if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
            raise DataError("item factors must be a non-empty (n_items, k) matrix", found=y.shape)
        if not np.isfinite(y).all():
            raise DataError("item factors hold non-finite values", expected="finite numbers")
        self.params = params or CKKSParams()
        self.params.validate()
        if y.shape[1] > self.params.slot_count:
            raise ConfigError(
                f"{y.shape[1]} factors exceed the {self.params.slot_count} slots of one ciphertext"
            )
        if noise is not None:
            norms = np.linalg.norm(y, axis=1, keepdims=True)
            y = y * np.minimum(1.0, noise.item_clip_norm / np.maximum(norms, 1e-300))
        self.noise = noise
        self.backend: HEBackend = backend or TenSEALBackend()
        self._yt = np.ascontiguousarray(y.T)  # (k, n_items): one row per factor
        self._rng = rng
        self._sessions: OrderedDict[str, Any] = OrderedDict()
        # the item matrix encoded under the server's own parameters, per packing: never under
        # a client's context (a client's context only ever computes with it)
        self._encoded: dict[tuple[CKKSParams, Packing], list[list[Any]]] = {}
        self.max_sessions = max_sessions
        self.queries_answered = 0
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> PrivateScoringServer:
        """A server for a fitted factor model's released ``item_factors_``."""
        factors = getattr(model, "item_factors_", None)
        if factors is None:
            raise ConfigError(
                f"{type(model).__name__} has no item_factors_: private scoring needs a factor model"
            )
        return cls(factors, **kwargs)

    @property
    def n_items(self) -> int:
        return int(self._yt.shape[1])

    @property
    def n_factors(self) -> int:
        return int(self._yt.shape[0])

    def contexts(self) -> list[Any]:
        """The client contexts held (all public: the server never holds a secret key)."""
        return list(self._sessions.values())

    def _context(self, request: ScoringRequest) -> Any:
        if request.context is None:
            ctx = self._sessions.get(request.context_id)
            if ctx is None:
                raise MessageRejected("unknown context: send the public context again")
            self._sessions.move_to_end(request.context_id)
            return ctx
        if hashlib.sha256(request.context).hexdigest() != request.context_id:
            raise MessageRejected("context bytes do not match the announced context id")
        # expected=: the backend refuses any other parameters, primes included, before any key
        ctx = self.backend.load_context(request.context, expected=self.params)
        if self.backend.is_private(ctx):
            del ctx
            raise InsecureParametersError(
                "the client sent a context holding its secret key: refused (the server must only "
                "ever receive public keys); send context_bytes(ctx), not include_secret_key=True"
            )
        if self.backend.context_params(ctx) != self.params:  # a backend that ignored expected=
            raise MessageRejected(
                f"the context's parameters differ from the ones this server uses ({self.params})"
            )
        if not self.backend.has_public_key(ctx):
            raise MessageRejected(
                "the context holds no public key: every response is re-randomised with a fresh "
                "encryption of zero under it, and none is sent without"
            )
        if request.packing is Packing.COMPACT and not self.backend.has_rotation_keys(ctx):
            raise MessageRejected("the compact packing needs rotation (Galois) keys in the context")
        self._sessions[request.context_id] = ctx
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return ctx

    def _blocks(self, packing: Packing) -> list[list[Any]]:
        """The item matrix encoded once per packing, one list of plaintexts per chunk.

        Encoding dominates a product's cost, and the item matrix is the same for
        every query, so it is done once (memory: k plaintexts of ~130 KB per
        chunk of ``slot_count`` items at degree 8192). It is encoded under a throwaway
        context of the server's own parameters, never under a client's: a client's context
        once decided the cache, and one with other primes broke every later query. A
        client's context is accepted only with exactly these parameters (primes included).
        """
        key = (self.params, packing)
        blocks = self._encoded.get(key)
        if blocks is not None:
            return blocks
        ctx = self.backend.keygen(self.params, rotations=False)
        slots, k = self.params.slot_count, self.n_factors
        blocks = []
        for lo, hi in _chunks(self.n_items, slots):
            if packing is Packing.REPLICATED:
                rows = np.zeros((k, slots))
                rows[:, : hi - lo] = self._yt[:, lo:hi]
            else:
                period = _period(k)
                padded = np.zeros((period, hi - lo))
                padded[:k] = self._yt[:, lo:hi]
                # generalised diagonals: slot j of diagonal i multiplies u[(j + i) mod period]
                j = np.arange(hi - lo)
                rows = np.zeros((period, slots))
                rows[:, : hi - lo] = padded[(j[None, :] + np.arange(period)[:, None]) % period, j]
            blocks.append([self.backend.encode(ctx, r) for r in rows])
        del ctx
        self._encoded[key] = blocks
        return blocks

    def prepare(self, packing: Packing | str = DEFAULT_PACKING) -> float:
        """Encode the item matrix for ``packing`` ahead of the first query; returns seconds."""
        t0 = time.perf_counter()
        self._blocks(Packing(packing))
        return time.perf_counter() - t0

    def score(self, request: ScoringRequest | bytes) -> ScoringResponse:
        """Encrypted scores of every item for the encrypted user vector in ``request``.

        Each chunk's ciphertext is the product, plus the DP noise when configured, plus a
        fresh encryption of zero (:meth:`HEBackend.rerandomise`): only the last makes the
        response's second component independent of the server's plaintexts, so it is never
        skipped. The noise is drawn in the real *and* imaginary half of every slot: the
        client decodes real parts, but it can decrypt both, and a query placed in the
        imaginary half comes back as ``Y v`` (``last_timings["rerandomise"]`` times the
        re-randomisation alone).
        """
        t = _Timings()
        t0 = time.perf_counter()
        req = ScoringRequest.from_bytes(request) if isinstance(request, bytes) else request
        if req.n_factors != self.n_factors:
            raise MessageRejected(
                f"request has {req.n_factors} factors, the item matrix has {self.n_factors}"
            )
        ctx = self._context(req)
        expected = self.n_factors if req.packing is Packing.REPLICATED else 1
        if len(req.ciphertexts) != expected:
            raise MessageRejected(
                f"{req.packing.value} packing expects {expected} ciphertexts, "
                f"found {len(req.ciphertexts)}"
            )
        cts = [self.backend.deserialize(ctx, c) for c in req.ciphertexts]
        for ct in cts:
            self.backend.check_fresh(ctx, ct)
        t.add("load", time.perf_counter() - t0)
        t1 = time.perf_counter()
        blocks = self._blocks(req.packing)
        t.add("encode", time.perf_counter() - t1)
        t1 = time.perf_counter()
        if req.packing is Packing.COMPACT:  # rotations once per query, shared by all chunks
            cts = self.backend.rotations(ctx, cts[0], _period(self.n_factors))
        sigma = self.noise.sigma if self.noise is not None else 0.0
        if sigma > 0 and self._rng is None:
            self._rng = secure_generator()
        encrypted = []
        for plains in blocks:
            enc = self.backend.weighted_sum(ctx, cts, plains)
            if sigma > 0:
                assert self._rng is not None
                real, imag = self._rng.normal(0.0, sigma, size=(2, self.params.slot_count))
                enc = self.backend.add_plain(ctx, enc, real + 1j * imag)
            encrypted.append(enc)
        t.add("compute", time.perf_counter() - t1)
        t1 = time.perf_counter()
        encrypted = [self.backend.rerandomise(ctx, e) for e in encrypted]
        t.add("rerandomise", time.perf_counter() - t1)
        t2 = time.perf_counter()
        out = tuple(self.backend.serialize(e) for e in encrypted)
        t.add("serialize", time.perf_counter() - t2)
        self.queries_answered += 1
        self.last_timings = t.values
        return ScoringResponse(self.n_items, out, sigma)


def _period(k: int) -> int:
    """Smallest power of two ≥ k: the replication period of the compact packing."""
    return 1 << max(0, (k - 1).bit_length())


class PrivateScoringClient:
    """Owns the secret key; encrypts its user vector and decrypts its scores.

    Parameters
    ----------
    packing
        :class:`Packing` (default :data:`DEFAULT_PACKING`).
    params
        CKKS parameters; must match the server's.
    backend
        The :class:`HEBackend` (TenSEAL by default).
    user_clip_norm
        Clip the user vector to this L2 norm before encrypting — the bound a
        server's :class:`ScoreNoise` assumes (``None``: no clipping).
    """

    def __init__(
        self,
        *,
        packing: Packing | str = DEFAULT_PACKING,
        params: CKKSParams | None = None,
        backend: HEBackend | None = None,
        user_clip_norm: float | None = None,
    ) -> None:
        try:
            self.packing = Packing(packing)
        except ValueError:
            raise ConfigError(
                f"unknown packing {packing!r}; choose {[p.value for p in Packing]}"
            ) from None
        self.params = params or CKKSParams()
        self.backend: HEBackend = backend or TenSEALBackend()
        self.user_clip_norm = user_clip_norm
        t0 = time.perf_counter()
        self._context = self.backend.keygen(self.params, rotations=self.packing is Packing.COMPACT)
        self.public_context = self.backend.context_bytes(self._context)
        self.context_id = hashlib.sha256(self.public_context).hexdigest()
        self._context_sent = False
        self.keygen_seconds = time.perf_counter() - t0
        self.last_timings: dict[str, float] = {}

    @staticmethod
    def fold_in(model: Any, user_items: Any) -> npt.NDArray[np.float64]:
        """The user's factors from their own history and the released item factors.

        Runs on the client: the history never leaves it.
        """
        u = np.asarray(model.fold_in(user_items), dtype=np.float64)
        return u.reshape(-1) if u.ndim == 2 and u.shape[0] == 1 else u

    def encrypt_query(
        self, user_vector: npt.ArrayLike, *, resend_context: bool = False
    ) -> ScoringRequest:
        """Encrypt ``user_vector``; the public context is attached on the first query only."""
        t0 = time.perf_counter()
        u = np.asarray(user_vector, dtype=np.float64).reshape(-1)
        if u.size == 0 or not np.isfinite(u).all():
            raise DataError("the user vector must be non-empty and finite", found=u.shape)
        if self.user_clip_norm is not None:
            norm = float(np.linalg.norm(u))
            if norm > self.user_clip_norm:
                u = u * (self.user_clip_norm / norm)
        slots = self.params.slot_count
        if u.size > slots:
            raise ConfigError(f"{u.size} factors exceed the {slots} slots of one ciphertext")
        if self.packing is Packing.REPLICATED:
            cts = [self.backend.encrypt(self._context, np.full(slots, x)) for x in u]
        else:  # u zero-padded to a power-of-two period and repeated across all slots
            period = _period(u.size)
            padded = np.zeros(period)
            padded[: u.size] = u
            cts = [self.backend.encrypt(self._context, np.tile(padded, slots // period))]
        blobs = tuple(self.backend.serialize(c) for c in cts)
        send = resend_context or not self._context_sent
        self._context_sent = True
        self.last_timings = {"encrypt": time.perf_counter() - t0}
        return ScoringRequest(
            self.packing,
            int(u.size),
            self.context_id,
            blobs,
            self.public_context if send else None,
        )

    def decrypt_scores(self, response: ScoringResponse | bytes) -> npt.NDArray[np.float64]:
        """All items' scores, in the server's item order."""
        t0 = time.perf_counter()
        resp = ScoringResponse.from_bytes(response) if isinstance(response, bytes) else response
        slots = self.params.slot_count
        if len(resp.ciphertexts) != -(-resp.n_items // slots):
            raise MessageRejected(
                f"response holds {len(resp.ciphertexts)} ciphertexts for {resp.n_items} items"
            )
        parts = [
            self.backend.decrypt(self._context, self.backend.deserialize(self._context, c))
            for c in resp.ciphertexts
        ]
        scores = np.concatenate([p[:slots] for p in parts]) if parts else np.empty(0)
        if scores.size < resp.n_items:
            raise MessageRejected(
                f"response holds {scores.size} scores for a catalogue of {resp.n_items} items"
            )
        self.last_timings["decrypt"] = time.perf_counter() - t0
        return scores[: resp.n_items]

    def recommend(
        self,
        response: ScoringResponse | bytes,
        k: int = 10,
        seen: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``k`` ``(item_indices, scores)``, best first, leaving out ``seen`` items.

        Like :meth:`~privrec.models.base.Recommender.recommend`: when fewer than
        ``k`` items remain the tail is padded with item ``-1`` and score ``-inf``.
        """
        scores = self.decrypt_scores(response).astype(np.float32)
        if seen is not None:
            idx = np.asarray(seen, dtype=np.int64).reshape(-1)
            scores[idx] = -np.inf
        kk = int(min(max(k, 0), scores.size))
        items, top = top_k(scores[None, :], kk)
        return items[0], top[0]

    @property
    def context(self) -> Any:
        """The secret context (never sent anywhere)."""
        return self._context


def private_recommend(
    model: Any,
    user_items: Any,
    k: int = 10,
    *,
    server: PrivateScoringServer | None = None,
    client: PrivateScoringClient | None = None,
    packing: Packing | str = DEFAULT_PACKING,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Client and server in one process: fold in, encrypt, score, decrypt, top-k.

    ``user_items`` is the user's history as a 1-D row over the model's items;
    seen items are left out. Items a private model did not release (DPALS
    tail items) are left out too, as its own ``recommend`` does.

    >>> import numpy as np, scipy.sparse as sp
    >>> from privrec.models.als import ImplicitALS
    >>> rng = np.random.default_rng(0)
    >>> x = sp.random(40, 30, density=0.2, random_state=0, format="csr")
    >>> model = ImplicitALS(factors=4, iterations=3).fit(x)
    >>> hist = x[0].toarray()[0]
    >>> items, scores = private_recommend(model, hist, k=5)
    >>> (items == model.recommend_history(hist, k=5)[0]).all()
    np.True_
    """
    client = client or PrivateScoringClient(packing=packing)
    server = server or PrivateScoringServer.from_model(model, params=client.params)
    u = client.fold_in(model, np.asarray(user_items).reshape(1, -1))
    response = server.score(client.encrypt_query(u))
    hist = np.asarray(user_items).reshape(-1)
    seen = np.flatnonzero(hist)
    head = getattr(model, "head_items_", None)
    if head is not None:
        unreleased = np.setdiff1d(np.arange(server.n_items), np.asarray(head))
        seen = np.union1d(seen, unreleased)
    return client.recommend(response, k, seen)
