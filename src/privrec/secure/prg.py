"""Pseudo-random masks for secure aggregation: AES-256-CTR keyed by a full 256-bit seed.

Masks must be unpredictable to anyone without the seed, so they come from a
cryptographic stream cipher (AES in counter mode from ``cryptography``), never
from a numpy generator: numpy's generators are fast but their state can be
recovered from their output, and seeding them from fewer bits (Flower uses a
32-bit MT19937 seed) makes masks guessable.

The stream is read as little-endian unsigned words of the smallest width that
holds ``bits`` (8, 16, 32 or 64 bits). Arithmetic on those words wraps modulo
``2**width``, and since ``2**bits`` divides ``2**width`` every sum can be reduced
to ``bits`` bits once at the end.
"""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from privrec.errors import ConfigError

__all__ = ["MAX_BITS", "add_mask", "expand", "public_stream", "reduce_bits", "word_dtype"]

MAX_BITS = 64
_ZERO_IV = bytes(16)
_BLOCK = 16


def word_dtype(bits: int) -> np.dtype[np.unsignedinteger]:
    """The smallest unsigned numpy dtype holding ``bits``-bit values (``1 <= bits <= 64``)."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
    for width, dt in ((8, np.uint8), (16, np.uint16), (32, np.uint32)):
        if bits <= width:
            return np.dtype(dt)
    return np.dtype(np.uint64)


@lru_cache(maxsize=8)
def _zeros(nbytes: int) -> bytes:
    # AES-CTR "encrypts" zeros so the output is the raw key stream; the zero
    # buffer is shared and read-only, so caching it saves one allocation per mask.
    return bytes(nbytes)


def expand(seed: bytes, dim: int, bits: int) -> NDArray[np.unsignedinteger]:
    """Expand a 32-byte seed into ``dim`` pseudo-random words for a ``bits``-bit modulus.

    Parameters
    ----------
    seed
        A uniformly random (or HKDF-derived) 32-byte AES-256 key, used for one mask only,
        which is why a fixed all-zero counter block is safe.
    dim
        Number of words.
    bits
        Modulus exponent; selects the word width (see :func:`word_dtype`). The words are
        uniform modulo ``2**width``, hence also modulo ``2**bits`` after reduction.

    Returns
    -------
    numpy.ndarray
        A fresh, writable array of ``dim`` words.
    """
    if len(seed) != 32:
        raise ConfigError(f"mask seeds are 32 bytes, got {len(seed)}")
    dtype = word_dtype(bits)
    nbytes = dim * dtype.itemsize
    out = bytearray(nbytes + _BLOCK - 1)  # update_into needs one block of slack
    enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    enc.update_into(_zeros(nbytes), out)
    return np.frombuffer(out, dtype=dtype.newbyteorder("<"), count=dim).astype(dtype, copy=False)


_scratch = threading.local()


def add_mask(acc: NDArray[np.unsignedinteger], seed: bytes, *, subtract: bool = False) -> None:
    """Add (or subtract) the mask expanded from ``seed`` to ``acc`` in place, wrapping.

    Same stream as :func:`expand` for ``acc``'s word width, but written into a reused
    per-thread buffer: a client adds ``k + 1`` masks of the full vector length, and a fresh
    allocation (and its page faults) per mask costs about as much as the AES itself.
    """
    if len(seed) != 32:
        raise ConfigError(f"mask seeds are 32 bytes, got {len(seed)}")
    nbytes = acc.nbytes
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < nbytes + _BLOCK - 1:
        buf = bytearray(nbytes + _BLOCK - 1)
        _scratch.buf = buf
    enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    enc.update_into(_zeros(nbytes), buf)
    mask = np.frombuffer(buf, dtype=acc.dtype.newbyteorder("<"), count=acc.shape[0])
    if subtract:
        np.subtract(acc, mask, out=acc)
    else:
        np.add(acc, mask, out=acc)


def reduce_bits(words: NDArray[np.unsignedinteger], bits: int) -> NDArray[np.uint64]:
    """Reduce wrapped words modulo ``2**bits`` and return them as ``uint64``."""
    out = words.astype(np.uint64)
    if bits < 64:
        out &= np.uint64((1 << bits) - 1)
    return out


def public_stream(seed: bytes, label: bytes, count: int) -> NDArray[np.uint64]:
    """``count`` public pseudo-random 64-bit words from a public seed and a domain label.

    Used for choices every party must agree on (the neighbour graph), where the
    randomness is public but must not be steerable by any single party.
    """
    key = hashlib.sha256(b"privrec/public-stream/v1\x00" + label + b"\x00" + seed).digest()
    return expand(key, count, 64).astype(np.uint64)
