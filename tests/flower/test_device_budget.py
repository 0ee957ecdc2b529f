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
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr (the [federated] extra) is not installed")

from flwr.app import ConfigRecord, RecordDict

from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated.flower.budget import RECENT, device_budget, fingerprint
from privrec.federated.flower.coordinator import Coordinator, parse_run_config
from privrec.federated.flower.dpals import DPALSCoordinator, parse_dpals_run_config
from privrec.federated.flower.identity import load_pki

from .local import DPALS_PARAMS, USERS, LocalTransport, identities, run_config

PARAMS = DPALS_PARAMS


def _nodes(tmp_path: Path, cap: float, delta: float = 1e-3, **more: Any) -> tuple[Path, Any]:
    """Each node's config: its own PKI and identity keys (malicious-server rounds, required with
    a budget) and a budget file in ``tmp_path/devices``."""
    folder = tmp_path / "devices"
    folder.mkdir(exist_ok=True)
    pki, keys = identities(tmp_path)

    def extra(p: int) -> dict[str, Any]:
        return {
            **keys(p),
            "max-epsilon": cap,
            "max-delta": delta,
            "budget-file": str(folder / f"node-{p}.budget.json"),
            **more,
        }

    return pki, extra


def _dpals(ckpt: Path, transport: LocalTransport, pki: Path) -> DPALSCoordinator:
    cfg: dict[str, Any] = {
        "algorithm": "dpals",
        "round-timeout": 60.0,
        "min-nodes": 3,
        "checkpoint-dir": str(ckpt),
        "max-retries": 1,
        "pki": str(pki),
        "complete-graph": True,  # what devices with a budget require
    }
    cfg.update({f"dpals.{k.replace('_', '-')}": v for k, v in PARAMS.items()})
    cfg["dpals.threat-model"] = "malicious"
    params, settings = parse_dpals_run_config(cfg)
    coordinator = DPALSCoordinator(transport, params, settings, say=lambda _: None)
    coordinator.run()
    return coordinator


def _spent(tmp_path: Path, pki: Path, cap: float, delta: float = 1e-3) -> dict[int, float]:
    """Every user's ε as its node's budget file says (users never recorded: absent)."""
    out = {}
    keys = load_pki(pki)
    for p in range(3):
        path = tmp_path / "devices" / f"node-{p}.budget.json"
        if not path.exists():
            continue
        budget = device_budget(
            {"max-epsilon": cap, "max-delta": delta, "budget-file": str(path),
             "threat-model": "malicious", "pki": str(pki)}
        )  # fmt: skip
        assert budget is not None
        recorded = set(json.loads(path.read_text())["users"])
        for u, key in keys.items():
            if fingerprint(key) in recorded:
                out[u] = budget.epsilon(key)
    return out


def test_an_honest_dpals_run_spends_the_models_epsilon_and_a_second_run_is_refused(
    tmp_path: Path,
) -> None:
    cap = PARAMS["epsilon"]
    pki, extra = _nodes(tmp_path, cap)
    model = _dpals(tmp_path / "run1", LocalTransport(3, test_mode=False, extra=extra), pki).model
    eps = model.privacy_guarantee.epsilon
    spent = _spent(tmp_path, pki, cap)
    assert sorted(spent) == list(range(USERS))  # every user took part, as the server planned
    # each device composed the rounds' own events: the model's ε, never more (the server
    # charges each round a multiplier z; its discrete sum's bound, the node's event, is
    # raised in 0.5% steps until it reaches z, so it is slightly less)
    for e in spent.values():
        assert eps * 0.99 <= e <= eps * (1 + 1e-9)
    path = tmp_path / "devices" / "node-0.budget.json"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0  # the device's own record
    doc = json.loads(path.read_text())
    assert {v["rounds"] for v in doc["users"].values()} == {4}  # compact: no per-round list

    # the same devices again (a new run, new checkpoint folder): nothing is left to spend
    transport = LocalTransport(3, test_mode=False, extra=extra)
    with pytest.raises(ProtocolAbort):
        _dpals(tmp_path / "run2", transport, pki)
    assert _spent(tmp_path, pki, cap) == spent  # refused rounds recorded nothing
    assert not (tmp_path / "run2" / "model.npz").exists()


