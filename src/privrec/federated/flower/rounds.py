"""SecAgg+ rounds carried as Flower messages: the part of the Flower server common to every model.

:class:`SecureRounds` discovers the SuperNodes' users and runs one SecAgg+ secure sum
(``advertise_keys`` → ``share_keys`` → ``masked_input`` → ``unmask``, plus
``consistency_check`` against a malicious server) as one Flower message per node and phase,
through a :class:`Transport` (the ServerApp's Grid in deployment, direct handler calls in the
in-process tests). What the sum carries — FederatedMF's updates
(:class:`~privrec.federated.flower.coordinator.Coordinator`) or federated DPALS's statistics
(:class:`~privrec.federated.flower.dpals.DPALSCoordinator`) — is the subclass's business: it
puts the round's public task in the masked-input message and decodes the sum.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from privrec.errors import ConfigError, MessageRejected, PrivacyWarning, ProtocolAbort
from privrec.federated.flower.codec import (
    PROTOCOL,
    decode_messages,
    get_int,
    messages_record,
    round_record,
)
from privrec.secure.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    Message,
    ShareKeys,
    UnmaskResponse,
)
from privrec.secure.secagg import AggregateResult, RoundConfig, SecAggServer

__all__ = ["DeploySettings", "RoundLog", "SecureRounds", "Transport"]

M = TypeVar("M", bound=Message)
logger = logging.getLogger(__name__)

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


def warn_no_checkpoint() -> None:
    """A run without ``checkpoint-dir`` keeps nothing: a crashed run cannot resume, and running
    it again asks the devices for every round again — its ε composes with the first run's."""
    warnings.warn(
        "no checkpoint-dir: nothing of this run is kept, so after a crash it cannot resume — "
        "running it again releases every round again, and the two runs' ε compose",
        PrivacyWarning,
        stacklevel=3,
    )


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
        what the server saw, for audits and tests. These files are the server's own view: they
        name who took part and hold the sum *before* the server's padding, so only the
        guarantee against the server covers them (``epsilon_against_server``, no
        amplification); keep them with the server's secrets, never publish them.
    max_retries
        Aborted attempts tolerated per round.
    resume
        Continue from ``checkpoint_dir/server.npz`` when it exists.
    pipeline
        Send the next round's phase 1 (its sample and round description) with this round's
        unmask requests, so a round costs three Flower round trips instead of four.
    algorithm
        ``"mf"`` (FederatedMF, ``mf.*`` keys) or ``"dpals"`` (federated DPALS, ``dpals.*``
        keys; :mod:`privrec.federated.flower.dpals`).
    pki
        Path of the users' public identity keys (``pki.json``,
        :mod:`privrec.federated.flower.identity`); required with
        ``mf.threat-model = "malicious"``.
    complete_graph
        Run classic SecAgg — every invited client neighbours every other — instead of a sparse
        SecAgg+ graph. What devices with a budget require (:mod:`privrec.federated.flower.budget`):
        only on the complete graph does the consistency check force one survivor set on all.
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
    algorithm: str = "mf"
    complete_graph: bool = False

    def __post_init__(self) -> None:
        # a run config's 'false' (a string) would read as true: switches must be booleans
        for name in ("save_aggregates", "resume", "pipeline", "complete_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{name.replace('_', '-')} must be true or false, found {getattr(self, name)!r}"
                )
        for name in ("min_nodes", "max_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name.replace('_', '-')} must be an integer, found {value!r}")
        for name in ("round_timeout", "node_wait"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name.replace('_', '-')} must be a number, found {value!r}")
        if self.algorithm not in ("mf", "dpals"):
            raise ConfigError(f"algorithm must be 'mf' or 'dpals', found {self.algorithm!r}")
        if not (self.round_timeout > 0 and math.isfinite(self.round_timeout)):
            raise ConfigError(f"round-timeout must be > 0 seconds, found {self.round_timeout}")
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes must be >= 1, found {self.min_nodes}")
        if self.max_retries < 0:
            raise ConfigError(f"max-retries must be >= 0, found {self.max_retries}")


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


class SecureRounds:
    """Discovery and SecAgg+ secure sums over SuperNodes (see the module docstring).

    Parameters
    ----------
    transport
        How to reach the nodes.
    settings
        Timeouts, checkpointing and retries.
    say
        Where progress lines go (the ServerApp passes Flower's logger).
    """

    def __init__(
        self,
        transport: Transport,
        settings: DeploySettings,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.say = say or logger.info
        self.node_users: dict[int, np.ndarray] = {}
        self.user_node: dict[int, int] = {}
        self.n_items = 0
        self.logs: list[RoundLog] = []
        self.ckpt = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
        self._prefetch: _Prefetch | None = None
        self.pki: dict[int, bytes] | None = None  # malicious-server rounds: the users' keys

    def load_pki(self, key: str) -> None:
        """Malicious-server rounds need the users' identity keys (``pki`` in the run config);
        ``key`` names the threat-model setting in the error."""
        if not self.settings.pki:
            raise ConfigError(
                f"{key} = malicious needs the users' identity keys: set pki = <pki.json> "
                "(privrec.federated.flower.identity.create_identities)"
            )
        from privrec.federated.flower.identity import load_pki

        self.pki = load_pki(self.settings.pki)

    def neighbours(self, n: int, configured: int | None = None) -> int | None:
        """The neighbour count of a round of ``n`` clients: ``n − 1`` (classic SecAgg) with
        ``complete-graph``, else ``configured`` (``None``: chosen by ``choose_parameters``)."""
        return n - 1 if self.settings.complete_graph else configured

    def identity_keys(self, ids: np.ndarray) -> dict[int, bytes]:
        """The invited users' public identity keys (empty for honest-but-curious rounds)."""
        if self.pki is None:
            return {}
        missing = [int(u) for u in ids.tolist() if int(u) not in self.pki]
        if missing:
            raise ConfigError(f"users {missing[:5]} have no identity key in the PKI")
        return {int(u): self.pki[int(u)] for u in ids.tolist()}

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
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(
                os.open(self.ckpt / ROUND_LOG, flags, 0o600), "a", encoding="utf-8"
            ) as fh:
                # standard JSON: a value not measured in this round (NaN) is written as null
                row = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                       for k, v in asdict(entry).items()}  # fmt: skip
                fh.write(json.dumps(row, allow_nan=False) + "\n")

    # ------------------------------------------------------------------ one attempt
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
        before_unmask: Callable[[], None] | None = None,
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
        if before_unmask is not None:  # from here on the server could decode the sum
            before_unmask()
        replies = self._send(entry, "unmask", contents)
        responses = self._collect(entry, replies, "msgs", asked, UnmaskResponse)
        result: AggregateResult = self._run_phase(entry, server, "unmask", responses)
        if nxt is not None:
            answered = sum(1 for n, c in replies.items() if n in asked_next and "next-msgs" in c)
            adverts = self._collect(entry, replies, "next-msgs", asked_next, AdvertiseKeys)
            self._prefetch = _Prefetch(nxt[0], nxt[1], nxt[2], adverts, answered)
        return result
