"""The public configuration of one SecAgg+ round and the primitives both sides derive from it.

:class:`RoundConfig` is what every party agrees on before a round starts (all public): the
round id, the invited clients, the vector shape, the graph degree and threshold, the
minimum number of survivors and the threat model. The helpers below (key derivation,
associated data, commitments, signatures' payloads, the input MAC) are shared by
:mod:`privrec.secure.client` and :mod:`privrec.secure.server`, so the two sides compute
the same bytes from one definition.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privrec.errors import ConfigError, DuplicateClientError, MessageRejected
from privrec.secure import shamir
from privrec.secure.graph import (
    ThreatModel,
    check_threat_model,
    choose_parameters,
    corrupt_neighbour_bound,
    neighbour_graph,
    resolve_count,
    threshold_for,
)
from privrec.secure.prg import word_dtype

__all__ = [
    "MALICIOUS_PHASES",
    "PHASES",
    "RoundConfig",
    "generate_identities",
]

#: Phases of an honest-but-curious round (a client may drop out before any of them).
PHASES = ("advertise_keys", "share_keys", "masked_input", "unmask")
#: Phases of a malicious-server round: the signed consistency check precedes ``unmask``.
MALICIOUS_PHASES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")

SECRET_LEN = 32
SHARE_LEN = shamir.share_bytes(SECRET_LEN)
KEY_LEN = 32
SIGNATURE_LEN = 64
TAG_LEN = 32
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
DOMAIN = b"privrec-secagg/v1/"


def id_bytes(i: int) -> bytes:
    """A client id as 8 little-endian bytes (ids are checked to be < 2^31 by the config)."""
    return U64.pack(i)


def kdf(shared: bytes, purpose: bytes, round_id: bytes, a: int, b: int) -> bytes:
    """A 32-byte key for one purpose, one round and one unordered pair of parties."""
    lo, hi = (a, b) if a < b else (b, a)
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=hashlib.sha256(DOMAIN + b"round" + round_id).digest(),
        info=DOMAIN + purpose + id_bytes(lo) + id_bytes(hi),
    ).derive(shared)


def share_ad(round_id: bytes, sender: int, receiver: int) -> bytes:
    """Associated data of one encrypted share (rebuilt by the receiver from its own view)."""
    return (
        DOMAIN
        + b"share"
        + id_bytes(len(round_id))
        + round_id
        + id_bytes(sender)
        + id_bytes(receiver)
    )


def commit(round_id: bytes, sender: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed, bound to the round and its owner."""
    return hashlib.sha256(DOMAIN + b"seed-commit" + round_id + id_bytes(sender) + seed).digest()


def agree(key: X25519PrivateKey, peer_public: bytes, peer: int) -> bytes:
    """X25519 agreement; a low-order or malformed public key is a rejected message."""
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        who = "the server" if peer == SERVER_ID else f"client {peer}"
        raise MessageRejected(f"{who}'s public key is invalid: {exc}") from exc


