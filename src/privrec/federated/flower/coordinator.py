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
   (which charges the accountant the round's planned worst case, the fewest honest survivors
   a completed round may have, whatever the actual survivors), checkpoint, log.

A :class:`~privrec.errors.ProtocolAbort` (too few survivors, a neighbourhood below the
threshold, a bad share) before the unmask request goes out releases nothing: it is recorded with
no privacy spend and the round is retried with a fresh sample, at most ``max-retries`` times;
then the run stops with the abort's phase and reason, and a later run resumes from the last
checkpoint (with a ``checkpoint-dir``; without one nothing is kept and the run warns). An abort
*after* the unmask request (too few valid replies) is not free — the replies the server holds
may decode that attempt — so a training round is charged as complete and its update discarded
(:meth:`~privrec.federated.server.FederatedMFServer.discard_round`), and a counting round stops
the run unretried (a new run's ε composes with it). One server per ``checkpoint-dir``
(:class:`~privrec.federated.flower.run_lock.RunLock`), and durable unmask marks
(:mod:`~privrec.federated.flower.unmask_marks`) carry these charges across crashes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from privrec.errors import ConfigError, ProtocolAbort
from privrec.federated.flower.codec import ddp_to_json, round_context
from privrec.federated.flower.node import mf_config_json, model_record, task_record
from privrec.federated.flower.rounds import (
    ROUND_LOG,
    DeploySettings,
    RoundLog,
    SecureRounds,
    Transport,
    _Prefetch,
    warn_no_checkpoint,
)
from privrec.federated.flower.run_lock import RunLock
from privrec.federated.flower.unmask_marks import UnmaskMarks
from privrec.federated.mf import FederatedMFConfig, FederatedMFServer
from privrec.models.persistence import atomic_output
from privrec.privacy.distributed import DistributedDPEncoder
from privrec.secure.secagg import RoundConfig

__all__ = ["Coordinator", "DeploySettings", "RoundLog", "Transport", "parse_run_config"]

logger = logging.getLogger(__name__)

CHECKPOINT = "server.npz"


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
        if key.startswith(("node.", "dpals.")):
            continue  # the nodes' data settings (privrec.federated.flower.node); DPALS's keys
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


class Coordinator(SecureRounds):
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
        super().__init__(transport, settings, say)
        self.config = config
        self.server: FederatedMFServer | None = None
        self._unmasking = False  # whether the current attempt's unmask request went out
        self.marks = UnmaskMarks(self.ckpt)
        self.lock: RunLock | None = None
        if config.threat_model == "malicious":
            self.load_pki("mf.threat-model")

    # ------------------------------------------------------------------ discovery    # ------------------------------------------------------------------ setup
    def _start_server(self) -> FederatedMFServer:
        if self.ckpt is not None and not self.settings.resume and _holds_a_run(self.ckpt):
            raise ConfigError(
                f"{str(self.ckpt)!r} holds a run (its checkpoint, round log or marks) and resume "
                "is off: resume = true continues it; a new checkpoint-dir starts another run, "
                "whose ε composes with the rounds this one already released"
            )
        if self.ckpt is not None and self.settings.resume and (self.ckpt / CHECKPOINT).exists():
            srv = FederatedMFServer.load(self.ckpt / CHECKPOINT, population=self.population)
            if srv.n_items != self.n_items:
                raise ConfigError(
                    f"checkpoint has {srv.n_items} items, the federation has {self.n_items}"
                )
            stored, asked = srv.config.model_dump(), self.config.model_dump()
            changed = sorted(k for k in asked if stored.get(k) != asked[k])
            if asked.get("epsilon") is None and stored.get("epsilon") is None:
                # a given noise multiplier: more rounds are charged as they run (ε grows and
                # says so); with a target ε the noise was calibrated for the planned rounds
                changed = [k for k in changed if k != "rounds"]
            if changed:  # e.g. more rounds than the noise was calibrated for: ε overrun
                raise ConfigError(
                    f"the checkpoint's run was configured otherwise ({', '.join(changed)}): "
                    "resume it with the same settings, or start a new run in a new "
                    "checkpoint-dir (its ε composes with the rounds this one released)"
                )
            self.say(f"resumed from {self.ckpt / CHECKPOINT} after round {srv.round}")
            return srv
        if self.ckpt is not None and _released_before(self.ckpt):
            raise ConfigError(
                f"{str(self.ckpt)!r} holds rounds of a run but no {CHECKPOINT}: restore it, or "
                "start a new run in a new checkpoint-dir (its ε composes with the rounds that "
                "run released)"
            )
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
        self.lock = None if self.ckpt is None else RunLock(self.ckpt)
        if self.ckpt is None:
            warn_no_checkpoint()
        try:
            self.server = srv = self._start_server()
            self._settle_marks(srv)
            if srv.needs_head:
                self._with_retries(0, "count")
            if srv.round == 0:
                self._save()
            while srv.round < self.config.rounds:
                self._with_retries(srv.round + 1, "train")
        finally:
            if self.lock is not None:
                self.lock.close()
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
            self._unmasking = False
            try:
                self._attempt(entry, ids, pre)
            except ProtocolAbort as exc:
                entry.aborted = f"{exc.phase}: {exc.reason}"
                if self._unmasking:  # the replies the server holds may decode it: not free
                    self._abort_after_unmask(entry, exc, t0)
                    return
                srv.record_abort(exc.phase, f"{kind} round: {exc.reason}")
                entry.epsilon = srv.epsilon()
                entry.seconds = time.perf_counter() - t0
                self._log(entry)
                if attempt == self.settings.max_retries:
                    raise
                continue
            entry.seconds = time.perf_counter() - t0
            self._save()
            self.marks.clear(round_)  # its charge (or the counts) is saved
            self._log(entry)
            return

    def _settle_marks(self, srv: FederatedMFServer) -> None:
        """Charge what an earlier run sent an unmask request for and never saved (see
        :mod:`~privrec.federated.flower.unmask_marks`), before anything else is asked."""
        for round_ in self.marks.pending():
            if srv.needs_head:  # no counts saved: nothing this run could settle the mark on
                raise ConfigError(
                    "an earlier run's counting round went past its unmask request and never "
                    "completed: its replies may have been decoded, and counting again would be "
                    "a second release no guarantee counts — start a new run in a new "
                    "checkpoint-dir (its ε composes with that attempt)"
                    if round_ == 0
                    else f"{str(self.ckpt)!r} holds an unsettled unmask mark of round {round_} "
                    "and no checkpoint this run resumes: it belongs to another run — use a new "
                    "checkpoint-dir (a new run's ε composes with that run's)"
                )
            if round_ > 0 and round_ == srv.round + 1:
                srv.discard_round(
                    f"train round: an earlier run went past round {round_}'s unmask request "
                    "and stopped before saving it; charged, update discarded"
                )
                self._save()
                self.say(f"round {round_}: charged from an earlier run's unmask mark, discarded")
            elif round_ > srv.round:
                raise ConfigError(
                    f"round {round_} is marked as unmasked but the checkpoint is at round "
                    f"{srv.round}: the checkpoint is older than the marks — restore it, or start "
                    "a new run (its ε composes)"
                )
            self.marks.clear(round_)

    def _abort_after_unmask(self, entry: RoundLog, exc: ProtocolAbort, t0: float) -> None:
        """An attempt aborted after its unmask request: charge it, never retry it for free."""
        srv = self.server
        assert srv is not None
        entry.seconds = time.perf_counter() - t0
        note = (
            f"{exc.reason} — after the unmask request went out, so the server may hold enough "
            "shares to decode this attempt"
        )
        if entry.kind != "train":  # the counts are needed to go on: stop, unretried
            entry.epsilon = srv.epsilon()
            self._log(entry)
            raise ProtocolAbort(
                exc.phase,
                f"{note}: the counting round is not retried (a retry would be a second release "
                "no guarantee counts); a new run's ε composes with this attempt",
            ) from exc
        srv.discard_round(f"{entry.kind} round: {note}; charged, update discarded")
        entry.epsilon = srv.epsilon()
        self._save()
        self.marks.clear(entry.round)
        self._log(entry)

    def _mark_unmasking(self, round_: int) -> None:
        if self.lock is not None:
            self.lock.check()  # still the only server on this folder
        self.marks.mark(round_)  # durable before the request goes out
        self._unmasking = True

    def _noise(self, kind: str) -> bool:
        """Whether a round of ``kind`` adds noise (a zero multiplier: noise-free test runs)."""
        srv = self.server
        assert srv is not None
        z = srv.head_noise_multiplier if kind == "count" else srv.noise_multiplier
        return z > 0

    def _round_config(
        self, enc: DistributedDPEncoder, ids: np.ndarray, kind: str = "train"
    ) -> RoundConfig:
        """A fresh SecAgg+ round for ``ids``, or an abort if the sample cannot carry the noise."""
        cfg = self.config
        assert self.server is not None
        noise = self._noise(kind)
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
            neighbours=self.neighbours(n, cfg.secagg_neighbours),
            threshold=cfg.secagg_threshold,
            min_survivors=m,
            corrupt_fraction=cfg.corrupt_fraction,
            threat_model=cfg.threat_model,
            identity_keys=self.identity_keys(ids),
            # the noise every node is told, bound into the round: nodes shown different
            # settings cannot complete a round together
            context=round_context(enc.config, noise),
        )

    def _attempt(self, entry: RoundLog, ids: np.ndarray, pre: _Prefetch | None = None) -> None:
        srv = self.server
        assert srv is not None
        cfg = self.config
        noise = self._noise(entry.kind)  # what the task says and the round binds
        if entry.kind == "count":
            enc = srv.count_encoder()
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
                noise=noise,
                round_=spec.round,
                clip_norm=spec.clip_norm,
                value_scale=spec.value_scale,
                bit_scale=spec.bit_scale,
                payload_dim=spec.dim,
            )
            extra = RecordDict(
                {"task": task, "model": model_record(srv.item_factors, srv.head_items)}
            )
        if pre is not None and pre.config.context != round_context(enc.config, noise):
            pre = None  # the encoding changed: advertise again for the same sample
        rc = pre.config if pre is not None else self._round_config(enc, ids, entry.kind)
        nxt = None
        if entry.kind == "train" and self.settings.pipeline and entry.round < cfg.rounds:
            ids_next = self._sample(srv.q, entry.round + 1, 0)
            with contextlib.suppress(ProtocolAbort):  # else the next round aborts as usual
                nxt = (entry.round + 1, ids_next, self._round_config(enc, ids_next))
        clip_before = srv.clip_norm
        result = self._secure_sum(
            entry, rc, extra, pre, nxt, before_unmask=partial(self._mark_unmasking, entry.round)
        )
        n_surv = len(result.survivors)
        entry.survivors = n_surv
        entry.dropped = {p: len(v) for p, v in result.dropped.items()}
        noisy = srv.released_sum(enc, result.sum, n_surv, entry.round, entry.attempt, entry.kind)
        if entry.kind == "count":
            srv.select_head(noisy, survivors=n_surv, sampled=int(ids.size))
            entry.epsilon = srv.epsilon()
            return
        update_sum, unclipped = srv.unpack(noisy, srv.expected_clients)
        if self.settings.save_aggregates and self.ckpt is not None:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            path = self.ckpt / f"aggregate-{entry.round:04d}.npz"
            with atomic_output(path) as tmp, tmp.open("wb") as fh:  # never through a link
                np.savez(
                    fh,
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


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier run's checkpoint, round log, aggregates or marks."""
    if not folder.is_dir():
        return False
    return any(
        n in (CHECKPOINT, ROUND_LOG) or n.startswith("aggregate-") or n.endswith(".unmasking")
        for n in os.listdir(folder)
    )


def _released_before(folder: Path) -> bool:
    """Whether ``folder`` shows a completed round: one in the log, or a server snapshot or
    aggregate (an attempt aborted before its unmask request released nothing; unmask marks are
    settled by :meth:`Coordinator._settle_marks`, which says more)."""
    if not folder.is_dir():
        return False
    names = os.listdir(folder)
    if any(n.startswith(("aggregate-", "round-")) and n.endswith(".npz") for n in names):
        return True
    log = folder / ROUND_LOG
    if not log.is_file():
        return False
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{str(log)!r} cannot be read: {exc}") from None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if isinstance(row, dict) and "aborted" in row and row["aborted"] is None:
            return True  # a completed round
    return False
