"""The ledger around FederatedMF and cross-silo training (library and CLI), SQLite and PostgreSQL.

What these pin: a federated or cross-silo run reserves, before its first noisy release, exactly
the events a complete run records; every release passes the ledger hook before it is applied
(one the reservation does not hold is charged on top, or refused with nothing applied); their
events are proven only in RDP, so the ledger composes them with RDP — never the PLD of the
dominating Gaussian — and its ε is at least the model's own.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data import Interactions, synthetic
from privrec.errors import BudgetExceededError
from privrec.federated.mf import FederatedMFConfig, FederatedMFServer
from privrec.federated.model import FederatedMF
from privrec.federated.training import FaultModel, FederatedSimulation
from privrec.governance import ChargeSession
from privrec.governance.training import federated_events, federated_session
from privrec.models import load_model
from privrec.privacy.accounting import INTEGER_RDP_ORDERS, epsilon_of
from privrec.privacy.events import SpentEvent

from .conftest import LedgerSetup, make_setup

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _data() -> Interactions:
    return synthetic(n_users=300, n_items=40, seed=1)


def _rdp(event: dp_accounting.DpEvent, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant(orders=list(INTEGER_RDP_ORDERS))
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def _dataset_status(s: LedgerSetup) -> object:
    (status,) = [b for b in s.owner.status("ratings") if b.scope == "dataset"]
    return status


# ------------------------------------------------------------------ composition of RDP-only events
def test_rdp_only_charges_are_composed_with_rdp(setup: LedgerSetup) -> None:
    """A Gaussian event that only dominates an RDP bound must not be read through its PLD."""
    a = setup.analyst
    g4 = [SpentEvent("query", dp_accounting.GaussianDpEvent(4.0))]
    a.reserve("ratings", g4)
    pld_two = epsilon_of(dp_accounting.GaussianDpEvent(4.0 / np.sqrt(2)), 1e-6)
    rdp_two = _rdp(dp_accounting.GaussianDpEvent(4.0 / np.sqrt(2)), 1e-6)
    charge = a.reserve("ratings", g4, accountant="rdp")
    assert charge.events[0]["accountant"] == "rdp" and charge.epsilon == pytest.approx(
        _rdp(dp_accounting.GaussianDpEvent(4.0), 1e-6)
    )
    status = _dataset_status(setup)
    # the whole scope is composed with RDP now: larger than the PLD of the same events
    assert status.composed_epsilon == pytest.approx(rdp_two, rel=1e-9)  # type: ignore[attr-defined]
    assert rdp_two > pld_two


def test_private_tuning_is_charged_under_rdp_whatever_the_budget(setup: LedgerSetup) -> None:
    """Private tuning's repeat-and-select event has no PLD: under the default PLD budget its
    charge failed with dp-accounting's raw UnsupportedEventError; now it is composed with RDP,
    and the ledger's ε is the tuned model's."""
    from privrec.models import DPPopularity
    from privrec.tuning import private_tune

    data = setup.analyst.load("ratings", _data())
    with ChargeSession(setup.analyst, "ratings", kind="tuning", data=data) as session:
        res = private_tune(
            DPPopularity, [{}, {"bound_quantile": 0.5}], data.interactions, epsilon=2.0,
            delta=1e-6, release_gate=session.gate,
        )  # fmt: skip
        session.released()
        session.commit()
    status = _dataset_status(setup)
    assert status.composed_epsilon == pytest.approx(  # type: ignore[attr-defined]
        res.model.privacy_guarantee.epsilon, rel=1e-9
    )


# ------------------------------------------------------------------ FederatedMF through the ledger
def test_federated_training_is_charged_before_round_one(setup: LedgerSetup) -> None:
    """The reservation is exactly what the run records: the ledger's ε is the model's."""
    data = setup.analyst.load("ratings", _data())
    cfg = FederatedMFConfig.create(
        epsilon=0.8, delta=1e-6, rounds=3, clients_per_round=40, head_items=20, factors=4, seed=3
    )
    sim = FederatedSimulation(cfg, data.interactions.matrix)
    planned = federated_events(sim.server)
    assert [p.label for p in planned] == [
        "counting round (noisy item counts and history lengths)",
        "rounds 1-3",
    ]
    with federated_session(setup.analyst, "ratings", sim.server, data=data) as cs:
        assert setup.analyst.history("ratings")[0].status == "reserved"  # before round 1
        sim.run()
        cs.released()
        cs.commit(result={"rounds": sim.server.round})
    spent = sim.server.guarantee()
    assert [s.to_dict() for s in spent.spent_events] == [p.to_dict() for p in planned]
    status = _dataset_status(setup)
    assert status.committed == 1 and cs.top_ups == []  # type: ignore[attr-defined]
    assert status.composed_epsilon == pytest.approx(spent.epsilon, rel=1e-9)  # type: ignore[attr-defined]
    assert status.composed_epsilon <= 0.8 + 1e-6  # type: ignore[attr-defined]
    # a second federated run that would exceed the budget is refused before round one
    big = FederatedMFConfig.create(
        epsilon=3.0, delta=1e-6, rounds=3, clients_per_round=40, head_items=20, factors=4
    )
    sim2 = FederatedSimulation(big, data.interactions.matrix)
    with pytest.raises(BudgetExceededError):
        federated_session(setup.analyst, "ratings", sim2.server, data=data)
    assert sim2.server.round == 0 and sim2.server.spent == []


def test_fewer_survivors_than_expected_never_under_report(setup: LedgerSetup) -> None:
    """Faults: devices drop in every phase, rounds complete with fewer survivors (or abort and
    retry). The ledger still holds at least what the model spent."""
    data = setup.analyst.load("ratings", _data())
    cfg = FederatedMFConfig.create(
        epsilon=1.0, delta=1e-6, rounds=4, clients_per_round=60, head_items=20, factors=4, seed=5
    )
    faults = FaultModel(dropout=0.12, seed=2)
    sim = FederatedSimulation(cfg, data.interactions.matrix, faults=faults, max_retries=8)
    srv = sim.server
    with federated_session(setup.analyst, "ratings", srv, data=data) as cs:
        sim.run()
        cs.released()
        cs.commit(result={"rounds": srv.round})
    rounds = [h for h in srv.history if not h.get("aborted")]
    assert len(rounds) == 4
    honest = [h["honest_survivors"] for h in rounds]
    sampled = [r["sampled"] for r in sim.reports if not r["aborted"]]
    assert any(h["survivors"] < n for h, n in zip(rounds, sampled, strict=False))  # faults hit
    assert min(honest) >= srv.noise_shares and len(set(honest)) > 1  # cohorts differ ...
    status = _dataset_status(setup)
    eps_model = srv.guarantee().epsilon
    # ... the charge does not: never below what the model spent
    assert status.composed_epsilon >= eps_model - 1e-12  # type: ignore[attr-defined]
    assert status.composed_epsilon == pytest.approx(eps_model, rel=1e-9)  # type: ignore[attr-defined]
    assert cs.top_ups == []


def test_releases_beyond_the_reservation_are_charged_on_top_or_refused(ledger_url: str) -> None:
    """A round the reservation does not hold (here: more rounds than planned) is charged before
    it is applied, or refused with nothing of it applied when the budget cannot take it."""
    cfg = FederatedMFConfig.create(
        noise_multiplier=3.0, delta=1e-6, rounds=2, sampling_rate=0.2, head_items=None, factors=2
    )
    srv = FederatedMFServer(cfg, n_items=3, population=1000)
    count = srv.planned_events()[0].event  # the counting round, always first

    def rounds(n: int) -> float:
        run = dp_accounting.SelfComposedDpEvent(srv.planned_round_event(), n)
        return _rdp(dp_accounting.ComposedDpEvent([count, run]), 1e-6)

    one_round, two, three, four = (rounds(n) for n in (1, 2, 3, 4))
    assert one_round < two < three < four
    policy = {
        "purpose": "r",
        "unit": "user",
        "budget": {"epsilon": (three + four) / 2, "delta": 1e-6},
    }
    s = make_setup(ledger_url, policy)
    session = federated_session(s.analyst, "ratings", srv)
    top = srv._count_sizes()[2]
    srv.select_head(np.zeros(srv.count_dim), survivors=srv.round_min_survivors(top, "count"))
    step = np.zeros(srv.item_factors.size)
    for _ in range(3):  # the third round is beyond the reservation: topped up
        srv.apply(step, 200.0, 100.0, survivors=srv.min_survivors)
    assert len(session.top_ups) == 1 and session.top_ups[0].status == "reserved"
    assert _dataset_status(s).composed_epsilon == pytest.approx(three, rel=1e-9)  # type: ignore[attr-defined]
    y3 = srv.item_factors.copy()
    with pytest.raises(BudgetExceededError):  # a fourth would pass the cap: refused
        srv.apply(step, 200.0, 100.0, survivors=srv.min_survivors)
    assert srv.round == 3 and np.array_equal(srv.item_factors, y3)
    assert srv.epsilon() == pytest.approx(three, rel=1e-9)
    session.commit(result={"rounds": 3})
    assert {c.status for c in s.analyst.history("ratings")} == {"committed"}


@pytest.mark.parametrize("kind", ["federated_dpals", "federated_mf"])
def test_governed_training_of_distributed_models_is_charged_under_rdp(
    setup: LedgerSetup, tmp_path: Path, kind: str
) -> None:
    """``train`` (the path of ``privrec train --dataset``) reserves a distributed model's events
    with ``accountant="rdp"``: the charge is their RDP ε, never the smaller PLD of the same
    dominating Gaussians, and the model's own ε (RDP) is what the ledger holds."""
    from privrec.federated import FederatedDPALS

    data = setup.analyst.load("ratings", _data())
    model: FederatedDPALS | FederatedMF
    if kind == "federated_dpals":
        model = FederatedDPALS(epsilon=0.8, delta=1e-6, seed=0, factors=2, max_per_user=5)
    else:
        model = FederatedMF(epsilon=0.8, delta=1e-6, rounds=2, factors=2, head_items=10, seed=0)
    assert model.rdp_only_events
    rec = setup.analyst.train(model, data, output=tmp_path / "m.npz")
    (charge,) = setup.analyst.history("ratings")
    assert charge.status == "committed"
    assert all(e.get("accountant") == "rdp" for e in charge.events)
    spent = dp_accounting.ComposedDpEvent([s.event for s in model.guarantee_.spent_events])
    assert charge.epsilon == pytest.approx(_rdp(spent, 1e-6), rel=1e-9)
    assert charge.epsilon > epsilon_of(spent, 1e-6)  # the PLD reading would under-charge
    assert charge.epsilon >= model.guarantee_.epsilon - 1e-9 and rec.path.exists()
    # the audit re-derives the charge as it was composed (RDP), not as the budget's PLD would
    from privrec.risk.check import CheckConfig, run_check

    cfg = {"url": setup.url, "api_key": setup.auditor_key}
    rep = run_check(CheckConfig(ledger=cfg))  # type: ignore[arg-type]
    assert not [f for f in rep.findings if f.level == "violation"], rep.findings


