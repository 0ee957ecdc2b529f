"""FederatedMF and federated DPALS on Flower's simulation engine (Ray backend): every virtual SuperNode is one user,
a real SecAgg+ client. CI runs a small federation; the 1,000-client round is in
benchmarks/results/scale.md."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr.simulation")

from privrec.engine.flower_sim import run_federated_simulation, simulation_apps
from privrec.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_a_round_with_every_virtual_client_in_secagg() -> None:
    lines: list[str] = []
    rows = run_federated_simulation(12, rounds=1, factors=4, n_items=40, client_cpus=1.0,
                                    say=lines.append)  # fmt: skip
    count, row = rows  # the counting round (popularity prior) always runs first
    assert count["kind"] == "count" and count.get("aborted") is None
    assert count["sampled"] == 12 and count["survivors"] == 12
    assert row["kind"] == "train" and row.get("aborted") is None
    assert row["sampled"] == 12 and row["survivors"] == 12  # one SecAgg+ client per node
    assert 0 < row["epsilon"] <= 5.0
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0
    assert any("discovered 12 users on 12 nodes" in line for line in lines)


def test_federated_dpals_on_the_simulation_engine() -> None:
    """Federated DPALS: the same ServerApp logic as a deployment (``algorithm = "dpals"``),
    every virtual client (one user each) in every round's SecAgg+ sum."""
    lines: list[str] = []
    rows = run_federated_simulation(12, algorithm="dpals", rounds=1, factors=2, n_items=30,
                                    client_cpus=1.0, say=lines.append)  # fmt: skip
    assert rows and all(r["kind"] == "dpals" and r.get("aborted") is None for r in rows)
    assert all(r["sampled"] == 12 and r["survivors"] == 12 for r in rows)
    eps = [r["epsilon"] for r in rows]
    assert eps == sorted(eps) and 0 < eps[-1] <= 5.0 * (1 + 1e-6)
    assert any("federated DPALS, " in line and "ε = " in line for line in lines)
    with pytest.raises(ConfigError, match="sampling_rate"):
        run_federated_simulation(4, algorithm="dpals", sampling_rate=0.5)


def test_a_bad_run_config_fails_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="unknown run config key"):
        simulation_apps({"no-such-key": 1})
    with pytest.raises(ConfigError, match="unknown run config key"):
        simulation_apps({"algorithm": "dpals", "dpals.epsilon": 1.0, "dpals.delta": 1e-5, "x": 1})


@pytest.mark.parametrize(
    "bad",
    [{"n_clients": 1}, {"client_cpus": 0}, {"client_cpus": float("nan")}, {"round_timeout": -1}],
)
def test_bad_simulation_arguments_are_config_errors(bad: dict[str, float]) -> None:
    """Checked before Flower starts its runtime (client_cpus=0 crashed it with a RuntimeError)."""
    kw: dict[str, float] = {"n_clients": 4, **bad}
    n = int(kw.pop("n_clients"))
    with pytest.raises(ConfigError):
        run_federated_simulation(n, **kw)  # type: ignore[arg-type]
