"""The cryptographic back end of homomorphic scoring: CKKS parameters, their security check,
the :class:`HEBackend` protocol and its TenSEAL/SEAL implementation (see :mod:`privrec.secure.he`).

SEAL's Python bindings serialise to files only. :class:`TenSEALBackend` passes objects through
an anonymous in-memory file (``memfd_create``: nothing on any file system, freed by the kernel
whenever the process ends, ``kill -9`` included); where that is unavailable, through a private
folder in ``/dev/shm`` named after the process id, removed on exit and swept at the next start
if a killed process left it behind (:func:`sweep_stale_scratch`). Secret keys pass through it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from privrec.errors import ConfigError, InsecureParametersError, MessageRejected

__all__ = [
    "DEFAULT_PACKING",
    "HE_STANDARD_MAX_BITS",
    "CKKSParams",
    "HEBackend",
    "Packing",
    "TenSEALBackend",
    "check_security",
    "sweep_stale_scratch",
]

#: Largest total coefficient-modulus bits per ring degree for 128-bit classical
#: security with a ternary secret (HomomorphicEncryption.org standard, Table 1;
#: the same bounds SEAL enforces).
HE_STANDARD_MAX_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}


def check_security(poly_modulus_degree: int, total_modulus_bits: int) -> None:
    """Refuse parameters below 128-bit security.

    Security of RLWE falls as the modulus grows for a fixed ring degree, so the
    bound is on the *total* bits of the modulus chain (special prime included).

    Raises
    ------
    InsecureParametersError
        When the degree is not a standard power of two or the modulus is too large.
    """
    bound = HE_STANDARD_MAX_BITS.get(int(poly_modulus_degree))
    if bound is None:
        raise InsecureParametersError(
            f"poly_modulus_degree={poly_modulus_degree} is not one of the HE-standard degrees "
            f"{sorted(HE_STANDARD_MAX_BITS)}"
        )
    if total_modulus_bits > bound:
        raise InsecureParametersError(
            f"coefficient modulus of {total_modulus_bits} bits exceeds the 128-bit security bound "
            f"of {bound} bits for poly_modulus_degree={poly_modulus_degree}"
        )


class Packing(StrEnum):
    """How the user vector is laid out in ciphertexts (see the module docstring)."""

    REPLICATED = "replicated"
    COMPACT = "compact"


#: Default: 64× smaller upload and ~60× less client work than the replicated packing at 64
#: factors, for one 0.7 MB rotation key per session and a server compute still within the
#: 0.3 s target at 10k items (measurements in ``docs/secure_scoring.md``).
DEFAULT_PACKING = Packing.COMPACT


@dataclass(frozen=True)
class CKKSParams:
    """CKKS parameters: ring degree, modulus chain (bits per prime) and scale.

    The default ``8192, (60, 40, 60), 2**40`` is the smallest ring that gives
    the one multiplicative level scoring needs: the 40-bit scale sets the
    precision (measured errors ~2e-8 replicated, up to ~7e-6 compact, on scores of
    order one), the 60-bit first prime leaves 20 bits above the scale, so
    scores must stay below 2**19 in absolute value (‖u‖ · max‖y_i‖ bounds
    them), and the last 60-bit prime is the key-switching prime.
    160 bits ≤ 218, the 128-bit bound at degree 8192.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40

    @property
    def total_bits(self) -> int:
        return int(sum(self.coeff_mod_bit_sizes))

    @property
    def slot_count(self) -> int:
        return self.poly_modulus_degree // 2

    def validate(self) -> None:
        """Check 128-bit security and that one rescale by ``2**scale_bits`` fits the chain."""
        check_security(self.poly_modulus_degree, self.total_bits)
        sizes = self.coeff_mod_bit_sizes
        if len(sizes) < 3:
            raise ConfigError(
                "CKKS scoring needs at least three primes (data, one level, special), "
                f"found coeff_mod_bit_sizes={sizes}"
            )
        if not all(17 <= b <= 60 for b in sizes):
            raise ConfigError(f"each prime must have 17..60 bits, found {sizes}")
        if not 20 <= self.scale_bits <= min(sizes[1:-1]):
            raise ConfigError(
                f"scale_bits={self.scale_bits} must be in 20..{min(sizes[1:-1])} (the middle primes): "
                "the product is rescaled by one middle prime, which must match the scale"
            )


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

    def load_context(self, data: bytes) -> Any:
        """Deserialise a context, checking 128-bit security before and after parsing."""
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

    def deserialize(self, context: Any, data: bytes) -> Any: ...

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


