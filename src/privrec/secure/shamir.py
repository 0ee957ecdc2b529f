"""Shamir secret sharing of byte strings over the prime field GF(2**31 - 1), vectorised.

Why this field: with ``p = 2**31 - 1`` every product of two field elements fits in
an unsigned 64-bit integer, so sharing and reconstruction run as plain numpy
integer arithmetic, with no big-integer objects. A 32-byte secret is cut into
sixteen 16-bit chunks and each chunk gets its own independent random polynomial
of degree ``t - 1``; each chunk is perfectly hidden from fewer than ``t`` shares,
and the chunks are independent, so the whole secret is. A share of a 32-byte
secret is sixteen field elements (64 bytes on the wire).

Reconstruction needs one set of Lagrange coefficients at zero for the ``t``
x-coordinates (``O(t**2)`` integer operations) and one ``t x chunks`` dot
product, i.e. microseconds, against Flower's ~1.2 s per serialised P-384 key.

Shares are evaluated at ``x = client id + 1`` so a share's position is implied by
who holds it, and ``x = 0`` (the secret) is never handed out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from privrec.errors import ConfigError, MessageRejected

__all__ = ["CHUNK_BITS", "PRIME", "reconstruct", "share_bytes", "split", "x_coordinate"]

PRIME = (1 << 31) - 1
CHUNK_BITS = 16
_P = np.uint64(PRIME)


def x_coordinate(client_id: int) -> int:
    """The evaluation point of the share held by ``client_id`` (never 0)."""
    x = int(client_id) + 1
    if not 1 <= x < PRIME:
        raise ConfigError(f"client ids must be in [0, {PRIME - 2}], got {client_id}")
    return x


def share_bytes(secret_len: int) -> int:
    """Size in bytes of one serialised share of a ``secret_len``-byte secret."""
    return 4 * (secret_len * 8 // CHUNK_BITS)


def _uniform_field(shape: tuple[int, ...]) -> NDArray[np.uint64]:
    # Exactly uniform in [0, p): 31 random bits, re-drawing the single value p itself.
    count = int(np.prod(shape))
    vals = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.uint64) & _P
    bad = vals == _P
    while bad.any():
        vals[bad] = np.frombuffer(os.urandom(4 * int(bad.sum())), dtype="<u4") & _P
        bad = vals == _P
    return vals.reshape(shape)


def _to_chunks(secrets: Sequence[bytes]) -> NDArray[np.uint64]:
    lengths = {len(s) for s in secrets}
    if len(lengths) != 1 or next(iter(lengths)) % 2:
        raise ConfigError("secrets must share one even byte length")
    raw = np.frombuffer(b"".join(secrets), dtype="<u2").astype(np.uint64)
    return raw.reshape(len(secrets), -1)


def split(secrets: Sequence[bytes], xs: Sequence[int], threshold: int) -> NDArray[np.uint32]:
    """Share each secret ``threshold``-out-of-``len(xs)``.

    Parameters
    ----------
    secrets
        Byte strings of one common even length (e.g. a 32-byte seed and a 32-byte key);
        each is shared with its own independent polynomials, so a share of one reveals
        nothing about the other.
    xs
        Distinct non-zero evaluation points, one per share holder (see :func:`x_coordinate`).
    threshold
        Number of shares needed to reconstruct; fewer reveal nothing.

    Returns
    -------
    numpy.ndarray
        ``uint32`` array of shape ``(len(xs), len(secrets), chunks)``: row ``i`` is the
        share for the holder at ``xs[i]``.
    """
    points = np.asarray(xs, dtype=np.uint64)
    if not 1 <= threshold <= len(points):
        raise ConfigError(f"threshold must be in [1, {len(points)}], got {threshold}")
    if len(set(points.tolist())) != len(points) or (points == 0).any() or (points >= _P).any():
        raise ConfigError("evaluation points must be distinct and in [1, p)")
    chunks = _to_chunks(secrets)
    coeffs = _uniform_field((threshold - 1, *chunks.shape))
    x = points[:, None, None]
    acc = np.zeros((len(points), *chunks.shape), dtype=np.uint64)
    # Horner from the highest coefficient; every product is < 2**62.
    for c in coeffs[::-1]:
        acc += c
        acc %= _P
        acc *= x
        acc %= _P
    acc += chunks
    acc %= _P
    return acc.astype(np.uint32)


def reconstruct(xs: Sequence[int], shares: NDArray[np.integer], threshold: int) -> list[bytes]:
    """Recover the secrets from at least ``threshold`` shares.

    Parameters
    ----------
    xs
        Evaluation points of the given shares (distinct).
    shares
        Array of shape ``(len(xs), n_secrets, chunks)`` (or ``(len(xs), chunks)`` for one
        secret), as produced by :func:`split`.
    threshold
        The sharing threshold. Exactly the first ``threshold`` shares are interpolated;
        any further shares are checked against the interpolated polynomial, so a corrupted
        share is detected whenever more than ``threshold`` are available.

    Raises
    ------
    MessageRejected
        Too few shares, duplicate points, values outside the field, a share inconsistent
        with the others, or a result that is not a valid chunk encoding.
    """
    arr = np.asarray(shares)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if len(xs) != arr.shape[0] or len(xs) < threshold or threshold < 1:
        raise MessageRejected(f"need {threshold} shares with matching points, got {len(xs)}")
    pts = [int(x) for x in xs]
    if len(set(pts)) != len(pts) or any(not 1 <= x < PRIME for x in pts):
        raise MessageRejected("share points must be distinct and in [1, p)")
    vals = arr.astype(np.uint64)
    if (vals >= _P).any():
        raise MessageRejected("share value outside the field")
    lam = _lagrange_at(pts[:threshold], 0)
    secret = ((lam[:, None, None] * vals[:threshold]) % _P).sum(axis=0) % _P
    if len(pts) > threshold:
        # Evaluate the same polynomial at the extra points via Lagrange basis at x.
        for extra, x in enumerate(pts[threshold:], start=threshold):
            basis = _lagrange_at(pts[:threshold], x)
            val = ((basis[:, None, None] * vals[:threshold]) % _P).sum(axis=0) % _P
            if not np.array_equal(val, vals[extra]):
                raise MessageRejected("shares are inconsistent (a share was altered)")
    if (secret >> np.uint64(CHUNK_BITS)).any():
        raise MessageRejected("reconstructed value is not a valid secret (bad share)")
    return [row.astype("<u2").tobytes() for row in secret]


def _lagrange_at(xs: Sequence[int], x: int) -> NDArray[np.uint64]:
    """Lagrange basis coefficients for the points ``xs`` evaluated at ``x`` (mod p)."""
    coeffs = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        coeffs.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return np.asarray(coeffs, dtype=np.uint64)
