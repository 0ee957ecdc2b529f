"""DPEASE: contract, Gram sensitivity under both units, head restriction, accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from privrec.models import load_model
from privrec.models.dp_ease import (
    DPEASE,
    GRAM_LABEL,
    PAIR_LABEL,
    NoisyCounts,
    bounded_gram,
    gram_sensitivity,
    popularity_prior,
    resolve_ease_blend,
    resolve_ease_regularization,
)
from privrec.models.dp_rules import (
    COUNT_SHARE,
    COUNT_SHARE_MAX,
    MAX_BLEND,
    LengthProfile,
    count_share,
    low_signal_blend,
)
from privrec.privacy.accounting import compose, epsilon_of
from privrec.privacy.bounds import LENGTHS_LABEL
from privrec.privacy.events import total_event
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.randomness import seeded_generator
from privrec.privacy.units import PrivacyUnit

from .contract import RecommenderContract, checkerboard

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


class TestDPEASEContract(RecommenderContract):
    personalised = False  # 40 users cannot carry a personalised signal through DP noise

    def make_model(self) -> DPEASE:
        return DPEASE(epsilon=8.0, delta=1e-3, unit="user", regularization=50.0, seed=0)


@st.composite
def binary(draw: st.DrawFn) -> np.ndarray:
    n_users = draw(st.integers(1, 15))
    n_items = draw(st.integers(1, 12))
    p = draw(st.floats(0, 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    return (rng.random((n_users, n_items)) < p).astype(np.float32)


@given(binary(), st.floats(0.5, 20.0), st.data())
def test_user_sensitivity(d: np.ndarray, c: float, data: st.DataObject) -> None:
    u = data.draw(st.integers(0, d.shape[0] - 1))
    g1, sens = bounded_gram(
        sp.csr_matrix(d), PrivacyUnit.USER, c, 5, seeded_generator(0, warn=False)
    )
    d2 = d.copy()
    d2[u] = 0
    g2, _ = bounded_gram(sp.csr_matrix(d2), PrivacyUnit.USER, c, 5, seeded_generator(0, warn=False))
    assert np.linalg.norm(g1 - g2) <= sens + 1e-9


@given(binary(), st.integers(1, 6), st.integers(0, 1000), st.data())
def test_interaction_sensitivity(d: np.ndarray, b: int, seed: int, data: st.DataObject) -> None:
    rows, cols = np.nonzero(d)
    if len(rows) == 0:
        return
    j = data.draw(st.integers(0, len(rows) - 1))
    d2 = d.copy()
    d2[rows[j], cols[j]] = 0
    g1, sens = bounded_gram(
        sp.csr_matrix(d), PrivacyUnit.INTERACTION, 1.0, b, seeded_generator(seed, warn=False)
    )
    g2, _ = bounded_gram(
        sp.csr_matrix(d2), PrivacyUnit.INTERACTION, 1.0, b, seeded_generator(seed, warn=False)
    )
    assert np.linalg.norm(g1 - g2) <= sens + 1e-9


def test_head_restriction_charges_counts_and_meets_budget() -> None:
    data, _ = checkerboard(n_users=60, n_items=30)
    m = DPEASE(epsilon=2.0, delta=1e-4, unit="user", max_items=10, seed=3).fit(data)
    labels = [s.label for s in m.guarantee_.spent_events]
    assert labels == [LENGTHS_LABEL, PAIR_LABEL]
    fixed = DPEASE(epsilon=2.0, delta=1e-4, unit="user", max_items=10, max_per_user=30, seed=3)
    labels = [s.label for s in fixed.fit(data).guarantee_.spent_events]
    assert labels == [PAIR_LABEL]
    assert fixed.count_budget_fraction_ == COUNT_SHARE  # no histogram: the fixed share
    assert len(m.head_items_) == 10
    eps = epsilon_of(total_event(m.guarantee_.spent_events), 1e-4)
    assert 0.99 * 2.0 <= eps <= 2.0
    items, scores = m.recommend(np.arange(5), k=30, exclude_seen=False)
    assert set(items[0][np.isfinite(scores[0])]) <= set(m.head_items_.tolist())


def test_rdp_accountant_split() -> None:
    data, _ = checkerboard(n_users=60, n_items=30)
    m = DPEASE(
        epsilon=2.0, delta=1e-4, unit="interaction", max_items=10, accountant="rdp", seed=3
    ).fit(data)
    eps = epsilon_of(total_event(m.guarantee_.spent_events), 1e-4, "rdp", PrivacyUnit.INTERACTION)
    assert 0.99 * 2.0 <= eps <= 2.0


def test_cold_start_uses_gram_diagonal() -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPEASE(epsilon=2.0, delta=1e-4, unit="user", seed=1).fit(data)
    items, _ = m.recommend(0, k=5)  # user 0 has no interactions
    expected = np.argsort(-m.item_popularity_, kind="stable")[:5]
    np.testing.assert_array_equal(np.sort(items), np.sort(m.head_items_[expected]))


def test_whole_catalogue_without_head_selection_spends_only_the_gram() -> None:
    data, _ = checkerboard(n_users=60, n_items=20)
    m = DPEASE(epsilon=2.0, delta=1e-4, unit="user", head_snr=0.0, max_per_user=30, seed=1)
    m.fit(data)
    assert [s.label for s in m.guarantee_.spent_events] == [GRAM_LABEL]
    assert len(m.head_items_) == 20
    assert 0.99 * 2.0 <= m.privacy_guarantee.epsilon <= 2.0


def test_automatic_head_regularisation_and_blend(tmp_path: Path) -> None:
    assert resolve_ease_regularization(None, 10.0, 100, 3.0) == pytest.approx(600.0)
    assert resolve_ease_regularization(None, 0.01, 100, 3.0) == 100.0  # floor
    assert resolve_ease_regularization(42.0, 10.0, 100, 3.0) == 42.0
    assert gram_sensitivity(PrivacyUnit.USER, 7.0, 5) == 7.0
    assert gram_sensitivity(PrivacyUnit.INTERACTION, 7.0, 5) == pytest.approx(np.sqrt(18))
    assert resolve_ease_blend(None, 1.0) > resolve_ease_blend(None, 20.0) > 0
    data, _ = checkerboard(n_users=60, n_items=30)
    m = DPEASE(epsilon=1.0, delta=1e-4, unit="user", head_min=4, seed=3).fit(data)
    # at ε = 1 with 60 users no count clears the threshold: the head is the floor
    assert len(m.head_items_) == 4
    noise_std = m.noise_multiplier_ * 10.0  # the default C
    assert m.regularization_ == pytest.approx(resolve_ease_regularization(None, noise_std, 4, 3.0))
    big = DPEASE(epsilon=1e5, delta=1e-4, unit="user", head_min=4, seed=3).fit(data)
    assert len(big.head_items_) == 30  # noiseless limit: every item clears it
    again = load_model(m.save(tmp_path / "dpease.npz"))
    assert isinstance(again, DPEASE)
    # no count clears the threshold: the low-signal rule raises β (n_head / 1 = 4×)
    assert m.signal_fraction_ == 0.0
    assert again.popularity_blend_ == m.popularity_blend_ == 4 * resolve_ease_blend(None, 1.0)
    hist = data.matrix[[5, 7]]
    np.testing.assert_array_equal(
        again.recommend_history(hist, k=3)[0], m.recommend_history(hist, k=3)[0]
    )


def test_low_signal_rules() -> None:
    assert low_signal_blend(0.5, 100, 100) == 0.5  # the whole head clears the threshold
    assert low_signal_blend(0.5, 150, 100) == 0.5
    assert low_signal_blend(0.5, 25, 100) == pytest.approx(2.0)
    assert low_signal_blend(1.0, 0, 100) == MAX_BLEND  # capped (the stored range)


def _short(n_users: int, seed: int = 0) -> sp.csr_matrix:
    """Short histories (2–6 items) over 200 items with a skewed popularity."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 201) ** 0.8
    rows = [
        rng.choice(200, size=rng.integers(2, 7), replace=False, p=p / p.sum())
        for _ in range(n_users)
    ]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    data = np.ones(indptr[-1], dtype=np.float32)
    return sp.csr_matrix((data, np.concatenate(rows), indptr), shape=(n_users, 200))


