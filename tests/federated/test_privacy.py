"""FederatedMF accounting (Poisson sampling, PLD/RDP, noise split) and adaptive clipping."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp
from dp_accounting import pld
from hypothesis import given, settings
from hypothesis import strategies as st

from privrec.errors import ConfigError, DataError
from privrec.federated import FederatedMFConfig, FederatedMFServer, split_noise
from privrec.federated.accounting import count_epsilon_fraction, fast_epsilon
from privrec.federated.client import client_count_vector, client_count_vectors
from privrec.federated.config import CountWeighting
from privrec.privacy.accounting import AccountantKind, epsilon_of
from privrec.privacy.bounds import length_histogram

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")

#: ε (RDP, δ = 1e-5) of one round at q = 0.2, z = 1, charged for its 145 planned honest shares
EPS_145 = 2.8680


def _server(**kw: object) -> FederatedMFServer:
    base: dict[str, object] = {
        "factors": 2,
        "noise_multiplier": 1.0,
        "sampling_rate": 0.1,
        "rounds": 10,
        "aggregation": "central",
        "head_items": None,
    }
    base.update(kw)
    return FederatedMFServer(FederatedMFConfig.create(**base), n_items=3, population=1000)


def test_rounds_are_poisson_sampled_gaussians_composed_with_pld() -> None:
    srv = _server()
    for _ in range(10):
        srv.apply(np.zeros(6), 100.0, 50.0)
    ref = pld.PLDAccountant(value_discretization_interval=1e-4)
    ref.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 10
        )
    )
    g = srv.guarantee()
    assert g.epsilon == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert g.epsilon == pytest.approx(2.8545, abs=1e-3)  # pinned
    # the per-round figure (coarser grid) is an upper bound, and close
    assert g.epsilon <= srv.epsilon() <= g.epsilon * 1.01
    assert [e.label for e in g.spent_events] == ["rounds 1-10"]
    assert g.recompute_epsilon() == pytest.approx(g.epsilon)
    assert "TRUSTED server" in g.threat_model


def test_noise_split_between_values_and_clip_bit() -> None:
    """Andrew et al.: z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2), so the pair composes to exactly z."""
    z, sb = 1.3, 2.0
    zd = split_noise(z, sb)
    assert zd**-2 + (2 * sb) ** -2 == pytest.approx(z**-2)
    pair = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(zd), dp_accounting.GaussianDpEvent(2 * sb)]
    )
    assert epsilon_of(pair, 1e-5) == pytest.approx(
        epsilon_of(dp_accounting.GaussianDpEvent(z), 1e-5), rel=1e-9
    )
    assert zd > z  # the values get a share of the budget: a larger multiplier than z
    with pytest.raises(ConfigError, match="2·σ_b > z"):
        split_noise(2.0, 1.0)
    # the server's payload scales realise that split: value noise z_Δ·C, bit noise σ_b
    srv = _server(clip_count_stddev=sb, noise_multiplier=z)
    a, b, zdelta = srv.scales()
    assert z / a == pytest.approx(zdelta * srv.clip_norm)
    assert z / b == pytest.approx(sb)
    assert (a * srv.clip_norm) ** 2 + (b / 2) ** 2 == pytest.approx(1.0)


def test_calibrated_budget_is_met_including_the_head_selection() -> None:
    """Distributed DP (RDP): with the planned survivor count every round, ε stays within budget."""
    cfg = FederatedMFConfig.create(
        factors=2, epsilon=2.0, sampling_rate=0.05, rounds=20, head_items=2, clip_count_stddev=20.0,
        head_epsilon_fraction=0.1, head_sampling_rate=0.05,
    )  # fmt: skip
    srv = FederatedMFServer(cfg, n_items=4, population=2000)
    m_head = srv.count_min_survivors
    # the worst completed counting round: its floor of survivors out of the largest cohort
    counts = np.zeros(srv.count_dim)
    counts[:4] = [5.0, 1.0, 3.0, 0.0]
    srv.select_head(counts, survivors=m_head)
    assert srv.head_items is not None and srv.head_items.tolist() == [0, 2]
    for _ in range(20):
        srv.apply(np.zeros(srv.item_factors.size), 100.0, 50.0, survivors=srv.min_survivors)
    g = srv.guarantee()
    assert 0.95 * 2.0 <= g.epsilon <= 2.0
    assert g.recompute_epsilon() <= g.epsilon  # denser default orders: never larger
    labels = [e.label for e in g.spent_events]
    assert labels == ["counting round (noisy item counts and history lengths)", "rounds 1-20"]
    head_event = g.spent_events[0].event
    assert isinstance(head_event, dp_accounting.PoissonSampledDpEvent)
    # the head alone spends (about) its share of ε
    assert epsilon_of(head_event, 1e-5, "rdp") == pytest.approx(0.2, rel=0.05)


def test_distributed_rounds_are_charged_their_worst_case_whatever_the_cohort() -> None:
    """Every completed round is charged the sum over the fewest honest shares it may have: a
    bound that does not depend on how many devices took part (so no stored event reveals a
    cohort size), and one a ledger can reserve before round 1."""
    srv = _server(aggregation="distributed", sampling_rate=0.2, rounds=3)
    m = srv.min_survivors
    assert m == math.floor(0.8 * 200)
    plan = srv.encoder().plan
    # at the planned count of honest noise shares the discrete sum is (almost exactly) a
    # Gaussian with multiplier z
    assert plan.min_survivors == srv.noise_shares == m - srv.corrupt_bound(srv.max_clients)
    z_eff = plan.dp_event(srv.noise_shares).noise_multiplier
    assert z_eff == pytest.approx(1.0, rel=0.02)
    planned = srv.planned_events()
    seen: list[object] = []
    srv.ledger_hook = seen.append
    srv.apply(np.zeros(6), 200.0, 100.0, survivors=m)
    more = _server(aggregation="distributed", sampling_rate=0.2, rounds=3)
    more.apply(np.zeros(6), 200.0, 100.0, survivors=m + 35, sampled=205)
    assert more.spent == srv.spent and more.epsilon() == srv.epsilon()  # cohort-independent
    assert more.history[-1]["honest_survivors"] > srv.history[-1]["honest_survivors"]
    ev = srv.spent[-1].event
    assert isinstance(ev, dp_accounting.SelfComposedDpEvent)
    assert isinstance(ev.event, dp_accounting.PoissonSampledDpEvent)
    assert ev.event.sampling_probability == 0.2  # dropped clients still count as sampled
    assert ev.event.event == plan.dp_event(srv.noise_shares)
    # the hook saw the round before it was applied; the plan holds 3 such rounds
    assert [s.event for s in seen] == [ev.event]  # type: ignore[attr-defined]
    assert [p.label for p in planned][1:] == ["rounds 1-3"]  # after the counting round
    assert planned[-1].event == dp_accounting.SelfComposedDpEvent(ev.event, 3)
    # fewer honest shares than planned: refused before anything changes (the secure sum
    # aborts below round_min_survivors, so only a misused API gets here)
    few = _server(aggregation="distributed", sampling_rate=0.2, rounds=3)
    y0 = few.item_factors.copy()
    with pytest.raises(DataError, match="honest survivors"):
        few.apply(np.zeros(6), 200.0, 100.0, survivors=m // 2)
    assert few.round == 0 and few.spent == [] and np.array_equal(few.item_factors, y0)
    g = srv.guarantee()
    assert "honest-but-curious" in g.threat_model and "no amplification" in g.threat_model
    assert "does not depend on how many devices took part" in g.threat_model
    eps_server = srv.epsilon_against_server()
    assert eps_server is not None and eps_server > g.epsilon  # the server knows who took part


def test_only_honest_survivors_are_charged() -> None:
    """Devices colluding with the server add noise it knows: they are not charged as noise."""
    srv = _server(aggregation="distributed", sampling_rate=0.2, rounds=3, corrupt_fraction=0.05)
    assert (srv.min_survivors, srv.max_clients) == (160, 293)  # 200 + 6·√200 + 8
    assert srv.corrupt_bound(200) == 10 and srv.corrupt_bound(srv.max_clients) == 15
    assert srv.noise_shares == 145  # 160 survivors of at most 293 sampled, 15 of them corrupt
    assert srv.honest_survivors(190, 200) == 180
    srv.apply(np.zeros(6), 200.0, 100.0, survivors=190, sampled=200)
    plan = srv.encoder().plan
    inner = plan.dp_event(145)  # the worst completed round's honest noise shares
    expected = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.2, inner), 1)
    assert srv.spent[-1].event == expected
    assert srv.history[-1]["honest_survivors"] == 180
    assert srv.epsilon() == pytest.approx(EPS_145, abs=1e-3)  # pinned
    # the charge bounds the round's true loss (its 180 honest survivors' noise) ...
    honest_180 = dp_accounting.PoissonSampledDpEvent(0.2, plan.dp_event(180))
    assert fast_epsilon(honest_180, 1e-5, AccountantKind.RDP) <= srv.epsilon()
    # ... and charging all 190 survivors (counting the colluders' noise) would understate it
    all_190 = dp_accounting.PoissonSampledDpEvent(0.2, plan.dp_event(190))
    assert fast_epsilon(all_190, 1e-5, AccountantKind.RDP) < fast_epsilon(
        honest_180, 1e-5, AccountantKind.RDP
    )
    # the noise is sized so the honest survivors alone carry it in the worst completed round
    assert plan.dp_event(srv.honest_survivors(srv.min_survivors)).noise_multiplier >= 0.98
    # every secure sum must keep the planned honest shares beyond the corrupt bound
    assert srv.round_min_survivors(293) == srv.corrupt_bound(293) + srv.noise_shares
    assert srv.round_min_survivors(200) == srv.min_survivors
    with pytest.raises(DataError, match="honest survivors"):  # 159 of 293: 144 honest < 145
        srv.apply(np.zeros(6), 200.0, 100.0, survivors=159, sampled=293)
    tiny = _server(
        aggregation="distributed", sampling_rate=0.01, corrupt_fraction=0.4, adaptive_clipping=False
    )
    assert tiny.round_min_survivors(40) == 17  # more than the 16 possibly corrupt devices


def test_abort_costs_nothing() -> None:
    srv = _server()
    srv.record_abort("masked_input", "only 1 masked input")
    assert srv.spent == [] and srv.epsilon() == 0.0
    assert srv.history[-1]["aborted"]


# ------------------------------------------------------------------ adaptive clipping


def _clip_run(start_factor: float, gamma: float, rounds: int, seed: int) -> tuple[float, float]:
    """Run the server's clip-norm update on lognormal update norms; (final C, true quantile)."""
    rng = np.random.default_rng(seed)
    median = 3.0
    srv = _server(
        noise_multiplier=0.8,
        sampling_rate=0.1,
        rounds=rounds,
        clip_norm=start_factor * median,
        target_quantile=gamma,
        server_optimizer="sgd",
        server_lr=1e-12,
    )
    srv.rng = np.random.default_rng(seed + 1)
    n = 100
    for _ in range(rounds):
        norms = median * np.exp(0.5 * rng.standard_normal(n))
        _, b, _ = srv.scales()
        payload = np.zeros((n, srv.payload_dim))
        payload[:, -1] = b * ((norms <= srv.clip_norm).astype(float) - 0.5)
        noisy = srv.central_noise(payload.sum(axis=0))  # noise on the bit count too
        update_sum, unclipped = srv.unpack(noisy, n)
        srv.apply(update_sum, n, unclipped)
    true_q = median * math.exp(0.5 * _norm_ppf(gamma))
    return srv.clip_norm, true_q


