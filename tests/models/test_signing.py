"""Ed25519 signatures of model files (issue 11, optional): who produced it, and is it unchanged."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data.synthetic import synthetic
from privrec.errors import ConfigError, PrivacyWarning, SignatureError
from privrec.models import DPPopularity
from privrec.models.signing import generate_key, public_key_hex, sign_file, verify_file

runner = CliRunner()


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0)
        model.fit(synthetic(n_users=100, n_items=20, seed=0))
    return model.save(tmp_path / "pop.npz")


def test_keys_are_private_and_never_overwritten(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pub = generate_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert len(pub.read_text().strip()) == 64
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(tmp_path / "k")


def test_sign_and_verify(model_file: Path, tmp_path: Path) -> None:
    pub = generate_key(tmp_path / "k")
    sign_file(model_file, tmp_path / "k")
    assert verify_file(model_file) == pub.read_text().strip() == public_key_hex(tmp_path / "k")
    assert verify_file(model_file, pub.read_text()) == public_key_hex(pub)
    other = generate_key(tmp_path / "other")
    with pytest.raises(SignatureError, match="another key"):
        verify_file(model_file, other.read_text())


def test_any_change_is_detected(model_file: Path, tmp_path: Path) -> None:
    generate_key(tmp_path / "k")
    sig = sign_file(model_file, tmp_path / "k")
    blob = bytearray(model_file.read_bytes())
    blob[len(blob) // 2] ^= 1
    model_file.write_bytes(bytes(blob))
    with pytest.raises(SignatureError, match="changed"):
        verify_file(model_file)
    blob[len(blob) // 2] ^= 1
    model_file.write_bytes(bytes(blob))
    doc = json.loads(sig.read_text())
    doc["sha256"] = "0" * 64
    sig.write_text(json.dumps(doc))
    with pytest.raises(SignatureError):
        verify_file(model_file)
    doc = json.loads(sig.read_text())
    sig.write_text("not json")
    with pytest.raises(SignatureError):
        verify_file(model_file)


def test_readable_key_is_refused(model_file: Path, tmp_path: Path) -> None:
    generate_key(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        sign_file(model_file, tmp_path / "k")


def test_cli_keygen_sign_verify(model_file: Path, tmp_path: Path) -> None:
    key = tmp_path / "trainer.key"
    assert runner.invoke(app, ["privacy", "keygen", str(key)]).exit_code == 0
    res = runner.invoke(app, ["privacy", "sign", str(model_file), "--key", str(key)])
    assert res.exit_code == 0, res.output
    pub = str(key) + ".pub"
    res = runner.invoke(app, ["privacy", "verify", str(model_file), "--public-key", pub])
    assert res.exit_code == 0 and "valid Ed25519 signature" in res.output
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    res = runner.invoke(app, ["privacy", "verify", str(model_file)])
    assert res.exit_code == 1 and "SignatureError" in res.output