def test_fallback_off_is_the_old_model() -> None:
    """``popularity_fallback=False``: the ε-rule β, as before; the rule changes β (and s) only."""
    x = _short(300)
    kw = {"epsilon": 1.0, "delta": 1e-5, "unit": "user", "head_min": 50, "seed": 4}
    off = DPEASE(**kw, popularity_fallback=False).fit(x)
    on = DPEASE(**kw).fit(x)
    assert off.popularity_blend_ == resolve_ease_blend(None, 1.0)
    assert on.signal_fraction_ < 1.0 < on.popularity_blend_ / off.popularity_blend_
    # same noise draws (the rule is post-processing): the released weights are identical
    np.testing.assert_array_equal(on.weights_, off.weights_)
    np.testing.assert_array_equal(on.head_items_, off.head_items_)
    assert on.privacy_guarantee.epsilon == off.privacy_guarantee.epsilon
    assert 0.99 <= on.privacy_guarantee.epsilon <= 1.0  # the pinned ε is unchanged
    np.testing.assert_array_equal(on.item_popularity_, off.item_popularity_)
    assert on.popularity_shrinkage_ / off.popularity_shrinkage_ == pytest.approx(
        on.popularity_blend_ / off.popularity_blend_
    )
    # an explicit β is kept as given (and no head selection: no counts, nothing changes)
    fixed = DPEASE(**kw, popularity_blend=0.7).fit(x)
    assert fixed.popularity_blend_ == 0.7
    whole = {**kw, "head_snr": 0.0, "max_per_user": 6}
    a = DPEASE(**whole).fit(x)
    b = DPEASE(**whole, popularity_fallback=False).fit(x)
    np.testing.assert_array_equal(a.item_popularity_, b.item_popularity_)
    assert a.popularity_blend_ == b.popularity_blend_
    np.testing.assert_array_equal(
        a.recommend(np.arange(20), k=10)[0], b.recommend(np.arange(20), k=10)[0]
    )


