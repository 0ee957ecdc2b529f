"""What a SuperNode does with each message of a FederatedMF round.

In a real cross-device deployment a SuperNode is one device holding one user. For tests and
demos a SuperNode here hosts a **partition of simulated users** of one dataset: its
``node_config`` names the data (``data = "synthetic"`` with ``synthetic-*`` sizes, or a path
that :func:`privrec.data.load` reads) and the partition (``partition-id`` of
``num-partitions``; user ``u`` of the dataset lives on partition ``u mod num-partitions``).
Each hosted user is still a separate SecAgg+ client with its own keys, its own exact
on-device solve, its own clipping and its own share of the distributed-DP noise; only the
transport is shared. So what the server sees is exactly what it would see with one user per
device, except that it learns which users share a node.

Handlers (one per Flower message; each runs in a fresh ``flwr-clientapp`` process, so all
state between phases goes through ``Context.state``):

``describe``
    Announce the hosted user ids (pseudonymous dataset row numbers) and the catalogue size.
``advertise_keys``
    Start a round: create one :class:`~privrec.secure.secagg.SecAggClient` per sampled
    hosted user, return their advertisements; any previous round's state is discarded.
``share_keys``
    Return each user's encrypted Shamir shares for its neighbours.
``masked_input``
    Receive the shares, the item factors and the public round settings; compute each user's
    clipped update (:func:`~privrec.federated.mf.client_update`), pack it with the clip bit
    (:func:`~privrec.federated.mf.pack_payload`), encode it with distributed DP
    (:class:`~privrec.privacy.distributed.DistributedDPEncoder`: rotation, conditional
    rounding, discrete Gaussian noise share, wrap to ``2^b``) and mask it.
``consistency_check`` (malicious-server rounds only)
    Sign the survivor set the server announces (see :mod:`privrec.secure.secagg`).
``unmask``
    Reveal, per neighbour, the one share the server is entitled to. When the message also
    carries the next round's description (``next-round``, pipelining), start that round
    right away and return its advertisements too: one Flower round trip less per round.

Privacy: this is where each user's update is protected. Mechanism: distributed discrete
Gaussian (KLS21) through :class:`~privrec.privacy.distributed.DistributedDPEncoder`, each user
adding its share of the noise sized for the round's ``min_survivors``. Sensitivity: the
payload ``[a·Δ, β·(b − ½)]`` has L2 norm ≤ 1 (:func:`~privrec.federated.mf.pack_payload`),
``Δ2`` on the integer grid after conditional rounding. Privacy unit: one user (the whole
history). Neighbouring relation: add/remove one user's history. Accounting: the server
charges ``PoissonSampled(q, plan.dp_event(noise shares))`` per completed round to the RDP
accountant — the worst case a completed round can have, whatever its survivors
(:meth:`~privrec.federated.mf.FederatedMFServer.apply`). The server cannot switch a node's
protection off: a round without noise is refused, and a seed in the FederatedMF config is
ignored (fresh ChaCha20 randomness from the OS is used), unless the node's **own**
``node_config`` says ``test-mode = true`` — then both are honoured with a
:class:`~privrec.errors.PrivacyWarning` (reproducible tests only; predictable noise is no noise).
The noise *level*, the number of rounds and the SecAgg+ parameters are the server's choice,
unless the node's own ``node_config`` sets a device budget (``max-epsilon``, ``budget-file``,
with malicious-server rounds and its own PKI): then each hosted user takes part only in rounds
whose SecAgg+ and noise plan hold against the node's own count of colluders and that keep its
own ε within that cap (:func:`privrec.federated.flower.budget.within_budget`). Against a malicious
server (``mf.threat-model = "malicious"``) each user signs with its long-term Ed25519 identity
key (``node_config`` ``identity-keys``: this node's ``node-<p>.keys``, mode 0600), and the node
checks every identity key the round lists against its own copy of the PKI (``pki``), so the
server cannot impersonate anyone (:mod:`privrec.federated.flower.identity`). A node whose own
``node_config`` says ``threat-model = "malicious"`` refuses rounds secured only against an
honest-but-curious server: the server cannot downgrade it.

A user whose state machine rejects a message (tampered, replayed, out of order, a refused
unmask request) is skipped — it drops out of the round — and the node answers for the others.

A round whose public settings no honest server sends is refused as a whole
(:func:`check_round_spec`, the first thing ``masked_input`` does): non-finite or non-positive
noise, clip and scale settings, payload settings that promise a norm above 1, noise shares the
secure sum does not require, or a dimension larger than the node can derive itself — before
any update is computed and before anything is allocated to the message's sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from privrec.errors import ConfigError, DataError, MessageRejected, PrivacyWarning, ProtocolError
from privrec.federated.flower.codec import (
    PROTOCOL,
    ddp_from_json,
    decode_messages,
    export_client,
    get_float,
    get_int,
    get_str,
    messages_record,
    restore_client,
    round_context,
    round_from_record,
    round_record,
)
from privrec.secure.messages import ConsistencyRequest, KeyDirectory, ShareDelivery, UnmaskRequest
from privrec.secure.secagg import RoundConfig, SecAggClient

if TYPE_CHECKING:  # scipy is imported with the data (load_node_data): every message starts a
    import scipy.sparse as sp  # fresh ClientApp process, and most phases never read the data

    from privrec.federated.mf import FederatedMFConfig, RoundSpec
    from privrec.privacy.distributed import DistributedDPConfig, DistributedDPEncoder

__all__ = [
    "NodeData",
    "check_round_spec",
    "handle",
    "load_node_data",
    "model_record",
    "node_settings",
    "task_record",
]

log = logging.getLogger(__name__)

_STATE_ROUND = "privrec.round"
_STATE_CLIENTS = "privrec.clients"


# ----------------------------------------------------------------------------------------------
# The node's users
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeData:
    """The users a SuperNode hosts and their histories (binary implicit feedback).

    Attributes
    ----------
    user_ids
        Sorted global ids of the hosted users (rows of the dataset).
    histories
        CSR ``(len(user_ids), n_items)``: row ``i`` is the history of ``user_ids[i]``.
    n_items
        Catalogue size (the same on every node of a federation).
    """

    user_ids: np.ndarray
    histories: sp.csr_matrix
    n_items: int

    def items_of(self, user: int) -> np.ndarray:
        """Catalogue indices of one hosted user's items."""
        row = int(np.searchsorted(self.user_ids, user))
        if row >= self.user_ids.size or self.user_ids[row] != user:
            raise DataError("user is not hosted on this node", field="user", found=user)
        lo, hi = self.histories.indptr[row], self.histories.indptr[row + 1]
        return np.asarray(self.histories.indices[lo:hi], dtype=np.int64)


