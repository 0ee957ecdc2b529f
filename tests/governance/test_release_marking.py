"""Federated runs: once a release has gone to the devices the charge can no longer be aborted."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from privrec.data import synthetic
from privrec.errors import GovernanceError
from privrec.federated.mf import FederatedMFConfig
from privrec.federated.training import FederatedSimulation
from privrec.governance.training import federated_session

from .conftest import make_setup


@pytest.mark.parametrize("crash_in_round", [1, 2])
def test_a_federated_run_failing_after_its_first_release_keeps_its_charge(
    ledger_url: str, crash_in_round: int
) -> None:
    """A reviewer aborted (refunded) a run that died in round 2 after the counting round and
    round 1 had gone to the devices. The hook now marks the charge released as soon as a release
    is charged — the counting round's noisy counts are the first — so a run dying in round 1,
    before any report, keeps its charge too, and abort refuses it."""
    s: Any = make_setup(ledger_url)
    data = s.analyst.load("ratings", synthetic(n_users=300, n_items=40, seed=1))
    cfg = FederatedMFConfig.create(
        epsilon=0.8, delta=1e-6, rounds=3, clients_per_round=40, head_items=20, factors=4, seed=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = FederatedSimulation(cfg, data.interactions.matrix)
    session = federated_session(s.analyst, "ratings", sim.server, data=data)
    real = sim._round
    calls: list[int] = []

    def round_then_crash(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == crash_in_round:
            raise KeyboardInterrupt(f"operator pressed Ctrl-C during round {crash_in_round}")
        return real(*a, **k)

    sim._round = round_then_crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt), session, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.run()
    assert sim.server.round == crash_in_round - 1 and sim.server.noisy_counts is not None
    (charge,) = s.analyst.history("ratings")
    assert charge.status == "reserved"
    with pytest.raises(GovernanceError, match="released"):
        s.analyst.abort(charge.id, reason="it crashed")