def test_a_cap_below_the_plan_stops_the_run_midway(tmp_path: Path) -> None:
    pki, extra = _nodes(tmp_path, 3.0)
    with pytest.raises(ProtocolAbort):
        _dpals(tmp_path / "run", LocalTransport(3, test_mode=False, extra=extra), pki)
    spent = _spent(tmp_path, pki, 3.0)
    assert spent and all(0 < e <= 3.0 for e in spent.values())
    assert not (tmp_path / "run" / "model.npz").exists()


class _LowerNoise(LocalTransport):
    """A server that tells the nodes 100× less noise in the training rounds' tasks than the
    SecAgg round was agreed on (a well-formed message)."""

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


def _mf(ckpt: Path, transport: LocalTransport, pki: Path | None) -> Coordinator:
    cfg = run_config(ckpt, rounds=1, noise_multiplier=1.0)
    if pki is not None:
        cfg.update({"mf.threat-model": "malicious", "pki": str(pki), "complete-graph": True})
    config, settings = parse_run_config(cfg)
    coordinator = Coordinator(transport, config, settings, say=lambda _: None)
    coordinator.run()
    return coordinator


def _lower_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that plans its training rounds with 100× less noise — consistently: the noise
    it tells every node is the one it binds into the SecAgg round."""
    from privrec.federated.server import FederatedMFServer
    from privrec.privacy.distributed import DistributedDPEncoder

    real = FederatedMFServer.ddp_config

    def lowered(self: Any, dim: int, noise_multiplier: float | None = None) -> Any:
        cfg = real(self, dim, noise_multiplier)
        if noise_multiplier is not None:  # the counting round: left honest
            return cfg
        return cfg.model_copy(update={"noise_multiplier": cfg.noise_multiplier / 100})

    monkeypatch.setattr(FederatedMFServer, "ddp_config", lowered)
    assert DistributedDPEncoder  # the encoder is built from the lowered settings


def test_a_server_lowering_the_noise_is_refused_by_devices_with_a_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lower_noise(monkeypatch)
    # without a device budget the nodes accept it: the noise level is the server's choice
    _mf(tmp_path / "open", LocalTransport(3, test_mode=False), None)
    # with one, every user sits the round out: the round aborts, nothing is released
    pki, extra = _nodes(tmp_path, 20.0, 1e-5)
    transport = LocalTransport(3, test_mode=False, extra=extra)
    with pytest.raises(ProtocolAbort):
        _mf(tmp_path / "capped", transport, pki)
    # only the honest counting round was spent
    spent = _spent(tmp_path, pki, 20.0, 1e-5)
    assert spent and all(e < 20.0 for e in spent.values())
    doc = json.loads((tmp_path / "devices" / "node-0.budget.json").read_text())
    assert {v["rounds"] for v in doc["users"].values()} == {1}


def test_nodes_refuse_noise_other_than_the_round_was_agreed_on(tmp_path: Path) -> None:
    """The distributed-DP settings are bound into the SecAgg round (its context, part of what
    every client signs): a server telling one node other noise than the round was agreed on —
    a third review charged a budget node 9 noise shares while the other nodes, told 1e-4, added
    none — is refused by every node, with or without a budget."""
    for extra in (None, _nodes(tmp_path, 20.0, 1e-5)[1]):
        transport = _LowerNoise(3, test_mode=False, extra=extra)
        pki = None if extra is None else tmp_path / "pki" / "pki.json"
        with pytest.raises(ProtocolAbort):
            _mf(tmp_path / f"run-{extra is None}", transport, pki)
        refused = [e for e in transport.errors if e.startswith("masked_input")]
        assert refused and all("agreed on" in e for e in refused)


def test_an_honest_mf_run_fits_the_unamplified_epsilon(tmp_path: Path) -> None:
    pki, keys = identities(tmp_path / "ref")
    srv = _mf(tmp_path / "ref", LocalTransport(3, test_mode=False, extra=keys), pki).server
    assert srv is not None
    cap = srv.epsilon_against_server()
    assert cap is not None
    pki, extra = _nodes(tmp_path, cap * (1 + 1e-6), 1e-5)
    _mf(tmp_path / "run", LocalTransport(3, test_mode=False, extra=extra), pki)
    spent = _spent(tmp_path, pki, cap * (1 + 1e-6), 1e-5)
    assert sorted(spent) == list(range(USERS))
    for e in spent.values():
        assert e == pytest.approx(cap, rel=1e-6)


def test_noise_sized_for_fewer_colluders_than_the_node_assumes_is_refused(tmp_path: Path) -> None:
    pki, extra = _nodes(tmp_path, 50.0, 1e-5, **{"corrupt-fraction": 0.3})
    transport = LocalTransport(3, test_mode=False, extra=extra)
    with pytest.raises(ProtocolAbort):
        _mf(tmp_path / "run", transport, pki)
    assert transport.errors and all(
        "colluding devices" in e for e in transport.errors if e.startswith("masked_input")
    )
    assert not list((tmp_path / "devices").glob("*.budget.json"))  # nothing admitted


def test_nodes_with_a_budget_refuse_honest_but_curious_rounds(tmp_path: Path) -> None:
    """In an honest-but-curious round the server could invite ids no device hosts, run them
    itself and isolate one user's input (a reviewer recovered 8/8 users' history-length bins
    that way while the node recorded ε 4.75): a budget needs the node's own PKI."""
    _, extra = _nodes(tmp_path, 50.0, 1e-5)
    transport = LocalTransport(3, test_mode=False, extra=extra)
    with pytest.raises(ProtocolAbort):
        _mf(tmp_path / "run", transport, None)
    assert any("malicious server" in e for e in transport.errors)
    with pytest.raises(ConfigError, match="malicious-server rounds"):
        device_budget({"max-epsilon": 1.0, "budget-file": str(tmp_path / "b.json")})