def _int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"node_config needs {key!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"node_config {key!r} must be an integer, found {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"node_config {key!r} must be an integer, found {value!r}") from None


def load_node_data(node_config: Mapping[str, Any]) -> NodeData:
    """This node's partition of the dataset named in its ``node_config``.

    Keys: ``data`` (``"synthetic"`` — the default — or a file path for
    :func:`privrec.data.load`, with optional ``format``), ``partition-id`` and
    ``num-partitions`` (default ``0`` of ``1``), and for synthetic data ``synthetic-users``,
    ``synthetic-items``, ``synthetic-per-user`` and ``synthetic-seed``.

    Raises
    ------
    ConfigError
        Missing or invalid keys, or a partition id outside ``[0, num-partitions)``.
    """
    source = str(node_config.get("data", "synthetic"))
    n_parts = _int(node_config, "num-partitions", 1)
    part = _int(node_config, "partition-id", 0)
    if n_parts < 1 or not 0 <= part < n_parts:
        raise ConfigError(f"partition-id must be in [0, num-partitions={n_parts}), found {part}")
    if source == "synthetic":
        from privrec.data.synthetic import synthetic

        data = synthetic(
            n_users=_int(node_config, "synthetic-users", 200),
            n_items=_int(node_config, "synthetic-items", 100),
            interactions_per_user=float(node_config.get("synthetic-per-user", 10.0)),
            seed=_int(node_config, "synthetic-seed", 0),
            timestamps=False,
            n_threads=1,
        )
    else:
        from privrec.data.loaders import load

        fmt = node_config.get("format")
        data = load(source, None if fmt is None else str(fmt))
    import scipy.sparse as sp

    matrix = sp.csr_matrix(data.binarize().matrix, dtype=np.float64)
    users = np.arange(part, matrix.shape[0], n_parts, dtype=np.int64)
    return NodeData(users, sp.csr_matrix(matrix[users]), int(matrix.shape[1]))


