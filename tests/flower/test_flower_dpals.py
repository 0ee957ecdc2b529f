"""Federated DPALS on Flower's message path (in process): the same model and ε as the simulation.

The coordinator runs against the real ClientApp handlers through
:class:`~tests.flower.local.LocalTransport` (every message and node state serialised as
between Flower processes); the nodes run in test mode, so they honour the seed and draw the
simulation's salts and noise streams — the two runs must then release the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr (the [federated] extra) is not installed")

from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated.dpals import FederatedDPALS
from privrec.federated.flower.coordinator import parse_run_config
from privrec.federated.flower.dpals import DPALSCoordinator, parse_dpals_run_config
from privrec.models import load_model

from .local import DPALS_PARAMS, USERS, LocalTransport, full_matrix, identities

PARAMS = DPALS_PARAMS


def _run_config(ckpt: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "algorithm": "dpals",
        "round-timeout": 60.0,
        "min-nodes": 3,
        "checkpoint-dir": str(ckpt),
        "mf.factors": 8,  # other algorithms' keys are ignored
    }
    cfg.update({f"dpals.{k.replace('_', '-')}": v for k, v in {**PARAMS, **extra}.items()})
    return cfg


def _flower(
    ckpt: Path,
    transport: LocalTransport,
    pki: Path | None = None,
    deploy: dict[str, Any] | None = None,
    **extra: Any,
) -> DPALSCoordinator:
    cfg = {**_run_config(ckpt, **extra), **(deploy or {})}
    if pki is not None:
        cfg["pki"] = str(pki)
    params, settings = parse_dpals_run_config(cfg)
    coordinator = DPALSCoordinator(transport, params, settings, say=lambda _: None)
    coordinator.run()
    return coordinator


@pytest.mark.parametrize("method", ["adaptive", "uniform"])
def test_flower_run_releases_the_simulations_model_and_epsilon(tmp_path: Path, method: str) -> None:
    sim = FederatedDPALS(**PARAMS, method=method, secure="fast")
    sim.fit(full_matrix())
    coordinator = _flower(tmp_path, LocalTransport(3), method=method)
    fl = coordinator.model
    np.testing.assert_array_equal(fl.head_items_, sim.head_items_)
    np.testing.assert_array_equal(fl.noisy_counts_, sim.noisy_counts_)
    np.testing.assert_allclose(fl.item_factors_, sim.item_factors_, rtol=1e-6, atol=1e-7)
    g_fl, g_sim = fl.privacy_guarantee, sim.privacy_guarantee
    assert g_fl.epsilon == g_sim.epsilon and g_fl.delta == g_sim.delta
    assert [e.to_dict() for e in g_fl.spent_events] == [e.to_dict() for e in g_sim.spent_events]
    assert g_fl.accountant.value == "rdp"
    kinds = [r["round"] for r in fl.rounds_]
    assert kinds == [r["round"] for r in sim.rounds_] == ["lengths", "counts", "step 1", "step 2"]
    for r in fl.rounds_:
        assert r["survivors"] == USERS and r["flower_bytes_up_per_device"] > r["bytes_per_device"]
    # the released model: no users, scores histories like the simulation's
    saved = load_model(tmp_path / "model.npz")
    hist = full_matrix()[[1, 2]]
    np.testing.assert_array_equal(
        saved.recommend_history(hist, k=5)[0], sim.recommend_history(hist, k=5)[0]
    )
    logged = json.loads((tmp_path / "dpals_rounds.json").read_text())
    assert [r["round"] for r in logged] == kinds
    # the round log: strict JSON lines, ε so far rising to the model's ε with the last round
    lines = (tmp_path / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [
        json.loads(x, parse_constant=lambda c: pytest.fail(f"bare {c} in rounds.jsonl"))
        for x in lines
    ]
    eps = [e["epsilon"] for e in entries if e["kind"] == "dpals" and e["aborted"] is None]
    assert len(eps) == len(kinds) and eps == sorted(eps) and eps[0] > 0
    assert eps[-1] == pytest.approx(g_fl.epsilon, rel=1e-9)


def test_a_node_missing_a_deadline_aborts_the_round_and_it_is_retried(tmp_path: Path) -> None:
    missed: list[str] = []

    def fault(action: str, node: int, reply: Any) -> Any:
        if action == "masked_input" and node == 101 and not missed:
            missed.append(action)  # its 12 users drop out: 24 < 33 planned survivors
            return None
        return reply

    coordinator = _flower(tmp_path, LocalTransport(3, fault=fault))
    logs = [(e.round, e.attempt, e.aborted is not None) for e in coordinator.logs]
    assert logs[:2] == [(1, 0, True), (1, 1, False)]
    # the aborted attempt is not charged: its line says ε = 0 so far, the retry's says round 1's
    assert coordinator.logs[0].epsilon == 0.0 < coordinator.logs[1].epsilon
    assert coordinator.model.rounds_[0]["attempts"] == 2
    # an aborted round is not charged: the same ε as a run without faults
    sim = FederatedDPALS(**PARAMS, secure="fast").fit(full_matrix())
    assert coordinator.model.privacy_guarantee.epsilon == sim.privacy_guarantee.epsilon


def test_run_config_is_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown run config key"):
        parse_dpals_run_config({**_run_config(tmp_path), "no-such-key": 1})
    with pytest.raises(ConfigError, match=r"dpals\.epsilon"):
        parse_dpals_run_config({"algorithm": "dpals", "dpals.delta": 1e-3})
    with pytest.raises(ConfigError):
        parse_dpals_run_config({**_run_config(tmp_path), "dpals.lhs": "full"})
    with pytest.raises(ConfigError, match="algorithm"):
        parse_run_config({"algorithm": "als"})
    # FederatedMF's parser ignores the DPALS keys and vice versa
    parse_run_config({**_run_config(tmp_path), "algorithm": "mf", "mf.epsilon": 5.0})


def test_nodes_not_in_test_mode_ignore_the_seed_and_keep_their_salt(tmp_path: Path) -> None:
    transport = LocalTransport(3, test_mode=False)
    coordinator = _flower(tmp_path, transport)
    sim = FederatedDPALS(**PARAMS, secure="fast").fit(full_matrix())
    fl = coordinator.model
    assert fl.privacy_guarantee.epsilon == sim.privacy_guarantee.epsilon
    # fresh CSPRNG noise: not the simulation's seeded draw
    assert not np.array_equal(fl.noisy_counts_, sim.noisy_counts_)
    assert not transport.errors


def test_the_example_apps_run_config_parses_for_both_algorithms() -> None:
    import tomllib

    from flwr.common.config import flatten_dict

    root = Path(__file__).resolve().parents[2]
    with (root / "examples" / "flower" / "pyproject.toml").open("rb") as fh:
        cfg = flatten_dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    assert cfg["algorithm"] == "mf"
    mf, _ = parse_run_config(cfg)
    params, settings = parse_dpals_run_config({**cfg, "algorithm": "dpals"})
    assert settings.algorithm == "dpals" and params["epsilon"] == 1.0 and params["factors"] is None
    assert mf.factors == 16


def test_rounds_size_the_secagg_graph_for_the_corrupt_fraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reviewer found Flower's DPALS rounds built their SecAgg+ graph for the default 5% of
    colluding devices whatever ``corrupt_fraction`` the noise was sized for (the simulation had
    the same bug): colluders beyond 5% could then unmask a device's input."""
    import privrec.federated.flower.dpals as fd
    from privrec.secure.round import RoundConfig

    seen: list[float] = []
    real = RoundConfig.create

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw.get("corrupt_fraction", 0.05))
        return real(*args, **kw)

    monkeypatch.setattr(fd.RoundConfig, "create", spy)
    _flower(tmp_path, LocalTransport(3), corrupt_fraction=0.2)
    assert seen and set(seen) == {0.2}