@pytest.mark.parametrize(("n_users", "epsilon", "fires"), [(300, 1.0, True), (3000, 20.0, False)])
def test_fallback_fires_at_small_n_eps(n_users: int, epsilon: float, fires: bool) -> None:
    """Small n·ε: part of the head is below the noise and β grows; large n·ε: β unchanged."""
    m = DPEASE(epsilon=epsilon, delta=1e-5, unit="user", head_min=50, seed=0).fit(_short(n_users))
    base = resolve_ease_blend(None, epsilon)
    assert (m.signal_fraction_ < 1.0) is fires
    assert (m.popularity_blend_ > base) is fires
    if not fires:
        assert m.popularity_blend_ == base


def test_a_pair_stored_many_times_counts_once_in_the_bounded_gram() -> None:
    """A user whose row stores one item fifty times (a non-canonical CSR handed straight to the
    statistic) must still move the Gram by at most C (it moved it by 250 at C = 5)."""
    from privrec.privacy.units import PrivacyUnit

    base = sp.random(30, 8, density=0.4, format="csr", random_state=0, dtype=np.float64)
    hostile = sp.csr_matrix(
        (np.ones(50), np.full(50, 3), np.array([0, 50])), shape=(1, 8)
    )  # fmt: skip
    with_user = sp.vstack([base, hostile], format="csr")
    with_user.has_canonical_format = False  # vstack keeps the duplicates as stored
    g0, sens = bounded_gram(base, PrivacyUnit.USER, 5.0, 10, None)
    g1, _ = bounded_gram(with_user, PrivacyUnit.USER, 5.0, 10, None)
    assert np.linalg.norm(g1 - g0) <= sens + 1e-9


def test_no_items_is_a_typed_error_and_nothing_changes() -> None:
    """A reviewer's 0 × 0 and 5 × 0 matrices failed as an untyped LinAlgError (and LAPACK wrote
    'illegal value' lines to stderr); a fitted model stays as it was."""
    import pickle

    import scipy.sparse as sp

    from privrec.errors import DataError

    m = DPEASE(epsilon=1.0, delta=1e-5, unit="user", seed=0)
    with pytest.warns(Warning):
        m.fit(sp.random(40, 8, density=0.3, format="csr", random_state=0))
    before = pickle.dumps(m.__dict__)
    for shape in ((0, 0), (5, 0)):
        with pytest.raises(DataError, match="at least one item"):
            m.fit(sp.csr_matrix(shape, dtype=np.float32))
    assert pickle.dumps(m.__dict__) == before


def _profile(n_users: int) -> LengthProfile:
    return LengthProfile(np.array([0.0, float(n_users)]), 1.0, 10)


def test_count_share_rule_is_pinned() -> None:
    # the given share wins; no histogram: the fixed share; else 0.1 × 8000 / (n·ε) in [0.1, 0.75]
    assert count_share(0.3, _profile(100), 1.0) == 0.3
    assert count_share(None, None, 1.0) == COUNT_SHARE == 0.1
    assert count_share(None, _profile(600), 1.0) == COUNT_SHARE_MAX == 0.75
    assert count_share(None, _profile(3000), 1.0) == pytest.approx(0.8 / 3.0)
    assert count_share(None, _profile(1000), 4.0) == pytest.approx(0.2)
    assert count_share(None, _profile(8000), 1.0) == pytest.approx(0.1)
    assert count_share(None, _profile(100_000), 5.0) == COUNT_SHARE