def _doc(users: dict[str, Any]) -> str:
    return json.dumps({"format": "privrec-device-budget", "version": 1, "users": users})


FP = "ab" * 16  # a well-formed record name


def test_a_damaged_budget_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "node.budget.json"
    settings = {
        "max-epsilon": 5.0, "budget-file": str(path), "threat-model": "malicious", "pki": "p.json",
    }  # fmt: skip
    for text in (
        "not json",
        json.dumps({"format": "privrec-release-log", "version": 1, "runs": {}}),
        _doc({FP: {"rate": -1.0, "rounds": 1, "recent": []}}),
        _doc({FP: {"rate": 0.5, "rounds": 0, "recent": []}}),
        _doc({FP: {"rate": float("nan"), "rounds": 1, "recent": []}}),
        _doc({"x": {"rate": 0.5, "rounds": 1, "recent": []}}),
        _doc({FP: {"rate": 0.5, "rounds": 1, "recent": ["a" * 32] * 33}}),
        _doc({FP: {"rate": 0.5, "rounds": 1, "recent": [], "extra": 1}}),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError):
            device_budget(settings)
        assert path.read_text() == text
    # a cap lowered below what was already spent: every round is refused, the file is kept
    text = _doc({FP: {"rate": 1.0, "rounds": 1, "recent": []}})
    path.write_text(text)
    budget = device_budget({**settings, "max-epsilon": 1.0})
    assert budget is not None
    with pytest.raises(ConfigError, match="above the filter's cap"):
        budget.admit([(3, FP)], dp_accounting.GaussianDpEvent(100.0), b"r" * 16)
    assert path.read_text() == text