def _norm_ppf(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


@pytest.mark.parametrize("start", [1e-3, 1e3])
@pytest.mark.parametrize("gamma", [0.5, 0.8])
def test_adaptive_clip_converges_to_the_target_quantile(start: float, gamma: float) -> None:
    """From 1000× below or above the median the clip norm reaches the γ-quantile of the norms.

    With η = 0.2 the log clip norm moves by at most η·max(γ, 1−γ) per round, so ~7/0.1 rounds
    are needed from 1e-3; 250 rounds leave time to settle. A sign error in the update would
    drive C to 0 or ∞ instead.
    """
    c, q = _clip_run(start, gamma, rounds=250, seed=int(start * 10) % 97)
    assert q / 1.35 <= c <= q * 1.35, (c, q)


def test_clip_update_direction() -> None:
    """Too many unclipped updates shrink C; too few grow it (geometric, rate η)."""
    srv = _server(clip_norm=2.0, server_optimizer="sgd", server_lr=1e-9, clip_lr=0.2)
    srv.apply(np.zeros(6), 100.0, 100.0)  # b̄ = 1
    assert srv.clip_norm == pytest.approx(2.0 * math.exp(-0.2 * 0.5))
    srv.apply(np.zeros(6), 100.0, 0.0)  # b̄ = 0
    assert srv.clip_norm == pytest.approx(2.0)
    srv.apply(np.zeros(6), 100.0, 250.0)  # a noised count above n is clamped to b̄ = 1
    assert srv.clip_norm == pytest.approx(2.0 * math.exp(-0.1))


def test_cohort_rate_does_not_reveal_the_population() -> None:
    """q from clients_per_round is rounded up to two significant digits (stored in every event)."""
    cfg = FederatedMFConfig.create(factors=2, noise_multiplier=1.0, clients_per_round=100)
    assert cfg.sampling_probability(943) == 0.11  # not 100/943
    assert cfg.sampling_probability(1000) == 0.1 and cfg.sampling_probability(50) == 1.0


# ------------------------------------------------------------------ the counting round
@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=2, max_size=12),
    bound=st.integers(1, 12),
    removed=st.integers(0, 11),
    seed=st.integers(0, 2**16),
    weighting=st.sampled_from(["length", "uniform"]),
)
def test_removing_one_user_moves_the_counts_by_at_most_sqrt_b(
    lengths: list[int], bound: int, removed: int, seed: int, weighting: CountWeighting
) -> None:
    """Sensitivity of the counting round (unit: user, add/remove one user's history).

    Each device's count vector is 0/1 indicators of ≤ B of its items plus a one-hot length
    bin of weight 1/√(B + 1), its m = min(n_u, B) indicators of weight √(B/((B + 1)m))
    (``"uniform"``: 1/√(B + 1)): removing one user moves the vector sum by ≤ 1 in L2 — the
    sensitivity the noise is calibrated to — the released item counts (× √(B + 1)) by ≤ √B
    and the released histogram by 1.
    """
    n_items = 40
    gen = np.random.default_rng(seed)
    histories = [gen.choice(n_items, size=n, replace=False) for n in lengths]
    # each device samples with its own randomness, whoever else takes part
    vecs = [
        client_count_vector(h, n_items, bound, np.random.default_rng([seed, u]), weighting)
        for u, h in enumerate(histories)
    ]
    scale = math.sqrt(bound + 1.0)
    full = np.sum(vecs, axis=0) * scale
    u = removed % len(histories)
    without = (np.sum(vecs, axis=0) - vecs[u]) * scale
    assert np.linalg.norm(full[:n_items] - without[:n_items]) <= math.sqrt(bound) + 1e-9
    assert np.linalg.norm(full - without) <= scale + 1e-9
    assert np.linalg.norm(vecs[u]) <= 1.0 + 1e-12
    assert np.count_nonzero(vecs[u][:n_items]) == min(bound, lengths[u])
    # the simulator's batched vectors have the same structure
    rows = sp.csr_matrix(
        (np.ones(sum(lengths)), np.concatenate([*histories, np.zeros(0, int)]),
         np.concatenate([[0], np.cumsum(lengths)])),
        shape=(len(histories), n_items),
    )  # fmt: skip
    batch = client_count_vectors(rows, bound, np.random.default_rng(seed), weighting).toarray()
    assert np.all(np.linalg.norm(batch, axis=1) <= 1.0 + 1e-12)
    np.testing.assert_array_equal(
        np.count_nonzero(batch[:, :n_items], axis=1), np.minimum(lengths, bound)
    )
    np.testing.assert_allclose(batch[:, n_items:], np.asarray(vecs)[:, n_items:])
    np.testing.assert_allclose(
        batch[:, :n_items].sum(axis=1), np.asarray(vecs)[:, :n_items].sum(axis=1)
    )
    np.testing.assert_allclose(
        full[n_items:], length_histogram(np.asarray(lengths), max_length=n_items)
    )
    if weighting == "length":  # every non-empty history uses the whole norm
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), np.asarray(lengths) > 0)


