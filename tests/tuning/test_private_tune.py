"""Private hyper-parameter selection: pinned ε of the selection, write-ahead, what is released."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models import DPALS, DPPopularity
from privrec.privacy.accounting import calibrate, epsilon_of
from privrec.privacy.budget import Budget
from privrec.privacy.events import SpentEvent, event_from_dict, event_to_dict
from privrec.tuning import private_tune, selection_event

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_selection_event_pinned() -> None:
    """RDP of the best of Geometric(mean 5) trials of Gaussian(3): Papernot & Steinke, pinned."""
    e = selection_event(3.0, 5.0)
    assert epsilon_of(e, 1e-5, "rdp") == pytest.approx(2.5932, abs=1e-3)  # pinned
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
    assert res.params in grid and res.trials >= 1
    assert "the other trials' models and scores" in g.not_released
    # each trial's model budget is the Gaussian-equivalent of 95% of the trial's rate
    z = calibrate(Budget(1.0, 1e-5), lambda v: selection_event(v, 6.0), kind="rdp")
    assert res.trial_epsilon == pytest.approx(
        dp_accounting.get_epsilon_gaussian(z / math.sqrt(0.95), 1e-5)
    )
    assert res.trial_epsilon < 1.0
    again = private_tune(DPPopularity, grid, data, epsilon=1.0, delta=1e-5, seed=3)
    assert (again.params, again.trials, again.noisy_score) == (
        res.params,
        res.trials,
        res.noisy_score,
    )


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
