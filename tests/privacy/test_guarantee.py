"""PrivacyGuarantee: computed from events, serialisable, re-derivable, explained in words."""

from __future__ import annotations

import dp_accounting
import pytest

from privrec.privacy.accounting import epsilon_of
from privrec.privacy.events import SpentEvent, event_from_dict, event_to_dict
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.units import PrivacyUnit


def _guarantee(unit: PrivacyUnit = PrivacyUnit.USER, seeded: bool = False) -> PrivacyGuarantee:
    spent = [
        SpentEvent("counts", dp_accounting.GaussianDpEvent(4.0)),
        SpentEvent(
            "gram", dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(8.0), 3)
        ),
    ]
    return PrivacyGuarantee.from_events(
        spent,
        delta=1e-6,
        unit=unit,
        accountant="pld",
        mechanism="Test mechanism",
        released=["item factors"],
        not_released=["user factors"],
        threat_model="central DP",
        seeded_noise=seeded,
    )


def test_epsilon_equals_independent_accounting() -> None:
    g = _guarantee()
    # z_eff = (1/16 + 3/64)^-1/2 composed exactly; computed here independently of privrec
    expected = dp_accounting.get_epsilon_gaussian((1 / 16 + 3 / 64) ** -0.5, 1e-6)
    assert g.epsilon == pytest.approx(expected, rel=1e-9)
    assert g.recompute_epsilon() == pytest.approx(g.epsilon, rel=1e-12)
    assert g.recompute_epsilon("rdp") >= g.epsilon  # RDP is looser than exact PLD for Gaussians


def test_json_round_trip() -> None:
    g = _guarantee()
    again = PrivacyGuarantee.from_json(g.to_json())
    assert again == g
    assert [s.label for s in again.spent_events] == ["counts", "gram"]


def test_event_dict_round_trip_nested() -> None:
    ev = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)),
            dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(2.0), 4),
        ]
    )
    again = event_from_dict(event_to_dict(ev))
    assert again == ev
    assert epsilon_of(again, 1e-5, "rdp") == epsilon_of(ev, 1e-5, "rdp")


def test_explain_mentions_what_matters() -> None:
    text = _guarantee().explain()
    assert "single user" in text and "item factors" in text and "user factors" in text
    assert "NOT private" in _guarantee(seeded=True).explain()
    assert "Caution" in _guarantee(PrivacyUnit.INTERACTION).explain()


def _at_epsilon_one() -> PrivacyGuarantee:
    z = 1.0
    while dp_accounting.get_epsilon_gaussian(z, 1e-6) > 1.0:
        z *= 1.01
    return PrivacyGuarantee.from_events(
        [SpentEvent("counts", dp_accounting.GaussianDpEvent(z))],
        delta=1e-6,
        unit=PrivacyUnit.USER,
        accountant="pld",
        mechanism="M",
        released=["counts"],
        not_released=[],
        threat_model="central DP",
        seeded_noise=False,
    )


def test_explain_reads_delta_correctly_and_discloses_what_is_public() -> None:
    g = _at_epsilon_one()
    text = g.explain()
    assert "except with probability" not in text  # δ is not a failure probability
    assert "additive slack" in text
    # hypothesis-testing reading: (e^ε + δ) / (1 + e^ε) at ε ≈ 1
    assert "73.1%" in text
    # ε at two other δ, from the same events
    assert f"ε = {g.recompute_epsilon(delta=1e-5):.3g} at δ = 1e-05" in text
    assert f"ε = {g.recompute_epsilon(delta=1e-7):.3g} at δ = 1e-07" in text
    assert g.recompute_epsilon(delta=1e-7) > g.epsilon > g.recompute_epsilon(delta=1e-5)
    assert "Assumed public" in text and "item catalogue" in text
    assert "was not declared" in text  # tuning disclosure
    from privrec import __version__

    assert f"privrec {__version__}" in text and g.privrec_version == __version__
    assert "1 noisy release composed" in text  # grammar


def test_tuning_declarations_are_explained() -> None:
    g = _at_epsilon_one()
    assert "NOT charged" in g.with_disclosure(tuning="private").explain()
    assert "nothing to charge" in g.with_disclosure(tuning="defaults").explain()
    assert (
        "(factors, rounds)" in g.with_disclosure(non_default_params=("factors", "rounds")).explain()
    )


@pytest.mark.parametrize("fake", [-5.0, 0.01, 0.5, 3.0])
def test_a_faked_epsilon_is_never_explained(fake: float) -> None:
    from privrec.errors import GuaranteeMismatchError

    d = _guarantee().model_dump(mode="json")
    d["epsilon"] = fake
    g = PrivacyGuarantee.model_validate(d)
    assert not g.verified
    with pytest.raises(GuaranteeMismatchError, match=r"stored ε is not what|epsilon must be >= 0"):
        g.explain()
    with pytest.raises(GuaranteeMismatchError):
        g.verify()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "GaussianDpEvent", "noise_multiplier": "4"},
        {"type": "GaussianDpEvent", "noise_multiplier": -1.0},
        {"type": "GaussianDpEvent", "noise_multiplier": float("nan")},
        {"type": "GaussianDpEvent"},
        {"type": "GaussianDpEvent", "noise_multiplier": 1.0, "extra": 1},
        {"type": "PickleDpEvent"},
        {
            "type": "PoissonSampledDpEvent",
            "sampling_probability": 1.5,
            "event": {"type": "NoOpDpEvent"},
        },
        {"type": "SelfComposedDpEvent", "count": 10**12, "event": {"type": "NoOpDpEvent"}},
        {"type": "SelfComposedDpEvent", "count": True, "event": {"type": "NoOpDpEvent"}},
        {"type": "ComposedDpEvent", "events": []},
        [1, 2],
    ],
)
def test_malformed_events_are_refused(event: object) -> None:
    from privrec.errors import GuaranteeMismatchError

    d = _guarantee().model_dump(mode="json")
    d["events"] = [{"label": "x", "event": event}]
    g = PrivacyGuarantee.model_validate(d)
    with pytest.raises(GuaranteeMismatchError, match="malformed"):
        g.verify()


def test_deeply_nested_events_are_refused() -> None:
    from privrec.errors import GuaranteeMismatchError

    ev: dict[str, object] = {"type": "GaussianDpEvent", "noise_multiplier": 1.0}
    for _ in range(40):
        ev = {"type": "SelfComposedDpEvent", "count": 1, "event": ev}
    d = _guarantee().model_dump(mode="json")
    d["events"] = [{"label": "x", "event": ev}]
    with pytest.raises(GuaranteeMismatchError, match="deeper"):
        PrivacyGuarantee.model_validate(d).verify()


def test_params_must_agree_with_the_guarantee() -> None:
    from privrec.errors import GuaranteeMismatchError
    from privrec.privacy.verify import check_against_params

    g = _guarantee()
    check_against_params(
        g, {"delta": 1e-6, "unit": "user", "accountant": "pld", "seed": None, "epsilon": 50.0}
    )
    for bad in (
        {"delta": 1e-5},
        {"unit": "interaction"},
        {"accountant": "rdp"},
        {"seed": 3},
        {"epsilon": g.epsilon / 2},
    ):
        with pytest.raises(GuaranteeMismatchError):
            check_against_params(g, bad)
