"""Noise samplers checked statistically; symmetric noise structure; seeded-mode warnings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from privrec.errors import ConfigError, PrivacyWarning
from privrec.privacy.mechanisms import (
    discrete_gaussian,
    discrete_laplace,
    gaussian,
    gaussian_event,
    laplace,
    symmetric_gaussian,
)
from privrec.privacy.randomness import secure_generator, seeded_generator

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_seeded_generator_warns_and_reproduces() -> None:
    with pytest.warns(PrivacyWarning, match="NOT private"):
        a = seeded_generator(3).normal(size=5)
    with pytest.warns(PrivacyWarning):
        b = seeded_generator(3).normal(size=5)
    np.testing.assert_array_equal(a, b)


def test_secure_generator_is_chacha_and_unpredictable() -> None:
    g1, g2 = secure_generator(), secure_generator()
    assert type(g1.bit_generator).__name__ == "ChaCha"
    assert not np.array_equal(g1.integers(0, 2**62, 4), g2.integers(0, 2**62, 4))


def test_gaussian_ks() -> None:
    rng = secure_generator()
    out = gaussian(np.zeros(20_000), noise_multiplier=1.5, sensitivity=2.0, rng=rng)
    assert stats.kstest(out, "norm", args=(0, 3.0)).pvalue > 1e-3


def test_laplace_ks() -> None:
    rng = secure_generator()
    out = laplace(np.zeros(20_000), noise_multiplier=0.5, sensitivity=4.0, rng=rng)
    assert stats.kstest(out, "laplace", args=(0, 2.0)).pvalue > 1e-3


def test_ks_detects_wrong_scale() -> None:
    """The statistical check has power: a 10% scale error is caught."""
    rng = seeded_generator(0)
    out = gaussian(np.zeros(20_000), noise_multiplier=1.1, sensitivity=1.0, rng=rng)
    assert stats.kstest(out, "norm", args=(0, 1.0)).pvalue < 1e-3


def test_symmetric_noise_structure_and_scale() -> None:
    rng = seeded_generator(1)
    base = np.zeros((400, 6, 6))
    out = symmetric_gaussian(base, noise_multiplier=2.0, sensitivity=1.5, rng=rng)
    np.testing.assert_array_equal(out, np.swapaxes(out, -1, -2))
    iu = np.triu_indices(6)
    sample = out[:, iu[0], iu[1]].ravel()
    assert stats.kstest(sample, "norm", args=(0, 3.0)).pvalue > 1e-3


def test_zero_multiplier_is_non_private_event() -> None:
    assert type(gaussian_event(0.0)).__name__ == "NonPrivateDpEvent"
    x = np.arange(3.0)
    np.testing.assert_array_equal(gaussian(x, 0.0, 1.0, secure_generator()), x)


@pytest.mark.parametrize("bad", [(-1.0, 1.0), (1.0, 0.0), (math.nan, 1.0)])
def test_invalid_noise_parameters(bad: tuple[float, float]) -> None:
    with pytest.raises(ConfigError):
        gaussian(np.zeros(2), bad[0], bad[1], secure_generator())


def _chi2(samples: np.ndarray, xs: np.ndarray, weights: np.ndarray) -> float:
    """Chi-square p-value of ``samples`` against the pmf ``weights`` on ``xs``.

    Bins with an expected count under 5 are pooled into the two outermost kept
    bins, observed counts and probabilities alike.
    """
    w = weights / weights.sum()
    keep = np.flatnonzero(w * len(samples) >= 5)
    lo, hi = xs[keep[0]], xs[keep[-1]]
    support = xs[keep[0] : keep[-1] + 1]
    probs = w[keep[0] : keep[-1] + 1].copy()
    probs[0] += w[xs < lo].sum()
    probs[-1] += w[xs > hi].sum()
    counts = np.array([(samples == s).sum() for s in support], dtype=float)
    counts[0] += (samples < lo).sum()
    counts[-1] += (samples > hi).sum()
    return float(stats.chisquare(counts, probs * len(samples)).pvalue)


@pytest.mark.parametrize("sigma", [0.8, 2.5])
def test_discrete_gaussian_chi_square(sigma: float) -> None:
    samples = discrete_gaussian(sigma, 6000, seed=11)
    xs = np.arange(-60, 61)
    assert _chi2(samples, xs, np.exp(-(xs**2) / (2 * sigma**2))) > 1e-3
    assert abs(samples.mean()) < 4 * sigma / math.sqrt(len(samples))


def test_discrete_gaussian_chi_square_has_power() -> None:
    samples = discrete_gaussian(2.0, 6000, seed=12)
    xs = np.arange(-30, 31)
    assert _chi2(samples, xs, np.exp(-(xs**2) / (2 * 2.4**2))) < 1e-3


def test_discrete_laplace_chi_square() -> None:
    scale = 1.5
    samples = discrete_laplace(scale, 6000, seed=13)
    xs = np.arange(-200, 201)
    assert _chi2(samples, xs, np.exp(-np.abs(xs) / scale)) > 1e-3


def test_discrete_samplers_seeded_reproducible_and_integer() -> None:
    a = discrete_gaussian(3.0, 50, seed=5)
    b = discrete_gaussian(3.0, 50, seed=5)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError):
        discrete_gaussian(0.0, 3)
