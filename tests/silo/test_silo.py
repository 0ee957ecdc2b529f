"""Cross-silo DPALS: fixed point, shares, the secure path against central statistics, accounting,
noise, faults and resume (servers and silos in threads over loopback TCP)."""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from privrec.errors import InvalidInputError, ProtocolAbort
from privrec.models.dp_als import (
    DPALS,
    head_threshold,
    resolve_popularity_blend,
    resolve_regularization,
    select_head,
)
from privrec.models.dp_ease import (
    DPEASE,
    HEAD_SNR,
    MAX_CONTRIBUTION,
    REG_SCALE,
    bounded_gram,
    resolve_ease_blend,
    resolve_ease_regularization,
)
from privrec.models.dp_rules import head_capacity, head_floor, low_signal_blend
from privrec.models.ease import ease_from_gram
from privrec.models.private import blend_popularity
from privrec.privacy.contribution import adaptive_weights
from privrec.privacy.distributed import ddg_rdp
from privrec.privacy.postprocessing import project_psd, psd_solve
from privrec.privacy.units import PrivacyUnit
from privrec.secure.prg import add_mask, expand
from privrec.secure.silo import (
    Segment,
    SiloConfig,
    SiloEASEConfig,
    binary,
    decode_fixed,
    ease_noise,
    encode_fixed,
    fixed_sigma,
    head_by_counts,
    load_config,
    revealed_sigma,
    revealed_std,
    run_local,
    seed_share,
    setup_keys,
    silo_head,
    silo_statistics,
    split_shares,
    unpack_statistics,
)

N_ITEMS = 60


def _data(n_users: int = 240, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    pop = rng.zipf(1.6, N_ITEMS).astype(np.float64)
    pop /= pop.sum()
    rows, cols = [], []
    for u in range(n_users):
        items = rng.choice(N_ITEMS, size=rng.integers(3, 15), replace=False, p=pop)
        rows += [u] * len(items)
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, N_ITEMS))


def _split(x: sp.csr_matrix, k: int = 3) -> list[sp.csr_matrix]:
    cuts = np.linspace(0, x.shape[0], k + 1).astype(int)
    return [sp.csr_matrix(x[a:b]) for a, b in itertools.pairwise(cuts)]


