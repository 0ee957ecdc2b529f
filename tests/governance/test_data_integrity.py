"""Data the ledger must not let through: requests landing mid-fit, retention, consent given as
text, revoked keys, damaged databases and the user-hash key (SQLite and PostgreSQL).

Each test pins a finding of a hostile review: it failed before the fix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dp_accounting as dpa
import numpy as np
import pytest
import sqlalchemy as sa

from privrec.data import Interactions, synthetic
from privrec.errors import (
    AuditLogError,
    AuthenticationError,
    GovernanceError,
    LedgerSchemaError,
    PolicyViolation,
    StaleDataError,
)
from privrec.governance import Ledger
from privrec.governance import reading as reading_module
from privrec.governance.auth import Principal, Role
from privrec.governance.db import create_ledger_engine, dispose_engines
from privrec.governance.userkey import USER_KEY_ENV
from privrec.models.dp_popularity import DPPopularity
from privrec.privacy.events import SpentEvent

from .conftest import POLICY, LedgerSetup, make_setup


def _q(z: float = 30.0) -> list[SpentEvent]:
    return [SpentEvent("q", dpa.GaussianDpEvent(z))]


def _count(url: str, table: str) -> int:
    with create_ledger_engine(url).connect() as c:
        return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def _exec(url: str, sql: str, **params: Any) -> None:
    with create_ledger_engine(url).begin() as c:
        c.execute(sa.text(sql), params)


def _pop() -> DPPopularity:
    return DPPopularity(epsilon=0.5, delta=1e-6, unit="user", max_per_user=20)


# ----------------------------------------------------------------- requests landing mid-fit
def _train_with_request_mid_fit(s: LedgerSetup, tmp_path: Path, request: Any) -> Any:
    """Train while ``request()`` runs just after the write-ahead reservation (mid-fit)."""
    data = s.analyst.load("ratings", synthetic(n_users=200, n_items=40, seed=1))

    def fit(model: Any, x: Any) -> None:
        gate = model.release_gate

        def gate_then_request(planned: Any) -> None:
            gate(planned)
            request(data)

        model.release_gate = gate_then_request
        model.fit(x)

    s.analyst.train(_pop(), data, output=tmp_path / "m.npz", fit=fit)
    return data


def test_a_deletion_during_a_fit_makes_a_retrain_due(ledger_url: str, tmp_path: Path) -> None:
    s = make_setup(ledger_url, {**POLICY, "deletion": {"retrain_within_days": 30}})
    gone: list[Any] = []

    def forget(data: Any) -> None:
        gone.append(data.interactions.user_ids[0])
        s.owner.forget("ratings", gone[0], reason="erase me")

    _train_with_request_mid_fit(s, tmp_path, forget)
    (lin,) = s.owner.lineage_of_user(gone[0], "ratings")
    assert lin.trained_before_deletion and lin.retrain_due is not None
    assert lin.retrain_due == pytest.approx(lin.deletion_requested_at + 30 * 86400)
    (due,) = s.owner.retrains_due("ratings")
    assert due.artifact.id == lin.artifact.id and due.reason == "asked to be deleted"


def test_a_consent_withdrawal_during_a_fit_makes_a_retrain_due(
    ledger_url: str, tmp_path: Path
) -> None:
    policy = {**POLICY, "consent": {"required": True}, "deletion": {"retrain_within_days": 7}}
    s = make_setup(ledger_url, policy)
    raw = synthetic(n_users=200, n_items=40, seed=1)
    s.owner.import_consents("ratings", [(u, True) for u in raw.user_ids])
    who = raw.user_ids[0]
    _train_with_request_mid_fit(
        s, tmp_path, lambda _: s.owner.import_consents("ratings", [(who, False)])
    )
    (due,) = s.owner.retrains_due("ratings")
    assert due.reason == "withdrawn consent" and due.trained_before_withdrawal
    (mine,) = s.owner.lineage_of_user(who, "ratings")
    assert mine.retrain_due == pytest.approx(due.retrain_due)


# ----------------------------------------------------------------- retention after the load
RETAINED = {
    "purpose": "recs",
    "unit": "user",
    "columns": ["user", "item", "timestamp"],
    "retention_days": 30,
    "budget": {"epsilon": 5.0, "delta": 1e-6},
}


def _timed(now: float, days: float = 20.0) -> Interactions:
    rng = np.random.default_rng(0)
    n = 2000
    return Interactions.from_arrays(
        rng.integers(0, 200, n),
        rng.integers(0, 30, n),
        timestamps=now - rng.uniform(0, days * 86400, n),
        duplicates="sum",
    )


def test_a_version_is_refused_once_retention_passes_its_oldest_interaction(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_setup(ledger_url, RETAINED)
    now = time.time()
    raw = _timed(now)
    g = s.analyst.load("ratings", raw)
    assert g.report.interactions_out == raw.nnz  # every interaction is < 20 days old
    oldest = float(np.min(raw.timestamps))  # type: ignore[arg-type]
    assert g.report.oldest_kept_timestamp == pytest.approx(oldest)
    s.analyst.abort(s.analyst.reserve("ratings", _q(), data=g), reason="within the window")
    later = oldest + 30 * 86400 + 60  # the window has passed the oldest kept interaction
    monkeypatch.setattr(reading_module, "ledger_clock", lambda engine: later)
    before = _count(s.url, "charges")
    with pytest.raises(StaleDataError, match="retention"):
        s.analyst.reserve("ratings", _q(), data=g)
    assert _count(s.url, "charges") == before
    monkeypatch.setattr(reading_module, "ledger_clock", lambda engine: later)
    fresh = s.analyst.load("ratings", raw)  # the reload applies retention
    assert fresh.report.step("retention").interactions_dropped > 0
    s.analyst.reserve("ratings", _q(), data=fresh)


def test_a_version_loaded_before_retention_was_recorded_is_stale(ledger_url: str) -> None:
    """A version whose report lacks ``oldest_kept_timestamp`` (an older privrec loaded it)
    cannot show it is within the window: refused as stale, so a reload applies retention."""
    s = make_setup(ledger_url, RETAINED)
    g = s.analyst.load("ratings", _timed(time.time()))
    with create_ledger_engine(s.url).connect() as c:
        report = json.loads(
            c.execute(
                sa.text("SELECT report_json FROM dataset_versions WHERE id = :i"),
                {"i": g.version_id},
            ).scalar_one()
        )
    report.pop("oldest_kept_timestamp")
    _exec(s.url, "UPDATE dataset_versions SET report_json = :r WHERE id = :i",
          r=json.dumps(report), i=g.version_id)  # fmt: skip
    with pytest.raises(StaleDataError, match="load it again"):
        s.analyst.reserve("ratings", _q(), data=g)


def test_other_refusals_of_a_version_are_not_stale(setup: LedgerSetup) -> None:
    """Only "load again and it applies" is StaleDataError (the service reloads on it alone)."""
    g = setup.analyst.load("ratings", synthetic(n_users=50, n_items=20, seed=0))
    forged = type(g)(g.dataset, g.version_id, "0" * 64, g.epoch, g.interactions, g.report)
    with pytest.raises(PolicyViolation) as info:
        setup.analyst.reserve("ratings", _q(), data=forged)
    assert not isinstance(info.value, StaleDataError)
    setup.owner.forget("ratings", g.interactions.user_ids[0])
    with pytest.raises(StaleDataError):
        setup.analyst.reserve("ratings", _q(), data=g)


def test_a_repeat_of_an_unanswered_charge_is_checked_for_staleness(setup: LedgerSetup) -> None:
    """A retry with the same idempotency key of a charge reserved but never committed returned
    it before the data version was checked, so the retry could compute on a view from before a
    deletion; a committed one is only replayed (its answer stored), so it stays free."""
    g = setup.analyst.load("ratings", synthetic(n_users=50, n_items=20, seed=0))
    pending = setup.analyst.reserve("ratings", _q(), data=g, idempotency_key="k-1")
    answered = setup.analyst.reserve("ratings", _q(), data=g, idempotency_key="k-2")
    setup.analyst.commit(answered, result={"answer": 1})
    setup.owner.forget("ratings", g.interactions.user_ids[0])
    with pytest.raises(StaleDataError):
        setup.analyst.reserve("ratings", _q(), data=g, idempotency_key="k-1")
    replay = setup.analyst.reserve("ratings", _q(), data=g, idempotency_key="k-2")
    assert replay.replayed and replay.result == {"answer": 1}
    assert pending.status == "reserved"


# ----------------------------------------------------------------- consent given as text
def test_consent_given_as_text_is_parsed_strictly(ledger_url: str) -> None:
    s = make_setup(ledger_url, {**POLICY, "consent": {"required": True}})
    data = synthetic(n_users=30, n_items=20, seed=0)
    users = data.user_ids.tolist()
    counts = s.owner.import_consents("ratings", [(u, "false") for u in users])
    assert counts == {"records": 30, "granted": 0, "revoked": 30}
    assert s.analyst.load("ratings", data).report.users_out == 0
    s.owner.import_consents("ratings", [(users[0], np.bool_(True)), (users[1], " Granted ")])
    assert s.analyst.load("ratings", data).report.users_out == 2
    before = (_count(s.url, "consents"), _count(s.url, "audit_log"), s.owner.dataset("ratings"))
    for bad in ("maybe", None, 1, 0.0, ""):
        with pytest.raises(GovernanceError, match="consent record"):
            s.owner.import_consents("ratings", [(users[2], True), (users[3], bad)])
    with pytest.raises(GovernanceError, match="pairs"):
        s.owner.import_consents("ratings", [(users[2],)])  # type: ignore[list-item]
    after = (_count(s.url, "consents"), _count(s.url, "audit_log"), s.owner.dataset("ratings"))
    assert after == before  # nothing written, the epoch unchanged


# ----------------------------------------------------------------- revoked keys
def test_a_revoked_key_stops_working_on_an_open_connection(setup: LedgerSetup) -> None:
    a = setup.analyst
    c = a.reserve("ratings", _q())
    setup.owner.revoke_key(setup.analyst_key.split("_")[1])
    before = (_count(setup.url, "audit_log"), _count(setup.url, "charges"))
    with pytest.raises(AuthenticationError, match="revoked"):
        a.reserve("ratings", _q())
    with pytest.raises(AuthenticationError):
        a.commit(c, result={"answer": 42})
    with pytest.raises(AuthenticationError):
        a.load("ratings", synthetic(n_users=50, n_items=20, seed=0))
    assert (_count(setup.url, "audit_log"), _count(setup.url, "charges")) == before
    assert a.history("ratings")[0].status == "reserved"
    # a connection made without a key id (a service that verified the key itself) is checked
    # by its principal: refused once the principal holds no working key
    bare = Ledger(create_ledger_engine(setup.url), setup.url, Principal("ann", Role.ANALYST))
    with pytest.raises(AuthenticationError):
        bare.reserve("ratings", _q())
    second = setup.owner.create_key("ann")
    Ledger(create_ledger_engine(setup.url), setup.url, Principal("ann", Role.ANALYST)).reserve(
        "ratings", _q()
    )
    with pytest.raises(AuthenticationError):  # the revoked key itself stays revoked
        a.reserve("ratings", _q())
    Ledger.connect(setup.url, second).reserve("ratings", _q())


# ----------------------------------------------------------------- damaged databases
def test_init_on_a_file_that_is_not_a_database_is_one_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(LedgerSchemaError, match="not a database"):
        Ledger.init(f"sqlite:///{path}", owner="olga")
    assert path.read_bytes() == b"\x00garbage" * 512
    dispose_engines()


def test_init_on_a_ledger_whose_revision_was_lost_or_wound_back(setup: LedgerSetup) -> None:
    rows = _count(setup.url, "audit_log")
    _exec(setup.url, "UPDATE alembic_version SET version_num = '0002'")
    with pytest.raises(LedgerSchemaError, match="from schema 0002"):
        Ledger.init(setup.url, owner="eve")
    with create_ledger_engine(setup.url).connect() as c:  # rolled back: as it was
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == "0002"
    _exec(setup.url, "DROP TABLE alembic_version")
    with pytest.raises(LedgerSchemaError, match="no schema revision"):
        Ledger.init(setup.url, owner="eve")
    assert _count(setup.url, "audit_log") == rows and _count(setup.url, "principals") == 3


def test_forget_on_a_ledger_missing_its_key_or_head_writes_nothing(setup: LedgerSetup) -> None:
    url = setup.url
    _exec(url, "UPDATE ledger_meta SET key = 'user_key_moved' WHERE key = 'user_key'")
    with pytest.raises(LedgerSchemaError, match="user-hash key"):
        setup.owner.forget("ratings", "u1")
    _exec(url, "UPDATE ledger_meta SET key = 'user_key' WHERE key = 'user_key_moved'")
    _exec(url, "UPDATE ledger_meta SET key = 'audit_head_moved' WHERE key = 'audit_head'")
    with pytest.raises(AuditLogError, match="head"):
        setup.owner.forget("ratings", "u1")
    assert _count(url, "deletions") == 0 and setup.owner.dataset("ratings").epoch == 0


def test_a_dropped_table_or_a_garbled_policy_is_one_typed_error(setup: LedgerSetup) -> None:
    _exec(setup.url, "UPDATE datasets SET policy_json = '{}'")
    with pytest.raises(LedgerSchemaError, match="policy stored in the ledger"):
        setup.analyst.reserve("ratings", _q())
    _exec(setup.url, "DROP TABLE charges")
    with pytest.raises(LedgerSchemaError, match="charges"):
        setup.owner.status("ratings")
    with pytest.raises(LedgerSchemaError, match="charges"):
        setup.auditor.verify_audit_log()


# ----------------------------------------------------------------- who a deletion names
def test_deletion_audit_rows_do_not_repeat_the_person_hash(setup: LedgerSetup) -> None:
    setup.owner.forget("ratings", 48213, reason="GDPR")
    (row,) = [r for r in setup.owner.audit_log() if r["action"] == "deletion.request"]
    assert "user_hash" not in json.loads(row["payload"])
    assert setup.auditor.verify_audit_log().ok


def test_an_external_user_key_keeps_the_database_free_of_it(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "5e" * 32
    monkeypatch.setenv(USER_KEY_ENV, key)
    s = make_setup(ledger_url)
    with create_ledger_engine(s.url).connect() as c:
        stored = c.exec_driver_sql("SELECT value FROM ledger_meta WHERE key = 'user_key'").scalar()
    assert str(stored).startswith("external:") and key not in str(stored)
    raw = synthetic(n_users=50, n_items=20, seed=0)
    gone = raw.user_ids[3]
    s.analyst.train(_pop(), s.analyst.load("ratings", raw), output=tmp_path / "m.npz")
    s.owner.forget("ratings", gone)
    assert s.analyst.load("ratings", raw).report.step("deletion").users_dropped == 1
    assert len(s.owner.lineage_of_user(gone)) == 1
    monkeypatch.delenv(USER_KEY_ENV)
    assert s.auditor.verify_audit_log().ok  # the auditor needs no key
    rows = _count(s.url, "audit_log")
    with pytest.raises(GovernanceError, match=USER_KEY_ENV):
        s.owner.forget("ratings", raw.user_ids[4])
    monkeypatch.setenv(USER_KEY_ENV, "77" * 32)
    with pytest.raises(GovernanceError, match="not the user-hash key"):
        s.analyst.load("ratings", raw)
    assert _count(s.url, "audit_log") == rows
    # replacing the stored fingerprint is caught like replacing a stored key
    _exec(s.url, "UPDATE ledger_meta SET value = :v WHERE key = 'user_key'", v="external:" + "0" * 64)  # fmt: skip
    assert not s.auditor.verify_audit_log().ok


def test_a_malformed_external_key_is_refused_before_any_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(USER_KEY_ENV, "not hex")
    with pytest.raises(GovernanceError, match="hexadecimal"):
        Ledger.init(f"sqlite:///{tmp_path / 'l.db'}")
    monkeypatch.setenv(USER_KEY_ENV, "ab" * 8)
    with pytest.raises(GovernanceError, match="bytes"):
        Ledger.init(f"sqlite:///{tmp_path / 'l.db'}")
    assert not list(tmp_path.iterdir())
