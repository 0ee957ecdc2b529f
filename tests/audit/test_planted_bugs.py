"""The fast audit: planted bugs are caught, correct models are not flagged.

Every case is a one-run audit (tight and heavy canary designs, 500 canaries, 95%
confidence after the Bonferroni correction over designs) of a small model on synthetic
data. The models' noise is seeded so the suite is reproducible; the margins were checked
over several seeds (benchmarks/results/audit.md). Runs in well under a minute.
"""

from __future__ import annotations

import pytest
from tests.audit.bugs import BUGS, PARAMS, plant_bug

from privrec.audit import audit_model, make_target
from privrec.data import synthetic

CASES = [(model, bug) for model, bugs in BUGS.items() for bug in bugs]


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    return synthetic(n_users=300, n_items=200, seed=0)


@pytest.mark.parametrize(("model", "bug"), CASES, ids=[f"{m}-{b}" for m, b in CASES])
def test_planted_bug_is_caught(base, monkeypatch, model, bug):  # type: ignore[no-untyped-def]
    plant_bug(monkeypatch, model, bug)
    target = make_target(model, epsilon=1.0, delta=1e-5, unit="user", seed=3, **PARAMS[model])
    audit = audit_model(target, base, n_canaries=500, seed=3)
    assert audit.flagged, audit.summary()
    assert audit.epsilon_lb > 1.3 * audit.claimed_epsilon, audit.summary()


@pytest.mark.parametrize("model", list(BUGS))
@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_correct_model_is_not_flagged(base, model, epsilon):  # type: ignore[no-untyped-def]
    target = make_target(model, epsilon=epsilon, delta=1e-5, unit="user", seed=3, **PARAMS[model])
    audit = audit_model(target, base, n_canaries=500, seed=3)
    assert not audit.flagged, audit.summary()
    assert audit.epsilon_lb <= epsilon
    # the audit is not vacuous: its cap is far above the claim
    assert all(a.bound.cap > 3.0 for a in audit.audits)


def test_noise_free_canaries_are_perfectly_separated(base, monkeypatch):  # type: ignore[no-untyped-def]
    """Without noise the canary design reveals every membership bit (the design's premise)."""
    monkeypatch.setattr(
        "privrec.models.dp_popularity.gaussian", lambda value, z, sens, rng: value.astype(float)
    )
    target = make_target(
        "dppopularity", epsilon=1.0, delta=1e-5, unit="user", **PARAMS["dppopularity"]
    )
    audit = audit_model(target, base, n_canaries=200, designs=("tight",), seed=0)
    bound = audit.audits[0].bound
    assert bound.correct == bound.guesses == 100
    assert bound.epsilon_lb == pytest.approx(bound.cap)


@pytest.fixture(scope="module")
def outnumbered():  # type: ignore[no-untyped-def]
    """Fewer real users than included canaries (~250 of 500): the canaries set the length quantile."""
    return synthetic(n_users=150, n_items=200, seed=0)


def test_uncapped_bug_is_caught_at_default_settings(outnumbered, monkeypatch):  # type: ignore[no-untyped-def]
    """DPPopularity left at its data-adaptive B (no max_per_user), as the CLI runs it.

    Heavy canaries outnumbering the real users used to drag the private median length up
    to their own length (B ≈ 3200), so a model that forgot the cap looked correct and the
    gate passed; heavy fits now pin B (to 10; L = 320) and the bug is flagged (ε_LB
    1.62–2.29 over five seeds).
    """
    target = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="user", seed=3)
    correct = audit_model(target, outnumbered, n_canaries=500, seed=3)
    assert correct.verdict == "ok", correct.summary()
    plant_bug(monkeypatch, "dppopularity", "uncapped")
    audit = audit_model(target, outnumbered, n_canaries=500, seed=3)
    heavy = audit.audits[1]
    assert heavy.design.label == "heavy" and heavy.released_bound == 10
    assert heavy.design.items_per_canary == 320
    assert any("max_per_user pinned to 10 " in n for n in heavy.notes)
    assert audit.flagged and audit.epsilon_lb > 1.3, audit.summary()


def test_dpals_uncapped_bug_is_caught_at_default_settings(outnumbered, monkeypatch):  # type: ignore[no-untyped-def]
    """The same for DPALS at its defaults (data-adaptive B, lhs="none"), heavy design only
    (ε_LB 1.52–1.81 over five seeds; 1.22–1.70 with all three designs)."""
    plant_bug(monkeypatch, "dpals", "uncapped")
    t = make_target("dpals", epsilon=1.0, delta=1e-5, unit="user", seed=0)
    audit = audit_model(t, outnumbered, n_canaries=500, designs=("heavy",), seed=0)
    assert audit.audits[0].released_bound == 10
    assert audit.flagged and audit.epsilon_lb > 1.3, audit.summary()


