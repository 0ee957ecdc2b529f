"""Canary planting, release recording, Gram recovery, and every target end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from privrec.audit import CanaryDesign, audit_model, make_target, multi_run_audit, plant
from privrec.audit.recording import record_item_steps
from privrec.audit.targets import combine_parts, recover_gram
from privrec.data import synthetic
from privrec.errors import ConfigError
from privrec.models import DPALS, DPEASE, dp_als, dp_ease
from privrec.models.dp_als_accounting import REST_LABEL
from privrec.models.releases import Release


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    return synthetic(n_users=200, n_items=80, seed=0)


def test_plant_dedicated_and_pool(base):  # type: ignore[no-untyped-def]
    c = plant(base, CanaryDesign(50, 5), seed=0)
    assert c.histories.shape == (50, 80 + 250)
    assert (np.diff(c.histories.indptr) == 5).all()
    assert np.unique(c.histories.indices).size == 250  # dedicated: no sharing
    assert c.data.n_users == 200 + int(c.included.sum())
    assert c.data.n_items == 330
    # base users unchanged, canaries appended in order
    assert (c.data.matrix[:200, :80] != base.matrix).nnz == 0
    rows = c.rows[c.included]
    assert (c.data.matrix[rows] != c.histories[c.included]).nnz == 0
    p = plant(base, CanaryDesign(50, 5, pool_items=20), seed=0)
    assert p.data.n_items == 100 and (np.diff(p.histories.indptr) == 5).all()
    assert p.histories.indices.min() >= 80
    fixed = plant(base, CanaryDesign(4, 2), included=np.array([True, False, True, False]))
    assert fixed.included.tolist() == [True, False, True, False]


def test_design_and_target_errors(base):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        CanaryDesign(0, 5)
    with pytest.raises(ConfigError):
        CanaryDesign(10, 5, pool_items=3)
    with pytest.raises(ConfigError):
        make_target("als", epsilon=1.0, delta=1e-5)
    with pytest.raises(ConfigError):
        make_target("dpals", epsilon=1.0)
    with pytest.raises(ConfigError):
        make_target("dpals", epsilon=1.0, delta=1e-5).design("huge", 10, 10)
    with pytest.raises(ConfigError):
        plant(base, CanaryDesign(4, 2), included=np.ones(3, bool))


def test_interaction_unit_canaries_hold_one_item():
    """One neighbour is one interaction: every canary holds one, and "heavy" is not run."""
    t = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="interaction")
    assert t.design("tight", 10, 5).items_per_canary == 1
    assert t.default_designs() == ("tight",)
    with pytest.raises(ConfigError, match="interaction unit"):
        t.design("heavy", 10, 5)
    als = make_target("dpals", epsilon=1.0, delta=1e-5, unit="interaction")
    assert als.default_designs() == ("tight", "clip")
    assert {als.design(k, 10, 5).items_per_canary for k in als.default_designs()} == {1}
    user = make_target("dpals", epsilon=1.0, delta=1e-5, unit="user")
    assert user.default_designs() == ("tight", "heavy", "clip")


def test_heavy_fits_pin_a_data_adaptive_bound():
    """Only heavy fits, only when the caller left the bound data-adaptive, only per user."""
    t = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="user")
    heavy, tight = t.design("heavy", 10, 5), t.design("tight", 10, 5)
    assert heavy.items_per_canary == 320 and tight.items_per_canary == 100
    assert t.bound_override(heavy) == {"max_per_user": 10}
    assert t._model_params(heavy)["max_per_user"] == 10
    assert t.bound_override(tight) == {} and "max_per_user" not in t._model_params(tight)
    given = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="user", max_per_user=7)
    assert given.bound_override(given.design("heavy", 10, 5)) == {}
    assert given.design("heavy", 10, 5).items_per_canary == 32 * 7
    ease = make_target("dpease", epsilon=1.0, delta=1e-5, unit="user")
    assert ease.bound_override(ease.design("heavy", 10, 5)) == {"max_contribution": 10}
    fed = make_target("federated_mf", epsilon=1.0, delta=1e-5)
    assert fed.bound_override(fed.design("heavy", 10, 5)) == {}


def test_record_item_steps_sees_every_step_and_restores(base):  # type: ignore[no-untyped-def]
    orig = (dp_als.psd_solve, dp_als._user_cg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DPALS(epsilon=4.0, delta=1e-5, unit="user", factors=4, head_fraction=1.0, seed=0)
        with record_item_steps(dp_als, "_user_cg") as rec:
            model.fit(base)
    assert rec.steps == model.iterations_ == 3
    assert all(r.shape == (80, 4) for r in rec.rhs) and rec.y_prev[0].shape == (80, 4)
    # step 2 starts from step 1's release, unless the one-round rule (small n·ε) solves every
    # step from the same count-initialised factors
    assert bool(np.allclose(rec.y_prev[0], rec.y_prev[1])) == model.one_round_
    assert (dp_als.psd_solve, dp_als._user_cg) == orig
    with pytest.raises(RuntimeError), record_item_steps(dp_als, "_user_cg"):
        raise RuntimeError
    assert (dp_als.psd_solve, dp_als._user_cg) == orig
    with pytest.raises(ConfigError), record_item_steps(dp_als, "no_such_function"):
        pass


@pytest.mark.parametrize("lhs", ["none", "diagonal", "full"])
def test_release_hook_shows_what_the_recorder_saw(base, lhs):  # type: ignore[no-untyped-def]
    """DPALSTarget reads the hook; it gives exactly the recorder's per-step inputs and releases.

    And it reports each release the accounting lists (same count and labels as
    :func:`dpals_releases`), so nothing the guarantee counts is hidden from the audit.
    """
    seen: list[Release] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DPALS(epsilon=4.0, delta=1e-5, unit="user", factors=4, lhs=lhs, seed=0)
        with record_item_steps(dp_als, "_user_cg") as rec:
            model.fit(base, on_release=seen.append)
    rhs = [r for r in seen if r.name == "rhs"]
    assert len(rhs) == rec.steps == model.iterations_
    for r, y, v in zip(rhs, rec.y_prev, rec.rhs, strict=True):
        assert np.array_equal(np.asarray(r.item_factors, dtype=np.float64), y)
        assert np.array_equal(np.asarray(r.value, dtype=np.float64), v)
    c = model.config()
    planned = dp_als.dpals_releases(
        model.noise_scale_, model.iterations_, c.nominal_bound, model._ratios(c), 0.5, lhs
    )
    assert [r.label for r in seen] == [p.label for p in planned]
    # the guarantee: the histogram and the one event the counts and steps make up together
    spent = model.privacy_guarantee.spent_events
    assert [e.label for e in spent] == [seen[0].label, REST_LABEL]
    rate = sum(1.0 / r.event.noise_multiplier**2 for r in seen[1:])
    assert rate == pytest.approx(1.0 / spent[1].event.noise_multiplier ** 2, rel=1e-9)


def test_recover_gram_returns_the_released_noisy_gram(base, monkeypatch):  # type: ignore[no-untyped-def]
    seen = {}
    orig = dp_ease.symmetric_gaussian

    def spy(*args):  # type: ignore[no-untyped-def]
        out = orig(*args)
        seen["g"] = out.copy()  # DPEASE solves EASE in place on the released matrix
        return out

    monkeypatch.setattr(dp_ease, "symmetric_gaussian", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DPEASE(epsilon=2.0, delta=1e-5, unit="user", head_snr=0.0, seed=0).fit(base)
    g = recover_gram(m.weights_, m.item_popularity_, m.regularization_)
    assert np.allclose(g, seen["g"], atol=1e-3 * np.abs(seen["g"]).max())


def test_combine_parts_standardises():
    out = combine_parts({"a": np.array([0.0, 2.0]), "b": np.array([5.0, 5.0])})
    assert out.tolist() == [-1.0, 1.0]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        (
            "federated_mf",
            {"factors": 4, "rounds": 5, "clients_per_round": 100, "aggregation": "central"},
        ),
        ("silo_dpals", {"factors": 4, "max_per_user": 10}),
    ],
)
def test_library_api_targets_run(base, name, params):  # type: ignore[no-untyped-def]
    t = make_target(name, epsilon=2.0, delta=1e-5, seed=0, **params)
    audit = audit_model(t, base, n_canaries=60, designs=("tight",), seed=0)
    assert not audit.flagged
    assert audit.audits[0].bound.m == 60
    if name == "silo_dpals":  # every step's released statistics were observed at the driver
        assert "3 private steps observed at the driver" in audit.audits[0].notes


def test_multi_run_audit_small(base):  # type: ignore[no-untyped-def]
    small = synthetic(n_users=40, n_items=20, seed=1)
    t = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="user", max_per_user=5, seed=0)
    r = multi_run_audit(t, small, runs=40)
    assert r.runs == 40 and not r.flagged
    assert r.blind and not r.conclusive and r.verdict == "inconclusive"  # 40 runs: cap < 1
    assert r.bound.runs_in == r.bound.runs_out == 10
    assert t.params["seed"] == 0  # restored
    with pytest.raises(ConfigError):
        multi_run_audit(t, small, runs=10)


def test_an_audit_that_cannot_flag_says_so_outside_the_cli(base, monkeypatch):  # type: ignore[no-untyped-def]
    """A noise-free model audited with 40 canaries at ε = 4: every guess right, yet the cap
    (1.24) is below the claim. The library result (not only the CLI) is "inconclusive"."""
    from privrec.audit.report import to_json, to_markdown

    monkeypatch.setattr(
        "privrec.models.dp_popularity.gaussian", lambda value, z, sens, rng: value.astype(float)
    )
    t = make_target("dppopularity", epsilon=4.0, delta=1e-5, unit="user", max_per_user=5)
    audit = audit_model(t, base, n_canaries=40, seed=0)
    assert not audit.flagged and audit.blind and not audit.conclusive
    assert audit.verdict == "inconclusive" and "cannot detect a violation" in audit.summary()
    doc = json.loads(to_json([audit]))["one_run"][0]
    assert doc["conclusive"] is False and doc["blind"] is True and doc["verdict"] == "inconclusive"
    assert all(a["blind"] for a in doc["audits"])
    assert "*inconclusive*" in to_markdown([audit]) and "ok |" not in to_markdown([audit])
    small = synthetic(n_users=40, n_items=20, seed=1)
    t = make_target("dppopularity", epsilon=4.0, delta=1e-5, unit="user", max_per_user=5, seed=0)
    multi = multi_run_audit(t, small, runs=8)
    assert multi.blind and not multi.conclusive and multi.verdict == "inconclusive"
    assert multi.to_dict()["conclusive"] is False and "cannot detect" in multi.summary()
