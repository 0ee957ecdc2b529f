"""What a simulated round report says about the data: only what the guarantee covers."""

from __future__ import annotations

import math
import warnings

import pytest

from privrec.data import synthetic
from privrec.federated import FederatedMFConfig
from privrec.federated.sim_reports import checkpoint_round, public_round
from privrec.federated.training import FederatedSimulation


@pytest.mark.parametrize("secure", ["fast", "full"])
def test_the_unclipped_fraction_reported_is_the_released_noisy_one(secure: str) -> None:
    """A reviewer read the survivors' exact clip bits in ``--json`` (one device's bit at a
    cohort of 20); the report now carries the noised fraction the server released and the
    clip norm followed."""
    data = synthetic(n_users=400, n_items=60, interactions_per_user=6.0, seed=0)
    cfg = FederatedMFConfig.create(
        epsilon=5.0, factors=2, rounds=2, head_items=20, clients_per_round=40, seed=0
    )
    sim = FederatedSimulation(cfg, data.matrix, secure=secure)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reports = sim.run()
    released = [h["unclipped_fraction"] for h in sim.server.history if "unclipped_fraction" in h]
    assert len(reports) == len(released) == 2
    for r, b_bar in zip(reports, released, strict=True):
        assert r["unclipped_fraction"] == pytest.approx(b_bar) or (
            math.isnan(r["unclipped_fraction"]) and math.isnan(b_bar)
        )


def test_public_round_rounds_the_protocol_counters_and_the_recall() -> None:
    report = {
        "round": 1,
        "survivors": 131,
        "recall": 0.250284881595927,
        "extra": {"reconstructed_seeds": 131.0, "share_ratio": 0.123456},
    }
    out = public_round(report)
    assert out["extra"] == {"reconstructed_seeds": "≈ 130", "share_ratio": 0.12}
    assert out["recall"] == 0.2503 and checkpoint_round(report)["recall"] == 0.2503
    assert "131" not in str(out)