# ----------------------------------------------------------------------------------------------
# State between phases
# ----------------------------------------------------------------------------------------------


def _reset(context: Context) -> None:
    for key in (_STATE_ROUND, _STATE_CLIENTS):
        if key in context.state:
            del context.state[key]


def _identities(context: Context, config: RoundConfig) -> dict[int, Any]:
    """The node's users' Ed25519 identity keys, after checking the round's keys against the PKI."""
    if not config.malicious:
        return {}
    from privrec.federated.flower.identity import load_identity_keys, load_pki

    settings = dict(context.node_config)
    if not settings.get("pki") or not settings.get("identity-keys"):
        raise ConfigError(
            "a malicious-server round needs this node's own PKI and identity keys "
            "(node_config pki = <pki.json>, identity-keys = <node-p.keys>)"
        )
    pki = load_pki(str(settings["pki"]))
    for u, key in zip(config.client_ids, config.identity_keys, strict=True):
        if pki.get(u) != key:
            raise MessageRejected(
                f"the round's identity key of user {u} is not the one in this node's PKI: "
                "refusing (the server may be impersonating users)"
            )
    return load_identity_keys(str(settings["identity-keys"]))


def _check_threat_model(context: Context, config: RoundConfig) -> None:
    required = str(context.node_config.get("threat-model", "honest-but-curious"))
    if required == "malicious" and not config.malicious:
        raise ConfigError(
            "this node requires rounds secured against a malicious server (node_config "
            "threat-model = malicious); the server asked for an honest-but-curious round"
        )


def _load_clients(context: Context, round_id: bytes) -> tuple[RoundConfig, dict[int, SecAggClient]]:
    if _STATE_ROUND not in context.state.config_records:
        raise ProtocolError("no SecAgg round in progress on this node")
    config, _ = round_from_record(context.state.config_records[_STATE_ROUND])
    if config.round_id != round_id:
        raise ProtocolError("message belongs to another SecAgg round than the node's current one")
    keys = _identities(context, config)
    stored = context.state.config_records.get(_STATE_CLIENTS, ConfigRecord())
    clients: dict[int, SecAggClient] = {}
    for key, blob in stored.items():
        if isinstance(blob, bytes):
            u = int(key)
            clients[u] = restore_client(config, blob, client_id=u, identity_key=keys.get(u))
    return config, clients


def _save_clients(context: Context, clients: Mapping[int, SecAggClient]) -> None:
    context.state[_STATE_CLIENTS] = ConfigRecord(
        {str(u): export_client(c) for u, c in sorted(clients.items())}
    )


# ----------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------


def _test_mode(context: Context) -> bool:
    """Whether this node's own ``node_config`` allows noise-free and seeded rounds (tests)."""
    value = context.node_config.get("test-mode", False)
    return value is True or str(value).lower() == "true"


def node_settings(context: Context) -> dict[str, Any]:
    """The node's data settings: run config ``node.*`` defaults, overridden by ``node_config``.

    The defaults let the simulation engine (whose virtual SuperNodes only get
    ``partition-id`` / ``num-partitions``) use a dataset file; a real SuperNode's own
    ``node_config`` always wins.
    """
    merged = {k[len("node.") :]: v for k, v in context.run_config.items() if k.startswith("node.")}
    merged.pop("test-mode", None)  # only the node itself may weaken its privacy
    merged.update(context.node_config)
    return merged


