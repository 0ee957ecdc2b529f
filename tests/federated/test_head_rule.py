"""FederatedMF's learnable head: the rule, when it fires, and that it is post-processing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from privrec.data.synthetic import synthetic
from privrec.federated import FederatedMF, FederatedMFConfig, FederatedMFServer
from privrec.federated.config import HEAD_MINIMUM, HEAD_SNR
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


def test_rule_off_and_distributed_keep_head_items() -> None:
    counts = 10_000 * 0.2 / (1.0 + np.arange(2000)) ** 0.8
    off = _server(1.0, 10_000, head_snr=None)
    np.testing.assert_array_equal(off.select_head(_counts(off, counts)), np.arange(500))
    cfg = FederatedMFConfig.create(epsilon=1.0, head_items=500, seed=0)  # distributed
    dist = FederatedMFServer(cfg, n_items=2000, population=10_000)
    head = dist.select_head(_counts(dist, counts), survivors=10_000, sampled=10_000)
    np.testing.assert_array_equal(head, np.arange(500))


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
