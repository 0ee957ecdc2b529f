"""Ed25519-signed model files: who produced this artifact, and is every byte unchanged?

Why. :func:`~privrec.models.persistence.load_model` re-derives a private model's ε from the
mechanism parameters stored beside it, so editing the stated ε alone is caught. A *consistent*
forgery is not: raise the noise multiplier in the stored events and lower ε to match, or swap
the released factors for ones trained without noise, and every stored number still agrees with
every other. Noise cannot be re-derived from its output. A signature closes that gap for a
reader who trusts the signer: the trainer signs the file with a private key; whoever loads it
checks the signature with the trainer's public key *before anything in the file is parsed or
decompressed*, and a forged or edited file is refused.

What it proves and what it does not. A valid signature shows that the holder of the private
key produced these exact bytes. It does **not** show that the signer added the noise the
guarantee describes — a signer can sign a bad model. That is what the privacy ledger and its
audit log are for (``docs/governance.md``); ``docs/privacy.md`` ("Signed model files") says
the same for users.

The format. The signature lives in the zip archive's comment, the free-text field after the
end-of-central-directory record (EOCD) that zip readers — numpy's and privrec's — ignore::

    <every byte of the archive, its EOCD ending in comment length = 232>
    privrec-model-signature v1 ed25519\\n
    signer SHA256:<43 base64 characters>\\n
    signature <128 hex digits>\\n

The signed digest is the SHA-256 of *every byte before the comment*: the local headers, the
compressed member data, the central directory and the EOCD (whose comment-length field pins
the trailer's size). So no member can be changed, added, removed, re-ordered or re-compressed,
no header field (names, sizes, CRCs, even timestamps) can be edited, and nothing can be
appended, without the check failing; and since only raw bytes are hashed, verification needs
no zip parsing and no decompression at all. (A digest over member names, header fields and
compressed bytes, re-assembled from a parsed directory, would leave bytes outside it free to
change and would parse hostile structures before the check; hashing the raw prefix is both
stricter and simpler.) The signed message is domain-separated and names the signer's
fingerprint: ``b"privrec-model-signature v1\\0" + fingerprint + b"\\0" + sha256``.

Keys. :func:`generate_keypair` writes ``signing.key`` (PKCS#8 PEM, unencrypted, created with
mode 0600 and never overwritten — :func:`privrec.keyfiles.write_secret`) and ``signing.pub``
(SubjectPublicKeyInfo PEM, to hand to reviewers). A private key readable by others is refused
when signing. The fingerprint, ``SHA256:`` and the unpadded base64 of the SHA-256 of the raw
32-byte public key, is what the file stores and what tools print (the style of
``ssh-keygen -l``). All cryptography is the ``cryptography`` package's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privrec.errors import ConfigError, DataError, KeyFileError, ModelFileError, SignatureError
from privrec.keyfiles import read_secret, write_secret

__all__ = [
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "TRAILER_SIZE",
    "FileSignature",
    "SigningKey",
    "VerifyKey",
    "fingerprint",
    "generate_keypair",
    "load_signing_key",
    "load_verify_key",
    "read_signature",
    "sign_file",
    "verify_bytes",
    "verify_file",
]

PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"

#: a private key: the key object, or the path of a PEM file written by :func:`generate_keypair`
SigningKey = Ed25519PrivateKey | str | Path
#: a public key: the key object, or the path of a PEM file (``signing.pub``)
VerifyKey = Ed25519PublicKey | str | Path

_HEAD = b"privrec-model-signature v1 ed25519\n"
_DOMAIN = b"privrec-model-signature v1\0"
_TRAILER = re.compile(
    rb"privrec-model-signature v1 ed25519\n"
    rb"signer (SHA256:[A-Za-z0-9+/]{43})\n"
    rb"signature ([0-9a-f]{128})\n"
)
#: bytes of the signature block (the zip comment of a signed file): 232
TRAILER_SIZE = len(_HEAD) + len(b"signer SHA256:") + 43 + 1 + len(b"signature ") + 128 + 1
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22  # the end-of-central-directory record without its comment
_MAX_KEY_FILE = 64 << 10
_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileSignature:
    """The signature block of a model file.

    ``verified`` is ``True`` only when the signature was checked against a key the caller
    supplied; otherwise ``fingerprint`` is merely what the file *claims* (anyone can write a
    block naming any fingerprint).
    """

    fingerprint: str
    verified: bool

    def describe(self) -> str:
        """One line for people: whether the signature was checked, and by whose key."""
        if self.verified:
            return f"signed by {self.fingerprint} (signature verified against the given key)"
        return (
            f"says it is signed by {self.fingerprint} — NOT checked; load it with the signer's "
            "public key (verify_key= / --verify-key) to check"
        )


# ------------------------------------------------------------------------------------- keys
def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``SHA256:<base64>`` of the raw public key (a private key's public half)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    digest = hashlib.sha256(pub.public_bytes_raw()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def generate_keypair(directory: str | Path) -> tuple[Path, Path]:
    """Create a model-signing key pair in ``directory``: ``signing.key`` (mode 0600, never
    overwritten) and ``signing.pub``; returns their paths.

    Raises
    ------
    KeyFileError
        ``signing.key`` already exists (a signing key is not replaced by accident), or the
        path is a link or not a regular file.
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = write_secret(
        folder / PRIVATE_KEY_NAME,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        exclusive=True,
    )
    public = folder / PUBLIC_KEY_NAME
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_signing_key(key: SigningKey) -> Ed25519PrivateKey:
    """The private key itself, or read from a PEM file that only its owner may read."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    if not isinstance(key, str | Path):
        raise ConfigError(
            f"signing_key must be an Ed25519PrivateKey or a key file path, not {type(key).__name__}"
        )
    raw = read_secret(key)  # refuses a key others can read (chmod 600)
    try:
        loaded = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"key file {str(key)!r} is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"key file {str(key)!r} holds a {type(loaded).__name__}, not Ed25519")
    return loaded


def load_verify_key(key: VerifyKey) -> Ed25519PublicKey:
    """The public key itself, or read from a PEM file (``signing.pub``)."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if not isinstance(key, str | Path):
        raise ConfigError(
            f"verify_key must be an Ed25519PublicKey or a key file path, not {type(key).__name__}"
        )
    path = Path(key)
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read public key {str(path)!r}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in raw:
        raise ConfigError(
            f"{str(path)!r} is a private key; verify with the public key ({PUBLIC_KEY_NAME}) "
            "and keep the private one with the signer"
        )
    try:
        if len(raw) > _MAX_KEY_FILE:
            raise ValueError("file too large")
        loaded = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{str(path)!r} is not a PEM public key: {exc}") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{str(path)!r} holds a {type(loaded).__name__}, not an Ed25519 key")
    return loaded


