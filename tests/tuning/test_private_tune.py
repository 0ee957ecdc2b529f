"""Private hyper-parameter selection: pinned ε of the selection, write-ahead, what is released."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data import synthetic
from privrec.errors import ConfigError, DataError, NonFiniteResultError
from privrec.evaluation import evaluate, random_holdout
from privrec.evaluation.splits import Split
from privrec.models import DPALS, DPPopularity
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.budget import Budget
from privrec.privacy.events import SpentEvent, event_from_dict, event_to_dict
from privrec.privacy.randomness import seeded_generator
from privrec.tuning import private_tune, selection_event

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_selection_event_pinned() -> None:
    """RDP of the best of Geometric(mean 5) trials of Gaussian(3): Papernot & Steinke, pinned."""
    e = selection_event(3.0, 5.0)
    # pinned, at privrec's integer RDP orders (2.5932 at dp-accounting's denser defaults)
    assert epsilon_of(e, 1e-5, "rdp") == pytest.approx(2.5964, abs=1e-3)
    # repeating costs more than one trial, less than five composed
    one = epsilon_of(dp_accounting.GaussianDpEvent(3.0), 1e-5, "rdp")
    five = epsilon_of(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(3.0), 5), 1e-5, "rdp"
    )
    assert one < epsilon_of(e, 1e-5, "rdp") < five
    assert event_from_dict(event_to_dict(e)) == e  # saved with the model, re-accountable


def test_tuned_model_carries_the_whole_selection() -> None:
    data = synthetic(n_users=800, n_items=60, interactions_per_user=12, seed=2)
    gate: list[list[SpentEvent]] = []
    grid = [{"max_per_user": 5}, {"max_per_user": 20}, {}]
    res = private_tune(
        DPPopularity, grid, data, epsilon=1.0, delta=1e-5, seed=3, release_gate=gate.append
    )
    assert len(gate) == 1 and gate[0][0].event == selection_event(
        calibrate(Budget(1.0, 1e-5), lambda z: selection_event(z, 6.0), kind="rdp"), 6.0
    )
    g = res.model.privacy_guarantee
    assert g is res.guarantee and g.accountant.value == "rdp"
    assert 0.99 <= g.epsilon <= 1.0
    assert g.recompute_epsilon() == pytest.approx(g.epsilon)
    assert res.params in grid and not hasattr(res, "trials")
    assert "the other trials' models and scores" in g.not_released
    # K stays hidden: revealing it would void the selection's bound
    assert any("number of trials" in r for r in g.not_released)
    assert not any("number of trials" in r for r in g.released)
    # each trial's model budget is the Gaussian-equivalent of 95% of the trial's rate
    z = calibrate(Budget(1.0, 1e-5), lambda v: selection_event(v, 6.0), kind="rdp")
    assert res.trial_epsilon == pytest.approx(
        dp_accounting.get_epsilon_gaussian(z / math.sqrt(0.95), 1e-5)
    )
    assert res.trial_epsilon < 1.0
    again = private_tune(DPPopularity, grid, data, epsilon=1.0, delta=1e-5, seed=3)
    assert (again.params, again.noisy_score) == (res.params, res.noisy_score)


def test_dpals_candidates_and_bad_input() -> None:
    data = synthetic(n_users=500, n_items=50, interactions_per_user=10, seed=1)
    res = private_tune(
        DPALS,
        [{"factors": 4}, {"factors": 8}],
        data,
        epsilon=2.0,
        delta=1e-5,
        mean_trials=2,
        base_params={"iterations": 1},
        seed=0,
    )
    assert res.params["factors"] in (4, 8)
    assert res.model.privacy_guarantee.epsilon <= 2.0
    with pytest.raises(ConfigError, match="grid"):
        private_tune(DPALS, [], data, epsilon=1.0, delta=1e-5)
    with pytest.raises(ConfigError, match="set by private_tune"):
        private_tune(DPALS, [{"epsilon": 3.0}], data, epsilon=1.0, delta=1e-5)
    with pytest.raises(ConfigError, match="user unit"):
        private_tune(DPALS, [{}], data, epsilon=1.0, delta=1e-5, unit="interaction")
    with pytest.raises(ConfigError, match="not a private model"):
        private_tune(dict, [{}], data, epsilon=1.0, delta=1e-5)  # type: ignore[arg-type]


def test_tuned_model_serves_whole_histories() -> None:
    """The chosen trial learnt on the split's training part; users are served from all items."""
    data = synthetic(n_users=300, n_items=40, interactions_per_user=8, seed=4)
    res = private_tune(DPALS, [{"factors": 4}], data, epsilon=2.0, delta=1e-5, seed=1)
    m = res.model
    assert m.user_items_.nnz == data.nnz
    items, _ = m.recommend(3, k=40)
    seen = set(data.matrix[3].indices.tolist())
    assert not seen & set(items.ravel().tolist())
    np.testing.assert_allclose(m.user_factors_[:5], m.fold_in(data.matrix[:5]), rtol=1e-5)


