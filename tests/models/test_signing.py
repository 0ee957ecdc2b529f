"""Signed model files (issue 11, hostile input): who produced a file, and is every byte unchanged?

A guarantee re-verified on load catches an edited ε, but not a *consistent* forgery (noise
parameters and ε edited together, released arrays swapped): only a signature by a key the
reader trusts does. Every failure must be a ``SignatureError`` raised before the archive is
parsed or anything decompressed.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privrec.data.synthetic import synthetic
from privrec.errors import ConfigError, KeyFileError, ModelFileError, PrivacyWarning, SignatureError
from privrec.models import DPALS, DPEASE, DPPopularity, load_model
from privrec.models.npz_reader import ArchiveReader
from privrec.models.signing import (
    TRAILER_SIZE,
    fingerprint,
    generate_keypair,
    load_verify_key,
    read_signature,
    sign_file,
    verify_bytes,
    verify_file,
)

PRIVATE = {"epsilon": 1.0, "delta": 1e-6, "unit": "user", "seed": 0}
MODELS = {
    "dppopularity": lambda: DPPopularity(**PRIVATE),
    "dpals": lambda: DPALS(**PRIVATE, factors=4, iterations=2),
    "dpease": lambda: DPEASE(**PRIVATE),
}


def _fit(make: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # seeded noise: tests only
        return make().fit(synthetic(n_users=120, n_items=25, seed=0))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("other"))


@pytest.fixture(scope="module")
def signed_pop(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> bytes:
    """The bytes of a signed DPPopularity file (small: every byte of it is flipped below)."""
    path = _fit(MODELS["dppopularity"]).save(
        tmp_path_factory.mktemp("m") / "pop.npz", signing_key=keys[0]
    )
    return path.read_bytes()


@pytest.fixture
def no_inflation(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every archive the loader starts to parse (none may be, for a refused file)."""
    opened: list[Path] = []
    real = ArchiveReader.read

    def spy(self: ArchiveReader, plan: Any) -> Any:
        opened.append(self.path)
        return real(self, plan)

    monkeypatch.setattr(ArchiveReader, "read", spy)
    return opened


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_round_trip_for_each_private_model(
    kind: str, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    model = _fit(MODELS[kind])
    path = model.save(tmp_path / f"{kind}.npz", signing_key=keys[0])
    loaded = load_model(path, verify_key=keys[1])
    assert loaded.file_signature_ is not None and loaded.file_signature_.verified
    assert loaded.file_signature_.fingerprint == fingerprint(load_verify_key(keys[1]))
    assert loaded.guarantee_.epsilon == model.guarantee_.epsilon  # type: ignore[attr-defined]
    hist = model.user_items_[:3]
    np.testing.assert_array_equal(
        loaded.recommend_history(hist, k=5)[0], model.recommend_history(hist, k=5)[0]
    )
    # a signed file is still an ordinary .npz (the signature is the zip comment)
    with np.load(path) as z:
        assert "__meta__" in z.files


def test_without_a_verify_key_a_signed_file_loads_and_names_its_claimed_signer(
    tmp_path: Path, keys: tuple[Path, Path], signed_pop: bytes
) -> None:
    path = tmp_path / "pop.npz"
    path.write_bytes(signed_pop)
    model = load_model(path)
    sig = model.file_signature_
    assert sig is not None and not sig.verified
    assert sig.fingerprint == fingerprint(load_verify_key(keys[1]))
    assert "NOT checked" in sig.describe()
    assert read_signature(path) == sig
    unsigned = _fit(MODELS["dppopularity"]).save(tmp_path / "plain.npz")
    assert load_model(unsigned).file_signature_ is None and read_signature(unsigned) is None


def test_re_signing_replaces_the_signature(
    tmp_path: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path], signed_pop: bytes
) -> None:
    path = tmp_path / "pop.npz"
    path.write_bytes(signed_pop)
    sign_file(path, other_keys[0])
    assert path.stat().st_size == len(signed_pop)  # one signature block, not two
    assert verify_file(path, other_keys[1]).verified
    with pytest.raises(SignatureError, match="another key"):
        verify_file(path, keys[1])
    sign_file(path, keys[0])
    assert path.read_bytes() == signed_pop  # Ed25519 is deterministic


def test_a_file_changed_after_its_check_is_not_signed(
    tmp_path: Path, keys: tuple[Path, Path], signed_pop: bytes
) -> None:
    """``privacy sign`` checked the file, then signed whatever was at the path: the signed
    bytes must be the checked bytes."""
    import hashlib

    path = tmp_path / "pop.npz"
    path.write_bytes(signed_pop)
    checked = hashlib.sha256(signed_pop).digest()
    sign_file(path, keys[0], expect_sha256=checked)  # unchanged: signed
    with path.open("ab") as fh:
        fh.write(b"x")  # changed between check and signing
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="changed between its check and its signing"):
        sign_file(path, keys[0], expect_sha256=checked)
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------- tampering
def test_every_single_flipped_byte_is_refused(keys: tuple[Path, Path], signed_pop: bytes) -> None:
    """Exhaustive: each byte of the file, data, headers, directory and signature block alike."""
    pub = load_verify_key(keys[1])
    assert verify_bytes(signed_pop, pub).verified
    for pos in range(len(signed_pop)):
        for bit in (0x01, 0x80):
            blob = bytearray(signed_pop)
            blob[pos] ^= bit
            with pytest.raises(SignatureError):
                verify_bytes(bytes(blob), pub)


