"""The cryptographic back end of homomorphic scoring: CKKS parameters, their security check and
the TenSEAL/SEAL implementation of :mod:`privrec.secure.he`'s ``HEBackend`` protocol.

SEAL's Python bindings serialise to files only. :class:`TenSEALBackend` passes objects through
an anonymous in-memory file (``memfd_create``: nothing on any file system, freed by the kernel
whenever the process ends, ``kill -9`` included); where that is unavailable, through a private
folder in ``/dev/shm`` named after the process id, removed on exit and swept at the next start
if a killed process left it behind (:func:`sweep_stale_scratch`). Secret keys pass through it.

Nothing a peer sent reaches SEAL's parser as it came: SEAL inflates a compressed object whole
before reading it, and objects nest further, possibly compressed, objects (a 709 kB rotation key
inflated to 3 GB). :meth:`TenSEALBackend._uncompressed` inflates the outer object itself into a
buffer no larger than an honest object of that kind needs under the agreed parameters, walks
every nested header and count against the bytes present, and passes SEAL the walked,
uncompressed bytes.
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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from privrec.errors import ConfigError, InsecureParametersError, MessageRejected
from privrec.secure.he_seal import (
    COMPR_NONE,
    COMPR_ZLIB,
    COMPR_ZSTD,
    MAX_EXPANSION,
    SEAL_HEADER,
    SEAL_MAGIC,
    Kind,
    inflate,
    members_limit,
    moduli,
    walk,
)

__all__ = [
    "HE_STANDARD_MAX_BITS",
    "CKKSParams",
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
    """``HEBackend`` (:mod:`privrec.secure.he`) on the SEAL bindings in TenSEAL (``sealapi``).

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
        self._canonical: dict[CKKSParams, tuple[Any, Any]] = {}
        # the SEAL version this build writes: the only layout _uncompressed knows how to walk
        self._version = self._dump(sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS))[3:5]

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

    def _load_checked(
        self, obj: Any, data: bytes, kind: Kind, params: CKKSParams, *args: Any
    ) -> Any:
        raw = self._uncompressed(data, kind, params)
        try:
            return self._load_into(obj, raw, *args)
        except Exception as exc:  # SEAL raises plain ValueError/RuntimeError
            raise MessageRejected(f"{kind} not valid for these parameters: {exc}") from None

    def _uncompressed(self, data: bytes, kind: Kind, params: CKKSParams) -> bytes:
        """``data`` as an uncompressed SEAL object SEAL can only read as walked here.

        Why not let SEAL load it: SEAL inflates a compressed object completely before it
        checks anything, and its nested objects may be compressed again. So the outer object
        is inflated here into at most what an honest ``kind`` needs under ``params`` (zstd's
        one-shot decoder never writes past its buffer), every nested header must be
        uncompressed and every count must match the bytes present (:func:`walk`); only then
        is a header saying "uncompressed" put back in front. Raises MessageRejected.
        """
        if len(data) < SEAL_HEADER.size:
            raise MessageRejected(f"{kind}: not a SEAL object")
        magic, hsize, major, minor, compr, _, size = SEAL_HEADER.unpack_from(data)
        if magic != SEAL_MAGIC or hsize != SEAL_HEADER.size or size != len(data):
            raise MessageRejected(f"{kind}: not a SEAL object, or its size disagrees with it")
        if bytes((major, minor)) != self._version:
            raise MessageRejected(f"{kind}: written by another SEAL version than this server's")
        limit, body = members_limit(kind, params), data[SEAL_HEADER.size :]
        if compr == COMPR_NONE:
            members = body
        elif compr in (COMPR_ZLIB, COMPR_ZSTD):
            members = inflate(compr, body, min(limit, MAX_EXPANSION * len(body) + 4096))
        else:
            raise MessageRejected(f"{kind}: unknown SEAL compression mode")
        if len(members) > limit:
            raise MessageRejected(f"{kind}: larger than these parameters need")
        walk(kind, members, params, self._version)
        return (
            SEAL_HEADER.pack(magic, hsize, major, minor, COMPR_NONE, 0, hsize + len(members))
            + members
        )

    def _seal_context(self, params: CKKSParams) -> tuple[Any, Any]:
        """SEAL parameters and context for ``params``, built once per backend.

        The primes are derived deterministically (``CoeffModulus.Create``: the largest NTT-friendly
        primes of each size), so every party derives the same ones; a loaded context must hold
        exactly these (:meth:`load_context`).
        """
        found = self._canonical.get(params)
        if found is None:
            s = self._s
            parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
            parms.set_poly_modulus_degree(params.poly_modulus_degree)
            parms.set_coeff_modulus(
                s.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
            )
            found = self._canonical[params] = (parms, self._checked_context(parms))
        return found

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

    def load_context(self, data: bytes, *, expected: CKKSParams | None = None) -> _SealContext:
        s = self._s
        header, blobs = _unpack(_MAGIC_CONTEXT, data)
        params = CKKSParams(
            _int_field(header, "poly_modulus_degree", 1, 1 << 17),
            tuple(_int_list(header, "coeff_mod_bit_sizes", 1, 64, 64)),
            _int_field(header, "scale_bits", 1, 64),
        )
        has_galois = _bool_field(header, "galois_keys")
        has_secret = _bool_field(header, "secret_key")
        # contexts written before the flag existed always carried their public key
        has_public = _bool_field(header, "public_key", default=True)
        if header.get("scheme") != "ckks":
            raise MessageRejected("expected a CKKS context")
        try:
            params.validate()  # refuse before parsing any key material
        except InsecureParametersError:
            raise
        except ConfigError:
            raise MessageRejected("unusable context parameters (see CKKSParams.validate)") from None
        if expected is not None and params != expected:
            raise MessageRejected(
                f"the context's CKKS parameters differ from the ones this server uses ({expected})"
            )
        if len(blobs) != 1 + has_public + has_galois + has_secret:
            raise MessageRejected("context payloads do not match its header")
        canonical, ctx = self._seal_context(params)
        parms = self._load_checked(
            s.EncryptionParameters(s.SCHEME_TYPE.CKKS), blobs[0], "parms", params
        )
        bits = [int(m.bit_count()) for m in parms.coeff_modulus()]
        check_security(int(parms.poly_modulus_degree()), sum(bits))  # on what it really holds
        if moduli(parms) != moduli(canonical):
            # other primes of the same sizes pass every size check, but nothing the server
            # encoded under its own primes is valid for them: refuse, keep using the canonical
            raise MessageRejected(
                "the context's primes are not the ones its parameters derive (CoeffModulus.Create)"
            )
        public_key = galois = secret = None
        if has_public:
            public_key = self._load_checked(s.PublicKey(), blobs[1], "public_key", params, ctx)
        if has_galois:
            at = 1 + has_public
            galois = self._load_checked(s.GaloisKeys(), blobs[at], "galois_keys", params, ctx)
        if has_secret:
            secret = self._load_checked(s.SecretKey(), blobs[-1], "secret_key", params, ctx)
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
        return self._load_checked(
            self._s.Ciphertext(), data, "ciphertext", context.params, context.seal
        )

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


