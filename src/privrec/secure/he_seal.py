"""SEAL's serialisation, checked before SEAL reads a client's bytes.

SEAL accepts zstd/zlib-compressed objects and allocates everything an object's counts declare
before checking them: a 709 kB rotation-key blob made a server allocate 3.1 GB (hostile review,
2026-12-07). Here an object is inflated by privrec itself, capped at the size an honest object of
that kind needs under the server's parameters, and its structure (nested objects uncompressed,
every count matching the parameters and the bytes present) is walked before SEAL sees it.
Split from :mod:`privrec.secure.he_backend`, which calls it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
import sys
import zlib
from typing import TYPE_CHECKING, Any, Literal

from privrec.errors import MessageRejected

if TYPE_CHECKING:
    from privrec.secure.he_backend import CKKSParams

# ------------------------------------------------------------------- SEAL's wire format
#: SEAL's object header: magic, header size, version major and minor, compression, reserved and
#: the object's total size (header included)
SEAL_HEADER = struct.Struct("<HBBBBHQ")
SEAL_MAGIC = 0xA15E
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
SCHEME_CKKS = 2
#: Keys and ciphertexts are uniformly random residues: SEAL's compression saves a few percent
#: (at most ~4x with 17-bit primes). A larger ratio is a decompression bomb, whatever its size.
MAX_EXPANSION = 8
Kind = Literal["parms", "ciphertext", "public_key", "galois_keys", "secret_key"]


def members_limit(kind: Kind, params: CKKSParams) -> int:
    """Bytes (after the header) of the largest honest ``kind`` under ``params``: a ciphertext
    has two components at up to ``k - 1`` primes, keys live at all ``k``, and the rotation key
    set holds the one key scoring uses (``8 n`` bytes of empty slots for the others)."""
    n, k = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)

    def words(count: int) -> int:  # a nested DynArray of ``count`` uint64
        return SEAL_HEADER.size + 8 + 8 * count

    def ciphertext(level: int) -> int:  # parms_id, NTT flag, 3 sizes, scale, correction factor
        return 73 + words(2 * n * level)

    limits = {
        "parms": 17 + (k + 1) * (SEAL_HEADER.size + 8),
        "ciphertext": ciphertext(k - 1),
        "public_key": ciphertext(k),
        "galois_keys": 40 + 8 * n + (k - 1) * (SEAL_HEADER.size + ciphertext(k)),
        "secret_key": 48 + words(n * k),
    }
    return limits[kind]


class Walk:
    """Reads an uncompressed SEAL object, checking each length against the bytes present."""

    def __init__(self, data: bytes, version: bytes, kind: str) -> None:
        self.data, self.version, self.kind, self.pos = data, version, kind, 0

    def fail(self, why: str) -> MessageRejected:
        return MessageRejected(f"{self.kind}: {why}")

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise self.fail("truncated")
        self.pos += n

    def u64(self) -> int:
        self.skip(8)
        return int.from_bytes(self.data[self.pos - 8 : self.pos], "little")

    def nested(self) -> int:
        """A nested object's header (uncompressed, this version); returns where it ends."""
        self.skip(SEAL_HEADER.size)
        magic, hsize, major, minor, compr, _, size = SEAL_HEADER.unpack_from(
            self.data, self.pos - 16
        )
        end: int = self.pos - 16 + size
        if (magic, hsize, compr) != (SEAL_MAGIC, 16, COMPR_NONE) or size < hsize:
            raise self.fail("a nested object is compressed or malformed")
        if bytes((major, minor)) != self.version or end > len(self.data):
            raise self.fail("a nested object is of another version or runs past the end")
        return end

    def close(self, end: int) -> None:
        if self.pos != end:
            raise self.fail("an object's size disagrees with its contents")

    def words(self, count: int) -> None:
        end = self.nested()
        if self.u64() != count:
            raise self.fail("a coefficient array has the wrong length for these parameters")
        self.skip(8 * count)
        self.close(end)

    def ciphertext(self, n: int, lo: int, hi: int) -> None:
        self.skip(33)  # parms_id, NTT flag (SEAL checks both against the context)
        size, degree, level = self.u64(), self.u64(), self.u64()
        self.skip(16)  # scale, correction factor
        if size != 2 or degree != n or not lo <= level <= hi:
            raise self.fail("not a two-component ciphertext of these parameters")
        self.words(size * degree * level)


