"""Noise for DPALS-style statistics: float32 Gaussian vectors and symmetric matrix stacks, fast.

The item statistics of a DPALS step are tens of millions of numbers; drawing their noise
from one ChaCha20 stream and adding it in a second pass would cost more than computing
them. These helpers draw the packed upper triangles from independently keyed ChaCha20
child streams in parallel and add them mirrored in one numba pass. Shared by central
DPALS and the federated DPALS server.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["gaussian_noise", "symmetric_noise"]


def gaussian_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. N(0, std²) in float32 (the statistics are float32; noise draws dominate otherwise)."""
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= np.float32(std)
    return out


def symmetric_noise(stack: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``stack`` (``(..., k, k)``, symmetric) plus symmetric Gaussian noise of standard deviation ``std``.

    One draw per upper-triangle entry (diagonal included), mirrored below: the
    same distribution as :func:`privrec.privacy.mechanisms.symmetric_gaussian`
    (the release is a function of the noisy upper triangle, whose sensitivity is
    at most the Frobenius one), drawn in float32. Only the packed triangle is
    drawn — for a stack of matrices in parallel, from independent ChaCha20
    streams keyed by ``rng`` (:func:`_packed_normals`) — and one numba pass
    writes ``stack + noise`` with the mirroring (no copy-then-add).
    """
    k = stack.shape[-1]
    src = np.ascontiguousarray(stack, dtype=np.float32 if stack.ndim == 3 else np.float64)
    flat = src.reshape(-1, k, k)
    out = np.empty_like(flat)
    noise = _packed_normals(flat.shape[0], k * (k + 1) // 2, rng)
    _add_mirrored(flat, noise, out.dtype.type(std), out)
    return out.reshape(stack.shape)


def _packed_normals(n: int, per: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, per)`` i.i.d. N(0, 1) float32 draws, in parallel for large stacks.

    Drawing tens of millions of normals from one ChaCha20 stream is the
    slowest part of the noise. When ``rng`` is ChaCha-backed (the production
    and seeded generators of :mod:`privrec.privacy.randomness`) and the stack
    is large, it is cut into fixed blocks of rows, each drawn from a child
    ChaCha20 generator (20 rounds) whose 256-bit key is drawn from ``rng``
    itself — still CSPRNG output — by worker threads. The blocks do not depend
    on the thread count, so seeded runs reproduce on any machine. Other
    generators, and small stacks, draw from ``rng`` in one stream.
    """
    import numba
    from randomgen import ChaCha

    out = np.empty((n, per), dtype=np.float32)
    rows = max(1, _NOISE_BLOCK // max(per, 1))
    n_blocks = -(-n // rows)
    if n_blocks <= 1 or not isinstance(rng.bit_generator, ChaCha):
        rng.standard_normal(out.shape, dtype=np.float32, out=out)
        return out
    from concurrent.futures import ThreadPoolExecutor

    keys = rng.integers(0, 2**64, size=(n_blocks, 4), dtype=np.uint64)

    def fill(t: int) -> None:
        key = sum(int(w) << (64 * i) for i, w in enumerate(keys[t]))
        child = np.random.Generator(ChaCha(key=key, counter=0, rounds=20))
        child.standard_normal(dtype=np.float32, out=out[t * rows : (t + 1) * rows])

    with ThreadPoolExecutor(max(1, numba.get_num_threads())) as pool:
        list(pool.map(fill, range(n_blocks)))  # numpy draws release the GIL
    return out


# Normals per independently keyed block of _packed_normals (16 MB of float32).
_NOISE_BLOCK = 1 << 22


@njit(parallel=True, cache=True)
def _add_mirrored(stack: np.ndarray, noise: np.ndarray, std: np.floating, out: np.ndarray) -> None:
    """``out[j] = stack[j] + std · N_j`` with ``N_j`` symmetric, its upper triangle row by row from ``noise[j]``."""
    k = stack.shape[1]
    for j in prange(stack.shape[0]):
        t = 0
        for a in range(k):
            for b in range(a, k):
                v = std * noise[j, t]
                out[j, a, b] = stack[j, a, b] + v
                if a != b:
                    out[j, b, a] = stack[j, b, a] + v
                t += 1
