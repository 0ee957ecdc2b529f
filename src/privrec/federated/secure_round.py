"""One secure sum of encoded client vectors: the full SecAgg+ protocol or its labelled fast path.

Both take the **same** encoded integer vectors (``uint64`` in ``[0, 2^b)``, e.g. from
:meth:`privrec.privacy.distributed.DistributedDPEncoder.encode`) and a fault schedule, and
return the sum modulo ``2^b`` over the clients whose masked input the server accepted:

``full``
    Drives the real :class:`~privrec.secure.secagg.SecAggClient` /
    :class:`~privrec.secure.secagg.SecAggServer` state machines through their four phases,
    every message through its byte encoding (X25519, HKDF, AES-GCM, Shamir, PRG masks).
``fast`` (**no cryptography**)
    Adds the accepted vectors modulo ``2^b`` directly. Masks cancel exactly in SecAgg+, so the
    result is bit-for-bit the protocol's whenever the protocol completes (tested against
    :func:`privrec.federated.simulate_secagg` on the same inputs); it does not model the
    neighbourhood-threshold aborts of SecAgg+ (only the ``min_survivors`` one), and it is
    for utility sweeps, never a deployment.

Faults: a client may crash before sending its message of any phase, or send a malformed
masked input (wrong length, or one bit flipped on the way, which fails the input's HMAC),
which the server rejects; such a client is then treated as dropped in ``masked_input``. A
client crashing in ``unmask`` (or, against a malicious server, in ``consistency_check``) has
its input in the sum.

``threat_model="malicious"`` runs SecAgg+ with Bell et al.'s threshold for a malicious
server, signed advertisements and the signed consistency check; the simulation plays the PKI
(fresh Ed25519 identities per round). The fast path's sums are the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from privrec.errors import MessageRejected, ProtocolAbort
from privrec.secure.graph import ThreatModel, check_threat_model
from privrec.secure.messages import MaskedInput, decode
from privrec.secure.prg import word_dtype
from privrec.secure.secagg import (
    PHASES,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    generate_identities,
)

__all__ = ["SecureSum", "secure_sum"]

Mode = Literal["full", "fast"]


@dataclass(frozen=True)
class SecureSum:
    """Result of one secure sum.

    ``survivors`` are indices into the list of participants whose inputs are in ``sum``;
    ``dropped`` maps a phase to the participants lost there (``"rejected"``: malformed
    messages); bytes are per participant as encoded on the wire (zero for the fast path).
    """

    sum: np.ndarray
    survivors: tuple[int, ...]
    dropped: Mapping[str, tuple[int, ...]]
    bytes_up: np.ndarray
    bytes_down: np.ndarray
    mode: Mode
    neighbours: int = 0
    threshold: int = 0
    stats: Mapping[str, float] = field(default_factory=dict)


def _reduce(acc: np.ndarray, bits: int) -> np.ndarray:
    out = acc.astype(np.uint64)
    if bits < 64:
        out &= np.uint64((1 << bits) - 1)
    return out


def secure_sum(
    n: int,
    dim: int,
    bits: int,
    input_of: Callable[[int], np.ndarray],
    *,
    crash: Mapping[int, str] | None = None,
    garbage: frozenset[int] | set[int] = frozenset(),
    mode: Mode = "fast",
    min_survivors: int = 2,
    neighbours: int | None = None,
    threshold: int | None = None,
    dropout_rate: float = 0.05,
    corrupt_fraction: float = 0.05,
    threat_model: ThreatModel = "honest-but-curious",
) -> SecureSum:
    """Sum the encoded vectors of participants ``0..n-1`` modulo ``2^bits``.

    Parameters
    ----------
    n, dim, bits
        Participants, vector length, modulus exponent.
    input_of
        Participant index -> its encoded vector (called only for those that send one).
    crash
        Participant -> phase (one of ``advertise_keys``, ``share_keys``, ``masked_input``,
        ``unmask``) before whose message it crashes.
    garbage
        Participants whose masked input arrives malformed: odd ones truncated by a word,
        even ones with one bit flipped (caught by the input's HMAC).
    mode
        ``"full"`` protocol or ``"fast"`` path (see the module docstring).
    min_survivors, neighbours, threshold, dropout_rate, corrupt_fraction
        SecAgg+ parameters (``None`` = chosen by
        :func:`~privrec.secure.graph.choose_parameters`).
    threat_model
        ``"honest-but-curious"`` or ``"malicious"`` server (full mode; see the module docstring).

    Raises
    ------
    ProtocolAbort
        Too few survivors (both modes) or, in ``full`` mode, any abort of the protocol.
    """
    crash = dict(crash or {})
    threat = check_threat_model(threat_model)
    if mode == "fast":
        dtype = word_dtype(bits)
        acc = np.zeros(dim, dtype=dtype)
        early = {u for u, p in crash.items() if p in PHASES[:3]}
        survivors = [u for u in range(n) if u not in early and u not in garbage]
        if len(survivors) < max(2, min_survivors):
            raise ProtocolAbort(
                "masked_input",
                f"only {len(survivors)} masked inputs, at least {max(2, min_survivors)} required",
            )
        for u in survivors:
            acc += np.asarray(input_of(u)).astype(dtype)  # wraps modulo the word size
        dropped = {p: tuple(sorted(u for u, q in crash.items() if q == p)) for p in PHASES}
        dropped["rejected"] = tuple(sorted(garbage))
        # Bytes: only the masked-input payloads (what the full protocol's phase 3 carries,
        # without key exchange, shares and message headers).
        up = np.zeros(n, dtype=np.int64)
        up[survivors] = dim * dtype.itemsize
        return SecureSum(
            _reduce(acc, bits), tuple(survivors), dropped, up, np.zeros(n, np.int64), "fast"
        )

    identities, public = generate_identities(range(n)) if threat == "malicious" else ({}, {})
    config = RoundConfig.create(
        n,
        dim,
        bits,
        neighbours=neighbours,
        threshold=threshold,
        min_survivors=max(2, min_survivors),
        dropout_rate=min(max(dropout_rate, 0.0), 0.5),
        corrupt_fraction=corrupt_fraction,
        threat_model=threat,
        identity_keys=public,
    )
    up = np.zeros(n, dtype=np.int64)
    down = np.zeros(n, dtype=np.int64)
    clients = {u: SecAggClient(config, u, identity_key=identities.get(u)) for u in range(n)}
    server = SecAggServer(config)

    def send(msg: object, who: int, upward: bool) -> object:
        raw = msg.to_bytes()  # type: ignore[attr-defined]
        (up if upward else down)[who] += len(raw)
        return decode(raw)

    adverts = [
        send(clients[u].advertise_keys(), u, True) for u in range(n) if crash.get(u) != PHASES[0]
    ]
    directories = server.advertise_keys(adverts)  # type: ignore[arg-type]
    shares = []
    for u, d in directories.items():
        d_in = send(d, u, False)
        if crash.get(u) != PHASES[1]:
            shares.append(send(clients[u].share_keys(d_in), u, True))  # type: ignore[arg-type]
    deliveries = server.share_keys(shares)  # type: ignore[arg-type]
    masked: list[MaskedInput] = []
    for u, s in deliveries.items():
        s_in = send(s, u, False)
        if crash.get(u) == PHASES[2]:
            continue
        msg = clients[u].masked_input(s_in, input_of(u))  # type: ignore[arg-type]
        if u in garbage:
            msg = _garbled(msg, u)
        out = send(msg, u, True)
        assert isinstance(out, MaskedInput)
        masked.append(out)
    rejected: list[int] = []
    while True:  # the server rejects a batch with a malformed message; drop it and resubmit
        try:
            if config.malicious:
                checks = server.masked_input_consistency(masked)
            else:
                requests = server.masked_input(masked)
            break
        except MessageRejected as exc:
            bad = _sender_of(exc, masked, server)
            rejected.append(bad)
            masked = [m for m in masked if m.sender != bad]
    if config.malicious:
        signatures = []
        for u, c in checks.items():
            c_in = send(c, u, False)
            if crash.get(u) == "consistency_check":
                continue
            signatures.append(send(clients[u].consistency_check(c_in), u, True))  # type: ignore[arg-type]
        requests = server.consistency_check(signatures)  # type: ignore[arg-type]
    responses = []
    for u, r in requests.items():
        r_in = send(r, u, False)
        if crash.get(u) == PHASES[3]:
            continue
        responses.append(send(clients[u].unmask(r_in), u, True))  # type: ignore[arg-type]
    result = server.unmask(responses)  # type: ignore[arg-type]
    dropped = dict(result.dropped)
    dropped["rejected"] = tuple(sorted(rejected))
    return SecureSum(
        result.sum,
        result.survivors,
        dropped,
        up,
        down,
        "full",
        config.neighbours,
        config.threshold,
        dict(result.stats),
    )


def _garbled(msg: MaskedInput, u: int) -> MaskedInput:
    """What a faulty link delivers: a truncated vector (odd ``u``) or one flipped bit (even)."""
    if u % 2:
        return MaskedInput(msg.round_id, msg.sender, msg.bits, msg.values[:-1], msg.tag)
    flipped = bytearray(msg.values)
    flipped[len(flipped) // 2] ^= 0x10
    return MaskedInput(msg.round_id, msg.sender, msg.bits, bytes(flipped), msg.tag)


def _sender_of(exc: MessageRejected, masked: list[MaskedInput], server: SecAggServer) -> int:
    """Which message the server rejected (the server's own check, message by message)."""
    for m in masked:
        try:
            server.check_masked_input(m)
        except MessageRejected:
            return m.sender
    raise exc
