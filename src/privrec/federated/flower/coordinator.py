"""The server side of FederatedMF on Flower: rounds of SecAgg+ carried as Flower messages.

:class:`Coordinator` is transport-agnostic: it talks to SuperNodes through a
:class:`Transport` (the ServerApp's :class:`~flwr.serverapp.Grid` in deployment, direct
handler calls in the in-process tests), so the same code is tested fast in one process and
end to end over real ``flower-superlink`` / ``flower-supernode`` processes.

One training round (``r``, attempt ``a``):

1. Poisson-sample users (rate ``q`` of :class:`~privrec.federated.mf.FederatedMFServer`) from
   the ids the nodes announced; build a fresh :class:`~privrec.secure.secagg.RoundConfig`
   sized for the distributed-DP plan (``min_survivors`` = the count the noise is planned for).
2. ``advertise_keys`` → ``share_keys`` → ``masked_input`` (with the head item factors and the
   public round settings) → ``unmask``: one Flower message per node and phase, each carrying
   its users' SecAgg+ messages. A node that does not answer within ``round-timeout`` seconds
   drops out with all its users in that phase; a message that does not decode, claims a user
   the node was not asked for, or is rejected by the SecAgg+ server is dropped (its user drops
   out) and the others go on.
   With ``pipeline`` on (the default) the next round's sample and round description ride on
   this round's unmask message and its advertisements come back with the unmask responses,
   so steady-state rounds take three Flower round trips instead of four.
3. Decode the modular sum (:meth:`~privrec.privacy.distributed.DistributedDPEncoder.decode`),
   unpack values and clip-bit count, :meth:`~privrec.federated.mf.FederatedMFServer.apply`
   (which charges the accountant for the **actual** survivors), checkpoint, log.

A :class:`~privrec.errors.ProtocolAbort` (too few survivors, a neighbourhood below the
threshold, a bad share) releases nothing: it is recorded with no privacy spend and the round
is retried with a fresh sample, at most ``max-retries`` times; then the run stops with the
abort's phase and reason, and a later run resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from privrec.errors import ConfigError, MessageRejected, ProtocolAbort
from privrec.federated.flower.codec import (
    PROTOCOL,
    ddp_to_json,
    decode_messages,
    get_int,
    messages_record,
    round_record,
)
from privrec.federated.flower.node import mf_config_json, model_record, task_record
from privrec.federated.mf import FederatedMFConfig, FederatedMFServer
from privrec.privacy.distributed import DistributedDPEncoder
from privrec.secure.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    Message,
    ShareKeys,
    UnmaskResponse,
)
from privrec.secure.secagg import AggregateResult, RoundConfig, SecAggServer

__all__ = ["Coordinator", "DeploySettings", "RoundLog", "Transport", "parse_run_config"]

M = TypeVar("M", bound=Message)
logger = logging.getLogger(__name__)

CHECKPOINT = "server.npz"
ROUND_LOG = "rounds.jsonl"


class Transport(Protocol):
    """How the coordinator reaches SuperNodes."""

    def node_ids(self) -> list[int]:
        """The nodes currently connected."""
        ...

    def exchange(
        self, action: str, contents: Mapping[int, RecordDict], *, timeout: float, group: str
    ) -> dict[int, RecordDict]:
        """Send ``contents[node]`` to each node; return the replies that arrived in time."""
        ...


@dataclass(frozen=True)
class DeploySettings:
    """Deployment settings of the ServerApp (run config keys without the ``mf.`` prefix).

    Attributes
    ----------
    round_timeout
        Seconds the server waits for the replies of one phase; nodes that miss it drop out.
    min_nodes, node_wait
        Wait up to ``node_wait`` seconds for at least ``min_nodes`` SuperNodes to connect.
    checkpoint_dir
        Where the server state is written after every completed round (``""``: nowhere).
    save_aggregates
        Also write each round's decoded (noised) sum, the survivors and the pre-round state —
        what the server saw, for audits and tests.
    max_retries
        Aborted attempts tolerated per round.
    resume
        Continue from ``checkpoint_dir/server.npz`` when it exists.
    pipeline
        Send the next round's phase 1 (its sample and round description) with this round's
        unmask requests, so a round costs three Flower round trips instead of four.
    pki
        Path of the users' public identity keys (``pki.json``,
        :mod:`privrec.federated.flower.identity`); required with
        ``mf.threat-model = "malicious"``.
    """

    round_timeout: float = 120.0
    min_nodes: int = 2
    node_wait: float = 60.0
    checkpoint_dir: str = ""
    save_aggregates: bool = False
    max_retries: int = 2
    resume: bool = True
    pipeline: bool = True
    pki: str = ""

    def __post_init__(self) -> None:
        if not (self.round_timeout > 0 and math.isfinite(self.round_timeout)):
            raise ConfigError(f"round-timeout must be > 0 seconds, found {self.round_timeout}")
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes must be >= 1, found {self.min_nodes}")
        if self.max_retries < 0:
            raise ConfigError(f"max-retries must be >= 0, found {self.max_retries}")


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[FederatedMFConfig, DeploySettings]:
    """Split Flower's flat run config: ``mf.<field>`` → FederatedMF, the rest → deployment.

    ``node.*`` keys are the nodes' data defaults and are ignored here.

    Dashes in keys become underscores (``mf.clients-per-round`` = ``clients_per_round``); an
    empty string means ``None`` (TOML has no null: ``mf.head-items = ""`` trains the whole
    catalogue, ``mf.clients-per-round = ""`` leaves ``mf.sampling-rate`` in charge). Unknown keys raise :class:`ConfigError`.
    """
    mf: dict[str, Any] = {}
    dep: dict[str, Any] = {}
    known = set(DeploySettings.__dataclass_fields__)
    for key, value in run_config.items():
        if key.startswith("node."):
            continue  # data settings of the nodes (see privrec.federated.flower.node)
        if key.startswith("mf."):
            name = key[3:].replace("-", "_")
            mf[name] = None if value == "" else value
            continue
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown run config key {key!r}; known: mf.*, {sorted(known)}")
        dep[name] = value
    try:
        settings = DeploySettings(**dep)
    except TypeError as exc:
        raise ConfigError(f"invalid run config: {exc}") from None
    return FederatedMFConfig.create(**mf), settings


@dataclass
class RoundLog:
    """What one attempt of a round did (one JSON line in ``rounds.jsonl``)."""

    round: int
    attempt: int
    kind: str
    sampled: int
    survivors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    epsilon: float = 0.0
    clip_norm: float = math.nan
    unclipped_fraction: float = math.nan
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    aborted: str | None = None


@dataclass(frozen=True)
class _Prefetch:
    """Phase 1 of a round, done ahead on the previous round's unmask message."""

    round: int
    ids: np.ndarray
    config: RoundConfig
    adverts: list[AdvertiseKeys]
    nodes: int


