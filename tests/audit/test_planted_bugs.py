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