def test_server_releases_weighted_counts_and_the_length_histogram() -> None:
    """Central, noise-free sum of real device vectors through ``select_head``."""
    cfg = FederatedMFConfig.create(
        factors=2, noise_multiplier=1.0, clients_per_round=4, head_items=None,
        aggregation="central", clip_count_stddev=20.0,
    )  # fmt: skip
    srv = FederatedMFServer(cfg, n_items=20, population=4)
    histories = [np.array([0]), np.array([0, 1, 2]), np.arange(15), np.arange(2, 14)]
    total = np.sum([client_count_vector(h, 20, 10, np.random.default_rng(u)) for u, h in
                    enumerate(histories)], axis=0)  # fmt: skip
    srv.select_head(total)
    assert srv.noisy_counts is not None and srv.noisy_lengths is not None
    np.testing.assert_allclose(
        srv.noisy_lengths, length_histogram(np.array([1, 3, 15, 12]), max_length=20)
    )
    # a one-item user counts √10, a three-item user √(10/3), the long ones 1 per sampled item
    assert srv.noisy_counts.sum() == pytest.approx(math.sqrt(10) + 3 * math.sqrt(10 / 3) + 20)
    assert srv.noisy_counts[0] >= math.sqrt(10) + math.sqrt(10 / 3)


