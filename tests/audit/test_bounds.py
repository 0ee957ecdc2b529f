"""The audit statistics against closed forms, exact tails and their own guarantees."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from privrec.audit.bounds import (
    auc,
    auc_confidence_interval,
    best_threshold,
    clopper_pearson,
    default_guess_grid,
    multi_run_bound,
    one_run_bound,
    one_run_epsilon,
    one_run_p_value,
)
from privrec.audit.mia import dp_auc_bound
from privrec.errors import ConfigError


def test_p_value_without_delta_is_the_binomial_tail():
    for eps in (0.0, 0.5, 2.0):
        q = math.exp(eps) / (1 + math.exp(eps))
        assert one_run_p_value(500, 100, 70, eps, 0.0) == pytest.approx(
            scipy.stats.binom.sf(69, 100, q), rel=1e-9
        )


def test_p_value_delta_term_matches_its_definition():
    m, r, v, eps, delta = 1000, 50, 40, 1.0, 1e-4
    q = 1 / (1 + math.exp(-eps))
    alpha = max(
        sum(scipy.stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i
        for i in range(1, v + 1)
    )
    expected = scipy.stats.binom.sf(v - 1, r, q) + 2 * m * delta * alpha
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9)


def test_p_value_increases_with_epsilon_and_bound_inverts_it():
    ps = [one_run_p_value(2000, 200, 150, e, 1e-5) for e in np.linspace(0, 3, 13)]
    assert all(a <= b + 1e-15 for a, b in itertools.pairwise(ps))
    e = one_run_epsilon(2000, 200, 150, 1e-5, 0.95)
    assert one_run_p_value(2000, 200, 150, e, 1e-5) < 0.05
    assert one_run_p_value(2000, 200, 150, e + 1e-4, 1e-5) >= 0.05


def test_cap_at_m_2000_and_10000_matches_the_published_figures():
    # every one of m/2 guesses right, 95%, δ = 1e-5: about 5.8 and 7.1
    assert one_run_epsilon(2000, 1000, 1000, 1e-5, 0.95) == pytest.approx(5.76, abs=0.01)
    assert one_run_epsilon(10000, 5000, 5000, 1e-5, 0.95) == pytest.approx(7.14, abs=0.01)


def test_chance_guesses_give_no_bound():
    assert one_run_epsilon(1000, 100, 50, 1e-5, 0.95) == 0.0


def test_false_positive_rate_under_no_signal_is_at_most_beta():
    """Scores independent of membership: the bound exceeds 0 in at most ~5% of audits."""
    rng = np.random.default_rng(0)
    positives = 0
    trials = 200
    for _ in range(trials):
        inc = rng.random(400) < 0.5
        positives += one_run_bound(rng.normal(size=400), inc, delta=1e-5).epsilon_lb > 0
    assert positives <= 0.05 * trials + 3 * math.sqrt(0.05 * trials)


def test_gaussian_mechanism_bound_stays_below_its_epsilon():
    """Scores of a Gaussian mechanism calibrated to ε = 1 (z = 3.73): bound below 1."""
    rng = np.random.default_rng(1)
    mu = 1 / 3.7306
    bounds = []
    for _ in range(30):
        inc = rng.random(2000) < 0.5
        bounds.append(one_run_bound(rng.normal(size=2000) + mu * inc, inc, delta=1e-5).epsilon_lb)
    assert max(bounds) < 1.0
    assert np.mean(bounds) > 0.1  # and it is not vacuous


def test_one_run_bound_details_and_errors():
    inc = np.arange(100) % 2 == 0
    b = one_run_bound(inc.astype(float), inc, delta=0.0, grid=[10, 50])
    assert b.correct == b.guesses == 50 and b.epsilon_lb == pytest.approx(b.cap)
    assert b.to_dict()["per_guess_count"]["10"][0] == 10
    assert default_guess_grid(2000) == (50, 100, 200, 400, 1000)
    with pytest.raises(ConfigError):
        one_run_bound(np.zeros(3), np.zeros(4, bool), delta=0.0)
    with pytest.raises(ConfigError):
        one_run_bound(np.array([0.0, np.nan]), np.array([True, False]), delta=0.0)
    with pytest.raises(ConfigError):
        one_run_bound(np.zeros(4), np.zeros(4, bool), delta=0.0, confidence=1.0)
    with pytest.raises(ConfigError):
        one_run_p_value(10, 5, 6, 1.0, 0.0)


def test_constant_scores_never_give_a_bound():
    inc = np.random.default_rng(0).random(1000) < 0.5
    assert one_run_bound(np.zeros(1000), inc, delta=1e-5).epsilon_lb < 0.5


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(5, 10, 0.95)
    assert lo == pytest.approx(0.187086, abs=1e-5) and hi == pytest.approx(0.812914, abs=1e-5)
    assert clopper_pearson(10, 10, 0.95)[1] == 1.0
    with pytest.raises(ConfigError):
        clopper_pearson(3, 2, 0.95)


def test_multi_run_bound_separated_and_overlapping():
    sep = multi_run_bound(np.full(500, 1.0), np.zeros(500), delta=1e-5, threshold=0.5)
    assert sep.epsilon_lb == pytest.approx(sep.cap) and sep.epsilon_lb > 4.0
    rng = np.random.default_rng(0)
    same = multi_run_bound(rng.normal(size=500), rng.normal(size=500), delta=1e-5)
    assert same.epsilon_lb < 0.3
    t = best_threshold(np.full(50, 2.0), np.zeros(50), 1e-5)
    assert 0.0 <= t < 2.0


def test_auc_and_its_bound():
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    rng = np.random.default_rng(0)
    lo, hi = auc_confidence_interval(rng.normal(1, 1, 300), rng.normal(0, 1, 300), n_boot=200)
    true = scipy.stats.norm.cdf(1 / math.sqrt(2))
    assert lo < true < hi
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5)
    assert dp_auc_bound(1.0, 1e-5) < dp_auc_bound(4.0, 1e-5) < 1.0
    # closed form for δ = 0: 1 − 1/(e^ε + 1) ... the ROC bound's area
    e = math.exp(1.0)
    knee = 1 / (e + 1)
    area = e * knee**2 / 2 + (1 - knee) * (e * knee + 1) / 2
    assert dp_auc_bound(1.0, 0.0) == pytest.approx(area, rel=1e-6)