def _describe(content: RecordDict, context: Context) -> RecordDict:
    data = load_node_data(node_settings(context))
    return RecordDict(
        {
            "node": ConfigRecord(
                {
                    "protocol": PROTOCOL,
                    "user-ids": [int(u) for u in data.user_ids],
                    "n-items": data.n_items,
                }
            )
        }
    )


def _start_round(record: ConfigRecord, context: Context) -> ConfigRecord:
    """Phase 1: fresh SecAgg+ clients for the node's sampled users; their advertisements."""
    _reset(context)  # one round at a time: a new round discards the last one's secrets
    config, meta = round_from_record(record)
    _check_threat_model(context, config)
    keys = _identities(context, config)
    data = load_node_data(node_settings(context))
    hosted = set(data.user_ids.tolist())
    invited = set(config.client_ids)
    users = sorted(u for u in meta["users"] if u in hosted and u in invited)
    if len(users) != len(meta["users"]):
        log.warning("ignoring %d users this node does not host", len(meta["users"]) - len(users))
    if config.malicious:
        missing = [u for u in users if u not in keys]
        if missing:
            log.warning("no identity key for users %s: they sit this round out", missing[:5])
        users = [u for u in users if u in keys]
    clients = {u: SecAggClient(config, u, identity_key=keys.get(u)) for u in users}
    adverts = [clients[u].advertise_keys() for u in users]
    context.state[_STATE_ROUND] = round_record(
        config, round_=meta["round"], attempt=meta["attempt"], kind=meta["kind"], users=users
    )
    _save_clients(context, clients)
    return messages_record(adverts)


def _advertise_keys(content: RecordDict, context: Context) -> RecordDict:
    return RecordDict({"msgs": _start_round(_config(content, "round"), context)})


def _config(content: RecordDict, name: str) -> ConfigRecord:
    record = content.config_records.get(name)
    if record is None:
        raise MessageRejected(f"message has no {name!r} record")
    return record


def _round_id(content: RecordDict) -> bytes:
    rid = _config(content, "meta").get("round-id")
    if not isinstance(rid, bytes):
        raise ProtocolError("message does not name its SecAgg round")
    return rid


def _share_keys(content: RecordDict, context: Context) -> RecordDict:
    _, clients = _load_clients(context, _round_id(content))
    directories, _ = decode_messages(content.config_records.get("msgs"), KeyDirectory)
    out = []
    for d in directories:
        client = clients.get(d.receiver)
        if client is None:
            continue
        try:
            out.append(client.share_keys(d))
        except ProtocolError as exc:
            log.warning("user %d leaves the round in share_keys: %s", d.receiver, exc)
    _save_clients(context, clients)
    return RecordDict({"msgs": messages_record(out)})


def _user_rng(seed: int | None, round_: int, attempt: int, user: int) -> np.random.Generator:
    """Rounding and noise of one user's encoding: the CSPRNG, or (tests only) seeded ChaCha20."""
    from privrec.privacy.randomness import secure_generator, seeded_generator

    if seed is None:
        return secure_generator()
    digest = hashlib.sha256(f"privrec-flower/{seed}/{round_}/{attempt}/{user}".encode()).digest()
    return seeded_generator(int.from_bytes(digest[:8], "little"), warn=False)


def _finite(value: float, name: str, *, positive: bool = True) -> None:
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise MessageRejected(
            f"round setting {name} must be finite and {'> 0' if positive else '>= 0'}, "
            f"found {value!r}"
        )