def test_federated_mf_through_train_is_refused_before_round_one(
    setup: LedgerSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FederatedMF announces its rounds before the first one: over budget, no round runs."""
    data = setup.analyst.load("ratings", _data())
    ran: list[int] = []
    monkeypatch.setattr(FederatedSimulation, "run", lambda self, **kw: ran.append(1))
    model = FederatedMF(epsilon=50.0, delta=1e-6, rounds=2, factors=2, head_items=10, seed=0)
    with pytest.raises(BudgetExceededError):
        setup.analyst.train(model, data, output=tmp_path / "m.npz")
    assert ran == [] and not (tmp_path / "m.npz").exists()


# ------------------------------------------------------------------ the CLIs
def _split_folder(folder: Path, n_users: int = 240, n_items: int = 20) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    files: dict[str, list[str]] = {"train.txt": [], "valid.txt": [], "test.txt": []}
    for u in range(n_users):
        own = rng.permutation(np.arange(u % 2, n_items, 2))[:7]
        parts = {"train.txt": own[:5], "valid.txt": own[5:6], "test.txt": own[6:]}
        for name, items in parts.items():
            files[name].append(" ".join(str(v) for v in [u, *items.tolist()]))
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_federated_simulate_charges_the_ledger(ledger_url: str, tmp_path: Path) -> None:
    s = make_setup(ledger_url)
    data = _split_folder(tmp_path / "split")
    model = tmp_path / "fed.npz"
    args = [
        "federated", "simulate", "-d", str(data), "--epsilon", "1.8", "--delta", "1e-6",
        "--rounds", "2", "--clients-per-round", "80", "--head-items", "10", "--factors", "2",
        "--dataset", "ratings", "--ledger", ledger_url, "--out", str(model),
    ]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"PRIVREC_API_KEY": s.analyst_key})
    assert res.exit_code == 0, res.output
    assert "reserved on 'ratings' before round 1" in res.output and "committed" in res.output
    (charge,) = s.analyst.history("ratings")
    assert charge.status == "committed" and charge.kind == "federated"
    art = s.analyst.artifact(model)
    assert art.model_kind == "federated_mf" and art.version_id is not None
    loaded = load_model(model)
    assert isinstance(loaded, FederatedMF) and loaded.n_users_ == 0
    assert _dataset_status(s).composed_epsilon == pytest.approx(  # type: ignore[attr-defined]
        loaded.guarantee_.epsilon, rel=1e-9
    )
    # a second run would pass the cap (2): refused before round 1, in one line, nothing written
    again = CliRunner().invoke(
        app, [*args[:-1], str(tmp_path / "again.npz")], env={"PRIVREC_API_KEY": s.analyst_key}
    )
    assert again.exit_code == 1 and "refused" in again.output
    assert "Traceback" not in again.output and not (tmp_path / "again.npz").exists()
    assert len(s.analyst.history("ratings")) == 1


def test_federated_simulate_records_its_signer(ledger_url: str, tmp_path: Path) -> None:
    """``--sign-key`` through the ledger: the released file verifies with the public key and
    the artifact's recorded signer is that key's fingerprint."""
    from privrec.models.signing import fingerprint, generate_keypair, load_verify_key

    s = make_setup(ledger_url)
    private, public = generate_keypair(tmp_path / "keys")
    model = tmp_path / "fed.npz"
    # ε = 0.5, not 1.8: the larger noise multiplier it calibrates to has a narrower privacy-loss
    # distribution, so calibrating and re-verifying on load take 6 s instead of 12 s
    args = [
        "federated", "simulate", "-d", str(_split_folder(tmp_path / "split")), "--epsilon", "0.5",
        "--delta", "1e-6", "--rounds", "1", "--clients-per-round", "80", "--head-items", "10",
        "--factors", "2", "--aggregation", "central", "--dataset", "ratings",
        "--ledger", ledger_url, "--out", str(model), "--sign-key", str(private),
    ]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"PRIVREC_API_KEY": s.analyst_key})
    assert res.exit_code == 0, res.output
    loaded = load_model(model, verify_key=public)
    assert loaded.file_signature_ is not None and loaded.file_signature_.verified
    assert s.analyst.artifact(model).signer == fingerprint(load_verify_key(public))


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[Path, list[threading.Thread], list[object]]]:
    """Keys, two aggregation servers and three silos running in threads (real loopback TCP);
    the test drives them with ``privrec silo train``."""
    from privrec.secure.silo import AggregationServer, Silo, SiloConfig, setup_keys

    keys = tmp_path / "keys"
    roster, ids = setup_keys(keys, 3)
    cfg = SiloConfig(
        epsilon=2.0, delta=1e-6, n_items=30, factors=2, head_min=10, count_sample=1000, iterations=2
    )
    (tmp_path / "run.json").write_text(cfg.model_dump_json())
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((150, 30)) < 0.2).astype(np.float64))
    cuts = [0, 50, 100, 150]
    roles: list[object] = [
        AggregationServer(ids[n], roster, timeout=20, config=cfg) for n in ("server0", "server1")
    ]
    roles += [
        Silo(ids[f"silo{i + 1}"], roster, sp.csr_matrix(x[a:b]), timeout=20, config=cfg)
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]
    threads = [threading.Thread(target=r.run, daemon=True) for r in roles]  # type: ignore[attr-defined]
    for t in threads:
        t.start()
    yield tmp_path, threads, roles
    for t in threads:
        t.join(timeout=30)


def test_silo_train_charges_the_ledger_before_the_first_release(
    ledger_url: str, federation: tuple[Path, list[threading.Thread], list[object]]
) -> None:
    folder, threads, _ = federation
    s = make_setup(ledger_url)
    out = folder / "silo-model.npz"
    args = [
        "silo", "train", "--roster", str(folder / "keys" / "roster.json"),
        "--key", str(folder / "keys" / "driver.key"), "--config", str(folder / "run.json"),
        "--checkpoint", str(folder / "ck"), "--out", str(out), "--timeout", "20",
        "--dataset", "ratings", "--ledger", ledger_url,
    ]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"PRIVREC_API_KEY": s.analyst_key})
    assert res.exit_code == 0, res.output
    for t in threads:
        t.join(timeout=30)
    assert "reserved on 'ratings' before the first release" in res.output
    (charge,) = s.analyst.history("ratings")
    assert charge.status == "committed" and charge.kind == "cross-silo"
    assert all(e["accountant"] == "rdp" for e in charge.events)
    model = load_model(out)
    # the reservation is exactly what the run released, and the ledger holds at least its ε
    assert [e["label"] for e in charge.events] == [e["label"] for e in model.guarantee_.events]
    assert _dataset_status(s).composed_epsilon >= model.guarantee_.epsilon - 1e-9  # type: ignore[attr-defined]
    art = s.analyst.artifact(out)
    assert art.model_kind == "dpals" and art.dataset_hash == "" and art.version_id is None


def test_silo_reservation_is_refused_before_any_party_is_contacted(
    ledger_url: str, tmp_path: Path
) -> None:
    from privrec.secure.silo import SiloConfig, setup_keys

    setup_keys(tmp_path / "keys", 2)
    cfg = SiloConfig(epsilon=5.0, delta=1e-6, n_items=30, factors=2, iterations=2)
    (tmp_path / "run.json").write_text(cfg.model_dump_json())
    s = make_setup(ledger_url)  # a budget of ε = 2: the run's 5 cannot fit
    args = [
        "silo", "train", "--roster", str(tmp_path / "keys" / "roster.json"),
        "--key", str(tmp_path / "keys" / "driver.key"), "--config", str(tmp_path / "run.json"),
        "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "m.npz"), "--timeout", "2",
        "--dataset", "ratings", "--ledger", ledger_url,
    ]  # fmt: skip
    res = CliRunner().invoke(app, args, env={"PRIVREC_API_KEY": s.analyst_key})
    assert res.exit_code == 1 and "refused" in res.output, res.output
    assert "no connection" not in res.output  # refused before connecting to anyone
    assert s.analyst.history("ratings") == [] and not (tmp_path / "m.npz").exists()


def test_cross_silo_driver_plans_exactly_its_releases(tmp_path: Path) -> None:
    from privrec.secure.silo import SiloConfig, SiloEASEConfig, make_driver, setup_keys
    from privrec.secure.silo_config import ease_noise, noise_scale

    roster, ids = setup_keys(tmp_path, 2)
    c = SiloConfig(epsilon=2.0, delta=1e-6, n_items=30, factors=2, iterations=3)
    planned = make_driver(ids["driver"], roster, c).planned_events()
    assert len(planned) == 1 + 3 * 3 and planned[0].label == "noisy item counts"
    assert planned[-1].label == "step 3: noisy item right-hand sides"
    # the planned events are the calibration's: ε at most the asked budget
    from privrec.privacy.events import total_event

    sigma, _ = noise_scale(c)
    assert sigma > 0 and epsilon_of(total_event(planned), 1e-6, "rdp") <= 2.0 + 1e-9
    e = SiloEASEConfig(epsilon=2.0, delta=1e-6, n_items=30)
    ease = make_driver(ids["driver"], roster, e).planned_events()
    assert [p.label for p in ease] == (
        ["noisy item counts (head selection)", "noisy item Gram matrix"]
        if e.restricted
        else ["noisy item Gram matrix"]
    )
    assert ease_noise(e)[0] > 0
    assert isinstance(ChargeSession, type)
