"""One worker's share of a distributed private training: whole users, and their partial sums.

A :class:`Partition` holds the users of some shards of a :class:`~privrec.engine.parquet.ParquetSource`
and computes, for its users only, exactly what the single-machine model computes for all of them:
the same policy filtering (:func:`privrec.governance.policy.apply_policy`), the same keyed per-user
sampling (:func:`privrec.privacy.contribution.sample_per_user`, keyed by each user's row in the
whole data set, so a user's sample does not depend on the worker that holds them), the same user
solves, clipping and weights, and its share of the counts, Gramian, per-item statistics or item
Gram matrix. Those shares are summed across workers by a tree reduce
(:mod:`privrec.engine.ray_engine`); only the driver adds noise, once, to the total.

Nothing here imports Ray: the engine wraps this class as a Ray actor, and the tests can drive it
in-process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import scipy.sparse as sp

from privrec.data.interactions import Interactions
from privrec.engine.parquet import ParquetSource, UserTypes
from privrec.errors import EngineError
from privrec.models.base import _empty_csr
from privrec.privacy.units import PrivacyUnit

__all__ = ["Partition", "PolicyFilter", "merge_policy_reports"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class PolicyFilter:
    """What :func:`~privrec.governance.policy.apply_policy` needs besides the data.

    The ledger's keyed user hash (``user_key``) travels to the workers so that each can hash its
    own users; the workers are inside the training's trust boundary (central DP), like the
    single-machine training process.
    """

    policy: Any  # privrec.governance.policy.Policy
    user_key: bytes
    deleted: np.ndarray
    consented: np.ndarray | None
    now: float
    #: the dataset's epoch read *before* the inputs: the version the workers' result is
    #: registered as (``Ledger.register_version``) is refused if anything changed since
    epoch: int | None = None
    #: SHA-256 of the consent file, read before its records (a policy whose consents live in a
    #: file), recorded with the version as ``Ledger.load`` does
    consent_file_sha256: str | None = None

    @classmethod
    def from_ledger(cls, ledger: Any, dataset: str) -> PolicyFilter:
        """The dataset's policy, deletions and consents as the ledger's ``load`` reads them."""
        import json

        from privrec.governance.policy import Policy, consent_file_digest

        # first the epoch and the consent file's digest, then the inputs (as Ledger.load): a
        # deletion, policy change or withdrawal written in between makes the version stale —
        # never a version holding the withdrawal that the ledger takes for current
        info = ledger.dataset(dataset)
        declared = Policy.from_json(json.dumps(info.policy))
        digest = None
        if declared.consent.required and declared.consent.source != "ledger":
            digest = consent_file_digest(declared.consent.source)
        policy, key, deleted, consented = ledger.policy_inputs(dataset)
        return cls(policy, key, deleted, consented, ledger.clock(), int(info.epoch), digest)


def merge_policy_reports(reports: list[Any]) -> Any:
    """One :class:`~privrec.governance.policy.PolicyReport` from the workers' (counts added up)."""
    from privrec.governance.policy import PolicyReport, PolicyStep

    first = reports[0]
    steps = tuple(
        PolicyStep(
            step=s.step,
            reason=s.reason,
            users_dropped=sum(r.steps[i].users_dropped for r in reports),
            interactions_dropped=sum(r.steps[i].interactions_dropped for r in reports),
        )
        for i, s in enumerate(first.steps)
    )
    oldest = [r.oldest_kept_timestamp for r in reports if r.oldest_kept_timestamp is not None]
    return PolicyReport(
        policy_hash=first.policy_hash,
        users_in=sum(r.users_in for r in reports),
        interactions_in=sum(r.interactions_in for r in reports),
        users_out=sum(r.users_out for r in reports),
        interactions_out=sum(r.interactions_out for r in reports),
        steps=steps,
        columns_dropped=first.columns_dropped,
        consent_file_sha256=first.consent_file_sha256,
        oldest_kept_timestamp=min(oldest) if oldest else None,
    )


