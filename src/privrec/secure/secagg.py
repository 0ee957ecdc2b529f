"""SecAgg+ secure aggregation over Z_{2^b} as transport-agnostic client/server state machines.

The server learns the sum modulo ``2**bits`` of the surviving clients' vectors and
nothing else about any single vector (Bonawitz et al., CCS 2017; the sparse-graph
variant SecAgg+ of Bell et al., CCS 2020). Each method is one protocol phase: it takes
the messages of the previous phase and returns the messages of the next, so the same
objects drive the in-process simulator (:func:`privrec.federated.simulate_secagg`) and
a networked deployment, where the transport only moves ``to_bytes()`` payloads.

Round, in four phases (``U1 ⊇ U2 ⊇ U3 ⊇ U4`` are the clients still present):

1. ``advertise_keys`` -- each client makes two X25519 key pairs (one to encrypt shares,
   one for pairwise masks), a 256-bit self-mask seed and a hash commitment to it.
   The server forwards to every client its neighbours' public keys.
2. ``share_keys`` -- each client Shamir-shares (``t`` of ``k``) its self-mask seed and its
   mask private key to its neighbours; each neighbour's pair of shares is encrypted with
   AES-256-GCM under ``HKDF-SHA256(X25519(enc keys))``, with the round id, sender and
   receiver as associated data. The server routes ciphertexts it cannot read.
3. ``masked_input`` -- each client sends ``y = x + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2**bits``,
   ``+`` when ``u < v``; ``s_uv`` is the HKDF of the X25519 agreement of mask keys, so the
   pairwise masks cancel in the sum.
4. ``unmask`` -- for each neighbour, a surviving client reveals *either* its share of the
   neighbour's self-mask seed (neighbour survived) *or* of its mask private key (neighbour
   dropped), never both. The server rebuilds the seeds and keys, checks them against the
   commitments and public keys, and removes all remaining masks.

A client's in-round state can leave the process between phases
(:meth:`SecAggClient.export_state` / :meth:`SecAggClient.restore_state`) for transports
that run each phase in a fresh process, such as a Flower SuperNode. That state is secret
key material: it must stay on the device.

Failure semantics: the result is the exact sum of the inputs of the clients in ``U3``,
or :class:`~privrec.errors.ProtocolAbort` (with the phase and the reason). Malformed,
misaddressed, replayed or tampered messages raise
:class:`~privrec.errors.MessageRejected`; bad inputs raise
:class:`~privrec.errors.InvalidInputError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from numpy.typing import ArrayLike, NDArray

from privrec.errors import (
    ConfigError,
    DuplicateClientError,
    InvalidInputError,
    MessageRejected,
    ProtocolAbort,
    ProtocolError,
)
from privrec.secure import shamir
from privrec.secure.graph import choose_parameters, neighbour_graph
from privrec.secure.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from privrec.secure.prg import add_mask, reduce_bits, word_dtype

__all__ = [
    "PHASES",
    "AggregateResult",
    "RoundConfig",
    "SecAggClient",
    "SecAggServer",
]

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmask")
_SECRET_LEN = 32
_SHARE_LEN = shamir.share_bytes(_SECRET_LEN)
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_DOMAIN = b"privrec-secagg/v1/"
_ABORTED = -1

# Client state encoding (see SecAggClient.export_state).
_STATE_MAGIC = b"PSS"
_STATE_VERSION = 1
_STATE_PLAIN = 0
_STATE_SEALED = 1
_STATE_HEADER = struct.Struct("<3sBB32sQB")  # magic, version, mode, config digest, id, step
_STATE_DIGEST_LEN = 32
_STATE_NONCE_LEN = 12
_STATE_STEP_ABORTED = 0xFF
_STATE_KEY_LEN = 32
_PEER_LEN = 8 + 3 * 32  # sender id, enc public key, mask public key, seed commitment
_HELD_LEN = 8 + 2 * _SHARE_LEN  # owner id, seed share, key share


def _id(i: int) -> bytes:
    return _U64.pack(i)


def _kdf(shared: bytes, purpose: bytes, round_id: bytes, a: int, b: int) -> bytes:
    """A 32-byte key for one purpose, one round and one unordered pair of clients."""
    lo, hi = (a, b) if a < b else (b, a)
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=hashlib.sha256(_DOMAIN + b"round" + round_id).digest(),
        info=_DOMAIN + purpose + _id(lo) + _id(hi),
    ).derive(shared)


def _share_ad(round_id: bytes, sender: int, receiver: int) -> bytes:
    return _DOMAIN + b"share" + _id(len(round_id)) + round_id + _id(sender) + _id(receiver)


def _commit(round_id: bytes, sender: int, seed: bytes) -> bytes:
    return hashlib.sha256(_DOMAIN + b"seed-commit" + round_id + _id(sender) + seed).digest()


def _agree(key: X25519PrivateKey, peer_public: bytes, peer: int) -> bytes:
    """X25519 agreement; a low-order or malformed public key is a rejected message."""
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise MessageRejected(f"client {peer}'s public key is invalid: {exc}") from exc


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _resolve_k(value: int | float, n: int) -> int:
    if isinstance(value, float):
        return max(1, math.ceil(value * (n - 1) - 1e-9))
    return int(value)


@dataclass(frozen=True)
class RoundConfig:
    """Everything all parties of one round agree on before it starts (all public).

    Attributes
    ----------
    round_id
        At least 16 random bytes, fresh per round: binds every key, share and ciphertext
        to the round (stops replays) and seeds the public neighbour graph.
    client_ids
        The distinct ids of the invited clients (each in ``[0, 2**31 - 3]``).
    dim
        Length of every input vector.
    bits
        The sum is computed modulo ``2**bits`` (``1 <= bits <= 64``); inputs must lie in
        ``[0, 2**bits)``.
    neighbours
        Degree ``k`` of the neighbour graph (``n - 1`` = classic SecAgg).
    threshold
        Shamir threshold ``t`` (``1 <= t <= k``; :func:`choose_parameters` never picks
        ``t < 2``, so that no single neighbour can rebuild a secret).
    min_survivors
        The server aborts, and clients refuse to unmask, if fewer clients than this sent
        masked inputs: a sum over too few clients is close to a single client's input.
    """

    round_id: bytes
    client_ids: tuple[int, ...]
    dim: int
    bits: int
    neighbours: int
    threshold: int
    min_survivors: int

    def __post_init__(self) -> None:
        if not isinstance(self.round_id, bytes) or len(self.round_id) < 16:
            raise ConfigError("round_id must be at least 16 bytes of fresh randomness")
        ids = self.client_ids
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise DuplicateClientError(f"duplicate client ids in the round: {dupes[:10]}")
        if list(ids) != sorted(ids):
            raise ConfigError("client_ids must be sorted (use RoundConfig.create)")
        for i in ids:
            shamir.x_coordinate(i)
        n = len(ids)
        if n < 2:
            raise ConfigError(f"secure aggregation needs at least 2 clients, got {n}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {self.dim!r}")
        word_dtype(self.bits)
        if not 1 <= self.neighbours <= n - 1:
            raise ConfigError(f"neighbours must be in [1, {n - 1}], got {self.neighbours}")
        if not 1 <= self.threshold <= self.neighbours:
            raise ConfigError(
                f"threshold must be in [1, neighbours={self.neighbours}], got {self.threshold}"
            )
        if not 1 <= self.min_survivors <= n:
            raise ConfigError(f"min_survivors must be in [1, {n}], got {self.min_survivors}")

    @classmethod
    def create(
        cls,
        client_ids: Iterable[int] | int,
        dim: int,
        bits: int = 32,
        *,
        neighbours: int | float | None = None,
        threshold: int | float | None = None,
        min_survivors: int | float | None = None,
        dropout_rate: int | float = 0.05,
        corrupt_fraction: int | float = 0.05,
        round_id: bytes | None = None,
    ) -> RoundConfig:
        """A round configuration with parameters filled in.

        Parameters
        ----------
        client_ids
            Client ids, or a count ``n`` for ids ``0 .. n-1``.
        dim, bits
            Vector length and modulus exponent.
        neighbours
            ``int`` = degree ``k``, ``float`` = fraction of the other clients. ``None``:
            :func:`~privrec.secure.graph.choose_parameters` from ``dropout_rate`` and
            ``corrupt_fraction`` (also picks the threshold).
        threshold
            ``int`` = ``t``, ``float`` = fraction of ``k`` (rounded up). ``None``: from
            ``choose_parameters``, or a strict majority of ``k`` if ``neighbours`` was given.
        min_survivors
            ``int`` = count, ``float`` = fraction of ``n``; default ``max(2, t)`` (capped at n).
        round_id
            Fresh randomness from ``os.urandom`` unless given (tests pin it).
        """
        ids = tuple(range(client_ids)) if isinstance(client_ids, int) else tuple(client_ids)
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise DuplicateClientError(f"duplicate client ids in the round: {dupes[:10]}")
        ids = tuple(sorted(int(i) for i in ids))
        n = len(ids)
        if neighbours is None:
            if n >= 3:
                params = choose_parameters(n, dropout_rate, corrupt_fraction)
                k, t = params.neighbours, params.threshold
            else:
                k, t = n - 1, 1
        else:
            k = min(_resolve_k(neighbours, n), n - 1)
            t = k // 2 + 1
        if threshold is not None:
            if isinstance(threshold, float):
                t = max(1, math.ceil(threshold * k - 1e-9))
            else:
                t = int(threshold)
        if min_survivors is None:
            ms = min(n, max(2, t))
        elif isinstance(min_survivors, float):
            ms = max(1, math.ceil(min_survivors * n - 1e-9))
        else:
            ms = int(min_survivors)
        return cls(
            round_id=os.urandom(16) if round_id is None else round_id,
            client_ids=ids,
            dim=dim,
            bits=bits,
            neighbours=k,
            threshold=t,
            min_survivors=ms,
        )

    @cached_property
    def graph(self) -> dict[int, tuple[int, ...]]:
        """Client id -> sorted neighbour ids (derived from ``round_id``; same for everyone)."""
        return neighbour_graph(self.client_ids, self.neighbours, self.round_id)

    @cached_property
    def neighbour_sets(self) -> dict[int, frozenset[int]]:
        """The graph as sets, for membership tests."""
        return {u: frozenset(vs) for u, vs in self.graph.items()}

    @property
    def n(self) -> int:
        """Number of invited clients."""
        return len(self.client_ids)


def _config_digest(config: RoundConfig) -> bytes:
    """SHA-256 of every field of the round configuration: binds a stored state to its round."""
    ids = np.asarray(config.client_ids, dtype="<u8").tobytes()
    fields = (config.dim, config.bits, config.neighbours, config.threshold, config.min_survivors)
    return hashlib.sha256(
        _DOMAIN
        + b"round-config"
        + _U32.pack(len(config.round_id))
        + config.round_id
        + _U32.pack(len(config.client_ids))
        + ids
        + b"".join(_U64.pack(v) for v in fields)
    ).digest()


def _state_key(key: bytes | None) -> AESGCM | None:
    if key is None:
        return None
    if not isinstance(key, bytes) or len(key) != _STATE_KEY_LEN:
        raise ConfigError(
            f"the state key must be {_STATE_KEY_LEN} bytes (AES-256-GCM, e.g. "
            "AESGCM.generate_key(bit_length=256)), got "
            + (f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__)
        )
    return AESGCM(key)


def _seal_state(header: bytes, body: bytes, key: bytes | None) -> bytes:
    """Frame a state: ``header | body | SHA-256`` or ``header | nonce | AES-GCM(body)``."""
    aead = _state_key(key)
    if aead is None:
        return header + body + hashlib.sha256(header + body).digest()
    nonce = os.urandom(_STATE_NONCE_LEN)
    return header + nonce + aead.encrypt(nonce, body, header)


def _open_state(data: bytes, config: RoundConfig, key: bytes | None) -> tuple[int, int, memoryview]:
    """Check a state's frame and round binding; returns ``(client id, step, body)``."""
    aead = _state_key(key)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageRejected(f"SecAgg client state must be bytes, got {type(data).__name__}")
    view = memoryview(bytes(data))
    size = _STATE_HEADER.size
    if len(view) < size or bytes(view[:3]) != _STATE_MAGIC:
        raise MessageRejected("not a privrec SecAgg client state (bad magic or too short)")
    _, version, mode, digest, client_id, step = _STATE_HEADER.unpack(view[:size])
    if version != _STATE_VERSION:
        raise MessageRejected(
            f"SecAgg client state version {version}, this privrec reads version {_STATE_VERSION}"
        )
    header = bytes(view[:size])
    if mode == _STATE_PLAIN:
        if aead is not None:
            raise MessageRejected(
                "expected a sealed (AES-GCM) SecAgg client state, got a plain one"
            )
        if len(view) < size + _STATE_DIGEST_LEN:
            raise MessageRejected("truncated SecAgg client state")
        body = view[size : len(view) - _STATE_DIGEST_LEN]
        check = hashlib.sha256(header + bytes(body)).digest()
        if check != bytes(view[len(view) - _STATE_DIGEST_LEN :]):
            raise MessageRejected("SecAgg client state fails its checksum (corrupted or tampered)")
    elif mode == _STATE_SEALED:
        if aead is None:
            raise MessageRejected("SecAgg client state is sealed: pass the key it was sealed with")
        nonce = bytes(view[size : size + _STATE_NONCE_LEN])
        try:
            plain = aead.decrypt(nonce, bytes(view[size + _STATE_NONCE_LEN :]), header)
        except (InvalidTag, ValueError) as exc:
            raise MessageRejected(
                "SecAgg client state fails authentication (wrong key, corrupted or tampered)"
            ) from exc
        body = memoryview(plain)
    else:
        raise MessageRejected(f"unknown SecAgg client state mode {mode}")
    if digest != _config_digest(config):
        raise MessageRejected("SecAgg client state belongs to another round or round configuration")
    if client_id not in config.neighbour_sets:
        raise MessageRejected(f"SecAgg client state of client {client_id}, not in this round")
    return int(client_id), int(step), body


