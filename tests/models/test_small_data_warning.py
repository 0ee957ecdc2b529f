"""The small-data warning: DPEASE and FederatedMF say when n·ε is too small for them.

Measured with defaults (``benchmarks/results/unseen_sets.md``): below n·ε ≈ 3000 both fell below
DPPopularity, which spends its whole budget on the counts. The warning reads only the noisy user
count of DPEASE's released length histogram (FederatedMF: the public enrolled population) and ε.
"""

from __future__ import annotations

import warnings

import pytest

from privrec.data.synthetic import synthetic
from privrec.errors import UtilityWarning
from privrec.federated.model import FederatedMF
from privrec.models.dp_als import DPALS
from privrec.models.dp_ease import DPEASE
from privrec.models.dp_rules import SMALL_DATA_SCALE, small_data_warning


def _utility_warnings(fit) -> list[str]:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [str(w.message) for w in caught if issubclass(w.category, UtilityWarning)]


def test_rule_scale_and_rounding() -> None:
    with pytest.warns(UtilityWarning, match=r"users × ε is about 1200 \(< 4000\)"):
        small_data_warning("DPEASE", 1234.567, 1.0)  # two significant figures, no exact count
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_data_warning("DPEASE", SMALL_DATA_SCALE, 1.0)  # at the scale: silent
        small_data_warning("DPEASE", 800.0, 5.0)


def test_dpease_warns_on_small_data_only() -> None:
    small = synthetic(n_users=300, n_items=80, seed=0)
    msgs = _utility_warnings(lambda: DPEASE(epsilon=1.0, delta=1e-5, unit="user").fit(small))
    assert len(msgs) == 1 and msgs[0].startswith("DPEASE:") and "300" not in msgs[0]
    large = synthetic(n_users=5000, n_items=80, seed=0)
    assert _utility_warnings(lambda: DPEASE(epsilon=1.0, delta=1e-5, unit="user").fit(large)) == []


def test_dpease_interaction_unit_and_given_bound_do_not_warn() -> None:
    small = synthetic(n_users=300, n_items=80, seed=0)
    m = DPEASE(epsilon=1.0, delta=1e-3, unit="interaction")
    assert _utility_warnings(lambda: m.fit(small)) == []
    m = DPEASE(epsilon=1.0, delta=1e-5, unit="user", max_per_user=10, max_contribution=5.0)
    assert _utility_warnings(lambda: m.fit(small)) == []  # no histogram released: no n to read


def test_federated_mf_warns_from_the_population() -> None:
    small = synthetic(n_users=200, n_items=40, seed=0)
    m = FederatedMF(epsilon=2.0, factors=4, rounds=2, clients_per_round=50, head_items=None,
                    aggregation="central")  # fmt: skip
    msgs = _utility_warnings(lambda: m.fit(small))
    assert len(msgs) == 1 and msgs[0].startswith("FederatedMF:")


def test_dpals_does_not_warn() -> None:
    small = synthetic(n_users=300, n_items=80, seed=0)
    assert _utility_warnings(lambda: DPALS(epsilon=1.0, delta=1e-5, unit="user").fit(small)) == []
