"""DPALS's count share read from the noisy length histogram (``adaptive_count_share``).

The counts and the T steps' statistics are announced as ONE Gaussian event (their summed rate
Σ 1/z²); after the histogram the rate is split between them. These tests pin the split, check
that the releases made add up to the announced event (and that a fit whose releases do not is
refused), that ε is that of the fixed split, and the rule's shape.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest

from privrec.data import synthetic
from privrec.data.interactions import Interactions
from privrec.models import dp_als_stages
from privrec.models.dp_als import DPALS, dpals_event, dpals_releases
from privrec.models.dp_als_accounting import (
    REST_LABEL,
    RestSplit,
    count_base_share,
    split_rest,
)
from privrec.models.dp_rules import (
    DPALS_SHARE_MAX,
    DPALS_SHARE_SCALE,
    LengthProfile,
    dpals_count_share,
)
from privrec.models.releases import Release
from privrec.privacy.accounting import compose, epsilon_of
from privrec.privacy.bounds import length_histogram
from privrec.privacy.mechanisms import gaussian_event

RATIOS = (1.0, 5.0, 1.0, 0.2)


def _profile(n_users: int, length: int, n_items: int) -> LengthProfile:
    return LengthProfile(length_histogram(np.full(n_users, length)), 0.0, n_items)


def test_base_share_pinned() -> None:
    """Defaults: 0.2⁻² against T·(1 + B₀) per unit σ (lhs "none", B₀ = 30)."""
    assert count_base_share(2, 30, RATIOS, "none") == pytest.approx(25 / (25 + 62), rel=1e-12)
    assert count_base_share(3, 30, RATIOS, "none") == pytest.approx(25 / (25 + 93), rel=1e-12)
    # the left-hand sides (multiplier 5σ/√B₀) take their part of the rate
    full = 25 / (25 + 2 * (1 + 30 / 25 + 30))
    assert count_base_share(2, 30, RATIOS, "full") == pytest.approx(full, rel=1e-12)


@pytest.mark.parametrize("lhs", ["none", "diagonal", "full"])
@pytest.mark.parametrize("share", [0.05, 0.2873, 0.5, 0.9])
def test_split_keeps_the_announced_rate(lhs: Any, share: float) -> None:
    """The counts at z_counts and every step at σ_steps add up to the announced event exactly."""
    sigma, t, b0 = 35.0, 2, 30
    split = split_rest(sigma, t, b0, RATIOS, lhs, share)
    steps = dpals_releases(split.sigma_steps, t, b0, RATIOS, None, lhs)[1:]
    rate = 1 / split.z_counts**2 + sum(1 / s.event.noise_multiplier**2 for s in steps)
    (_, whole) = dpals_releases(sigma, t, b0, RATIOS, 0.5, lhs, composite=True)
    assert rate == pytest.approx(1 / whole.event.noise_multiplier**2, rel=1e-12)
    assert (1 / split.z_counts**2) / rate == pytest.approx(share, rel=1e-12)
    # hence the same ε as the announced event, whatever the share
    made = compose([gaussian_event(split.z_counts), *[s.event for s in steps]])
    assert epsilon_of(made, 1e-5) == pytest.approx(epsilon_of(whole.event, 1e-5), rel=1e-9)


def test_split_pinned() -> None:
    split = split_rest(35.0, 2, 30, RATIOS, "none", 0.5)
    assert split.base_share == pytest.approx(0.28735632, rel=1e-7)
    assert split.z_counts == pytest.approx(5.30668631, rel=1e-7)  # 7.0 at the base share
    assert split.sigma_steps == pytest.approx(41.78488975, rel=1e-7)
    # at the base share nothing moves
    same = split_rest(35.0, 2, 30, RATIOS, "none", split.base_share)
    assert same.z_counts == pytest.approx(7.0, rel=1e-12)
    assert same.sigma_steps == pytest.approx(35.0, rel=1e-12)
    with pytest.raises(ValueError):
        split_rest(35.0, 2, 30, RATIOS, "none", 1.0)


def test_composite_event_costs_what_the_releases_do() -> None:
    """Announcing the rest as one event changes no ε (a composition of Gaussians is one)."""
    for t in (1, 2, 3):
        a = dpals_event(30.0, t, 30, RATIOS, 0.5, "none")
        b = dpals_event(30.0, t, 30, RATIOS, 0.5, "none", composite=True)
        assert epsilon_of(a, 1e-5) == pytest.approx(epsilon_of(b, 1e-5), rel=1e-9)


def test_rule_shape() -> None:
    base = 0.2873
    assert dpals_count_share(base, None, 100, 1.0) == base  # no histogram: the base
    # x = ε · n · median / items
    dense = _profile(6000, 60, 3600)  # x = 100 at ε = 1
    assert dpals_count_share(base, dense, 3600, 1.0) == base
    thin = _profile(600, 30, 6000)  # x = 3
    assert dpals_count_share(base, thin, 6000, 1.0) == DPALS_SHARE_MAX
    mid = _profile(1000, 16, 3000)
    x = 1000 * mid.quantile(0.5) / 3000  # the histogram's median history (interpolated)
    assert 5 < x < 10
    assert dpals_count_share(base, mid, 3000, 1.0) == pytest.approx(
        base * DPALS_SHARE_SCALE / x, rel=1e-9
    )
    # smaller ε: a larger share; never below the base, never above the cap (unless the base is)
    shares = [dpals_count_share(base, mid, 3000, e) for e in (10.0, 2.0, 1.0, 0.5, 0.1)]
    assert shares == sorted(shares) and shares[0] == base and shares[-1] == DPALS_SHARE_MAX
    assert dpals_count_share(0.7, thin, 6000, 1.0) == 0.7


@pytest.fixture(scope="module")
def thin() -> Interactions:
    """Few interactions per catalogue item: the rule gives the counts more than the base."""
    return synthetic(n_users=400, n_items=2000, interactions_per_user=8, seed=0)


def _fit(data: Interactions, **kw: Any) -> DPALS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params: dict[str, Any] = {"epsilon": 1.0, "delta": 1e-5, "unit": "user", "seed": 0}
        return DPALS(**(params | kw)).fit(data)


def test_fit_reads_the_share_and_states_it(thin: Interactions) -> None:
    seen: list[Release] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DPALS(epsilon=1.0, delta=1e-5, unit="user", seed=0).fit(thin, on_release=seen.append)
    fixed = _fit(thin, adaptive_count_share=False)
    base = count_base_share(m.iterations_, 30, RATIOS, "none")
    assert m.count_budget_fraction_ > base and fixed.count_budget_fraction_ == base
    # the counts got less noise, the steps more; ε is the same and met
    assert m.count_noise_multiplier_ < fixed.count_noise_multiplier_
    assert m.noise_scale_ > fixed.noise_scale_
    g = m.privacy_guarantee
    assert g.epsilon == pytest.approx(fixed.privacy_guarantee.epsilon, rel=1e-9) and g.epsilon <= 1
    assert [e.label for e in g.spent_events][-1] == REST_LABEL
    assert any("share" in r and "read from the noisy histogram" in r for r in g.released)
    # every release after the histogram, each with its own event, adds up to the announced one
    counts = next(r for r in seen if r.name == "counts")
    assert counts.noise_multiplier == pytest.approx(m.count_noise_multiplier_, rel=1e-12)
    rates = [1 / r.event.noise_multiplier**2 for r in seen if r.name != "lengths"]
    assert sum(rates) == pytest.approx(1 / g.spent_events[-1].event.noise_multiplier ** 2, rel=1e-9)
    assert (1 / m.count_noise_multiplier_**2) / sum(rates) == pytest.approx(
        m.count_budget_fraction_, rel=1e-9
    )


def test_fixed_bounds_keep_every_release_as_its_own_event(thin: Interactions) -> None:
    """No histogram (B and k given): nothing to read a share from, the old events."""
    m = _fit(thin, max_per_user=10, factors=4)
    labels = [e.label for e in m.privacy_guarantee.spent_events]
    assert labels[0] == "noisy item counts" and REST_LABEL not in labels
    assert m.count_budget_fraction_ == pytest.approx(
        count_base_share(m.iterations_, 10, RATIOS, "none"), rel=1e-12
    )


def test_releases_that_do_not_add_up_are_refused(
    thin: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split that spent more than announced (a bug) never yields a guarantee."""
    real = dp_als_stages.split_rest

    def greedy(*args: Any) -> RestSplit:
        s = real(*args)
        return s._replace(z_counts=s.z_counts * 0.99)  # 2% more rate on the counts

    monkeypatch.setattr(dp_als_stages, "split_rest", greedy)
    with pytest.raises(RuntimeError, match="do not add up"):
        _fit(thin)


