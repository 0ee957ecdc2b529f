"""Simulated federated training of FederatedMF: thousands of devices on one machine.

Every device's computation is the real one (:func:`~privrec.federated.mf.client_updates`, the
vectorised :func:`~privrec.federated.mf.client_update`), every payload is encoded as a device
would encode it (distributed DP: quantised, noised, wrapped modulo ``2^b``), and the secure sum
is either the full SecAgg+ protocol or its clearly labelled fast path
(:mod:`privrec.federated.secure_round`). Faults are seeded: crashes in any phase, stragglers
past the round timeout, devices sending malformed messages.

A round that aborts (:class:`~privrec.errors.ProtocolAbort`: too few survivors for the noise
the round was planned with, a SecAgg+ abort, a cohort too large for the overflow bound) is
logged with its reason, charged nothing (nothing about the data was released), and retried
with a fresh cohort up to ``max_retries`` times. After every completed round the server state
(item factors, optimiser, clip norm, accountant records) and the simulation state are
checkpointed atomically, so training resumes from the last good round.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from privrec.errors import ConfigError, DataError, InvalidInputError, PrivacyWarning, ProtocolAbort
from privrec.evaluation.metrics import per_user_metrics
from privrec.federated.mf import (
    FederatedMFConfig,
    FederatedMFServer,
    client_count_vectors,
    user_vectors,
)
from privrec.federated.mf import client_updates as _client_updates
from privrec.federated.secure_round import secure_sum
from privrec.federated.sim_reports import checkpoint_round, json_default, public_round
from privrec.models.ranking import mask_seen, top_k
from privrec.privacy.distributed import DistributedDPEncoder
from privrec.privacy.randomness import secure_generator, seeded_generator
from privrec.secure.prg import word_dtype
from privrec.secure.secagg import PHASES

__all__ = [
    "FaultModel",
    "FederatedSimulation",
    "RoundReport",
    "public_round",
    "validation_recall",
]

SecureMode = Literal["full", "fast"]
_BATCH_FLOATS = 1 << 23  # floats per client batch (64 MB of float64)
_CHECKPOINT = "server.npz"
_SIM_STATE = "simulation.json"


@dataclass(frozen=True)
class FaultModel:
    """Seeded fault injection for simulated rounds.

    Attributes
    ----------
    dropout
        Probability that a sampled device crashes; the phase it crashes before is uniform
        over ``dropout_phases``.
    straggler, straggler_delay, round_timeout
        Probability that a device is slow; its delay is exponential with mean
        ``straggler_delay`` seconds; past ``round_timeout`` the server stops waiting for its
        masked input (it counts as dropped in ``masked_input``).
    garbage
        Probability that a device sends a malformed masked input (wrong length), which the
        server rejects.
    seed
        Drives only these simulated faults.
    """

    dropout: float = 0.0
    dropout_phases: tuple[str, ...] = PHASES
    straggler: float = 0.0
    straggler_delay: float = 30.0
    round_timeout: float = 60.0
    garbage: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dropout", "straggler", "garbage"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], found {v}")
        bad = set(self.dropout_phases) - set(PHASES)
        if bad or not self.dropout_phases:
            raise ConfigError(f"dropout_phases must be a non-empty subset of {PHASES}, found {bad}")
        if self.round_timeout <= 0 or self.straggler_delay <= 0:
            raise ConfigError("round_timeout and straggler_delay must be > 0")

    def draw(self, n: int, rng: np.random.Generator) -> tuple[dict[int, str], set[int], int]:
        """``(crash phase per participant, garbage senders, stragglers timed out)``."""
        crash: dict[int, str] = {}
        crashes = np.flatnonzero(rng.random(n) < self.dropout)
        phases = rng.integers(0, len(self.dropout_phases), size=crashes.size)
        for u, p in zip(crashes.tolist(), phases.tolist(), strict=True):
            crash[u] = self.dropout_phases[p]
        slow = rng.random(n) < self.straggler
        delays = rng.exponential(self.straggler_delay, size=n)
        late = np.flatnonzero(slow & (delays > self.round_timeout))
        n_late = 0
        for u in late.tolist():
            if u not in crash:
                crash[u] = "masked_input"
                n_late += 1
        garbage = {int(u) for u in np.flatnonzero(rng.random(n) < self.garbage) if u not in crash}
        return crash, garbage, n_late


@dataclass
class RoundReport:
    """What one round did (JSON-friendly)."""

    round: int
    attempt: int
    sampled: int
    survivors: int
    dropped: dict[str, int]
    stragglers: int
    rejected: int
    clip_norm: float
    unclipped_fraction: float
    epsilon: float
    recall: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    secure: str
    aborted: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def validation_recall(
    item_factors: np.ndarray,
    head_items: np.ndarray,
    history: sp.csr_matrix,
    targets: sp.csr_matrix,
    alpha0: float,
    reg: float,
    k: int = 20,
) -> float:
    """Recall@k of validation users folded in (on their devices) from the item factors.

    Only head items are ranked; items in ``history`` are excluded.
    """
    hist = sp.csr_matrix(history)
    targets = sp.csr_matrix(targets)
    y = np.asarray(item_factors, dtype=np.float64)
    block = max(1, (1 << 22) // max(hist.shape[1], 1))  # bounded memory: 16 MB of scores per block
    tops = np.empty((hist.shape[0], min(k, hist.shape[1])), dtype=np.int64)
    for lo in range(0, hist.shape[0], block):
        hi = min(hist.shape[0], lo + block)
        part = sp.csr_matrix(hist[lo:hi])
        x = user_vectors(y, sp.csr_matrix(part[:, head_items]), alpha0, reg)
        scores = np.full(part.shape, -np.inf, dtype=np.float32)
        scores[:, head_items] = (x @ y.T).astype(np.float32)
        mask_seen(scores, part)
        tops[lo:hi] = top_k(scores, k)[0]
    res = per_user_metrics(tops, targets, k=k, metrics=["recall"])
    vals = res.values["recall"]
    return float(np.mean(vals[:, 0])) if vals.size else float("nan")


class FederatedSimulation:
    """Run FederatedMF training over simulated devices.

    Parameters
    ----------
    config
        Training configuration.
    user_items
        ``(population, n_items)`` histories, one row per device (binary implicit feedback).
    secure
        ``"fast"`` (no cryptography, bit-identical sums — for sweeps) or ``"full"`` SecAgg+;
        ignored for ``aggregation="central"``.
    faults
        Fault model (default: none).
    validation
        ``(history, targets)`` CSR matrices over the same catalogue, for Recall@20 per round.
    eval_every
        Evaluate every this many rounds (and after the last).
    checkpoint_dir
        Write a checkpoint after every completed round (and resume from it with
        :meth:`resume`).
    max_retries
        Aborted attempts tolerated per round before the abort is raised.
    head_items
        Public head items (the counting round still runs for the popularity prior);
        default: chosen from the counting round's noisy counts.
    """

    def __init__(
        self,
        config: FederatedMFConfig,
        user_items: sp.csr_matrix,
        *,
        secure: SecureMode = "fast",
        faults: FaultModel | None = None,
        validation: tuple[sp.csr_matrix, sp.csr_matrix] | None = None,
        eval_every: int = 1,
        checkpoint_dir: str | Path | None = None,
        max_retries: int = 3,
        head_items: np.ndarray | None = None,
        server: FederatedMFServer | None = None,
    ) -> None:
        m = sp.csr_matrix(user_items, dtype=np.float64)
        if m.shape[0] < 2:
            raise DataError("federated training needs at least 2 users", found=m.shape[0])
        m.sum_duplicates()
        m.data[:] = 1.0
        m.sort_indices()
        self.user_items = m
        self.config = config
        if secure not in ("full", "fast"):
            raise ConfigError(f"secure must be 'full' or 'fast', found {secure!r}")
        self.secure: SecureMode = secure
        self.faults = faults or FaultModel()
        self.validation = validation
        self.eval_every = max(1, int(eval_every))
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.max_retries = int(max_retries)
        if server is None:
            server = FederatedMFServer(config, m.shape[1], m.shape[0], head_items=head_items)
        self.server = server
        self.reports: list[dict[str, Any]] = []
        self.aborts = 0
        self._on_round: Callable[[RoundReport], None] | None = None
        if config.seed is not None:
            warnings.warn(
                "seeded simulation: client sampling and noise are reproducible and NOT private",
                PrivacyWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ randomness
    def _rng(self, purpose: int, round_: int, attempt: int) -> np.random.Generator:
        """Per-(round, attempt) generators: a resumed run draws what an uninterrupted one would."""
        seed = self.config.seed
        if seed is None:
            return secure_generator()
        if purpose == 0:  # noise: ChaCha20 keyed from the seed (already warned)
            return seeded_generator(seed * 1_000_003 + round_ * 101 + attempt, warn=False)
        return np.random.default_rng([seed, purpose, round_, attempt])

    def _fault_rng(self, round_: int, attempt: int) -> np.random.Generator:
        return np.random.default_rng([self.faults.seed, 7, round_, attempt])

    # ------------------------------------------------------------------ rounds
    def run(
        self,
        rounds: int | None = None,
        *,
        on_round: Callable[[RoundReport], None] | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Train until ``rounds`` (default ``config.rounds``) rounds are complete in total."""
        target = self.config.rounds if rounds is None else int(rounds)
        self._on_round = on_round
        if self.server.needs_head:
            self._head_round()
        todo = range(self.server.round, target)
        bar = None
        if progress:
            from rich.progress import Progress

            bar = Progress()
            bar.start()
            task = bar.add_task("federated rounds", total=target, completed=self.server.round)
        try:
            for _ in todo:
                report = self._round()
                self.reports.append(asdict(report))
                if self.checkpoint_dir is not None:
                    self.save_checkpoint()
                if on_round is not None:
                    on_round(report)
                if bar is not None:
                    bar.update(
                        task,
                        advance=1,
                        description=(
                            f"round {report.round}: ε={report.epsilon:.3g} C={report.clip_norm:.3g} "
                            f"survivors {public_round(report)['survivors']}"
                            + (f" R@20={report.recall:.4f}" if report.recall is not None else "")
                        ),
                    )
        finally:
            if bar is not None:
                bar.stop()
        return self.reports

    def _participants(self, q: float, rng: np.random.Generator) -> np.ndarray:
        return np.flatnonzero(rng.random(self.user_items.shape[0]) < q)

    def _head_round(self) -> None:
        """The counting round: noisy item counts and history lengths, and the head if it is
        private (see :func:`~privrec.federated.client.client_count_vector`)."""
        srv = self.server
        for attempt in range(self.max_retries + 1):
            rng = self._rng(1, 0, attempt)
            ids = self._participants(srv.q_head, rng)
            rows = self.user_items[ids]
            w = client_count_vectors(
                rows,
                self.config.counted_items,
                self._rng(2, 0, attempt),
                self.config.count_weighting,
            )
            noise_rng = self._rng(0, 0, attempt)
            crash, garbage, _ = self.faults.draw(len(ids), self._fault_rng(0, attempt))
            try:
                if self.config.aggregation == "central":
                    keep = np.asarray(
                        [
                            u
                            for u in range(len(ids))
                            if crash.get(u) not in PHASES[:3] and u not in garbage
                        ],
                        dtype=np.int64,
                    )
                    counts = np.asarray(w[keep].sum(axis=0)).ravel()
                    old = srv.rng
                    srv.rng = noise_rng
                    try:
                        srv.select_head(srv.count_noise(counts))
                    finally:
                        srv.rng = old
                    return
                enc = srv.count_encoder()
                if len(ids) > enc.plan.max_clients:
                    raise ProtocolAbort("advertise_keys", "cohort larger than the overflow bound")
                if self.secure == "fast":  # streamed: encode accepted devices, sum mod 2^b
                    keep_mask = np.asarray(
                        [
                            crash.get(u) not in PHASES[:3] and u not in garbage
                            for u in range(len(ids))
                        ],
                        dtype=bool,
                    )
                    need = srv.round_min_survivors(len(ids), "count")
                    if int(keep_mask.sum()) < need:
                        raise ProtocolAbort(
                            "masked_input",
                            f"only {int(keep_mask.sum())} masked inputs, at least {need} required",
                        )
                    acc = np.zeros(enc.encoded_dim, dtype=np.uint64)
                    self._encode_rows(w[np.flatnonzero(keep_mask)], enc, noise_rng, acc)
                    if enc.bits < 64:
                        acc &= np.uint64((1 << enc.bits) - 1)
                    n_keep = int(keep_mask.sum())
                    srv.select_head(
                        srv.released_sum(enc, acc, n_keep, 0, attempt, "count"),
                        survivors=n_keep,
                        sampled=len(ids),
                    )
                    return
                encoded = self._encode_rows(w, enc, noise_rng)
                res = secure_sum(
                    len(ids),
                    enc.encoded_dim,
                    enc.bits,
                    encoded.__getitem__,
                    crash=crash,
                    garbage=garbage,
                    mode=self.secure,
                    min_survivors=srv.round_min_survivors(len(ids), "count"),
                    corrupt_fraction=self.config.corrupt_fraction,
                    threat_model=self.config.threat_model,
                )
                n_surv = len(res.survivors)
                srv.select_head(
                    srv.released_sum(enc, res.sum, n_surv, 0, attempt, "count"),
                    survivors=n_surv,
                    sampled=len(ids),
                )
                return
            except ProtocolAbort as exc:
                srv.record_abort(exc.phase, f"head counting round: {exc.reason}")
                self.aborts += 1
                if attempt == self.max_retries:
                    raise

    def _encode_rows(
        self,
        rows: np.ndarray | sp.csr_matrix,
        enc: DistributedDPEncoder,
        rng: np.random.Generator,
        accumulate: np.ndarray | None = None,
    ) -> np.ndarray:
        """Each device's distributed-DP encoding of its row, in blocks to bound memory.

        With ``accumulate``, the encodings are added into it (modulo ``2^64``) instead of kept.
        """
        n = rows.shape[0]
        out = np.empty((n if accumulate is None else 0, enc.encoded_dim), dtype=np.uint64)
        block = max(1, _BATCH_FLOATS // max(enc.encoded_dim, 1))
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            part = rows[lo:hi]
            dense = part.toarray() if sp.issparse(part) else np.asarray(part)
            encoded = _device_encoding(
                enc, np.atleast_2d(dense), rng, self.server.head_noise_multiplier > 0
            )
            if accumulate is None:
                out[lo:hi] = encoded
            else:
                accumulate += encoded.sum(axis=0, dtype=np.uint64)
        return out

    def _payloads(
        self,
        ids: np.ndarray,
        send: np.ndarray,
        enc: DistributedDPEncoder | None = None,
        rng: np.random.Generator | None = None,
        accumulate: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Payload rows ``[a·Δ, β(b − ½)]`` of the devices ``ids[send]``, plus bits and norms.

        With ``enc``: the rows are the devices' distributed-DP encodings (``uint64``). With
        ``accumulate``, the rows are added into it block by block (modulo ``2^64`` when encoded)
        and not kept (the returned rows are then empty).
        """
        srv = self.server
        assert srv.head_items is not None
        spec = srv.round_spec()
        hist = sp.csr_matrix(self.user_items[ids[send]][:, srv.head_items])
        dim = spec.dim
        n_rows = hist.shape[0]
        if enc is None:
            out = np.empty((n_rows if accumulate is None else 0, dim))
        elif accumulate is None:
            out = np.empty((n_rows, enc.encoded_dim), dtype=np.uint64)
        else:
            out = np.empty((0, enc.encoded_dim), dtype=np.uint64)
        bits = np.empty(n_rows, dtype=bool)
        norms = np.empty(n_rows)
        block = max(1, _BATCH_FLOATS // (dim if enc is None else enc.encoded_dim))
        for lo in range(0, n_rows, block):
            hi = min(n_rows, lo + block)
            d, b, nrm = _client_updates(srv.item_factors, hist[lo:hi], self.config, spec.clip_norm)
            rows = np.zeros((hi - lo, dim))  # zeros past the learnable head (pack_payload)
            rows[:, : d.shape[1]] = spec.value_scale * d
            rows[:, -1] = spec.bit_scale * (b.astype(np.float64) - 0.5)
            over = np.linalg.norm(rows, axis=1)
            big = over > 1.0
            rows[big] /= over[big, None]  # rounding only; keeps the sensitivity bound exact
            bits[lo:hi], norms[lo:hi] = b, nrm
            if enc is None:
                if accumulate is None:
                    out[lo:hi] = rows
                else:
                    accumulate += rows.sum(axis=0)
                continue
            encoded = _device_encoding(enc, rows, rng, srv.noise_multiplier > 0)
            if accumulate is None:
                out[lo:hi] = encoded
            else:
                accumulate += encoded.sum(axis=0, dtype=np.uint64)  # wraps modulo 2^64
        return out, bits, norms

    def _round(self) -> RoundReport:
        srv = self.server
        r = srv.round + 1
        for attempt in range(self.max_retries + 1):
            t0 = time.perf_counter()
            ids = self._participants(srv.q, self._rng(1, r, attempt))
            crash, garbage, n_late = self.faults.draw(len(ids), self._fault_rng(r, attempt))
            try:
                report = self._attempt(r, attempt, ids, crash, garbage, n_late)
            except ProtocolAbort as exc:
                srv.record_abort(exc.phase, exc.reason)
                self.aborts += 1
                aborted = RoundReport(
                    round=r,
                    attempt=attempt,
                    sampled=len(ids),
                    survivors=0,
                    dropped={},
                    stragglers=n_late,
                    rejected=len(garbage),
                    clip_norm=srv.clip_norm,
                    unclipped_fraction=float("nan"),
                    epsilon=srv.epsilon(),
                    recall=None,
                    bytes_up=0,
                    bytes_down=0,
                    seconds=time.perf_counter() - t0,
                    secure=self._mode_label(),
                    aborted=f"{exc.phase}: {exc.reason}",
                )
                self.reports.append(asdict(aborted))
                if self._on_round is not None:
                    self._on_round(aborted)
                if attempt == self.max_retries:
                    raise
                continue
            report.seconds = time.perf_counter() - t0
            return report
        raise AssertionError("unreachable")

    def _mode_label(self) -> str:
        if self.config.aggregation == "central":
            return "central"
        return "secagg+ (full protocol)" if self.secure == "full" else "fast path (no cryptography)"

    def _attempt(
        self,
        r: int,
        attempt: int,
        ids: np.ndarray,
        crash: dict[int, str],
        garbage: set[int],
        n_late: int,
    ) -> RoundReport:
        srv = self.server
        noise_rng = self._rng(0, r, attempt)
        n = len(ids)
        # Devices that get as far as computing their update (crashes in unmask still send it).
        send = np.asarray([crash.get(u) not in PHASES[:3] for u in range(n)], dtype=bool)
        clip = srv.clip_norm
        up = down = 0
        stats: dict[str, float] = {}
        if self.config.aggregation == "central":
            garbage_rng = np.random.default_rng([self.faults.seed, 11, r, attempt])
            for _ in garbage:  # what a faulty device sends: wrong length or out of range
                bad = garbage_rng.normal(0, 1e6, srv.payload_dim + int(garbage_rng.integers(0, 2)))
                try:
                    srv.validate_payload(bad)
                except InvalidInputError:
                    continue  # rejected: that device is dropped from the round
                raise AssertionError("a garbage payload passed validation")
            ok = send & ~np.isin(np.arange(n), list(garbage))
            if ok.sum() < 1:
                raise ProtocolAbort("masked_input", "no valid update arrived")
            s = np.zeros(srv.payload_dim)
            self._payloads(ids, ok, None, None, s)
            old = srv.rng
            srv.rng = noise_rng
            try:
                noisy = srv.central_noise(s)
            finally:
                srv.rng = old
            n_surv = int(ok.sum())
            dim = srv.payload_dim
            up = n_surv * dim * 8
            down = n * srv.item_factors.size * 8
            dropped = {p: sum(1 for v in crash.values() if v == p) for p in PHASES}
        else:
            enc = srv.encoder()
            if n > enc.plan.max_clients:
                raise ProtocolAbort("advertise_keys", f"cohort of {n} exceeds the overflow bound")
            if n < 2:
                raise ProtocolAbort("advertise_keys", f"only {n} clients sampled")
            if self.secure == "fast":
                # Fast path, streamed: only devices whose masked input the server would accept
                # are encoded, block by block, and summed modulo 2^b (no cryptography; the same
                # sum as SecAgg+, see secure_round; bounded memory).
                ok = send & ~np.isin(np.arange(n), list(garbage))
                need = srv.round_min_survivors(n)
                if int(ok.sum()) < need:
                    raise ProtocolAbort(
                        "masked_input",
                        f"only {int(ok.sum())} masked inputs, at least {need} required",
                    )
                acc = np.zeros(enc.encoded_dim, dtype=np.uint64)
                self._payloads(ids, ok, enc, noise_rng, acc)
                if enc.bits < 64:
                    acc &= np.uint64((1 << enc.bits) - 1)
                n_surv = int(ok.sum())
                noisy = srv.released_sum(enc, acc, n_surv, r, attempt, "train")
                up = n_surv * enc.encoded_dim * word_dtype(enc.bits).itemsize  # payloads only
                down = n * srv.item_factors.size * 8
                dropped = {p: sum(1 for v in crash.values() if v == p) for p in PHASES}
                dropped["rejected"] = len(garbage)
            else:
                encoded, _, _ = self._payloads(ids, send, enc, noise_rng)
                pos = np.cumsum(send) - 1  # participant -> row of encoded
                zero = np.zeros(enc.encoded_dim, dtype=np.uint64)

                def input_of(u: int) -> np.ndarray:
                    return encoded[pos[u]] if send[u] else zero

                res = secure_sum(
                    n,
                    enc.encoded_dim,
                    enc.bits,
                    input_of,
                    crash=crash,
                    garbage=garbage,
                    mode="full",
                    min_survivors=srv.round_min_survivors(n),
                    neighbours=self.config.secagg_neighbours,
                    threshold=self.config.secagg_threshold,
                    dropout_rate=max(self.faults.dropout, 0.05),
                    corrupt_fraction=self.config.corrupt_fraction,
                    threat_model=self.config.threat_model,
                )
                n_surv = len(res.survivors)
                noisy = srv.released_sum(enc, res.sum, n_surv, r, attempt, "train")
                up = int(res.bytes_up.sum())
                # SecAgg+ messages plus the item factors every sampled device downloads
                down = int(res.bytes_down.sum()) + n * srv.item_factors.size * 8
                dropped = {p: len(v) for p, v in res.dropped.items()}
                stats = dict(res.stats)
        update_sum, unclipped = srv.unpack(noisy, srv.expected_clients)
        srv.apply(update_sum, srv.expected_clients, unclipped, survivors=n_surv, sampled=n)
        recall = None
        if self.validation is not None and (r % self.eval_every == 0 or r == self.config.rounds):
            assert srv.head_items is not None
            recall = validation_recall(
                srv.item_factors,
                srv.head_items,
                self.validation[0],
                self.validation[1],
                self.config.alpha0,
                self.config.user_regularization,
            )
        return RoundReport(
            round=r,
            attempt=attempt,
            sampled=n,
            survivors=n_surv,
            dropped=dropped,
            stragglers=n_late,
            rejected=len(garbage),
            clip_norm=clip,
            # the released (noised) fraction the clip norm follows, never the survivors' exact bits
            unclipped_fraction=float(srv.history[-1].get("unclipped_fraction", float("nan"))),
            epsilon=srv.epsilon(),
            recall=recall,
            bytes_up=up,
            bytes_down=down,
            seconds=0.0,
            secure=self._mode_label(),
            extra=stats,
        )

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Server state (npz + JSON) and the round log; written atomically after each round.

        ``simulation.json`` keeps the run's own settings and the public part of the round log
        (:func:`~privrec.federated.sim_reports.checkpoint_round`): no cohort, survivor or
        drop counts, which no guarantee covers and resuming does not need.
        """
        assert self.checkpoint_dir is not None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.server.save(self.checkpoint_dir / _CHECKPOINT)
        state = {
            "reports": [checkpoint_round(r) for r in self.reports],
            "aborts": self.aborts,
            "round": self.server.round,
            # the run's own settings: a resumed run continues with exactly these
            "secure": self.secure,
            "faults": {**asdict(self.faults), "dropout_phases": list(self.faults.dropout_phases)},
            "eval_every": self.eval_every,
        }
        tmp = self.checkpoint_dir / (_SIM_STATE + ".tmp")
        tmp.write_text(json.dumps(state, default=json_default))
        tmp.replace(self.checkpoint_dir / _SIM_STATE)
        return path

    @classmethod
    def resume(
        cls,
        checkpoint_dir: str | Path,
        user_items: sp.csr_matrix,
        *,
        secure: SecureMode | None = None,
        faults: FaultModel | None = None,
        rounds: int | None = None,
        **kwargs: Any,
    ) -> FederatedSimulation:
        """Continue from the last completed round saved in ``checkpoint_dir``.

        The run keeps the settings it was started with: the training configuration, the
        secure-sum mode and the fault model come from the checkpoint. ``secure`` and
        ``faults`` may be passed only if they equal the checkpoint's (else
        :class:`ConfigError` naming both), so a full SecAgg+ run never silently resumes on the
        fast path. ``rounds`` changes the target: fewer than the configured rounds stops
        early; more extends a run with a fixed noise multiplier, and is refused for an
        ε-calibrated run (its noise was sized for the configured rounds). A run started with
        a public head must pass it again as ``head_items``: the checkpoint's head is checked
        against it (or, for a head chosen from the noisy counts, against the head rule;
        :func:`~privrec.federated.server_checkpoint.from_state`).
        """
        d = Path(checkpoint_dir)
        if not (d / _CHECKPOINT).exists():
            raise DataError("no checkpoint to resume from", file=d / _CHECKPOINT)
        server = FederatedMFServer.load(
            d / _CHECKPOINT,
            public_head=kwargs.get("head_items"),
            population=sp.csr_matrix(user_items).shape[0],
        )
        state_path = d / _SIM_STATE
        state: dict[str, Any] = {}
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except ValueError as exc:
                raise DataError(
                    "unreadable simulation state", file=state_path, found=str(exc)
                ) from None
        saved_secure = state.get("secure", "fast")
        if secure is not None and secure != saved_secure:
            raise ConfigError(
                f"the checkpoint's run uses secure={saved_secure!r}; resuming with "
                f"secure={secure!r} would change how the remaining rounds are summed "
                "(leave it out to keep the checkpoint's)"
            )
        saved_faults = FaultModel(
            **{
                **state.get("faults", {}),
                "dropout_phases": tuple(state.get("faults", {}).get("dropout_phases", PHASES)),
            }
        )
        if faults is not None and faults != saved_faults:
            raise ConfigError(
                f"the checkpoint's run uses faults {saved_faults}; resuming with {faults} "
                "would change the simulated faults (leave them out to keep the checkpoint's)"
            )
        if rounds is not None:
            server.config = _retarget(server, int(rounds))
        kwargs.setdefault("eval_every", int(state.get("eval_every", 1)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            sim = cls(
                server.config,
                user_items,
                server=server,
                checkpoint_dir=d,
                secure=saved_secure,
                faults=saved_faults,
                **kwargs,
            )
        if sim.user_items.shape != (server.population, server.n_items):
            raise DataError(
                "the histories do not match the checkpoint",
                field="user_items",
                expected=f"({server.population}, {server.n_items})",
                found=sim.user_items.shape,
            )
        if state:
            sim.reports = list(state["reports"])
            sim.aborts = int(state["aborts"])
        return sim


def _retarget(server: FederatedMFServer, rounds: int) -> FederatedMFConfig:
    """The configuration with ``rounds`` as its target, if the run may go there."""
    c = server.config
    if rounds < max(1, server.round):
        raise ConfigError(
            f"rounds={rounds}: the checkpoint has already completed {server.round} rounds"
        )
    if rounds > c.rounds and c.epsilon is not None:
        raise ConfigError(
            f"rounds={rounds}: this run's noise was calibrated for {c.rounds} rounds at "
            f"epsilon={c.epsilon:g}; more rounds would spend more than that. Start a new run "
            "(or train with a fixed noise multiplier, which can be extended)"
        )
    return c.model_copy(update={"rounds": rounds})


def _device_encoding(
    enc: DistributedDPEncoder, rows: np.ndarray, rng: np.random.Generator | None, noisy: bool
) -> np.ndarray:
    """The devices' SecAgg inputs; noise-free only in a run configured without noise.

    A noise multiplier of 0 (non-private baselines and tests, which warn) still needs an
    encoder, built with multiplier 1 for its grid; its noise must then not be added.
    """
    return enc.encode(rows, rng) if noisy else enc.wrap(enc.quantise(rows, rng))
