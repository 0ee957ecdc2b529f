"""``privrec serve --verify-key``: only model files signed by that key are served.

At start a file that fails stops the service (a typed error naming the file); on reload a new or
replaced file that fails is refused and the model served before stays — nothing is lost.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from privrec.errors import ConfigError, ServeConfigError
from privrec.models.signing import fingerprint, generate_keypair, load_verify_key, sign_file
from privrec.serve.app import ServeSettings, create_app
from privrec.serve.demo import DemoWorld

from .conftest import auth, settings_for


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    mine, mine_pub = generate_keypair(tmp_path / "mine")
    other, other_pub = generate_keypair(tmp_path / "other")
    return {"key": mine, "pub": mine_pub, "other": other, "other_pub": other_pub}


def _signed_copy(world: DemoWorld, dest: Path, key: Path) -> Path:
    shutil.copytree(world.models_dir, dest)
    for f in sorted(dest.glob("*.npz")):
        sign_file(f, key)
    return dest


def _fp(pub: Path) -> str:
    return fingerprint(load_verify_key(pub))


def _listing(c: TestClient, world: DemoWorld) -> dict:  # type: ignore[type-arg]
    r = c.get("/v1/models", headers=auth(world, "dora"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_signed_models_are_served_with_their_verified_signer(
    world: DemoWorld, tmp_path: Path, keys: dict[str, Path]
) -> None:
    d = _signed_copy(world, tmp_path / "models", keys["key"])
    with TestClient(create_app(settings_for(world, models_dir=d, verify_key=keys["pub"]))) as c:
        listing = _listing(c, world)
        assert listing["required_signer"] == _fp(keys["pub"]) and not listing["rejected"]
        assert {m["id"] for m in listing["models"]} == {"dpals-eps1", "dpals-eps4"}
        for m in listing["models"]:
            assert m["signature"] == {"signer": _fp(keys["pub"]), "verified": True}
        one = c.get("/v1/models/dpals-eps1", headers=auth(world, "ann")).json()
        assert one["signature"]["verified"] and one["signature"]["signer"] == _fp(keys["pub"])
        r = c.post(
            "/v1/recommend",
            headers=auth(world, "ann"),
            json={"model": "dpals-eps1", "history": [], "k": 3},
        )
        assert r.status_code == 200, r.text


def test_without_a_verify_key_the_signer_is_shown_as_unchecked(
    world: DemoWorld, tmp_path: Path, keys: dict[str, Path]
) -> None:
    d = _signed_copy(world, tmp_path / "models", keys["key"])
    with TestClient(create_app(settings_for(world, models_dir=d))) as c:
        listing = _listing(c, world)
        assert listing["required_signer"] is None
        for m in listing["models"]:
            assert m["signature"] == {"signer": _fp(keys["pub"]), "verified": False}
    with TestClient(create_app(settings_for(world))) as c:  # the demo's files are not signed
        assert all(m["signature"] is None for m in _listing(c, world)["models"])


def test_an_unsigned_or_foreign_file_stops_the_start(
    world: DemoWorld, tmp_path: Path, keys: dict[str, Path]
) -> None:
    with pytest.raises(ServeConfigError, match=r"refusing to start.*dpals-eps1\.npz.*not signed"):
        create_app(settings_for(world, verify_key=keys["pub"]))
    d = _signed_copy(world, tmp_path / "models", keys["key"])
    sign_file(d / "dpals-eps4.npz", keys["other"])
    with pytest.raises(ServeConfigError, match=r"dpals-eps4\.npz.*another key") as info:
        create_app(settings_for(world, models_dir=d, verify_key=keys["pub"]))
    assert _fp(keys["other_pub"]) in str(info.value) and _fp(keys["pub"]) in str(info.value)
    with pytest.raises(ConfigError, match="private key"):  # the wrong half of the pair
        create_app(settings_for(world, models_dir=d, verify_key=keys["key"]))
    with pytest.raises(ConfigError, match="cannot read public key"):
        create_app(settings_for(world, models_dir=d, verify_key=tmp_path / "missing.pub"))


def test_a_bad_file_on_reload_is_refused_and_the_old_model_stays(
    world: DemoWorld, tmp_path: Path, keys: dict[str, Path]
) -> None:
    d = _signed_copy(world, tmp_path / "models", keys["key"])
    with TestClient(create_app(settings_for(world, models_dir=d, verify_key=keys["pub"]))) as c:
        before = {m["id"]: m["file_hash"] for m in _listing(c, world)["models"]}
        # a replacement signed by someone else (renamed into place, as deployments do) and a
        # new unsigned file
        incoming = tmp_path / "incoming.tmp"
        shutil.copy(d / "dpals-eps1.npz", incoming)
        sign_file(incoming, keys["other"])
        os.replace(incoming, d / "dpals-eps1.npz")
        shutil.copy(world.models_dir / "dpals-eps4.npz", d / "extra.npz")
        listing = _listing(c, world)
        assert {m["id"]: m["file_hash"] for m in listing["models"]} == before
        reasons = {r["file"]: r["reason"] for r in listing["rejected"]}
        assert set(reasons) == {"dpals-eps1.npz", "extra.npz"}
        assert "another key" in reasons["dpals-eps1.npz"] and "not signed" in reasons["extra.npz"]
        r = c.post(
            "/v1/recommend",
            headers=auth(world, "ann"),
            json={"model": "dpals-eps1", "history": [], "k": 3},
        )
        assert r.status_code == 200, r.text
        _err = c.post(
            "/v1/recommend", headers=auth(world, "ann"), json={"model": "extra", "history": []}
        )
        assert _err.status_code == 404
        # the right signature on the replacement (Ed25519 is deterministic: the very bytes
        # served before) and the stray file gone: the refusals are cleared
        sign_file(d / "dpals-eps1.npz", keys["key"])
        os.remove(d / "extra.npz")
        listing = _listing(c, world)
        assert {m["id"]: m["file_hash"] for m in listing["models"]} == before
        assert not listing["rejected"]
        # a different model under the same id, signed by the right key, replaces the old one
        incoming = tmp_path / "incoming.tmp"
        shutil.copy(d / "dpals-eps4.npz", incoming)
        os.replace(incoming, d / "dpals-eps1.npz")
        listing = _listing(c, world)
        now = {m["id"]: m["file_hash"] for m in listing["models"]}
        assert now["dpals-eps1"] == before["dpals-eps4"] and not listing["rejected"]


def test_the_verify_key_travels_to_workers(world: DemoWorld, keys: dict[str, Path]) -> None:
    settings = settings_for(world, verify_key=keys["pub"])
    again, _ = ServeSettings.from_json(settings.to_json())
    assert again.verify_key == keys["pub"]
    assert ServeSettings.from_json(settings_for(world).to_json())[0].verify_key is None


def test_the_cli_refuses_to_start_on_an_unsigned_file(
    world: DemoWorld, keys: dict[str, Path]
) -> None:
    from privrec.cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "serve",
            "--db",
            world.url,
            "--models",
            str(world.models_dir),
            "--verify-key",
            str(keys["pub"]),
        ],
    )
    out = " ".join(res.output.split())
    assert res.exit_code == 1, out
    assert "ServeConfigError" in out and "dpals-eps1.npz" in out and "not signed" in out


def test_artifacts_and_lineage_show_the_recorded_signer(world: DemoWorld) -> None:
    from privrec.governance.records import ArtifactRecord
    from privrec.serve.dashboard import artifact_entry

    with TestClient(create_app(settings_for(world))) as c:
        arts = c.get("/v1/artifacts", headers=auth(world, "dora")).json()["artifacts"]
        assert arts and all(a["signer"] is None for a in arts)  # the demo signs nothing
        # file names only: the server's directory layout is not the callers' business
        assert all("path" not in a and "/" not in a["file"] for a in arts)
        assert str(world.root) not in json.dumps(arts)
        assert all(m["lineage"]["signer"] is None for m in _listing(c, world)["models"])
    rec = ArtifactRecord(
        id=1, dataset="d", file_hash="0" * 64, path="/m.npz", model_kind="dppopularity",
        config={}, privrec_version="x", git_commit=None, guarantee={}, seeded_noise=False,
        version_id=None, dataset_hash="1" * 64, created_at=0.0, created_by="ann",
        signer="SHA256:" + "A" * 43,
    )  # fmt: skip
    assert artifact_entry(rec)["signer"] == "SHA256:" + "A" * 43
