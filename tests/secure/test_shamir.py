"""Shamir sharing over GF(2**31 - 1): any t shares rebuild, fewer do not, corruption is caught."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privrec.errors import ConfigError, MessageRejected
from privrec.secure import shamir


@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    t_frac=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_any_t_shares_reconstruct(
    secret: bytes, n: int, t_frac: float, data: st.DataObject
) -> None:
    t = max(1, round(t_frac * n))
    ids = data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    xs = [shamir.x_coordinate(i) for i in ids]
    shares = shamir.split([secret], xs, t)
    subset = data.draw(st.lists(st.integers(0, n - 1), min_size=t, max_size=n, unique=True))
    (out,) = shamir.reconstruct([xs[i] for i in subset], shares[subset], t)
    assert out == secret


def test_two_secrets_are_shared_independently() -> None:
    a, b = os.urandom(32), os.urandom(32)
    xs = [1, 2, 3, 4, 5]
    shares = shamir.split([a, b], xs, 3)
    assert shares.shape == (5, 2, 16)
    assert shamir.reconstruct(xs[:3], shares[:3, 0], 3) == [a]
    assert shamir.reconstruct(xs[2:], shares[2:, 1], 3) == [b]
    assert shamir.share_bytes(32) == 64


def test_fewer_than_t_shares_are_useless() -> None:
    # With t-1 shares every candidate secret is equally consistent: interpolating them
    # together with a guessed value at x=0 always succeeds, for any guess.
    secret = os.urandom(32)
    xs = [3, 8, 11, 20]
    shares = shamir.split([secret], xs, 4).astype(np.int64)
    with pytest.raises(MessageRejected):
        shamir.reconstruct(xs[:3], shares[:3], 4)
    # Distribution check: the first chunk of one share is uniform over the field when the
    # secret is fixed (t = 2), over many independent sharings.
    firsts = np.array([shamir.split([bytes(32)], [1, 2], 2)[0, 0, 0] for _ in range(4000)])
    assert 0.45 < (firsts < shamir.PRIME // 2).mean() < 0.55
    assert len(np.unique(firsts)) > 3990


def test_corrupted_share_detected_when_extra_shares_exist() -> None:
    secret = os.urandom(32)
    xs = [1, 2, 3, 4, 5]
    shares = shamir.split([secret], xs, 3)
    for i, j in itertools.product(range(5), range(16)):
        bad = shares.copy()
        bad[i, 0, j] = (int(bad[i, 0, j]) + 1) % shamir.PRIME
        with pytest.raises(MessageRejected):
            shamir.reconstruct(xs, bad, 3)


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError):
        shamir.split([b"abc"], [1, 2], 2)  # odd length
    with pytest.raises(ConfigError):
        shamir.split([bytes(32)], [1, 1], 2)
    with pytest.raises(ConfigError):
        shamir.split([bytes(32)], [1, 2], 3)
    with pytest.raises(ConfigError):
        shamir.x_coordinate(-1)
    with pytest.raises(MessageRejected):
        shamir.reconstruct([1, 2], np.full((2, 16), shamir.PRIME, dtype=np.uint64), 2)


def test_reconstruction_is_fast() -> None:
    import time

    xs = [shamir.x_coordinate(i) for i in range(40)]
    shares = shamir.split([os.urandom(32)], xs, 26)
    t0 = time.perf_counter()
    for _ in range(20):
        shamir.reconstruct(xs[:26], shares[:26], 26)
    assert (time.perf_counter() - t0) / 20 < 0.02  # Flower: ~1.2 s per P-384 key at t = 26
