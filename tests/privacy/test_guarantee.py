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
