"""Tampering with the database directly: verify names the first bad row (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import dp_accounting
import pytest

from privrec.governance.db import create_ledger_engine
from privrec.privacy.events import SpentEvent

from .conftest import LedgerSetup


def _activity(s: LedgerSetup, n: int = 6) -> None:
    for i in range(n):
        c = s.analyst.reserve(
            "ratings", [SpentEvent("q", dp_accounting.GaussianDpEvent(30.0 + i))], kind="query"
        )
        s.analyst.commit(c, result={"i": i})


def _exec(s: LedgerSetup, sql: str) -> None:
    with create_ledger_engine(s.url).begin() as c:
        c.exec_driver_sql(sql)


def test_untouched_log_verifies(setup: LedgerSetup) -> None:
    _activity(setup)
    v = setup.auditor.verify_audit_log()
    assert v.ok and v.rows == 4 + 12 and len(v.head_hash) == 64
    assert setup.owner.verify_audit_log(expect_head=v.head_hash).ok
    assert not setup.owner.verify_audit_log(expect_head="0" * 64).ok


def test_edited_row_is_named(setup: LedgerSetup) -> None:
    _activity(setup)
    _exec(setup, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 9")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and v.first_bad_seq == 9 and "row 9 was edited" in v.message


def test_edited_payload_is_named(setup: LedgerSetup) -> None:
    _activity(setup)
    _exec(setup, "UPDATE audit_log SET payload = replace(payload, 'query', 'QUERY') WHERE seq = 5")
    v = setup.auditor.verify_audit_log()
    assert v.first_bad_seq == 5 and "edited" in v.message


def test_deleted_row_is_named(setup: LedgerSetup) -> None:
    _activity(setup)
    _exec(setup, "DELETE FROM audit_log WHERE seq = 7")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and v.first_bad_seq == 7 and "row 7 is missing" in v.message


def test_deleted_tail_is_named(setup: LedgerSetup) -> None:
    _activity(setup)
    _exec(setup, "DELETE FROM audit_log WHERE seq >= 15")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and v.first_bad_seq == 15 and "deleted" in v.message


def test_reordered_rows_are_named(setup: LedgerSetup) -> None:
    _activity(setup)
    # swap rows 10 and 11 (their seq numbers), through a free slot
    _exec(setup, "UPDATE audit_log SET seq = 100000 WHERE seq = 10")
    _exec(setup, "UPDATE audit_log SET seq = 10 WHERE seq = 11")
    _exec(setup, "UPDATE audit_log SET seq = 11 WHERE seq = 100000")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and v.first_bad_seq == 10 and "row 10 is out of order" in v.message


def test_edited_charge_is_caught_against_the_log(setup: LedgerSetup) -> None:
    """Lowering a charge's cost in the charges table (not the log) is detected too."""
    _activity(setup)
    (cid,) = [c.id for c in setup.auditor.history(limit=1)]
    events = json.dumps(
        [{"event": {"noise_multiplier": 1e6, "type": "GaussianDpEvent"}, "label": "q"}]
    )
    _exec(
        setup,
        f"UPDATE charges SET gaussian_rate = 1e-12, events_json = '{events}' WHERE id = {cid}",
    )
    v = setup.auditor.verify_audit_log()
    assert not v.ok and f"charges row {cid} was edited" in v.message


def test_deleted_charge_is_caught(setup: LedgerSetup) -> None:
    _activity(setup)
    _exec(setup, "DELETE FROM charges WHERE id = 2")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and "charges/2" in v.message and "deleted" in v.message


def test_changed_consent_batch_is_caught(setup: LedgerSetup) -> None:
    setup.owner.import_consents("ratings", [(1, True), (2, True), (3, False)], source="crm")
    assert setup.auditor.verify_audit_log().ok
    _exec(setup, "UPDATE consents SET granted = true WHERE id = 3")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and "consent records 1-3" in v.message


@pytest.mark.parametrize("table", ["budgets", "deletions"])
def test_other_tracked_tables(setup: LedgerSetup, table: str) -> None:
    setup.owner.forget("ratings", 42)
    column = {"budgets": "epsilon = 99", "deletions": "reason = 'x'"}[table]
    _exec(setup, f"UPDATE {table} SET {column}")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and f"table {table} row 1 was edited" in v.message


def test_replaced_user_key_is_caught(setup: LedgerSetup) -> None:
    """A new user-hash key would silently cancel every deletion request and consent."""
    setup.owner.forget("ratings", 42)
    assert setup.auditor.verify_audit_log().ok
    _exec(setup, f"UPDATE ledger_meta SET value = '{'ab' * 32}' WHERE key = 'user_key'")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and v.first_bad_seq == 1 and "user-hash key" in v.message


def test_consent_record_outside_a_logged_import_is_caught(setup: LedgerSetup) -> None:
    setup.owner.import_consents("ratings", [(1, True), (2, False)], source="crm")
    assert setup.auditor.verify_audit_log().ok
    _exec(
        setup,
        "INSERT INTO consents (id, dataset_id, user_hash, granted, recorded_at, source) "
        "SELECT 99, dataset_id, user_hash, true, recorded_at + 1, source FROM consents WHERE id = 2",
    )
    v = setup.auditor.verify_audit_log()
    assert not v.ok and "consent record 99 was never imported" in v.message


def test_malformed_payload_and_head_are_named_not_raised(setup: LedgerSetup) -> None:
    from privrec.governance.audit import chain_hash, read_head

    _activity(setup, 1)
    with create_ledger_engine(setup.url).begin() as c:
        seq, _ = read_head(c)
        row = c.exec_driver_sql(
            f"SELECT prev_hash, at, actor, action FROM audit_log WHERE seq = {seq}"
        ).one()
        h = chain_hash(row.prev_hash, row.at, row.actor, row.action, "[]")
        c.exec_driver_sql(f"UPDATE audit_log SET payload = '[]', hash = '{h}' WHERE seq = {seq}")
        head = json.dumps({"seq": seq, "hash": h}, separators=(",", ":"))
        c.exec_driver_sql(f"UPDATE ledger_meta SET value = '{head}' WHERE key = 'audit_head'")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and v.first_bad_seq == seq and "payload is malformed" in v.message


def test_garbage_head_is_named_not_raised(setup: LedgerSetup) -> None:
    _activity(setup, 1)
    _exec(setup, "UPDATE ledger_meta SET value = 'garbage' WHERE key = 'audit_head'")
    v = setup.auditor.verify_audit_log()
    assert not v.ok and "stored head" in v.message