def raw_public(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


#: The party id of the server in key derivations (client ids are < 2^31 - 2).
SERVER_ID = (1 << 63) - 1


def input_mac_key(shared: bytes, round_id: bytes, client: int) -> bytes:
    """HMAC key of ``client``'s masked input: HKDF of its X25519 agreement with the server."""
    return kdf(shared, b"input-mac", round_id, client, SERVER_ID)


def input_tag(key: bytes, round_id: bytes, sender: int, bits: int, values: bytes) -> bytes:
    """HMAC-SHA256 of a masked input (round, sender, modulus and every byte of the vector)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(DOMAIN + b"masked-input" + id_bytes(len(round_id)) + round_id)
    mac.update(id_bytes(sender) + id_bytes(bits) + id_bytes(len(values)))
    mac.update(values)
    return mac.digest()


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
    threat_model
        ``"honest-but-curious"`` (default) or ``"malicious"``: the server may deviate from
        the protocol. Then ``t > k/2`` is required (:func:`RoundConfig.create` uses Bell et
        al.'s ``t > (k + c)/2``), advertisements are signed, and clients sign and cross-check
        the survivor set before they reveal shares (the consistency check).
    identity_keys
        Malicious-server rounds: every client's long-term Ed25519 public key (32 bytes), in
        the order of ``client_ids``. They must come from a source the server does not control
        (a PKI, a roster distributed at enrolment); a server that could choose them could
        impersonate every client. Empty for honest-but-curious rounds.
    context
        Up to 64 bytes the application binds to the round (e.g. a hash of the round's
        distributed-DP settings): part of :attr:`digest`, so clients shown different contexts
        sign and agree on different rounds and cannot complete one together. Empty: none.
    """

    round_id: bytes
    client_ids: tuple[int, ...]
    dim: int
    bits: int
    neighbours: int
    threshold: int
    min_survivors: int
    threat_model: ThreatModel = "honest-but-curious"
    identity_keys: tuple[bytes, ...] = ()
    context: bytes = b""

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
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
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
        check_threat_model(self.threat_model)
        if not isinstance(self.context, bytes) or len(self.context) > 64:
            raise ConfigError("a round's context must be at most 64 bytes")
        if self.malicious:
            if 2 * self.threshold <= self.neighbours:
                raise ConfigError(
                    f"against a malicious server the threshold must exceed half the neighbours "
                    f"(t > k/2, Bell et al.: t > (k + c)/2), got t={self.threshold}, "
                    f"k={self.neighbours}"
                )
            if len(self.identity_keys) != n or any(
                not isinstance(k, bytes) or len(k) != KEY_LEN for k in self.identity_keys
            ):
                raise ConfigError(
                    "a malicious-server round needs one 32-byte Ed25519 identity key per client "
                    f"(in client_ids order), got {len(self.identity_keys)} for {n} clients"
                )
        elif self.identity_keys:
            raise ConfigError("identity_keys are only used against a malicious server")

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
        threat_model: ThreatModel = "honest-but-curious",
        identity_keys: Mapping[int, bytes] | Sequence[bytes] = (),
        context: bytes = b"",
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
            :func:`~privrec.secure.graph.choose_parameters` from ``dropout_rate``,
            ``corrupt_fraction`` and the threat model (also picks the threshold).
        threshold
            ``int`` = ``t``, ``float`` = fraction of ``k`` (rounded up). ``None``: from
            ``choose_parameters``; if ``neighbours`` was given, a strict majority of ``k``
            (honest-but-curious) or Bell et al.'s ``t > (k + c)/2`` for the corrupt neighbours
            ``c`` that ``corrupt_fraction`` allows (malicious).
        min_survivors
            ``int`` = count, ``float`` = fraction of ``n``; default ``max(2, t)`` (capped at n).
        round_id
            Fresh randomness from ``os.urandom`` unless given (tests pin it).
        threat_model
            ``"honest-but-curious"`` or ``"malicious"`` (see the class docstring).
        identity_keys
            Malicious: the clients' Ed25519 public keys, as a mapping client id -> key, or a
            sequence in the order of the **sorted** ids.
        context
            Bytes bound to the round (see the class docstring).
        """
        threat = check_threat_model(threat_model)
        raw_ids = tuple(range(client_ids)) if isinstance(client_ids, int) else tuple(client_ids)
        if len(set(raw_ids)) != len(raw_ids):
            dupes = sorted({i for i in raw_ids if raw_ids.count(i) > 1})
            raise DuplicateClientError(f"duplicate client ids in the round: {dupes[:10]}")
        ids = tuple(sorted(int(i) for i in raw_ids))
        if isinstance(identity_keys, Mapping) and identity_keys:
            missing = [u for u in ids if u not in identity_keys]
            if missing:
                raise ConfigError(f"no identity key for client(s) {missing[:5]}")
            keys = tuple(identity_keys[u] for u in ids)
        else:
            keys = tuple(identity_keys) if not isinstance(identity_keys, Mapping) else ()
        n = len(ids)
        malicious = threat == "malicious"
        if neighbours is None:
            if n >= 3:
                params = choose_parameters(
                    n, dropout_rate, corrupt_fraction, malicious_server=malicious
                )
                k, t = params.neighbours, params.threshold
            else:
                k, t = n - 1, 1
        else:
            k = min(_resolve_k(neighbours, n), n - 1)
            t = k // 2 + 1
            if malicious and n >= 3:
                corrupt = resolve_count(corrupt_fraction, n, "corrupt_fraction")
                c, _ = corrupt_neighbour_bound(n, k, corrupt)
                t = min(k, max(t, threshold_for(k, c, malicious_server=True)))
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
            threat_model=threat,
            identity_keys=keys,
            context=context,
        )

    @property
    def malicious(self) -> bool:
        """Whether the round is secured against a malicious server."""
        return self.threat_model == "malicious"

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases of this round, in order (:data:`PHASES` or :data:`MALICIOUS_PHASES`)."""
        return MALICIOUS_PHASES if self.malicious else PHASES

    @cached_property
    def graph(self) -> dict[int, tuple[int, ...]]:
        """Client id -> sorted neighbour ids (derived from ``round_id``; same for everyone)."""
        return neighbour_graph(self.client_ids, self.neighbours, self.round_id)

    @cached_property
    def neighbour_sets(self) -> dict[int, frozenset[int]]:
        """The graph as sets, for membership tests."""
        return {u: frozenset(vs) for u, vs in self.graph.items()}

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of every field: binds signatures and stored client states to this round."""
        ids = np.asarray(self.client_ids, dtype="<u8").tobytes()
        fields = (self.dim, self.bits, self.neighbours, self.threshold, self.min_survivors)
        return hashlib.sha256(
            DOMAIN
            + b"round-config"
            + U32.pack(len(self.round_id))
            + self.round_id
            + U32.pack(len(self.client_ids))
            + ids
            + b"".join(U64.pack(v) for v in fields)
            + self.threat_model.encode()
            + b"".join(self.identity_keys)
            + (b"context" + U32.pack(len(self.context)) + self.context if self.context else b"")
        ).digest()

    @cached_property
    def _identity_index(self) -> dict[int, int]:
        return {u: i for i, u in enumerate(self.client_ids)}

    def identity_key(self, client: int) -> Ed25519PublicKey:
        """``client``'s Ed25519 public key (malicious-server rounds)."""
        if not self.malicious:
            raise ConfigError("identity keys exist only in malicious-server rounds")
        return Ed25519PublicKey.from_public_bytes(self.identity_keys[self._identity_index[client]])

    def verify(self, client: int, signature: bytes, payload: bytes) -> bool:
        """Whether ``signature`` is ``client``'s valid Ed25519 signature of ``payload``."""
        if len(signature) != SIGNATURE_LEN or client not in self._identity_index:
            return False
        try:
            self.identity_key(client).verify(signature, payload)
        except InvalidSignature:
            return False
        return True

    @property
    def n(self) -> int:
        """Number of invited clients."""
        return len(self.client_ids)


def advert_payload(
    config: RoundConfig, sender: int, enc: bytes, mask: bytes, commitment: bytes
) -> bytes:
    """What a client signs in its advertisement (malicious-server rounds)."""
    return DOMAIN + b"advertise" + config.digest + id_bytes(sender) + enc + mask + commitment


def survivors_payload(config: RoundConfig, survivors: Sequence[int]) -> bytes:
    """What a client signs in the consistency check: the round and the full survivor set."""
    ids = np.asarray(survivors, dtype="<u8").tobytes()
    return DOMAIN + b"survivors" + config.digest + U32.pack(len(survivors)) + ids


def generate_identities(
    client_ids: Iterable[int],
) -> tuple[dict[int, Ed25519PrivateKey], dict[int, bytes]]:
    """Fresh long-term Ed25519 identities: ``(private key per client, public key bytes per client)``.

    For simulations and tests, where one process plays the PKI. In a deployment each device
    creates its own key and enrols the public part with a directory the server cannot rewrite.
    """
    private = {int(u): Ed25519PrivateKey.generate() for u in client_ids}
    public = {
        u: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for u, k in private.items()
    }
    return private, public