def _config(**kw: object) -> SiloConfig:
    base: dict[str, object] = dict(
        epsilon=4.0,
        delta=1e-6,
        n_items=N_ITEMS,
        factors=4,
        head_min=40,
        seed=7,
        count_sample=1000,
        iterations=2,
    )
    base.update(kw)
    return SiloConfig(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ fixed point and shares
def test_shares_sum_and_are_uniform() -> None:
    v = encode_fixed(np.linspace(-5, 5, 50_000), 32, 3)
    a, b = split_shares(v)
    assert np.array_equal(a + b, v)
    # the top byte of either share is uniform on 256 values, whatever v is
    for share in (a, b):
        top = (share >> np.uint64(56)).astype(np.int64)
        _, p = scipy.stats.chisquare(np.bincount(top, minlength=256))
        assert p > 1e-4
    a2, _ = split_shares(v)
    assert not np.array_equal(a, a2)  # fresh randomness every time


@pytest.mark.parametrize("frac_bits", [16, 32, 40])
def test_fixed_point_round_trip_and_bounds(frac_bits: int) -> None:
    rng = np.random.default_rng(1)
    parts = [rng.normal(scale=100, size=1000) for _ in range(3)]
    total = sum(encode_fixed(p, frac_bits, 3) for p in parts)
    err = np.abs(decode_fixed(total, frac_bits) - sum(parts))
    assert err.max() <= 3 * 2.0 ** -(frac_bits + 1) * (1 + 1e-9) + 1e-12 * 300
    limit = 2.0**62 / 3 / 2.0**frac_bits
    encode_fixed(np.array([0.99 * limit]), frac_bits, 3)
    with pytest.raises(InvalidInputError):
        encode_fixed(np.array([1.01 * limit]), frac_bits, 3)
    with pytest.raises(InvalidInputError):
        encode_fixed(np.array([np.nan]), frac_bits, 3)


def test_secure_sum_of_silo_statistics_equals_central() -> None:
    x = _data()
    silos = _split(x)
    rng = np.random.default_rng(2)
    y = rng.normal(scale=0.3, size=(N_ITEMS, 4))
    counts = np.asarray(x.sum(axis=0)).ravel()

    def stats(m: sp.csr_matrix) -> np.ndarray:
        xh = binary(m)
        w = adaptive_weights(xh, np.maximum(counts, 1.0), 0.5, 50.0)
        return silo_statistics(xh, w, y, alpha0=2.0, user_regularization=0.1, clip_norm=0.3)

    central = stats(x)
    shares = [split_shares(encode_fixed(stats(m), 32, 3)) for m in silos]
    s0 = sum(a for a, _ in shares)
    s1 = sum(b for _, b in shares)
    decoded = decode_fixed(s0 + s1, 32)
    assert np.max(np.abs(decoded - central)) <= 3 * 2.0**-33 + 1e-12
    g, lhs, _ = unpack_statistics(decoded, N_ITEMS, 4)
    assert np.allclose(g, g.T) and np.allclose(lhs, np.transpose(lhs, (0, 2, 1)))


# ------------------------------------------------------------------ the protocol end to end
def _central_reference(x: sp.csr_matrix, c: SiloConfig) -> np.ndarray:
    """Noise-free DPALS item steps on the union, with the same public choices as the driver."""
    counts = np.asarray(binary(x).sum(axis=0)).ravel()  # count_sample ≥ history: no sampling
    head = select_head(counts, c.head_fraction, 0.0, c.head_min)  # noise off: any threshold ≤ 0
    xh = binary(x[:, head])
    w = adaptive_weights(xh, np.maximum(counts[head], 1.0), c.adaptive_exponent, c.max_per_user)
    y0 = np.random.default_rng(c.seed + 1).standard_normal((c.n_items, c.factors))  # type: ignore[operator]
    y = y0[head] * (c.init_scale / math.sqrt(c.factors))
    return head, y, xh, w


def test_noise_off_reproduces_central_dpals_steps() -> None:
    x = _data()
    c = _config(insecure_disable_noise=True, head_snr=0.0)
    result = run_local(_split(x), c, allow_no_noise=True, timeout=20)
    head, y, xh, w = _central_reference(x, c)
    assert np.array_equal(result.head_items, head)
    # central DPALS's ridge rule at the σ the silo path reveals: √2σ (two noise shares), up to
    # fixed-point rounding; computed from the planned noise although the noise is off
    sigma_rev = revealed_sigma(c, result.noise_scale, len(head))
    assert sigma_rev == pytest.approx(math.sqrt(2) * result.noise_scale, rel=1e-6)
    assert sigma_rev > math.sqrt(2) * result.noise_scale
    assert result.regularization == resolve_regularization(None, sigma_rev, c.clip_norm)
    reg = np.full(len(head), result.regularization)
    for _ in range(2):
        v = silo_statistics(
            xh,
            w,
            y,
            alpha0=c.alpha0,
            user_regularization=c.user_regularization,
            clip_norm=c.clip_norm,
        )
        g, lhs, rhs = unpack_statistics(v, len(head), c.factors)
        y, _ = psd_solve(c.alpha0 * project_psd(g), lhs, rhs, reg, "if_indefinite")
    np.testing.assert_allclose(result.item_factors[head], y, atol=1e-6)
    assert math.isinf(result.guarantee.epsilon)
    assert "NO NOISE" in result.guarantee.threat_model
    # scoring: central DPALS's own scoring on the released state gives the same scores
    assert result.popularity_blend == resolve_popularity_blend(None, c.epsilon) > 0
    central = _central_dpals(result, c)
    users = result.user_factors(x[:20], c).astype(np.float32)
    np.testing.assert_allclose(
        result.scores(x[:20], c), central._scores_from_factors(users), rtol=1e-5, atol=1e-5
    )


def _central_dpals(result: object, c: SiloConfig) -> DPALS:
    """A central DPALS holding the silo release (its scoring is what the silo must equal)."""
    model = DPALS(epsilon=c.epsilon, delta=c.delta, unit="user")
    model._set_state(
        {
            "item_factors": result.item_factors,  # type: ignore[attr-defined]
            "head_items": result.head_items,  # type: ignore[attr-defined]
            "noisy_counts": result.noisy_counts,  # type: ignore[attr-defined]
            "noise_scale": np.asarray(result.noise_scale),  # type: ignore[attr-defined]
            "fold": np.asarray([c.alpha0, c.user_regularization]),
            "popularity_blend": np.asarray(result.popularity_blend),  # type: ignore[attr-defined]
        }
    )
    return model


def test_defaults_match_central_dpals_and_dpease() -> None:
    """Every shared hyper-parameter has central's default (the issue: same model as central)."""
    silo = SiloConfig(epsilon=1.0, delta=1e-6, n_items=10)
    central = DPALS(epsilon=1.0, delta=1e-6, unit="user").get_params()
    # central reads these from its private length histogram (None) or, α0, from the head's noisy
    # density ("density"), and DPEASE its count share from the histogram's n·ε (None); the silo
    # path keeps fixed ones (without a histogram central's share is the same fixed 0.1)
    adaptive = (
        "epsilon",
        "delta",
        "factors",
        "max_per_user",
        "max_contribution",
        "alpha0",
        "count_budget_fraction",
    )
    for name, value in central.items():
        if name in SiloConfig.model_fields and name not in adaptive:
            assert getattr(silo, name) == value, name
    assert silo.count_sample is None and silo.sampled == silo.max_per_user
    ease = SiloEASEConfig(epsilon=1.0, delta=1e-6, n_items=10)
    central = DPEASE(epsilon=1.0, delta=1e-6, unit="user").get_params()
    for name, value in central.items():
        if name in SiloEASEConfig.model_fields and name not in adaptive:
            assert getattr(ease, name) == value, name
    assert (ease.max_contribution, ease.head_snr, ease.reg_scale, ease.regularization) == (
        MAX_CONTRIBUTION,
        HEAD_SNR,
        REG_SCALE,
        None,
    )
    assert ease.restricted  # head rule on, as in central DPEASE, even for a small catalogue
    assert not ease.model_copy(update={"head_snr": 0.0}).restricted


def test_silo_head_rule_uses_the_revealed_rhs_noise_and_the_sample() -> None:
    """Threshold head_snr · √2·r2σ · √(count_sample/100): the revealed noise is two shares."""
    c = SiloConfig(epsilon=2.0, delta=1e-6, n_items=500, max_per_user=30, head_min=5)
    counts = np.random.default_rng(4).gamma(0.5, 200.0, size=500)
    sigma = 0.8
    thr = head_threshold(c.head_snr, math.sqrt(2) * c.rhs_noise_ratio * sigma, 30)
    assert thr == pytest.approx(c.head_snr * math.sqrt(2) * sigma * math.sqrt(0.3))
    head = silo_head(c, sigma, counts)
    floor, cap = head_floor(counts, 5), head_capacity(counts, c.factors)
    assert np.array_equal(head, select_head(counts, None, thr, floor, cap))  # central's rule
    assert 5 < len(head) < 500
    # many factors for few counts: the capacity Σ ñ / k binds (but never below the floor)
    wide = c.model_copy(update={"factors": 1024})
    narrow = silo_head(wide, sigma, counts)
    assert len(narrow) == max(head_capacity(counts, 1024), floor) < len(head)


def test_servers_refuse_noise_free_plans_by_default() -> None:
    with pytest.raises(ProtocolAbort, match="without noise"):
        run_local(_split(_data()), _config(insecure_disable_noise=True), timeout=20)


def test_guarantee_epsilon_events_and_threat_model() -> None:
    c = _config(epsilon=2.0)
    result = run_local(_split(_data()), c, timeout=20)
    g = result.guarantee
    assert g.accountant.value == "rdp"
    assert 0.97 * c.epsilon <= g.epsilon <= c.epsilon
    assert g.recompute_epsilon() == pytest.approx(g.epsilon)
    labels = [e["label"] for e in g.events]
    assert labels[0] == "noisy item counts" and len(labels) == 1 + 3 * 2
    assert "do not collude" in g.threat_model
    assert result.item_factors.shape == (N_ITEMS, 4)


def test_one_discrete_gaussian_has_the_gaussian_event_rdp() -> None:
    """The accounting claim: ddg_rdp with one noise share equals the Gaussian RDP curve."""
    z, d = 1.7, 100
    seg = Segment("x", d, z, 0.09)
    sigma = fixed_sigma(seg, 32)
    l2 = 0.09 * 2.0**32 + math.sqrt(d)
    orders = [2.0, 4.0, 16.0, 64.0]
    ours = ddg_rdp(orders, l2, l2 * math.sqrt(d), sigma, 1, d)
    gaussian = np.asarray(orders) / (2 * z**2)  # RDP of GaussianDpEvent(z) (Mironov 2017)
    np.testing.assert_allclose(ours, gaussian, rtol=1e-9)


def test_revealed_noise_has_twice_one_share_variance() -> None:
    """Counts release on a large catalogue: revealed noise = two discrete Gaussians of σ each."""
    n_items = 20_000
    rng = np.random.default_rng(3)
    x = sp.random(90, n_items, density=0.002, random_state=rng, format="csr")
    c = SiloConfig(
        epsilon=8.0,
        delta=1e-6,
        n_items=n_items,
        factors=2,
        iterations=1,
        head_fraction=0.005,
        count_sample=10_000,
        seed=1,
    )
    result = run_local(_split(x), c, timeout=30)
    noise = result.noisy_counts.astype(np.float64) - np.asarray(binary(x).sum(axis=0)).ravel()
    seg = Segment("c", n_items, c.count_noise_ratio * result.noise_scale, math.sqrt(c.count_sample))
    per_server = fixed_sigma(seg, c.frac_bits) * 2.0**-c.frac_bits
    var = float(np.var(noise))
    # sample variance of 20k normals: relative std √(2/n) ≈ 1%; allow 5 std
    assert abs(var / (2 * per_server**2) - 1) < 5 * math.sqrt(2 / n_items) + 0.002
    assert abs(float(np.mean(noise))) < 5 * math.sqrt(2 / n_items) * per_server
    assert per_server >= c.count_noise_ratio * result.noise_scale * math.sqrt(c.count_sample)


def test_killed_server_aborts_and_training_resumes(tmp_path: Path) -> None:
    x = _data()
    c = _config(insecure_disable_noise=True, head_snr=0.0, iterations=3)
    ck = tmp_path / "ck"
    # rounds: 1 = counts, 2 = step 1, 3 = step 2: server1 dies when step 2 starts
    with pytest.raises(ProtocolAbort) as info:
        run_local(
            _split(x), c, checkpoint=ck, allow_no_noise=True, crash_server_at_round=3, timeout=10
        )
    assert info.value.phase == "aggregate" and "server1" in info.value.reason
    with np.load(ck / "state.npz") as z:
        assert int(z["completed"]) == 1
    with pytest.raises(Exception, match="resume"):
        run_local(_split(x), c, checkpoint=ck, allow_no_noise=True, timeout=10)
    resumed = run_local(_split(x), c, checkpoint=ck, resume=True, allow_no_noise=True, timeout=10)
    straight = run_local(_split(x), c, allow_no_noise=True, timeout=10)
    np.testing.assert_allclose(resumed.item_factors, straight.item_factors, atol=1e-6)
    # nothing was released by the aborted step: counts + 3 steps × 3 releases
    assert len(resumed.guarantee.events) == 1 + 3 * 3


def test_changed_config_cannot_resume(tmp_path: Path) -> None:
    x = _data()
    c = _config(insecure_disable_noise=True, head_snr=0.0, iterations=1)
    run_local(_split(x), c, checkpoint=tmp_path, allow_no_noise=True, timeout=10)
    with warnings.catch_warnings(), pytest.raises(Exception, match="configuration"):
        run_local(
            _split(x),
            _config(insecure_disable_noise=True, iterations=2),
            checkpoint=tmp_path,
            resume=True,
            allow_no_noise=True,
            timeout=10,
        )


def test_servers_refuse_a_plan_with_less_noise_than_their_config() -> None:
    """A server holding the public config recomputes the noise: a driver cannot lower it."""
    with pytest.raises(ProtocolAbort, match="less noise"):
        run_local(_split(_data()), _config(epsilon=8.0), server_config=_config(epsilon=1.0))


# ------------------------------------------------------------------ seed-compressed shares
def test_seed_share_and_its_expansion_sum_to_the_value() -> None:
    v = encode_fixed(np.linspace(-5, 5, 10_001), 32, 3)
    seed = bytes(range(32))
    second = seed_share(v.copy(), seed)
    assert np.array_equal(second + expand(seed, v.size, 64), v)
    acc = np.zeros(v.size, dtype=np.uint64)
    add_mask(acc, seed)  # what the first server does with the seed
    assert np.array_equal(acc + second, v)
    top = (second >> np.uint64(56)).astype(np.int64)  # uniform without the seed
    assert scipy.stats.chisquare(np.bincount(top, minlength=256))[1] > 1e-4


# ------------------------------------------------------------------ DPEASE through the silos
def _central_ease(
    x: sp.csr_matrix, head: np.ndarray, c: SiloEASEConfig, reg: float | None = None
) -> tuple[np.ndarray, ...]:
    """Central DPEASE's computation on the union with the noise left out."""
    gram, sens = bounded_gram(
        binary(x[:, head]),
        PrivacyUnit.USER,
        c.max_contribution,
        c.max_per_user,
        None,  # type: ignore[arg-type]
    )
    assert sens == c.max_contribution
    lam = reg if reg is not None else c.regularization
    assert lam is not None
    return gram, ease_from_gram(gram, lam)


def test_dpease_noise_off_equals_central_dpease_on_the_union() -> None:
    x = _data()
    c = SiloEASEConfig(
        epsilon=2.0,
        delta=1e-6,
        n_items=N_ITEMS,
        regularization=5.0,
        head_snr=0.0,
        popularity_blend=0.0,
        insecure_disable_noise=True,
    )
    result = run_local(_split(x), c, allow_no_noise=True, timeout=20)
    head = np.arange(N_ITEMS)
    gram, weights = _central_ease(x, head, c)
    assert np.array_equal(result.head_items, head) and result.noisy_counts is None
    np.testing.assert_allclose(result.item_popularity, np.diag(gram), atol=1e-6)
    np.testing.assert_allclose(result.weights, weights, rtol=1e-5, atol=1e-6)
    assert [e["label"] for e in result.guarantee.events] == ["noisy item Gram matrix"]
    assert math.isinf(result.guarantee.epsilon)


def test_dpease_head_selection_from_noisy_counts_matches_central() -> None:
    """Catalogue larger than max_items: counts first (no sampling: B ≥ every history)."""
    x = _data()
    c = SiloEASEConfig(
        epsilon=2.0,
        delta=1e-6,
        n_items=N_ITEMS,
        max_items=25,
        max_per_user=20,
        head_snr=0.0,
        regularization=500.0,
        insecure_disable_noise=True,
    )
    result = run_local(_split(x), c, allow_no_noise=True, timeout=20)
    counts = np.asarray(binary(x).sum(axis=0)).ravel()
    assert result.noisy_counts is not None
    np.testing.assert_allclose(result.noisy_counts, counts, atol=1e-6)
    head = np.sort(np.argsort(-counts, kind="stable")[:25])  # central DPEASE's selection
    assert np.array_equal(result.head_items, head)
    _, weights = _central_ease(x, head, c)
    np.testing.assert_allclose(result.weights, weights, rtol=1e-5, atol=1e-6)
    scores = result.scores(x[:5])
    assert scores.shape == (5, N_ITEMS) and np.all(np.isinf(np.delete(scores, head, axis=1)))


def _central_dpease(result: object, c: SiloEASEConfig) -> DPEASE:
    """A central DPEASE holding the silo release (its scoring is what the silo must equal)."""
    model = DPEASE(epsilon=c.epsilon, delta=c.delta, unit="user")
    model._set_state(
        {
            "weights": result.weights,  # type: ignore[attr-defined]
            "head_items": result.head_items,  # type: ignore[attr-defined]
            "item_popularity": result.item_popularity,  # type: ignore[attr-defined]
            "noise_multiplier": np.asarray(result.noise_multiplier),  # type: ignore[attr-defined]
            "popularity_blend": np.asarray(result.popularity_blend),  # type: ignore[attr-defined]
        }
    )
    return model


def test_dpease_defaults_noise_off_equal_central_dpease() -> None:
    """Central DPEASE's defaults through the silos: noisy head (count ≥ head_snr × the revealed
    Gram noise std), ridge from the revealed noise std, popularity blend at scoring."""
    x = _data()
    c = SiloEASEConfig(
        epsilon=2.0, delta=1e-6, n_items=N_ITEMS, head_min=20, insecure_disable_noise=True
    )
    result = run_local(_split(x), c, allow_no_noise=True, timeout=20)
    z_gram = ease_noise(c)[0]
    counts = np.asarray(binary(x).sum(axis=0)).ravel()
    gram_std = math.sqrt(2) * z_gram * c.max_contribution
    head = head_by_counts(counts, c.max_items, c.head_snr * gram_std, c.head_min)
    n = len(head)
    assert n == 20 and np.array_equal(result.head_items, head)  # the floor: few items clear it
    # the ridge: central's rule on the revealed std, √2·z·(C + √d·2^-f) (planned noise)
    noisy_c = c.model_copy(update={"insecure_disable_noise": False})
    seg = Segment("g", n * (n + 1) // 2, z_gram, c.max_contribution)
    std = revealed_std(seg, c.frac_bits)
    assert std == pytest.approx(gram_std, rel=1e-6) and std > gram_std
    lam = resolve_ease_regularization(None, std, n, REG_SCALE)
    assert result.regularization == pytest.approx(lam, rel=1e-12)
    assert lam == pytest.approx(max(100.0, 6.0 * gram_std * math.sqrt(n)), rel=1e-6)
    assert noisy_c.regularization is None
    gram, weights = _central_ease(x, head, c, lam)
    np.testing.assert_allclose(result.weights, weights, rtol=1e-5, atol=1e-6)
    # central's β, raised by the low-signal fallback: only part of the head clears the
    # threshold (the floor pads it), so β / ρ with ρ the fraction that does
    n_signal = int(np.count_nonzero(counts >= c.head_snr * gram_std))
    assert n_signal < n  # here none clears it: β / ρ at its cap
    beta = resolve_ease_blend(None, c.epsilon)
    assert result.popularity_blend == pytest.approx(low_signal_blend(beta, n_signal, n))
    assert result.popularity_blend == pytest.approx(min(10.0, beta * n / max(n_signal, 1)))
    # scoring with the blend, exactly as central DPEASE scores the same release
    hist = sp.csr_matrix(x[:30])
    ours = result.scores(hist)
    np.testing.assert_allclose(ours, _central_dpease(result, c)._score_histories(hist))
    expected = blend_popularity(
        np.asarray(binary(hist[:, head]) @ weights, dtype=np.float32),
        np.diag(gram),
        result.popularity_blend,
    )
    np.testing.assert_allclose(ours[:, head], expected, rtol=1e-4, atol=1e-4)


def test_dpease_popularity_fallback_off_keeps_central_blend() -> None:
    """``popularity_fallback=False`` (or an explicit β) gives the β of the ε rule unchanged."""
    x = _data()
    base = {"epsilon": 2.0, "delta": 1e-6, "n_items": N_ITEMS, "head_min": 20}
    off = SiloEASEConfig(**base, popularity_fallback=False, insecure_disable_noise=True)
    result = run_local(_split(x), off, allow_no_noise=True, timeout=20)
    assert result.popularity_blend == resolve_ease_blend(None, off.epsilon)
    given = SiloEASEConfig(**base, popularity_blend=0.7, insecure_disable_noise=True)
    assert run_local(_split(x), given, allow_no_noise=True, timeout=20).popularity_blend == 0.7


def test_dpease_guarantee_and_noise() -> None:
    x = _data()
    c = SiloEASEConfig(epsilon=3.0, delta=1e-6, n_items=N_ITEMS, max_items=30)
    result = run_local(_split(x), c, timeout=20)
    g = result.guarantee
    assert g.accountant.value == "rdp" and 0.97 * c.epsilon <= g.epsilon <= c.epsilon
    assert [e["label"] for e in g.events] == [
        "noisy item counts (head selection)",
        "noisy item Gram matrix",
    ]
    assert "do not collude" in g.threat_model
    z_gram, z_count = ease_noise(c)
    assert z_count is not None and result.noise_multiplier == z_gram
    # the rate split of central DPEASE: f of Σ 1/z² to the counts
    f = c.count_budget_fraction
    assert (1 / z_count**2) / (1 / z_count**2 + 1 / z_gram**2) == pytest.approx(f)
    # revealed Gram noise: two shares of σ = z·(C·2^f + √d) in fixed point each
    _, weights = _central_ease(x, result.head_items, c, result.regularization)
    assert not np.allclose(result.weights, weights, atol=1e-3)


def test_configs_round_trip_and_servers_check_dpease_plans() -> None:
    e = SiloEASEConfig(epsilon=1.0, delta=1e-6, n_items=10)
    a = _config()
    assert load_config(e.model_dump_json()) == e and load_config(a.model_dump_json()) == a
    with pytest.raises(ProtocolAbort, match="less noise"):
        run_local(
            _split(_data()),
            SiloEASEConfig(epsilon=8.0, delta=1e-6, n_items=N_ITEMS),
            server_config=SiloEASEConfig(epsilon=1.0, delta=1e-6, n_items=N_ITEMS),
            timeout=20,
        )


def test_dpease_revealed_gram_noise_is_two_shares() -> None:
    """The released popularity is the noisy Gram diagonal: its noise has variance 2σ² (one
    discrete Gaussian of σ = z·(C·2^f + √d) per server, in fixed point)."""
    n_items = 400
    x = sp.random(90, n_items, density=0.05, random_state=np.random.default_rng(5), format="csr")
    c = SiloEASEConfig(epsilon=2.0, delta=1e-6, n_items=n_items, max_contribution=5.0, head_snr=0.0)
    result = run_local(_split(x), c, timeout=30)
    gram, _ = _central_ease(sp.csr_matrix(x), np.arange(n_items), c, result.regularization)
    noise = result.item_popularity.astype(np.float64) - np.diag(gram)
    seg = Segment("g", n_items * (n_items + 1) // 2, result.noise_multiplier, c.max_contribution)
    per_server = fixed_sigma(seg, c.frac_bits) * 2.0**-c.frac_bits
    # 400 draws: the sample variance has relative std √(2/400) ≈ 7%; one share would give 0.5
    assert abs(float(np.var(noise)) / (2 * per_server**2) - 1) < 0.3


def test_tampered_checkpoint_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """A journal cut short (the guarantee would under-report), a state that claims other
    progress or holds bad arrays, garbage files: CheckpointMismatchError on resume, before any
    party is contacted."""
    import json
    import shutil

    from privrec.errors import CheckpointMismatchError
    from privrec.secure.silo_driver import Driver

    x = _data()
    c = _config(insecure_disable_noise=True, head_snr=0.0, iterations=3)
    ck = tmp_path / "ck"
    with pytest.raises(ProtocolAbort):
        run_local(
            _split(x), c, checkpoint=ck, allow_no_noise=True, crash_server_at_round=3, timeout=10
        )
    roster, ids = setup_keys(tmp_path / "keys", 2)

    def prepare(edit: Any) -> None:
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(ck, work)
        edit(work)
        Driver(ids["driver"], roster, c, checkpoint=work, resume=True, timeout=5).prepare()

    prepare(lambda w: None)  # untouched: fine

    def cut_journal(w: Path) -> None:
        d = json.loads((w / "events.json").read_text())
        (w / "events.json").write_text(json.dumps({**d, "events": d["events"][:1]}))

    def completed(value: int) -> Any:
        def edit(w: Path) -> None:
            with np.load(w / "state.npz") as z:
                st = {k: z[k] for k in z.files}
            np.savez(w / "state.npz", **{**st, "completed": np.asarray(value)})

        return edit

    def short_counts(w: Path) -> None:
        with np.load(w / "state.npz") as z:
            st = {k: z[k] for k in z.files}
        np.savez(w / "state.npz", **{**st, "noisy_counts": st["noisy_counts"][:7]})

    edits = [
        lambda w: (w / "events.json").unlink(),
        cut_journal,
        completed(-5),
        completed(3),
        short_counts,
        lambda w: (w / "events.json").write_text("{not json"),
        lambda w: (w / "state.npz").write_bytes(b"garbage"),
    ]
    for edit in edits:
        with pytest.raises(CheckpointMismatchError):
            prepare(edit)
