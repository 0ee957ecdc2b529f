"""A pinned head checked after later activity; a binary column replaced by its fingerprint text."""

from __future__ import annotations

import hashlib
import json

import dp_accounting
import pytest
import sqlalchemy as sa

from privrec.data import synthetic
from privrec.governance.db import create_ledger_engine
from privrec.privacy.events import SpentEvent

from .conftest import LedgerSetup


def _charge(s: LedgerSetup, z: float) -> None:
    c = s.analyst.reserve("ratings", [SpentEvent("q", dp_accounting.GaussianDpEvent(z))])
    s.analyst.commit(c, result={"z": z})


def test_pin_still_verifies_after_later_actions(setup: LedgerSetup) -> None:
    _charge(setup, 30.0)
    pinned = setup.auditor.verify_audit_log().head_hash
    _charge(setup, 31.0)  # the ledger moves on after the pin, as a live one does
    v = setup.auditor.verify_audit_log(expect_head=pinned)
    assert v.ok, v.message
    assert v.head_hash != pinned


def test_pin_catches_a_tail_cut_back_before_it(setup: LedgerSetup) -> None:
    _charge(setup, 30.0)
    _charge(setup, 31.0)
    pinned = setup.auditor.verify_audit_log().head_hash
    rows = setup.auditor.verify_audit_log().rows
    # remove the last action (reserve + commit rows and the charge) and wind the head back:
    # no hash needs recomputing, so only the pin can tell
    keep = rows - 2
    back = next(r for r in setup.auditor.audit_log(limit=rows) if r["seq"] == keep)
    with create_ledger_engine(setup.url).begin() as c:
        c.exec_driver_sql(f"DELETE FROM audit_log WHERE seq > {keep}")
        c.exec_driver_sql("DELETE FROM charges WHERE id = 2")
        head = json.dumps({"hash": back["hash"], "seq": keep})
        c.execute(
            sa.text("UPDATE ledger_meta SET value = :v WHERE key = 'audit_head'"), {"v": head}
        )
    assert setup.auditor.verify_audit_log().ok  # undetectable without a pin (documented)
    v = setup.auditor.verify_audit_log(expect_head=pinned)
    assert not v.ok and "is not in the audit log" in v.message
    assert not setup.auditor.verify_audit_log(expect_head="0" * 64).ok


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_member_list_replaced_by_its_fingerprint_text_is_caught(setup: LedgerSetup) -> None:
    setup.analyst.load("ratings", synthetic(n_users=20, n_items=8, seed=0))
    with create_ledger_engine(setup.url).begin() as c:
        blob = c.exec_driver_sql("SELECT members FROM dataset_versions WHERE id = 1").scalar_one()
        # SQLite stores text in a BLOB column: the text the fingerprint uses for the bytes
        text = "sha256:" + hashlib.sha256(bytes(blob)).hexdigest()
        c.exec_driver_sql(f"UPDATE dataset_versions SET members = '{text}' WHERE id = 1")
    v = setup.auditor.verify_audit_log()
    assert not v.ok
    assert "dataset_versions row 1 was edited" in v.message and "members" in v.message