def check_ddp(ddp: DistributedDPConfig, config: RoundConfig) -> None:
    """The distributed-DP settings any round must have, checked before the encoder exists.

    The noise multiplier (never a budget object), clip, granularity and probabilities must be
    finite and in range; the encoding's length must be the SecAgg round's (``dim`` padded to a
    power of two); and the noise shares each user's noise is sized for (``min_survivors``) may
    not exceed the survivors the secure sum itself requires — a server claiming more shares
    would have each device add less noise than the sum that can actually complete needs.
    """
    from privrec.privacy.hadamard import next_power_of_two

    if ddp.budget is not None or ddp.noise_multiplier is None:
        raise MessageRejected("the round's distributed-DP settings must give a noise multiplier")
    _finite(float(ddp.noise_multiplier), "ddp.noise_multiplier")
    _finite(float(ddp.clip), "ddp.clip")
    if ddp.gamma is not None:
        _finite(float(ddp.gamma), "ddp.gamma")
    for name in ("modclip_prob", "beta"):
        value = float(getattr(ddp, name))
        if not 0.0 < value < 1.0:
            raise MessageRejected(f"round setting ddp.{name} must be in (0, 1), found {value!r}")
    if ddp.bits is not None and not 2 <= ddp.bits <= 64:
        raise MessageRejected(f"round setting ddp.bits must be in [2, 64], found {ddp.bits}")
    if not 1 <= ddp.min_survivors <= config.min_survivors:
        raise MessageRejected(
            f"the noise is sized for {ddp.min_survivors} noise shares, but the secure sum "
            f"requires only {config.min_survivors} survivors: refusing a round whose noise "
            "the completed sum may not carry"
        )
    if ddp.max_clients is not None and ddp.max_clients < ddp.min_survivors:
        raise MessageRejected("round setting ddp.max_clients is below ddp.min_survivors")
    if next_power_of_two(ddp.dim) != config.dim:
        raise MessageRejected(
            f"distributed-DP dimension {ddp.dim} does not fit the SecAgg round's {config.dim} "
            "words (the next power of two)"
        )


def check_round_spec(
    task: ConfigRecord, config: RoundConfig, kind: str, n_items: int
) -> tuple[DistributedDPConfig, FederatedMFConfig, RoundSpec | None]:
    """A FederatedMF node's check of a round's public settings, before any use.

    Called first by ``masked_input`` for the FederatedMF round kinds (``"count"``,
    ``"train"``): nothing has been computed or allocated to the message's sizes yet. Checks
    :func:`check_ddp`, then bounds the dimension by what the node derives itself — the
    counting round's length from its own catalogue (:func:`~privrec.federated.client.count_dim`),
    a training payload at most ``min(head_items, n_items)·factors + 1`` (the planned head's
    rows, ``factors`` ≤ 512 by the config's validation; the ``payload-dim`` the task states
    must be that ``ddp.dim``) — and, for training, that the clip norm and value scale are
    finite and > 0, the bit scale finite and ≥ 0 (> 0 with adaptive clipping), and that the
    payload ``[a·Δ, β(b − ½)]`` they define has norm ≤ 1 (``(a·C)² + (β/2)² ≤ 1``), as the
    sensitivity bound the noise is sized for assumes.

    Returns ``(ddp, mf_config, spec)`` (``spec`` a :class:`~privrec.federated.mf.RoundSpec`
    for training rounds, else ``None``).

    Raises
    ------
    MessageRejected
        Any setting no honest server sends; the node's users take no part in the round.
    ConfigError
        A config that does not validate at all.
    """
    from privrec.federated.client import count_dim
    from privrec.federated.mf import FederatedMFConfig, RoundSpec

    ddp = ddp_from_json(get_str(task, "ddp"))
    mf_config = FederatedMFConfig.model_validate_json(get_str(task, "mf-config"))
    check_ddp(ddp, config)
    if kind == "count":
        if ddp.dim != count_dim(n_items):
            raise MessageRejected(
                f"counting-round dimension {ddp.dim} is not this catalogue's {count_dim(n_items)}"
            )
        return ddp, mf_config, None
    if kind != "train":
        raise ConfigError(f"unknown round kind {kind!r}")
    k = int(mf_config.factors)
    rows = n_items if mf_config.head_items is None else min(int(mf_config.head_items), n_items)
    dim = get_int(task, "payload-dim")
    if dim != ddp.dim or dim > rows * k + 1 or (dim - 1) % k or dim <= 1:
        raise MessageRejected(
            f"payload dimension {dim} (distributed-DP {ddp.dim}) is not whole rows of {k} "
            f"factors within the planned head's {rows} rows"
        )
    spec = RoundSpec(
        round=get_int(task, "round"),
        clip_norm=get_float(task, "clip-norm"),
        value_scale=get_float(task, "value-scale"),
        bit_scale=get_float(task, "bit-scale"),
        dim=dim,
        aggregation="distributed",
        ddp=ddp,
    )
    _finite(spec.clip_norm, "clip-norm")
    _finite(spec.value_scale, "value-scale")
    _finite(spec.bit_scale, "bit-scale", positive=mf_config.adaptive_clipping)
    norm_sq = (spec.value_scale * spec.clip_norm) ** 2 + (spec.bit_scale / 2.0) ** 2
    if norm_sq > 1.0 + 1e-9:
        raise MessageRejected(
            f"the round's scales allow payload norm {math.sqrt(norm_sq):.6g} > 1, above the "
            "sensitivity the noise is sized for"
        )
    return ddp, mf_config, spec


