"""SecAgg+ protocol messages: small frozen dataclasses with a self-describing byte format.

Every message the client and server state machines exchange is one of these, so the
same protocol code runs in-process (the simulator) or over any transport that moves
bytes. :meth:`to_bytes` / :func:`decode` give a compact, versioned binary encoding:

``b"PSA2"`` | one type byte | fields in declaration order, where an integer is an
unsigned 64-bit little-endian number, a byte string is a 4-byte length plus the bytes,
an id list is a 4-byte count plus 8-byte ids, and a nested message list is a 4-byte
count plus, for each, a 4-byte length and the nested encoding.

Decoding is strict: unknown types, truncation and trailing bytes raise
:class:`~privrec.errors.MessageRejected`; nothing is allocated beyond what the bytes hold.
Authenticity is not this module's job: the secret parts (key shares) travel inside AES-GCM
ciphertexts built by :mod:`privrec.secure.secagg`, which binds the round and both parties;
masked inputs carry an HMAC the server checks (``MaskedInput.tag``); against a malicious
server, advertisements and survivor sets carry Ed25519 signatures (``signature`` fields).
Version 2 (``PSA2``) added those fields; version 1 messages are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
from numpy.typing import NDArray

from privrec.errors import MessageRejected
from privrec.secure.prg import word_dtype

__all__ = [
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedShare",
    "KeyDirectory",
    "MaskedInput",
    "Message",
    "RevealedShare",
    "ShareDelivery",
    "ShareKeys",
    "Signature",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
]

MAGIC = b"PSA2"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
M = TypeVar("M", bound="Message")


class Message:
    """Base of all protocol messages: field kinds drive the generic byte codec."""

    TAG: ClassVar[int] = 0
    # field name -> kind: "int", "bytes", "ids", or the name of a nested message class,
    # in the dataclass's field order (checked at import time)
    KINDS: ClassVar[dict[str, str]] = {}

    def to_bytes(self) -> bytes:
        """The message's wire encoding (see the module docstring)."""
        out = [MAGIC, bytes([self.TAG])]
        for name, kind in self.KINDS.items():
            _encode(out, kind, getattr(self, name))
        return b"".join(out)

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        """Decode a message of exactly this type; anything else raises MessageRejected."""
        msg = decode(data)
        if not isinstance(msg, cls):
            raise MessageRejected(f"expected a {cls.__name__}, got a {type(msg).__name__}")
        return msg


def _encode(out: list[bytes], kind: str, value: Any) -> None:
    if kind == "int":
        out.append(_U64.pack(value))
    elif kind == "bytes":
        out.append(_U32.pack(len(value)))
        out.append(bytes(value))
    elif kind == "ids":
        out.append(_U32.pack(len(value)))
        out.append(np.asarray(value, dtype="<u8").tobytes())
    else:
        out.append(_U32.pack(len(value)))
        for item in value:
            raw = item.to_bytes()
            out.append(_U32.pack(len(raw)))
            out.append(raw)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.view):
            raise MessageRejected("truncated message")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])


def _decode_field(reader: _Reader, kind: str) -> Any:
    if kind == "int":
        return reader.u64()
    if kind == "bytes":
        return bytes(reader.take(reader.u32()))
    if kind == "ids":
        count = reader.u32()
        return tuple(int(v) for v in np.frombuffer(reader.take(8 * count), dtype="<u8"))
    cls = _BY_NAME[kind]
    return tuple(cls.from_bytes(bytes(reader.take(reader.u32()))) for _ in range(reader.u32()))


