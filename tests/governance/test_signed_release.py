"""A release trained through the ledger can be signed: the signature is in the file before the
ledger records its hash, so the recorded artifact and the signed file are the same bytes."""

from __future__ import annotations

from pathlib import Path

from privrec.data import synthetic
from privrec.governance.ledger import file_sha256
from privrec.models import load_model
from privrec.models.dp_popularity import DPPopularity
from privrec.models.signing import generate_keypair

from .conftest import LedgerSetup


def test_a_signed_release_is_the_recorded_artifact(setup: LedgerSetup, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    data = setup.analyst.load("ratings", synthetic(n_users=200, n_items=30, seed=2))
    model = DPPopularity(epsilon=1.0, delta=1e-6, unit="user", max_per_user=20)
    rec = setup.analyst.train(model, data, output=tmp_path / "m.npz", signing_key=private)
    assert setup.auditor.artifact(rec.path).file_hash == file_sha256(rec.path)
    loaded = load_model(rec.path, verify_key=public)
    assert loaded.file_signature_ is not None and loaded.file_signature_.verified
