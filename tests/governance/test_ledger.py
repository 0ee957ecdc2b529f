"""The ledger on SQLite and PostgreSQL: write-ahead charges, composition, roles, training, lineage."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import ClassVar

import dp_accounting
import numpy as np
import pytest
import sqlalchemy as sa

from privrec.data import Interactions, synthetic
from privrec.errors import (
    AuthenticationError,
    BudgetExceededError,
    GovernanceError,
    LedgerSchemaError,
    PermissionDeniedError,
    PolicyViolation,
    UnknownDatasetError,
)
from privrec.governance import Ledger
from privrec.governance.db import HEAD_REVISION, KNOWN_REVISIONS, MIGRATIONS, create_ledger_engine
from privrec.models.dp_popularity import DPPopularity
from privrec.models.popularity import Popularity
from privrec.privacy.accounting import epsilon_of
from privrec.privacy.events import SpentEvent

from .conftest import LedgerSetup


def gauss(z: float, label: str = "query") -> list[SpentEvent]:
    return [SpentEvent(label, dp_accounting.GaussianDpEvent(z))]


def audit_rows(s: LedgerSetup) -> int:
    with create_ledger_engine(s.url).connect() as c:
        return int(c.exec_driver_sql("SELECT count(*) FROM audit_log").scalar_one())


def small_data() -> Interactions:
    return synthetic(n_users=200, n_items=40, seed=1)


# ----------------------------------------------------------------------------- composition
def test_reserve_composes_with_dp_accounting_and_refuses_past_the_cap(setup: LedgerSetup) -> None:
    a = setup.analyst
    one = epsilon_of(dp_accounting.GaussianDpEvent(4.0), 1e-6)
    n = 0
    with pytest.raises(BudgetExceededError) as info:
        while True:
            a.reserve("ratings", gauss(4.0))
            n += 1
    # the composed cost of n Gaussians z=4 is one Gaussian z=4/√n (exact)
    assert epsilon_of(dp_accounting.GaussianDpEvent(4.0 / np.sqrt(n)), 1e-6) <= 2.0
    assert epsilon_of(dp_accounting.GaussianDpEvent(4.0 / np.sqrt(n + 1)), 1e-6) > 2.0
    (status,) = setup.owner.status("ratings")
    assert status.composed_epsilon <= 2.0 < status.naive_epsilon
    assert status.naive_epsilon == pytest.approx(n * one)
    assert status.reserved == n
    msg = str(info.value)
    assert "\n" not in msg and f"{2.0 - status.composed_epsilon:.4g}" in msg
    assert info.value.remaining == pytest.approx(2.0 - status.composed_epsilon)


def test_non_gaussian_charges_group_and_compose(setup: LedgerSetup) -> None:
    ev = [
        SpentEvent(
            "rounds",
            dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.5)),
        )
    ]
    for _ in range(3):
        setup.analyst.reserve("ratings", ev, kind="federated")
    (status,) = setup.owner.status("ratings")
    expected = epsilon_of(dp_accounting.SelfComposedDpEvent(ev[0].event, 3), 1e-6)
    assert status.composed_epsilon == pytest.approx(expected, rel=1e-6)


def test_commit_abort_and_idempotent_replay(setup: LedgerSetup) -> None:
    a = setup.analyst
    c = a.reserve("ratings", gauss(10.0), idempotency_key="q-1", kind="query")
    assert c.status == "reserved" and not c.replayed
    done = a.commit(c, result={"answer": [1.5, 2.5]})
    assert done.status == "committed"
    again = a.reserve("ratings", gauss(10.0), idempotency_key="q-1")
    assert again.replayed and again.id == c.id and again.result == {"answer": [1.5, 2.5]}
    assert len(a.history("ratings")) == 1
    with pytest.raises(GovernanceError, match="different request"):
        a.reserve("ratings", gauss(9.0), idempotency_key="q-1")
    with pytest.raises(GovernanceError, match="different request"):  # same noise, other question
        a.reserve("ratings", gauss(10.0), idempotency_key="q-1", description="top 5 items")
    b = a.reserve("ratings", gauss(10.0))
    a.abort(b, reason="stopped before drawing noise")
    (status,) = setup.owner.status("ratings")
    assert (status.committed, status.reserved, status.aborted) == (1, 0, 1)
    with pytest.raises(GovernanceError):
        a.abort(done, reason="too late")


def test_scoped_budgets_analyst_and_purpose(setup: LedgerSetup) -> None:
    setup.owner.set_budget("ratings", scope="analyst", value="ann", epsilon=0.5, delta=1e-6)
    setup.owner.set_budget("ratings", scope="purpose", value="ads", epsilon=0.3, delta=1e-6)
    with pytest.raises(BudgetExceededError, match="analyst 'ann'"):
        setup.analyst.reserve("ratings", gauss(5.0))
    setup.analyst.reserve("ratings", gauss(20.0))
    with pytest.raises(BudgetExceededError, match="purpose 'ads'"):
        setup.analyst.reserve("ratings", gauss(12.0), purpose="ads")
    scopes = {(s.scope, s.scope_value) for s in setup.analyst.status("ratings")}
    assert ("analyst", "ann") in scopes
    # purpose limitation: a purpose neither the policy's nor given a budget is refused (a
    # renamed purpose — "Ads", "ads " — would otherwise slip past the "ads" cap); nothing charged
    n = len(setup.analyst.history("ratings"))
    for other in ("Ads", "ads ", "no such purpose"):
        with pytest.raises(PolicyViolation, match="not declared"):
            setup.analyst.reserve("ratings", gauss(12.0), purpose=other)
    assert len(setup.analyst.history("ratings")) == n


# ----------------------------------------------------------------------------- roles and input
def test_roles_are_enforced_and_refusals_write_nothing(setup: LedgerSetup) -> None:
    before = audit_rows(setup)
    with pytest.raises(PermissionDeniedError, match="ann is analyst"):
        setup.analyst.set_budget("ratings", epsilon=100.0, delta=1e-6)
    with pytest.raises(PermissionDeniedError):
        setup.analyst.create_key("mallory", "owner")
    with pytest.raises(PermissionDeniedError):
        setup.auditor.reserve("ratings", gauss(3.0))
    with pytest.raises(PermissionDeniedError):
        setup.owner.reserve("ratings", gauss(3.0))
    with pytest.raises(PermissionDeniedError):
        setup.analyst.verify_audit_log()
    with pytest.raises(PermissionDeniedError):
        setup.auditor.forget("ratings", 3)
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'nope'"):
        setup.analyst.reserve("nope", gauss(3.0))
    with pytest.raises(GovernanceError, match="invalid budget"):
        setup.owner.set_budget("ratings", epsilon=-1.0, delta=1e-6)
    assert audit_rows(setup) == before
    assert setup.auditor.verify_audit_log().ok
    assert setup.auditor.history() == []


def test_weak_caps_warn_and_absurd_caps_are_typed_errors(setup: LedgerSetup) -> None:
    from privrec.errors import PrivacyWarning

    owner = setup.owner
    before = audit_rows(setup)
    for eps, delta in [
        (float("nan"), 1e-6), (float("inf"), 1e-6), (0.0, 1e-6), (-1.0, 1e-6),
        (1.0, 1.0), (1.0, float("nan")), (1.0, float("inf")), (1.0, 0.0),
    ]:  # fmt: skip
        with pytest.raises(GovernanceError, match="invalid budget"):
            owner.set_budget("ratings", epsilon=eps, delta=delta)
    assert audit_rows(setup) == before  # refused before anything was written
    # no version registered yet: ε > 10 and δ ≥ 0.01 warn (the rule training uses)
    with pytest.warns(PrivacyWarning, match=r"budget cap: epsilon=1e\+308 is a weak guarantee"):
        owner.set_budget("ratings", epsilon=1e308, delta=1e-6)
    with pytest.warns(PrivacyWarning, match="budget cap: delta=1 is a weak guarantee"):
        owner.set_budget("ratings", scope="analyst", value="ann", epsilon=1.0, delta=0.999999999999)
    # with a version registered, δ is held against one over its number of users
    version = setup.analyst.load("ratings", small_data())
    n = version.interactions.n_users
    assert 100 < n <= 200
    with pytest.warns(PrivacyWarning, match=f"not below 1/{n}"):
        owner.set_budget("ratings", scope="purpose", value="ads", epsilon=1.0, delta=0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        status = owner.set_budget("ratings", epsilon=2.0, delta=1e-6)
    assert status.epsilon == 2.0
    # registering a policy with a weak cap warns too
    from privrec.governance.policy import policy_from_dict

    from .conftest import POLICY

    weak = policy_from_dict({**POLICY, "budget": {"epsilon": 50.0, "delta": 1e-6}})
    with pytest.warns(PrivacyWarning, match="epsilon=50 is a weak"):
        owner.set_policy("ratings", weak)


def test_keys_are_scrypt_hashed_and_revocable(setup: LedgerSetup) -> None:
    with create_ledger_engine(setup.url).connect() as c:
        stored = c.exec_driver_sql("SELECT hash, params FROM api_keys").all()
    secrets = {setup.owner_key, setup.analyst_key, setup.auditor_key}
    assert all(h not in k for h, _ in stored for k in secrets)
    assert all(p.startswith("scrypt:") for _, p in stored)
    key_id = setup.analyst_key.split("_")[1]
    setup.owner.revoke_key(key_id)
    with pytest.raises(AuthenticationError):
        Ledger.connect(setup.url, setup.analyst_key)
    with pytest.raises(AuthenticationError):
        Ledger.connect(setup.url, setup.analyst_key[:-2] + "xx")
    with pytest.raises(AuthenticationError, match="malformed"):
        Ledger.connect(setup.url, "hello")


def test_uninitialised_and_newer_schema_are_refused(setup: LedgerSetup, tmp_path: Path) -> None:
    with pytest.raises(LedgerSchemaError, match="ledger init"):
        Ledger.connect(f"sqlite:///{tmp_path / 'empty.db'}", setup.owner_key)
    before = audit_rows(setup)
    with create_ledger_engine(setup.url).begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(LedgerSchemaError, match="newer than this privrec"):
        Ledger.connect(setup.url, setup.owner_key)
    with pytest.raises(LedgerSchemaError, match="newer"):
        Ledger.init(setup.url, owner="x")
    with create_ledger_engine(setup.url).begin() as c:
        c.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{HEAD_REVISION}'")
    assert audit_rows(setup) == before


def test_known_revisions_match_the_shipped_migrations() -> None:
    scripts = sorted(p.name.split("_")[0] for p in (MIGRATIONS / "versions").glob("*.py"))
    assert tuple(scripts) == KNOWN_REVISIONS


def test_init_twice_is_refused(setup: LedgerSetup) -> None:
    with pytest.raises(GovernanceError, match="already initialised"):
        Ledger.init(setup.url, owner="eve")


# ----------------------------------------------------------------------------- training
def _dp_pop(eps: float = 1.0) -> DPPopularity:
    return DPPopularity(epsilon=eps, delta=1e-6, unit="user", max_per_user=20)


def test_training_through_the_ledger_records_the_artifact(
    setup: LedgerSetup, tmp_path: Path
) -> None:
    data = setup.analyst.load("ratings", small_data())
    rec = setup.analyst.train(_dp_pop(), data, output=tmp_path / "m.npz")
    assert rec.charge.status == "committed" and rec.path.exists()
    art = setup.auditor.artifact(rec.path)
    assert art.id == rec.artifact.id and art.model_kind == "dppopularity"
    assert art.dataset_hash == data.content_hash and art.version_id == data.version_id
    assert art.charge_ids == (rec.charge.id,) and not art.seeded_noise
    assert art.guarantee["events"] == rec.charge.events
    assert art.config["epsilon"] == 1.0
    # the reserved events are exactly what the model released
    assert [e["event"] for e in rec.charge.events] == [
        s.to_dict()["event"] for s in rec.model.guarantee_.spent_events
    ]


def test_training_refusals(setup: LedgerSetup, tmp_path: Path) -> None:
    raw = small_data()
    with pytest.raises(PolicyViolation, match="did not pass through"):
        setup.analyst.train(_dp_pop(), raw, output=tmp_path / "a.npz")  # type: ignore[arg-type]
    data = setup.analyst.load("ratings", raw)
    with pytest.raises(PolicyViolation, match="not differentially private"):
        setup.analyst.train(Popularity(), data, output=tmp_path / "b.npz")
    with pytest.raises(PolicyViolation, match="user level"):
        setup.analyst.train(
            DPPopularity(epsilon=1.0, delta=1e-6, unit="interaction"),
            data,
            output=tmp_path / "c.npz",
        )
    before = audit_rows(setup)
    with pytest.raises(BudgetExceededError, match="remaining"):
        setup.analyst.train(_dp_pop(3.0), data, output=tmp_path / "d.npz")
    assert audit_rows(setup) == before
    assert not list(tmp_path.glob("*.npz"))


def test_two_retrains_then_refusal(setup: LedgerSetup, tmp_path: Path) -> None:
    data = setup.analyst.load("ratings", small_data())
    for i in range(2):
        setup.analyst.train(_dp_pop(1.2), data, output=tmp_path / f"m{i}.npz")
    (status,) = setup.analyst.status("ratings")
    assert status.composed_epsilon < status.naive_epsilon and status.committed == 2
    assert status.composed_epsilon <= 2.0
    with pytest.raises(BudgetExceededError):
        setup.analyst.train(_dp_pop(1.2), data, output=tmp_path / "m3.npz")
    assert not (tmp_path / "m3.npz").exists()


class _Spy(DPPopularity):
    """DPPopularity that remembers the matrix it was fitted on."""

    seen: ClassVar[list[Interactions]] = []

    def _fit(self, data, config):  # type: ignore[no-untyped-def]
        _Spy.seen.append(data)
        super()._fit(data, config)


def test_forgotten_user_is_absent_from_later_trainings(setup: LedgerSetup, tmp_path: Path) -> None:
    raw = small_data()
    gone = raw.user_ids[7]
    first = setup.analyst.load("ratings", raw)
    setup.analyst.train(_Spy(epsilon=0.5, delta=1e-6, unit="user"), first, output=tmp_path / "a")
    assert gone in _Spy.seen[-1].user_ids
    setup.owner.forget("ratings", gone, reason="GDPR art. 17")
    with pytest.raises(PolicyViolation, match="load it again"):
        setup.analyst.train(
            _Spy(epsilon=0.5, delta=1e-6, unit="user"), first, output=tmp_path / "b"
        )
    second = setup.analyst.load("ratings", raw)
    assert second.report.step("deletion").users_dropped == 1
    setup.analyst.train(_Spy(epsilon=0.5, delta=1e-6, unit="user"), second, output=tmp_path / "c")
    seen = _Spy.seen[-1]
    assert gone not in seen.user_ids and seen.n_users == raw.n_users - 1
    assert seen.nnz == raw.nnz - int(raw.user_counts[7])
    # lineage: the person is in the first artifact only
    lin = setup.auditor.lineage_of_user(gone)
    assert [x.artifact.path for x in lin] == [str((tmp_path / "a.npz").resolve())]
    assert lin[0].trained_before_deletion
    assert setup.auditor.lineage_of_user(raw.user_ids[8])  # still present everywhere
    with pytest.raises(PermissionDeniedError):
        setup.analyst.lineage_of_user(gone)


def test_retrain_required_by_policy(ledger_url: str, tmp_path: Path) -> None:
    from .conftest import POLICY, make_setup

    s = make_setup(ledger_url, {**POLICY, "deletion": {"retrain_within_days": 30}})
    raw = small_data()
    data = s.analyst.load("ratings", raw)
    s.analyst.train(_dp_pop(0.5), data, output=tmp_path / "a")
    assert s.owner.retrains_due() == []
    s.owner.forget("ratings", raw.user_ids[0])
    (due,) = s.owner.retrains_due()
    assert due.retrain_due == pytest.approx(due.deletion_requested_at + 30 * 86400)


def test_consent_withdrawn_after_training_makes_a_retrain_due(
    ledger_url: str, tmp_path: Path
) -> None:
    """Consent withdrawn after a model was trained calls for a retrain like a deletion does
    (the policy requires consent kept in the ledger); a later grant ends it."""
    from .conftest import POLICY, make_setup

    policy = {**POLICY, "consent": {"required": True}, "deletion": {"retrain_within_days": 7}}
    s = make_setup(ledger_url, policy)
    raw = small_data()
    s.owner.import_consents("ratings", [(u, True) for u in raw.user_ids])
    data = s.analyst.load("ratings", raw)
    s.analyst.train(_dp_pop(0.5), data, output=tmp_path / "a")
    assert s.owner.retrains_due() == []
    who, bystander = raw.user_ids[0], raw.user_ids[1]
    s.owner.import_consents("ratings", [(who, False)])
    s.owner.import_consents("ratings", [(who, False)])  # a repeat does not push the date back
    (due,) = s.owner.retrains_due()
    assert due.deletion_requested_at is None and due.consent_withdrawn_at is not None
    assert due.retrain_due == pytest.approx(due.consent_withdrawn_at + 7 * 86400)
    assert due.reason == "withdrawn consent" and due.trained_before_withdrawal
    (mine,) = s.owner.lineage_of_user(who)
    assert mine.consent_withdrawn_at == due.consent_withdrawn_at
    assert mine.retrain_due == pytest.approx(due.retrain_due)
    (theirs,) = s.owner.lineage_of_user(bystander)
    assert theirs.consent_withdrawn_at is None and theirs.retrain_due is None
    # a model trained after the withdrawal (on a fresh load, without the person) owes nothing
    s.analyst.train(_dp_pop(0.5), s.analyst.load("ratings", raw), output=tmp_path / "b")
    assert [d.artifact.id for d in s.owner.retrains_due()] == [due.artifact.id]
    s.owner.forget("ratings", who)
    (both,) = s.owner.retrains_due()
    assert both.reason == "asked to be deleted and withdrawn consent"
    assert both.retrain_due == pytest.approx(due.retrain_due)  # the earlier of the two counts
    s.owner.import_consents("ratings", [(bystander, True), (who, True)])
    (left,) = s.owner.retrains_due()
    assert left.reason == "asked to be deleted" and left.consent_withdrawn_at is None


def test_withdrawal_without_required_consent_calls_for_no_retrain(
    ledger_url: str, tmp_path: Path
) -> None:
    from .conftest import POLICY, make_setup

    s = make_setup(ledger_url, {**POLICY, "deletion": {"retrain_within_days": 7}})
    raw = small_data()
    s.analyst.train(_dp_pop(0.5), s.analyst.load("ratings", raw), output=tmp_path / "a")
    s.owner.import_consents("ratings", [(raw.user_ids[0], False)])  # consent not required
    assert s.owner.retrains_due() == []


def test_listing_ten_thousand_charges_is_fast(setup: LedgerSetup) -> None:
    """Bulk-insert 10,000 charges (bypassing reserve only for set-up speed) and read them back."""
    import json
    import time

    from privrec.governance.composition import ChargeEvents

    ce = ChargeEvents(gauss(200.0))
    eng = create_ledger_engine(setup.url)
    now = time.time()
    with eng.begin() as c:
        did = c.exec_driver_sql("SELECT id FROM datasets").scalar_one()
        c.execute(
            sa.text(
                "INSERT INTO charges (dataset_id, actor, purpose, kind, description, events_json, "
                "gaussian_rate, epsilon, status, note, created_at, updated_at) VALUES (:d, 'ann', "
                "'recommendations', 'query', '', :e, :r, 0.01, 'committed', '', :t, :t)"
            ),
            [{"d": did, "e": ce.json, "r": ce.gaussian_rate, "t": now + i} for i in range(10_000)],
        )
    (status,) = setup.owner.status("ratings")
    expected = epsilon_of(dp_accounting.GaussianDpEvent(200.0 / np.sqrt(10_000)), 1e-6)
    assert status.composed_epsilon == pytest.approx(expected, rel=1e-9)
    assert status.committed == 10_000
    assert len(setup.owner.history("ratings", limit=None)) == 10_000
    curve = setup.owner.spend_over_time("ratings", points=20)
    assert 10 <= len(curve) <= 20 and curve[-1][1] == pytest.approx(expected, rel=1e-9)
    assert all(a[1] < b[1] for a, b in itertools.pairwise(curve))
    assert json.loads(ce.json)[0]["label"] == "query"
    # the hand-inserted rows were never logged: the audit check notices
    assert not setup.auditor.verify_audit_log().ok


def test_seeded_noise_is_flagged(setup: LedgerSetup, tmp_path: Path) -> None:
    data = setup.analyst.load("ratings", small_data())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = setup.analyst.train(
            DPPopularity(epsilon=0.5, delta=1e-6, unit="user", seed=3), data, output=tmp_path / "s"
        )
    assert rec.artifact.seeded_noise


def test_an_analyst_reads_only_their_own_dataset_versions(setup: LedgerSetup) -> None:
    """A version's policy report holds exact counts (one deleted person's interactions)."""
    from privrec.governance import Ledger

    data = synthetic(n_users=30, n_items=10, seed=0)
    mine = setup.analyst.load("ratings", data)
    assert setup.analyst.version(mine.version_id)["id"] == mine.version_id
    bob = Ledger.connect(setup.url, setup.owner.create_key("bob", "analyst"))
    with pytest.raises(PermissionDeniedError, match="another analyst's dataset version"):
        bob.version(mine.version_id)
    assert setup.auditor.version(mine.version_id)["n_users"] == 30


def test_a_file_that_is_not_a_ledger_is_one_typed_error(tmp_path: Path) -> None:
    """Not a database, a directory, a missing file: LedgerSchemaError, and no empty file left."""
    from privrec.errors import LedgerSchemaError
    from privrec.governance import Ledger

    (tmp_path / "notes.db").write_text("hello")
    for target in (
        tmp_path / "notes.db",
        tmp_path,
        tmp_path / "missing" / "x.db",
        tmp_path / "n.db",
    ):
        with pytest.raises(LedgerSchemaError):
            Ledger.connect(f"sqlite:///{target}", "prk_aaaaaaaaaaaa_secret")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_last_owner_key_and_look_alike_dataset_names_are_refused(setup: LedgerSetup) -> None:
    from privrec.governance.policy import policy_from_dict

    from .conftest import POLICY

    all_keys = setup.owner.keys()
    (own,) = [k for k in all_keys if k["role"] == "owner"]
    with pytest.raises(GovernanceError, match="last working owner key"):
        setup.owner.revoke_key(own["key_id"])
    for name in (" ", "ratings ", " ratings"):
        with pytest.raises(GovernanceError, match="invalid dataset name"):
            setup.owner.set_policy(name, policy_from_dict(POLICY))


def test_an_empty_user_id_is_not_a_deletion_request(setup: LedgerSetup) -> None:
    for user in ("", "   "):
        with pytest.raises(GovernanceError, match="needs a user id"):
            setup.owner.forget("ratings", user)


def test_a_padded_user_id_is_refused_not_recorded_for_nobody(setup: LedgerSetup) -> None:
    """A padded " 17" hashes apart from 17: recorded, it would match nobody and the person stays in."""
    before = audit_rows(setup)
    for user in (" 17", "17 ", "17\n"):
        with pytest.raises(GovernanceError, match="white space"):
            setup.owner.forget("ratings", user)
    with pytest.raises(GovernanceError, match="white space"):  # checked before any is written
        setup.owner.import_consents("ratings", [("16", True), (" 17", False)])
    assert audit_rows(setup) == before
    setup.owner.forget("ratings", "17")
    assert audit_rows(setup) == before + 1


def test_a_governed_release_holds_no_user_data_and_overwrites_no_recorded_file(
    setup: LedgerSetup, tmp_path: Path
) -> None:
    data = setup.analyst.load("ratings", small_data())
    with pytest.raises(PolicyViolation, match="include_user_data"):
        setup.analyst.train(_dp_pop(0.5), data, output=tmp_path / "u.npz", include_user_data=True)
    assert not (tmp_path / "u.npz").exists() and setup.analyst.history("ratings") == []
    rec = setup.analyst.train(_dp_pop(0.5), data, output=tmp_path / "a.npz")
    before = rec.path.read_bytes()
    with pytest.raises(PolicyViolation, match="artifact"):  # refused before any charge
        setup.analyst.train(_dp_pop(0.5), data, output=rec.path)
    assert rec.path.read_bytes() == before and len(setup.analyst.history("ratings")) == 1
    (tmp_path / "other.npz").write_bytes(b"not recorded")  # an unrelated file may be replaced
    setup.analyst.train(_dp_pop(0.5), data, output=tmp_path / "other.npz")


def test_a_new_sqlite_ledger_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It holds the user-hash key (membership tests) and the API keys' hashes."""
    import os
    import stat

    from typer.testing import CliRunner

    from privrec.cli.main import app

    path = tmp_path / "ledger.db"
    Ledger.init(f"sqlite:///{path}", owner="olga")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cli = tmp_path / "cli.db"  # the command reads the schema revision first: same mode
    res = CliRunner().invoke(app, ["ledger", "init", "--db", f"sqlite:///{cli}", "--owner", "o"])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(os.stat(cli).st_mode) == 0o600


