"""A SuperNode's own privacy budget (node_config ``max-epsilon``): the device, not the server,
decides how much of each hosted user's privacy the rounds may spend.

Through the real ClientApp handlers (:class:`~tests.flower.local.LocalTransport`): an honest
federated DPALS run spends exactly the model's ε on every device and a second run on the same
devices is refused; a server that lowers the noise (which nodes without a budget accept) or
sizes it for fewer colluders than the node assumes is refused; the budget file is written
before anything leaves, survives restarts, and a damaged one is refused and left alone.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import dp_accounting
import pytest

pytest.importorskip("flwr", reason="flwr (the [federated] extra) is not installed")

from flwr.app import ConfigRecord, RecordDict

from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated.flower.budget import device_budget
from privrec.federated.flower.coordinator import Coordinator, parse_run_config
from privrec.federated.flower.dpals import DPALSCoordinator, parse_dpals_run_config

from .local import USERS, LocalTransport, run_config

PARAMS: dict[str, Any] = {"epsilon": 5.0, "delta": 1e-3, "factors": 3, "iterations": 2, "seed": 5}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded runs warn by design
        yield


def _budgets(folder: Path, cap: float, delta: float = 1e-3, **more: Any) -> Any:
    return lambda p: {
        "max-epsilon": cap,
        "max-delta": delta,
        "budget-file": str(folder / f"node-{p}.budget.json"),
        **more,
    }


def _dpals(ckpt: Path, transport: LocalTransport) -> DPALSCoordinator:
    cfg: dict[str, Any] = {
        "algorithm": "dpals",
        "round-timeout": 60.0,
        "min-nodes": 3,
        "checkpoint-dir": str(ckpt),
        "max-retries": 1,
    }
    cfg.update({f"dpals.{k.replace('_', '-')}": v for k, v in PARAMS.items()})
    params, settings = parse_dpals_run_config(cfg)
    coordinator = DPALSCoordinator(transport, params, settings, say=lambda _: None)
    coordinator.run()
    return coordinator


def _spent(folder: Path, part: int, cap: float, delta: float = 1e-3) -> dict[int, float]:
    settings = {
        "max-epsilon": cap,
        "max-delta": delta,
        "budget-file": str(folder / f"node-{part}.budget.json"),
    }
    budget = device_budget(settings)
    assert budget is not None
    doc = json.loads((folder / f"node-{part}.budget.json").read_text())
    return {int(u): budget.epsilon(int(u)) for u in doc["users"]}


def test_an_honest_dpals_run_spends_the_models_epsilon_and_a_second_run_is_refused(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    cap = PARAMS["epsilon"]
    model = _dpals(tmp_path / "run1", LocalTransport(3, extra=_budgets(folder, cap))).model
    eps = model.privacy_guarantee.epsilon
    spent = {u: e for p in range(3) for u, e in _spent(folder, p, cap).items()}
    assert sorted(spent) == list(range(USERS))  # every user took part, as the server planned
    # each device composed the rounds' own events: the model's ε, never more (the server
    # charges each round a multiplier z; its discrete sum's bound, the node's event, is
    # raised in 0.5% steps until it reaches z, so it is slightly less)
    for e in spent.values():
        assert eps * 0.99 <= e <= eps * (1 + 1e-9)
    mode = stat.S_IMODE(os.stat(folder / "node-0.budget.json").st_mode)
    assert mode & 0o077 == 0  # the device's own record: not readable by others

    # the same devices again (a new run, new checkpoint folder): nothing is left to spend
    transport = LocalTransport(3, extra=_budgets(folder, cap))
    with pytest.raises(ProtocolAbort):
        _dpals(tmp_path / "run2", transport)
    after = {u: e for p in range(3) for u, e in _spent(folder, p, cap).items()}
    assert after == spent  # refused rounds recorded nothing
    assert not (tmp_path / "run2" / "model.npz").exists()


def test_a_cap_below_the_plan_stops_the_run_midway(tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    with pytest.raises(ProtocolAbort):
        _dpals(tmp_path / "run", LocalTransport(3, extra=_budgets(folder, 3.0)))
    spent = {u: e for p in range(3) for u, e in _spent(folder, p, 3.0).items()}
    assert spent and all(0 < e <= 3.0 for e in spent.values())
    assert not (tmp_path / "run" / "model.npz").exists()


class _LowerNoise(LocalTransport):
    """A server that shrinks the training rounds' noise 100-fold (a well-formed round)."""

    def exchange(self, action: str, contents: Any, *, timeout: float, group: str) -> Any:
        if action == "masked_input":
            out = {}
            for node, content in contents.items():
                task = ConfigRecord(dict(content.config_records["task"]))
                if int(task["payload-dim"]) > 0:  # a training round
                    ddp = json.loads(str(task["ddp"]))
                    task["ddp"] = json.dumps(
                        {**ddp, "noise_multiplier": ddp["noise_multiplier"] / 100}
                    )
                    content = RecordDict(
                        {**content.config_records, **content.array_records, "task": task}
                    )
                out[node] = content
            contents = out
        return super().exchange(action, contents, timeout=timeout, group=group)


def _mf(ckpt: Path, transport: LocalTransport) -> Coordinator:
    config, settings = parse_run_config(run_config(ckpt, rounds=1, noise_multiplier=1.0))
    coordinator = Coordinator(transport, config, settings, say=lambda _: None)
    coordinator.run()
    return coordinator