# ------------------------------------------------------------------------------ signatures
def _message(fp: str, digest: bytes) -> bytes:
    return _DOMAIN + fp.encode("ascii") + b"\0" + digest


def _hash_prefix(fh: BinaryIO, n: int, tail: bytes = b"") -> bytes:
    """SHA-256 of the first ``n`` bytes read from ``fh``, then of ``tail``."""
    h = hashlib.sha256()
    left = n
    while left:
        block = fh.read(min(_BLOCK, left))
        if not block:
            raise DataError("model file shrank while it was read")
        h.update(block)
        left -= len(block)
    h.update(tail)
    return h.digest()


def _parse_tail(tail: bytes) -> tuple[str, bytes] | None:
    """(fingerprint, signature) when ``tail`` (the file's last bytes) is an EOCD announcing a
    comment of :data:`TRAILER_SIZE` bytes followed by a well-formed signature block."""
    if len(tail) != _EOCD_SIZE + TRAILER_SIZE:
        return None
    eocd, block = tail[:_EOCD_SIZE], tail[_EOCD_SIZE:]
    if eocd[:4] != _EOCD or int.from_bytes(eocd[-2:], "little") != TRAILER_SIZE:
        return None
    m = _TRAILER.fullmatch(block)
    if m is None:
        return None
    return m.group(1).decode("ascii"), bytes.fromhex(m.group(2).decode("ascii"))


def _read_tail(fh: BinaryIO, size: int) -> bytes:
    n = _EOCD_SIZE + TRAILER_SIZE
    if size < n:
        return b""
    fh.seek(size - n)
    return fh.read(n)


