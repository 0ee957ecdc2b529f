"""FederatedMF core: client update (gradient, clipping, batch = single), server step, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from models.contract import RecommenderContract, checkerboard
from privrec.errors import ConfigError, DataError, InvalidInputError, PrivacyWarning
from privrec.federated import (
    FederatedMF,
    FederatedMFConfig,
    FederatedMFServer,
    client_count_vector,
    client_update,
    client_updates,
    pack_payload,
)
from privrec.federated.client import count_dim, count_item_weights
from privrec.federated.mf import _user_vector

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _cfg(**kw: object) -> FederatedMFConfig:
    base: dict[str, object] = {"factors": 4, "noise_multiplier": 1.0, "clients_per_round": 10}
    base.update(kw)
    return FederatedMFConfig.create(**base)


class TestFederatedMFContract(RecommenderContract):
    personalised = False  # 40 users cannot carry a personalised signal through DP noise

    def make_model(self) -> FederatedMF:
        return FederatedMF(
            epsilon=5.0,
            delta=1e-3,
            factors=4,
            rounds=5,
            head_items=None,
            aggregation="central",
            seed=0,
        )


def test_noise_free_training_learns_the_checkerboard() -> None:
    data, answer = checkerboard()
    m = FederatedMF(
        epsilon=None,
        noise_multiplier=0.0,
        factors=4,
        rounds=60,
        head_items=None,
        server_lr=0.05,
        clip_norm=100.0,
        adaptive_clipping=False,
        aggregation="central",
        seed=0,
    ).fit(data)
    users = np.arange(1, data.n_users)
    items, _ = m.recommend(users, k=3)
    assert np.take_along_axis(answer[users], items, axis=1).mean() >= 0.9


def test_client_update_is_minus_the_gradient_of_the_users_loss() -> None:
    rng = np.random.default_rng(0)
    y = rng.standard_normal((12, 3)) * 0.4
    items = np.array([1, 4, 7])
    cfg = _cfg(factors=3, alpha0=1.5, user_regularization=0.2)
    u = client_update(y, items, cfg, clip_norm=1e9)
    x = _user_vector(y, y.T @ y, items, 1.5, 0.2)

    def loss(yy: np.ndarray) -> float:
        s = yy @ x
        return float(1.5 * (s**2).sum() + ((1 - s[items]) ** 2).sum() + 0.2 * x @ x)

    grad = np.zeros_like(y)
    h = 1e-6
    for i, j in np.ndindex(*y.shape):  # finite differences on a tiny matrix
        e = np.zeros_like(y)
        e[i, j] = h
        grad[i, j] = (loss(y + e) - loss(y - e)) / (2 * h)
    np.testing.assert_allclose(u.delta, -grad.ravel(), atol=1e-7)
    assert u.unclipped and u.norm == pytest.approx(np.linalg.norm(grad), rel=1e-6)
    # the exact user vector is the minimiser of the device's own loss: zero user gradient
    s = y @ x
    gx = 2 * 1.5 * y.T @ s + 2 * y[items].T @ (s[items] - 1) + 2 * 0.2 * x
    np.testing.assert_allclose(gx, 0.0, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    clip=st.floats(1e-4, 10.0),
    n_items=st.integers(0, 8),
)
def test_clipping_bounds_the_update_and_bit_is_truthful(
    seed: int, clip: float, n_items: int
) -> None:
    """Sensitivity: whatever the history, ‖Δ‖ ≤ C, and the bit says whether clipping happened."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((10, 3)) * rng.uniform(0.01, 3)
    items = rng.choice(10, size=n_items, replace=False)
    u = client_update(y, items, _cfg(factors=3), clip)
    assert np.linalg.norm(u.delta) <= clip * (1 + 1e-9)
    assert u.unclipped == (u.norm <= clip)
    assert u.delta.shape == (30,)


def test_batch_updates_equal_single_device_updates() -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal((20, 4)) * 0.3
    m = sp.csr_matrix((rng.random((15, 20)) < 0.2).astype(np.float64))
    cfg = _cfg()
    d, b, n = client_updates(y, m, cfg, 0.3)
    for r in range(15):
        u = client_update(y, m[r].indices, cfg, 0.3)
        np.testing.assert_allclose(d[r], u.delta, atol=1e-12)
        assert b[r] == u.unclipped and n[r] == pytest.approx(u.norm)


