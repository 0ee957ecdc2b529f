"""What travels in Flower messages and what a SuperNode keeps in ``Context.state``.

Wire records (all public, all plain Flower records):

``round``  (:class:`~flwr.app.ConfigRecord`)
    The SecAgg+ :class:`~privrec.secure.secagg.RoundConfig` (fresh ``round-id``, the sampled
    client ids, ``dim``, ``bits``, ``neighbours``, ``threshold``, ``min-survivors``,
    ``threat-model`` and, against a malicious server, the clients' ``identity-keys``) plus the
    training round, attempt and round kind.
``msgs``  (:class:`~flwr.app.ConfigRecord`, key ``"msgs"``: list of bytes)
    One SecAgg+ protocol message per user hosted on the node, each in its own versioned byte
    encoding (:mod:`privrec.secure.messages`). Flower routes them without understanding them.
``task`` / ``model``
    With the share deliveries only: the round's public training settings (FederatedMF config,
    :class:`~privrec.federated.mf.RoundSpec`, distributed-DP config) and the current head item
    factors — everything a device needs to compute and encode its update.

Node state: a SuperNode runs each message in a fresh ``flwr-clientapp`` process, so the
SecAgg+ client state of its users (X25519 private keys, self-mask seed, received shares)
lives between phases in ``Context.state`` on the node (:func:`export_client` /
:func:`restore_client`); it never leaves the node and is discarded when the next round starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from flwr.app import ConfigRecord

from privrec.errors import MessageRejected
from privrec.secure.graph import check_threat_model
from privrec.secure.messages import Message, decode
from privrec.secure.secagg import RoundConfig, SecAggClient

if TYPE_CHECKING:  # imported where used: dp_accounting costs ~1 s at ClientApp start-up
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privrec.privacy.distributed import DistributedDPConfig

__all__ = [
    "ACTIONS",
    "PROTOCOL",
    "ddp_from_json",
    "ddp_to_json",
    "decode_messages",
    "export_client",
    "get_float",
    "get_int",
    "get_str",
    "messages_record",
    "restore_client",
    "round_context",
    "round_from_record",
    "round_record",
]

#: Protocol tag checked by both sides (a node refuses messages of another version).
PROTOCOL = "privrec-flower/3"  # 3: rounds bind their noise settings (RoundConfig.context)

#: Flower message types (``<category>.<action>``) of the discovery and the SecAgg+ phases
#: (``consistency_check`` only in malicious-server rounds).
ACTIONS = {
    "describe": "query.privrec_describe",
    "advertise_keys": "train.privrec_advertise_keys",
    "share_keys": "train.privrec_share_keys",
    "masked_input": "train.privrec_masked_input",
    "consistency_check": "train.privrec_consistency_check",
    "unmask": "train.privrec_unmask",
}

M = TypeVar("M", bound=Message)


# ----------------------------------------------------------------------------------------------
# Round configuration
# ----------------------------------------------------------------------------------------------


def round_context(ddp: DistributedDPConfig, noise: bool) -> bytes:
    """What a round's :attr:`RoundConfig.context` binds: its distributed-DP settings and whether
    noise is added — so that no two nodes can be shown different noise in one round."""
    return hashlib.sha256(
        b"privrec-flower/round-context/" + ddp_to_json(ddp).encode() + (b"1" if noise else b"0")
    ).digest()


def round_record(
    config: RoundConfig, *, round_: int, attempt: int, kind: str, users: Sequence[int]
) -> ConfigRecord:
    """The public round description sent with the first phase; ``users`` are the node's own."""
    return ConfigRecord(
        {
            "protocol": PROTOCOL,
            "round-id": config.round_id,
            "client-ids": [int(i) for i in config.client_ids],
            "dim": int(config.dim),
            "bits": int(config.bits),
            "neighbours": int(config.neighbours),
            "threshold": int(config.threshold),
            "min-survivors": int(config.min_survivors),
            "threat-model": config.threat_model,
            "identity-keys": list(config.identity_keys),
            "context": config.context,
            "round": int(round_),
            "attempt": int(attempt),
            "kind": kind,
            "users": [int(u) for u in users],
        }
    )


