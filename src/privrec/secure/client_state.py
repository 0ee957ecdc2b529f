"""The byte format of a SecAgg+ client's in-round state (see :meth:`SecAggClient.export_state`).

Version 2: ``b"PSS"``, version byte, mode byte (0 plain, 1 sealed), the SHA-256 digest of
the :class:`~privrec.secure.round.RoundConfig`, the client id (u64 little-endian), the step
byte (0-5, 255 = aborted); then the body (fixed-size fields, each list a u32 count plus
sorted fixed-size records) followed by its SHA-256 over header and body (plain), or a
12-byte nonce and the AES-GCM ciphertext of the body with the header as associated data
(sealed). No pickle. Version 1 (before the input MAC and the malicious-server steps) is
refused.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from privrec.errors import ConfigError, MessageRejected
from privrec.secure.round import U32, U64, RoundConfig

__all__ = ["BodyReader", "open_state", "seal_state", "state_header"]

MAGIC = b"PSS"
VERSION = 2
PLAIN = 0
SEALED = 1
HEADER = struct.Struct("<3sBB32sQB")  # magic, version, mode, config digest, id, step
DIGEST_LEN = 32
NONCE_LEN = 12
STEP_ABORTED = 0xFF
KEY_LEN = 32


def _aead(key: bytes | None) -> AESGCM | None:
    if key is None:
        return None
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ConfigError(
            f"the state key must be {KEY_LEN} bytes (AES-256-GCM, e.g. "
            "AESGCM.generate_key(bit_length=256)), got "
            + (f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__)
        )
    return AESGCM(key)


def state_header(config: RoundConfig, client_id: int, step: int, sealed: bool) -> bytes:
    """The fixed header of an exported state."""
    return HEADER.pack(MAGIC, VERSION, SEALED if sealed else PLAIN, config.digest, client_id, step)


def seal_state(header: bytes, body: bytes, key: bytes | None) -> bytes:
    """Frame a state: ``header | body | SHA-256`` or ``header | nonce | AES-GCM(body)``."""
    aead = _aead(key)
    if aead is None:
        return header + body + hashlib.sha256(header + body).digest()
    nonce = os.urandom(NONCE_LEN)
    return header + nonce + aead.encrypt(nonce, body, header)


def open_state(data: object, config: RoundConfig, key: bytes | None) -> tuple[int, int, bytes]:
    """Check a state's frame and round binding; returns ``(client id, step, body)``."""
    aead = _aead(key)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageRejected(f"SecAgg client state must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    size = HEADER.size
    if len(raw) < size or raw[:3] != MAGIC:
        raise MessageRejected("not a privrec SecAgg client state (bad magic or too short)")
    _, version, mode, digest, client_id, step = HEADER.unpack(raw[:size])
    if version != VERSION:
        raise MessageRejected(
            f"SecAgg client state version {version}, this privrec reads version {VERSION}"
        )
    header = raw[:size]
    if mode == PLAIN:
        if aead is not None:
            raise MessageRejected(
                "expected a sealed (AES-GCM) SecAgg client state, got a plain one"
            )
        if len(raw) < size + DIGEST_LEN:
            raise MessageRejected("truncated SecAgg client state")
        body = raw[size : len(raw) - DIGEST_LEN]
        if hashlib.sha256(header + body).digest() != raw[len(raw) - DIGEST_LEN :]:
            raise MessageRejected("SecAgg client state fails its checksum (corrupted or tampered)")
    elif mode == SEALED:
        if aead is None:
            raise MessageRejected("SecAgg client state is sealed: pass the key it was sealed with")
        nonce = raw[size : size + NONCE_LEN]
        try:
            body = aead.decrypt(nonce, raw[size + NONCE_LEN :], header)
        except (InvalidTag, ValueError) as exc:
            raise MessageRejected(
                "SecAgg client state fails authentication (wrong key, corrupted or tampered)"
            ) from exc
    else:
        raise MessageRejected(f"unknown SecAgg client state mode {mode}")
    if digest != config.digest:
        raise MessageRejected("SecAgg client state belongs to another round or round configuration")
    if client_id not in config.neighbour_sets:
        raise MessageRejected(f"SecAgg client state of client {client_id}, not in this round")
    return int(client_id), int(step), body


class BodyReader:
    """Reads fixed-size fields from a state body; anything short or malformed is rejected."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise MessageRejected("truncated SecAgg client state")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def records(
        self, size: int, low: int, high: int, allowed: Callable[[int], bool]
    ) -> list[tuple[int, bytes]]:
        """A u32 count in ``[low, high]`` then that many ``(u64 id, size - 8 bytes)`` records,
        ids sorted without repeats and each ``allowed``."""
        count = int(U32.unpack(self.take(4))[0])
        if not low <= count <= high:
            raise MessageRejected(
                f"SecAgg client state lists {count} entries, expected {low} to {high}"
            )
        out = []
        for _ in range(count):
            rec = self.take(size)
            out.append((int(U64.unpack(rec[:8])[0]), rec[8:]))
        ids = [v for v, _ in out]
        if ids != sorted(set(ids)) or not all(allowed(v) for v in ids):
            raise MessageRejected("SecAgg client state lists unknown ids, repeats or is unsorted")
        return out

    def done(self) -> None:
        if self.pos != len(self.body):
            raise MessageRejected("trailing bytes after SecAgg client state")
