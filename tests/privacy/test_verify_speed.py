"""Verifying an RDP FederatedMF guarantee is fast and still strict.

Loading a private model recomputes ε from its events. A FederatedMF file now stores two events
whatever the dropouts (every completed round is charged its worst case), and RDP guarantees with
Poisson-sampled events are verified at the integer orders FederatedMF's accountant uses —
dp-accounting's fractional-order series for a subsampled Gaussian made this take seconds. Timings
live in ``benchmarks/bench_model_load.py``; these tests pin the behaviour.
"""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import pytest

from privrec.data import synthetic
from privrec.errors import GuaranteeMismatchError
from privrec.federated.model import FederatedMF
from privrec.federated.training import FaultModel, FederatedSimulation
from privrec.models import load_model
from privrec.privacy.events import SpentEvent
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.units import PrivacyUnit

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _sampled(z: float, n: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(z)), n
    )


def test_a_federated_file_stores_two_events_and_verifies_at_integer_orders(tmp_path: Path) -> None:
    data = synthetic(n_users=600, n_items=60, seed=0)
    model = FederatedMF(
        epsilon=2.0, delta=1e-6, factors=4, rounds=6, clients_per_round=120, head_items=30
    )
    sim = FederatedSimulation(model.config(), data.matrix, faults=FaultModel(dropout=0.1, seed=4))
    sim.run()
    honest = {h["honest_survivors"] for h in sim.server.history if not h.get("aborted")}
    assert len(honest) > 1  # the cohorts differed ...
    path = FederatedMF.from_server(sim.server, data.item_ids).save(tmp_path / "fed.npz")
    g = load_model(path).guarantee_
    assert [e["label"] for e in g.events] == [  # ... the stored events do not
        "counting round (noisy item counts and history lengths)",
        "rounds 1-6",
    ]
    assert g.verified and g._integer_orders
    assert g.recompute_epsilon() == pytest.approx(g.epsilon, rel=1e-12)


def test_a_guarantee_computed_at_dense_orders_is_still_accepted() -> None:
    """The integer-order fast path never refuses a valid ε computed at more orders."""
    spent = [SpentEvent(f"round {i}", _sampled(1.0 + 0.01 * i, 1)) for i in range(4)]
    g = PrivacyGuarantee.from_events(
        spent, delta=1e-6, unit=PrivacyUnit.USER, accountant="rdp", mechanism="test",
        released=["x"], not_released=[], threat_model="test", seeded_noise=False,
    )  # fmt: skip
    again = PrivacyGuarantee.model_validate(g.model_dump(mode="json"))  # as read from a file
    assert again.verify().verified  # dense ε ≤ integer-order ε: checked at dense orders


@pytest.mark.parametrize("factor", [0.9, 2.0])
def test_a_tampered_rdp_guarantee_is_refused(factor: float) -> None:
    spent = [SpentEvent("rounds 1-20", _sampled(1.2, 20))]
    g = PrivacyGuarantee.from_events(
        spent, delta=1e-6, unit=PrivacyUnit.USER, accountant="rdp", mechanism="test",
        released=["x"], not_released=[], threat_model="test", seeded_noise=False,
    )  # fmt: skip
    bad = PrivacyGuarantee.model_validate(
        {**g.model_dump(mode="json"), "epsilon": g.epsilon * factor}
    )
    with pytest.raises(GuaranteeMismatchError, match="not what the stored events give"):
        bad.verify()