def test_a_server_lowering_the_noise_is_refused_by_devices_with_a_budget(tmp_path: Path) -> None:
    # without a device budget the nodes accept it: the noise level is the server's choice
    _mf(tmp_path / "open", _LowerNoise(3))
    # with one, every user sits the round out: the round aborts, nothing is released
    folder = tmp_path / "devices"
    folder.mkdir()
    transport = _LowerNoise(3, extra=_budgets(folder, 20.0, 1e-5))
    with pytest.raises(ProtocolAbort):
        _mf(tmp_path / "capped", transport)
    # only the honest counting round was spent
    for p in range(3):
        assert all(e < 20.0 for e in _spent(folder, p, 20.0, 1e-5).values())
    doc = json.loads((folder / "node-0.budget.json").read_text())
    assert {len(v["rounds"]) for v in doc["users"].values()} == {1}


def test_an_honest_mf_run_fits_the_unamplified_epsilon(tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    srv = _mf(tmp_path / "ref", LocalTransport(3)).server
    assert srv is not None
    cap = srv.epsilon_against_server()
    assert cap is not None
    _mf(tmp_path / "run", LocalTransport(3, extra=_budgets(folder, cap * (1 + 1e-9), 1e-5)))
    for p in range(3):
        for e in _spent(folder, p, cap * (1 + 1e-9), 1e-5).values():
            assert e == pytest.approx(cap, rel=1e-6)


def test_noise_sized_for_fewer_colluders_than_the_node_assumes_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    transport = LocalTransport(3, extra=_budgets(folder, 50.0, 1e-5, **{"corrupt-fraction": 0.5}))
    with pytest.raises(ProtocolAbort):
        _mf(tmp_path / "run", transport)
    assert any("honest noise shares" in e for e in transport.errors)
    assert not list(folder.glob("*.budget.json"))  # refused before anything was admitted


def test_a_damaged_budget_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "node.budget.json"
    settings = {"max-epsilon": 5.0, "budget-file": str(path)}
    for text in (
        "not json",
        json.dumps({"format": "privrec-release-log", "version": 1, "runs": {}}),
        json.dumps(
            {
                "format": "privrec-device-budget",
                "version": 1,
                "users": {"3": {"multipliers": [-1.0], "rounds": ["ab"]}},
            }
        ),
        json.dumps(
            {
                "format": "privrec-device-budget",
                "version": 1,
                "users": {"x": {"multipliers": [], "rounds": []}},
            }
        ),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError):
            device_budget(settings)
        assert path.read_text() == text
    # a cap lowered below what was already spent: every round is refused, the file is kept
    path.write_text(
        json.dumps({"format": "privrec-device-budget", "version": 1,
                    "users": {"3": {"multipliers": [1.0], "rounds": ["ab"]}}})
    )  # fmt: skip
    budget = device_budget({**settings, "max-epsilon": 1.0})
    assert budget is not None
    with pytest.raises(ConfigError, match="above the filter's cap"):
        budget.admit([3], dp_accounting.GaussianDpEvent(100.0), b"r" * 16)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"max-epsilon": 5.0}, "budget-file"),
        ({"budget-file": "x.json"}, "needs max-epsilon"),
        ({"max-delta": 1e-6}, "needs max-epsilon"),
        ({"max-epsilon": "five", "budget-file": "x.json"}, "number"),
        ({"max-epsilon": float("inf"), "budget-file": "x.json"}, "finite"),
        ({"max-epsilon": -1.0, "budget-file": "x.json"}, "epsilon"),
        ({"max-epsilon": 1.0, "max-delta": 1.5, "budget-file": "x.json"}, "delta"),
        ({"max-epsilon": 1.0, "budget-file": "x.json", "corrupt-fraction": 1.0}, "corrupt"),
        ({"max-epsilon": 1.0, "budget-file": "/no/such/folder/x.json"}, "folder"),
    ],
)
def test_node_budget_settings_are_checked(
    settings: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=match):
        device_budget(settings)


def test_without_settings_there_is_no_device_budget() -> None:
    assert device_budget({"data": "synthetic"}) is None
    assert device_budget({"max-epsilon": "", "budget-file": ""}) is None


def test_the_server_cannot_set_a_device_budget_through_the_run_config(tmp_path: Path) -> None:
    """Run-config ``node.*`` keys are defaults the *server* sends; a budget is the device's:
    the server may neither loosen it nor choose where on the device a file is written."""
    from flwr.app import Context

    from privrec.federated.flower.node import _within_budget
    from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder
    from privrec.secure.round import RoundConfig

    enc = DistributedDPEncoder(
        DistributedDPConfig(
            clip=1.0, dim=8, min_survivors=30, rotation_seed=0, noise_multiplier=0.01,
            max_clients=USERS,
        )
    )  # fmt: skip
    rc = RoundConfig.create(list(range(USERS)), enc.encoded_dim, enc.bits, min_survivors=34)
    planted = tmp_path / "planted.json"
    context = Context(
        run_id=1, node_id=100, node_config={}, state=RecordDict(),
        run_config={"node.max-epsilon": 1.0, "node.budget-file": str(planted)},
    )  # fmt: skip
    users = list(range(USERS))
    assert _within_budget(users, context, enc.config, enc, rc, noise=True) == users
    assert not planted.exists()
    # the same settings in the node's own config do apply: noise 0.01 does not fit ε = 1
    own = Context(
        run_id=1, node_id=100, node_config={"max-epsilon": 1.0, "budget-file": str(planted)},
        state=RecordDict(), run_config={},
    )  # fmt: skip
    assert _within_budget(users, own, enc.config, enc, rc, noise=True) == []