def test_malicious_server_rounds_release_the_same_model(tmp_path: Path) -> None:
    """``dpals.threat-model = malicious``: every round signs and cross-checks its survivor set
    (one more phase), with the same sums, model and ε as honest-but-curious rounds."""
    pki, extra = identities(tmp_path)
    transport = LocalTransport(3, extra=extra)
    coordinator = _flower(tmp_path / "ck", transport, pki, threat_model="malicious")
    assert transport.errors == []
    assert transport.calls.count("consistency_check") == len(coordinator.model.rounds_) == 4
    hbc = _flower(tmp_path / "hbc", LocalTransport(3)).model
    fl = coordinator.model
    np.testing.assert_array_equal(fl.noisy_counts_, hbc.noisy_counts_)
    np.testing.assert_allclose(fl.item_factors_, hbc.item_factors_, rtol=1e-6, atol=1e-7)
    assert fl.privacy_guarantee.epsilon == hbc.privacy_guarantee.epsilon
    assert "a malicious server" in fl.privacy_guarantee.threat_model


def test_malicious_dpals_rounds_refuse_forged_keys_downgrades_and_a_missing_pki(
    tmp_path: Path,
) -> None:
    from privrec.federated.flower.identity import create_identities

    _, extra = identities(tmp_path)
    forged = create_identities(range(USERS), 3, tmp_path / "forged")  # the server's own keys
    transport = LocalTransport(3, extra=extra)
    with pytest.raises(ProtocolAbort):
        _flower(tmp_path / "a", transport, forged, threat_model="malicious")
    assert transport.errors and all("PKI" in e for e in transport.errors)
    # nodes that require malicious-server rounds refuse honest-but-curious DPALS rounds
    transport = LocalTransport(3, extra=extra)
    with pytest.raises(ProtocolAbort):
        _flower(tmp_path / "b", transport)
    assert any("requires rounds secured against a malicious server" in e for e in transport.errors)
    with pytest.raises(ConfigError, match="pki"):
        _flower(tmp_path / "c", LocalTransport(3), threat_model="malicious")