def test_a_replayed_round_is_charged_once_and_the_file_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "node.budget.json"
    budget = device_budget(
        {"max-epsilon": 50.0, "budget-file": str(path), "threat-model": "malicious", "pki": "p"}
    )
    assert budget is not None
    event = dp_accounting.GaussianDpEvent(20.0)
    assert budget.admit([(3, FP)], event, b"r" * 16) == [3]
    assert budget.admit([(3, FP)], event, b"r" * 16) == []  # the same round again: not twice
    for i in range(200):  # many rounds: the record stays one rate, one count, RECENT hashes
        assert budget.admit([(3, FP)], event, i.to_bytes(16, "little")) == [3]
    entry = json.loads(path.read_text())["users"][FP]
    assert entry["rounds"] == 201 and len(entry["recent"]) == RECENT
    assert entry["rate"] == pytest.approx(201 / 400)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"max-epsilon": 5.0}, "budget-file"),
        ({"budget-file": "/x.json"}, "needs max-epsilon"),
        ({"max-delta": 1e-6}, "needs max-epsilon"),
        ({"corrupt-fraction": 0.1}, "needs max-epsilon"),
        ({"max_epsilon": 1.0, "budget_file": "/x.json"}, "did you mean"),
        ({"Max-Epsilon": 1.0}, "did you mean"),
        ({"max-epsilon": True, "budget-file": "/x.json"}, "number"),
        ({"max-epsilon": "five", "budget-file": "/x.json"}, "number"),
        ({"max-epsilon": float("inf"), "budget-file": "/x.json"}, "finite"),
        ({"max-epsilon": -1.0, "budget-file": "/x.json"}, "epsilon"),
        ({"max-epsilon": 1.0, "max-delta": 1.5, "budget-file": "/x.json"}, "delta"),
        ({"max-epsilon": 1.0, "budget-file": "rel.json"}, "absolute"),
        ({"max-epsilon": 1.0, "budget-file": "/x.json", "corrupt-fraction": 1.0}, "corrupt"),
        ({"max-epsilon": 1.0, "budget-file": "/x.json"}, "malicious-server rounds"),
        ({"max-epsilon": 1.0, "budget-file": "/x.json", "threat-model": "malicious"}, "PKI"),
        (
            {
                "max-epsilon": 1.0,
                "budget-file": "/x.json",
                "threat-model": "malicious",
                "pki": "p.json",
                "test-mode": "true",
            },
            "test-mode",
        ),
        (
            {
                "max-epsilon": 1.0,
                "budget-file": "/no/such/folder/x.json",
                "threat-model": "malicious",
                "pki": "p.json",
            },
            "folder",
        ),
    ],
)
def test_node_budget_settings_are_checked(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        device_budget(settings)


def test_without_settings_there_is_no_device_budget() -> None:
    assert device_budget({"data": "synthetic"}) is None
    assert device_budget({"max-epsilon": "", "budget-file": ""}) is None


def test_the_server_cannot_set_a_device_budget_through_the_run_config(tmp_path: Path) -> None:
    """Run-config ``node.*`` keys are defaults the *server* sends; a budget is the device's:
    the server may neither loosen it nor choose where on the device a file is written."""
    from flwr.app import Context

    from privrec.errors import MessageRejected
    from privrec.federated.flower.codec import round_context
    from privrec.federated.flower.node import _within_budget
    from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder
    from privrec.secure.round import RoundConfig

    pki, keys = identities(tmp_path)
    enc = DistributedDPEncoder(
        DistributedDPConfig(
            clip=1.0, dim=8, min_survivors=30, rotation_seed=0, noise_multiplier=0.01,
            max_clients=USERS,
        )
    )  # fmt: skip
    public = load_pki(pki)
    rc = RoundConfig.create(
        list(range(USERS)), enc.encoded_dim, enc.bits, min_survivors=34, neighbours=USERS - 1,
        threat_model="malicious", identity_keys=public, context=round_context(enc.config, True),
    )  # fmt: skip
    planted = tmp_path / "planted.json"
    server_says = {f"node.{k}": v for k, v in keys(0).items()}
    context = Context(
        run_id=1, node_id=100, node_config={}, state=RecordDict(),
        run_config={**server_says, "node.max-epsilon": 1.0, "node.budget-file": str(planted)},
    )  # fmt: skip
    users = list(range(USERS))
    assert _within_budget(users, context, enc.config, enc, rc, noise=True) == users
    assert not planted.exists()
    # the same settings in the node's own config do apply: noise 0.01 does not fit ε = 1
    own = Context(
        run_id=1, node_id=100, state=RecordDict(), run_config={},
        node_config={**keys(0), "max-epsilon": 1.0, "budget-file": str(planted)},
    )  # fmt: skip
    assert _within_budget(users, own, enc.config, enc, rc, noise=True) == []
    # a round that does not bind its noise settings (no context) is refused by a budget node
    unbound = RoundConfig.create(
        list(range(USERS)), enc.encoded_dim, enc.bits, min_survivors=34, neighbours=USERS - 1,
        threat_model="malicious", identity_keys=public,
    )  # fmt: skip
    with pytest.raises(MessageRejected, match="bound into"):
        _within_budget(users, own, enc.config, enc, unbound, noise=True)


def test_a_sparse_graph_a_low_threshold_or_a_huge_round_id_is_refused(tmp_path: Path) -> None:
    """The server picks k, t and the round id that seeds a sparse graph: reviewers unmasked one
    input alone with a ground k = t = 1 graph, and two inputs' sum with two survivor-set views
    on a k = 6 ring. A node with a budget needs the complete graph and 2t > k + min(k, C) for
    its own colluder count C."""
    from privrec.errors import MessageRejected
    from privrec.federated.flower.budget import round_event
    from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder
    from privrec.secure.round import RoundConfig

    public = load_pki(identities(tmp_path)[0])
    enc = DistributedDPEncoder(
        DistributedDPConfig(
            clip=1.0, dim=8, min_survivors=30, rotation_seed=0, noise_multiplier=1.0,
            max_clients=USERS,
        )
    )  # fmt: skip

    def rc(**kw: Any) -> RoundConfig:
        return RoundConfig.create(
            list(range(USERS)), enc.encoded_dim, enc.bits, min_survivors=34,
            threat_model="malicious", identity_keys=public, **kw,
        )  # fmt: skip

    ok = rc(neighbours=USERS - 1)
    assert round_event(enc.config, enc.plan, ok, 0.05, USERS) is not None
    with pytest.raises(MessageRejected, match="sparse SecAgg"):
        round_event(enc.config, enc.plan, rc(neighbours=1, threshold=1), 0.05, USERS)
    # the split-view attack of the second review: k = 6, t = 4 satisfied 2t > k + min(k, C),
    # yet two survivor sets shown to two arcs of the ring unmasked two honest inputs' sum
    with pytest.raises(MessageRejected, match="sparse SecAgg"):
        round_event(enc.config, enc.plan, rc(neighbours=6, threshold=4), 0.05, 20)
    with pytest.raises(MessageRejected, match="threshold t = 19"):  # 2·19 ≤ 35 + min(35, 5)
        round_event(enc.config, enc.plan, rc(neighbours=USERS - 1, threshold=19), 0.05, 100)
    with pytest.raises(MessageRejected, match="round id"):
        round_event(enc.config, enc.plan, rc(neighbours=USERS - 1, round_id=b"x" * 65), 0.05, USERS)
    # honest noise shares counted against colluders from the whole enrolment, not the invited
    with pytest.raises(MessageRejected, match="honest noise shares"):
        round_event(  # 10 colluders of 200 enrolled: 34 − 10 < 30 shares; 2·23 > 35 + 10
            enc.config, enc.plan, rc(neighbours=USERS - 1, threshold=23), 0.05, 200
        )


class _OverflowingFactors(LocalTransport):
    """A server sending training rounds one finite item-factor row that overflows the solve of
    exactly the users holding that item (c² = 0.7e308)."""

    def exchange(self, action: str, contents: Any, *, timeout: float, group: str) -> Any:
        if action == "masked_input":
            out = {}
            for node, content in contents.items():
                model = content.array_records.get("model")
                if model is not None:
                    from flwr.app import Array, ArrayRecord

                    y = model["item_factors"].numpy().copy()
                    y[0] = 0.0
                    y[0, :2] = (0.7e308) ** 0.5
                    content = RecordDict(
                        {
                            **content.config_records,
                            "model": ArrayRecord(
                                {"item_factors": Array(y), "head_items": model["head_items"]}
                            ),
                        }
                    )
                out[node] = content
            contents = out
        return super().exchange(action, contents, timeout=timeout, group=group)


def test_a_users_reply_never_depends_on_its_data_except_through_the_noise(tmp_path: Path) -> None:
    """A fourth review read a user's whole history from error replies — one crafted item
    factor per round made the solve of users holding that item overflow, and their node
    answered with an error instead of a masked input. Now a failed or non-finite contribution
    is sent as zeros (within the sensitivity), encoded and noised like any other: every user
    replies, the round completes."""
    from privrec.federated.flower.node import guarded

    transport = _OverflowingFactors(3, test_mode=False)
    _mf(tmp_path / "run", transport, None)
    assert not [e for e in transport.errors if e.startswith("masked_input")]
    # the guard itself: failures and non-finite values become zeros of the payload's length
    assert guarded(lambda: 1 / 0, 3).tolist() == [0.0, 0.0, 0.0]  # type: ignore[arg-type, return-value]
    assert guarded(lambda: np.array([1.0, np.inf, 2.0]), 3).tolist() == [0.0, 0.0, 0.0]
    assert guarded(lambda: np.array([1.0, 2.0, 3.0]), 3).tolist() == [1.0, 2.0, 3.0]
