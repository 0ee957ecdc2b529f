"""Where privacy noise comes from.

Production noise uses a ChaCha20 bit generator (``randomgen.ChaCha``, 20
rounds, a CSPRNG) keyed with 256 bits from the operating system, wrapped in an
ordinary :class:`numpy.random.Generator` so all of numpy's distributions are
available at numpy speed. Noise from a seeded Mersenne/PCG generator is
predictable, and predictable noise is no noise: an attacker who learns the seed
subtracts it.

A seeded mode exists so that tests and papers can reproduce numbers; it keys
the same ChaCha20 generator from the seed and warns loudly
(:class:`~privrec.errors.PrivacyWarning`) that its output is **not private**.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import warnings

import numpy as np
from randomgen import ChaCha

from privrec.errors import PrivacyWarning

__all__ = ["NoiseRandom", "resolve_generator", "secure_generator", "seeded_generator"]

SEEDED_WARNING = (
    "seeded noise is reproducible and therefore NOT private: use it for tests and experiments only, "
    "never for a model you release"
)


def secure_generator() -> np.random.Generator:
    """A numpy Generator over ChaCha20 keyed from ``os.urandom`` (256-bit key)."""
    key = int.from_bytes(os.urandom(32), "little")
    return np.random.Generator(ChaCha(key=key, counter=0, rounds=20))


def seeded_generator(seed: int, *, warn: bool = True) -> np.random.Generator:
    """A reproducible ChaCha20 Generator keyed from ``seed`` — NOT for production."""
    if warn:
        warnings.warn(SEEDED_WARNING, PrivacyWarning, stacklevel=2)
    key = int.from_bytes(hashlib.sha256(f"privrec-noise:{int(seed)}".encode()).digest(), "little")
    return np.random.Generator(ChaCha(key=key, counter=0, rounds=20))


def resolve_generator(seed: int | None) -> np.random.Generator:
    """``None`` → secure generator; an int → seeded generator with the warning."""
    return secure_generator() if seed is None else seeded_generator(seed, warn=True)


class NoiseRandom:
    """Integer randomness for exact samplers (discrete Gaussian/Laplace).

    Backed by :mod:`secrets` (the OS CSPRNG) unless seeded, in which case a
    :class:`random.Random` is used and :class:`PrivacyWarning` is raised.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seeded = seed is not None
        if seed is not None:
            warnings.warn(SEEDED_WARNING, PrivacyWarning, stacklevel=2)
            self._rng: random.Random | None = random.Random(int(seed))
        else:
            self._rng = None

    def randbelow(self, n: int) -> int:
        """Uniform integer in ``[0, n)``."""
        if self._rng is not None:
            return self._rng.randrange(n)
        return secrets.randbelow(n)
