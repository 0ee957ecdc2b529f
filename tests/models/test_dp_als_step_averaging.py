"""DPALS's released item factors: the weighted mean of the last two steps' solves (post-processing)."""

from __future__ import annotations

import numpy as np
import pytest

from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models.dp_als import DPALS
from privrec.models.dp_rules import STEP_AVERAGING, resolve_step_averaging
from privrec.models.releases import Release
from privrec.privacy.postprocessing import project_psd, shared_solve

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")

KW = {"epsilon": 5.0, "delta": 1e-5, "unit": "user", "seed": 3, "one_round": False}


def _solves(m: DPALS, seen: list[Release]) -> list[np.ndarray]:
    """Every step's item solve, recomputed from the releases the hook saw."""
    grams = [r.value for r in seen if r.name == "gramian"]
    rhs = [r.value for r in seen if r.name == "rhs"]
    reg = np.full(len(m.head_items_), m.regularization_)
    a0 = m.alpha0_  # the resolved α0
    return [shared_solve(a0 * project_psd(g), r, reg) for g, r in zip(grams, rhs, strict=True)]


def test_rule() -> None:
    assert resolve_step_averaging(None, 3, one_round=False) == STEP_AVERAGING == 0.25
    assert resolve_step_averaging(None, 5, one_round=False) == 0.25
    assert resolve_step_averaging(None, 2, one_round=False) == 0.0  # step 1 solves from the start
    assert resolve_step_averaging(None, 3, one_round=True) == 0.0  # already a mean of all steps
    assert resolve_step_averaging(0.5, 2, one_round=False) == 0.5
    assert resolve_step_averaging(0.5, 1, one_round=False) == 0.0  # nothing to average


def test_released_factors_are_the_weighted_mean_of_the_last_two_solves() -> None:
    data = synthetic(n_users=400, n_items=80, seed=2)
    seen: list[Release] = []
    m = DPALS(**KW).fit(data, on_release=seen.append)  # type: ignore[arg-type]
    assert m.iterations_ == 3 and m.step_averaging_ == 0.25
    y = _solves(m, seen)
    np.testing.assert_allclose(
        m.item_factors_[m.head_items_], 0.25 * y[1] + 0.75 * y[2], rtol=1e-4, atol=1e-6
    )


def test_weight_zero_is_the_last_solve_and_the_privacy_is_the_same() -> None:
    """Equality: w = 0 reduces to the earlier model; any w releases the same statistics."""
    data = synthetic(n_users=400, n_items=80, seed=2)
    seen: list[Release] = []
    off = DPALS(**KW, step_averaging=0.0).fit(data, on_release=seen.append)  # type: ignore[arg-type]
    on = DPALS(**KW).fit(data)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        off.item_factors_[off.head_items_], _solves(off, seen)[-1], rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(off.item_factors_, on.item_factors_)
    np.testing.assert_array_equal(off.noisy_counts_, on.noisy_counts_)
    np.testing.assert_array_equal(off.head_items_, on.head_items_)
    assert off.noise_scale_ == on.noise_scale_
    assert off.privacy_guarantee.epsilon == on.privacy_guarantee.epsilon
    assert [e.event for e in off.privacy_guarantee.spent_events] == [
        e.event for e in on.privacy_guarantee.spent_events
    ]


def test_out_of_range_weight_is_a_config_error() -> None:
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError):
            DPALS(**KW, step_averaging=bad).config()  # type: ignore[arg-type]