def _masked_input(content: RecordDict, context: Context) -> RecordDict:
    from privrec.privacy.distributed import DistributedDPEncoder

    config, clients = _load_clients(context, _round_id(content))
    _, meta = round_from_record(context.state.config_records[_STATE_ROUND])
    deliveries, _ = decode_messages(content.config_records.get("msgs"), ShareDelivery)
    task = _config(content, "task")
    kind = meta["kind"]
    data = load_node_data(node_settings(context))
    if kind == "dpals":
        ddp = ddp_from_json(get_str(task, "ddp"))
        check_ddp(ddp, config)
        spec = None
    else:  # every FederatedMF setting checked before anything is computed or allocated
        ddp, mf_config, spec = check_round_spec(task, config, kind, data.n_items)
    add_noise = bool(task.get("noise", True))
    if config.context and config.context != round_context(ddp, add_noise):
        raise MessageRejected(
            "the round's distributed-DP settings are not those its SecAgg round was agreed on "
            "(the server may be telling nodes different noise)"
        )
    test_mode = _test_mode(context)
    if not add_noise:
        if not test_mode:
            raise ConfigError(
                "the server asked for a round without distributed-DP noise; this node refuses "
                "(only a node started with node_config test-mode=true accepts that)"
            )
        warnings.warn(
            "this round adds no distributed-DP noise: the sum is NOT differentially private",
            PrivacyWarning,
            stacklevel=2,
        )
    encoder = DistributedDPEncoder(ddp)
    if encoder.encoded_dim != config.dim or encoder.bits != config.bits:
        raise ConfigError(
            f"distributed-DP encoding ({encoder.encoded_dim} words of {encoder.bits} bits) does "
            f"not match the SecAgg round ({config.dim} words of {config.bits} bits)"
        )
    users = _within_budget(
        [d.receiver for d in deliveries if d.receiver in clients],
        context, ddp, encoder, config, noise=add_noise,
    )  # fmt: skip
    if not users:  # nobody here takes part: nothing to compute
        payloads: dict[int, np.ndarray] = {}
    elif kind == "dpals":
        from privrec.federated.flower.dpals import dpals_payloads

        payloads, rng_of = dpals_payloads(content, task, data, users, context, test_mode)
        if any(p.shape != (ddp.dim,) for p in payloads.values()):
            raise MessageRejected("the round's distributed-DP dimension is not the payload's")
    else:
        payloads, rng_of = _mf_payloads(
            content, data, users, meta, test_mode, mf_config=mf_config, spec=spec
        )
    out = []
    for d in deliveries:
        client = clients.get(d.receiver)
        if client is None or d.receiver not in payloads:
            continue
        payload = payloads[d.receiver]
        rng = rng_of(d.receiver)
        if add_noise:
            encoded = encoder.encode(payload, rng)
        else:
            encoded = encoder.wrap(encoder.quantise(payload, rng))
        try:
            out.append(client.masked_input(d, encoded))
        except ProtocolError as exc:
            log.warning("user %d leaves the round in masked_input: %s", d.receiver, exc)
    _save_clients(context, clients)
    return RecordDict({"msgs": messages_record(out)})