#: Headers are a few hundred bytes (plus ~7 per ciphertext of a replicated request) holding at
#: most three arrays or objects: anything larger, or with more (hence deeper), is refused before
#: the JSON parser recurses into it.
_MAX_HEADER_BYTES = 64 * 1024
_MAX_HEADER_CONTAINERS = 16


def _pack(magic: bytes, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    head = json.dumps({**header, "lengths": [len(b) for b in blobs]}).encode()
    return b"".join([magic, struct.pack("<I", len(head)), head, *blobs])


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite number")
    return value


def _unpack(magic: bytes, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Header and payloads of a message, or MessageRejected.

    Why so strict: the header is a peer's JSON. It is bounded in size and nesting before it is
    parsed (a 200,000-deep array overflowed the parser's recursion), floats must be finite
    (``1e999`` became ``inf``) and each length a plain int within the message.
    """
    if not data.startswith(magic) or len(data) < len(magic) + 4:
        raise MessageRejected(f"not a private-scoring message (expected magic {magic!r})")
    (n,) = struct.unpack_from("<I", data, len(magic))
    start = len(magic) + 4
    if n > _MAX_HEADER_BYTES or start + n > len(data):
        raise MessageRejected("message header too large or truncated")
    raw = data[start : start + n]
    if raw.count(b"[") + raw.count(b"{") > _MAX_HEADER_CONTAINERS:
        raise MessageRejected("message header nested too deeply")
    try:  # NaN, Infinity and 1e999 are refused by _finite
        header = json.loads(raw, parse_float=_finite, parse_constant=_finite)
    except (ValueError, RecursionError, OverflowError):
        raise MessageRejected("message header is not valid JSON") from None
    if not isinstance(header, dict):
        raise MessageRejected("message header is not a JSON object")
    lengths = header.pop("lengths", None)
    if not isinstance(lengths, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= len(data) for x in lengths
    ):
        raise MessageRejected("message header: lengths must be a list of byte counts")
    pos, blobs = start + n, []
    for length in lengths:
        if pos + length > len(data):
            raise MessageRejected("truncated message: a payload runs past the end")
        blobs.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise MessageRejected(f"{len(data) - pos} trailing bytes after the last payload")
    return header, blobs


def _int_field(header: dict[str, Any], name: str, lo: int, hi: int) -> int:
    """A header integer, strictly: a JSON int (not a bool, float or string) in ``lo..hi``."""
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MessageRejected(f"message header: {name} must be an integer in {lo}..{hi}")
    return value


def _int_list(header: dict[str, Any], name: str, lo: int, hi: int, max_len: int) -> list[int]:
    values = header.get(name)
    if not isinstance(values, list) or not 0 < len(values) <= max_len:
        raise MessageRejected(f"message header: {name} must be a list of 1..{max_len} integers")
    return [_int_field({name: v}, name, lo, hi) for v in values]


def _bool_field(header: dict[str, Any], name: str, default: bool | None = None) -> bool:
    value = header.get(name, default)
    if not isinstance(value, bool):
        raise MessageRejected(f"message header: {name} must be true or false")
    return value
