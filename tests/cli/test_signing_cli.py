"""Signed model files from the command line: keygen, train --sign-key, --verify-key on every
command that reads a model (recommend, privacy explain / verify, check), and re-signing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app

runner = CliRunner()


def _out(res: object) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(res.output.split())  # type: ignore[attr-defined]


PRIVATE = ["--epsilon", "2", "--delta", "1e-6", "--unit", "user"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys, data and a signed DPPopularity model trained through the CLI."""
    root = tmp_path_factory.mktemp("signing")
    rng = np.random.default_rng(3)
    lines = [
        f"{u}\t{i}\t1\t{880000000 + t}"
        for u in range(1, 151)
        for t, i in enumerate(rng.choice(np.arange(1, 41), size=8, replace=False))
    ]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    res = runner.invoke(app, ["privacy", "keygen", str(root / "keys")])
    assert res.exit_code == 0, res.output
    assert "SHA256:" in _out(res)
    res = runner.invoke(app, ["privacy", "keygen", str(root / "other")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "train", "-d", str(root / "u.data"), "-m", "dppopularity", *PRIVATE,
            "-o", str(root / "pop.npz"), "--sign-key", str(root / "keys" / "signing.key"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "signed " in _out(res) and "SHA256:" in _out(res)
    (root / "history.txt").write_text("1\n2\n3\n")
    return root


def _tampered(root: Path) -> Path:
    blob = bytearray((root / "pop.npz").read_bytes())
    blob[len(blob) // 3] ^= 0x10
    out = root / "tampered.npz"
    out.write_bytes(bytes(blob))
    return out


def test_keygen_writes_an_owner_only_key_and_refuses_to_overwrite(workdir: Path) -> None:
    assert stat.S_IMODE((workdir / "keys" / "signing.key").stat().st_mode) == 0o600
    assert (workdir / "keys" / "signing.pub").is_file()
    res = runner.invoke(app, ["privacy", "keygen", str(workdir / "keys")])
    assert res.exit_code == 1 and "already exists" in _out(res)


def test_recommend_explain_verify_check_with_the_right_key(workdir: Path) -> None:
    pub = str(workdir / "keys" / "signing.pub")
    model = str(workdir / "pop.npz")
    res = runner.invoke(
        app,
        ["recommend", model, "--history", str(workdir / "history.txt"), "--verify-key", pub],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["privacy", "explain", model, "--verify-key", pub])
    assert res.exit_code == 0, res.output
    assert "signature verified" in _out(res)
    res = runner.invoke(app, ["privacy", "explain", model, "--json", "--verify-key", pub])
    assert json.loads(res.output)["file_signature"]["verified"] is True
    res = runner.invoke(app, ["privacy", "verify", model, "--verify-key", pub])
    assert res.exit_code == 0 and "signature verified" in _out(res)
    res = runner.invoke(app, ["check", model, "--verify-key", pub, "-v"])
    assert res.exit_code == 0, res.output
    assert "unchanged since" in _out(res)


def test_without_a_key_the_signer_is_shown_unchecked(workdir: Path) -> None:
    res = runner.invoke(app, ["privacy", "explain", str(workdir / "pop.npz")])
    assert res.exit_code == 0, res.output
    assert "says it is signed by SHA256:" in _out(res) and "NOT checked" in _out(res)
    res = runner.invoke(app, ["check", str(workdir / "pop.npz")])
    assert res.exit_code == 0 and "no verify key given" in _out(res)


@pytest.mark.parametrize("which", ["tampered", "wrong key"])
def test_a_tampered_file_or_another_signer_is_refused_everywhere(workdir: Path, which: str) -> None:
    if which == "tampered":
        model, pub = _tampered(workdir), workdir / "keys" / "signing.pub"
        reason = "changed after it was signed"
    else:
        model, pub = workdir / "pop.npz", workdir / "other" / "signing.pub"
        reason = "signed by another key"
    for cmd in (
        ["recommend", str(model), "--history", str(workdir / "history.txt")],
        ["privacy", "explain", str(model)],
        ["privacy", "verify", str(model)],
    ):
        res = runner.invoke(app, [*cmd, "--verify-key", str(pub)])
        assert res.exit_code == 1 and "SignatureError" in _out(res), (cmd, res.output)
        assert reason in _out(res)
    res = runner.invoke(app, ["check", str(model), "--verify-key", str(pub)])
    assert res.exit_code == 1 and "signature refused" in _out(res)


def test_sign_an_existing_file_then_verify(workdir: Path, tmp_path: Path) -> None:
    model = tmp_path / "plain.npz"
    res = runner.invoke(
        app,
        ["train", "-d", str(workdir / "u.data"), "-m", "dppopularity", *PRIVATE, "-o", str(model)],
    )
    assert res.exit_code == 0, res.output
    pub = str(workdir / "other" / "signing.pub")
    res = runner.invoke(app, ["recommend", str(model), "--history", "x", "--verify-key", pub])
    assert res.exit_code == 1 and "not signed" in _out(res)
    key = str(workdir / "other" / "signing.key")
    res = runner.invoke(app, ["privacy", "sign", str(model), "--key", key])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["privacy", "verify", str(model), "--verify-key", pub])
    assert res.exit_code == 0 and "signature verified" in _out(res)


def test_an_unusable_sign_key_fails_before_training(workdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.npz"
    res = runner.invoke(
        app,
        [
            "train", "-d", str(workdir / "u.data"), "-m", "dppopularity", *PRIVATE,
            "-o", str(out), "--sign-key", str(workdir / "keys" / "signing.pub"),
        ],
    )  # fmt: skip
    assert res.exit_code == 1 and "KeyFileError" in _out(res)
    assert not out.exists()
