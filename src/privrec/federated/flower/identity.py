"""Device identities for malicious-server rounds on Flower: a PKI the server does not control.

Against a malicious server (``mf.threat-model = "malicious"``) every SecAgg+ client signs its
advertisement and the survivor set with a long-term Ed25519 key, and every client checks its
neighbours' signatures against their public keys. Those public keys must reach the devices
from somewhere the server cannot rewrite -- here a ``pki.json`` distributed at enrolment, like
the silo roster -- or the server could present its own keys as the neighbours' (and the
signatures would prove nothing).

Files (:func:`create_identities`):

``pki.json`` (public; give it to the server **and** to every SuperNode)
    ``{"users": {"<user id>": "<hex Ed25519 public key>", ...}}``.
``node-<p>.keys`` (secret, mode 0600; give it to SuperNode ``p`` only)
    ``{"users": {"<user id>": "<hex Ed25519 private key>", ...}}`` for the users that node
    hosts (user ``u`` lives on partition ``u mod num-partitions``, as in
    :mod:`privrec.federated.flower.node`).

A SuperNode's ``node_config`` names its files (``pki``, ``identity-keys``); it refuses a
malicious-server round whose identity keys differ from its own ``pki.json``, and, with
``threat-model = "malicious"`` in its own config, any round that is not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privrec.errors import ConfigError, KeyFileError
from privrec.secure.keyfiles import read_secret, write_secret

__all__ = ["create_identities", "load_identity_keys", "load_pki"]


def create_identities(users: Iterable[int], partitions: int, directory: str | Path) -> Path:
    """Fresh identities for ``users`` spread over ``partitions`` nodes; returns ``pki.json``."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ConfigError(f"partitions must be a positive integer, found {partitions!r}")
    ids = sorted({int(u) for u in users})
    if not ids or ids[0] < 0:
        raise ConfigError("users must be non-negative ids, at least one")
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {str(out)!r}: {exc.strerror}") from None
    public: dict[str, str] = {}
    private: list[dict[str, str]] = [{} for _ in range(partitions)]
    for u in ids:
        key = Ed25519PrivateKey.generate()
        public[str(u)] = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
        private[u % partitions][str(u)] = key.private_bytes_raw().hex()
    for p, keys in enumerate(private):
        write_secret(out / f"node-{p}.keys", json.dumps({"users": keys}).encode())
    pki = out / "pki.json"
    pki.write_text(json.dumps({"users": public}, indent=1))
    return pki


def _users(raw: bytes, path: str | Path, what: str) -> dict[int, bytes]:
    try:
        entries = json.loads(raw.decode("utf-8"))["users"]
        out = {int(u): bytes.fromhex(v) for u, v in entries.items()}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"{what} {str(path)!r} is malformed: {exc}") from None
    bad = [u for u, k in out.items() if len(k) != 32]
    if bad:
        raise KeyFileError(f"{what} {str(path)!r}: keys of users {bad[:5]} are not 32 bytes")
    return out


def load_pki(path: str | Path) -> dict[int, bytes]:
    """User id -> Ed25519 public key (32 bytes) from ``pki.json``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the PKI file {str(path)!r}: {exc.strerror}") from None
    return _users(raw, path, "PKI file")


def load_identity_keys(path: str | Path) -> dict[int, Ed25519PrivateKey]:
    """User id -> Ed25519 private key from a node's ``node-<p>.keys`` (must be mode 0600)."""
    return {
        u: Ed25519PrivateKey.from_private_bytes(k)
        for u, k in _users(read_secret(path), path, "identity key file").items()
    }