def test_counting_round_default_share_and_epsilon_are_pinned() -> None:
    """The default configuration's ε split (central, PLD): pinned values."""
    cfg = FederatedMFConfig.create(
        epsilon=5.0, aggregation="central", clients_per_round=1000, seed=0
    )
    srv = FederatedMFServer(cfg, n_items=2000, population=10_000)
    # B by the ε rule: 10 at ε = 5, 30 below ε = 3; everyone counted once
    assert srv.config.count_bound is None and srv.config.counted_items == 10
    assert srv.q_head == 1.0
    share = srv.count_share()
    assert share == pytest.approx(0.11825, abs=5e-5)
    # count noise z_h·√(B + 1) = 0.2 % of the 10,000 counted users
    assert srv.head_noise_multiplier * math.sqrt(11) == pytest.approx(20.0, rel=2e-3)
    assert srv.head_noise_multiplier == pytest.approx(6.0326, rel=2e-3)
    assert srv.noise_multiplier == pytest.approx(1.0212, rel=2e-3)
    (head, rounds) = srv.planned_events()
    assert head.event == dp_accounting.GaussianDpEvent(srv.head_noise_multiplier)
    assert fast_epsilon(head.event, 1e-5, AccountantKind.PLD) == pytest.approx(5 * share, rel=0.01)
    total = dp_accounting.ComposedDpEvent([head.event, rounds.event])
    assert 4.95 <= fast_epsilon(total, 1e-5, AccountantKind.PLD) <= 5.0
    small = FederatedMFServer(cfg.model_copy(update={"epsilon": 1.0}), 2000, 10_000)
    assert small.count_share() == 0.5  # at ε = 1 the counts get the largest share
    assert small.count_scale == pytest.approx(math.sqrt(31))  # and count 30 items per device
    # the rule: more of ε for the counts at small ε, population and large B; within [0.1, 0.5]
    assert count_epsilon_fraction(1.0, 1e-5, 10_000, 10, 1.0) > count_epsilon_fraction(
        5.0, 1e-5, 10_000, 10, 1.0
    )
    assert count_epsilon_fraction(5.0, 1e-5, 2_000, 10, 1.0) > count_epsilon_fraction(
        5.0, 1e-5, 20_000, 10, 1.0
    )
    assert count_epsilon_fraction(5.0, 1e-5, 10_000, 40, 1.0) > count_epsilon_fraction(
        5.0, 1e-5, 10_000, 5, 1.0
    )
    assert count_epsilon_fraction(0.1, 1e-5, 100, 100, 1.0) == 0.5
    assert count_epsilon_fraction(100.0, 1e-5, 10**7, 1, 1.0) == 0.1
    # the population enters rounded to two significant digits only
    assert count_epsilon_fraction(1.0, 1e-5, 9_951, 10, 1.0) == count_epsilon_fraction(
        1.0, 1e-5, 9_960, 10, 1.0
    )


