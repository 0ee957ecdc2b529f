"""A release trained through the ledger can be signed: the signature is in the file before the
ledger records its hash, so the recorded artifact and the signed file are the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from privrec.data import synthetic
from privrec.errors import LedgerSchemaError
from privrec.governance import Ledger
from privrec.governance.db import (
    HEAD_REVISION,
    MIGRATIONS,
    create_ledger_engine,
    schema_revision,
    upgrade,
)
from privrec.governance.ledger import file_sha256
from privrec.models import load_model
from privrec.models.dp_popularity import DPPopularity
from privrec.models.signing import fingerprint, generate_keypair, load_verify_key, sign_file

from .conftest import LedgerSetup


def test_a_signed_release_is_the_recorded_artifact(setup: LedgerSetup, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    data = setup.analyst.load("ratings", synthetic(n_users=200, n_items=30, seed=2))
    model = DPPopularity(epsilon=1.0, delta=1e-6, unit="user", max_per_user=20)
    rec = setup.analyst.train(model, data, output=tmp_path / "m.npz", signing_key=private)
    assert setup.auditor.artifact(rec.path).file_hash == file_sha256(rec.path)
    loaded = load_model(rec.path, verify_key=public)
    assert loaded.file_signature_ is not None and loaded.file_signature_.verified


# ------------------------------------------------------------------- the ledger records the signer
def _train(setup: LedgerSetup, out: Path, key: Path | None = None, seed: int = 2):  # type: ignore[no-untyped-def]
    data = setup.analyst.load("ratings", synthetic(n_users=200, n_items=30, seed=seed))
    model = DPPopularity(epsilon=0.5, delta=1e-6, unit="user", max_per_user=20)
    return setup.analyst.train(model, data, output=out, signing_key=key)


def test_the_artifact_records_its_signer(setup: LedgerSetup, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    fp = fingerprint(load_verify_key(public))
    signed = _train(setup, tmp_path / "signed.npz", private)
    plain = _train(setup, tmp_path / "plain.npz", seed=3)
    assert signed.artifact.signer == fp and plain.artifact.signer is None
    listed = {a.id: a.signer for a in setup.auditor.artifacts()}
    assert listed == {signed.artifact.id: fp, plain.artifact.id: None}
    assert setup.auditor.verify_audit_log().ok
    # the signer is in the audit log (and in the row's fingerprint): editing it is caught
    payloads = [
        json.loads(e["payload"])
        for e in setup.auditor.audit_log()
        if e["action"] == "charge.commit"
    ]
    assert any(p.get("signer") == fp for p in payloads)
    assert not any("signer" in p for p in payloads if p.get("artifact") == plain.artifact.id)
    with create_ledger_engine(setup.url).begin() as c:
        c.execute(
            sa.text("UPDATE artifacts SET signer = :s WHERE id = :i"),
            {"s": fp, "i": plain.artifact.id},
        )
    v = setup.auditor.verify_audit_log()
    assert not v.ok and "artifacts" in v.message


def test_a_bad_signing_key_spends_nothing(setup: LedgerSetup, tmp_path: Path) -> None:
    from privrec.errors import PrivrecError

    before = setup.owner.status("ratings")[0].reserved
    with pytest.raises(PrivrecError):
        _train(setup, tmp_path / "m.npz", tmp_path / "missing.key")
    assert setup.owner.status("ratings")[0].reserved == before
    assert not (tmp_path / "m.npz").exists()


def test_an_old_ledger_upgrades_and_still_verifies(
    setup: LedgerSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger written at revision 0001 (artifacts without a signer column) migrates to head:
    its audit log still verifies, its artifacts show no signer, signed releases then record one."""
    from alembic import command
    from alembic.config import Config

    with monkeypatch.context() as m:  # as privrec wrote it at 0001: no charges.released_at
        m.setattr(Ledger, "mark_released", lambda self, charges: None)
        old = _train(setup, tmp_path / "old.npz")
    engine = create_ledger_engine(setup.url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect().execution_options(privrec_write=True) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
        conn.commit()
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("artifacts")}
        assert "signer" not in cols and schema_revision(conn) == "0001"
    with pytest.raises(LedgerSchemaError, match="ledger init"):
        Ledger.connect(setup.url, setup.auditor_key)
    upgrade(engine)
    with engine.connect() as conn:
        assert schema_revision(conn) == HEAD_REVISION == "0003"
    auditor = Ledger.connect(setup.url, setup.auditor_key)
    assert auditor.verify_audit_log().ok
    assert auditor.artifact(old.artifact.id).signer is None
    private, public = generate_keypair(tmp_path / "keys")
    analyst = Ledger.connect(setup.url, setup.analyst_key)
    data = analyst.load("ratings", synthetic(n_users=200, n_items=30, seed=4))
    new = analyst.train(
        DPPopularity(epsilon=0.5, delta=1e-6, unit="user", max_per_user=20),
        data,
        output=tmp_path / "new.npz",
        signing_key=private,
    )
    assert new.artifact.signer == fingerprint(load_verify_key(public))
    assert auditor.verify_audit_log().ok


def test_check_reports_a_release_whose_signer_differs_from_the_record(
    setup: LedgerSetup, tmp_path: Path
) -> None:
    from privrec.risk import CheckConfig, run_check

    private, public = generate_keypair(tmp_path / "keys")
    other, other_pub = generate_keypair(tmp_path / "other")
    rec = _train(setup, tmp_path / "m.npz", private)
    ledger = {"url": setup.url, "api_key": setup.auditor_key}
    fp, other_fp = (fingerprint(load_verify_key(p)) for p in (public, other_pub))

    def lines() -> str:
        rep = run_check(CheckConfig(release=[str(rec.path)], ledger=ledger))  # type: ignore[arg-type]
        return "\n".join(f"{f.level} {f.subject}: {f.message}" for f in rep.findings)

    assert f"recorded artifact {rec.artifact.id} (charges" in lines()
    assert f"signed by {fp})" in lines()
    sign_file(rec.path, other)  # re-signed by someone else after the release was recorded
    out = lines()
    assert f"violation {rec.path}: signed by {other_fp}, but the ledger recorded artifact" in out
    assert f"as signed by {fp}: re-signed or replaced after release" in out
    sign_file(rec.path, private)  # the same key again: the very bytes recorded
    assert "violation" not in lines()
    # the ledger row edited to name another signer (the audit log flags the edit too)
    with create_ledger_engine(setup.url).begin() as c:
        c.execute(
            sa.text("UPDATE artifacts SET signer = :s WHERE id = :i"),
            {"s": other_fp, "i": rec.artifact.id},
        )
    out = lines()
    assert f"signed by {fp}, but the ledger records artifact {rec.artifact.id} as signed by" in out
    assert "violation audit log" in out