def _within_budget(
    users: list[int],
    context: Context,
    ddp: DistributedDPConfig,
    encoder: DistributedDPEncoder,
    config: RoundConfig,
    *,
    noise: bool,
) -> list[int]:
    """:func:`~privrec.federated.flower.budget.within_budget` with the node's *own* config:
    run-config ``node.*`` defaults come from the server, which must neither loosen a device's
    cap nor choose where on the device a file is written."""
    from privrec.federated.flower.budget import within_budget

    return within_budget(users, dict(context.node_config), ddp, encoder.plan, config, noise=noise)


def warn_seeded(seed: int | None) -> None:
    """Seeded rounding and noise are honoured in test mode only, and always warn."""
    if seed is not None:
        warnings.warn(
            "seeded client rounding and noise (test mode): reproducible and NOT private",
            PrivacyWarning,
            stacklevel=3,
        )


def _mf_payloads(
    content: RecordDict,
    data: NodeData,
    users: list[int],
    meta: dict[str, Any],
    test_mode: bool,
    *,
    mf_config: FederatedMFConfig,
    spec: RoundSpec | None,
) -> tuple[dict[int, np.ndarray], Callable[[int], np.random.Generator]]:
    """FederatedMF: each user's packed, clipped update (or count vector) and its noise source.

    ``mf_config`` and ``spec`` (``None`` for the counting round) are what
    :func:`check_round_spec` returned: the round's settings are checked before this runs.
    """
    from privrec.federated.client import check_round_model, count_dim
    from privrec.federated.mf import client_count_vector, client_update, pack_payload

    seed = mf_config.seed if test_mode else None
    warn_seeded(seed)
    kind = meta["kind"]
    if kind == "train":
        model = content.array_records.get("model")
        if spec is None:
            raise MessageRejected("a training round needs its round settings")
        if model is None or "item_factors" not in model or "head_items" not in model:
            raise MessageRejected("masked-input message carries no item factors / head items")
        # the learnable head, its factors and the payload's (planned) rows must agree before use
        item_factors, head = check_round_model(
            model["item_factors"].numpy(),
            model["head_items"].numpy(),
            spec.dim,
            mf_config.factors,
            data.n_items,
        )
        if spec.ddp is None or spec.ddp.dim != spec.dim:
            raise DataError(
                "payload length does not match the distributed-DP encoding",
                field="payload-dim",
                expected=None if spec.ddp is None else str(spec.ddp.dim),
                found=spec.dim,
            )
    elif kind != "count":
        raise ConfigError(f"unknown round kind {kind!r}")

    def payload(user: int) -> np.ndarray:
        items = data.items_of(user)
        if spec is not None:  # a training round
            pos = np.searchsorted(head, items)
            pos = np.minimum(pos, head.size - 1)
            update = client_update(item_factors, pos[head[pos] == items], mf_config, spec.clip_norm)
            return pack_payload(update, spec)
        # the B-item sample is the device's own secret randomness (CSPRNG; seeded in tests)
        sample_rng = None if seed is None else _user_rng(seed, -1, meta["attempt"], user)
        return client_count_vector(
            items, data.n_items, mf_config.counted_items, sample_rng, mf_config.count_weighting
        )

    dim = spec.dim if spec is not None else count_dim(data.n_items)
    payloads = {user: guarded(partial(payload, user), dim) for user in users}
    return payloads, lambda u: _user_rng(seed, meta["round"], meta["attempt"], u)