def test_removing_a_validation_user_moves_the_score_sum_by_at_most_one() -> None:
    """The noisy score is Σ over validation users of Recall@k plus Gaussian(z_s): for a fixed
    trial model, dropping any one validation user's targets moves that sum by ≤ 1 (its stated
    sensitivity), since each user's recall is in [0, 1]."""
    data = synthetic(n_users=120, n_items=30, interactions_per_user=8, seed=6)
    split = random_holdout(data, 0.2, seed=3)
    model = DPALS(epsilon=2.0, delta=1e-5, unit="user", factors=4, iterations=1, seed=2)
    model.fit(split.train)
    k = 5

    def score(s: Split) -> float:
        res = evaluate(model, s, k=(k,), on="test", groups=None, metrics=("recall",))
        values = res.per_user[f"recall@{k}"].to_numpy()
        assert np.all((values >= 0.0) & (values <= 1.0))
        return float(values.sum())

    full = score(split)
    targets = split.test.targets.tolil()
    rows = np.flatnonzero(split.test.n_targets > 0)
    for u in np.random.default_rng(0).choice(rows, size=12, replace=False):
        less = targets.copy()
        less.rows[u], less.data[u] = [], []
        removed = dataclasses.replace(split.test, targets=sp.csr_matrix(less))
        assert abs(full - score(dataclasses.replace(split, test=removed))) <= 1.0 + 1e-9


def test_one_candidate_is_a_plain_fit_at_the_trial_budget() -> None:
    """One candidate, one trial (mean 1): the released model is the plain DPALS fit on the same
    split at the trial's ε (the Gaussian-equivalent of 95% of the selection's rate) with the
    trial's seed (seed + 1): same σ, head, noisy counts and item factors."""
    data = synthetic(n_users=200, n_items=40, interactions_per_user=8, seed=4)
    params = {"factors": 4, "iterations": 1}
    res = private_tune(DPALS, [params], data, epsilon=2.0, delta=1e-5, mean_trials=1.0, seed=7)
    z = calibrate(Budget(2.0, 1e-5), lambda v: selection_event(v, 1.0), kind="rdp")
    assert res.trial_epsilon == pytest.approx(
        dp_accounting.get_epsilon_gaussian(z / math.sqrt(0.95), 1e-5), rel=1e-12
    )
    # private_tune's draws with seed 7: first the split's seed (K and the candidate follow)
    rng = seeded_generator(7, warn=False)
    split = random_holdout(data, 0.2, seed=int(rng.integers(2**31)))
    plain = DPALS(
        epsilon=res.trial_epsilon, delta=1e-5, unit="user", accountant="pld", seed=8, **params
    ).fit(split.train)
    m = res.model
    assert isinstance(m, DPALS)
    assert m.noise_scale_ == plain.noise_scale_
    np.testing.assert_array_equal(m.head_items_, plain.head_items_)
    np.testing.assert_array_equal(m.noisy_counts_, plain.noisy_counts_)
    # equal up to float32 rounding: two seeded DPALS fits can differ in the last bits (the
    # threaded user-solve kernel and BLAS are not bit-reproducible); another seed moves them O(1)
    np.testing.assert_allclose(m.item_factors_, plain.item_factors_, rtol=1e-4, atol=1e-6)