def test_seeded_fit_is_reproducible_and_not_the_fixed_one(thin: Interactions) -> None:
    a, b = _fit(thin), _fit(thin)
    assert np.array_equal(a.item_factors_, b.item_factors_)
    assert not math.isclose(
        a.count_noise_multiplier_, _fit(thin, adaptive_count_share=False).count_noise_multiplier_
    )


def test_explain_says_which_event_stands_for_several_releases(thin: Interactions) -> None:
    text = _fit(thin).privacy_guarantee.explain()
    assert "2 noisy releases, 1 of them several releases announced as one" in text
    fixed = _fit(thin, adaptive_count_share=False).privacy_guarantee.explain()
    assert "announced as one" not in fixed


def test_files_saved_before_the_option_load_with_the_fixed_split(tmp_path: Any) -> None:
    """A file without ``adaptive_count_share`` was trained with the fixed split: it says so."""
    from privrec.models.persistence import _strict_params

    params = DPALS(epsilon=1.0, delta=1e-5, unit="user").config().model_dump(mode="json")
    del params["adaptive_count_share"]
    assert _strict_params(DPALS, params, tmp_path / "m.npz").adaptive_count_share is False
    params["adaptive_count_share"] = True  # a newer file keeps what it states
    assert _strict_params(DPALS, params, tmp_path / "m.npz").adaptive_count_share is True