def decode(data: bytes) -> Message:
    """Decode any protocol message from its bytes.

    Raises
    ------
    MessageRejected
        Bad magic, unknown type, truncated or trailing data.
    """
    if len(data) < 5 or bytes(data[:4]) != MAGIC:
        raise MessageRejected("not a privrec SecAgg message (bad magic)")
    cls = _BY_TAG.get(data[4])
    if cls is None:
        raise MessageRejected(f"unknown message type {data[4]}")
    reader = _Reader(data)
    reader.pos = 5
    values = {name: _decode_field(reader, kind) for name, kind in cls.KINDS.items()}
    if reader.pos != len(data):
        raise MessageRejected("trailing bytes after message")
    return cls(**values)


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Phase 1, client -> server (and forwarded to neighbours): the client's public keys.

    ``seed_commitment`` is SHA-256 of the self-mask seed (with round and sender), letting
    the server check a reconstructed seed, i.e. detect bad shares instead of summing
    garbage. ``signature`` (malicious-server rounds only, else empty) is the sender's
    Ed25519 signature over the round configuration and these fields, so a server cannot
    substitute its own keys for a neighbour's.
    """

    TAG: ClassVar[int] = 1
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "sender": "int",
        "enc_public_key": "bytes",
        "mask_public_key": "bytes",
        "seed_commitment": "bytes",
        "signature": "bytes",
    }
    round_id: bytes
    sender: int
    enc_public_key: bytes
    mask_public_key: bytes
    seed_commitment: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class KeyDirectory(Message):
    """Phase 1, server -> client: the advertisements of the receiver's live neighbours.

    ``server_key`` is the server's X25519 public key of this round: the client derives from
    it the key of the HMAC on its masked input, which only the server can check.
    """

    TAG: ClassVar[int] = 2
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "receiver": "int",
        "entries": "AdvertiseKeys",
        "server_key": "bytes",
    }
    round_id: bytes
    receiver: int
    entries: tuple[AdvertiseKeys, ...]
    server_key: bytes = b""


@dataclass(frozen=True)
class EncryptedShare(Message):
    """One AES-GCM-encrypted pair of Shamir shares from ``sender`` for ``receiver``."""

    TAG: ClassVar[int] = 3
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "sender": "int",
        "receiver": "int",
        "nonce": "bytes",
        "ciphertext": "bytes",
    }
    round_id: bytes
    sender: int
    receiver: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys(Message):
    """Phase 2, client -> server: encrypted shares for each neighbour."""

    TAG: ClassVar[int] = 4
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "sender": "int",
        "shares": "EncryptedShare",
    }
    round_id: bytes
    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareDelivery(Message):
    """Phase 2, server -> client: the shares addressed to ``receiver`` by live neighbours."""

    TAG: ClassVar[int] = 5
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "receiver": "int",
        "shares": "EncryptedShare",
    }
    round_id: bytes
    receiver: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class MaskedInput(Message):
    """Phase 3, client -> server: the masked vector, ``dim`` little-endian words of ``bits``.

    ``tag`` is HMAC-SHA256 over the round, sender, ``bits`` and ``values`` under a key only
    this client and the server can derive (X25519 of the client's encryption key and the
    server's round key): a flipped bit makes the server reject the input instead of
    adding it to the sum.
    """

    TAG: ClassVar[int] = 6
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "sender": "int",
        "bits": "int",
        "values": "bytes",
        "tag": "bytes",
    }
    round_id: bytes
    sender: int
    bits: int
    values: bytes
    tag: bytes = b""

    def array(self) -> NDArray[np.unsignedinteger]:
        """The masked vector as a read-only array of the word type for ``bits``."""
        dtype = word_dtype(self.bits)
        if len(self.values) % dtype.itemsize:
            raise MessageRejected("masked input length is not a whole number of words")
        return np.frombuffer(self.values, dtype=dtype.newbyteorder("<"))


@dataclass(frozen=True)
class Signature(Message):
    """An Ed25519 signature by client ``signer`` (inside :class:`UnmaskRequest`)."""

    TAG: ClassVar[int] = 10
    KINDS: ClassVar[dict[str, str]] = {"signer": "int", "signature": "bytes"}
    signer: int
    signature: bytes


@dataclass(frozen=True)
class ConsistencyRequest(Message):
    """Malicious-server rounds, server -> client: the set of all clients whose input is summed.

    The client signs it (:class:`ConsistencySignature`) and later reveals shares only if at
    least ``t`` of its neighbours signed the very same set.
    """

    TAG: ClassVar[int] = 11
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "receiver": "int",
        "survivors": "ids",
    }
    round_id: bytes
    receiver: int
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class ConsistencySignature(Message):
    """Malicious-server rounds, client -> server: the sender's signature of the survivor set."""

    TAG: ClassVar[int] = 12
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "sender": "int",
        "signature": "bytes",
    }
    round_id: bytes
    sender: int
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Phase 4, server -> client: which neighbours survived and which dropped out.

    In malicious-server rounds ``signatures`` carries the receiver's neighbours' signatures
    of the survivor set (see :class:`ConsistencyRequest`); empty otherwise.
    """

    TAG: ClassVar[int] = 7
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "receiver": "int",
        "survivors": "ids",
        "dropped": "ids",
        "n_survivors": "int",
        "signatures": "Signature",
    }
    round_id: bytes
    receiver: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    n_survivors: int
    signatures: tuple[Signature, ...] = ()


@dataclass(frozen=True)
class RevealedShare(Message):
    """A decrypted Shamir share of ``owner``'s secret, revealed to the server."""

    TAG: ClassVar[int] = 8
    KINDS: ClassVar[dict[str, str]] = {"owner": "int", "share": "bytes"}
    owner: int
    share: bytes


@dataclass(frozen=True)
class UnmaskResponse(Message):
    """Phase 4, client -> server: self-seed shares of survivors, mask-key shares of dropouts."""

    TAG: ClassVar[int] = 9
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "bytes",
        "sender": "int",
        "seed_shares": "RevealedShare",
        "key_shares": "RevealedShare",
    }
    round_id: bytes
    sender: int
    seed_shares: tuple[RevealedShare, ...]
    key_shares: tuple[RevealedShare, ...]


_CLASSES: tuple[type[Message], ...] = (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    EncryptedShare,
    ShareKeys,
    ShareDelivery,
    MaskedInput,
    UnmaskRequest,
    RevealedShare,
    Signature,
    UnmaskResponse,
)
_BY_TAG: dict[int, type[Message]] = {c.TAG: c for c in _CLASSES}
_BY_NAME: dict[str, type[Message]] = {c.__name__: c for c in _CLASSES}
for _cls in _CLASSES:  # the codec walks KINDS, so it must list exactly the fields, in order
    assert list(_cls.KINDS) == [f.name for f in fields(_cls)], _cls.__name__  # type: ignore[arg-type]