def test_count_vector_is_bounded_indicators_and_a_length_bin() -> None:
    v = client_count_vector(np.array([3, 1, 3, 7]), 10, bound=3, weighting="uniform")
    assert v.shape == (count_dim(10),)
    # three distinct items within B = 3: all counted with weight 1, plus the length bin of 3
    assert np.linalg.norm(v) * np.sqrt(3 + 1) == pytest.approx(2.0)
    assert np.flatnonzero(v[:10]).tolist() == [1, 3, 7]
    np.testing.assert_allclose(v * 2.0, np.round(v * 2.0))  # 0/1 entries, scaled by 1/√(B + 1)
    long = client_count_vector(np.arange(9), 10, bound=3, rng=np.random.default_rng(0))
    assert np.count_nonzero(long[:10]) == 3 and np.count_nonzero(long[10:]) == 1
    assert np.linalg.norm(long) == pytest.approx(1.0)  # B items + one bin: the bound is tight
    assert not client_count_vector(np.array([], dtype=np.int64), 4, bound=2).any()
    with pytest.raises(DataError):
        client_count_vector(np.array([10]), 10, bound=2)


def test_count_vector_gives_short_histories_the_whole_norm() -> None:
    """``count_weighting="length"``: every count vector has norm 1; ≥ B items: as before."""
    w = count_item_weights(np.array([0, 1, 3, 10, 40]), bound=10)
    np.testing.assert_allclose(
        w, [0, np.sqrt(10 / 11), np.sqrt(10 / 33), 1 / np.sqrt(11), 1 / np.sqrt(11)]
    )
    one = client_count_vector(np.array([4]), 100, bound=10)
    assert one[4] == pytest.approx(np.sqrt(10 / 11)) and np.linalg.norm(one) == pytest.approx(1.0)
    assert one[100 + 0] == pytest.approx(1 / np.sqrt(11))  # the length bin keeps 1/√(B + 1)
    three = client_count_vector(np.array([5, 7, 9]), 100, bound=10)
    assert np.linalg.norm(three) == pytest.approx(1.0)
    # at least B items: the same vector as the uniform rule (the earlier mechanism)
    rng = np.random.default_rng
    long = client_count_vector(np.arange(30), 100, bound=10, rng=rng(0))
    same = client_count_vector(np.arange(30), 100, bound=10, rng=rng(0), weighting="uniform")
    np.testing.assert_array_equal(long, same)
    flat = client_count_vector(np.array([4]), 100, bound=10, weighting="uniform")
    assert flat[4] == pytest.approx(1 / np.sqrt(11)) and np.linalg.norm(flat) < 1
    with pytest.raises(ConfigError):
        count_item_weights(np.array([3]), bound=10, weighting="squared")  # type: ignore[arg-type]


def test_client_rejects_bad_inputs() -> None:
    y = np.ones((5, 2))
    with pytest.raises(DataError):
        client_update(y, np.array([5]), _cfg(factors=2), 1.0)
    with pytest.raises(DataError):
        client_update(np.full((5, 2), np.nan), np.array([1]), _cfg(factors=2), 1.0)
    with pytest.raises(ConfigError):
        client_update(y, np.array([1]), _cfg(factors=2), 0.0)


def test_config_validation_and_round_trip() -> None:
    cfg = _cfg(epsilon=None, noise_multiplier=0.5)
    again = FederatedMFConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    with pytest.raises(ConfigError, match="exactly one"):
        FederatedMFConfig.create(epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="at most one"):
        FederatedMFConfig.create(noise_multiplier=1.0, sampling_rate=0.1, clients_per_round=5)
    with pytest.raises(ConfigError):
        FederatedMFConfig.create(noise_multiplier=1.0, unit="interaction")


def test_payload_has_norm_at_most_one_and_unpacks() -> None:
    cfg = _cfg(clients_per_round=100)
    srv = FederatedMFServer(cfg, n_items=6, population=1000, head_items=np.arange(6))
    rng = np.random.default_rng(0)
    y = srv.item_factors
    ups = [client_update(y, rng.choice(6, 2, replace=False), cfg, srv.clip_norm) for _ in range(50)]
    spec = srv.round_spec()
    rows = np.stack([pack_payload(u, spec) for u in ups])
    assert (np.linalg.norm(rows, axis=1) <= 1 + 1e-12).all()
    total, unclipped = srv.unpack(rows.sum(axis=0), 50)
    np.testing.assert_allclose(total, np.sum([u.delta for u in ups], axis=0), atol=1e-9)
    assert unclipped == pytest.approx(sum(u.unclipped for u in ups))


