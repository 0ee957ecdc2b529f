"""Membership inference on recommendation lists: memorising models leak, DP models do not."""

from __future__ import annotations

import numpy as np
import pytest

from privrec.audit.mia import MembershipResult, recommendation_mia, split_visible
from privrec.audit.report import to_markdown
from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models import DPEASE, EASE, DPPopularity


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return synthetic(n_users=600, n_items=150, interactions_per_user=20, seed=0)


def test_split_visible_partitions_each_history(data):  # type: ignore[no-untyped-def]
    x = data.matrix
    vis, hid = split_visible(x, 0.5, np.random.default_rng(0))
    assert vis.nnz + hid.nnz == x.nnz
    assert (vis.multiply(hid)).nnz == 0
    n = np.diff(x.indptr)
    assert (np.diff(vis.indptr) == np.maximum(1, n // 2)).all()


def test_non_private_model_leaks_private_one_does_not(data):  # type: ignore[no-untyped-def]
    leaky = recommendation_mia(EASE(regularization=1.0), data, k=20)
    assert leaky.auc_low > 0.55, leaky.summary()
    assert leaky.epsilon is None and leaky.auc_bound is None
    private = recommendation_mia(DPEASE(epsilon=1.0, delta=1e-5, unit="user", seed=0), data, k=20)
    assert private.auc_low < 0.5 < private.auc_high or private.auc < 0.56, private.summary()
    assert private.auc_bound is not None and private.auc <= private.auc_bound
    exact = private.to_dict(exact=True)
    assert exact["members"] + exact["non_members"] > 500
    public = private.to_dict()  # what --json writes: no exact group sizes
    assert str(public["members"]).startswith("≈") and str(public["non_members"]).startswith("≈")
    assert public["auc"] == round(exact["auc"], 3)


def test_mia_errors(data):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        recommendation_mia(EASE(), data, member_fraction=1.0)
    with pytest.raises(ConfigError):
        recommendation_mia(EASE(), data, k=0)
    with pytest.raises(ConfigError):
        recommendation_mia(EASE(), data, min_items=10_000)


def test_no_dp_auc_bound_for_an_interaction_level_guarantee(data):  # type: ignore[no-untyped-def]
    """The attack asks about a whole user, many interaction-level neighbours apart: (ε, δ)
    bounds nothing there, so no "DP bound on AUC" is shown (user level keeps it)."""
    inter = recommendation_mia(
        DPPopularity(epsilon=1.0, delta=1e-5, unit="interaction", seed=0), data
    )
    assert inter.unit == "interaction" and inter.epsilon is not None and inter.auc_bound is None
    assert "no DP bound on AUC" in inter.summary()
    user = recommendation_mia(DPPopularity(epsilon=1.0, delta=1e-5, unit="user", seed=0), data)
    assert user.unit == "user" and user.auc_bound is not None


def test_hit_rates_are_shown_to_two_decimals():
    """As the JSON: more decimals of a rate over the members would give their count away."""
    r = MembershipResult(
        model="m", auc=0.5, auc_low=0.4, auc_high=0.6, members=101, non_members=99, k=20,
        member_hit_rate=0.12345, non_member_hit_rate=0.06789, epsilon=1.0, auc_bound=0.731,
        seconds=0.0, unit="user",
    )  # fmt: skip
    for text in (r.summary(), to_markdown([r])):
        assert "0.12" in text and "0.07" in text
        assert "0.123" not in text and "0.068" not in text
    assert r.to_dict()["member_hit_rate"] == 0.12
