"""The client's side of a SecAgg+ round (see :mod:`privrec.secure.secagg` for the protocol)."""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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
from privrec.secure.client_state import (
    STEP_ABORTED,
    BodyReader,
    open_state,
    seal_state,
    state_header,
)
from privrec.secure.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    RevealedShare,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from privrec.secure.prg import add_mask, word_dtype
from privrec.secure.round import (
    KEY_LEN,
    SECRET_LEN,
    SERVER_ID,
    SHARE_LEN,
    U32,
    RoundConfig,
    advert_payload,
    agree,
    commit,
    id_bytes,
    input_mac_key,
    input_tag,
    kdf,
    raw_public,
    share_ad,
    survivors_payload,
)

__all__ = ["SecAggClient"]

# Steps of the client's state machine (also the step byte of an exported state).
START, ADVERTISED, SHARED, MASKED, SIGNED, DONE = 0, 1, 2, 3, 4, 5
_ABORTED = -1
_PEER_LEN = 8 + 3 * 32  # sender id, enc public key, mask public key, seed commitment
_HELD_LEN = 8 + 2 * SHARE_LEN  # owner id, seed share, key share


def _check_round(round_id: bytes, config: RoundConfig, what: str) -> None:
    if round_id != config.round_id:
        raise MessageRejected(f"{what} belongs to another round (replayed or misrouted)")


