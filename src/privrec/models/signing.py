"""Ed25519 signatures for model files: who produced this artifact, and is it unchanged?

A guarantee re-verified on load proves that its ε follows from its events — not that the
events describe what was really run. A signature closes that gap for a reviewer who trusts
the signer: the trainer signs the file with a private key, a reviewer checks it with the
public key (which a budget ledger can record next to the run). The signature is detached —
``model.npz.sig``, a small JSON document — and covers the SHA-256 of the whole file, so any
edit to any byte is detected.

Keys are raw 32-byte Ed25519 keys, hex-encoded: the private key file is created with mode
0600 and never overwritten; the public key file holds one line. Everything goes through
``cryptography``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privrec.errors import ConfigError, DataError, SignatureError

__all__ = [
    "SIGNATURE_SUFFIX",
    "generate_key",
    "public_key_hex",
    "sign_file",
    "signature_path",
    "verify_file",
]

SIGNATURE_SUFFIX = ".sig"
_ALG = "ed25519-sha256"
_MAX_SIG_BYTES = 4096


def signature_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _message(digest: str) -> bytes:
    # domain-separated: a privrec model-file signature cannot be replayed as anything else
    return f"privrec-model-signature v1\n{_ALG}\n{digest}\n".encode()


def generate_key(private_path: str | Path) -> Path:
    """Create a new signing key at ``private_path`` (mode 0600, never overwritten) and its public
    key beside it (``<name>.pub``); returns the public key's path."""
    priv = Path(private_path)
    pub = priv.with_name(priv.name + ".pub")
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes_raw().hex() + "\n"
    try:
        fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"key file {str(priv)!r} already exists; refusing to overwrite it"
        ) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(raw)
    os.chmod(priv, 0o600)  # whatever the umask
    pub.write_text(key.public_key().public_bytes_raw().hex() + "\n")
    return pub


def _load_private(path: Path) -> Ed25519PrivateKey:
    if not path.is_file():
        raise DataError("signing key not found", file=path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"signing key {str(path)!r} is readable by others (mode {mode:o}); chmod 600 it first"
        )
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    except ValueError as exc:
        raise DataError(
            "not an Ed25519 private key (64 hex digits)", file=path, found=str(exc)
        ) from None


def _load_public(text: str, where: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError:
        raise SignatureError(
            "not an Ed25519 public key (64 hex digits)", field=where, found=text[:80]
        ) from None


def public_key_hex(path: str | Path) -> str:
    """The public key (hex) of a key file, private or public."""
    p = Path(path)
    text = p.read_text().strip()
    if p.name.endswith(".pub"):
        return _load_public(text, str(p)).public_bytes_raw().hex()
    return _load_private(p).public_key().public_bytes_raw().hex()


def sign_file(path: str | Path, private_key: str | Path) -> Path:
    """Sign the model file ``path``; writes and returns ``<path>.sig``."""
    p = Path(path)
    if not p.is_file():
        raise DataError("file to sign not found", file=p)
    key = _load_private(Path(private_key))
    digest = _digest(p)
    sig = key.sign(_message(digest))
    doc = {
        "algorithm": _ALG,
        "sha256": digest,
        "public_key": key.public_key().public_bytes_raw().hex(),
        "signature": sig.hex(),
    }
    out = signature_path(p)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return out


def verify_file(path: str | Path, public_key: str | None = None) -> str:
    """Check ``<path>.sig`` against the file; returns the signer's public key (hex).

    With ``public_key`` (hex), the signature must also be by that key — without it, the
    signature only proves the file is unchanged since *someone* signed it.
    Raises :class:`~privrec.errors.SignatureError` on any mismatch.
    """
    p = Path(path)
    sig_path = signature_path(p)
    if not sig_path.is_file():
        raise SignatureError("no signature file", file=sig_path)
    raw = sig_path.read_bytes()
    if len(raw) > _MAX_SIG_BYTES:
        raise SignatureError("signature file too large", file=sig_path, found=len(raw))
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SignatureError("signature file is not JSON", file=sig_path, found=str(exc)) from None
    if not isinstance(doc, dict) or doc.get("algorithm") != _ALG:
        raise SignatureError(
            "unsupported signature", file=sig_path, field="algorithm", expected=_ALG
        )
    fields = ("sha256", "public_key", "signature")
    if not all(isinstance(doc.get(f), str) for f in fields):
        raise SignatureError(
            "signature file lacks a field", file=sig_path, expected=", ".join(fields)
        )
    signer = _load_public(doc["public_key"], "public_key")
    if public_key is not None:
        wanted = _load_public(public_key, "--public-key")
        if wanted.public_bytes_raw() != signer.public_bytes_raw():
            raise SignatureError(
                "the file was signed by another key",
                file=sig_path,
                expected=wanted.public_bytes_raw().hex(),
                found=signer.public_bytes_raw().hex(),
            )
    digest = _digest(p)
    if digest != doc["sha256"]:
        raise SignatureError("the file changed after it was signed", file=p, field="sha256")
    try:
        signer.verify(bytes.fromhex(doc["signature"]), _message(digest))
    except (InvalidSignature, ValueError):
        raise SignatureError("invalid signature", file=sig_path, field="signature") from None
    return signer.public_bytes_raw().hex()