def guarded(compute: Callable[[], np.ndarray], dim: int) -> np.ndarray:
    """One admitted user's payload — or the zero vector if computing it fails or is not finite.

    Whether a user's computation fails can depend on its data: a server can send item factors
    that overflow only in the solve of a user holding one chosen item, and an error reply would
    tell it so, without noise (a review read a user's whole history that way, one item per
    round, at 0.02 ε a round). So once a user takes part, its reply never depends on its data
    except through the noised payload: a failure sends zeros — norm 0, within the sensitivity —
    encoded and noised like any other payload.
    """
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(compute(), dtype=np.float64)
    except Exception as exc:  # any failure: the reply must not say which
        log.warning(
            "a user's contribution could not be computed (%s): zeros sent", type(exc).__name__
        )
        return np.zeros(dim)
    if out.shape != (dim,) or not np.all(np.isfinite(out)):
        return np.zeros(dim)
    return out


def _consistency_check(content: RecordDict, context: Context) -> RecordDict:
    """Malicious-server rounds: each user signs the survivor set (or refuses, and drops out)."""
    _, clients = _load_clients(context, _round_id(content))
    requests, _ = decode_messages(content.config_records.get("msgs"), ConsistencyRequest)
    out = []
    for q in requests:
        client = clients.get(q.receiver)
        if client is None:
            continue
        try:
            out.append(client.consistency_check(q))
        except ProtocolError as exc:
            log.warning("user %d refuses the survivor set: %s", q.receiver, exc)
    _save_clients(context, clients)
    return RecordDict({"msgs": messages_record(out)})


def _unmask(content: RecordDict, context: Context) -> RecordDict:
    requests, _ = decode_messages(content.config_records.get("msgs"), UnmaskRequest)
    out = []
    if requests:
        _, clients = _load_clients(context, _round_id(content))
        for q in requests:
            client = clients.get(q.receiver)
            if client is None:
                continue
            try:
                out.append(client.unmask(q))
            except ProtocolError as exc:
                log.warning("user %d refuses to unmask: %s", q.receiver, exc)
    _reset(context)  # the round is over for this node: forget its secrets
    reply = RecordDict({"msgs": messages_record(out)})
    nxt = content.config_records.get("next-round")
    if nxt is not None:  # pipelined: phase 1 of the next round rides on this message
        reply["next-msgs"] = _start_round(nxt, context)
    return reply


_HANDLERS = {
    "describe": _describe,
    "advertise_keys": _advertise_keys,
    "share_keys": _share_keys,
    "masked_input": _masked_input,
    "consistency_check": _consistency_check,
    "unmask": _unmask,
}


def handle(action: str, content: RecordDict, context: Context) -> RecordDict:
    """Run one handler (``describe`` or a SecAgg+ phase) and return the reply's content."""
    try:
        fn = _HANDLERS[action]
    except KeyError:
        raise ConfigError(f"unknown action {action!r}; known: {sorted(_HANDLERS)}") from None
    return fn(content, context)


def task_record(
    *,
    mf_config_json: str,
    ddp_json: str,
    noise: bool,
    round_: int,
    clip_norm: float = math.nan,
    value_scale: float = math.nan,
    bit_scale: float = math.nan,
    payload_dim: int = 0,
) -> ConfigRecord:
    """The public settings a node needs to compute and encode its users' payloads."""
    return ConfigRecord(
        {
            "mf-config": mf_config_json,
            "ddp": ddp_json,
            "noise": bool(noise),
            "round": int(round_),
            "clip-norm": float(clip_norm),
            "value-scale": float(value_scale),
            "bit-scale": float(bit_scale),
            "payload-dim": int(payload_dim),
        }
    )


def model_record(item_factors: np.ndarray, head_items: np.ndarray) -> ArrayRecord:
    """The current head item factors and the head's catalogue indices."""
    return ArrayRecord(
        {
            "item_factors": Array(np.ascontiguousarray(item_factors, dtype=np.float64)),
            "head_items": Array(np.ascontiguousarray(head_items, dtype=np.int64)),
        }
    )


def mf_config_json(config: Any) -> str:
    """A FederatedMF config as JSON (the public hyper-parameters)."""
    return json.dumps(config.model_dump(mode="json"))
