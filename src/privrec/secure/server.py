"""The server's side of a SecAgg+ round (see :mod:`privrec.secure.secagg` for the protocol)."""

from __future__ import annotations

import hmac
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from numpy.typing import NDArray

from privrec.errors import (
    DuplicateClientError,
    MessageRejected,
    ProtocolAbort,
    ProtocolError,
)
from privrec.secure import shamir
from privrec.secure.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeyDirectory,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    Signature,
    UnmaskRequest,
    UnmaskResponse,
)
from privrec.secure.prg import add_mask, reduce_bits, word_dtype
from privrec.secure.round import (
    TAG_LEN,
    RoundConfig,
    advert_payload,
    agree,
    commit,
    input_mac_key,
    input_tag,
    kdf,
    raw_public,
    survivors_payload,
)

__all__ = ["AggregateResult", "SecAggServer"]

# Steps of the server's state machine.
_START, _KEYS, _SHARES, _INPUTS, _CHECKED, _DONE = 0, 1, 2, 3, 4, 5


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


def _check_round(round_id: bytes, config: RoundConfig, what: str) -> None:
    if round_id != config.round_id:
        raise MessageRejected(f"{what} belongs to another round (replayed or misrouted)")


class SecAggServer:
    """The server's side of a SecAgg+ round: routes messages, then removes the masks.

    Each phase method takes the messages that arrived before that phase's deadline and
    returns the messages to send, keyed by receiver. Clients missing from a phase's input
    are treated as dropped out from then on. A batch holding a message the server rejects
    raises :class:`~privrec.errors.MessageRejected` and leaves the server where it was, so
    the caller can drop that message and submit the rest again.

    Honest-but-curious rounds: :meth:`advertise_keys`, :meth:`share_keys`,
    :meth:`masked_input`, :meth:`unmask`. Malicious-server rounds replace
    :meth:`masked_input` by :meth:`masked_input_consistency` followed by
    :meth:`consistency_check` (the signed survivor set), then :meth:`unmask`.
    """

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._phase = _START
        # The server's round key: clients derive the key of their masked input's HMAC from it.
        self._key = X25519PrivateKey.generate()
        self._keys: dict[int, AdvertiseKeys] = {}
        self._u1: set[int] = set()
        self._u2: set[int] = set()
        self._u3: set[int] = set()
        self._dropped: dict[str, tuple[int, ...]] = {}
        self._acc: NDArray[np.unsignedinteger] | None = None
        self._requests: dict[int, UnmaskRequest] = {}
        self._macs: dict[int, bytes] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> SecAggServer:
        # The X25519 key object cannot be deep-copied; copies share it (it never changes).
        import copy

        clone = SecAggServer.__new__(SecAggServer)
        for name, value in self.__dict__.items():
            setattr(clone, name, value if name == "_key" else copy.deepcopy(value, memo))
        return clone

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
        their secrets recoverably); this is safe because nobody has masked yet. Against a
        malicious server the advertisements must be signed (the server checks it too, so
        a forged one is dropped before it reaches anyone).
        """
        self._enter(_START, "advertise_keys")
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
            if cfg.malicious and not cfg.verify(
                msg.sender,
                msg.signature,
                advert_payload(
                    cfg, msg.sender, msg.enc_public_key, msg.mask_public_key, msg.seed_commitment
                ),
            ):
                raise MessageRejected(f"advertisement of client {msg.sender} is not signed by it")
            keys[msg.sender] = msg
        alive = set(keys)
        self._keys = keys
        self._u1 = {u for u in alive if self._live(u, alive) >= cfg.threshold}
        self._phase = _KEYS
        self._dropped["advertise_keys"] = tuple(sorted(set(cfg.client_ids) - alive))
        server_key = raw_public(self._key)
        return {
            u: KeyDirectory(
                round_id=cfg.round_id,
                receiver=u,
                entries=tuple(self._keys[v] for v in cfg.graph[u] if v in alive),
                server_key=server_key,
            )
            for u in sorted(self._u1)
        }

    def share_keys(self, messages: Iterable[ShareKeys]) -> dict[int, ShareDelivery]:
        """Phase 2: check and route the encrypted shares to their receivers.

        A client whose neighbourhood falls below ``t`` here is excluded (repeatedly, until
        stable); again safe, as no input has been masked yet.
        """
        self._enter(_KEYS, "share_keys")
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
        self._phase = _SHARES
        return {
            v: ShareDelivery(
                round_id=cfg.round_id,
                receiver=v,
                shares=tuple(inbox[u][v] for u in cfg.graph[v] if u in u2),
            )
            for v in sorted(u2)
        }

    def check_masked_input(self, msg: MaskedInput) -> None:
        """Whether the server would add ``msg`` to the sum: raises :class:`MessageRejected` if not.

        Checks the round, that the sender is in the round at this point, the modulus, the
        length, and the HMAC tag (a flipped bit anywhere in the vector fails it). Callers
        use it to find which message of a rejected batch to drop.
        """
        cfg = self.config
        _check_round(msg.round_id, cfg, "masked input")
        if msg.sender not in self._u2:
            raise MessageRejected(f"masked input from client {msg.sender}, not in the round")
        size = cfg.dim * word_dtype(cfg.bits).itemsize
        if msg.bits != cfg.bits or len(msg.values) != size:
            raise MessageRejected(f"masked input of client {msg.sender} has the wrong size")
        key = self._macs.get(msg.sender)
        if key is None:
            shared = agree(self._key, self._keys[msg.sender].enc_public_key, msg.sender)
            key = self._macs[msg.sender] = input_mac_key(shared, cfg.round_id, msg.sender)
        expected = input_tag(key, cfg.round_id, msg.sender, msg.bits, msg.values)
        if len(msg.tag) != TAG_LEN or not hmac.compare_digest(expected, msg.tag):
            raise MessageRejected(
                f"masked input of client {msg.sender} fails its integrity check "
                "(changed on the way): rejected, not summed"
            )

    def _sum_inputs(self, messages: Iterable[MaskedInput]) -> None:
        self._enter(_SHARES, "masked_input")
        cfg = self.config
        msgs = list(messages)
        u3: set[int] = set()
        for msg in msgs:  # every message is checked before any is summed
            self.check_masked_input(msg)
            if msg.sender in u3:
                raise DuplicateClientError(f"client {msg.sender} sent two masked inputs")
            u3.add(msg.sender)
        acc = np.zeros(cfg.dim, dtype=word_dtype(cfg.bits))
        for msg in msgs:
            acc += msg.array()
        self._u3 = u3
        self._dropped["masked_input"] = tuple(sorted(self._u2 - u3))
        self._phase = _INPUTS
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

    def _unmask_requests(self, asked: set[int], signatures: Mapping[int, bytes]) -> None:
        cfg = self.config
        u3 = self._u3
        gone = self._u2 - u3
        self._requests = {
            v: UnmaskRequest(
                round_id=cfg.round_id,
                receiver=v,
                survivors=tuple(u for u in cfg.graph[v] if u in u3),
                dropped=tuple(u for u in cfg.graph[v] if u in gone),
                n_survivors=len(u3),
                signatures=tuple(
                    Signature(u, signatures[u]) for u in cfg.graph[v] if u in signatures
                ),
            )
            for v in sorted(asked)
        }

    def masked_input(self, messages: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Phase 3 (honest-but-curious): add up the masked inputs; ask for the unmask shares.

        Raises
        ------
        MessageRejected
            A message from outside the round, of the wrong size, or failing its HMAC (a
            changed bit): nothing is summed and the server stays in this phase, so the batch
            can be submitted again without it (:meth:`check_masked_input` finds it).
        ProtocolAbort
            Fewer than ``min_survivors`` masked inputs, or some client's neighbourhood kept
            fewer than ``t`` survivors (its masks could not be removed).
        ProtocolError
            A malicious-server round (use :meth:`masked_input_consistency`).
        """
        if self.config.malicious:
            raise ProtocolError(
                "a malicious-server round runs the consistency check: call "
                "masked_input_consistency, then consistency_check"
            )
        self._sum_inputs(messages)
        self._unmask_requests(self._u3, {})
        return dict(self._requests)

    def masked_input_consistency(
        self, messages: Iterable[MaskedInput]
    ) -> dict[int, ConsistencyRequest]:
        """Phase 3 (malicious server): add up the masked inputs; send everyone the survivor set.

        Same checks as :meth:`masked_input`; each survivor is then asked to sign the full
        set of clients whose input is in the sum.
        """
        if not self.config.malicious:
            raise ProtocolError("the consistency check belongs to malicious-server rounds only")
        self._sum_inputs(messages)
        survivors = tuple(sorted(self._u3))
        return {
            v: ConsistencyRequest(round_id=self.config.round_id, receiver=v, survivors=survivors)
            for v in survivors
        }

    def consistency_check(
        self, messages: Iterable[ConsistencySignature]
    ) -> dict[int, UnmaskRequest]:
        """Malicious server, phase 4: collect the signed survivor sets; forward each client
        its neighbours' signatures with its unmask request.

        Raises
        ------
        MessageRejected
            A signature from outside the survivors, twice, or not valid on the survivor set.
        ProtocolAbort
            Some client kept fewer than ``t`` signing neighbours (they would refuse).
        """
        self._enter(_INPUTS, "consistency_check")
        cfg = self.config
        payload = survivors_payload(cfg, tuple(sorted(self._u3)))
        signatures: dict[int, bytes] = {}
        for msg in messages:
            _check_round(msg.round_id, cfg, "survivor signature")
            if msg.sender not in self._u3:
                raise MessageRejected(f"survivor signature from client {msg.sender}, not asked")
            if msg.sender in signatures:
                raise DuplicateClientError(f"client {msg.sender} signed twice")
            if not cfg.verify(msg.sender, msg.signature, payload):
                raise MessageRejected(
                    f"client {msg.sender}'s signature of the survivors is invalid"
                )
            signatures[msg.sender] = msg.signature
        u4 = set(signatures)
        self._dropped["consistency_check"] = tuple(sorted(self._u3 - u4))
        self._phase = _CHECKED
        for u in sorted(self._u2):
            live = self._live(u, u4)
            if live < cfg.threshold:
                raise ProtocolAbort(
                    "consistency_check",
                    f"client {u} has {live} neighbours that signed the survivors, "
                    f"threshold is {cfg.threshold}",
                )
        self._unmask_requests(u4, signatures)
        return dict(self._requests)

    def unmask(self, messages: Iterable[UnmaskResponse]) -> AggregateResult:
        """Last phase: rebuild seeds and dropped clients' keys, remove every mask, return the sum.

        Raises
        ------
        ProtocolAbort
            Some client has fewer than ``t`` responding neighbours, or a rebuilt secret does
            not match its commitment / public key (a bad share).
        MessageRejected
            A response that does not answer exactly the request sent to that client.
        """
        cfg = self.config
        self._enter(_CHECKED if cfg.malicious else _INPUTS, "unmask")
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
        self._dropped["unmask"] = tuple(sorted(set(self._requests) - responders))
        self._phase = _DONE
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
        seeds = {
            u: self._rebuild(
                u, seed_shares[u], partial(self._seed_ok, u), "seed fails its commitment"
            )
            for u in sorted(self._u3)
        }
        t_seeds = time.perf_counter()
        keys = {
            u: X25519PrivateKey.from_private_bytes(
                self._rebuild(
                    u, key_shares[u], partial(self._key_ok, u), "key fails its public key"
                )
            )
            for u in gone
        }
        t1 = time.perf_counter()
        for seed in seeds.values():
            add_mask(acc, seed, subtract=True)
        t2 = time.perf_counter()
        for u, key in keys.items():
            for v in cfg.graph[u]:
                if v not in self._u3:
                    continue
                peer = X25519PublicKey.from_public_bytes(self._keys[v].mask_public_key)
                seed = kdf(key.exchange(peer), b"mask", cfg.round_id, u, v)
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

    def _seed_ok(self, u: int, seed: bytes) -> bool:
        return commit(self.config.round_id, u, seed) == self._keys[u].seed_commitment

    def _key_ok(self, u: int, key: bytes) -> bool:
        return _public_of(key) == self._keys[u].mask_public_key

    def _rebuild(
        self, owner: int, pool: list[tuple[int, bytes]], valid: Callable[[bytes], bool], what: str
    ) -> bytes:
        """``owner``'s secret from ``t`` of its shares, checked by ``valid`` (its commitment or
        public key). A wrong share (a lying neighbour, or one damaged) fails the check: other
        ``t``-subsets of the shares that arrived are tried (each leaving out one of the first
        ``t + 1``, then random ones, :data:`REBUILD_TRIES` in all), so one liar among more than
        ``t`` responders no longer aborts the round. The server holds all these shares anyway:
        trying more subsets learns nothing more than the one committed secret."""
        t = self.config.threshold
        last = "no subset of the shares rebuilds it"
        for chosen in itertools.islice(_share_subsets(sorted(pool), t, owner), REBUILD_TRIES):
            try:
                arr = np.stack([np.frombuffer(s, dtype="<u4") for _, s in chosen])
                (secret,) = shamir.reconstruct([x for x, _ in chosen], arr, t)
            except (MessageRejected, ValueError) as exc:
                last = str(exc)
                continue
            if valid(secret):
                return secret
        raise ProtocolAbort("unmask", f"bad share: client {owner}'s {what} ({last})")


#: how many t-subsets of a client's shares the server tries before it calls a share bad
REBUILD_TRIES = 64


def _share_subsets(
    shares: list[tuple[int, bytes]], t: int, owner: int
) -> Iterator[list[tuple[int, bytes]]]:
    """The first ``t`` shares; then the ``t``-subsets of the first ``t + 1`` (any one of them
    left out: one bad share among them is passed by); then random ``t``-subsets."""
    yield shares[:t]
    if len(shares) <= t:
        return
    head = shares[: t + 1]
    for i in range(t + 1):
        yield head[:i] + head[i + 1 :]
    pick = random.Random(owner)  # which subsets to try: no secret, any generator will do
    while True:
        yield sorted(pick.sample(shares, t))


def _public_of(secret: bytes) -> bytes | None:
    """The X25519 public key of a rebuilt private key (``None`` if it is not one)."""
    try:
        return raw_public(X25519PrivateKey.from_private_bytes(secret))
    except ValueError:
        return None