def _check_round(round_id: bytes, config: RoundConfig, what: str) -> None:
    if round_id != config.round_id:
        raise MessageRejected(f"{what} belongs to another round (replayed or misrouted)")


class SecAggClient:
    """One client's side of a SecAgg+ round; call the four phase methods in order.

    Parameters
    ----------
    config
        The round's public configuration.
    client_id
        This client's id (must be in ``config.client_ids``).

    Notes
    -----
    All keys and seeds come from ``cryptography`` / ``os.urandom``. The object keeps its
    secrets in memory for the round only; create a new client for each round. Between two
    phases it can be moved to another process with :meth:`export_state` and
    :meth:`restore_state` (secret material: keep it on the device).
    """

    def __init__(self, config: RoundConfig, client_id: int) -> None:
        if client_id not in config.neighbour_sets:
            raise ConfigError(f"client {client_id} is not part of this round")
        self.config = config
        self.client_id = int(client_id)
        self._phase = 0
        self._enc_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._seed = b""
        self._peers: dict[int, AdvertiseKeys] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)
        self._aeads: dict[int, AESGCM] = {}

    def _aead(self, peer: int) -> AESGCM:
        # One AES-GCM key per unordered pair and round: both directions derive the same key
        # from the X25519 agreement, so it is computed once and reused for decryption.
        aead = self._aeads.get(peer)
        if aead is None:
            assert self._enc_key is not None
            shared = _agree(self._enc_key, self._peers[peer].enc_public_key, peer)
            aead = AESGCM(_kdf(shared, b"share-key", self.config.round_id, self.client_id, peer))
            self._aeads[peer] = aead
        return aead

    def _enter(self, phase: int, name: str) -> None:
        # The step only advances when a phase succeeds, so a rejected (e.g. tampered)
        # message leaves the client able to accept the genuine one; after an abort the
        # client answers nothing more in this round.
        if self._phase == _ABORTED:
            raise ProtocolError(f"client {self.client_id} aborted this round; create a new client")
        if self._phase != phase:
            raise ProtocolError(
                f"client {self.client_id}: {name} called out of order (at step {self._phase})"
            )

    def _abort(self, phase: str, reason: str) -> ProtocolAbort:
        self._phase = _ABORTED
        return ProtocolAbort(phase, reason)

    def export_state(self, *, key: bytes | None = None) -> bytes:
        """This client's in-round state as bytes, to resume it in another process.

        For transports that run each phase in a fresh process (a Flower SuperNode starts a
        new ClientApp per message). Only what the remaining phases need is kept:

        ======================  ====================================================
        after                   the state holds
        ======================  ====================================================
        (nothing yet)           nothing secret
        ``advertise_keys``      both X25519 private keys and the self-mask seed
        ``share_keys``          the same, plus the live neighbours' public keys
        ``masked_input``        the neighbours' Shamir shares received (not the own
                                keys or seed: no later phase needs them)
        ``unmask`` / an abort   nothing secret (the client answers nothing more)
        ======================  ====================================================

        **The state is secret key material and must stay on the device.** Whoever reads it
        after ``advertise_keys`` or ``share_keys`` holds the self-mask seed and the mask key,
        so together with the server it can unmask this client's input; after
        ``masked_input`` it holds this client's shares of its neighbours' secrets. Never send
        it to the server or log it. If the platform stores it anywhere but the device's
        memory (a file, a database, another container), seal it: pass ``key``, a 32-byte
        node-local key (``AESGCM.generate_key(bit_length=256)``, kept in the device's key
        store, never sent), and the state is encrypted and authenticated with AES-256-GCM.
        Without ``key`` it is plain bytes with a SHA-256 checksum (detects corruption, not a
        deliberate forger).

        Restoring is forking: resume only from the **latest** exported state and discard it
        once used. Rolling a client back to an earlier state lets a malicious server ask it
        twice in ``unmask`` and obtain both shares of a neighbour (which unmasks that
        neighbour); the single-use state machine only prevents this within one object.

        Format (version 1): ``b"PSS"``, version byte, mode byte (0 plain, 1 sealed), the
        SHA-256 digest of the :class:`RoundConfig`, the client id (u64 little-endian), the
        step byte (0-4, 255 = aborted); then the body (fixed-size fields for the table
        above, each list a u32 count plus sorted fixed-size records) followed by its
        SHA-256 over header and body (plain), or a 12-byte nonce and the AES-GCM ciphertext
        of the body with the header as associated data (sealed). No pickle.

        Parameters
        ----------
        key
            Optional 32-byte AES-256-GCM key to seal the state with (see above).

        Raises
        ------
        ConfigError
            ``key`` is not 32 bytes.
        """
        step = _STATE_STEP_ABORTED if self._phase == _ABORTED else self._phase
        body: list[bytes] = []
        if step in (1, 2):
            assert self._enc_key is not None and self._mask_key is not None
            body += [
                self._enc_key.private_bytes_raw(),
                self._mask_key.private_bytes_raw(),
                self._seed,
            ]
        if step == 2:
            body.append(_U32.pack(len(self._peers)))
            for v in sorted(self._peers):
                adv = self._peers[v]
                body += [_id(v), adv.enc_public_key, adv.mask_public_key, adv.seed_commitment]
        if step == 3:
            body.append(_U32.pack(len(self._held)))
            for v in sorted(self._held):
                seed_share, key_share = self._held[v]
                body += [_id(v), seed_share, key_share]
        header = _STATE_HEADER.pack(
            _STATE_MAGIC,
            _STATE_VERSION,
            _STATE_PLAIN if key is None else _STATE_SEALED,
            _config_digest(self.config),
            self.client_id,
            step,
        )
        return _seal_state(header, b"".join(body), key)

    @classmethod
    def restore_state(
        cls,
        data: bytes,
        config: RoundConfig,
        *,
        key: bytes | None = None,
        client_id: int | None = None,
    ) -> SecAggClient:
        """Rebuild a client from :meth:`export_state`, for the same round, at the same step.

        Everything is checked before the client is built: the frame (magic, version,
        checksum or AES-GCM tag), the round binding (the digest of ``config``), the client
        id, the step and, for that step, the exact size and content of every field (keys
        of the right length, neighbours of this client only, sorted without repeats, at
        least ``t`` of them, no trailing bytes). See :meth:`export_state` for what the state
        contains and why it must stay on the device, sealed at rest.

        Parameters
        ----------
        data
            The exported state.
        config
            The round this node is currently in; a state of any other round is refused.
        key
            The 32-byte key the state was sealed with; ``None`` for a plain state. A plain
            state is refused when a key is given (no downgrade).
        client_id
            If given, the state must be this client's.

        Raises
        ------
        MessageRejected
            Malformed, truncated, tampered, of another version, sealed with another key (or
            sealed and no key given / plain and a key given), of another round or client,
            or inconsistent with the round.
        ConfigError
            ``key`` is not 32 bytes.
        """
        cid, step, body = _open_state(data, config, key)
        if client_id is not None and cid != client_id:
            raise MessageRejected(f"SecAgg client state of client {cid}, expected {client_id}")
        if step not in (0, 1, 2, 3, 4, _STATE_STEP_ABORTED):
            raise MessageRejected(f"SecAgg client state at unknown step {step}")
        mine = config.neighbour_sets[cid]
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(body):
                raise MessageRejected("truncated SecAgg client state")
            out = bytes(body[pos : pos + n])
            pos += n
            return out

        def records(size: int) -> list[tuple[int, bytes]]:
            count = int(_U32.unpack(take(4))[0])
            if not config.threshold <= count <= len(mine):
                raise MessageRejected(
                    f"SecAgg client state lists {count} neighbours, expected "
                    f"{config.threshold} to {len(mine)}"
                )
            out = []
            for _ in range(count):
                rec = take(size)
                out.append((int(_U64.unpack(rec[:8])[0]), rec[8:]))
            ids = [v for v, _ in out]
            if ids != sorted(set(ids)) or not set(ids) <= mine:
                raise MessageRejected(
                    "SecAgg client state lists non-neighbours, repeats or is unsorted"
                )
            return out

        client = cls(config, cid)
        if step in (1, 2):
            enc, mask, seed = take(32), take(32), take(_SECRET_LEN)
            client._enc_key = X25519PrivateKey.from_private_bytes(enc)
            client._mask_key = X25519PrivateKey.from_private_bytes(mask)
            client._seed = seed
        if step == 2:
            client._peers = {
                v: AdvertiseKeys(config.round_id, v, rec[:32], rec[32:64], rec[64:])
                for v, rec in records(_PEER_LEN)
            }
        if step == 3:
            client._held = {
                v: (rec[:_SHARE_LEN], rec[_SHARE_LEN:]) for v, rec in records(_HELD_LEN)
            }
        if pos != len(body):
            raise MessageRejected("trailing bytes after SecAgg client state")
        client._phase = _ABORTED if step == _STATE_STEP_ABORTED else step
        return client

    def advertise_keys(self) -> AdvertiseKeys:
        """Phase 1: fresh key pairs and self-mask seed; publish the public parts."""
        self._enter(0, "advertise_keys")
        self._enc_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = os.urandom(_SECRET_LEN)
        rid = self.config.round_id
        self._phase = 1
        return AdvertiseKeys(
            round_id=rid,
            sender=self.client_id,
            enc_public_key=_raw_public(self._enc_key),
            mask_public_key=_raw_public(self._mask_key),
            seed_commitment=_commit(rid, self.client_id, self._seed),
        )

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        """Phase 2: Shamir-share seed and mask key to the live neighbours, encrypted to each.

        Raises
        ------
        MessageRejected
            The directory is for another round or client, lists non-neighbours or
            duplicates, or carries malformed keys.
        ProtocolAbort
            Fewer than ``t`` neighbours are alive (the secrets could never be rebuilt).
        """
        self._enter(1, "share_keys")
        cfg = self.config
        _check_round(directory.round_id, cfg, "key directory")
        if directory.receiver != self.client_id:
            raise MessageRejected(f"key directory addressed to {directory.receiver}")
        mine = cfg.neighbour_sets[self.client_id]
        peers: dict[int, AdvertiseKeys] = {}
        for entry in directory.entries:
            _check_round(entry.round_id, cfg, "advertised key")
            if entry.sender not in mine:
                raise MessageRejected(f"directory lists {entry.sender}, not a neighbour")
            if entry.sender in peers:
                raise DuplicateClientError(f"directory lists client {entry.sender} twice")
            if len(entry.enc_public_key) != 32 or len(entry.mask_public_key) != 32:
                raise MessageRejected(f"malformed public key from client {entry.sender}")
            peers[entry.sender] = entry
        if len(peers) < cfg.threshold:
            raise self._abort(
                "share_keys",
                f"client {self.client_id} has {len(peers)} live neighbours, "
                f"threshold is {cfg.threshold}",
            )
        assert self._enc_key is not None and self._mask_key is not None
        self._peers = peers
        order = sorted(peers)
        key_bytes = self._mask_key.private_bytes_raw()
        shares = shamir.split(
            [self._seed, key_bytes], [shamir.x_coordinate(v) for v in order], cfg.threshold
        )
        out = []
        for row, v in zip(shares, order, strict=True):
            plaintext = _id(self.client_id) + _id(v) + row.astype("<u4").tobytes()
            nonce = os.urandom(12)
            ct = self._aead(v).encrypt(nonce, plaintext, _share_ad(cfg.round_id, self.client_id, v))
            out.append(EncryptedShare(cfg.round_id, self.client_id, v, nonce, ct))
        self._phase = 2
        return ShareKeys(round_id=cfg.round_id, sender=self.client_id, shares=tuple(out))

    def _validate_input(self, x: ArrayLike) -> NDArray[np.unsignedinteger]:
        cfg = self.config
        arr = np.asarray(x)
        if arr.ndim != 1 or arr.shape[0] != cfg.dim:
            raise InvalidInputError(
                f"client {self.client_id}: input must have shape ({cfg.dim},), got {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise InvalidInputError(
                f"client {self.client_id}: input must be integers in [0, 2**{cfg.bits}), "
                f"got dtype {arr.dtype}"
            )
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << cfg.bits):
            raise InvalidInputError(
                f"client {self.client_id}: input values must lie in [0, 2**{cfg.bits}), "
                f"found [{int(arr.min())}, {int(arr.max())}]"
            )
        return arr.astype(word_dtype(cfg.bits))

    def masked_input(self, delivery: ShareDelivery, x: ArrayLike) -> MaskedInput:
        """Phase 3: store the neighbours' shares (authenticated) and send the masked input.

        Parameters
        ----------
        delivery
            The shares addressed to this client by its live neighbours.
        x
            The private vector: ``dim`` integers in ``[0, 2**bits)``.

        Raises
        ------
        InvalidInputError
            Wrong shape, non-integer dtype or out-of-range values (checked first, before
            anything is sent).
        MessageRejected
            A share fails AES-GCM authentication (tampered, replayed from another round or
            addressed to someone else), or comes from a non-neighbour or twice.
        ProtocolAbort
            Fewer than ``t`` neighbours are still alive.
        """
        values = self._validate_input(x)
        self._enter(2, "masked_input")
        cfg = self.config
        _check_round(delivery.round_id, cfg, "share delivery")
        if delivery.receiver != self.client_id:
            raise MessageRejected(f"share delivery addressed to {delivery.receiver}")
        assert self._enc_key is not None and self._mask_key is not None
        held: dict[int, tuple[bytes, bytes]] = {}
        for share in delivery.shares:
            u = share.sender
            if u not in self._peers:
                raise MessageRejected(f"share from {u}, who is not a live neighbour")
            if u in held:
                raise DuplicateClientError(f"two shares from client {u}")
            if share.receiver != self.client_id:
                raise MessageRejected(f"share from {u} is addressed to {share.receiver}")
            try:
                # The associated data is rebuilt from our own view (round, sender, us), so a
                # share moved to another round or receiver fails here even if relabelled.
                plain = self._aead(u).decrypt(
                    share.nonce, share.ciphertext, _share_ad(cfg.round_id, u, self.client_id)
                )
            except (InvalidTag, ValueError) as exc:
                raise MessageRejected(
                    f"share from client {u} failed authentication (tampered or replayed)"
                ) from exc
            if len(plain) != 16 + 2 * _SHARE_LEN or plain[:16] != _id(u) + _id(self.client_id):
                raise MessageRejected(f"share from client {u} has a malformed payload")
            held[u] = (plain[16 : 16 + _SHARE_LEN], plain[16 + _SHARE_LEN :])
        if len(held) < cfg.threshold:
            raise self._abort(
                "masked_input",
                f"client {self.client_id} received shares from {len(held)} neighbours, "
                f"threshold is {cfg.threshold}",
            )
        self._held = held
        y = values
        add_mask(y, self._seed)
        for v in sorted(self._held):
            shared = _agree(self._mask_key, self._peers[v].mask_public_key, v)
            seed = _kdf(shared, b"mask", cfg.round_id, self.client_id, v)
            add_mask(y, seed, subtract=self.client_id > v)
        if cfg.bits < 8 * y.itemsize:
            y &= y.dtype.type((1 << cfg.bits) - 1)
        self._phase = 3
        return MaskedInput(
            round_id=cfg.round_id,
            sender=self.client_id,
            bits=cfg.bits,
            values=y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes(),
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Phase 4: reveal seed shares of surviving and key shares of dropped neighbours.

        Raises
        ------
        ProtocolAbort
            The request names a neighbour both as survivor and as dropped (revealing both
            shares would unmask that client's input), or does not match this client's view
            (unknown neighbours, a neighbour missing), or claims fewer survivors than
            ``min_survivors``. The client then reveals nothing.
        """
        self._enter(3, "unmask")
        cfg = self.config
        _check_round(request.round_id, cfg, "unmask request")
        if request.receiver != self.client_id:
            raise MessageRejected(f"unmask request addressed to {request.receiver}")
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise self._abort(
                "unmask",
                f"client {self.client_id} refuses: the server asked for both shares of "
                f"client(s) {sorted(both)[:5]}",
            )
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise MessageRejected("unmask request lists a client twice")
        if survivors | dropped != set(self._held):
            raise self._abort(
                "unmask",
                f"client {self.client_id}: the server's view of the neighbourhood is "
                "inconsistent with the shares received",
            )
        if request.n_survivors < cfg.min_survivors:
            raise self._abort(
                "unmask",
                f"client {self.client_id} refuses: only {request.n_survivors} survivors, "
                f"at least {cfg.min_survivors} required",
            )
        self._phase = 4
        return UnmaskResponse(
            round_id=cfg.round_id,
            sender=self.client_id,
            seed_shares=tuple(RevealedShare(u, self._held[u][0]) for u in sorted(survivors)),
            key_shares=tuple(RevealedShare(u, self._held[u][1]) for u in sorted(dropped)),
        )


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of a completed round.

    Attributes
    ----------
    sum
        ``uint64`` array: the sum modulo ``2**bits`` of the inputs of ``survivors``.
    bits
        The modulus exponent.
    survivors
        Clients whose inputs are in the sum (those that sent a masked input).
    dropped
        Phase name -> clients that dropped out (or were excluded) in that phase.
    stats
        Server-side cost breakdown: seconds spent rebuilding self-mask seeds and dropped
        clients' keys from shares (Shamir plus the commitment / public-key checks), expanding
        the self masks, and regenerating the dropped clients' pairwise masks; and how many
        seeds and keys were rebuilt.
    """

    sum: NDArray[np.uint64]
    bits: int
    survivors: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
    stats: Mapping[str, float] = field(default_factory=dict)


class SecAggServer:
    """The server's side of a SecAgg+ round: routes messages, then removes the masks.

    Each phase method takes the messages that arrived before that phase's deadline and
    returns the messages to send, keyed by receiver. Clients missing from a phase's input
    are treated as dropped out from then on.
    """

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._phase = 0
        self._keys: dict[int, AdvertiseKeys] = {}
        self._u1: set[int] = set()
        self._u2: set[int] = set()
        self._u3: set[int] = set()
        self._dropped: dict[str, tuple[int, ...]] = {}
        self._acc: NDArray[np.unsignedinteger] | None = None
        self._requests: dict[int, UnmaskRequest] = {}

    def _enter(self, phase: int, name: str) -> None:
        # As for clients, the step advances only when a phase completes, so a batch with a
        # rejected message can be filtered and submitted again.
        if self._phase != phase:
            raise ProtocolError(f"server: {name} called out of order (at step {self._phase})")

    def _live(self, u: int, alive: set[int]) -> int:
        return sum(1 for v in self.config.graph[u] if v in alive)

    def advertise_keys(self, messages: Iterable[AdvertiseKeys]) -> dict[int, KeyDirectory]:
        """Phase 1: collect public keys; send each client its live neighbours' keys.

        Clients with fewer than ``t`` live neighbours are excluded (they could not share
        their secrets recoverably); this is safe because nobody has masked yet.
        """
        self._enter(0, "advertise_keys")
        cfg = self.config
        keys: dict[int, AdvertiseKeys] = {}
        for msg in messages:
            _check_round(msg.round_id, cfg, "advertisement")
            if msg.sender not in cfg.neighbour_sets:
                raise MessageRejected(f"advertisement from unknown client {msg.sender}")
            if msg.sender in keys:
                raise DuplicateClientError(f"client {msg.sender} advertised keys twice")
            if (
                len(msg.enc_public_key) != 32
                or len(msg.mask_public_key) != 32
                or len(msg.seed_commitment) != 32
            ):
                raise MessageRejected(f"malformed advertisement from client {msg.sender}")
            keys[msg.sender] = msg
        alive = set(keys)
        self._keys = keys
        self._u1 = {u for u in alive if self._live(u, alive) >= cfg.threshold}
        self._phase = 1
        self._dropped["advertise_keys"] = tuple(sorted(set(cfg.client_ids) - alive))
        return {
            u: KeyDirectory(
                round_id=cfg.round_id,
                receiver=u,
                entries=tuple(self._keys[v] for v in cfg.graph[u] if v in alive),
            )
            for u in sorted(self._u1)
        }

    def share_keys(self, messages: Iterable[ShareKeys]) -> dict[int, ShareDelivery]:
        """Phase 2: check and route the encrypted shares to their receivers.

        A client whose neighbourhood falls below ``t`` here is excluded (repeatedly, until
        stable); again safe, as no input has been masked yet.
        """
        self._enter(1, "share_keys")
        cfg = self.config
        alive = set(self._keys)
        inbox: dict[int, dict[int, EncryptedShare]] = {}
        for msg in messages:
            _check_round(msg.round_id, cfg, "share message")
            u = msg.sender
            if u not in self._u1:
                raise MessageRejected(f"shares from client {u}, who got no key directory")
            if u in inbox:
                raise DuplicateClientError(f"client {u} sent its shares twice")
            expected = {v for v in cfg.graph[u] if v in alive}
            got: dict[int, EncryptedShare] = {}
            for share in msg.shares:
                _check_round(share.round_id, cfg, "share")
                if share.sender != u or share.receiver not in expected or share.receiver in got:
                    raise MessageRejected(f"client {u} sent a misaddressed or duplicate share")
                got[share.receiver] = share
            if set(got) != expected:
                raise MessageRejected(f"client {u} did not send a share to every live neighbour")
            inbox[u] = got
        u2 = set(inbox)
        while True:
            weak = {u for u in u2 if self._live(u, u2) < cfg.threshold}
            if not weak:
                break
            u2 -= weak
        self._u2 = u2
        self._dropped["share_keys"] = tuple(sorted(alive - u2))
        self._phase = 2
        return {
            v: ShareDelivery(
                round_id=cfg.round_id,
                receiver=v,
                shares=tuple(inbox[u][v] for u in cfg.graph[v] if u in u2),
            )
            for v in sorted(u2)
        }

    def masked_input(self, messages: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Phase 3: add up the masked inputs; ask survivors for the shares needed to unmask.

        Raises
        ------
        ProtocolAbort
            Fewer than ``min_survivors`` masked inputs, or some client's neighbourhood kept
            fewer than ``t`` survivors (its masks could not be removed).
        """
        self._enter(2, "masked_input")
        cfg = self.config
        dtype = word_dtype(cfg.bits)
        acc = np.zeros(cfg.dim, dtype=dtype)
        u3: set[int] = set()
        for msg in messages:
            _check_round(msg.round_id, cfg, "masked input")
            if msg.sender not in self._u2:
                raise MessageRejected(f"masked input from client {msg.sender}, not in the round")
            if msg.sender in u3:
                raise DuplicateClientError(f"client {msg.sender} sent two masked inputs")
            if msg.bits != cfg.bits or len(msg.values) != cfg.dim * dtype.itemsize:
                raise MessageRejected(f"masked input of client {msg.sender} has the wrong size")
            acc += msg.array()
            u3.add(msg.sender)
        self._u3 = u3
        self._dropped["masked_input"] = tuple(sorted(self._u2 - u3))
        self._phase = 3
        if len(u3) < cfg.min_survivors:
            raise ProtocolAbort(
                "masked_input",
                f"only {len(u3)} masked inputs, at least {cfg.min_survivors} required",
            )
        for u in sorted(self._u2):
            live = self._live(u, u3)
            if live < cfg.threshold:
                raise ProtocolAbort(
                    "masked_input",
                    f"client {u} has {live} surviving neighbours, threshold is {cfg.threshold}",
                )
        self._acc = acc
        gone = self._u2 - u3
        self._requests = {
            v: UnmaskRequest(
                round_id=cfg.round_id,
                receiver=v,
                survivors=tuple(u for u in cfg.graph[v] if u in u3),
                dropped=tuple(u for u in cfg.graph[v] if u in gone),
                n_survivors=len(u3),
            )
            for v in sorted(u3)
        }
        return dict(self._requests)

    def unmask(self, messages: Iterable[UnmaskResponse]) -> AggregateResult:
        """Phase 4: rebuild seeds and dropped clients' keys, remove every mask, return the sum.

        Raises
        ------
        ProtocolAbort
            Some client has fewer than ``t`` responding neighbours, or a rebuilt secret does
            not match its commitment / public key (a bad share).
        MessageRejected
            A response that does not answer exactly the request sent to that client.
        """
        self._enter(3, "unmask")
        cfg = self.config
        assert self._acc is not None
        seed_shares: dict[int, list[tuple[int, bytes]]] = {}
        key_shares: dict[int, list[tuple[int, bytes]]] = {}
        responders: set[int] = set()
        for msg in messages:
            _check_round(msg.round_id, cfg, "unmask response")
            v = msg.sender
            if v not in self._requests:
                raise MessageRejected(f"unmask response from client {v}, who was not asked")
            if v in responders:
                raise DuplicateClientError(f"client {v} answered the unmask request twice")
            req = self._requests[v]
            if (
                tuple(s.owner for s in msg.seed_shares) != req.survivors
                or tuple(s.owner for s in msg.key_shares) != req.dropped
            ):
                raise MessageRejected(f"client {v}'s response does not match its request")
            x = shamir.x_coordinate(v)
            for s in msg.seed_shares:
                seed_shares.setdefault(s.owner, []).append((x, s.share))
            for s in msg.key_shares:
                key_shares.setdefault(s.owner, []).append((x, s.share))
            responders.add(v)
        self._dropped["unmask"] = tuple(sorted(self._u3 - responders))
        self._phase = 4
        gone = sorted(self._u2 - self._u3)
        for u, pool in [*((u, seed_shares) for u in self._u3), *((u, key_shares) for u in gone)]:
            have = len(pool.get(u, []))
            if have < cfg.threshold:
                raise ProtocolAbort(
                    "unmask",
                    f"only {have} shares of client {u} arrived, threshold is {cfg.threshold}",
                )
        acc = self._acc
        t0 = time.perf_counter()
        seeds = {u: self._rebuild(u, seed_shares[u]) for u in sorted(self._u3)}
        for u, seed in seeds.items():
            if _commit(cfg.round_id, u, seed) != self._keys[u].seed_commitment:
                raise ProtocolAbort("unmask", f"bad share: client {u}'s seed fails its commitment")
        t_seeds = time.perf_counter()
        keys: dict[int, X25519PrivateKey] = {}
        for u in gone:
            key = X25519PrivateKey.from_private_bytes(self._rebuild(u, key_shares[u]))
            if _raw_public(key) != self._keys[u].mask_public_key:
                raise ProtocolAbort("unmask", f"bad share: client {u}'s key fails its public key")
            keys[u] = key
        t1 = time.perf_counter()
        for seed in seeds.values():
            add_mask(acc, seed, subtract=True)
        t2 = time.perf_counter()
        for u, key in keys.items():
            for v in cfg.graph[u]:
                if v not in self._u3:
                    continue
                peer = X25519PublicKey.from_public_bytes(self._keys[v].mask_public_key)
                seed = _kdf(key.exchange(peer), b"mask", cfg.round_id, u, v)
                # v added +mask if v < u, -mask otherwise; take it back out.
                add_mask(acc, seed, subtract=v < u)
        t3 = time.perf_counter()
        stats = {
            "seed_rebuild_seconds": t_seeds - t0,
            "key_rebuild_seconds": t1 - t_seeds,
            "self_mask_seconds": t2 - t1,
            "dropped_mask_seconds": t3 - t2,
            "reconstructed_seeds": float(len(seeds)),
            "reconstructed_keys": float(len(keys)),
        }
        self._acc = None
        return AggregateResult(
            sum=reduce_bits(acc, cfg.bits),
            bits=cfg.bits,
            survivors=tuple(sorted(self._u3)),
            dropped=dict(self._dropped),
            stats=stats,
        )

    def _rebuild(self, owner: int, pool: list[tuple[int, bytes]]) -> bytes:
        t = self.config.threshold
        chosen = sorted(pool)[:t]
        try:
            arr = np.stack([np.frombuffer(s, dtype="<u4") for _, s in chosen])
            (secret,) = shamir.reconstruct([x for x, _ in chosen], arr, t)
        except (MessageRejected, ValueError) as exc:
            raise ProtocolAbort("unmask", f"bad share of client {owner}: {exc}") from exc
        return secret