def test_every_candidate_is_checked_before_the_charge() -> None:
    """An invalid candidate anywhere in the grid (unknown key, bad value, not a mapping, a tier
    set) is a typed error before the selection is charged — not a late TypeError, or none at
    all when that candidate is never drawn; the mean number of trials is bounded."""
    data = synthetic(n_users=60, n_items=20, seed=0)
    bad_grids: list[list[Any]] = [
        [{}, {"bogus": 1}],
        [{}, {"max_per_user": 0}],
        [{}, {"tiers": (0.5,)}],
        [{}, 3],
    ]
    for grid in bad_grids:
        gate: list[object] = []
        with pytest.raises(ConfigError):
            private_tune(
                DPPopularity, grid, data, epsilon=1.0, delta=1e-5, mean_trials=1.0, seed=0,
                release_gate=gate.append,
            )  # fmt: skip
        assert gate == []
    for mean in (float("inf"), float("nan"), 0.5, 1e12):
        with pytest.raises(ConfigError, match="mean_trials"):
            private_tune(DPPopularity, [{}], data, epsilon=1.0, delta=1e-5, mean_trials=mean)
    # the split and the score's cut-off too (until 2026-12-07: after the charge, bad k after a
    # noisy model had been trained)
    for bad in ({"valid_fraction": 0.0}, {"valid_fraction": 1.0}, {"k": 0}, {"k": 2.5}):
        gate = []
        with pytest.raises(ConfigError):
            private_tune(
                DPPopularity, [{}], data, epsilon=1.0, delta=1e-5, release_gate=gate.append,
                **bad,  # type: ignore[arg-type]
            )  # fmt: skip
        assert gate == []


def test_warnings_do_not_count_the_trials() -> None:
    """One warning line per trial would reveal the hidden number of trials K (a reviewer
    counted K + 1 lines): only the chosen trial's warnings are shown, once each."""
    import warnings

    data = synthetic(n_users=60, n_items=20, seed=0)
    seen = set()
    for seed in range(6):  # K differs between these seeds
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            private_tune(DPPopularity, [{}, {}], data, epsilon=1.0, delta=0.05, seed=seed)
        seen.add(len(caught))
    assert len(seen) == 1, seen


def test_repeated_candidates_do_not_raise_the_number_of_trials() -> None:
    """The default mean is 2 × the distinct candidates: a repeat changes nothing."""
    data = synthetic(n_users=60, n_items=20, seed=0)
    once = private_tune(
        DPPopularity, [{}, {"max_per_user": 3}], data, epsilon=1.0, delta=1e-5, seed=1
    )
    twice = private_tune(
        DPPopularity, [{}, {"max_per_user": 3}, {"max_per_user": 3}], data, epsilon=1.0,
        delta=1e-5, seed=1,
    )  # fmt: skip
    assert once.guarantee.events == twice.guarantee.events


def test_bad_arguments_and_unsplittable_data_are_refused_before_the_charge() -> None:
    """A reviewer found bare TypeErrors / ValueErrors for these, and a charge recorded before a
    DataError on data the split cannot hold out, or a ConfigError about ε = 0 at δ = 0.5."""
    data = synthetic(n_users=60, n_items=20, seed=0)
    bad: list[dict[str, Any]] = [
        {"grid": [{1: 2, "max_per_user": 3}]},
        {"grid": {"max_per_user": 3}},
        {"mean_trials": "x"},
        {"score_fraction": "0.5"},
        {"unit": "bogus"},
        {"base_params": [1]},
        {"seed": "x"},
        {"delta": 0.5},
        {"data": "not data"},
    ]
    for kw in bad:
        args: dict[str, Any] = {"grid": [{}], "data": data, "epsilon": 1.0, "delta": 1e-5, **kw}
        gate: list[object] = []
        with pytest.raises(ConfigError):
            private_tune(DPPopularity, release_gate=gate.append, **args)
        assert gate == [], kw
    one_each = sp.csr_matrix(np.eye(30, 10, dtype=np.float32))  # every user has one item
    gate = []
    with pytest.raises(DataError):
        private_tune(
            DPPopularity, [{}], one_each, epsilon=1.0, delta=1e-5, release_gate=gate.append
        )
    assert gate == []
    # a sparse matrix is data too
    res = private_tune(DPPopularity, [{}], data.matrix, epsilon=1.0, delta=1e-5, seed=0)
    assert res.params == {}


