"""Hostile model files (issue 11, items 1 and 5): typed errors before any array is used.

Each case edits a real model file the way an attacker or a broken disk would and checks the
loader refuses it with a privrec error naming the file — never a traceback, a MemoryError or
an ε nobody can back up.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.data.synthetic import synthetic
from privrec.errors import (
    GuaranteeMismatchError,
    ModelFileError,
    ModelFileTooLargeError,
)
from privrec.models import EASE, load_model


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_members(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def meta_of(members: dict[str, bytes]) -> dict[str, Any]:
    arr = np.load(io.BytesIO(members["__meta__.npy"]))
    out: dict[str, Any] = json.loads(arr.tobytes())
    return out


def with_meta(members: dict[str, bytes], meta: object) -> dict[str, bytes]:
    body = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return {**members, "__meta__.npy": npy(body)}


def tamper(src: Path, dst: Path, fn: Callable[[dict[str, bytes]], dict[str, bytes]]) -> Path:
    return write_members(dst, fn(read_members(src)))


def set_array(members: dict[str, bytes], key: str, arr: np.ndarray) -> dict[str, bytes]:
    """Replace an array and declare it in the metadata (a consistent edit)."""
    meta = meta_of(members)
    meta["arrays"][key] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
    return {**with_meta(members, meta), f"{key}.npy": npy(arr)}


def edit_meta(
    fn: Callable[[dict[str, Any]], object],
) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    def go(members: dict[str, bytes]) -> dict[str, bytes]:
        meta = meta_of(members)
        return with_meta(members, fn(meta))

    return go


def _guarantee_eps(value: float) -> Callable[[dict[str, Any]], object]:
    def fn(meta: dict[str, Any]) -> object:
        meta["extra"]["guarantee"]["epsilon"] = value
        return meta

    return fn


@pytest.mark.parametrize("fake", [-5.0, 0.01])
def test_faked_epsilon_is_refused_on_load_and_never_explained(
    dpals_file: Path, tmp_path: Path, fake: float
) -> None:
    bad = tamper(dpals_file, tmp_path / "fake.npz", edit_meta(_guarantee_eps(fake)))
    with pytest.raises(GuaranteeMismatchError) as info:
        load_model(bad)
    assert info.value.file == str(bad)
    res = CliRunner().invoke(app, ["privacy", "explain", str(bad)])
    assert res.exit_code == 1 and "GuaranteeMismatchError" in res.output
    assert "differentially private" not in res.output
    res = CliRunner().invoke(app, ["privacy", "verify", str(bad)])
    assert res.exit_code == 1 and "GuaranteeMismatchError" in res.output
    # forensics: the file can be opened unverified, but its ε is still never explained
    model = load_model(bad, verify=False)
    with pytest.raises(GuaranteeMismatchError):
        model.guarantee_.explain()


def test_verify_command_recomputes_and_reports(dpals_file: Path) -> None:
    # the fixture is trained with seeded noise: its numbers agree, but it is no private release
    res = CliRunner().invoke(app, ["privacy", "verify", str(dpals_file)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1, out
    assert "recomputed" in out and "NOT PRIVATE" in out and "drawn from a seed" in out
    assert ": OK" not in out
    res = CliRunner().invoke(app, ["privacy", "verify", "--consistency-only", str(dpals_file)])
    out = " ".join(res.output.split())
    assert res.exit_code == 0, out
    assert "recomputed" in out and "NOT A PRIVATE RELEASE" in out


def test_verify_fails_a_model_saved_with_its_training_users(tmp_path: Path) -> None:
    from privrec.models import DPPopularity

    data = synthetic(n_users=200, n_items=30, interactions_per_user=5, seed=3)
    m = DPPopularity(epsilon=1.0, delta=1e-5, unit="user").fit(data)  # CSPRNG noise: a release
    clean, with_users = tmp_path / "clean.npz", tmp_path / "users.npz"
    m.save(clean)
    m.save(with_users, include_user_data=True)
    res = CliRunner().invoke(app, ["privacy", "verify", str(clean)])
    assert res.exit_code == 0 and ": OK" in res.output and "NOT PRIVATE" not in res.output
    res = CliRunner().invoke(app, ["privacy", "verify", str(with_users)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "NOT PRIVATE" in out and "training users" in out


def _params(**kw: object) -> Callable[[dict[str, Any]], object]:
    def fn(meta: dict[str, Any]) -> object:
        meta["params"].update(kw)
        return meta

    return fn


def _guarantee_field(**kw: object) -> Callable[[dict[str, Any]], object]:
    def fn(meta: dict[str, Any]) -> object:
        meta["extra"]["guarantee"].update(kw)
        return meta

    return fn


BAD_META: list[Any] = [
    pytest.param(lambda m: [m], ModelFileError, id="meta-is-a-list"),
    pytest.param(lambda m: "text", ModelFileError, id="meta-is-a-string"),
    pytest.param(_params(alpha0=[1.0, 2.0]), ModelFileError, id="vector-alpha0"),
    pytest.param(_params(factors="4"), ModelFileError, id="string-factors"),
    pytest.param(_params(factors=5), ModelFileError, id="factors-disagree-with-array"),
    pytest.param(_params(delta=1e-5), GuaranteeMismatchError, id="delta-disagrees"),
    pytest.param(_params(seed=None), GuaranteeMismatchError, id="seeded-flag-disagrees"),
    pytest.param(_params(epsilon=0.5), GuaranteeMismatchError, id="spent-above-budget"),
    pytest.param(_guarantee_field(unit="interaction"), GuaranteeMismatchError, id="unit-disagrees"),
    pytest.param(_guarantee_field(events="x"), ModelFileError, id="events-not-a-list"),
    pytest.param(_guarantee_field(delta="1e-6"), ModelFileError, id="string-delta"),
    pytest.param(lambda m: {**m, "extra": {}}, ModelFileError, id="no-guarantee"),
    pytest.param(lambda m: {**m, "extra": []}, ModelFileError, id="extra-is-a-list"),
    pytest.param(lambda m: {**m, "model": "nope"}, ModelFileError, id="unknown-model"),
    pytest.param(lambda m: {**m, "format_version": 99}, ModelFileError, id="future-format"),
    pytest.param(lambda m: {**m, "has_user_data": True}, ModelFileError, id="claims-user-data"),
    pytest.param(lambda m: {**m, "arrays": {}}, ModelFileError, id="undeclared-arrays"),
    pytest.param(
        lambda m: {k: v for k, v in m.items() if k != "params"}, ModelFileError, id="no-params"
    ),
]


@pytest.mark.parametrize(("fn", "error"), BAD_META)
def test_malformed_metadata_is_a_typed_error(
    dpals_file: Path, tmp_path: Path, fn: Any, error: type[Exception]
) -> None:
    bad = tamper(dpals_file, tmp_path / "bad.npz", edit_meta(fn))
    with pytest.raises(error) as info:
        load_model(bad)
    assert info.value.file == str(bad)  # type: ignore[attr-defined]


BAD_ARRAYS: list[Any] = [
    pytest.param("state_item_factors", np.full((40, 4), np.nan, np.float32), id="nan-factors"),
    pytest.param("state_item_factors", np.zeros((41, 4), np.float32), id="factors-wrong-rows"),
    pytest.param("state_item_factors", np.zeros((40, 4), np.int64), id="factors-wrong-dtype"),
    pytest.param("state_head_items", np.array([0, 5, 99]), id="head-out-of-range"),
    pytest.param("state_head_items", np.array([3, 3, 4]), id="head-not-unique"),
    pytest.param("state_head_items", np.zeros(0, np.int64), id="head-empty"),
    pytest.param("state_fold", np.array([2.0, 0.0]), id="zero-user-ridge"),
    pytest.param("state_fold", np.array([2.0]), id="fold-too-short"),
    pytest.param("state_noise_scale", np.array([1.0, 2.0]), id="vector-noise-scale"),
    pytest.param("state_popularity_blend", np.array(1e9), id="blend-out-of-range"),
    pytest.param("item_ids", np.array(["a"] * 40), id="duplicate-item-ids"),
    pytest.param("item_ids", np.zeros((40, 2)), id="2d-item-ids"),
    pytest.param("state_evil", np.array(["x"]), id="unused-member-is-fine-but-typed"),
]


@pytest.mark.parametrize(("key", "arr"), BAD_ARRAYS)
def test_malformed_arrays_are_typed_errors(
    dpals_file: Path, tmp_path: Path, key: str, arr: np.ndarray
) -> None:
    bad = tamper(dpals_file, tmp_path / "bad.npz", lambda m: set_array(m, key, arr))
    if key == "state_evil":  # an extra released array the model ignores: loads and serves
        assert load_model(bad).n_items_ == 40
        return
    with pytest.raises(ModelFileError):
        load_model(bad)


def _raw_npy(descr: str, shape: tuple[int, ...], payload: bytes = b"") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


def test_header_claiming_a_trillion_elements_stops_at_the_header(
    dpals_file: Path, tmp_path: Path
) -> None:
    def fn(m: dict[str, bytes]) -> dict[str, bytes]:
        meta = meta_of(m)
        meta["arrays"]["state_item_factors"] = {"dtype": "<f4", "shape": [10**12, 4]}
        return {**with_meta(m, meta), "state_item_factors.npy": _raw_npy("<f4", (10**12, 4))}

    with pytest.raises(ModelFileTooLargeError, match="above the limit"):
        load_model(tamper(dpals_file, tmp_path / "huge.npz", fn))


def test_decompression_bomb_is_bounded(tmp_path: Path) -> None:
    # 64 MB of zeros compress to ~64 KB; with a 16 MB cap the loader refuses from the header
    bomb = np.zeros((1 << 24,), np.float32)
    members = {"item_ids.npy": npy(np.arange(3))}
    meta = {
        "format": "privrec-model",
        "format_version": 2,
        "model": "ease",
        "params": {},
        "extra": {},
        "has_user_data": False,
        "arrays": {
            "item_ids": {"dtype": np.arange(3).dtype.str, "shape": [3]},
            "state_weights": {"dtype": "<f4", "shape": [1 << 24]},
        },
    }
    members = {**with_meta(members, meta), "state_weights.npy": npy(bomb)}
    path = write_members(tmp_path / "bomb.npz", members)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ModelFileTooLargeError):
        load_model(path, max_bytes=16 << 20)


def test_size_limit_from_the_environment(dpals_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVREC_MAX_MODEL_BYTES", "1000")
    with pytest.raises(ModelFileTooLargeError, match="PRIVREC_MAX_MODEL_BYTES"):
        load_model(dpals_file)


@pytest.mark.parametrize(
    "members",
    [
        pytest.param({"evil.pkl": b"cos\nsystem\n"}, id="unknown-member"),
        pytest.param({"state_x.npy": _raw_npy("|O", (1,), b"\x80\x04N.")}, id="object-dtype"),
        pytest.param({"state_x.npy": _raw_npy("<f4", (4,), b"\x00" * 8)}, id="truncated-data"),
        pytest.param(
            {"state_x.npy": _raw_npy("<f4", (2,), b"\x00" * 16)}, id="data-longer-than-header"
        ),
        pytest.param({"state_x.npy": b"\x93NUMPY\x09\x00garbage"}, id="bad-npy-version"),
        pytest.param({"state_x.npy": _raw_npy("<f4", (2, 2, 2, 2), b"\x00" * 64)}, id="4-d"),
        pytest.param(
            {"state_x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': os.sys}\n"}, id="code-in-header"
        ),
    ],
)
def test_archive_members_are_checked(
    dpals_file: Path, tmp_path: Path, members: dict[str, bytes]
) -> None:
    bad = tamper(dpals_file, tmp_path / "bad.npz", lambda m: {**m, **members})
    with pytest.raises(ModelFileError):
        load_model(bad)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip at all", b"PK\x03\x04" + b"\x00" * 40],
    ids=["empty", "text", "broken-zip"],
)
def test_not_an_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        load_model(path)


def test_truncated_archive(dpals_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    path.write_bytes(dpals_file.read_bytes()[: dpals_file.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_model(path)


def test_version_1_private_file_loads_without_its_user_data(
    dpals_file: Path, tmp_path: Path
) -> None:
    """Files written before this release stored user ids even for private models: dropped."""

    def fn(m: dict[str, bytes]) -> dict[str, bytes]:
        meta = meta_of(m)
        meta["format_version"] = 1
        del meta["arrays"]
        return {
            **with_meta(m, meta),
            "user_ids.npy": npy(np.arange(200)),
            "ui_data.npy": npy(np.zeros(0, np.float32)),
            "ui_indices.npy": npy(np.zeros(0, np.int32)),
            "ui_indptr.npy": npy(np.zeros(201, np.int64)),
            "ui_shape.npy": npy(np.array([200, 40])),
        }

    model = load_model(tamper(dpals_file, tmp_path / "v1.npz", fn))
    assert model.n_users_ == 0 and len(model.user_ids_) == 0


def test_non_private_round_trip_keeps_known_users(tmp_path: Path) -> None:
    data = synthetic(n_users=60, n_items=30, seed=1)
    model = EASE(regularization=10.0).fit(data)
    again = load_model(model.save(tmp_path / "ease.npz"))
    np.testing.assert_array_equal(
        again.recommend(np.arange(5), k=3)[0], model.recommend(np.arange(5), k=3)[0]
    )


def test_non_private_model_saved_without_user_data_round_trips(tmp_path: Path) -> None:
    data = synthetic(n_users=60, n_items=30, seed=1)
    model = EASE(regularization=10.0).fit(data)
    first = load_model(model.save(tmp_path / "a.npz", include_user_data=False))
    again = load_model(first.save(tmp_path / "b.npz"))  # nothing to include: saved without
    hist = data.matrix[:3]
    np.testing.assert_array_equal(
        again.recommend_history(hist, k=4)[0], model.recommend_history(hist, k=4)[0]
    )