@dataclass
class _SealContext:
    """A TenSEAL/SEAL context and the keys it holds (the secret key only on the client)."""

    params: CKKSParams
    seal: Any
    public_key: Any | None
    galois_keys: Any | None = None
    secret_key: Any | None = None
    _helpers: dict[str, Any] = field(default_factory=dict)

    def is_private(self) -> bool:
        """Whether this context can decrypt (holds the secret key), as TenSEAL names it."""
        return self.secret_key is not None


_MAGIC_CONTEXT = b"PRHEC1"


class TenSEALBackend:
    """:class:`HEBackend` on the SEAL bindings that ship with TenSEAL (``tenseal.sealapi``).

    Why the SEAL level rather than TenSEAL's ``CKKSVector``: scoring multiplies
    the same released item matrix for every query, and ``CKKSVector`` re-encodes
    its plaintext operand and rescales after every product. Here the server
    encodes the item matrix once per parameter set and rescales once per chunk
    (≈5× faster), and the compact packing needs only the rotation key for one
    slot (≈0.7 MB) instead of TenSEAL's full set (≈18 MB at degree 8192).
    SEAL's own 128-bit check (``sec_level=tc128``) runs on every context, in
    addition to :func:`check_security`.

    SEAL's Python bindings serialise to files only, so objects -- secret keys
    included -- pass through a scratch file: an anonymous in-memory file
    (``scratch="memory"``, ``memfd_create``; nothing on any file system, freed by
    the kernel when the process ends however it ends) or a private folder in
    ``/dev/shm`` (``scratch="directory"``, named ``privrec-he-<pid>-…``, removed
    by :meth:`close`, at interpreter exit and, if a ``kill -9`` left it behind,
    by the next backend's :func:`sweep_stale_scratch`). ``"auto"`` (default)
    prefers memory. Use one backend per thread.
    """

    name = "tenseal"

    def __init__(self, scratch: Literal["auto", "memory", "directory"] = "auto") -> None:
        try:
            import tenseal.sealapi as sealapi
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "homomorphic scoring needs TenSEAL: pip install 'privrec[he]'"
            ) from exc
        if scratch not in ("auto", "memory", "directory"):
            raise ConfigError(f"scratch must be auto, memory or directory, found {scratch!r}")
        self._s: Any = sealapi
        self._path, cleanup = _open_scratch(scratch)
        self.scratch = "memory" if self._path.startswith("/proc/self/fd/") else "directory"
        self._cleanup = weakref.finalize(self, cleanup)

    def close(self) -> None:
        """Release the scratch file now (also done when the backend is collected or at exit)."""
        self._cleanup()

    # (de)serialisation through the private temp file -----------------------
    def _dump(self, obj: Any) -> bytes:
        obj.save(self._path)
        return Path(self._path).read_bytes()

    def _load_into(self, obj: Any, data: bytes, *args: Any) -> Any:
        Path(self._path).write_bytes(data)
        obj.load(*args, self._path)
        return obj

    def _seal_context(self, params: CKKSParams) -> tuple[Any, Any]:
        s = self._s
        parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            s.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
        )
        return parms, self._checked_context(parms)

    def _checked_context(self, parms: Any) -> Any:
        s = self._s
        degree = int(parms.poly_modulus_degree())
        bits = [int(m.bit_count()) for m in parms.coeff_modulus()]
        check_security(degree, sum(bits))  # on what the parameters really hold
        ctx = s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)
        if not ctx.parameters_set():
            raise InsecureParametersError(
                f"SEAL refuses the parameters: {ctx.parameters_error_message()}"
            )
        return ctx

    # contexts ---------------------------------------------------------------
    def keygen(self, params: CKKSParams, *, rotations: bool) -> _SealContext:
        params.validate()
        s = self._s
        _, ctx = self._seal_context(params)
        keygen = s.KeyGenerator(ctx)
        public_key = s.PublicKey()
        keygen.create_public_key(public_key)
        galois = None
        if rotations:
            galois = s.GaloisKeys()
            # the Galois element of a left rotation by one slot is 3 (mod 2N)
            keygen.create_galois_keys([3], galois)
        return _SealContext(params, ctx, public_key, galois, keygen.secret_key())

    def context_bytes(
        self,
        context: _SealContext,
        *,
        include_secret_key: bool = False,
        include_public_key: bool = True,
    ) -> bytes:
        p = context.params
        with_public = include_public_key and context.public_key is not None
        parms, _ = self._seal_context(p)
        header = {
            "scheme": "ckks",
            "poly_modulus_degree": p.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
            "scale_bits": p.scale_bits,
            "public_key": with_public,
            "galois_keys": context.galois_keys is not None,
            "secret_key": include_secret_key and context.secret_key is not None,
        }
        blobs = [self._dump(parms)]
        if with_public:
            blobs.append(self._dump(context.public_key))
        if context.galois_keys is not None:
            blobs.append(self._dump(context.galois_keys))
        if header["secret_key"]:
            blobs.append(self._dump(context.secret_key))
        return _pack(_MAGIC_CONTEXT, header, blobs)

    def load_context(self, data: bytes) -> _SealContext:
        s = self._s
        header, blobs = _unpack(_MAGIC_CONTEXT, data)
        try:
            params = CKKSParams(
                int(header["poly_modulus_degree"]),
                tuple(int(b) for b in header["coeff_mod_bit_sizes"]),
                int(header["scale_bits"]),
            )
            has_galois, has_secret = bool(header["galois_keys"]), bool(header["secret_key"])
            # contexts written before the flag existed always carried their public key
            has_public = bool(header.get("public_key", True))
            scheme = header["scheme"]
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageRejected(f"malformed context header: {exc}") from None
        if scheme != "ckks":
            raise MessageRejected(f"expected a CKKS context, found {scheme!r}")
        try:
            params.validate()  # refuse before parsing any key material
        except InsecureParametersError:
            raise
        except ConfigError as exc:
            raise MessageRejected(f"unusable context parameters: {exc}") from None
        if len(blobs) != 1 + has_public + has_galois + has_secret:
            raise MessageRejected("context payloads do not match its header")
        try:
            parms = self._load_into(s.EncryptionParameters(s.SCHEME_TYPE.CKKS), blobs[0])
        except Exception as exc:  # SEAL raises plain ValueError/RuntimeError
            raise MessageRejected(f"unreadable encryption parameters: {exc}") from None
        ctx = self._checked_context(parms)
        bits = tuple(int(m.bit_count()) for m in parms.coeff_modulus())
        if int(parms.poly_modulus_degree()) != params.poly_modulus_degree or (
            bits != params.coeff_mod_bit_sizes
        ):
            raise MessageRejected("context header disagrees with its encryption parameters")
        try:
            public_key = self._load_into(s.PublicKey(), blobs[1], ctx) if has_public else None
            at = 1 + has_public
            galois = self._load_into(s.GaloisKeys(), blobs[at], ctx) if has_galois else None
            secret = self._load_into(s.SecretKey(), blobs[-1], ctx) if has_secret else None
        except Exception as exc:
            raise MessageRejected(
                f"key material is not valid for these parameters: {exc}"
            ) from None
        return _SealContext(params, ctx, public_key, galois, secret)

    def context_params(self, context: _SealContext) -> CKKSParams:
        return context.params

    def is_private(self, context: _SealContext) -> bool:
        return context.secret_key is not None

    def has_rotation_keys(self, context: _SealContext) -> bool:
        # the one key the compact packing uses: rotation by one slot (Galois element 3)
        return context.galois_keys is not None and bool(context.galois_keys.has_key(3))

    def has_public_key(self, context: _SealContext) -> bool:
        return context.public_key is not None

    def _helper(self, context: _SealContext, name: str) -> Any:
        h = context._helpers.get(name)
        if h is None:
            s = self._s
            if name == "encoder":
                h = s.CKKSEncoder(context.seal)
            elif name == "evaluator":
                h = s.Evaluator(context.seal)
            elif name == "encryptor":
                if context.public_key is None:
                    raise MessageRejected(
                        "this context holds no public key: it cannot encrypt (nor re-randomise)"
                    )
                h = s.Encryptor(context.seal, context.public_key)
            else:
                h = s.Decryptor(context.seal, context.secret_key)
            context._helpers[name] = h
        return h

    # ciphertexts -----------------------------------------------------------
    def encode(self, context: _SealContext, values: npt.NDArray[np.float64]) -> Any:
        plain = self._s.Plaintext()
        self._helper(context, "encoder").encode(
            np.asarray(values, dtype=np.float64).tolist(), 2.0**context.params.scale_bits, plain
        )
        return plain

    def encrypt(self, context: _SealContext, values: npt.NDArray[np.float64]) -> Any:
        ct = self._s.Ciphertext()
        self._helper(context, "encryptor").encrypt(self.encode(context, values), ct)
        return ct

    def decrypt(self, context: _SealContext, ciphertext: Any) -> npt.NDArray[np.float64]:
        if context.secret_key is None:
            raise InsecureParametersError("this context holds no secret key: it cannot decrypt")
        plain = self._s.Plaintext()
        self._helper(context, "decryptor").decrypt(ciphertext, plain)
        return np.asarray(self._helper(context, "encoder").decode_double(plain), dtype=np.float64)

    def serialize(self, ciphertext: Any) -> bytes:
        return self._dump(ciphertext)

    def deserialize(self, context: _SealContext, data: bytes) -> Any:
        try:
            return self._load_into(self._s.Ciphertext(), data, context.seal)
        except Exception as exc:
            raise MessageRejected(f"not a valid CKKS ciphertext for this context: {exc}") from None

    def check_fresh(self, context: _SealContext, ct: Any) -> None:
        # only a fresh encryption is a valid request: two components, NTT form, the top level,
        # the agreed scale — a client that lowers the scale would make the server's noise
        # vanish in the rounding (its scores would come back without their DP noise)
        scale = 2.0**context.params.scale_bits
        if (
            int(ct.size()) != 2
            or not ct.is_ntt_form()
            or list(ct.parms_id()) != list(context.seal.first_parms_id())
            or not math.isclose(float(ct.scale), scale, rel_tol=1e-9)
        ):
            raise MessageRejected(
                "not a fresh CKKS ciphertext (two components, NTT form, top level, scale "
                f"2^{context.params.scale_bits})"
            )

    def weighted_sum(
        self, context: _SealContext, ciphertexts: Sequence[Any], plains: Sequence[Any]
    ) -> Any:
        ev = self._helper(context, "evaluator")
        acc, tmp = self._s.Ciphertext(), self._s.Ciphertext()
        ev.multiply_plain(ciphertexts[0], plains[0], acc)
        for ct, plain in zip(ciphertexts[1:], plains[1:], strict=True):
            ev.multiply_plain(ct, plain, tmp)
            ev.add_inplace(acc, tmp)
        ev.rescale_to_next_inplace(acc)  # one rescale for the whole sum
        return acc

    def rotations(self, context: _SealContext, ciphertext: Any, n: int) -> list[Any]:
        if context.galois_keys is None:
            raise MessageRejected("rotations need the rotation (Galois) key in the context")
        ev = self._helper(context, "evaluator")
        out = [ciphertext]
        for _ in range(n - 1):  # sequential one-slot rotations: one key suffices
            nxt = self._s.Ciphertext()
            ev.rotate_vector(out[-1], 1, context.galois_keys, nxt)
            out.append(nxt)
        return out

    def add_plain(
        self,
        context: _SealContext,
        ciphertext: Any,
        values: npt.NDArray[np.float64] | npt.NDArray[np.complex128],
    ) -> Any:
        plain = self._s.Plaintext()
        arr = np.asarray(values)
        dtype = np.complex128 if np.iscomplexobj(arr) else np.float64
        self._helper(context, "encoder").encode(
            arr.astype(dtype, copy=False).tolist(),
            ciphertext.parms_id(),
            ciphertext.scale,
            plain,
        )
        out = self._s.Ciphertext()
        self._helper(context, "evaluator").add_plain(ciphertext, plain, out)
        return out

    def rerandomise(self, context: _SealContext, ciphertext: Any) -> Any:
        # SEAL encrypts zero directly at the response's (lower) level: it encrypts one level
        # up with the public key and divides by the dropped prime, so the added error is
        # mostly that division's rounding times the secret key (~1e-9 on a score at scale
        # 2^40, at most ~1e-8: the size of the product's own error, far inside the 1e-5
        # tolerance). Randomness: SEAL's CSPRNG (Blake2xb seeded from the OS) draws the
        # ternary u and the errors of u·pk + (e0, e1), the same as any fresh encryption.
        zero = self._s.Ciphertext()
        self._helper(context, "encryptor").encrypt_zero(ciphertext.parms_id(), zero)
        # an encryption of zero decodes to zero at any scale; SEAL's addition only insists
        # that the two scales agree (encrypt_zero leaves it at 1)
        zero.scale = ciphertext.scale
        out = self._s.Ciphertext()
        self._helper(context, "evaluator").add(ciphertext, zero, out)
        return out


