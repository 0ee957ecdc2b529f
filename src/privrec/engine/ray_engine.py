"""Private training on a Ray cluster: user partitions on workers, a tree reduce, noise once.

:class:`RayEngine` trains the same model classes as one machine does
(:class:`~privrec.models.DPALS`, :class:`~privrec.models.DPPopularity`,
:class:`~privrec.models.DPEASE`) over a user-sharded Parquet directory
(:mod:`privrec.engine.parquet`) that need not fit one machine::

    engine = RayEngine(address="auto", num_workers=8)   # or RayEngine() for a local cluster
    model = engine.fit(DPALS(epsilon=1.0, delta=1e-7, unit="user"), "s3-mount/interactions/")
    model.save("dpals.npz")

Who does what
-------------
* **Workers** (one Ray actor per user partition, :class:`~privrec.engine.partition.Partition`)
  read their shards, apply the dataset policy, and compute for their users whatever is computed
  per user: keyed samples, weights, user solves, clipping, and their share of every statistic.
* **The tree reduce** sums those shares pairwise between workers (``⌈log₂ W⌉`` rounds); the
  driver receives one total per statistic, never W partials.
* **The driver** calibrates the noise, announces the releases (``_plan``, the ledger's
  write-ahead charge) before drawing any noise, adds the noise **once** to each total, solves
  the items and broadcasts them (Ray's object store: each node fetches them once).

The driver draws every random number the single-machine ``fit`` draws, in the same order, from
the same kind of generator — sampling salts included; the workers draw none — so the
mechanism, its accounting events and its guarantee are the single-machine ones, and with a
seed the released arrays equal the single-machine ones up to the order of float sums
(``tests/engine``).

Failures
--------
A worker that dies (process killed, node lost) is replaced: the new actor re-reads its shards
and replays the set-up calls (policy, sampling keys, weights) — deterministic functions of the
data and of values the driver broadcast — and the step is retried; user solves warm-started
from earlier steps are replayed from the broadcast item factors, so the retried step computes
exactly what the first attempt would have. Noise is drawn only after a reduce has succeeded, so
a retry draws none and records no event: a ledger is charged once. After ``max_retries``
failures of one call, :class:`~privrec.errors.WorkerLostError` (nothing was released).
A fit that fails for any reason stops its workers (they would hold the cluster's CPUs, and the
next fit could not start); warnings the workers raised are re-emitted in the calling process.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from privrec.engine.parquet import ParquetSource, UserTypes
from privrec.engine.partition import Partition, PolicyFilter, merge_policy_reports
from privrec.errors import ConfigError, DataError, EngineError, PrivrecError, WorkerLostError
from privrec.models.releases import ReleaseHook

__all__ = ["RayEngine", "WorkerGroup"]


def _ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - the [ray] extra is missing
        raise EngineError(
            "the Ray engine needs the [ray] extra: pip install 'privrec[ray]'"
        ) from None
    return ray


def _failure_types() -> tuple[type[BaseException], ...]:
    ex = _ray().exceptions
    return (ex.RayActorError, ex.ObjectLostError, ex.OwnerDiedError, ex.WorkerCrashedError)


def _unwrap(exc: BaseException) -> BaseException:
    """A worker's own error (a DataError in a shard…) rather than Ray's wrapper of it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, PrivrecError) else exc


