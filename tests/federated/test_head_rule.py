"""FederatedMF's learnable head: the rule, when it fires, and that it is post-processing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from privrec.data.synthetic import synthetic
from privrec.errors import DataError
from privrec.federated import FederatedMF, FederatedMFConfig, FederatedMFServer
from privrec.federated.config import HEAD_MINIMUM, HEAD_SNR
from privrec.federated.server_counting import holder_weight
from privrec.models.dp_rules import federated_head_size, federated_head_threshold

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_threshold_scales_with_noise_rate_and_rounds() -> None:
    base = federated_head_threshold(10.0, 4.0, 0.25, 16)
    assert base == pytest.approx(10.0 * 4.0 / (0.25 * 4.0))
    assert federated_head_threshold(10.0, 8.0, 0.25, 16) == pytest.approx(2 * base)  # noise
    assert federated_head_threshold(10.0, 4.0, 0.5, 16) == pytest.approx(base / 2)  # more users
    assert federated_head_threshold(10.0, 4.0, 0.25, 64) == pytest.approx(base / 2)  # rounds
    assert federated_head_threshold(10.0, 0.0, 0.25, 16) == 0.0  # no noise: everything


def test_head_size_is_the_items_above_the_threshold_within_bounds() -> None:
    counts = np.arange(1000, dtype=float)
    assert federated_head_size(counts, 900.0, 500, 100) == 100  # at least the minimum
    assert federated_head_size(counts, 600.0, 500, 100) == 400
    assert federated_head_size(counts, 10.0, 500, 100) == 500  # at most head_items
    assert federated_head_size(counts, 900.0, 50, 100) == 50  # minimum ≤ head_items


def _server(epsilon: float, population: int, **kw: object) -> FederatedMFServer:
    cfg = FederatedMFConfig.create(
        epsilon=epsilon, aggregation="central", head_items=500, seed=0, **kw
    )
    return FederatedMFServer(cfg, n_items=2000, population=population)


def _counts(srv: FederatedMFServer, counts: np.ndarray) -> np.ndarray:
    """A noise-free count payload that the server rescales back to ``counts``."""
    out = np.zeros(srv.count_dim)
    out[: srv.n_items] = counts / srv.count_scale
    return out


@pytest.mark.parametrize(("epsilon", "population"), [(1.0, 10_000), (8.0, 1_000_000)])
def test_rule_fires_at_small_n_eps_only(epsilon: float, population: int) -> None:
    """Same popularity curve (in fractions of the users): at n·ε = 10⁴ the training noise
    z/(q√T) hides the tail of the 500-item head, at n·ε = 8·10⁶ every head item clears it."""
    srv = _server(epsilon, population)
    counts = population * 0.2 / (1.0 + np.arange(srv.n_items)) ** 0.8
    tau = federated_head_threshold(HEAD_SNR, srv.noise_multiplier, srv.q, srv.config.rounds)
    head = srv.select_head(_counts(srv, counts))
    expected = min(500, max(HEAD_MINIMUM, int(np.count_nonzero(counts >= tau))))
    assert len(head) == expected
    if epsilon == 1.0:
        assert HEAD_MINIMUM < len(head) < 500
    else:
        assert len(head) == 500
    np.testing.assert_array_equal(head, np.arange(len(head)))  # the largest counts


def test_rule_counts_holders_not_length_weighted_counts() -> None:
    """``count_weighting="length"`` weighs an item of an m-item user √(B/m) in the counts; the
    rule divides them by the mean weight ω̄ read off the released histogram (post-processing)."""
    srv = _server(1.0, 10_000, count_bound=10)  # B = 10 (the rule's 30 at ε = 1 is tested apart)
    bins = srv.count_dim - srv.n_items
    only = np.zeros(bins)
    only[0] = 10_000.0  # every user has one item: each counted item weighs √B
    assert holder_weight(srv, only) == pytest.approx(math.sqrt(10))
    only[0], only[1] = 0.0, 10_000.0  # two items each: √(10/2)
    assert holder_weight(srv, only) == pytest.approx(math.sqrt(5))
    long = np.zeros(bins)
    long[6] = 10_000.0  # lengths 32-63 ≥ B: weight 1, as under "uniform"
    assert holder_weight(srv, long) == 1.0
    assert holder_weight(srv, None) == 1.0 and holder_weight(srv, np.zeros(bins)) == 1.0
    uniform = _server(1.0, 10_000, count_weighting="uniform", count_bound=10)
    assert holder_weight(uniform, only) == 1.0
    with pytest.raises(DataError):
        holder_weight(srv, np.ones(bins + 1))
    # the head from weighted counts of two-item users is the head of their holder counts
    counts = 10_000 * 0.2 / (1.0 + np.arange(srv.n_items)) ** 0.8
    payload = _counts(srv, counts * math.sqrt(5))
    payload[srv.n_items :] = only / srv.count_scale
    head = srv.select_head(payload)
    tau = federated_head_threshold(HEAD_SNR, srv.noise_multiplier, srv.q, srv.config.rounds)
    assert len(head) == min(500, max(HEAD_MINIMUM, int(np.count_nonzero(counts >= tau))))
    np.testing.assert_allclose(srv.noisy_lengths, only)


def test_rule_off_keeps_head_items() -> None:
    counts = 10_000 * 0.2 / (1.0 + np.arange(2000)) ** 0.8
    off = _server(1.0, 10_000, head_snr=None)
    np.testing.assert_array_equal(off.select_head(_counts(off, counts)), np.arange(500))
    assert off.payload_rows == 500


def _distributed(**kw: object) -> FederatedMFServer:
    cfg = FederatedMFConfig.create(epsilon=1.0, head_items=500, seed=0, **kw)
    return FederatedMFServer(cfg, n_items=2000, population=10_000)


def test_distributed_rule_shrinks_the_head_but_keeps_the_payload_and_events() -> None:
    """Under distributed DP the rule picks the same head as central would, while the payload
    keeps the planned 500 rows (zeros past the learnable head) and the events stay those
    planned (and reserved) before the count."""
    counts = 10_000 * 0.2 / (1.0 + np.arange(2000)) ** 0.8
    on, off = _distributed(), _distributed(head_snr=None)
    planned = on.planned_events()
    assert planned == off.planned_events()
    assert on.noise_multiplier == off.noise_multiplier
    head = on.select_head(_counts(on, counts), survivors=10_000, sampled=10_000)
    off.select_head(_counts(off, counts), survivors=10_000, sampled=10_000)
    tau = federated_head_threshold(HEAD_SNR, on.noise_multiplier, on.q, on.config.rounds)
    expected = min(500, max(HEAD_MINIMUM, int(np.count_nonzero(counts >= tau))))
    assert HEAD_MINIMUM < len(head) == expected < 500
    np.testing.assert_array_equal(head, np.arange(len(head)))  # the largest counts
    assert on.item_factors.shape == (len(head), on.config.factors)
    assert on.payload_rows == off.payload_rows == 500
    assert on.payload_dim == off.payload_dim == 500 * on.config.factors + 1
    assert on.encoder().config == off.encoder().config
    # what is charged and what remains planned: unchanged by the rule
    assert on.spent == off.spent
    assert on.planned_events(remaining=True) == off.planned_events(remaining=True)
    assert on.planned_round_event() == off.planned_round_event()
    # the noise on the padding is dropped; the learnable rows are read as before
    noisy = np.arange(on.payload_dim, dtype=float)
    update, _ = on.unpack(noisy, on.expected_clients)
    a = on.scales()[0]
    np.testing.assert_array_equal(update, noisy[: len(head) * on.config.factors] / a)
    # the payload size survives a checkpoint
    arrays, meta = on.state_dict()
    back = FederatedMFServer.from_state(arrays, meta, population=on.population)
    assert back.payload_rows == 500 and back.payload_dim == on.payload_dim
    np.testing.assert_array_equal(back.head_items, head)


def test_masked_device_updates_are_zero_past_the_learnable_head_and_clipped() -> None:
    """The simulated devices' payloads: zeros on the padded rows, and on the learnable rows
    exactly the update a device computes from the learnable head alone (the padded rows enter
    neither the user vector, r, nor the clip norm), still within norm 1."""
    from privrec.federated.client import client_update, pack_payload
    from privrec.federated.training import FederatedSimulation

    data = synthetic(n_users=3000, n_items=1200, interactions_per_user=5.5, seed=0)
    cfg = FederatedMFConfig.create(epsilon=1.0, factors=4, rounds=4, head_items=600, seed=0)
    sim = FederatedSimulation(cfg, data.matrix)
    sim._head_round()
    srv = sim.server
    assert srv.head_items is not None
    n_head, k = len(srv.head_items), cfg.factors
    assert n_head < 600 and srv.payload_rows == 600
    rng = np.random.default_rng(0)
    srv.item_factors = rng.standard_normal(srv.item_factors.shape)  # a trained-looking head
    ids = np.arange(200)
    rows, _, norms = sim._payloads(ids, np.ones(ids.size, dtype=bool))
    spec = srv.round_spec()
    assert rows.shape == (200, 600 * k + 1) and spec.dim == 600 * k + 1
    assert not rows[:, n_head * k : -1].any()
    assert np.all(np.linalg.norm(rows, axis=1) <= 1.0 + 1e-12)
    hist = sim.user_items
    for u in (0, 1, 7):
        items = srv.to_head(hist.indices[hist.indptr[u] : hist.indptr[u + 1]])
        upd = client_update(srv.item_factors, items, cfg, spec.clip_norm)
        assert upd.delta.shape == (n_head * k,)
        assert float(np.linalg.norm(upd.delta)) <= spec.clip_norm * (1 + 1e-12)
        assert upd.norm == pytest.approx(norms[u])
        payload = pack_payload(upd, spec)
        np.testing.assert_allclose(payload, rows[u], rtol=1e-12, atol=1e-15)
        assert not payload[n_head * k : -1].any()


def test_device_refuses_an_inconsistent_head_or_payload_length() -> None:
    from privrec.errors import DataError
    from privrec.federated.client import check_round_model

    y, head = np.ones((3, 2)), np.array([1, 4, 7])
    out_y, out_head = check_round_model(y, head, 5 * 2 + 1, 2, 10)
    np.testing.assert_array_equal(out_head, head)
    assert out_y.dtype == np.float64
    bad = [
        (y, np.array([4, 1, 7]), 11, "increasing"),  # unsorted: items would map wrongly
        (y, np.array([1, 1, 7]), 11, "increasing"),  # duplicates
        (y, np.array([1, 4, 10]), 11, "increasing"),  # outside the catalogue
        (y, np.array([-1, 4, 7]), 11, "increasing"),
        (y, np.array([1.0, 4.0, 7.0]), 11, "integer"),
        (y, np.zeros(0, np.int64), 11, "non-empty"),
        (np.ones((2, 2)), head, 11, "do not match"),  # factors for another head
        (np.ones((3, 3)), head, 11, "do not match"),
        (np.full((3, 2), np.nan), head, 11, "NaN"),
        (y, head, 5, "payload length"),  # fewer rows than the head
        (y, head, 10, "payload length"),  # not whole rows
        (y, head, 2 * 11 + 1, "payload length"),  # more rows than the catalogue
    ]
    for factors, items, dim, match in bad:
        with pytest.raises(DataError, match=match):
            check_round_model(factors, items, dim, 2, 10)


def _fit(**kw: object) -> FederatedMF:
    data = synthetic(n_users=3000, n_items=1200, interactions_per_user=5.5, seed=0)
    params: dict[str, object] = {
        "epsilon": 1.0, "factors": 4, "rounds": 4, "head_items": 600, "seed": 0,
        "aggregation": "central",
    }  # fmt: skip
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FederatedMF(**params).fit(data)  # type: ignore[arg-type]


def test_distributed_model_rule_is_post_processing_and_off_is_unchanged() -> None:
    """Distributed aggregation (the default): the rule trains a smaller head with the same
    events; when it does not fire the model is the one trained without it, bit for bit."""
    dist: dict[str, object] = {"aggregation": "distributed", "rounds": 2}
    on, off = _fit(**dist), _fit(**dist, head_snr=None)
    assert len(off.head_items_) == 600 and len(on.head_items_) < 600
    assert on.guarantee_.epsilon == off.guarantee_.epsilon
    assert on.noise_multiplier_ == off.noise_multiplier_
    np.testing.assert_array_equal(on.popularity_, off.popularity_)
    top = off.head_items_[np.argsort(-off.popularity_[off.head_items_], kind="stable")]
    np.testing.assert_array_equal(on.head_items_, np.sort(top[: len(on.head_items_)]))
    # items outside the learnable head: no factors, scored by the noisy popularity alone
    rest = np.setdiff1d(off.head_items_, on.head_items_)
    assert not on.item_factors_[rest].any()
    # a threshold every planned head item clears: the rule does not fire, nothing changes
    same = _fit(**dist, head_snr=1e-9)
    np.testing.assert_array_equal(same.head_items_, off.head_items_)
    np.testing.assert_array_equal(same.item_factors_, off.item_factors_)
    np.testing.assert_array_equal(same.user_factors_, off.user_factors_)


def test_model_rule_is_post_processing_and_off_gives_the_old_model() -> None:
    on, off = _fit(), _fit(head_snr=None)
    assert len(off.head_items_) == 600 and len(on.head_items_) < 600
    # the same accounted events and noise: choosing the head is post-processing
    assert on.guarantee_.epsilon == off.guarantee_.epsilon
    assert on.noise_multiplier_ == off.noise_multiplier_
    np.testing.assert_array_equal(on.popularity_, off.popularity_)
    # the rule's head is the top of the old one (same noisy counts)
    top = off.head_items_[np.argsort(-off.popularity_[off.head_items_], kind="stable")]
    np.testing.assert_array_equal(on.head_items_, np.sort(top[: len(on.head_items_)]))
    assert math.isfinite(on.guarantee_.epsilon) and on.guarantee_.epsilon <= 1.0