def _model_bytes(record: RecordDict) -> int:
    n = 0
    for rec in record.array_records.values():
        n += sum(len(arr.data) for arr in rec.values())
    for crec in record.config_records.values():
        raw = crec.get("msgs")
        if isinstance(raw, list):
            n += sum(len(b) for b in raw if isinstance(b, bytes))
    return n


class Coordinator:
    """Drives FederatedMF training over SuperNodes (see the module docstring).

    Parameters
    ----------
    transport
        How to reach the nodes.
    config
        FederatedMF hyper-parameters (``aggregation`` must be ``"distributed"``: the Flower
        server is not trusted with clear-text updates).
    settings
        Timeouts, checkpointing and retries.
    say
        Where progress lines go (the ServerApp passes Flower's logger).
    """

    def __init__(
        self,
        transport: Transport,
        config: FederatedMFConfig,
        settings: DeploySettings,
        say: Callable[[str], None] | None = None,
    ) -> None:
        if config.aggregation != "distributed":
            raise ConfigError(
                "the Flower deployment runs distributed DP only (aggregation='distributed'): "
                "the central variant would hand clear-text updates to the server"
            )
        self.transport = transport
        self.config = config
        self.settings = settings
        self.say = say or logger.info
        self.node_users: dict[int, np.ndarray] = {}
        self.user_node: dict[int, int] = {}
        self.n_items = 0
        self.server: FederatedMFServer | None = None
        self.logs: list[RoundLog] = []
        self.ckpt = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
        self._prefetch: _Prefetch | None = None
        self.pki: dict[int, bytes] = {}
        if config.threat_model == "malicious":
            if not settings.pki:
                raise ConfigError(
                    "mf.threat-model = malicious needs the users' identity keys: set pki = "
                    "<pki.json> (privrec.federated.flower.identity.create_identities)"
                )
            from privrec.federated.flower.identity import load_pki

            self.pki = load_pki(settings.pki)

    # ------------------------------------------------------------------ discovery
    def discover(self) -> None:
        """Ask every connected node which users it hosts and how large the catalogue is.

        Raises
        ------
        ConfigError
            Too few nodes answered, nodes disagree on the catalogue, or two nodes claim the
            same user.
        """
        nodes = self.transport.node_ids()
        probe = RecordDict({"meta": ConfigRecord({"protocol": PROTOCOL})})
        replies = self.transport.exchange(
            "describe",
            dict.fromkeys(nodes, probe),
            timeout=self.settings.round_timeout,
            group="describe",
        )
        if len(replies) < self.settings.min_nodes:
            raise ConfigError(
                f"only {len(replies)} of {len(nodes)} nodes described themselves, "
                f"min-nodes is {self.settings.min_nodes}"
            )
        n_items: set[int] = set()
        for node, content in replies.items():
            rec = content.config_records.get("node")
            if rec is None or rec.get("protocol") != PROTOCOL:
                raise ConfigError(f"node {node} speaks another protocol than {PROTOCOL!r}")
            users = np.asarray(rec.get("user-ids", []), dtype=np.int64)
            for u in users.tolist():
                if u in self.user_node:
                    raise ConfigError(
                        f"user {u} is claimed by nodes {self.user_node[u]} and {node}"
                    )
                self.user_node[u] = node
            self.node_users[node] = np.sort(users)
            n_items.add(get_int(rec, "n-items"))
        if len(n_items) != 1:
            raise ConfigError(f"nodes disagree on the catalogue size: {sorted(n_items)}")
        self.n_items = n_items.pop()
        self.say(
            f"discovered {len(self.user_node)} users on {len(self.node_users)} nodes, "
            f"{self.n_items} items"
        )

    @property
    def population(self) -> int:
        return len(self.user_node)

    # ------------------------------------------------------------------ setup
    def _start_server(self) -> FederatedMFServer:
        if self.ckpt is not None and self.settings.resume and (self.ckpt / CHECKPOINT).exists():
            srv = FederatedMFServer.load(self.ckpt / CHECKPOINT)
            if srv.n_items != self.n_items:
                raise ConfigError(
                    f"checkpoint has {srv.n_items} items, the federation has {self.n_items}"
                )
            self.say(f"resumed from {self.ckpt / CHECKPOINT} after round {srv.round}")
            return srv
        return FederatedMFServer(self.config, self.n_items, self.population)

    def _save(self) -> None:
        assert self.server is not None
        if self.ckpt is None:
            return
        self.server.save(self.ckpt / CHECKPOINT)
        if self.settings.save_aggregates:
            self.server.save(self.ckpt / f"round-{self.server.round:04d}.npz")

    def _sample(self, q: float, round_: int, attempt: int) -> np.ndarray:
        from privrec.privacy.randomness import secure_generator

        users = np.asarray(sorted(self.user_node), dtype=np.int64)
        seed = self.config.seed
        rng = (
            secure_generator()
            if seed is None
            else np.random.default_rng([seed, 1, round_, attempt])
        )
        return users[rng.random(users.size) < q]

    # ------------------------------------------------------------------ run
    def run(self) -> list[RoundLog]:
        """Discover the nodes, then train until ``config.rounds`` rounds are complete."""
        if not self.user_node:
            self.discover()
        self.server = srv = self._start_server()
        if srv.needs_head:
            self._with_retries(0, "count")
        if srv.round == 0:
            self._save()
        while srv.round < self.config.rounds:
            self._with_retries(srv.round + 1, "train")
        g = srv.guarantee()
        self.say(
            f"done: {srv.round} rounds, ε = {g.epsilon:.4g} at δ = {g.delta:g} "
            f"(user level, {g.accountant.value} accountant)"
        )
        return self.logs

    def _with_retries(self, round_: int, kind: str) -> None:
        srv = self.server
        assert srv is not None
        for attempt in range(self.settings.max_retries + 1):
            t0 = time.perf_counter()
            q = srv.q_head if kind == "count" else srv.q
            pre, self._prefetch = self._prefetch, None
            if pre is not None and (kind != "train" or pre.round != round_ or attempt != 0):
                pre = None  # stale: the nodes have moved on to another round
            ids = pre.ids if pre is not None else self._sample(q, round_, attempt)
            entry = RoundLog(round=round_, attempt=attempt, kind=kind, sampled=int(ids.size))
            try:
                self._attempt(entry, ids, pre)
            except ProtocolAbort as exc:
                srv.record_abort(exc.phase, f"{kind} round: {exc.reason}")
                entry.aborted = f"{exc.phase}: {exc.reason}"
                entry.epsilon = srv.epsilon()
                entry.seconds = time.perf_counter() - t0
                self._log(entry)
                if attempt == self.settings.max_retries:
                    raise
                continue
            entry.seconds = time.perf_counter() - t0
            self._save()
            self._log(entry)
            return

    def _log(self, entry: RoundLog) -> None:
        self.logs.append(entry)
        status = f"ABORTED ({entry.aborted})" if entry.aborted else "ok"
        self.say(
            f"{entry.kind} round {entry.round} attempt {entry.attempt}: {status}; "
            f"sampled {entry.sampled}, survivors {entry.survivors}, dropped {entry.dropped}, "
            f"rejected {entry.rejected}, ε so far {entry.epsilon:.4g}, clip {entry.clip_norm:.4g}, "
            f"unclipped {entry.unclipped_fraction:.3g}, up {entry.bytes_up} B, "
            f"down {entry.bytes_down} B, {entry.seconds:.1f} s"
        )
        if self.ckpt is not None:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            with (self.ckpt / ROUND_LOG).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(asdict(entry)) + "\n")

    # ------------------------------------------------------------------ one attempt
    def _round_config(
        self, enc: DistributedDPEncoder, ids: np.ndarray, kind: str = "train"
    ) -> RoundConfig:
        """A fresh SecAgg+ round for ``ids``, or an abort if the sample cannot carry the noise."""
        cfg = self.config
        assert self.server is not None
        n = int(ids.size)
        m = self.server.round_min_survivors(n, kind)
        if n < max(2, m):
            raise ProtocolAbort(
                "advertise_keys", f"only {n} users sampled, the noise is planned for {m}"
            )
        if n > enc.plan.max_clients:
            raise ProtocolAbort(
                "advertise_keys", f"cohort of {n} exceeds the overflow bound {enc.plan.max_clients}"
            )
        return RoundConfig.create(
            ids.tolist(),
            enc.encoded_dim,
            enc.bits,
            neighbours=cfg.secagg_neighbours,
            threshold=cfg.secagg_threshold,
            min_survivors=m,
            corrupt_fraction=cfg.corrupt_fraction,
            threat_model=cfg.threat_model,
            identity_keys=self._identity_keys(ids),
        )

    def _identity_keys(self, ids: np.ndarray) -> dict[int, bytes]:
        if self.config.threat_model != "malicious":
            return {}
        missing = [int(u) for u in ids.tolist() if int(u) not in self.pki]
        if missing:
            raise ConfigError(f"users {missing[:5]} have no identity key in the PKI")
        return {int(u): self.pki[int(u)] for u in ids.tolist()}

    def _attempt(self, entry: RoundLog, ids: np.ndarray, pre: _Prefetch | None = None) -> None:
        srv = self.server
        assert srv is not None
        cfg = self.config
        if entry.kind == "count":
            enc = srv.count_encoder()
            noise = srv.head_noise_multiplier > 0
            task = task_record(
                mf_config_json=mf_config_json(cfg),
                ddp_json=ddp_to_json(enc.config),
                noise=noise,
                round_=0,
            )
            extra = RecordDict({"task": task})
        else:
            enc = srv.encoder()
            spec = srv.round_spec()
            assert srv.head_items is not None
            task = task_record(
                mf_config_json=mf_config_json(cfg),
                ddp_json=ddp_to_json(enc.config),
                noise=srv.noise_multiplier > 0,
                round_=spec.round,
                clip_norm=spec.clip_norm,
                value_scale=spec.value_scale,
                bit_scale=spec.bit_scale,
                payload_dim=spec.dim,
            )
            extra = RecordDict(
                {"task": task, "model": model_record(srv.item_factors, srv.head_items)}
            )
        if pre is not None and (pre.config.dim, pre.config.bits) != (enc.encoded_dim, enc.bits):
            pre = None  # the encoding changed: advertise again for the same sample
        rc = pre.config if pre is not None else self._round_config(enc, ids, entry.kind)
        nxt = None
        if entry.kind == "train" and self.settings.pipeline and entry.round < cfg.rounds:
            ids_next = self._sample(srv.q, entry.round + 1, 0)
            with contextlib.suppress(ProtocolAbort):  # else the next round aborts as usual
                nxt = (entry.round + 1, ids_next, self._round_config(enc, ids_next))
        clip_before = srv.clip_norm
        result = self._secure_sum(entry, rc, extra, pre, nxt)
        n_surv = len(result.survivors)
        entry.survivors = n_surv
        entry.dropped = {p: len(v) for p, v in result.dropped.items()}
        noisy = enc.decode(result.sum, n_surv)
        if entry.kind == "count":
            srv.select_head(noisy, survivors=n_surv, sampled=int(ids.size))
            entry.epsilon = srv.epsilon()
            return
        update_sum, unclipped = srv.unpack(noisy, srv.expected_clients)
        if self.settings.save_aggregates and self.ckpt is not None:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            np.savez(
                self.ckpt / f"aggregate-{entry.round:04d}.npz",
                payload_sum=noisy,
                update_sum=update_sum,
                unclipped=np.float64(unclipped),
                survivors=np.asarray(result.survivors, dtype=np.int64),
                attempt=np.int64(entry.attempt),
                sum_mod=result.sum,
            )
        srv.apply(
            update_sum, srv.expected_clients, unclipped, survivors=n_surv, sampled=int(ids.size)
        )
        entry.epsilon = srv.epsilon()
        entry.clip_norm = clip_before
        entry.unclipped_fraction = float(srv.history[-1].get("unclipped_fraction", math.nan))

    def _by_node(self, users: Sequence[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for u in users:
            out.setdefault(self.user_node[int(u)], []).append(int(u))
        return out

    def _send(
        self, entry: RoundLog, phase: str, contents: dict[int, RecordDict]
    ) -> dict[int, RecordDict]:
        """Send one phase to the nodes; the replies that arrived before the deadline."""
        entry.bytes_down += sum(_model_bytes(c) for c in contents.values())
        t0 = time.perf_counter()
        replies = self.transport.exchange(
            phase,
            contents,
            timeout=self.settings.round_timeout,
            group=f"{entry.kind}-{entry.round}-{entry.attempt}",
        )
        entry.phase_seconds[phase] = round(time.perf_counter() - t0, 3)
        entry.nodes[phase] = len(replies)
        entry.bytes_up += sum(_model_bytes(c) for c in replies.values())
        return replies

    def _collect(
        self,
        entry: RoundLog,
        replies: dict[int, RecordDict],
        key: str,
        asked: dict[int, list[int]],
        kind: type[M],
    ) -> list[M]:
        """The replies' messages of one type, from users each node was asked for (once each)."""
        out: list[M] = []
        seen: set[int] = set()
        for node, content in replies.items():
            good, bad = decode_messages(content.config_records.get(key), kind)
            entry.rejected += bad
            allowed = set(asked.get(node, ()))
            for msg in good:
                sender = int(getattr(msg, "sender", -1))
                if sender in allowed and sender not in seen:
                    seen.add(sender)
                    out.append(msg)
                else:
                    entry.rejected += 1
                    logger.warning(
                        "node %s sent a message for user %s it was not asked for", node, sender
                    )
        return out

    def _exchange(
        self,
        entry: RoundLog,
        phase: str,
        contents: dict[int, RecordDict],
        asked: dict[int, list[int]],
        kind: type[M],
    ) -> list[M]:
        """Send one phase; keep the replies' messages from users the node was asked for."""
        return self._collect(entry, self._send(entry, phase, contents), "msgs", asked, kind)

    def _run_phase(self, entry: RoundLog, server: SecAggServer, method: str, msgs: list[M]) -> Any:
        """Call one SecAggServer phase, dropping the messages it rejects (and only those).

        The server's state advances only when a phase succeeds, so after a rejection each
        message is probed alone on a copy of the server; the culprits are removed and the
        batch submitted again.
        """
        while True:
            before = copy.deepcopy(server)
            try:
                return getattr(server, method)(msgs)
            except MessageRejected as exc:
                bad = set()
                for i, msg in enumerate(msgs):
                    probe = copy.deepcopy(before)
                    try:
                        getattr(probe, method)([msg])
                    except MessageRejected:
                        bad.add(i)
                    except ProtocolAbort:
                        pass
                if not bad:
                    raise ProtocolAbort(method, f"a batch was rejected: {exc}") from exc
                entry.rejected += len(bad)
                msgs = [m for i, m in enumerate(msgs) if i not in bad]

    def _advertise(
        self, entry: RoundLog, rc: RoundConfig, meta: ConfigRecord, asked: dict[int, list[int]]
    ) -> list[AdvertiseKeys]:
        """Phase 1: the round description out; each node's users' advertisements back."""
        contents = {
            node: RecordDict(
                {
                    "meta": meta,
                    "round": round_record(
                        rc, round_=entry.round, attempt=entry.attempt, kind=entry.kind, users=users
                    ),
                }
            )
            for node, users in asked.items()
        }
        return self._exchange(entry, "advertise_keys", contents, asked, AdvertiseKeys)

    def _secure_sum(
        self,
        entry: RoundLog,
        rc: RoundConfig,
        extra: RecordDict,
        pre: _Prefetch | None = None,
        nxt: tuple[int, np.ndarray, RoundConfig] | None = None,
    ) -> AggregateResult:
        server = SecAggServer(rc)
        meta = ConfigRecord({"round-id": rc.round_id})

        # Phase 1 (already done on the previous round's unmask message when pipelined).
        if pre is not None:
            entry.nodes["advertise_keys"] = pre.nodes
            entry.phase_seconds["advertise_keys"] = 0.0
            adverts = pre.adverts
        else:
            adverts = self._advertise(entry, rc, meta, self._by_node(rc.client_ids))
        directories = self._run_phase(entry, server, "advertise_keys", adverts)

        # Phase 2: key directories out, encrypted shares back.
        asked = self._by_node(sorted(directories))
        contents = {
            node: RecordDict({"meta": meta, "msgs": messages_record(directories[u] for u in users)})
            for node, users in asked.items()
        }
        shares = self._exchange(entry, "share_keys", contents, asked, ShareKeys)
        deliveries = self._run_phase(entry, server, "share_keys", shares)

        # Phase 3: shares, item factors and round settings out; masked encoded payloads back.
        asked = self._by_node(sorted(deliveries))
        contents = {
            node: RecordDict(
                {
                    "meta": meta,
                    "msgs": messages_record(deliveries[u] for u in users),
                    **extra.config_records,
                    **extra.array_records,
                }
            )
            for node, users in asked.items()
        }
        masked = self._exchange(entry, "masked_input", contents, asked, MaskedInput)
        if rc.malicious:
            # Malicious server: every survivor signs the survivor set before anyone unmasks.
            checks = self._run_phase(entry, server, "masked_input_consistency", masked)
            asked = self._by_node(sorted(checks))
            contents = {
                node: RecordDict({"meta": meta, "msgs": messages_record(checks[u] for u in users)})
                for node, users in asked.items()
            }
            signed = self._exchange(
                entry, "consistency_check", contents, asked, ConsistencySignature
            )
            requests = self._run_phase(entry, server, "consistency_check", signed)
        else:
            requests = self._run_phase(entry, server, "masked_input", masked)

        # Phase 4: unmask requests out, shares of seeds / dropped keys back. Pipelined: the
        # next round's description rides along and its advertisements come back with them.
        asked = self._by_node(sorted(requests))
        asked_next = {} if nxt is None else self._by_node(nxt[2].client_ids)
        contents = {}
        for node in sorted(set(asked) | set(asked_next)):
            content = RecordDict(
                {"meta": meta, "msgs": messages_record(requests[u] for u in asked.get(node, []))}
            )
            if nxt is not None and node in asked_next:
                content["next-round"] = round_record(
                    nxt[2], round_=nxt[0], attempt=0, kind="train", users=asked_next[node]
                )
            contents[node] = content
        replies = self._send(entry, "unmask", contents)
        responses = self._collect(entry, replies, "msgs", asked, UnmaskResponse)
        result: AggregateResult = self._run_phase(entry, server, "unmask", responses)
        if nxt is not None:
            answered = sum(1 for n, c in replies.items() if n in asked_next and "next-msgs" in c)
            adverts = self._collect(entry, replies, "next-msgs", asked_next, AdvertiseKeys)
            self._prefetch = _Prefetch(nxt[0], nxt[1], nxt[2], adverts, answered)
        return result