def test_server_sgd_step_and_validation_before_mutation() -> None:
    cfg = _cfg(server_optimizer="sgd", server_lr=0.5, adaptive_clipping=False)
    srv = FederatedMFServer(cfg, n_items=3, population=100, head_items=np.arange(3))
    y0 = srv.item_factors.copy()
    g = np.arange(12, dtype=float)
    srv.apply(g, 4.0, float("nan"), survivors=srv.min_survivors)
    np.testing.assert_allclose(srv.item_factors.ravel(), y0.ravel() + 0.5 * g / 4)
    assert srv.round == 1 and srv.clip_norm == cfg.clip_norm
    before = srv.item_factors.copy()
    with pytest.raises(DataError):
        srv.apply(np.ones(5), 4.0, 1.0)
    with pytest.raises(DataError):
        srv.apply(np.full(12, np.inf), 4.0, 1.0)
    np.testing.assert_array_equal(srv.item_factors, before)
    assert srv.round == 1 and len(srv.spent) == 1


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = _cfg(
        epsilon=2.0, noise_multiplier=None, rounds=4, head_items=3, aggregation="central",
        clients_per_round=None, sampling_rate=1.0,
    )  # fmt: skip
    srv = FederatedMFServer(cfg, n_items=8, population=500)
    assert srv.needs_head
    srv.select_head(srv.count_noise(np.arange(srv.count_dim, dtype=float) % 8))
    srv.apply(np.ones(srv.item_factors.size), 10.0, 4.0)
    path = srv.save(tmp_path / "ck.npz")
    with pytest.raises(DataError, match="population"):  # not stored: an exact count of people
        FederatedMFServer.load(path)
    with np.load(path) as npz:
        assert '"population"' not in npz["__meta__"].tobytes().decode()
    again = FederatedMFServer.load(path, population=500)
    np.testing.assert_array_equal(again.item_factors, srv.item_factors)
    np.testing.assert_array_equal(again.adam_m, srv.adam_m)
    np.testing.assert_array_equal(again.head_items, srv.head_items)
    assert srv.noisy_counts is not None and again.noisy_counts is not None
    np.testing.assert_array_equal(again.noisy_counts, srv.noisy_counts)
    assert not again.needs_head  # the counting round is not run (or charged) twice
    assert again.clip_norm == srv.clip_norm and again.round == 1
    assert again.noise_multiplier == srv.noise_multiplier
    assert again.epsilon() == pytest.approx(srv.epsilon())
    assert again.guarantee().epsilon == pytest.approx(srv.guarantee().epsilon)


def test_zero_noise_warns() -> None:
    with pytest.warns(PrivacyWarning, match="NOT differentially private"):
        FederatedMFServer(_cfg(noise_multiplier=0.0), n_items=3, population=10)


def test_mean_step_uses_public_denominator() -> None:
    """The mean divides by the given (public, expected) count, not by the survivors."""
    cfg = _cfg(server_optimizer="sgd", server_lr=1.0, adaptive_clipping=False, noise_multiplier=0.0)
    srv = FederatedMFServer(cfg, n_items=2, population=100, head_items=np.arange(2))
    y0 = srv.item_factors.copy()
    srv.apply(np.full(8, 3.0), 10.0, math.nan, survivors=3)
    np.testing.assert_allclose(srv.item_factors, y0 + 0.3)


def test_central_payload_validation() -> None:
    cfg = _cfg(aggregation="central", adaptive_clipping=False)
    srv = FederatedMFServer(cfg, n_items=3, population=100, head_items=np.arange(3))
    ok = np.zeros(srv.payload_dim)
    ok[0] = 1.0
    srv.validate_payload(ok)
    with pytest.raises(InvalidInputError, match="shape"):
        srv.validate_payload(np.zeros(srv.payload_dim + 1))
    with pytest.raises(InvalidInputError, match="exceeds"):
        srv.validate_payload(ok * 1.01)
    with pytest.raises(InvalidInputError, match="NaN"):
        srv.validate_payload(np.full(srv.payload_dim, np.nan))


def test_adam_counts_applied_steps_only() -> None:
    """A discarded round (charged, update never applied) is not an Adam step: the bias
    correction of the next applied round is that of the second step, not the third."""
    cfg = _cfg(server_optimizer="adam", adaptive_clipping=False)
    g = np.arange(12, dtype=float)
    with_discard = FederatedMFServer(cfg, n_items=3, population=100, head_items=np.arange(3))
    plain = FederatedMFServer(cfg, n_items=3, population=100, head_items=np.arange(3))
    for srv in (with_discard, plain):
        srv.apply(g, 4.0, float("nan"), survivors=srv.min_survivors)
    with_discard.discard_round("aborted after the unmask request")
    steps = []
    for srv in (with_discard, plain):
        before = srv.item_factors.copy()
        srv.apply(2 * g + 1, 4.0, float("nan"), survivors=srv.min_survivors)
        steps.append(srv.item_factors - before)
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-12)
    np.testing.assert_array_equal(with_discard.adam_v, plain.adam_v)
    assert with_discard.round == 3 and plain.round == 2  # the discarded round is charged
