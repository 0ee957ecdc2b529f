"""Cross-silo wire format and fixed point: message types, the payload codec, additive shares.

See :mod:`privrec.secure.silo` for the protocol. Payloads are a JSON header plus raw
little-endian arrays (no pickle); statistics travel in two's-complement fixed point mod 2^64.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from privrec.errors import (
    InvalidInputError,
    MessageRejected,
)
from privrec.secure.prg import add_mask, expand

__all__ = [
    "DEFAULT_FRAC_BITS",
    "PROTOCOL_VERSION",
    "Segment",
    "check_protocol",
    "decode_fixed",
    "encode_fixed",
    "fixed_sigma",
    "revealed_std",
    "seed_share",
    "split_shares",
]

DEFAULT_FRAC_BITS = 32
#: the wire protocol's version, in every job and plan: parties of another version would sum
#: garbage (version 2 binds a share's mask to its release, 2026-12-07) — they refuse instead
PROTOCOL_VERSION = 2


def check_protocol(meta: dict[str, Any], who: str) -> None:
    """Refuse a job or plan from a driver speaking another protocol version."""
    from privrec.errors import ConfigError

    found = meta.get("protocol")
    if found != PROTOCOL_VERSION:
        raise ConfigError(
            f"the driver speaks protocol version {found!r}, this {who} version "
            f"{PROTOCOL_VERSION}: every party must run the same privrec"
        )


# message types
JOB, SHARE, PLAN, PARTIAL, ABORT, BYE, FAILED, SEED = 1, 2, 3, 4, 5, 6, 7, 8
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
    """Inverse of :func:`_pack`, strict: the arrays must tile the body exactly, in order, each
    of the size its dtype and shape say; anything else is :class:`MessageRejected`."""
    try:
        if len(data) < 4:
            raise ValueError("shorter than its header length")
        (n,) = struct.unpack("<I", data[:4])
        if 4 + n > len(data):
            raise ValueError("header longer than the payload")
        head = json.loads(data[4 : 4 + n])
        if not isinstance(head, dict) or not isinstance(head.get("meta"), dict):
            raise ValueError("header is not {meta, arrays}")
        body = memoryview(data)[4 + n :]
        arrays = {}
        pos = 0
        for spec in head["arrays"]:
            name, dtype, shape, offset, nbytes = spec
            if dtype not in _DTYPES or not isinstance(shape, list):
                raise ValueError(f"bad array {name!r}")
            dims = [int(d) for d in shape]
            if any(isinstance(d, bool) or d < 0 for d in shape) or offset != pos:
                raise ValueError(f"bad array {name!r}")
            size = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
            if nbytes != size or pos + size > len(body) or str(name) in arrays:
                raise ValueError(f"bad array {name!r}")
            a = np.frombuffer(body[pos : pos + size], dtype=np.dtype(dtype))
            arrays[str(name)] = a.reshape(dims)
            pos += size
        if pos != len(body):
            raise ValueError("trailing bytes after the arrays")
        return dict(head["meta"]), arrays
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, struct.error) as exc:
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