class SecAggClient:
    """One client's side of a SecAgg+ round; call the phase methods in order.

    Parameters
    ----------
    config
        The round's public configuration.
    client_id
        This client's id (must be in ``config.client_ids``).
    identity_key
        Malicious-server rounds: this client's long-term Ed25519 private key, whose public
        part is ``config``'s identity key for ``client_id`` (it signs the advertisement and
        the survivor set). Kept by the caller, never exported with the state.

    Notes
    -----
    All keys and seeds come from ``cryptography`` / ``os.urandom``. The object keeps its
    secrets in memory for the round only; create a new client for each round. Between two
    phases it can be moved to another process with :meth:`export_state` and
    :meth:`restore_state` (secret material: keep it on the device).
    """

    def __init__(
        self,
        config: RoundConfig,
        client_id: int,
        *,
        identity_key: Ed25519PrivateKey | None = None,
    ) -> None:
        if client_id not in config.neighbour_sets:
            raise ConfigError(f"client {client_id} is not part of this round")
        self.config = config
        self.client_id = int(client_id)
        self._identity: Ed25519PrivateKey | None = None
        if config.malicious:
            if not isinstance(identity_key, Ed25519PrivateKey):
                raise ConfigError(
                    "a malicious-server round needs the client's Ed25519 identity key"
                )
            public = identity_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            if public != config.identity_keys[config.client_ids.index(self.client_id)]:
                raise ConfigError(
                    f"the identity key is not the one the round lists for client {client_id}"
                )
            self._identity = identity_key
        self._phase = START
        self._enc_key: X25519PrivateKey | None = None
        self._mask_key: X25519PrivateKey | None = None
        self._seed = b""
        self._server_key = b""
        self._peers: dict[int, AdvertiseKeys] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)
        self._signed: tuple[int, ...] = ()
        self._aeads: dict[int, AESGCM] = {}

    def _aead(self, peer: int) -> AESGCM:
        # One AES-GCM key per unordered pair and round: both directions derive the same key
        # from the X25519 agreement, so it is computed once and reused for decryption.
        aead = self._aeads.get(peer)
        if aead is None:
            assert self._enc_key is not None
            shared = agree(self._enc_key, self._peers[peer].enc_public_key, peer)
            aead = AESGCM(kdf(shared, b"share-key", self.config.round_id, self.client_id, peer))
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

    def _sign(self, payload: bytes) -> bytes:
        assert self._identity is not None
        return self._identity.sign(payload)

    # ------------------------------------------------------------------ state transfer
    def export_state(self, *, key: bytes | None = None) -> bytes:
        """This client's in-round state as bytes, to resume it in another process.

        For transports that run each phase in a fresh process (a Flower SuperNode starts a
        new ClientApp per message). Only what the remaining phases need is kept:

        ========================  ==================================================
        after                     the state holds
        ========================  ==================================================
        (nothing yet)             nothing secret
        ``advertise_keys``        both X25519 private keys and the self-mask seed
        ``share_keys``            the same, plus the live neighbours' public keys and
                                  the server's round key (for the input MAC)
        ``masked_input``          the neighbours' Shamir shares received (not the own
                                  keys or seed: no later phase needs them)
        ``consistency_check``     the same, plus the survivor set it signed
        ``unmask`` / an abort     nothing secret (the client answers nothing more)
        ========================  ==================================================

        The long-term identity key (malicious-server rounds) is never part of the state:
        pass it again to :meth:`restore_state`.

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

        Format: :mod:`privrec.secure.client_state` (version 2).

        Parameters
        ----------
        key
            Optional 32-byte AES-256-GCM key to seal the state with (see above).

        Raises
        ------
        ConfigError
            ``key`` is not 32 bytes.
        """
        step = STEP_ABORTED if self._phase == _ABORTED else self._phase
        body: list[bytes] = []
        if step in (ADVERTISED, SHARED):
            assert self._enc_key is not None and self._mask_key is not None
            body += [
                self._enc_key.private_bytes_raw(),
                self._mask_key.private_bytes_raw(),
                self._seed,
            ]
        if step == SHARED:
            body.append(self._server_key)
            body.append(U32.pack(len(self._peers)))
            for v in sorted(self._peers):
                adv = self._peers[v]
                body += [id_bytes(v), adv.enc_public_key, adv.mask_public_key, adv.seed_commitment]
        if step in (MASKED, SIGNED):
            body.append(U32.pack(len(self._held)))
            for v in sorted(self._held):
                seed_share, key_share = self._held[v]
                body += [id_bytes(v), seed_share, key_share]
        if step == SIGNED:
            body.append(U32.pack(len(self._signed)))
            body += [id_bytes(v) for v in self._signed]
        header = state_header(self.config, self.client_id, step, key is not None)
        return seal_state(header, b"".join(body), key)

    @classmethod
    def restore_state(
        cls,
        data: bytes,
        config: RoundConfig,
        *,
        key: bytes | None = None,
        client_id: int | None = None,
        identity_key: Ed25519PrivateKey | None = None,
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
        identity_key
            Malicious-server rounds: the client's Ed25519 identity key (as for the constructor).

        Raises
        ------
        MessageRejected
            Malformed, truncated, tampered, of another version, sealed with another key (or
            sealed and no key given / plain and a key given), of another round or client,
            or inconsistent with the round.
        ConfigError
            ``key`` is not 32 bytes, or the identity key is missing or wrong.
        """
        cid, step, body = open_state(data, config, key)
        if client_id is not None and cid != client_id:
            raise MessageRejected(f"SecAgg client state of client {cid}, expected {client_id}")
        valid = (START, ADVERTISED, SHARED, MASKED, DONE, STEP_ABORTED)
        if step not in valid and not (config.malicious and step == SIGNED):
            raise MessageRejected(f"SecAgg client state at unknown step {step}")
        mine = config.neighbour_sets[cid]
        reader = BodyReader(body)
        client = cls(config, cid, identity_key=identity_key)
        if step in (ADVERTISED, SHARED):
            enc, mask, seed = reader.take(32), reader.take(32), reader.take(SECRET_LEN)
            client._enc_key = X25519PrivateKey.from_private_bytes(enc)
            client._mask_key = X25519PrivateKey.from_private_bytes(mask)
            client._seed = seed
        if step == SHARED:
            client._server_key = reader.take(KEY_LEN)
            client._peers = {
                v: AdvertiseKeys(config.round_id, v, rec[:32], rec[32:64], rec[64:])
                for v, rec in reader.records(
                    _PEER_LEN, config.threshold, len(mine), mine.__contains__
                )
            }
        if step in (MASKED, SIGNED):
            client._held = {
                v: (rec[:SHARE_LEN], rec[SHARE_LEN:])
                for v, rec in reader.records(
                    _HELD_LEN, config.threshold, len(mine), mine.__contains__
                )
            }
        if step == SIGNED:
            ids = set(config.client_ids)
            signed = reader.records(8, config.min_survivors, config.n, ids.__contains__)
            client._signed = tuple(v for v, _ in signed)
            if cid not in client._signed:
                raise MessageRejected(
                    "SecAgg client state: a signed survivor set without the client"
                )
        reader.done()
        client._phase = _ABORTED if step == STEP_ABORTED else step
        return client

    # ------------------------------------------------------------------ phases
    def advertise_keys(self) -> AdvertiseKeys:
        """Phase 1: fresh key pairs and self-mask seed; publish the public parts (signed
        with the identity key against a malicious server)."""
        self._enter(START, "advertise_keys")
        cfg = self.config
        self._enc_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = os.urandom(SECRET_LEN)
        enc, mask = raw_public(self._enc_key), raw_public(self._mask_key)
        commitment = commit(cfg.round_id, self.client_id, self._seed)
        signature = b""
        if cfg.malicious:
            signature = self._sign(advert_payload(cfg, self.client_id, enc, mask, commitment))
        self._phase = ADVERTISED
        return AdvertiseKeys(
            round_id=cfg.round_id,
            sender=self.client_id,
            enc_public_key=enc,
            mask_public_key=mask,
            seed_commitment=commitment,
            signature=signature,
        )

    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        """Phase 2: Shamir-share seed and mask key to the live neighbours, encrypted to each.

        Raises
        ------
        MessageRejected
            The directory is for another round or client, lists non-neighbours or
            duplicates, carries malformed keys, lacks the server's round key, or (malicious
            server) an advertisement whose signature does not verify under the neighbour's
            identity key -- a server substituting keys.
        ProtocolAbort
            Fewer than ``t`` neighbours are alive (the secrets could never be rebuilt).
        """
        self._enter(ADVERTISED, "share_keys")
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
            if (
                len(entry.enc_public_key) != 32
                or len(entry.mask_public_key) != 32
                or len(entry.seed_commitment) != 32
            ):
                raise MessageRejected(f"malformed public key from client {entry.sender}")
            if cfg.malicious and not cfg.verify(
                entry.sender,
                entry.signature,
                advert_payload(
                    cfg,
                    entry.sender,
                    entry.enc_public_key,
                    entry.mask_public_key,
                    entry.seed_commitment,
                ),
            ):
                raise MessageRejected(
                    f"client {entry.sender}'s advertisement is not signed by its identity key"
                )
            peers[entry.sender] = entry
        if len(peers) < cfg.threshold:
            raise self._abort(
                "share_keys",
                f"client {self.client_id} has {len(peers)} live neighbours, "
                f"threshold is {cfg.threshold}",
            )
        assert self._enc_key is not None and self._mask_key is not None
        if len(directory.server_key) != KEY_LEN:
            raise MessageRejected("key directory does not carry the server's round key")
        agree(self._enc_key, directory.server_key, SERVER_ID)  # reject a bad key now
        self._peers = peers
        self._server_key = directory.server_key
        order = sorted(peers)
        key_bytes = self._mask_key.private_bytes_raw()
        shares = shamir.split(
            [self._seed, key_bytes], [shamir.x_coordinate(v) for v in order], cfg.threshold
        )
        out = []
        for row, v in zip(shares, order, strict=True):
            plaintext = id_bytes(self.client_id) + id_bytes(v) + row.astype("<u4").tobytes()
            nonce = os.urandom(12)
            ct = self._aead(v).encrypt(nonce, plaintext, share_ad(cfg.round_id, self.client_id, v))
            out.append(EncryptedShare(cfg.round_id, self.client_id, v, nonce, ct))
        self._phase = SHARED
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

        The masked vector carries an HMAC-SHA256 tag under a key derived from this client's
        encryption key and the server's round key, so the server rejects a vector changed
        on the way instead of summing it.

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
        self._enter(SHARED, "masked_input")
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
                    share.nonce, share.ciphertext, share_ad(cfg.round_id, u, self.client_id)
                )
            except (InvalidTag, ValueError) as exc:
                raise MessageRejected(
                    f"share from client {u} failed authentication (tampered or replayed)"
                ) from exc
            if len(plain) != 16 + 2 * SHARE_LEN or plain[:16] != id_bytes(u) + id_bytes(
                self.client_id
            ):
                raise MessageRejected(f"share from client {u} has a malformed payload")
            held[u] = (plain[16 : 16 + SHARE_LEN], plain[16 + SHARE_LEN :])
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
            shared = agree(self._mask_key, self._peers[v].mask_public_key, v)
            seed = kdf(shared, b"mask", cfg.round_id, self.client_id, v)
            add_mask(y, seed, subtract=self.client_id > v)
        if cfg.bits < 8 * y.itemsize:
            y &= y.dtype.type((1 << cfg.bits) - 1)
        raw = y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes()
        mac_key = input_mac_key(
            agree(self._enc_key, self._server_key, SERVER_ID), cfg.round_id, self.client_id
        )
        self._phase = MASKED
        return MaskedInput(
            round_id=cfg.round_id,
            sender=self.client_id,
            bits=cfg.bits,
            values=raw,
            tag=input_tag(mac_key, cfg.round_id, self.client_id, cfg.bits, raw),
        )

    def consistency_check(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Malicious-server rounds: sign the survivor set the server announces (once).

        Raises
        ------
        ProtocolError
            Called in an honest-but-curious round or out of order.
        MessageRejected
            The request is for another round or client, or its set is not sorted ids of
            this round.
        ProtocolAbort
            The set leaves this client out (it did send its input), names a neighbour whose
            shares this client never received, or is smaller than ``min_survivors``. The
            client then reveals nothing in this round.
        """
        cfg = self.config
        if not cfg.malicious:
            raise ProtocolError("the consistency check belongs to malicious-server rounds only")
        self._enter(MASKED, "consistency_check")
        _check_round(request.round_id, cfg, "consistency request")
        if request.receiver != self.client_id:
            raise MessageRejected(f"consistency request addressed to {request.receiver}")
        survivors = tuple(int(u) for u in request.survivors)
        known = cfg.neighbour_sets
        if list(survivors) != sorted(set(survivors)) or not all(u in known for u in survivors):
            raise MessageRejected("the survivor set is not sorted distinct ids of this round")
        if self.client_id not in survivors:
            raise self._abort(
                "consistency_check",
                f"client {self.client_id} refuses: the server leaves it out of the survivors",
            )
        if len(survivors) < cfg.min_survivors:
            raise self._abort(
                "consistency_check",
                f"client {self.client_id} refuses: only {len(survivors)} survivors, "
                f"at least {cfg.min_survivors} required",
            )
        unknown = [u for u in survivors if u in known[self.client_id] and u not in self._held]
        if unknown:
            raise self._abort(
                "consistency_check",
                f"client {self.client_id}: survivor(s) {unknown[:5]} never shared with it",
            )
        self._signed = survivors
        self._phase = SIGNED
        return ConsistencySignature(
            round_id=cfg.round_id,
            sender=self.client_id,
            signature=self._sign(survivors_payload(cfg, survivors)),
        )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Last phase: reveal seed shares of surviving and key shares of dropped neighbours.

        Against a malicious server the request must also carry at least ``t`` valid
        signatures, by this client's neighbours, of the very survivor set this client signed,
        and its survivors and dropouts must be exactly what that set implies.

        Raises
        ------
        ProtocolAbort
            The request names a neighbour both as survivor and as dropped (revealing both
            shares would unmask that client's input), or does not match this client's view
            (unknown neighbours, a neighbour missing), or claims fewer survivors than
            ``min_survivors``; against a malicious server also: a forged signature, fewer
            than ``t`` neighbours' signatures, or a view other than the signed set. The client
            then reveals nothing.
        """
        cfg = self.config
        self._enter(SIGNED if cfg.malicious else MASKED, "unmask")
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
        if cfg.malicious:
            self._check_signed_view(request, survivors)
        self._phase = DONE
        return UnmaskResponse(
            round_id=cfg.round_id,
            sender=self.client_id,
            seed_shares=tuple(RevealedShare(u, self._held[u][0]) for u in sorted(survivors)),
            key_shares=tuple(RevealedShare(u, self._held[u][1]) for u in sorted(dropped)),
        )

    def _check_signed_view(self, request: UnmaskRequest, survivors: set[int]) -> None:
        """The consistency check proper (malicious server), before anything is revealed."""
        cfg = self.config
        signed = set(self._signed)
        if survivors != {u for u in self._held if u in signed} or request.n_survivors != len(
            signed
        ):
            raise self._abort(
                "unmask",
                f"client {self.client_id} refuses: the unmask request contradicts the survivor "
                "set it signed",
            )
        payload = survivors_payload(cfg, self._signed)
        mine = cfg.neighbour_sets[self.client_id]
        signers: set[int] = set()
        for sig in request.signatures:
            if sig.signer in signers or sig.signer not in mine or sig.signer not in signed:
                raise self._abort(
                    "unmask",
                    f"client {self.client_id} refuses: signature of client {sig.signer}, not a "
                    "surviving neighbour, or twice",
                )
            if not cfg.verify(sig.signer, sig.signature, payload):
                raise self._abort(
                    "unmask",
                    f"client {self.client_id} refuses: client {sig.signer}'s signature is not "
                    "on the survivor set this client signed (inconsistent views or a forgery)",
                )
            signers.add(sig.signer)
        if len(signers) < cfg.threshold:
            raise self._abort(
                "unmask",
                f"client {self.client_id} refuses: {len(signers)} neighbours signed the "
                f"survivor set, threshold is {cfg.threshold}",
            )