def test_abort_boundary_probability_is_pinned_and_warned_for_small_cohorts() -> None:
    """Whether an attempt aborts is decided on counts one user changes by one; the chance of
    that boundary over a run is pinned here (exact binomial) and warned about past δ/10."""
    from privrec.errors import PrivacyWarning
    from privrec.federated.aborts import abort_flip_probability, warn_if_aborts_matter

    # a cohort of 10 needing 8 honest of 10 sampled: flips at s = 7 → 8 only
    assert abort_flip_probability(20, 0.5, 8, 8, 40, 0.0) == pytest.approx(
        0.5 * math.comb(19, 7) / 2**19, rel=1e-12
    )
    assert abort_flip_probability(1, 0.5, 2, 1, 10, 0.0) == 0.0

    def server(population: int, cohort: int, rounds: int) -> FederatedMFServer:
        cfg = FederatedMFConfig(
            epsilon=5.0, delta=1e-5, rounds=rounds, clients_per_round=cohort, factors=4,
            aggregation="distributed",
        )  # fmt: skip
        return FederatedMFServer(cfg, 50, population)

    with pytest.warns(PrivacyWarning, match="abort on counts one user decides"):
        small = server(400, 100, 3)
    assert warn_if_aborts_matter(small) == pytest.approx(1.8e-3, rel=0.05)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        large = server(6040, 2000, 30)  # the ml-1m benchmark's shape
    assert warn_if_aborts_matter(large) < 1e-12


def test_count_bound_rule_is_pinned_and_shared_by_server_and_devices() -> None:
    from privrec.federated.accounting import resolve_count_bound

    assert resolve_count_bound(7, 1.0) == 7  # a given B is kept
    assert resolve_count_bound(None, 0.5) == resolve_count_bound(None, 2.9) == 30
    assert resolve_count_bound(None, 3.0) == resolve_count_bound(None, 20.0) == 10
    assert resolve_count_bound(None, None) == 10  # a given noise multiplier: no ε to read
    cfg = FederatedMFConfig.create(epsilon=1.0, aggregation="central")
    # what a device is told (the config's JSON) resolves to the server's B
    told = FederatedMFConfig.model_validate_json(cfg.model_dump_json())
    assert told.count_bound is None and told.counted_items == cfg.counted_items == 30
    fixed = FederatedMFConfig.create(noise_multiplier=1.0, aggregation="central")
    assert fixed.counted_items == 10