# --------------------------------------------------------------------------- messages
_SCRATCH_PREFIX = "privrec-he-"


def _scratch_base() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def sweep_stale_scratch(base: str | Path | None = None) -> list[Path]:
    """Remove scratch folders of this user's HE backends whose process no longer exists.

    A process killed with SIGKILL cannot clean up after itself; its folder
    (``privrec-he-<pid>-…``) is found here by its pid and removed. Returns the removed paths.
    """
    root = _scratch_base() if base is None else Path(base)
    removed = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in root.glob(_SCRATCH_PREFIX + "*"):
        parts = entry.name[len(_SCRATCH_PREFIX) :].split("-", 1)
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not entry.is_dir() or entry.is_symlink() or (uid is not None and info.st_uid != uid):
            continue
        if _alive(int(parts[0])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _open_scratch(mode: str) -> tuple[str, Callable[[], None]]:
    """``(path SEAL reads and writes, cleanup)`` for a backend's scratch file."""
    memfd = getattr(os, "memfd_create", None)
    if mode != "directory" and memfd is not None and Path("/proc/self/fd").is_dir():
        try:
            fd = memfd("privrec-he-scratch", getattr(os, "MFD_CLOEXEC", 0))
        except OSError:
            fd = -1
        if fd >= 0:
            return f"/proc/self/fd/{fd}", lambda: _close_fd(fd)
    if mode == "memory":
        raise ConfigError("in-memory scratch (memfd_create) is not available on this system")
    sweep_stale_scratch()
    folder = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=_scratch_base())
    return str(Path(folder) / "obj"), lambda: shutil.rmtree(folder, ignore_errors=True)


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _pack(magic: bytes, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    head = json.dumps({**header, "lengths": [len(b) for b in blobs]}).encode()
    return b"".join([magic, struct.pack("<I", len(head)), head, *blobs])


def _unpack(magic: bytes, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if not data.startswith(magic) or len(data) < len(magic) + 4:
        raise MessageRejected(f"not a private-scoring message (expected magic {magic!r})")
    (n,) = struct.unpack_from("<I", data, len(magic))
    start = len(magic) + 4
    try:
        header = json.loads(data[start : start + n])
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
        lengths = [int(x) for x in header.pop("lengths")]
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageRejected(f"malformed message header: {exc}") from None
    pos, blobs = start + n, []
    for length in lengths:
        if length < 0 or pos + length > len(data):
            raise MessageRejected("truncated message: a payload runs past the end")
        blobs.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise MessageRejected(f"{len(data) - pos} trailing bytes after the last payload")
    return header, blobs