def test_federated_dpals_keeps_the_fixed_split() -> None:
    """Its rounds are charged to a ledger one by one: no share read after the histogram."""
    from privrec.errors import ConfigError
    from privrec.federated.dpals import FederatedDPALS

    assert FederatedDPALS(epsilon=1.0, delta=1e-5).config().adaptive_count_share is False
    with pytest.raises(ConfigError):
        FederatedDPALS(epsilon=1.0, delta=1e-5, adaptive_count_share=True).config()  # type: ignore[arg-type]


def test_noise_drawn_is_the_split_s(thin: Interactions, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statistical check: with a raised share the counts carry noise of std z_c·√count_sample
    and every step's right-hand sides that of σ_steps — what the releases (and the events that
    add up to the announced one) state, within sampling error."""
    from privrec.models import dp_als

    clean: dict[str, list[np.ndarray]] = {"counts": [], "rhs": []}
    counts_fn, sums_fn = dp_als.bounded_counts, dp_als.item_sums

    def counts_spy(*args: Any, **kwargs: Any) -> Any:
        out = counts_fn(*args, **kwargs)
        clean["counts"].append(np.array(out[0], dtype=np.float64, copy=True))
        return out

    def sums_spy(*args: Any, **kwargs: Any) -> Any:
        out = sums_fn(*args, **kwargs)
        clean["rhs"].append(np.array(out[0], dtype=np.float64, copy=True))
        return out

    monkeypatch.setattr(dp_als, "bounded_counts", counts_spy)
    monkeypatch.setattr(dp_als, "item_sums", sums_spy)
    seen: list[Release] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DPALS(epsilon=1.0, delta=1e-5, unit="user", seed=4).fit(thin, on_release=seen.append)
    assert m.count_budget_fraction_ > 0.3  # the rule raised the share
    (counts,) = [r for r in seen if r.name == "counts"]
    noise = np.asarray(counts.value, dtype=np.float64) - clean["counts"][0]
    assert counts.noise_std == pytest.approx(
        m.count_noise_multiplier_ * math.sqrt(m.count_sample_), rel=1e-12
    )
    assert noise.std() == pytest.approx(counts.noise_std, rel=0.1)  # 2,000 items
    steps = [r for r in seen if r.name == "rhs"]
    # one round (small n·ε): the clean sums are computed once, every step adds fresh noise
    sums = clean["rhs"] * m.iterations_ if m.one_round_ else clean["rhs"]
    assert len(steps) == len(sums) == m.iterations_
    for r, v in zip(steps, sums, strict=True):
        rhs_noise = np.asarray(r.value, dtype=np.float64) - v
        assert rhs_noise.std() == pytest.approx(r.noise_std, rel=0.1), r.label
        # σ_steps against the multiplier r2·σ_steps/√B₀ on sensitivity √B·Γ
        want = m.rhs_noise_ratio * m.noise_scale_ * math.sqrt(m.max_per_user_ / 30) * m.clip_norm
        assert r.noise_std == pytest.approx(want, rel=1e-9)


def test_each_tier_gets_its_epsilon_from_the_releases_made(thin: Interactions) -> None:
    """Personalised tiers: a tier's ε, recomputed from the releases the fit actually made (each
    scaled by the tier's weight), is the ε the guarantee states from the announced event."""
    from privrec.privacy.personalized import scale_event

    eps = np.random.default_rng(0).choice([0.5, 1.0], size=thin.n_users)
    seen: list[Release] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DPALS(epsilon=1.0, delta=1e-5, unit="user", tiers=(0.5,), seed=0)
        m.fit(thin, user_epsilons=eps, on_release=seen.append)
    assert m.count_budget_fraction_ > 0.3  # the rule raised the share
    g = m.privacy_guarantee
    for tier in g.tiers:
        made = compose([scale_event(r.event, tier["weight"]) for r in seen])
        assert epsilon_of(made, g.delta) == pytest.approx(tier["epsilon"], rel=1e-6)