def test_split_after_the_histogram_is_one_gaussian_within_the_budget() -> None:
    """The pair's multipliers sum to the announced rate, and the three releases as separate
    Gaussian events compose to the guarantee's ε (the single event is exact, not a bound)."""
    data, _ = checkerboard(n_users=60, n_items=30)
    m = DPEASE(epsilon=2.0, delta=1e-4, unit="user", max_items=10, seed=3).fit(data)
    lengths, pair = m.guarantee_.spent_events
    z_len, z_rest = lengths.event.noise_multiplier, pair.event.noise_multiplier
    z_count, z_gram = m.count_noise_multiplier_, m.noise_multiplier_
    assert m.count_budget_fraction_ == COUNT_SHARE_MAX  # 60 users × ε 2: the counts get most
    assert 1 / z_count**2 + 1 / z_gram**2 == pytest.approx(1 / z_rest**2, rel=1e-12)
    assert 1 / z_count**2 == pytest.approx(COUNT_SHARE_MAX / z_rest**2, rel=1e-12)
    separate = compose([gaussian_event(z) for z in (z_len, z_count, z_gram)])
    eps = epsilon_of(separate, 1e-4)
    assert eps == pytest.approx(m.privacy_guarantee.epsilon, rel=1e-3)
    assert 0.99 * 2.0 <= eps <= 2.0 * (1 + 1e-3)
    # a given share is used as is, and the guarantee does not move
    given = DPEASE(
        epsilon=2.0, delta=1e-4, unit="user", max_items=10, count_budget_fraction=0.2, seed=3
    ).fit(data)
    assert given.count_budget_fraction_ == 0.2
    assert [s.to_dict() for s in given.guarantee_.spent_events] == [
        s.to_dict() for s in m.guarantee_.spent_events
    ]


def test_popularity_prior_weights_by_inverse_variance() -> None:
    diag = NoisyCounts(np.array([4.0, 2.0, 0.0]), 1.0)
    np.testing.assert_array_equal(popularity_prior(diag, None), diag.values)
    # counts on twice the scale with twice the std: equal weights after rescaling
    counts = NoisyCounts(np.array([4.0, 8.0, 0.0]), 2.0, 3)
    np.testing.assert_allclose(popularity_prior(diag, counts), [3.0, 3.0, 0.0])
    # far noisier counts barely move the diagonal; far cleaner ones take over
    np.testing.assert_allclose(
        popularity_prior(diag, NoisyCounts(counts.values, 1e6, 3)), diag.values, atol=1e-9
    )
    np.testing.assert_allclose(
        popularity_prior(diag, NoisyCounts(counts.values, 1e-6, 3)), [2.0, 4.0, 0.0], atol=1e-6
    )
    # totals swamped by noise (≤ 0): no scale, the diagonal alone
    neg = NoisyCounts(np.array([-5.0, 1.0, 1.0]), 1.0, 0)
    np.testing.assert_array_equal(popularity_prior(diag, neg), diag.values)


def test_popularity_prior_is_finite_at_extreme_scales() -> None:
    diag = NoisyCounts(np.array([1e300, 2e300]), 1e-300)
    for counts in (
        NoisyCounts(np.array([1e-300, 1e-300]), 1e300, 2),
        NoisyCounts(np.array([1.0, 2.0]), 0.0, 2),
        NoisyCounts(np.array([np.inf, 1.0]), 1.0, 2),
    ):
        out = popularity_prior(diag, counts)
        assert np.all(np.isfinite(out))
    assert np.all(
        np.isfinite(popularity_prior(NoisyCounts(np.ones(2), 0.0), NoisyCounts(np.ones(2), 1.0)))
    )


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        ({"length_budget_fraction": 0.95}, False),
        ({"count_budget_fraction": 0.9}, False),
        ({"length_budget_fraction": 0.5, "count_budget_fraction": 0.8}, False),
        ({"length_budget_fraction": 0.5}, True),  # 0.5 × (1 − 0.75) > 0.1
        ({"count_budget_fraction": 0.85}, True),
    ],
)
def test_splits_that_starve_the_gram_are_refused_before_any_charge(
    kwargs: dict[str, float], ok: bool
) -> None:
    from privrec.errors import ConfigError

    data, _ = checkerboard(n_users=60, n_items=30)
    m = DPEASE(epsilon=2.0, delta=1e-4, unit="user", max_items=10, seed=3, **kwargs)
    charged: list[object] = []
    m.release_gate = charged.append
    if ok:
        m.fit(data)
        assert charged
    else:
        with pytest.raises(ConfigError, match="Gram matrix"):
            m.fit(data)
        assert not charged and not hasattr(m, "weights_")


def test_the_guarantee_says_when_the_counts_join_the_prior() -> None:
    data, _ = checkerboard(n_users=60, n_items=30)
    small = DPEASE(epsilon=2.0, delta=1e-4, unit="user", max_items=10, seed=3).fit(data)
    assert small.count_prior_  # share 0.75 ≥ 0.5
    released = " ".join(small.guarantee_.released)
    assert "joined with the head's noisy counts" in released and "0.75 of the pair" in released
    off = DPEASE(epsilon=2.0, delta=1e-4, unit="user", max_items=10, count_prior=False, seed=3).fit(
        data
    )
    assert not off.count_prior_ and "joined" not in " ".join(off.guarantee_.released)
    # the prior is the released diagonal alone without the counts, and differs with them
    assert not np.allclose(small.item_popularity_, off.item_popularity_)