@given(pos=st.integers(min_value=0), bit=st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
def test_a_flipped_byte_stops_load_model_before_the_archive_is_read(
    tmp_path_factory: pytest.TempPathFactory,
    keys: tuple[Path, Path],
    signed_pop: bytes,
    pos: int,
    bit: int,
) -> None:
    opened: list[Path] = []
    real = ArchiveReader.read

    def spy(self: ArchiveReader, plan: Any) -> Any:  # hypothesis forbids function fixtures
        opened.append(self.path)
        return real(self, plan)

    ArchiveReader.read = spy  # type: ignore[method-assign]
    try:
        blob = bytearray(signed_pop)
        blob[pos % len(blob)] ^= bit
        path = tmp_path_factory.mktemp("flip") / "pop.npz"
        path.write_bytes(bytes(blob))
        with pytest.raises(SignatureError):
            load_model(path, verify_key=keys[1])
        assert opened == []
    finally:
        ArchiveReader.read = real  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda b: b + b"\0", id="appended byte"),
        pytest.param(lambda b: b"\0" + b, id="prepended byte"),
        pytest.param(lambda b: b[:-1], id="truncated"),
        pytest.param(lambda b: b[: -TRAILER_SIZE - 2] + b"\0\0", id="signature stripped"),
    ],
)
def test_length_changes_are_refused(
    edit: Any, tmp_path: Path, keys: tuple[Path, Path], signed_pop: bytes, no_inflation: list[Path]
) -> None:
    path = tmp_path / "pop.npz"
    path.write_bytes(edit(signed_pop))
    with pytest.raises(SignatureError):
        load_model(path, verify_key=keys[1])
    assert no_inflation == []


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    """Re-zip ``src`` after ``edit(meta, arrays)``, keeping the metadata's array list honest."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    edit(meta, arrays)
    meta["arrays"] = {k: {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with dst.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return dst


def _claim_stronger_privacy(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The consistent forgery: doubled noise multipliers and the ε they would give, everywhere."""
    from privrec.privacy.guarantee import PrivacyGuarantee

    g = meta["extra"]["guarantee"]
    for spent in g["events"]:
        spent["event"]["noise_multiplier"] *= 2
    arrays["state_noise_multiplier"] = arrays["state_noise_multiplier"] * 2
    g["epsilon"] = PrivacyGuarantee.model_validate(g).recompute_epsilon()
    meta["params"]["epsilon"] = round(g["epsilon"], 3) + 0.001


def _noise_free_counts(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Swap the released noisy counts for exact ones (trained without noise)."""
    data = synthetic(n_users=120, n_items=25, seed=0)
    exact = np.asarray(data.matrix.sum(axis=0)).ravel().astype(np.float32)
    arrays["state_item_popularity"] = exact


@pytest.mark.parametrize(
    "edit", [_claim_stronger_privacy, _noise_free_counts], ids=["noise+epsilon", "swapped counts"]
)
def test_a_consistent_forgery_loads_unsigned_but_is_refused_with_a_key(
    edit: Any,
    tmp_path: Path,
    keys: tuple[Path, Path],
    signed_pop: bytes,
    no_inflation: list[Path],
) -> None:
    original = tmp_path / "pop.npz"
    original.write_bytes(signed_pop)
    forged = _rewrite(original, tmp_path / "forged.npz", edit)
    model = load_model(forged)  # every stored number agrees: the guarantee check passes
    if edit is _claim_stronger_privacy:
        assert model.guarantee_.epsilon < 0.5  # type: ignore[attr-defined]
    no_inflation.clear()
    with pytest.raises(SignatureError, match="not signed"):
        load_model(forged, verify_key=keys[1])
    # ... and keeping the original signature block does not help
    forged.write_bytes(forged.read_bytes()[:-2] + signed_pop[-TRAILER_SIZE - 2 :])
    with pytest.raises(SignatureError, match="changed after it was signed"):
        load_model(forged, verify_key=keys[1])
    assert no_inflation == []


def test_wrong_key_and_unsigned_file(
    tmp_path: Path,
    keys: tuple[Path, Path],
    other_keys: tuple[Path, Path],
    signed_pop: bytes,
    no_inflation: list[Path],
) -> None:
    path = tmp_path / "pop.npz"
    path.write_bytes(signed_pop)
    with pytest.raises(SignatureError, match="another key") as err:
        load_model(path, verify_key=other_keys[1])
    assert err.value.found == fingerprint(load_verify_key(keys[1]))
    unsigned = tmp_path / "plain.npz"
    unsigned.write_bytes(signed_pop[: -TRAILER_SIZE - 2] + b"\0\0")
    load_model(unsigned)  # a valid unsigned file …
    no_inflation.clear()
    with pytest.raises(SignatureError, match="not signed"):  # … is refused when a key is given
        load_model(unsigned, verify_key=keys[1])
    assert no_inflation == []
    assert issubclass(SignatureError, ModelFileError)


# ---------------------------------------------------------------------------------- keys
def test_key_files_are_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private, public = generate_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_unsafe_or_wrong_key_files_are_refused(tmp_path: Path, signed_pop: bytes) -> None:
    private, public = generate_keypair(tmp_path / "k")
    model = _fit(MODELS["dppopularity"])
    private.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        model.save(tmp_path / "m.npz", signing_key=private)
    assert not (tmp_path / "m.npz").exists()  # the key is checked before anything is written
    private.chmod(0o600)
    with pytest.raises(ConfigError, match="private key"):
        load_verify_key(private)
    public.chmod(0o600)
    with pytest.raises(KeyFileError, match="PEM private key"):
        model.save(tmp_path / "m.npz", signing_key=public)
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="PEM public key"):
        load_verify_key(tmp_path / "junk.pub")


def test_only_privrec_archives_are_signed(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="cannot sign"):
        sign_file(bad, keys[0])
    assert bad.read_bytes() == b"not a zip at all"
