"""Vectorised Shamir splitting/recombination (mpc_shares) against MPyC's own loops."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

if importlib.util.find_spec("mpyc") is None:
    pytest.skip("secure top-k needs the [mpc] extra (mpyc)", allow_module_level=True)


@pytest.fixture(scope="module")
def mpyc_modules():  # type: ignore[no-untyped-def]
    argv = sys.argv
    sys.argv = [argv[0], "--no-log"]  # MPyC parses sys.argv when first imported
    try:
        from mpyc import finfields, thresha
    finally:
        sys.argv = argv
    return finfields, thresha


def _vectorised(thresha):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from privrec.secure.mpc_shares import install

    ns = SimpleNamespace(random_split=thresha.random_split, recombine=thresha.recombine)
    install(ns)
    return ns


@pytest.mark.parametrize("prime", [1208925819614629174706111, 2**61 - 1, 18446744073709551629])
def test_shares_reconstruct_like_mpycs_and_any_two_suffice(mpyc_modules, prime: int) -> None:  # type: ignore[no-untyped-def]
    finfields, thresha = mpyc_modules
    ours = _vectorised(thresha)
    field = finfields.GF(prime)
    from privrec.secure.mpc_shares import uniform_below

    secrets_ = [int(v) for v in uniform_below(prime, 500)]
    for given in (secrets_, field.array(np.array(secrets_, dtype=object))):
        shares = ours.random_split(field, given, 1, 3)
        assert len(shares) == 3 and all(len(s) == 500 for s in shares)
        for pair in ((0, 1), (0, 2), (1, 2)):
            points = [(i + 1, shares[i]) for i in pair]
            got = [v % prime for v in ours.recombine(field, points)]
            ref = [v % prime for v in thresha.recombine(field, points)]
            assert got == secrets_ == ref
        # a single share says nothing: it differs from the secret almost everywhere
        assert sum(a == b for a, b in zip(shares[0], secrets_, strict=True)) <= 1
    # several target points at once, as MPyC's resharing asks
    shares = ours.random_split(field, secrets_, 1, 3)
    pts = [(1, shares[0]), (2, shares[1])]
    both = ours.recombine(field, pts, [0, 3])
    assert [v % prime for v in both[0]] == secrets_
    assert [v % prime for v in both[1]] == shares[2]


def test_small_batches_and_field_elements_go_to_mpycs_own(mpyc_modules) -> None:  # type: ignore[no-untyped-def]
    finfields, thresha = mpyc_modules
    ours = _vectorised(thresha)
    field = finfields.GF(2**61 - 1)
    elems = [field(v) for v in range(100)]
    shares = ours.random_split(field, elems, 1, 3)
    rec = ours.recombine(
        field, [(1, [field(v) for v in shares[0]]), (3, [field(v) for v in shares[2]])]
    )
    assert [r.value for r in rec] == list(range(100))
    few = ours.random_split(field, [5, 6], 1, 3)
    assert [v % field.modulus for v in thresha.recombine(field, [(1, few[0]), (2, few[1])])] == [
        5,
        6,
    ]


@pytest.mark.parametrize("order", [10, 2**64 + 1, 1208925819614629174706111])
def test_uniform_below_is_uniform(order: int) -> None:
    """Chi-square over equal bins at p = 1e-4 (42.6 for 15 degrees of freedom, 33.7 for 9)."""
    from privrec.secure.mpc_shares import uniform_below

    n = 64_000
    vals = uniform_below(order, n)
    assert all(0 <= int(v) < order for v in vals)
    bins = 16 if order > 16 else order
    idx = np.array([int(v) * bins // order for v in vals])
    counts = np.bincount(idx, minlength=bins)
    expected = n / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < (42.6 if bins == 16 else 33.7)