def walk(kind: Kind, members: bytes, params: CKKSParams, version: bytes) -> None:
    """Check ``members`` is exactly one honest ``kind`` (layout of SEAL 4.x), or MessageRejected.

    Every count SEAL would allocate from (coefficient arrays, key slots, keys per slot) is
    checked against ``params`` and the bytes present, and every nested object must be
    uncompressed, so SEAL's own load allocates no more than these bytes.
    """
    n, k = params.poly_modulus_degree, len(params.coeff_mod_bit_sizes)
    w = Walk(members, version, kind)
    if kind == "parms":
        w.skip(1)
        if (members[0], w.u64(), w.u64()) != (SCHEME_CKKS, n, k):
            raise w.fail("not the CKKS degree and number of primes announced")
        for _ in range(k + 1):  # the primes, then the (unused) plain modulus
            end = w.nested()
            w.u64()
            w.close(end)
    elif kind in ("ciphertext", "public_key"):
        w.ciphertext(n, *((1, k - 1) if kind == "ciphertext" else (k, k)))
    elif kind == "galois_keys":
        w.skip(32)
        slots, keys = w.u64(), 0
        if slots > n:
            raise w.fail("more rotation-key slots than the ring has")
        for _ in range(slots):
            parts = w.u64()
            keys += parts > 0
            if parts not in (0, k - 1) or keys > 1:
                raise w.fail("only the one rotation key scoring uses is accepted")
            for _ in range(parts):
                end = w.nested()
                w.ciphertext(n, k, k)
                w.close(end)
    else:  # secret key: a plaintext in NTT form at all k primes
        w.skip(32)
        count = w.u64()
        w.skip(8)
        if count != n * k:
            raise w.fail("wrong size for these parameters")
        w.words(count)
    w.close(len(members))


def moduli(parms: Any) -> tuple[Any, ...]:
    """Everything SEAL derives a ``parms_id`` from: scheme, degree, primes, plain modulus."""
    primes = tuple(int(m.value()) for m in parms.coeff_modulus())
    return (int(parms.poly_modulus_degree()), primes, int(parms.plain_modulus().value()))


def inflate(mode: int, payload: bytes, limit: int) -> bytes:
    """``payload`` decompressed into at most ``limit`` bytes, or MessageRejected."""
    if mode == COMPR_ZLIB:
        d = zlib.decompressobj()
        try:
            out = d.decompress(payload, limit + 1)
        except zlib.error:
            raise MessageRejected("corrupt zlib data in a SEAL object") from None
        if len(out) > limit or d.unconsumed_tail or d.unused_data or not d.eof:
            raise MessageRejected("a SEAL object inflates beyond what these parameters need")
        return out
    zstd = zstd_library()
    if zstd is None:  # pragma: no cover - SEAL's bindings export libzstd in every known wheel
        raise MessageRejected("zstd-compressed SEAL objects cannot be bounded here: refused")
    decompress, is_error = zstd
    buf = ctypes.create_string_buffer(max(limit, 1))
    got = decompress(buf, limit, payload, len(payload))
    if is_error(got):
        raise MessageRejected(
            "a SEAL object inflates beyond what these parameters need, or is corrupt"
        )
    return ctypes.string_at(buf, got)


@functools.cache
def zstd_library() -> tuple[Any, Any] | None:
    """libzstd's one-shot ``ZSTD_decompress`` (never writes past the buffer it is given) and
    ``ZSTD_isError``: from the copy linked into SEAL's bindings, else the system's."""
    import tenseal.sealapi as sealapi

    module = sys.modules.get(getattr(sealapi.Ciphertext, "__module__", ""))
    paths = (getattr(module, "__file__", None), lambda: ctypes.util.find_library("zstd"))
    for found in paths:  # the system's is looked up (a subprocess) only when SEAL's lacks it
        path = found() if callable(found) else found
        try:
            lib = ctypes.CDLL(path) if path else None
        except OSError:
            continue
        decompress = getattr(lib, "ZSTD_decompress", None)
        is_error = getattr(lib, "ZSTD_isError", None)
        if decompress is not None and is_error is not None:
            size, buf = ctypes.c_size_t, ctypes.c_void_p
            decompress.restype, decompress.argtypes = size, [buf, size, ctypes.c_char_p, size]
            is_error.restype, is_error.argtypes = ctypes.c_uint, [size]
            return decompress, is_error
    return None  # pragma: no cover


# ------------------------------------------------------------------------ message headers