def _crash_at(round_: int) -> Any:
    """A fault that makes every node miss the masked input of the ``round_``-th secure sum."""
    seen: dict[str, int] = {"masked": 0}

    def fault(action: str, node: int, reply: Any) -> Any:
        if action == "masked_input" and node == 100:
            seen["masked"] += 1
        if action == "masked_input" and seen["masked"] >= round_:
            return None
        return reply

    return fault


@pytest.mark.parametrize("test_mode", [True, False], ids=["seeded", "csprng"])
def test_a_crashed_training_resumes_without_asking_the_devices_again(
    tmp_path: Path, test_mode: bool
) -> None:
    """Rounds 1–2 recorded, round 3 (step 1) lost: the resumed server replays 1–2 from the
    checkpoint and asks the devices only for steps 1 and 2 — the same model and ε."""
    ckpt = tmp_path / "ck"
    extra: dict[str, Any] = {} if test_mode else {"seed": None}
    with pytest.raises(ProtocolAbort):
        _flower(ckpt, LocalTransport(3, fault=_crash_at(3), test_mode=test_mode), deploy={"max-retries": 0},
                **extra)  # fmt: skip
    recorded = sorted(p.name for p in (ckpt / "dpals-run").iterdir())
    assert recorded == [".lock", "journal", "round-001.npz", "round-002.npz", "run.json"]
    assert "start 3" not in (ckpt / "dpals-run" / "journal").read_text()  # aborted before unmask
    transport = LocalTransport(3, test_mode=test_mode)
    resumed = _flower(ckpt, transport, **extra).model
    assert transport.calls.count("masked_input") == 2  # steps 1 and 2 only
    assert [r["round"] for r in resumed.rounds_] == ["lengths", "counts", "step 1", "step 2"]
    assert [bool(r.get("resumed")) for r in resumed.rounds_] == [True, True, False, False]
    plain = _flower(tmp_path / "plain", LocalTransport(3, test_mode=test_mode), **extra).model
    assert resumed.privacy_guarantee.epsilon == plain.privacy_guarantee.epsilon
    if test_mode:  # seeded: the very same model as an uninterrupted run
        np.testing.assert_array_equal(resumed.noisy_counts_, plain.noisy_counts_)
        np.testing.assert_allclose(resumed.item_factors_, plain.item_factors_, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_of_another_run_or_an_unrecorded_round_is_refused(tmp_path: Path) -> None:
    from privrec.federated.flower.dpals_checkpoint import RoundStore

    ckpt = tmp_path / "ck"
    with pytest.raises(ProtocolAbort):
        _flower(ckpt, LocalTransport(3, fault=_crash_at(3)), deploy={"max-retries": 0})
    with pytest.raises(ConfigError, match="another federated DPALS run"):
        _flower(ckpt, LocalTransport(3), epsilon=4.0)
    with pytest.raises(ConfigError, match="resume is off"):
        params, settings = parse_dpals_run_config({**_run_config(ckpt), "resume": False})
        DPALSCoordinator(LocalTransport(3), params, settings, say=lambda _: None).run()
    # a round started and neither recorded nor aborted (a crash mid-round): never asked again
    (ckpt / "dpals-run" / "round-003.started").write_text("")
    transport = LocalTransport(3)
    with pytest.raises(ConfigError, match="second release"):
        _flower(ckpt, transport)
    assert transport.calls.count("masked_input") == 0
    # a recorded round whose task differs from what this run would now ask: refused
    store = RoundStore(tmp_path / "other", {"a": 1}, resume=True)
    (tmp_path / "other" / "journal").touch()
    with pytest.raises(ConfigError, match="not a recorded round"):
        (tmp_path / "other" / "round-001.npz").write_bytes(b"junk")
        store.replay(1, "x", 4)
    store.close()


def _die_at(round_: int, action: str) -> Any:
    """A fault that kills the server (an exception that is no protocol abort) when the
    ``round_``-th secure sum reaches ``action``."""
    seen = {"n": 0}

    def fault(act: str, node: int, reply: Any) -> Any:
        if act == action and node == 100:
            seen["n"] += 1
            if seen["n"] >= round_:
                raise KeyboardInterrupt("server killed")
        return reply

    return fault


def test_a_server_killed_before_unmask_resumes_and_after_unmask_is_refused(
    tmp_path: Path,
) -> None:
    """A review: the round marker was written before key advertisement, so a server killed in
    any phase of a round could not resume — and the advice to start a new run re-released every
    round. Nothing can be decoded before the unmask phase, so the marker is now written just
    before it: killed earlier, the run resumes (the round is asked for again, at no cost);
    killed during unmask, it is still refused."""
    ckpt = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        _flower(ckpt, LocalTransport(3, fault=_die_at(3, "masked_input")))
    assert not (ckpt / "dpals-run" / "round-003.started").exists()
    transport = LocalTransport(3)
    resumed = _flower(ckpt, transport).model
    assert [bool(r.get("resumed")) for r in resumed.rounds_] == [True, True, False, False]
    ckpt = tmp_path / "ck2"
    with pytest.raises(KeyboardInterrupt):
        _flower(ckpt, LocalTransport(3, fault=_die_at(3, "unmask")))
    assert (ckpt / "dpals-run" / "round-003.started").exists()
    with pytest.raises(ConfigError, match="second release"):
        _flower(ckpt, LocalTransport(3))


def test_an_abort_after_the_unmask_request_is_not_retried(tmp_path: Path) -> None:
    """A second review: an attempt aborted in the unmask phase (too few valid replies) was
    retried for free, but the replies the server held decoded it offline — a second release.
    Once the unmask request is out, an abort ends the run and the round stays marked."""

    def drop_unmask(action: str, node: int, reply: Any) -> Any:
        return None if action == "unmask" and node != 100 else reply

    ckpt = tmp_path / "ck"
    transport = LocalTransport(3, fault=drop_unmask)
    with pytest.raises(ProtocolAbort, match="it is not retried"):
        _flower(ckpt, transport, deploy={"max-retries": 3})
    assert transport.calls.count("unmask") == 1
    assert (ckpt / "dpals-run" / "round-001.started").exists()
    assert (ckpt / "dpals-run" / "journal").read_text() == "start 1\n"
    with pytest.raises(ConfigError, match="second release"):
        _flower(ckpt, LocalTransport(3))


def test_a_hole_in_the_record_is_refused(tmp_path: Path) -> None:
    """A review: with round 1's file lost and round 2's kept, a resume asked the devices for
    round 1 again (a second release, one charge)."""
    ckpt = tmp_path / "ck"
    with pytest.raises(ProtocolAbort):
        _flower(ckpt, LocalTransport(3, fault=_crash_at(3)), deploy={"max-retries": 0})
    (ckpt / "dpals-run" / "round-001.npz").unlink()
    transport = LocalTransport(3)
    with pytest.raises(ConfigError, match="was recorded and round-001"):
        _flower(ckpt, transport)  # the journal remembers it
    (ckpt / "dpals-run" / "journal").unlink()
    with pytest.raises(ConfigError, match="journal' is missing but the folder holds rounds"):
        _flower(ckpt, transport)  # nor may the journal go missing
    assert transport.calls.count("masked_input") == 0


def test_nodes_check_a_dpals_task_before_reading_any_history() -> None:
    """The node's user solve (numba) has no bounds checks: a review had item factors shorter
    than the head read memory past the array for users holding the missing items. Tasks are
    now checked first; a bad one is refused for every hosted user alike."""
    import dataclasses

    from privrec.errors import MessageRejected
    from privrec.federated.dpals_devices import DeviceTask
    from privrec.federated.flower.dpals import check_task

    head = np.array([1, 4, 7])
    ok = DeviceTask("step", "step 1", 24, head=head, head_counts=np.ones(3),
                    item_factors=np.ones((3, 2)), scales=(1.0, 1.0, 1.0))  # fmt: skip
    check_task(ok, 24)
    # what honest servers send: large ridge solves at a tiny λ, many factors, large bounds
    check_task(dataclasses.replace(ok, item_factors=np.full((3, 2), 3.4e7)), 24)
    check_task(dataclasses.replace(ok, item_factors=np.ones((3, 1024)), bound=5_000_000), 24)
    bad = [
        ({"item_factors": np.ones((1, 2))}, "shape"),
        ({"item_factors": np.full((3, 2), 1e154)}, "at most"),
        ({"item_factors": np.ones((3, 1025))}, "shape"),
        ({"item_factors": np.full((3, 2), np.nan)}, "finite"),
        ({"head": np.array([1, 1, 7])}, "distinct"),
        ({"head": np.array([1, 4, 24])}, "outside"),
        ({"head_counts": np.ones(2)}, "counts"),
        ({"adaptive_exponent": -200.0}, "adaptive_exponent"),
        ({"alpha0": float("inf")}, "alpha0"),
        ({"user_regularization": 0.0}, "user_regularization"),
        ({"scales": (1.0, -1.0, 1.0)}, "scale"),
        ({"method": "lying"}, "method"),
        ({"n_items": 25}, "catalogue"),
    ]
    for change, match in bad:
        with pytest.raises(MessageRejected, match=match):
            check_task(dataclasses.replace(ok, **change), 24)