def test_a_failing_trial_scores_minus_infinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate whose fit fails on this data no longer stops the selection after the charge
    (which showed that it was drawn): it is never chosen; when every trial fails the selection
    says so, with its charge kept."""
    data = synthetic(n_users=60, n_items=20, seed=0)
    real = DPPopularity._fit

    def fragile(self: DPPopularity, d: Any, config: Any) -> None:
        if config.max_per_user == 7:
            raise NonFiniteResultError("the solve overflowed")
        real(self, d, config)

    monkeypatch.setattr(DPPopularity, "_fit", fragile)
    chosen = set()
    for seed in range(8):
        res = private_tune(
            DPPopularity, [{"max_per_user": 7}, {"max_per_user": 3}], data, epsilon=1.0,
            delta=1e-5, mean_trials=6.0, seed=seed,
        )  # fmt: skip
        chosen.add(res.params["max_per_user"])
        assert res.model.get_params()["seed"] == seed  # the selection's seed, not the trial's
    assert chosen == {3}
    gate: list[object] = []
    with pytest.raises(NonFiniteResultError, match="no trial"):
        private_tune(
            DPPopularity, [{"max_per_user": 7}], data, epsilon=1.0, delta=1e-5, seed=0,
            release_gate=gate.append,
        )  # fmt: skip
    assert len(gate) == 1  # charged: the trials ran


@pytest.mark.parametrize(("epsilon", "delta"), [(True, 1e-5), (1.0, "1e-5"), (1.0, None)])
def test_budget_must_be_real_numbers_before_any_charge(epsilon: Any, delta: Any) -> None:
    """A reviewer passed epsilon=True (accepted and charged as ε = 1) and delta="1e-5" (an
    untyped TypeError): both are refused with a ConfigError before the gate is called."""
    data = synthetic(n_users=100, n_items=20, interactions_per_user=8, seed=0)
    gate: list[list[SpentEvent]] = []
    with pytest.raises(ConfigError, match="must be a finite number"):
        private_tune(
            DPPopularity, [{}], data, epsilon=epsilon, delta=delta, release_gate=gate.append
        )
    assert gate == []


def test_a_trial_that_cannot_be_scored_scores_minus_infinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reviewer's trial fitted and then failed in scoring, which stopped the selection after
    the charge (showing which candidate was drawn): it scores −∞ like a failed fit. A model
    whose releases are not what the selection accounted stops it, with a typed error."""
    import privrec.tuning.private as tp

    data = synthetic(n_users=60, n_items=20, seed=0)
    real = tp.evaluate

    def fragile(model: Any, *args: Any, **kwargs: Any) -> Any:
        if model.get_params()["max_per_user"] == 7:
            raise np.linalg.LinAlgError("scores could not be formed")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(tp, "evaluate", fragile)
    for seed in range(4):
        res = private_tune(
            DPPopularity, [{"max_per_user": 7}, {"max_per_user": 3}], data, epsilon=1.0,
            delta=1e-5, mean_trials=6.0, seed=seed,
        )  # fmt: skip
        assert res.params["max_per_user"] == 3
    monkeypatch.setattr(tp, "evaluate", real)

    def spends_more(model: Any, z_model: float) -> None:
        raise tp._CalibrationError("trial noise multiplier below the accounted")

    monkeypatch.setattr(tp, "_check_gaussian", spends_more)
    with pytest.raises(ConfigError, match="below the accounted"):
        private_tune(DPPopularity, [{}], data, epsilon=1.0, delta=1e-5, seed=0)