class WorkerGroup:
    """The actors of one training, their set-up history, and the tree reduce over them."""

    def __init__(
        self,
        engine: RayEngine,
        source: ParquetSource,
        assignment: list[list[tuple[int, Path]]],
    ) -> None:
        ray = _ray()
        self.engine = engine
        self.source = source
        self.assignment = assignment
        env = {"NUMBA_NUM_THREADS": str(engine.threads_per_worker)}
        if "NUMBA_CACHE_DIR" in os.environ:
            env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
        self._cls = ray.remote(
            num_cpus=engine.threads_per_worker,
            max_restarts=0,
            runtime_env={"env_vars": env},
        )(Partition)
        self.key = (str(source.path), source.binarize, repr(assignment))
        idle = engine._idle.pop(self.key, None)
        if idle is None:  # this engine's idle workers of other data would hold the CPUs
            for actors in engine._idle.values():
                for a in actors:
                    ray.kill(a, no_restart=True)
            engine._idle.clear()
        self.actors = idle if idle is not None else [self._spawn(i) for i in range(len(assignment))]
        for i, actor in enumerate(self.actors):  # an idle worker may have died since its last fit
            try:
                ray.get(actor.ping.remote(), timeout=engine.ping_timeout)
            except _failure_types():
                self.actors[i] = self._spawn(i)
            except ray.exceptions.GetTimeoutError:
                break
        try:  # an actor that cannot be placed (too few free CPUs) would wait forever
            ray.get([a.ping.remote() for a in self.actors], timeout=engine.ping_timeout)
        except _failure_types() as exc:  # a worker died while starting
            self.kill()
            raise EngineError(f"a worker died while starting: {exc}") from None
        except ray.exceptions.GetTimeoutError:
            self.kill()
            raise EngineError(
                f"{len(self.actors)} workers of {engine.threads_per_worker} CPU(s) did not start "
                f"within {engine.ping_timeout:g} s; free CPUs on the cluster: "
                f"{ray.available_resources().get('CPU', 0):g} (other engines still running?)"
            ) from None
        self.setup: list[tuple[str, tuple[Any, ...]]] = []
        #: each set-up call's answer per worker: a replacement must load the same data
        self._setup_out: dict[str, list[Any]] = {}
        self.replaced = 0
        self.bytes_reduced = 0

    def _spawn(self, i: int) -> Any:
        return self._cls.remote(self.source, self.assignment[i], self.engine.threads_per_worker)

    # ----------------------------------------------------------- failures
    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        ray = _ray()
        failures = _failure_types()
        for tries in range(self.engine.max_retries + 1):
            try:
                return attempt()
            except failures as exc:
                if tries == self.engine.max_retries:
                    raise WorkerLostError(
                        f"{what}: a worker was lost {tries + 1} times (max_retries="
                        f"{self.engine.max_retries}); nothing was released by this call"
                    ) from exc
                self._replace_dead()
            except ray.exceptions.RayTaskError as exc:
                raise _unwrap(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _replace_dead(self) -> None:
        """Start a new actor for every dead one and replay the set-up calls on it."""
        ray = _ray()
        failures = _failure_types()
        for i, actor in enumerate(self.actors):
            try:
                ray.get(actor.ping.remote(), timeout=self.engine.ping_timeout)
                continue
            except failures:
                pass
            except ray.exceptions.GetTimeoutError:
                ray.kill(actor, no_restart=True)
            fresh = self._spawn(i)
            for name, args in self.setup:
                got = ray.get(getattr(fresh, name).remote(*args))
                before = self._setup_out.get(name)
                if (
                    before is not None
                    and isinstance(got, dict)
                    and got.get("fingerprint") != before[i].get("fingerprint")
                ):
                    ray.kill(fresh, no_restart=True)
                    raise EngineError(
                        f"worker {i}'s shard files changed since the fit began (its replacement "
                        "read different data): nothing more is computed; train again on a "
                        "directory that does not change during the fit"
                    )
            ray.get(fresh.take_warnings.remote())  # the replayed calls' were shown already
            self.actors[i] = fresh
            self.replaced += 1

    # -------------------------------------------------------------- calls
    def call_all(self, name: str, *args: Any, setup: bool = False) -> list[Any]:
        """Call ``name`` on every worker; with ``setup``, remember it for replacement workers."""
        ray = _ray()

        def attempt() -> list[Any]:
            refs = [getattr(a, name).remote(*args) for a in self.actors]
            if self.engine.after_submit is not None:
                self.engine.after_submit(name, self.actors)
            return list(ray.get(refs))

        out: list[Any] = self._retrying(name, attempt)
        if setup:
            self.setup.append((name, args))
            self._setup_out[name] = out
        return out

    def call_each(self, name: str, per_worker: list[tuple[Any, ...]]) -> list[Any]:
        """Call ``name`` on worker ``i`` with ``per_worker[i]`` (not replayed)."""
        ray = _ray()
        return list(
            self._retrying(
                name,
                lambda: ray.get(
                    [
                        getattr(a, name).remote(*args)
                        for a, args in zip(self.actors, per_worker, strict=True)
                    ]
                ),
            )
        )

    def reduce(self, name: str, *args: Any) -> tuple[np.ndarray, ...]:
        """Every worker computes its partial sums with ``name``; they are summed by a tree.

        Round r (stride 2^r): worker ``i`` absorbs worker ``i + 2^r``'s partial, for ``i`` a
        multiple of ``2^(r+1)``; worker 0 ends with the total, which alone goes to the driver.
        """
        ray = _ray()

        def attempt() -> tuple[np.ndarray, ...]:
            actors = list(self.actors)
            computed = [getattr(a, name).remote(*args) for a in actors]
            if self.engine.after_submit is not None:
                self.engine.after_submit(name, actors)
            absorbed = []
            stride = 1
            while stride < len(actors):
                for i in range(0, len(actors), 2 * stride):
                    if i + stride < len(actors):
                        child = actors[i + stride].partial.remote()
                        absorbed.append(actors[i].absorb.remote(child))
                stride *= 2
            total = actors[0].partial.remote()
            ray.get(computed)
            ray.get(absorbed)
            out = tuple(ray.get(total))
            self.bytes_reduced += len(actors) * sum(int(a.nbytes) for a in out)
            return out

        return tuple(self._retrying(name, attempt))

    def relay_warnings(self) -> None:
        """Re-emit, in this process, the warnings the workers' calls raised (a worker's
        ``DataWarning`` about merged duplicates is shown as the single-machine reader shows it)."""
        for got in self.call_all("take_warnings"):
            for category, message in got:
                warnings.warn(message, category, stacklevel=4)

    def kill(self) -> None:
        """Stop every actor of the group (after a failed fit: nothing of it is reused)."""
        ray = _ray()
        for a in self.actors:
            with contextlib.suppress(Exception):  # never hide the failure that led here
                ray.kill(a, no_restart=True)

    def release(self) -> None:
        """Hand the actors back to the engine: the next fit on the same shards reuses them
        (every fit starts with ``load``, which replaces all of a worker's state)."""
        for old in self.engine._idle.pop(self.key, []):
            _ray().kill(old, no_restart=True)
        self.engine._idle[self.key] = self.actors


class RayEngine:
    """Run a private model's ``fit`` on a Ray cluster over a user-sharded Parquet directory.

    Parameters
    ----------
    address
        A running cluster (``"auto"``, ``"ray://head:10001"``, ``"127.0.0.1:6379"``), or
        ``None`` to start a local one (``num_workers × threads_per_worker`` CPUs) that
        :meth:`shutdown` stops. An already initialised Ray is used as it is.
    num_workers
        User partitions, one Ray actor each. Shards are dealt round-robin, so at most the
        number of shards.
    threads_per_worker
        CPUs (Ray resource and numba threads) of each worker.
    max_retries
        Worker losses tolerated per call before :class:`~privrec.errors.WorkerLostError`.
    object_store_memory
        Bytes of the local cluster's object store (``None``: Ray's default).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int = 2,
        threads_per_worker: int = 1,
        max_retries: int = 3,
        object_store_memory: int | None = None,
        ping_timeout: float = 60.0,
    ) -> None:
        # checked here, before a cluster is started: a bad value would fail late and untyped
        if address is not None and not isinstance(address, str):
            raise ConfigError(f"address must be a string or None, found {type(address).__name__}")
        self.address = address
        self.num_workers = _count("num_workers", num_workers, 1)
        self.threads_per_worker = _count("threads_per_worker", threads_per_worker, 1)
        self.max_retries = _count("max_retries", max_retries, 0)
        self.object_store_memory = (
            None
            if object_store_memory is None
            else _count("object_store_memory", object_store_memory, 1)
        )
        if (
            isinstance(ping_timeout, bool)
            or not isinstance(ping_timeout, (int, float, np.integer, np.floating))
            or not math.isfinite(ping_timeout)
            or ping_timeout <= 0
        ):
            raise ConfigError(
                f"ping_timeout must be a finite number of seconds > 0, found {ping_timeout!r}"
            )
        self.ping_timeout = float(ping_timeout)
        self._started = False
        self._idle: dict[tuple[Any, ...], list[Any]] = {}
        #: the workers of the last fit (kept for inspection: bytes reduced, replacements)
        self.last_group: WorkerGroup | None = None
        #: the merged counts-only policy report of the last fit (``None`` without a policy)
        self.last_policy_report: Any = None
        self.last_content_hash: str | None = None
        self.last_members: np.ndarray | None = None
        self.last_n_items = 0
        #: (users, interactions) the workers held after the policy, in the last fit
        self.last_sizes: tuple[int, int] = (0, 0)
        #: fault-injection hook (tests): called with (call name, actors) right after a call's
        #: tasks were submitted to the workers, before their results are awaited
        self.after_submit: Callable[[str, list[Any]], None] | None = None

    def __repr__(self) -> str:
        return (
            f"RayEngine(address={self.address!r}, num_workers={self.num_workers}, "
            f"threads_per_worker={self.threads_per_worker})"
        )

    # ------------------------------------------------------------ cluster
    def connect(self) -> None:
        """Join the cluster (or start a local one); idempotent."""
        ray = _ray()
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if self.address is None:
            kwargs["num_cpus"] = self.num_workers * self.threads_per_worker
            kwargs["_node_ip_address"] = "127.0.0.1"  # a local cluster listens on loopback only
            if self.object_store_memory is not None:
                kwargs["object_store_memory"] = self.object_store_memory
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from None
        self._started = True

    def shutdown(self) -> None:
        """Stop the idle workers, and the local cluster when this engine started it."""
        if self._idle and _ray().is_initialized():
            for actors in self._idle.values():
                for a in actors:
                    _ray().kill(a, no_restart=True)
        self._idle.clear()
        if self._started:
            _ray().shutdown()
            self._started = False

    def __enter__(self) -> RayEngine:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---------------------------------------------------------------- fit
    def workers(
        self,
        data: str | Path | ParquetSource,
        *,
        item_ids: Any = None,
        policy: PolicyFilter | None = None,
    ) -> tuple[WorkerGroup, np.ndarray, int, int]:
        """Start the workers on ``data``: read, filter, key; returns (group, catalogue, users, nnz).

        The inputs are checked before the cluster is touched. If anything fails once the
        workers exist (a bad shard, mixed user id types…), they are stopped: a failed start
        holds no CPUs, so the next fit can start.
        """
        source = data if isinstance(data, ParquetSource) else ParquetSource.open(data)
        assignment = [a for a in source.assign(self.num_workers) if a]
        if not assignment:
            raise ConfigError(f"{source.path} has no shard files")
        catalogue = _catalogue(source, item_ids)
        self.connect()
        group = WorkerGroup(self, source, assignment)
        self.last_group = group
        try:
            self._load(group, catalogue, policy)
        except BaseException:
            group.kill()
            raise
        return (group, catalogue, *self.last_sizes)

    def _load(
        self, group: WorkerGroup, catalogue: np.ndarray, policy: PolicyFilter | None
    ) -> list[dict[str, Any]]:
        ray = _ray()
        catalogue_ref = ray.put(catalogue)
        loaded: list[dict[str, Any]] = group.call_all("load", catalogue_ref, policy, setup=True)
        # each worker checked its own files; one person stored as 2 on one worker and 2.0 or
        # "2" on another would be two users: refused before any id is compared or counted
        types = UserTypes()
        for r in loaded:
            where = r.get("user_type_file")
            types.see(r.get("user_type"), None if where is None else Path(where))
        self.last_policy_report = (
            merge_policy_reports([r["report"] for r in loaded]) if policy is not None else None
        )
        if policy is not None and policy.consent_file_sha256 is not None:
            self.last_policy_report = self.last_policy_report.model_copy(
                update={"consent_file_sha256": policy.consent_file_sha256}
            )
        #: the keyed hashes of every kept user (with a policy): the version's members
        self.last_members = (
            np.sort(np.concatenate([r["members"] for r in loaded])) if policy is not None else None
        )
        self.last_n_items = len(catalogue)
        #: SHA-256 over the workers' content hashes of their filtered partitions (with a policy)
        self.last_content_hash = (
            hashlib.sha256("".join(r["hash"] for r in loaded).encode()).hexdigest()
            if policy is not None
            else None
        )
        ids = [ray.put(i) for i in group.call_all("sorted_user_ids")]
        group.call_all("set_row_keys", *ids, setup=True)
        self.last_sizes = (sum(r["n_users"] for r in loaded), sum(r["nnz"] for r in loaded))
        group.relay_warnings()
        return loaded

    def fit(
        self,
        model: Any,
        data: str | Path | ParquetSource,
        *,
        item_ids: Any = None,
        policy: PolicyFilter | None = None,
        progress: Callable[[int, int], None] | None = None,
        on_loaded: Callable[[int, int], None] | None = None,
        on_release: ReleaseHook | None = None,
    ) -> Any:
        """Fit ``model`` (DPALS, DPPopularity or DPEASE) on ``data``; returns the fitted model.

        ``on_loaded(n_users, nnz)`` is called once the workers hold their (filtered) users,
        before anything is computed from them (the CLI refuses a weak δ there).
        ``item_ids`` fixes the catalogue (as ``fit(..., item_ids=...)`` does on one machine);
        ``policy`` filters every worker's users as the ledger's ``load`` would
        (:meth:`PolicyFilter.from_ledger`). A ledger attached as ``model.release_gate`` is
        charged once, before any noise. The fitted model knows no users (user factors and
        histories stay on the workers and are dropped): it is saved, explained and served
        (``recommend_history``) like any private model file. ``on_release`` (DPALS only) is
        ``DPALS.fit``'s release hook: it sees the same releases, in the same order, as on one
        machine (:mod:`privrec.models.releases`).
        """
        from privrec.engine.fitting import check_distributable, fit_distributed

        check_distributable(model, on_release=on_release)
        if item_ids is None:  # a catalogue fixed with model.with_catalogue(ids), as fit() reads it
            item_ids = getattr(model, "_catalogue", None)
        group, catalogue, n_users, nnz = self.workers(data, item_ids=item_ids, policy=policy)
        try:
            if on_loaded is not None:
                on_loaded(n_users, nnz)
            fitted = fit_distributed(
                model, group, catalogue, n_users, nnz, given=item_ids is not None,
                progress=progress, on_release=on_release,
            )  # fmt: skip
            group.relay_warnings()
        except BaseException:
            group.kill()  # a failed fit's workers hold CPUs and unknown state: stop them
            raise
        group.release()
        return fitted


def _count(name: str, value: Any, low: int) -> int:
    """``value`` as an int ``>= low``, or :class:`ConfigError` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, found {value!r}")
    return int(value)


def _catalogue(source: ParquetSource, item_ids: Any) -> np.ndarray:
    """The item catalogue: the data's distinct items, or ``item_ids`` in the data's id type.

    A given catalogue is checked and converted as the single-machine ``with_catalogue`` and
    ``on_catalogue`` do: text ids (``--items FILE``) become integers when the shards store
    integer item ids, and two texts naming one integer (``"1"``, ``"01"``) are refused.
    """
    if item_ids is None:
        return source.item_catalogue()
    ids = np.asarray(item_ids)
    if ids.dtype == object:
        ids = ids.astype(str)
    if ids.ndim != 1 or ids.size == 0 or len(np.unique(ids)) != len(ids):
        raise DataError("item_ids must be a non-empty 1-D array of unique ids", field="item_ids")
    if ids.dtype.kind == "U":
        kind = source.item_id_kind()
        if kind in ("i", "u"):
            with contextlib.suppress(ValueError, OverflowError):  # else: items not in it, later
                ids = ids.astype(np.int64 if kind == "i" else np.uint64)
            if len(np.unique(ids)) != len(ids):
                raise DataError(
                    "the catalogue lists an item twice",
                    field="item_ids",
                    expected="each item once (after reading the ids as the data's integers)",
                    found=f"{len(ids) - len(np.unique(ids))} repeated",
                )
    return ids