def test_a_recorded_release_is_safe_without_its_suffix_and_from_a_racing_release(
    setup: LedgerSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privrec.governance import training as gt

    data = setup.analyst.load("ratings", small_data())
    rec = setup.analyst.train(_dp_pop(0.5), data, output=tmp_path / "w1.npz")
    before = rec.path.read_bytes()
    with pytest.raises(PolicyViolation, match="artifact"):  # save() would append .npz
        setup.analyst.train(_dp_pop(0.5), data, output=tmp_path / "w1")
    assert rec.path.read_bytes() == before
    # another release lands on the path while this one trains: not replaced, the charge kept
    real = gt._atomic_save

    def racing(model, output, include, key=None, claim=None):  # type: ignore[no-untyped-def]
        output.write_bytes(b"the other release")
        return real(model, output, include, key, claim)

    monkeypatch.setattr(gt, "_atomic_save", racing)
    n = len(setup.analyst.history("ratings"))
    with pytest.raises(PolicyViolation, match="appeared or changed"):
        setup.analyst.train(_dp_pop(0.5), data, output=tmp_path / "new.npz")
    assert (tmp_path / "new.npz").read_bytes() == b"the other release"
    assert len(setup.analyst.history("ratings")) == n + 1  # noise was drawn: kept as spent
    assert not list(tmp_path.glob(".*.release.npz"))  # no temporary left behind


def test_a_deletion_id_nobody_had_warns_and_invisible_characters_are_refused(
    setup: LedgerSetup,
) -> None:
    from privrec.errors import DataWarning

    raw = small_data()
    setup.analyst.load("ratings", raw)
    known = str(raw.user_ids[0])
    with pytest.raises(GovernanceError, match="invisible"):
        setup.owner.forget("ratings", known + "\u200b")
    with pytest.warns(DataWarning, match="no loaded version"):
        setup.owner.forget("ratings", "0" + known)  # "017" is not 17
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup.owner.forget("ratings", raw.user_ids[1])  # a real member: no warning


def test_replacing_a_lifetime_cap_by_a_per_period_one_warns(setup: LedgerSetup) -> None:
    from privrec.errors import PrivacyWarning

    with pytest.warns(PrivacyWarning, match="lifetime cap"):
        setup.owner.set_budget("ratings", epsilon=1.0, delta=1e-6, period_days=7)
    with warnings.catch_warnings():  # per-period to per-period, or back to lifetime: no warning
        warnings.simplefilter("error", PrivacyWarning)
        setup.owner.set_budget("ratings", epsilon=1.0, delta=1e-6, period_days=14)
        setup.owner.set_budget("ratings", epsilon=2.0, delta=1e-6)