def _get(record: ConfigRecord, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in record:
        raise MessageRejected(f"round record has no {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MessageRejected(f"round record field {key!r} has type {type(value).__name__}")
    return value


def get_int(record: ConfigRecord, key: str) -> int:
    """An integer field of a record (:class:`MessageRejected` if missing or mistyped)."""
    return int(_get(record, key, int))


def get_float(record: ConfigRecord, key: str) -> float:
    """A number field of a record (:class:`MessageRejected` if missing or mistyped)."""
    return float(_get(record, key, (int, float)))


def get_str(record: ConfigRecord, key: str) -> str:
    """A string field of a record (:class:`MessageRejected` if missing or mistyped)."""
    return str(_get(record, key, str))


def _identity_keys(values: list[Any]) -> tuple[bytes, ...]:
    if not all(isinstance(k, bytes) for k in values):
        raise MessageRejected("round record field 'identity-keys' must list byte strings")
    return tuple(values)


def round_from_record(record: ConfigRecord) -> tuple[RoundConfig, dict[str, Any]]:
    """Inverse of :func:`round_record`: ``(RoundConfig, {"round", "attempt", "kind", "users"})``.

    Raises
    ------
    MessageRejected
        Another protocol version, or a missing / mistyped field.
    ConfigError
        Fields that do not make a valid round (checked by :class:`RoundConfig` itself).
    """
    if record.get("protocol") != PROTOCOL:
        raise MessageRejected(f"expected protocol {PROTOCOL!r}, found {record.get('protocol')!r}")
    ids = _get(record, "client-ids", list)
    users = _get(record, "users", list)
    config = RoundConfig(
        round_id=bytes(_get(record, "round-id", bytes)),
        client_ids=tuple(int(i) for i in ids),
        dim=int(_get(record, "dim", int)),
        bits=int(_get(record, "bits", int)),
        neighbours=int(_get(record, "neighbours", int)),
        threshold=int(_get(record, "threshold", int)),
        min_survivors=int(_get(record, "min-survivors", int)),
        threat_model=check_threat_model(_get(record, "threat-model", str)),
        identity_keys=_identity_keys(_get(record, "identity-keys", list)),
        context=bytes(_get(record, "context", bytes)) if "context" in record else b"",
    )
    meta = {
        "round": int(_get(record, "round", int)),
        "attempt": int(_get(record, "attempt", int)),
        "kind": str(_get(record, "kind", str)),
        "users": [int(u) for u in users],
    }
    return config, meta


# ----------------------------------------------------------------------------------------------
# Protocol messages
# ----------------------------------------------------------------------------------------------


def messages_record(messages: Iterable[Message]) -> ConfigRecord:
    """SecAgg+ messages as one record: their byte encodings, in order."""
    return ConfigRecord({"msgs": [m.to_bytes() for m in messages]})


def decode_messages(record: ConfigRecord | None, kind: type[M]) -> tuple[list[M], int]:
    """Decode the messages of a record; returns ``(good messages, number rejected)``.

    A malformed or wrongly typed message is counted and skipped, never raised: one bad
    message must not sink the others a node sent.
    """
    if record is None:
        return [], 0
    raws = record.get("msgs", [])
    if not isinstance(raws, list):
        return [], 1
    good: list[M] = []
    bad = 0
    for raw in raws:
        if not isinstance(raw, bytes):
            bad += 1
            continue
        try:
            msg = decode(raw)
        except MessageRejected:
            bad += 1
            continue
        if isinstance(msg, kind):
            good.append(msg)
        else:
            bad += 1
    return good, bad


# ----------------------------------------------------------------------------------------------
# SecAgg+ client state between phases (stays on the node)
# ----------------------------------------------------------------------------------------------


def export_client(client: SecAggClient, *, key: bytes | None = None) -> bytes:
    """A client's in-round state, to resume it in the next phase's process.

    :meth:`SecAggClient.export_state`: X25519 private keys and self-mask seed (after phases 1
    and 2) or the shares received (after phase 3) — secrets of the device that must stay on
    it. The node keeps them in ``Context.state``, in the SuperNode's memory; ``key`` (32
    bytes, node-local) seals them with AES-256-GCM for platforms that store state elsewhere.
    """
    return client.export_state(key=key)


def restore_client(
    config: RoundConfig,
    blob: bytes,
    *,
    key: bytes | None = None,
    client_id: int | None = None,
    identity_key: Ed25519PrivateKey | None = None,
) -> SecAggClient:
    """Rebuild a client exported by :func:`export_client` for the same round.

    Raises
    ------
    MessageRejected
        Not a client state, truncated, tampered, trailing bytes, of another round or client
        (:meth:`SecAggClient.restore_state`).
    """
    return SecAggClient.restore_state(
        blob, config, key=key, client_id=client_id, identity_key=identity_key
    )


# ----------------------------------------------------------------------------------------------
# Distributed-DP settings (public)
# ----------------------------------------------------------------------------------------------


def ddp_to_json(config: DistributedDPConfig) -> str:
    """The public distributed-DP settings as JSON (a noise multiplier, never a budget object)."""
    if config.budget is not None:
        raise MessageRejected("send distributed-DP settings with a noise multiplier, not a budget")
    return config.model_dump_json(exclude={"budget"})


def ddp_from_json(text: str) -> DistributedDPConfig:
    """Inverse of :func:`ddp_to_json` (validated by :class:`DistributedDPConfig`)."""
    from privrec.privacy.distributed import DistributedDPConfig

    return DistributedDPConfig(**json.loads(text))
