"""Vectorised Shamir splitting and recombination for MPyC's field-element message path.

Why
    The secure top-k runs MPyC with ``--mix32-64bit`` so that share arrays travel as field
    elements, never as pickled numpy arrays (:mod:`privrec.secure.mpc_wire`). On that path
    MPyC splits and recombines shares with per-element Python loops
    (``thresha.random_split`` draws one ``secrets.randbelow`` per coefficient;
    ``thresha.recombine`` sums per element), which is most of a party's CPU time in every
    input and every multiplication's resharing. These drop-ins compute the same values with
    numpy object arrays: the same polynomial evaluation at ``x = 1..m``, coefficients drawn
    uniformly below the field order from the operating system's CSPRNG (``secrets``, as MPyC
    does) by rejection, the same recombination vectors (MPyC's own, cached). Outputs have the
    types MPyC expects (lists of Python ints, or field elements where it passed them in).

Only prime fields are handled; anything else (an extension field, a tiny batch) is passed to
MPyC's own function unchanged.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["install", "uniform_below"]

#: Below this many elements MPyC's loops are as fast as numpy's set-up.
_SMALL = 64


def uniform_below(order: int, count: int) -> npt.NDArray[Any]:
    """``count`` independent uniform integers in ``[0, order)`` (object array), CSPRNG-drawn.

    Whole 64-bit words from ``secrets.token_bytes`` are joined and cut to the bit length of
    ``order − 1``; values at or above ``order`` are drawn again (at most half are, on average
    far fewer), so the result is exactly uniform.
    """
    bits = max(1, (order - 1).bit_length())
    words = -(-bits // 64)
    top = (1 << bits) - 1
    out = np.empty(count, dtype=object)
    todo = np.arange(count)
    while todo.size:
        raw = np.frombuffer(secrets.token_bytes(8 * words * todo.size), dtype="<u8")
        raw = raw.reshape(todo.size, words).astype(object)
        vals = raw[:, 0]
        for j in range(1, words):
            vals = vals | (raw[:, j] << (64 * j))
        vals = vals & top
        ok = vals < order
        out[todo[ok]] = vals[ok]
        todo = todo[~ok]
    return out


def _values(field: Any, s: Any) -> npt.NDArray[Any]:
    """The secrets as a flat object array of ints (from a field array, field elements or ints)."""
    if isinstance(getattr(s, "value", None), np.ndarray):
        return np.asarray(s.value, dtype=object).reshape(-1)
    if isinstance(s[0], field):
        return np.array([a.value for a in s], dtype=object)
    return np.asarray(s, dtype=object).reshape(-1)


def _split(original: Callable[..., Any]) -> Callable[..., Any]:
    def random_split(field: Any, s: Any, t: int, m: int) -> Any:
        p = field.modulus
        if not isinstance(p, int) or len(s) < _SMALL:
            return original(field, s, t, m)
        vals = _values(field, s)
        n = vals.size
        coeffs = uniform_below(int(field.order), t * n).reshape(t, n) if t else None
        shares = []
        for x in range(1, m + 1):
            y = np.zeros(n, dtype=object)
            if coeffs is not None:
                for c in coeffs:  # Horner, highest coefficient first, as MPyC does
                    y = (y + c) * x
            shares.append(((y + vals) % p).tolist())
        return shares

    return random_split


def _recombine(original: Callable[..., Any]) -> Callable[..., Any]:
    from mpyc.thresha import _recombination_vector

    def recombine(field: Any, points: Any, x_rs: Any = 0) -> Any:
        xs, shares = list(zip(*points, strict=True))
        if not isinstance(field.modulus, int) or len(shares[0]) < _SMALL:
            return original(field, points, x_rs)
        if isinstance(shares[0][0], field):
            return original(field, points, x_rs)
        targets = x_rs if isinstance(x_rs, list) else [x_rs]
        vectors = np.array([_recombination_vector(field, xs, x_r) for x_r in targets], dtype=object)
        matrix = np.array([np.asarray(sh, dtype=object) for sh in shares], dtype=object)
        sums = vectors @ matrix  # unreduced, like MPyC's own (callers reduce)
        if isinstance(x_rs, list):
            return [row.tolist() for row in sums]
        return sums[0].tolist()

    return recombine


def install(thresha: Any) -> None:
    """Replace ``thresha.random_split`` and ``thresha.recombine`` in this process (idempotent).

    MPyC's byte encoding (one ``int.to_bytes`` per element) is left alone: a numpy version
    measured slower (0.21 s against 0.14 s for 1.28M 80-bit elements).
    """
    if getattr(thresha, "_privrec_vectorised", False):
        return
    thresha.random_split = _split(thresha.random_split)
    thresha.recombine = _recombine(thresha.recombine)
    thresha._privrec_vectorised = True