def test_heavy_canaries_not_above_the_released_bound_are_inconclusive(outnumbered, monkeypatch):  # type: ignore[no-untyped-def]
    """Without the pinned bound (the audit before the fix) the canaries move the data-adaptive
    B up to their own length: the heavy design cannot show a missing cap, and says so."""
    from privrec.audit.targets import DPPopularityTarget

    monkeypatch.setattr(DPPopularityTarget, "bound_override", lambda self, design: {})
    target = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="user", seed=3)
    audit = audit_model(target, outnumbered, n_canaries=500, designs=("heavy",), seed=3)
    heavy = audit.audits[0]
    assert heavy.released_bound is not None and heavy.released_bound > 300  # L = 320
    assert not audit.flagged and not audit.conclusive and audit.verdict == "inconclusive"
    assert "not well above the released per-user bound" in audit.summary()
    assert audit.to_dict()["conclusive"] is False


def test_interaction_unit_audit_does_not_flag_a_correct_model(base):  # type: ignore[no-untyped-def]
    """Under the interaction unit one neighbour is one interaction: a 32-interaction "heavy"
    canary legitimately leaks ~32ε, so it would flag every correct model. It is not run."""
    target = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="interaction", seed=3)
    audit = audit_model(target, base, n_canaries=500, seed=3)
    assert [a.design.items_per_canary for a in audit.audits] == [1]
    assert audit.verdict == "ok", audit.summary()
    assert audit.audits[0].released_bound is None  # no per-user bound at this unit


def test_a_model_calibrated_to_the_wrong_epsilon_is_flagged_by_its_own_record(  # type: ignore[no-untyped-def]
    base, monkeypatch
):
    """Review, 2026-12-07: a DPPopularity calibrated to 4ε that honestly recorded 4ε passed,
    since the audit compared against the model's own guarantee. The claim is the request."""
    from privrec.audit import multi_run_audit
    from privrec.models import dp_popularity
    from privrec.privacy.budget import Budget

    orig = dp_popularity.calibrate
    monkeypatch.setattr(
        dp_popularity,
        "calibrate",
        lambda budget, *a, **k: orig(Budget(budget.epsilon * 4, budget.delta), *a, **k),
    )
    target = make_target("dppopularity", epsilon=1.0, delta=1e-5, unit="user", seed=3)
    audit = audit_model(target, base, n_canaries=500, seed=3)
    assert audit.claimed_epsilon == 1.0 and audit.flagged, audit.summary()
    assert "more than the requested" in audit.summary()
    d = audit.to_dict()["audits"][0]
    assert d["overspent"] and d["reported_epsilon"] == pytest.approx(4.0, rel=1e-3)
    multi = multi_run_audit(target, base, runs=20, seed=3)
    assert multi.claimed_epsilon == 1.0 and multi.overspent and multi.flagged
    assert "more than the requested" in multi.summary()


@pytest.mark.parametrize("lhs", ["none", "full"])
def test_a_fit_solving_from_other_statistics_than_it_reports_is_flagged(  # type: ignore[no-untyped-def]
    base, monkeypatch, lhs
):
    """Review, 2026-12-07: a DPALS fit that reported its noisy right-hand sides but solved the
    items from other ones passed (ε_LB 0.00): the canaries are scored on the reported
    releases. The shipped factors must be the solves of those releases."""
    from privrec.models import dp_als

    shared, psd = dp_als.shared_solve, dp_als.psd_solve
    monkeypatch.setattr(dp_als, "shared_solve", lambda g, rhs, reg: shared(g, rhs * 1.5, reg))
    monkeypatch.setattr(
        dp_als, "psd_solve", lambda g, lhs_, rhs, reg, p: psd(g, lhs_, rhs * 1.5, reg, p)
    )
    params = {**PARAMS["dpals"], "lhs": lhs}
    target = make_target("dpals", epsilon=1.0, delta=1e-5, unit="user", seed=3, **params)
    audit = audit_model(target, base, n_canaries=500, seed=3, designs=["tight"])
    assert audit.flagged and audit.audits[0].mismatch, audit.summary()
    assert "solve" in audit.summary()


@pytest.mark.parametrize("lhs", ["none", "diagonal", "full"])
def test_a_correct_fit_ships_the_solves_of_what_it_reports(base, lhs):  # type: ignore[no-untyped-def]
    params = {**PARAMS["dpals"], "lhs": lhs}
    target = make_target("dpals", epsilon=1.0, delta=1e-5, unit="user", seed=3, **params)
    audit = audit_model(target, base, n_canaries=500, seed=3, designs=["tight"])
    assert audit.audits[0].mismatch is None and not audit.flagged, audit.summary()
