"""The server pads every distributed-DP sum to ``max_clients`` noise shares — why, and that it does.

Without padding, a sum over the devices that took part carries one noise share per device, so
adding a user (whose device is sampled with probability q) changes the noise *variance* as well
as the signal. KLS21/AKL21 bound only the signal change. In many dimensions the variance change
is visible (the squared norm of the sum says roughly how many shares it holds), and sampling no
longer hides whether the user took part. ``_mixture_rdp`` measures that exactly for the
continuous-Gaussian approximation (tight at these noise scales): the ε the models would have
charged is far below the true one without padding, and equal to it with padding.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special, stats

from privrec.errors import DataError
from privrec.privacy import Budget, seeded_generator
from privrec.privacy.distributed import (
    DistributedDPConfig,
    DistributedDPEncoder,
    padding_generator,
)

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")

ORDERS = list(range(2, 41))


def _encoder(mechanism: str = "dgauss", **kw: object) -> DistributedDPEncoder:
    cfg: dict[str, object] = {
        "clip": 1.0, "dim": 1000, "min_survivors": 4, "max_clients": 40, "rotation_seed": 3,
        "budget": Budget(2.0, 1e-5), "bits": 20, "mechanism": mechanism,
    }  # fmt: skip
    cfg.update(kw)
    return DistributedDPEncoder(DistributedDPConfig(**cfg))


def _noise_only_sum(enc: DistributedDPEncoder, n: int, rng: np.random.Generator) -> np.ndarray:
    enc_rows = enc.encode(np.zeros((n, enc.plan.dim)), rng)  # zero updates: pure noise shares
    out: np.ndarray = np.sum(enc_rows, axis=0, dtype=np.uint64) % np.uint64(enc.plan.modulus)
    return out


@pytest.mark.parametrize("mechanism", ["dgauss", "skellam"])
def test_padded_sums_carry_max_clients_shares_whoever_took_part(mechanism: str) -> None:
    enc = _encoder(mechanism)
    plan = enc.plan
    rng = seeded_generator(11)
    target = plan.decoded_noise_std(plan.max_clients) ** 2
    for n in (4, 39):
        padded = np.concatenate(
            [enc.decode(_noise_only_sum(enc, n, rng), n, rng=rng) for _ in range(6)]
        )
        # 6 000 coordinates: the variance is within 5 standard errors of max_clients shares
        assert abs(padded.var() / target - 1) < 5 * math.sqrt(2 / padded.size)
    # unpadded (never for a release): the variance follows the survivors, which is the leak
    raw = np.concatenate([enc.decode(_noise_only_sum(enc, 4, rng), 4, pad=False) for _ in range(6)])
    assert raw.var() / target == pytest.approx(4 / plan.max_clients, rel=0.15)


def test_padding_keeps_the_signal_and_is_a_no_op_at_max_clients() -> None:
    enc = _encoder()
    rng = seeded_generator(12)
    x = rng.normal(size=(10, 1000)) * 0.02
    summed = np.sum(enc.encode(x, rng), axis=0, dtype=np.uint64) % np.uint64(enc.plan.modulus)
    err = enc.decode(summed, 10, rng=rng) - x.sum(axis=0)
    # unbiased, and the error is the noise of max_clients shares (plus rounding)
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(err.size)
    assert err.std() < 1.1 * enc.plan.decoded_noise_std(enc.plan.max_clients) + enc.plan.gamma
    full = _noise_only_sum(enc, enc.plan.max_clients, rng)
    np.testing.assert_array_equal(
        enc.decode(full, enc.plan.max_clients, rng=rng), enc.decode(full, 40, pad=False)
    )
    with pytest.raises(DataError):
        enc.decode(full, 41)


def test_padding_generator_is_secure_unless_seeded() -> None:
    a = padding_generator(5, "fedmf", 1, 0, "train").integers(0, 2**62, 4)
    b = padding_generator(5, "fedmf", 1, 0, "train").integers(0, 2**62, 4)
    c = padding_generator(5, "fedmf", 2, 0, "train").integers(0, 2**62, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    fresh = [padding_generator(None, 1).integers(0, 2**62) for _ in range(2)]
    assert fresh[0] != fresh[1]
    enc = _encoder()
    assert enc.share_noise(0).tolist() == [0] * enc.plan.padded_dim


# ------------------------------------------------------- why: the variance leak, measured


def _log_density(t: np.ndarray, r: np.ndarray, mu: float, var: float, dim: int) -> np.ndarray:
    """Log density of (y₁, ‖y₂…y_D‖²) for y ~ N(μ e₁, var·I_D)."""
    out: np.ndarray = (
        stats.norm.logpdf(t, mu, math.sqrt(var)) + stats.chi2.logpdf(r / var, dim - 1)
        - math.log(var)
    )  # fmt: skip
    return out


def _mixture_rdp(
    p: list[tuple[float, float, float]], q: list[tuple[float, float, float]], dim: int
) -> np.ndarray:
    """Rényi divergences D_α(P‖Q) of two Gaussian mixtures (weight, mean along e₁, variance).

    Every density depends on y only through y₁ and the squared norm of the rest, so a 2-D grid
    integrates them exactly up to discretisation.
    """
    var_lo = min(v for _, _, v in p + q)
    var_hi = max(v for _, _, v in p + q)
    t = np.linspace(-30 * math.sqrt(var_hi) - 2, 30 * math.sqrt(var_hi) + 2, 900)
    spread = 30 * math.sqrt(2 * (dim - 1))
    r = np.linspace(var_lo * max(dim - 1 - spread, 1e-9), var_hi * (dim - 1 + spread), 900)
    tt, rr = np.meshgrid(t, r, indexing="ij")

    def mix(parts: list[tuple[float, float, float]]) -> np.ndarray:
        comps = [math.log(w) + _log_density(tt, rr, mu, v, dim) for w, mu, v in parts]
        out: np.ndarray = special.logsumexp(comps, axis=0)
        return out

    lp, lq = mix(p), mix(q)
    cell = math.log((t[1] - t[0]) * (r[1] - r[0]))
    return np.array(
        [max(float(special.logsumexp(a * lp + (1 - a) * lq)) + cell, 0.0) / (a - 1) for a in ORDERS]
    )


def _epsilon(curve: np.ndarray, rounds: int) -> float:
    return float(rdp_privacy_accountant.compute_epsilon(ORDERS, list(rounds * curve), 1e-5)[0])


def test_without_padding_sampling_hides_far_less_than_charged() -> None:
    """FederatedMF's documented shape (q = 0.25, 70 honest shares, 3 rounds) in 16,384 dims."""
    dim, shares, q, z, rounds = 16384, 70, 0.25, 1.0, 3
    v = z * z / shares  # one share's variance, sensitivity 1: ``shares`` of them give z²
    acc = dp_accounting.rdp.RdpAccountant(ORDERS)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    charged = acc.get_epsilon(1e-5)

    def both(p: list[tuple[float, float, float]], o: list[tuple[float, float, float]]) -> float:
        return _epsilon(np.maximum(_mixture_rdp(p, o, dim), _mixture_rdp(o, p, dim)), rounds)

    others = (1 - q, 0.0, shares * v)
    # unpadded, the user's device brings its own share: shares + 1 when sampled
    with_user = [others, (q, 1.0, (shares + 1) * v)]
    add_remove = both(with_user, [(1.0, 0.0, shares * v)])
    zero_out = both(with_user, [others, (q, 0.0, (shares + 1) * v)])
    # padded: the same number of shares whether or not the user took part
    padded = both([others, (q, 1.0, shares * v)], [(1.0, 0.0, shares * v)])
    assert charged == pytest.approx(4.43, abs=0.01)
    assert padded == pytest.approx(charged, abs=0.01)
    assert zero_out > 1.3 * charged  # ≈ 6.1: even "zero-out" is not what was charged
    assert add_remove > 2.2 * charged  # ≈ 10.9
