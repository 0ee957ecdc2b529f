"""Secret key files are always owner-only (0600); bad ports and paths are refused up front."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.errors import ConfigError, KeyFileError
from privrec.keyfiles import check_secret, read_secret, write_secret
from privrec.secure.channel import Identity, Roster
from privrec.secure.silo import setup_keys

runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_secret_fixes_a_world_readable_file_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"old")
    path.chmod(0o644)  # install -m644 /dev/null k.key
    write_secret(path, b"secret")
    assert _mode(path) == 0o600 and path.read_bytes() == b"secret"
    fresh = write_secret(tmp_path / "new.key", b"x")
    assert _mode(fresh) == 0o600


def test_write_secret_refuses_links_and_special_files(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(KeyFileError, match="cannot write"):
        write_secret(tmp_path / "link.key", b"secret")
    assert target.read_bytes() == b""
    os.mkfifo(tmp_path / "fifo.key")
    with pytest.raises(KeyFileError):
        write_secret(tmp_path / "fifo.key", b"secret")
    with pytest.raises(KeyFileError, match="cannot write"):
        write_secret(tmp_path / "missing-dir" / "a.key", b"secret")


def test_reading_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "k.key", b"secret")
    assert read_secret(path) == b"secret"
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        check_secret(path)
    with pytest.raises(KeyFileError, match="not found"):
        read_secret(tmp_path / "nope.key")


def test_silo_keys_cli_fixes_existing_key_modes(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    keys.mkdir()
    planted = keys / "server0.key"
    planted.write_bytes(b"")
    planted.chmod(0o644)
    res = runner.invoke(
        app, ["silo", "keys", str(keys), "--silos", "2", "--ports", "7200,7201,7202"]
    )
    assert res.exit_code == 0, res.output
    for f in keys.glob("*.key"):
        assert _mode(f) == 0o600, f
    assert _mode(planted) == 0o600
    assert Identity.load(planted).name == "server0"
    roster = json.loads((keys / "roster.json").read_text())
    assert roster["server0"]["port"] == 7201


@pytest.mark.parametrize(
    "ports", ["99999,7101,7102", "0,7101,7102", "7100,7101", "a,b,c", "7100,7100,7102"]
)
def test_silo_keys_cli_refuses_bad_ports_before_writing(tmp_path: Path, ports: str) -> None:
    out = tmp_path / "k"
    res = runner.invoke(app, ["silo", "keys", str(out), "--ports", ports])
    assert res.exit_code == 1
    assert "port" in res.output
    assert not out.exists() or not any(out.iterdir())


def test_key_and_roster_loading_refuse_bad_files(tmp_path: Path) -> None:
    setup_keys(tmp_path, 1)
    key = tmp_path / "silo1.key"
    key.chmod(0o604)
    with pytest.raises(KeyFileError, match="other users"):
        Identity.load(key)
    key.chmod(0o600)
    key.write_text("{not json")
    with pytest.raises(KeyFileError, match="malformed"):
        Identity.load(key)
    (tmp_path / "roster.json").write_text('{"a": {"role": "x", "public_key": "00", "port": 1}}')
    with pytest.raises(ConfigError, match="32 bytes"):
        Roster.load(tmp_path / "roster.json")
    (tmp_path / "roster.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="map party names"):
        Roster.load(tmp_path / "roster.json")
    with pytest.raises(ConfigError, match="not found"):
        Roster.load(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="port"):
        setup_keys(tmp_path / "p", 1, ports=(1, 2, 70000))


def test_mpc_keys_are_owner_only_even_over_existing_files(tmp_path: Path) -> None:
    from privrec.secure.mpc import TLSFiles, make_tls_material

    (tmp_path / "party-0.key").write_bytes(b"")
    (tmp_path / "party-0.key").chmod(0o666)
    res = runner.invoke(app, ["mpc", "keys", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for f in tmp_path.glob("*.key"):
        assert _mode(f) == 0o600, f
    (tmp_path / "party-1.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="other users"):
        TLSFiles.in_dir(tmp_path, 1).contexts()
    make_tls_material(tmp_path)  # rewriting fixes it
    TLSFiles.in_dir(tmp_path, 1).contexts()