def _stack(parts: list[Interactions], item_ids: np.ndarray) -> Interactions:
    """Interactions of disjoint user sets, one after the other (rows keep each part's order)."""
    if len(parts) == 1:
        return parts[0]
    m = sp.csr_matrix(sp.vstack([p.matrix for p in parts], format="csr"), dtype=np.float32)
    ts = [p.timestamps for p in parts if p.timestamps is not None]
    timestamps = np.concatenate(ts) if len(ts) == len(parts) else None
    return Interactions(m, np.concatenate([p.user_ids for p in parts]), item_ids, timestamps)


def _fingerprint(data: Interactions) -> str:
    from privrec.governance.policy import content_hash

    return content_hash(data)


def _relayed(
    method: Callable[Concatenate[Partition, _P], _R],
) -> Callable[Concatenate[Partition, _P], _R]:
    """Run a worker call recording its warnings (:meth:`Partition.take_warnings`)."""

    @functools.wraps(method)
    def call(self: Partition, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._recording():
            return method(self, *args, **kwargs)

    return call


class Partition:
    """The users of some shards and everything the training computes per user (one worker)."""

    def __init__(self, source: ParquetSource, shards: list[tuple[int, Path]], threads: int) -> None:
        self.source = source
        self.shards = shards
        self.threads = threads
        self.data: Interactions | None = None
        self.row_keys = np.zeros(0, dtype=np.uint64)
        self._partial: tuple[np.ndarray, ...] = ()
        self._n_items = 0
        #: warnings raised here since the driver last asked (:meth:`take_warnings`)
        self._warnings: list[tuple[type[Warning], str]] = []
        #: what the last ``dpals_prepare`` was computed from (its retry is then a no-op)
        self._prepared: str | None = None

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """Keep the warnings raised inside (they would die with this process): the driver
        re-emits them in the calling process, as a single-machine fit would have shown them."""
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                self._warnings.extend((w.category, str(w.message)) for w in seen)

    def take_warnings(self) -> list[tuple[type[Warning], str]]:
        """The warnings recorded since the last call (and forget them)."""
        out, self._warnings = self._warnings, []
        return out

    # ------------------------------------------------------------- loading
    @_relayed
    def load(self, item_ids: np.ndarray, policy: PolicyFilter | None) -> dict[str, Any]:
        """Read the shards (one at a time), apply the policy; returns sizes and the policy report.

        Also returns the user id column type of the files (``user_type``, and ``user_type_file``
        the first file that had it): the driver compares the workers' types before any user id
        is compared or counted, as the single-machine reader compares its files'.
        """
        self.data = None  # a new fit: nothing of an earlier one is kept
        self._prepared = None
        types = UserTypes()
        parts = []
        for shard in self.shards:
            part = self.source.read_shards([shard], item_ids, user_types=types)
            if part is not None:
                parts.append(part)
        data = (
            _stack(parts, np.asarray(item_ids))
            if parts
            else Interactions(
                _empty_csr((0, len(item_ids))),
                np.zeros(0, dtype=np.asarray(item_ids).dtype),
                np.asarray(item_ids),
            )
        )
        del parts
        report = digest = members = None
        if policy is not None:
            from privrec.governance.db import deletions_in, user_digests
            from privrec.governance.policy import apply_policy, content_hash

            digests = user_digests(policy.user_key, data.user_ids)
            kept, report = apply_policy(
                data,
                policy.policy,
                user_digests=digests,
                deleted=deletions_in(policy.user_key, data.user_ids, digests, policy.deleted),
                consented=policy.consented,
                now=policy.now,
            )
            # the keyed hashes of the users kept (as Ledger.load records a version's members)
            members = np.sort(digests[np.isin(data.user_ids, kept.user_ids)])
            data = kept
            digest = content_hash(data)
        self.data = data
        self._n_items = len(item_ids)
        # what this worker trains on: a replacement worker must read exactly the same
        fingerprint = digest if digest is not None else _fingerprint(data)
        return {
            "n_users": data.n_users,
            "nnz": data.nnz,
            "report": report,
            "hash": digest,
            "members": members,
            "fingerprint": fingerprint,
            "user_type": types.type,
            "user_type_file": None if types.file is None else str(types.file),
        }

    def sorted_user_ids(self) -> np.ndarray:
        assert self.data is not None
        return np.sort(np.asarray(self.data.user_ids))

    @_relayed
    def set_row_keys(self, *all_sorted_ids: np.ndarray) -> None:
        """Each user's row in the whole (policy-filtered) data set: the sampling key.

        The single-machine model's rows are the users in sorted id order; a user's row there is
        the number of users, on all workers, whose id sorts before theirs.
        """
        assert self.data is not None
        ids = np.asarray(self.data.user_ids)
        rank = np.zeros(len(ids), dtype=np.int64)
        for other in all_sorted_ids:
            rank += np.searchsorted(np.asarray(other), ids, side="left")
        self.row_keys = rank.astype(np.uint64)

    def binary(self) -> sp.csr_matrix:
        """The user × item matrix with every stored value set to 1 (the private models' view)."""
        assert self.data is not None
        x = sp.csr_matrix(self.data.matrix, copy=True)
        x.data[:] = 1.0
        return x

    # ------------------------------------------------------- reduce protocol
    def partial(self) -> tuple[np.ndarray, ...]:
        """This worker's current partial sums (after absorbing its children in the tree)."""
        return self._partial

    def absorb(self, other: tuple[np.ndarray, ...]) -> None:
        """Add another worker's partial sums into this one's (one edge of the tree reduce)."""
        self._partial = tuple(
            np.add(a, b, out=a) if a.flags.writeable else a + b
            for a, b in zip(self._partial, other, strict=True)
        )

    def ping(self) -> int:
        return os.getpid()

    def peak_rss(self) -> int:
        """Peak resident memory of this worker process, in bytes (benchmarks)."""
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def cpu_seconds(self) -> float:
        """CPU time of this worker process (user + system), in seconds (benchmarks)."""
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return float(r.ru_utime + r.ru_stime)

    # ---------------------------------------------------------- statistics
    @_relayed
    def length_histogram(self, n_items: int) -> None:
        """Partial history-length histogram (:func:`~privrec.privacy.bounds.length_histogram`).

        Bins run up to the catalogue size (public), as on one machine; counts of disjoint user
        sets add up to the whole histogram.
        """
        from privrec.privacy.bounds import length_histogram

        x = self.binary()
        self._partial = (length_histogram(np.diff(x.indptr), max_length=n_items),)

    @_relayed
    def bounded_counts(self, unit: PrivacyUnit, max_per_user: int, salt: int | None) -> None:
        """Partial item counts, bounded per unit as :func:`~privrec.models.dp_popularity.bounded_counts`."""
        from privrec.models.dp_popularity import bounded_counts

        x = self.binary()
        if x.shape[0] == 0:
            self._partial = (np.zeros(x.shape[1], dtype=np.float64),)
            return
        counts, _ = bounded_counts(x, unit, max_per_user, None, salt=salt, row_keys=self.row_keys)
        self._partial = (counts,)

    @_relayed
    def ease_gram(
        self,
        head: np.ndarray,
        unit: PrivacyUnit,
        max_contribution: float,
        max_per_user: int,
        salt: int | None,
    ) -> None:
        """Partial bounded item Gram matrix on the head items (:func:`~privrec.models.dp_ease.bounded_gram`)."""
        from privrec.models.dp_ease import bounded_gram

        x = sp.csr_matrix(self.binary()[:, head])
        if x.shape[0] == 0:
            self._partial = (np.zeros((len(head), len(head)), dtype=np.float64),)
            return
        gram, _ = bounded_gram(
            x, unit, max_contribution, max_per_user, None, salt=salt, row_keys=self.row_keys
        )
        self._partial = (gram,)

    # ---------------------------------------------------------------- DPALS
    @_relayed
    def dpals_prepare(
        self,
        head: np.ndarray,
        counts_head: np.ndarray,
        method: str,
        max_per_user: int,
        adaptive_exponent: float,
        salt: int | None,
    ) -> None:
        """Head columns and the per-user weights ``c_uj`` (Σ_j c_uj² ≤ B), as ``DPALS.fit`` builds them.

        The full matrix is dropped afterwards (the steps need only the head columns and the
        weights), so this call cannot simply run twice. When a worker is lost during it, the
        driver retries it on every worker: a survivor that already prepared from the same
        arguments has nothing to do (the weights are a deterministic function of them and of its
        data), while the replacement, which re-read its shards, computes them.
        """
        key = hashlib.sha256(
            repr((method, max_per_user, adaptive_exponent, salt)).encode()
            + np.ascontiguousarray(head, dtype=np.int64).tobytes()
            + np.ascontiguousarray(counts_head, dtype=np.float64).tobytes()
        ).hexdigest()
        if self.data is None:
            if self._prepared == key:
                return  # a retry after another worker was lost: this one is done
            raise EngineError(
                "dpals_prepare on a worker that holds no data (not loaded, or already prepared "
                "with other arguments)"
            )
        from privrec.privacy.contribution import adaptive_weights, sample_per_user

        xh = sp.csr_matrix(self.binary()[:, head])
        xh.sort_indices()
        if method == "adaptive":
            w = adaptive_weights(
                xh, np.maximum(counts_head, 1.0), adaptive_exponent, float(max_per_user)
            )
        else:
            w = sample_per_user(
                xh,
                max_per_user,
                None,
                "uniform" if method == "uniform" else "least_popular",
                None if method == "uniform" else counts_head,
                salt=salt,
                row_keys=self.row_keys,
            )
        self.xh, self.weights = xh, w
        self.data = None  # the head matrix and the weights are all the steps need
        self._prepared = key
        self._xs: dict[int, np.ndarray] = {-1: np.zeros((xh.shape[0], 0), np.float32)}

    @_relayed
    def dpals_step(
        self,
        step: int,
        alpha0: float,
        user_regularization: float,
        clip_norm: float,
        lhs: str,
        *item_history: np.ndarray,
    ) -> None:
        """User solves, clipping and this worker's Gramian / right-hand sides (/ left-hand sides).

        The partial sums are ``(Gramian, Σ c_uj x_u)`` with ``lhs="none"``, plus ``Σ c_uj x_u∘x_u``
        with ``"diagonal"`` or the per-item k×k ``Σ c_uj x_u x_uᵀ`` with ``"full"`` — the
        statistics :class:`~privrec.models.DPALS` releases for that variant.

        ``item_history[s]`` are the item factors broadcast before step ``s`` (``s ≤ step``). The
        user solves are warm-started from the previous step's, as on one machine; a worker that
        lost them (a restarted one) replays them from the broadcast factors, so a retried step
        computes exactly what the first attempt would have.
        """
        from privrec.models.als_kernels import gramian, item_statistics
        from privrec.models.dp_als import _user_cg
        from privrec.models.item_sums import item_sums
        from privrec.privacy.contribution import clip_rows

        y = item_history[step]
        k = y.shape[1]
        start = max(s for s in self._xs if s < step)
        xs = self._xs[start]
        if xs.shape[1] != k:
            xs = np.zeros((self.xh.shape[0], k), dtype=np.float32)
        for s in range(start + 1, step + 1):
            xs = _user_cg(
                self.xh, item_history[s], alpha0, user_regularization, xs, 8 if s == 0 else 4
            )
        self._xs = {s: v for s, v in self._xs.items() if s == step - 1} | {step: xs}
        n_head = y.shape[0]
        if self.xh.shape[0] == 0:
            zeros: tuple[np.ndarray, ...] = (
                np.zeros((k, k), np.float64),
                np.zeros((n_head, k), np.float32),
            )
            if lhs == "full":
                zeros += (np.zeros((n_head, k, k), np.float32),)
            elif lhs == "diagonal":
                zeros += (np.zeros((n_head, k), np.float32),)
            self._partial = zeros
            return
        u = clip_rows(xs / np.float32(1.0 + alpha0), clip_norm)
        g = np.asarray(gramian(u.astype(np.float64)), dtype=np.float64)
        if lhs == "full":
            full, rhs = item_statistics(
                self.weights, u, self.weights.data, alpha0=0.0, num_threads=self.threads
            )
            self._partial = (g, rhs, full)
            return
        rhs, diag = item_sums(self.weights, u, square=lhs == "diagonal")
        self._partial = (g, rhs) if diag is None else (g, rhs, diag)
