"""Distributed DP around a modular secure sum: rotation, quantisation, noise, overflow, accounting.

The plain modular sum ``np.sum(y, dtype=uint64) % 2**b`` stands in for secure aggregation.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from privrec.errors import ConfigError, DataError
from privrec.privacy import Budget, seeded_generator
from privrec.privacy.distributed import (
    RDP_ORDERS,
    DistributedDPConfig,
    DistributedDPEncoder,
    calibrate_distributed,
    sample_discrete_gaussian,
    sample_skellam,
)
from privrec.privacy.hadamard import fwht, next_power_of_two, rotate, rotation_signs, unrotate

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def modsum(y: np.ndarray, bits: int) -> np.ndarray:
    out: np.ndarray = np.sum(y, axis=0, dtype=np.uint64) % np.uint64(2**bits)
    return out


def clipped(x: np.ndarray, c: float) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x * np.minimum(1.0, c / norms)
    return out


def encoder(**kw: object) -> DistributedDPEncoder:
    base: dict[str, object] = {"clip": 1.0, "dim": 1000, "min_survivors": 20, "rotation_seed": 3}
    base.update(kw)
    if "noise_multiplier" not in base and "budget" not in base:
        base["budget"] = Budget(2.0, 1e-5)
    return DistributedDPEncoder(DistributedDPConfig(**base))


# ---------------------------------------------------------------- Walsh–Hadamard


def test_fwht_is_orthonormal_and_its_own_inverse() -> None:
    h = fwht(np.eye(64))
    np.testing.assert_allclose(h @ h.T, np.eye(64), atol=1e-12)
    np.testing.assert_allclose(np.abs(h), 1 / 8, atol=1e-12)  # ±1/sqrt(D): a Hadamard matrix
    x = seeded_generator(1).normal(size=(5, 1024))
    np.testing.assert_allclose(fwht(fwht(x)), x, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(fwht(x), axis=1), np.linalg.norm(x, axis=1))


def test_rotation_round_trip_with_padding() -> None:
    signs = rotation_signs(9, next_power_of_two(1000))
    assert signs.shape == (1024,) and set(np.unique(signs)) == {-1.0, 1.0}
    x = seeded_generator(2).normal(size=(3, 1000))
    y = rotate(x, signs)
    assert y.shape == (3, 1024)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(unrotate(y, signs, 1000), x, atol=1e-10)
    # A spike is spread evenly: every coordinate has magnitude |x|/sqrt(D).
    spike = np.zeros(1024)
    spike[5] = 3.0
    np.testing.assert_allclose(np.abs(rotate(spike, signs)), 3.0 / 32)


def test_fwht_rejects_non_power_of_two() -> None:
    with pytest.raises(DataError):
        fwht(np.ones(12))


# ---------------------------------------------------------------- quantisation


def test_conditional_rounding_respects_sensitivity_and_error_bound() -> None:
    enc = encoder(dim=1000, min_survivors=50, bits=12)
    rng = seeded_generator(4)
    x = rng.normal(size=(50, 1000)) * 0.2 + 0.01
    q = enc.quantise(x, rng)
    assert q.dtype == np.int64 and q.shape == (50, 1024)
    assert np.all(np.linalg.norm(q, axis=1) <= enc.plan.delta2 + 1e-9)
    decoded = enc.decode(enc.wrap(q.sum(axis=0)), 50)
    err = float(np.linalg.norm(decoded - clipped(x, 1.0).sum(axis=0)))
    hp = enc.plan.quantisation_error_bound(50, prob=1e-6)
    assert 0 < err <= hp <= enc.plan.quantisation_error_bound(50)
    assert hp < 20 * err  # the stated bound is not vacuous


def test_quantisation_error_shrinks_with_finer_grid() -> None:
    rng = seeded_generator(5)
    x = rng.normal(size=(20, 1000))
    errs = []
    for bits in (10, 16):
        enc = encoder(bits=bits)
        q = enc.quantise(x, rng)
        decoded = enc.decode(enc.wrap(q.sum(axis=0)), 20)
        errs.append(np.linalg.norm(decoded - clipped(x, 1.0).sum(axis=0)))
    assert errs[1] < errs[0] / 10


# ---------------------------------------------------------------- noise: unbiased, right variance


@pytest.mark.parametrize("mechanism", ["dgauss", "skellam"])
def test_decode_is_unbiased_with_target_variance(mechanism: str) -> None:
    n, dim, rounds = 20, 2048, 6
    enc = encoder(dim=dim, min_survivors=n, bits=16, mechanism=mechanism)
    rng = seeded_generator(6)
    target = enc.plan.decoded_noise_std(n)
    # Zero updates round exactly to zero: the decoded sum is pure noise.
    zero = np.concatenate(
        [
            enc.decode(modsum(enc.encode(np.zeros((n, dim)), rng), enc.bits), n)
            for _ in range(rounds)
        ]
    )
    ratio = zero.var() / target**2
    assert abs(ratio - 1) < 5 * math.sqrt(2 / zero.size)
    # Real updates: the error has mean zero and the noise variance (+ at most γ²n/4 rounding).
    x = rng.normal(size=(n, dim)) * 0.03 + 0.01
    truth = clipped(x, 1.0).sum(axis=0)
    err = np.concatenate(
        [enc.decode(modsum(enc.encode(x, rng), enc.bits), n) - truth for _ in range(rounds)]
    )
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(err.size)
    extra = enc.plan.gamma**2 * n / 4
    assert err.var() < (target**2 + extra) * (1 + 5 * math.sqrt(2 / err.size))
    assert err.var() > target**2 * (1 - 5 * math.sqrt(2 / err.size))
    mean = enc.decode(modsum(enc.encode(x, rng), enc.bits), n, mean=True)
    assert np.linalg.norm(mean - truth / n) < 5 * target / n * math.sqrt(dim)


# ---------------------------------------------------------------- overflow


def test_overflow_probability_honoured_and_bits_minimal() -> None:
    n, dim, p, gamma = 30, 64, 0.05, 0.02
    enc = encoder(
        dim=dim, min_survivors=n, noise_multiplier=1.0, gamma=gamma, modclip_prob=p, beta=0.3
    )
    b = enc.bits
    # b is the smallest width meeting the bound: one bit fewer is refused.
    with pytest.raises(ConfigError, match="overflows"):
        calibrate_distributed(
            None, 1.0, dim, n, noise_multiplier=1.0, gamma=gamma, bits=b - 1, modclip_prob=p,
            beta=0.3,
        )  # fmt: skip
    assert enc.plan.overflow_half_range() <= 2 ** (b - 1) - 1
    # Stress: all clients send the same vector at full norm, aligned with one basis direction.
    rng = seeded_generator(7)
    x = np.tile(np.eye(dim)[0], (n, 1))
    wraps = 0
    rounds = 200
    for _ in range(rounds):
        q = enc.quantise(x, rng)
        noise = sample_discrete_gaussian(math.sqrt(enc.plan.local_variance), q.shape, rng)
        exact = (q + noise).sum(axis=0)
        got = enc.unwrap(modsum(enc.wrap(q + noise), b))
        wraps += int(np.any(got != exact))
    assert wraps / rounds <= p
    # The detector is live: the same traffic in 4 fewer bits does wrap.
    small = (exact + 2 ** (b - 5)) % 2 ** (b - 4) - 2 ** (b - 5)
    assert np.any(small != exact)


def test_bits_chosen_from_modclip_prob_grow_with_stricter_target() -> None:
    loose = calibrate_distributed(Budget(1.0, 1e-5), 1.0, 1000, 100, gamma=1e-3, modclip_prob=0.1)
    strict = calibrate_distributed(
        Budget(1.0, 1e-5), 1.0, 1000, 100, gamma=1e-3, modclip_prob=1e-12
    )
    assert strict.bits >= loose.bits
    assert strict.overflow_half_range() > loose.overflow_half_range()


# ---------------------------------------------------------------- accounting


def _independent_epsilon(curve: np.ndarray, orders: np.ndarray, delta: float) -> float:
    # Conversion of Canonne, Kamath & Steinke (2020) / Asoodeh et al., as dp-accounting uses it.
    eps = curve + np.log1p(-1 / orders) - (math.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.min(eps))


def test_dgauss_epsilon_pinned_to_kls_bound() -> None:
    plan = calibrate_distributed(Budget(1.5, 1e-5), 1.0, 500, 30, bits=14)
    sigma = math.sqrt(plan.local_variance)
    n, dd = 30, plan.padded_dim
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    a = plan.delta2 / (math.sqrt(n) * sigma)
    a1 = plan.delta1 / (math.sqrt(n) * sigma)
    orders = np.array(RDP_ORDERS, dtype=float)
    curve = np.minimum.reduce(
        [
            orders * a**2 / 2 + tau * dd,
            orders * (a**2 + 2 * a1 * tau + tau**2 * dd) / 2,
            orders * (a + math.sqrt(dd) * tau) ** 2 / 2,
        ]
    )
    expected = _independent_epsilon(curve, orders, 1e-5)
    assert plan.epsilon(n) == pytest.approx(expected, rel=1e-6)
    assert 1.5 * 0.999 <= plan.epsilon(n) <= 1.5


def test_skellam_epsilon_pinned_to_akl_bound() -> None:
    plan = calibrate_distributed(Budget(1.0, 1e-6), 2.0, 300, 10, bits=16, mechanism="skellam")
    v = 10 * plan.local_variance
    orders = np.array(RDP_ORDERS, dtype=float)
    l2, l1 = plan.delta2, plan.delta1
    curve = orders * l2**2 / (2 * v) + np.minimum(
        ((2 * orders - 1) * l2**2 + 6 * l1) / (4 * v**2), 3 * l1 / (2 * v)
    )
    assert plan.epsilon(10) == pytest.approx(_independent_epsilon(curve, orders, 1e-6), rel=1e-6)
    assert 0.999 <= plan.epsilon(10) <= 1.0


def test_sensitivity_is_kls_rounded_bound() -> None:
    plan = calibrate_distributed(Budget(1.0, 1e-5), 1.0, 100, 10, gamma=0.01, beta=1e-3)
    c, dd = 100.0, 128
    hp = c**2 + dd / 4 + math.sqrt(2 * math.log(1e3)) * (c + math.sqrt(dd) / 2)
    assert plan.delta2 == pytest.approx(min(math.sqrt(hp), c + math.sqrt(dd)))
    assert plan.delta1 == pytest.approx(min(plan.delta2**2, math.sqrt(dd) * plan.delta2))


@pytest.mark.parametrize("mechanism", ["dgauss", "skellam"])
def test_fewer_survivors_report_weaker_guarantee(mechanism: str) -> None:
    enc = encoder(min_survivors=20, max_clients=40, bits=16, mechanism=mechanism)
    planned = enc.guarantee_for(20)
    assert planned.epsilon <= 2.0
    fewer = enc.guarantee_for(12)
    assert fewer.n_survivors == 12 and fewer.epsilon > planned.epsilon * 1.2
    assert enc.guarantee_for(40).epsilon < planned.epsilon
    # The composable event dominates the bound under RDP accounting.
    acc = dp_accounting.rdp.RdpAccountant(orders=list(map(float, RDP_ORDERS)))
    acc.compose(fewer.event)
    assert acc.get_epsilon(fewer.delta) >= fewer.epsilon - 1e-9


# ---------------------------------------------------------------- samplers


def _chi_square_p(samples: np.ndarray, pmf: dict[int, float]) -> float:
    keys = np.array(sorted(pmf))
    probs = np.array([pmf[k] for k in keys])
    lo, hi = keys.min(), keys.max()
    counts = np.array([np.sum(samples == k) for k in keys], dtype=float)
    counts[0] += np.sum(samples < lo)
    counts[-1] += np.sum(samples > hi)
    probs[0] += 1 - probs.sum()  # remaining tail mass (tiny) into one bin
    return float(stats.chisquare(counts, probs * samples.size).pvalue)


@pytest.mark.parametrize("sigma", [0.8, 2.5, 7.0])
def test_discrete_gaussian_sampler_matches_pmf(sigma: float) -> None:
    s = sample_discrete_gaussian(sigma, 200_000, seeded_generator(8))
    support = np.arange(-12 * math.ceil(sigma), 12 * math.ceil(sigma) + 1)
    w = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    w /= w.sum()
    keep = w * s.size > 5
    pmf = dict(zip(support[keep].tolist(), w[keep].tolist(), strict=True))
    assert _chi_square_p(s, pmf) > 1e-4
    # A continuous Gaussian rounded to the integers is a different distribution.
    r = np.rint(seeded_generator(9).normal(0, sigma, 200_000)).astype(np.int64)
    assert sigma > 1 or _chi_square_p(r, pmf) < 1e-4


def test_discrete_gaussian_sampler_large_sigma_binned() -> None:
    # SecAgg-sized σ (hundreds of grid steps): chi-square on bins of width σ/10.
    sigma = 150.0
    s = sample_discrete_gaussian(sigma, (400, 500), seeded_generator(12)).ravel()
    support = np.arange(-900, 901)
    w = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    w /= w.sum()
    edges = np.arange(-900, 902, 15)
    expected = np.add.reduceat(w, np.searchsorted(support, edges[:-1]))
    counts = np.histogram(s, bins=edges - 0.5)[0].astype(float)
    keep = expected * s.size > 5
    exp_kept = expected[keep] / expected[keep].sum() * counts[keep].sum()
    assert stats.chisquare(counts[keep], exp_kept).pvalue > 1e-4
    assert abs(s.var() / sigma**2 - 1) < 5 * math.sqrt(2 / s.size)


def test_skellam_sampler_matches_pmf() -> None:
    v = 6.0
    s = sample_skellam(v, 200_000, seeded_generator(10))
    support = np.arange(-30, 31)
    w = stats.skellam.pmf(support, v / 2, v / 2)
    keep = w * s.size > 5
    pmf = dict(zip(support[keep].tolist(), w[keep].tolist(), strict=True))
    assert _chi_square_p(s, pmf) > 1e-4


def test_sampler_defaults_to_secure_randomness() -> None:
    a = sample_discrete_gaussian(3.0, 10)  # small count: exact rational sampler
    b = sample_discrete_gaussian(3.0, 1000)
    assert a.dtype == b.dtype == np.int64 and a.shape == (10,)
    assert sample_skellam(4.0, (2, 3)).shape == (2, 3)


# ---------------------------------------------------------------- bad inputs


def test_bad_configuration_raises_config_error() -> None:
    b = Budget(1.0, 1e-5)
    with pytest.raises(ConfigError):
        DistributedDPConfig(clip=1.0, dim=10, min_survivors=5, rotation_seed=1)
    with pytest.raises(ConfigError):
        DistributedDPConfig(
            clip=1.0, dim=10, min_survivors=5, rotation_seed=1, budget=b, noise_multiplier=1.0
        )
    with pytest.raises(ConfigError):
        DistributedDPConfig(clip=-1.0, dim=10, min_survivors=5, rotation_seed=1, budget=b)
    with pytest.raises(ConfigError):
        DistributedDPConfig(
            clip=1.0, dim=10, min_survivors=5, rotation_seed=1, budget=b, mechanism="laplace"
        )
    for kw in ({"bits": 70}, {"modclip_prob": 0.0}, {"max_clients": 2}, {"gamma": -1.0}):
        with pytest.raises(ConfigError):
            calibrate_distributed(b, 1.0, 10, 5, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bits"):
        calibrate_distributed(b, 1.0, 10_000, 1000, bits=6)


def test_bad_data_raises_data_error() -> None:
    enc = encoder(dim=16, min_survivors=4, max_clients=5, bits=16)
    with pytest.raises(DataError):
        enc.encode(np.ones(15))
    with pytest.raises(DataError):
        enc.encode(np.array([np.nan] * 16))
    y = enc.encode(np.ones((4, 16)) / 16)
    s = modsum(y, enc.bits)
    with pytest.raises(DataError):
        enc.decode(s[:-1], 4)
    with pytest.raises(DataError):
        enc.decode(s + np.uint64(2**16), 4)
    with pytest.raises(DataError):
        enc.decode(s, 0)
    with pytest.raises(DataError):
        enc.decode(s, 6)
    assert enc.decode(s, 4).shape == (16,)


# ---------------------------------------------------------------- through secure aggregation


def test_end_to_end_through_secagg_simulator() -> None:
    federated = pytest.importorskip("privrec.federated")
    simulate = getattr(federated, "simulate_secagg", None)
    if simulate is None:
        pytest.skip("privrec.federated.simulate_secagg not available yet")
    n, dim = 12, 40
    enc = encoder(dim=dim, min_survivors=10, max_clients=n, bits=20)
    rng = seeded_generator(11)
    x = rng.normal(size=(n, dim)) * 0.1
    y = enc.encode(x, rng)  # uint64 in [0, 2^20): fed to the masked-input phase as is
    result = simulate(n, enc.encoded_dim, bits=enc.bits, inputs=y, dropout=2, seed=5)
    survivors = list(result.survivors)
    assert len(survivors) == n - 2 and result.exact
    total = np.asarray(result.sum, dtype=np.uint64)
    np.testing.assert_array_equal(total, modsum(y[survivors], enc.bits))
    decoded = enc.decode(total, len(survivors))
    err = np.linalg.norm(decoded - clipped(x[survivors], 1.0).sum(axis=0))
    assert err < 6 * enc.plan.decoded_noise_std(len(survivors)) * math.sqrt(dim)
    # 10 survivors as planned: the planned guarantee; the accountant gets exactly this one.
    assert enc.guarantee_for(len(survivors)).epsilon == pytest.approx(enc.plan.epsilon(10))