def read_signature(path: str | Path) -> FileSignature | None:
    """The signature block a model file carries, unverified (``None``: not signed).

    Reads only the file's last few hundred bytes; says who the file *claims* signed it.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            parsed = _parse_tail(_read_tail(fh, os.fstat(fh.fileno()).st_size))
    except OSError as exc:
        raise DataError("model file cannot be read", file=p, found=str(exc)) from None
    return None if parsed is None else FileSignature(parsed[0], verified=False)


def _check(
    parsed: tuple[str, bytes] | None, key: Ed25519PublicKey, digest: bytes, path: Path
) -> FileSignature:
    if parsed is None:
        raise SignatureError(
            "the model file is not signed (no well-formed signature block at its end; a verify "
            "key was given, so a signature is required)",
            file=path,
            field="<zip comment>",
            expected=f"a signature by {fingerprint(key)}",
        )
    fp, sig = parsed
    want = fingerprint(key)
    if fp != want:
        raise SignatureError(
            "the model file was signed by another key",
            file=path,
            field="signer",
            expected=want,
            found=fp,
        )
    try:
        key.verify(sig, _message(fp, digest))
    except InvalidSignature:
        raise SignatureError(
            "the signature does not match the file: it was changed after it was signed",
            file=path,
            field="signature",
        ) from None
    return FileSignature(fp, verified=True)


def verify_bytes(data: bytes, key: VerifyKey, path: str | Path = "<bytes>") -> FileSignature:
    """Check the signature of a model file held in memory (``data``: all its bytes).

    Nothing is parsed but the fixed-size signature block at the end, and nothing is
    decompressed: :func:`privrec.models.persistence.load_model` calls this on the bytes it then
    parses, so what is checked is exactly what is read.

    Raises
    ------
    SignatureError
        Not signed, signed by another key, or any byte differs from what was signed.
    """
    pub = load_verify_key(key)
    n = _EOCD_SIZE + TRAILER_SIZE
    parsed = _parse_tail(data[-n:]) if len(data) >= n else None
    digest = b""
    if parsed is not None:
        digest = hashlib.sha256(memoryview(data)[: len(data) - TRAILER_SIZE]).digest()
    return _check(parsed, pub, digest, Path(path))


def verify_file(path: str | Path, key: VerifyKey) -> FileSignature:
    """Check a model file's signature on disk, streaming (see :func:`verify_bytes`)."""
    p = Path(path)
    pub = load_verify_key(key)
    try:
        with p.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            parsed = _parse_tail(_read_tail(fh, size))
            digest = b""
            if parsed is not None:
                fh.seek(0)
                digest = _hash_prefix(fh, size - TRAILER_SIZE)
    except OSError as exc:
        raise DataError("model file cannot be read", file=p, found=str(exc)) from None
    return _check(parsed, pub, digest, p)


def file_sha256(fh: BinaryIO) -> bytes:
    """SHA-256 of an open file's whole content (read from the start, in 1 MiB blocks)."""
    h = hashlib.sha256()
    fh.seek(0)
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.digest()


def sign_file(
    path: str | Path, key: SigningKey, *, expect_sha256: bytes | None = None
) -> FileSignature:
    """Sign the model file at ``path`` in place (a signed one is re-signed); returns the block.

    The archive's end-of-central-directory record gets a comment of :data:`TRAILER_SIZE` bytes,
    the signature block, over the SHA-256 of everything before it. ``expect_sha256`` (the
    whole file's SHA-256 when it was checked) refuses to sign a file changed since its check.

    Raises
    ------
    ModelFileError
        ``path`` does not end in a zip end-of-central-directory record without a comment (or
        with a privrec signature block): not a model file privrec wrote.
    """
    priv = load_signing_key(key)
    fp = fingerprint(priv)
    p = Path(path)
    try:
        with p.open("r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if expect_sha256 is not None and file_sha256(fh) != expect_sha256:
                raise ModelFileError(
                    "the file changed between its check and its signing: not signed",
                    file=p,
                    field="<file>",
                )
            length = TRAILER_SIZE.to_bytes(2, "little")
            comment = b"\0\0"  # what numpy writes: no comment
            if _parse_tail(_read_tail(fh, size)) is not None:  # re-sign: drop the old block
                size -= TRAILER_SIZE
                comment = length
            fh.seek(max(size - _EOCD_SIZE, 0))
            eocd = fh.read(_EOCD_SIZE)
            if len(eocd) != _EOCD_SIZE or eocd[:4] != _EOCD or eocd[-2:] != comment:
                raise ModelFileError(
                    "cannot sign: the file does not end in a zip directory record without a "
                    "comment (not a model file written by privrec)",
                    file=p,
                    field="<zip comment>",
                )
            fh.seek(0)
            digest = _hash_prefix(fh, size - 2, length)
            sig = priv.sign(_message(fp, digest))
            block = _HEAD + f"signer {fp}\nsignature {sig.hex()}\n".encode("ascii")
            fh.seek(size - 2)
            fh.write(length + block)  # same size as any old block: it is overwritten in place
            fh.truncate()
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise DataError("model file cannot be signed", file=p, found=str(exc)) from None
    return FileSignature(fp, verified=True)
