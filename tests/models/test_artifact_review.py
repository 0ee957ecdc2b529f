"""Artifact review regressions: what a private model file may carry beyond its guarantee, how
much memory a crafted file can make the loader use, and the temporary file a save writes.

* A private file with members or metadata fields privrec never writes into one (a smuggled
  ``state_user_factors``, a version-1 file's user ids, ``"n_users"`` in the metadata) loaded
  silently and passed ``privrec privacy verify``: it now warns and is marked
  (``file_uncovered_``).
* A catalogue of repeated text ids (256:1 allowed) pinned gigabytes of ``sparse`` zero factors,
  all inflated before the ids were found not unique; and every member was read with one
  ``read(n)``, a second full copy beside the array (peak ≈ 3 × the declared size).
* ``atomic_output``'s predictable temporary name was opened following symlinks.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privrec.data.synthetic import synthetic
from privrec.errors import ModelFileError, PrivacyWarning
from privrec.models import DPALS, EASE, DPPopularity, load_model, npz_reader
from privrec.models.persistence import atomic_output


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _rebuild(
    src: Path,
    dst: Path,
    *,
    arrays: dict[str, np.ndarray] | None = None,
    meta_edit: Any = None,
    declare: bool = True,
) -> Path:
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(np.load(io.BytesIO(members["__meta__.npy"])).tobytes())
    for key, arr in (arrays or {}).items():
        members[f"{key}.npy"] = _npy(arr)
        if declare and "arrays" in meta:
            meta["arrays"][key] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
    if meta_edit is not None:
        meta_edit(meta)
    members["__meta__.npy"] = _npy(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return dst


def _load_recording(path: Path) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path)
    return model, [str(w.message) for w in caught if issubclass(w.category, PrivacyWarning)]


def test_genuine_private_file_carries_nothing_uncovered(dpals_file: Path) -> None:
    model, warned = _load_recording(dpals_file)
    assert model.file_uncovered_ == ()
    assert warned == []


def test_non_private_file_is_not_marked(tmp_path: Path) -> None:
    model = EASE(regularization=10.0).fit(synthetic(n_users=50, n_items=20, seed=1))
    path = _rebuild(
        model.save(tmp_path / "ease.npz"), tmp_path / "e2.npz", meta_edit=lambda m: m.update(x=1)
    )
    again, warned = _load_recording(path)
    assert again.file_uncovered_ == () and warned == []


def test_smuggled_state_array_in_private_file_warns(dpals_file: Path, tmp_path: Path) -> None:
    bad = _rebuild(
        dpals_file,
        tmp_path / "smuggled.npz",
        arrays={"state_user_factors": np.ones((200, 4), np.float32)},
    )
    model, warned = _load_recording(bad)
    assert model.file_uncovered_ == ("array 'state_user_factors'",)
    assert any("does not cover" in w and "state_user_factors" in w for w in warned)
    assert not hasattr(model, "user_factors_") or model.user_factors_.shape[0] == 0


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.update(n_users=200, hostname="trainer-7"), "metadata field 'hostname'"),
        (lambda m: m["extra"].update(n_interactions=1600), "metadata field 'extra.n_interactions'"),
    ],
    ids=["top-level", "extra"],
)
def test_unknown_metadata_in_private_file_warns(
    dpals_file: Path, tmp_path: Path, edit: Any, named: str
) -> None:
    bad = _rebuild(dpals_file, tmp_path / "meta.npz", meta_edit=edit)
    model, warned = _load_recording(bad)
    assert named in model.file_uncovered_
    assert any(named in w for w in warned)


def test_version_1_private_file_with_user_ids_warns(dpals_file: Path, tmp_path: Path) -> None:
    def v1(meta: dict[str, Any]) -> None:
        meta["format_version"] = 1
        del meta["arrays"]

    bad = _rebuild(
        dpals_file, tmp_path / "v1.npz", arrays={"user_ids": np.arange(200)}, meta_edit=v1
    )
    model, warned = _load_recording(bad)
    assert model.n_users_ == 0
    assert model.file_uncovered_ == ("array 'user_ids'",)
    assert warned


def test_duplicate_catalogue_refused_before_sparse_members_are_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = DPALS(epsilon=2.0, delta=1e-6, unit="user", factors=4, seed=0)
        model.fit(synthetic(n_users=200, n_items=40, seed=0))
    src = model.save(tmp_path / "m.npz")
    n = 20_000
    ids = np.full(n, "a", dtype="<U1")  # repeated text ids: cheap to compress
    bad = _rebuild(
        src,
        tmp_path / "dupes.npz",
        arrays={
            "item_ids": ids,
            "state_item_factors": np.zeros((n, 4), np.float32),
            "state_noisy_counts": np.zeros(n, np.float32),
        },
    )
    inflated: list[str] = []
    real = npz_reader.ArchiveReader._data

    def spy(self: Any, zf: Any, head: Any, key: str) -> np.ndarray:
        inflated.append(key)
        return real(self, zf, head, key)

    monkeypatch.setattr(npz_reader.ArchiveReader, "_data", spy)
    with pytest.raises(ModelFileError, match="unique") as info:
        load_model(bad)
    assert info.value.field == "item_ids"
    assert "state_item_factors" not in inflated and "state_noisy_counts" not in inflated


def test_members_are_inflated_in_bounded_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``read(n)`` of a whole member: the array is the only full copy in memory."""
    data = synthetic(n_users=300, n_items=3000, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        pop = DPPopularity(epsilon=2.0, delta=1e-6, unit="user", seed=0).fit(data)
    path = pop.save(tmp_path / "pop.npz")
    monkeypatch.setattr(npz_reader, "_READ_BLOCK", 1000)
    sizes: list[int] = []
    real = zipfile.ZipExtFile.read

    def spy(self: Any, n: int = -1) -> bytes:
        sizes.append(n)
        return real(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = load_model(path)
    assert model.n_items_ == 3000
    assert sizes and max(sizes) <= 10_000  # headers (≤ _MAX_HEADER) and 1,000-byte blocks
    assert -1 not in sizes


def test_atomic_output_does_not_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "shared" / "model.npz"
    out.parent.mkdir()
    planted = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    planted.symlink_to(victim)
    with atomic_output(out) as tmp, tmp.open("wb") as fh:
        fh.write(b"model")
    assert victim.read_bytes() == b"precious"
    assert out.read_bytes() == b"model" and not out.is_symlink()
    assert not planted.exists() and not planted.is_symlink()


def test_metadata_with_a_repeated_key_is_refused(dpals_file: Path, tmp_path: Path) -> None:
    """Python's JSON keeps the last of repeated keys, other readers the first: a file whose
    guarantee says ``"epsilon": 0.01, …, "epsilon": 2`` verifies here and reads as 0.01 there."""
    with zipfile.ZipFile(dpals_file) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    text = np.load(io.BytesIO(members["__meta__.npy"])).tobytes().decode()
    text = text.replace('"guarantee": {', '"guarantee": {"epsilon": 0.01, ', 1)
    members["__meta__.npy"] = _npy(np.frombuffer(text.encode(), dtype=np.uint8))
    bad = tmp_path / "dup.npz"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    with pytest.raises(ModelFileError, match="repeats a key") as info:
        load_model(bad)
    assert info.value.field == "__meta__" and info.value.found == "epsilon"
