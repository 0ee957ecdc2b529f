"""Federated DPALS on Flower: the simulated rounds of :mod:`privrec.federated.dpals`, deployed.

The server side is :class:`~privrec.federated.dpals.FederatedDPALS` itself
(:meth:`~privrec.federated.dpals.FederatedDPALS.fit_devices`): the same plan, calibration,
accounting, item solves and guarantee as the simulation. Only where each round's secure sum
runs differs: :class:`FlowerDevices` sends the round's public task
(:class:`~privrec.federated.dpals_devices.DeviceTask`: the round kind, count sample, head items, their
noisy counts and the current item factors) with the SecAgg+ masked-input message of
:class:`~privrec.federated.flower.rounds.SecureRounds`, and every hosted user computes its own
contribution on its node with the simulation's code
(:func:`~privrec.federated.dpals_devices.device_vectors`: length one-hot, count sample, or exact
solve, clip and :func:`~privrec.federated.dpals_devices.round_vectors`), encodes it with distributed
DP and masks it. The server decodes the sum and solves the items.

Privacy: as in :mod:`privrec.federated.dpals` — unit one user (one device, add/remove); every
round a secure sum of vectors of L2 norm ≤ the round's bound with the devices' discrete
Gaussian noise sized for ``min_survivor_fraction`` of the population; the same planned
``GaussianDpEvent`` per round, composed by dp-accounting's RDP accountant. A round whose
SecAgg+ sum ends with fewer survivors than planned aborts before decoding (no release, no
charge) and is retried with every user, at most ``max-retries`` times. The devices' secret
salt (their count and weight samples) is drawn on the node from the CSPRNG and kept in its
``Context.state`` for the run; a node in ``test-mode`` honours the task's seed instead (the
simulation's seeded samples and noise, for the equality tests — not private, and it warns).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from privrec.errors import ConfigError, MessageRejected, ProtocolAbort
from privrec.federated.dpals import FederatedDPALS
from privrec.federated.dpals_devices import (
    ARRAY_FIELDS,
    DeviceTask,
    SumResult,
    device_rng,
    device_vectors,
)
from privrec.federated.flower.codec import ddp_to_json, get_str, round_context
from privrec.federated.flower.dpals_checkpoint import RoundStore, task_digest
from privrec.federated.flower.node import NodeData, guarded, warn_seeded
from privrec.federated.flower.rounds import (
    DeploySettings,
    RoundLog,
    SecureRounds,
    Transport,
    warn_no_checkpoint,
)
from privrec.models.persistence import atomic_output
from privrec.privacy.distributed import DistributedDPEncoder, padding_generator
from privrec.secure.secagg import RoundConfig

__all__ = ["DPALSCoordinator", "FlowerDevices", "dpals_payloads", "parse_dpals_run_config"]

MODEL = "model.npz"
_STATE_SALT = "privrec.dpals"


def parse_dpals_run_config(
    run_config: Mapping[str, Any],
) -> tuple[dict[str, Any], DeploySettings]:
    """``dpals.<param>`` → :class:`FederatedDPALS` parameters, the rest → deployment settings.

    ``mf.*`` and ``node.*`` keys are ignored; dashes become underscores and ``""`` means
    ``None``, as in :func:`~privrec.federated.flower.coordinator.parse_run_config`. The
    parameters are validated (:meth:`FederatedDPALS.config`) before anything starts.
    """
    params: dict[str, Any] = {}
    dep: dict[str, Any] = {}
    known = set(DeploySettings.__dataclass_fields__)
    for key, value in run_config.items():
        if key.startswith(("node.", "mf.")):
            continue
        if key.startswith("dpals."):
            params[key[6:].replace("-", "_")] = None if value == "" else value
            continue
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown run config key {key!r}; known: dpals.*, {sorted(known)}")
        dep[name] = value
    try:
        settings = DeploySettings(**dep)
    except TypeError as exc:
        raise ConfigError(f"invalid run config: {exc}") from None
    for need in ("epsilon", "delta"):
        if need not in params:
            raise ConfigError(f"federated DPALS needs dpals.{need} in the run config")
    for sim_only in ("secure", "dropout"):  # simulation settings: Flower runs the real thing
        params.pop(sim_only, None)
    model = FederatedDPALS(**params)
    model.config()  # typed errors now, not after the nodes connected
    return params, settings


# ----------------------------------------------------------------------------------------------
# Server side
# ----------------------------------------------------------------------------------------------


def task_records(task: DeviceTask, enc: DistributedDPEncoder, seed: int | None) -> RecordDict:
    """The masked-input message's public part: the task, the encoding and the item factors."""
    settings = {**task.settings(), "scales": list(task.scales), "seed": seed}
    rec = RecordDict(
        {
            "task": ConfigRecord(
                {"dpals": json.dumps(settings), "ddp": ddp_to_json(enc.config), "noise": True}
            )
        }
    )
    arrays = {
        name: Array(np.ascontiguousarray(getattr(task, name)))
        for name in ARRAY_FIELDS
        if getattr(task, name) is not None
    }
    if arrays:
        rec["model"] = ArrayRecord(arrays)
    return rec


class FlowerDevices:
    """:class:`~privrec.federated.dpals_devices.Devices` on SuperNodes: each round one SecAgg+ sum."""

    def __init__(self, rounds: DPALSCoordinator, seed: int | None) -> None:
        self.rounds = rounds
        self.seed = seed
        self.count = 0
        self.description = (
            "Flower rounds (privrec SecAgg+ between the SuperNodes' users, "
            f"{len(rounds.node_users)} nodes)."
        )

    def secure_sum(self, task: DeviceTask, enc: DistributedDPEncoder, n_min: int) -> SumResult:
        r = self.rounds
        self.count += 1
        store = r.store
        digest = task_digest(task, enc, n_min)
        if store is not None:
            replayed = store.replay(self.count, digest, enc.config.dim)
            if replayed is not None:
                r.say(f"round {self.count} ({task.label}): replayed from the checkpoint")
                return replayed
        ids = np.asarray(sorted(r.user_node), dtype=np.int64)
        extra = task_records(task, enc, self.seed)
        for attempt in range(r.settings.max_retries + 1):
            entry = RoundLog(round=self.count, attempt=attempt, kind="dpals", sampled=int(ids.size))
            t0 = time.perf_counter()
            # marked just before the unmask phase: earlier the server cannot decode the sum
            unmasking: list[bool] = []
            mark = partial(_unmask_begins, store, self.count, unmasking)
            try:
                # the neighbour graph is sized for the colluders the noise assumes, as in the
                # simulation (5 % by default): a graph for fewer lets them unmask a device
                rc = RoundConfig.create(
                    ids.tolist(), enc.encoded_dim, enc.bits, min_survivors=n_min,
                    neighbours=r.neighbours(int(ids.size)),
                    corrupt_fraction=r.model.corrupt_fraction,
                    threat_model=r.model.threat_model, identity_keys=r.identity_keys(ids),
                    context=round_context(enc.config, True),  # the noise all nodes are told
                )  # fmt: skip
                result = r._secure_sum(entry, rc, extra, before_unmask=mark)
            except ProtocolAbort as exc:
                entry.aborted = f"{exc.phase}: {exc.reason}"
                entry.seconds = time.perf_counter() - t0
                if unmasking:  # the replies the server holds may decode it: not free
                    entry.epsilon = r.model.epsilon_spent(with_next_round=True)
                    r._log(entry)
                    raise ProtocolAbort(
                        exc.phase,
                        f"{exc.reason} — after the unmask request went out, so the server may "
                        "hold enough shares to decode this attempt: it is not retried (a retry "
                        "would be a second release its guarantee does not count) and the round "
                        "stays marked as started",
                    ) from exc
                if store is not None:
                    store.aborted(self.count)  # nothing decodable: the retry is free
                entry.epsilon = r.model.epsilon_spent()  # an aborted attempt is not charged
                r._log(entry)
                if attempt == r.settings.max_retries:
                    raise
                continue
            n_surv = len(result.survivors)
            entry.survivors = n_surv
            entry.dropped = {p: len(v) for p, v in result.dropped.items()}
            entry.epsilon = r.model.epsilon_spent(with_next_round=True)  # this round included
            pad_rng = padding_generator(self.seed, "dpals", task.label, attempt)
            decoded = enc.decode(result.sum, n_surv, rng=pad_rng)
            entry.seconds = time.perf_counter() - t0
            n = max(int(ids.size), 1)
            out = SumResult(
                decoded,
                n_surv,
                extra={
                    "flower_bytes_up_per_device": entry.bytes_up / n,
                    "flower_bytes_down_per_device": entry.bytes_down / n,
                    "flower_phase_seconds": dict(entry.phase_seconds),
                    "flower_seconds": entry.seconds,
                    "attempts": attempt + 1,
                },
            )
            if store is not None:
                store.record(self.count, digest, out)  # before the server uses it, or logs
            r._log(entry)
            return out
        raise AssertionError("unreachable")  # pragma: no cover


def _unmask_begins(store: RoundStore | None, index: int, flag: list[bool]) -> None:
    """Round ``index`` reaches its unmask phase: mark it in the store, and remember it."""
    if store is not None:
        store.start(index)
    flag.append(True)


class DPALSCoordinator(SecureRounds):
    """Trains :class:`FederatedDPALS` over SuperNodes; the released model is written to
    ``checkpoint-dir/model.npz`` (no users: serve them from their own histories)."""

    def __init__(
        self,
        transport: Transport,
        params: Mapping[str, Any],
        settings: DeploySettings,
        say: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(transport, settings, say)
        self.model = FederatedDPALS(**{**params, "secure": "full"})
        self.model.config()
        self.store: RoundStore | None = None
        if self.model.threat_model == "malicious":
            self.load_pki("dpals.threat-model")

    def run(self) -> FederatedDPALS:
        """Discover the nodes, run every round, save and return the released model."""
        if not self.user_node:
            self.discover()
        if self.ckpt is None:
            warn_no_checkpoint()
        else:
            run = {
                **self.model.get_params(),
                "population": self.population,
                "n_items": self.n_items,
            }
            self.store = RoundStore(self.ckpt / "dpals-run", run, resume=self.settings.resume)
            self.model.init_seed = self.store.init_seed  # a replay starts from the same factors
        devices = FlowerDevices(self, self.model.seed)
        try:
            self.model.fit_devices(devices, self.population, self.n_items)
        finally:
            if self.store is not None:
                self.store.close()
        g = self.model.privacy_guarantee
        if self.ckpt is not None:
            self.ckpt.mkdir(parents=True, exist_ok=True)
            self.model.save(self.ckpt / MODEL)
            with atomic_output(self.ckpt / "dpals_rounds.json") as tmp:  # never through a link
                tmp.write_text(
                    json.dumps(self.model.rounds_, indent=1, default=float), encoding="utf-8"
                )
        self.say(
            f"done: federated DPALS, {len(self.model.rounds_)} rounds, ε = {g.epsilon:.4g} at "
            f"δ = {g.delta:g} (user level, {g.accountant.value} accountant)"
        )
        return self.model


# ----------------------------------------------------------------------------------------------
# Node side
# ----------------------------------------------------------------------------------------------


def _task_from(content: RecordDict, task: ConfigRecord) -> tuple[DeviceTask, int | None]:
    try:
        raw: dict[str, Any] = json.loads(get_str(task, "dpals"))
        seed = raw.pop("seed", None)
        raw["scales"] = tuple(float(v) for v in raw["scales"])
        model = content.array_records.get("model")
        arrays: dict[str, Any] = {}
        if model is not None:
            arrays = {n: model[n].numpy() for n in ARRAY_FIELDS if n in model}
        if "head" in arrays:
            arrays["head"] = np.asarray(arrays["head"], dtype=np.int64)
        return DeviceTask(**raw, **arrays), None if seed is None else int(seed)
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageRejected(f"malformed federated DPALS task: {exc}") from None


#: largest |item factor| a node accepts: an honest server's ridge solves scale like 1/λ (3.4e7
#: at λ = 1e-6, ε = 1), so only what would overflow the users' k×k solves in float64 is refused
MAX_FACTOR = 1e100
#: largest number of factors a task may carry (DPALS's own limit)
MAX_TASK_FACTORS = 1024


def check_task(task: DeviceTask, n_items: int) -> None:
    """A federated DPALS task's settings and arrays, checked before any user's data is read.

    The node's kernels trust their inputs (the numba user solve has no bounds checks: a review
    had item factors shorter than the head read memory past the array for the users holding
    the missing items). Every failure here is the task's, the same for every hosted user, and
    refuses the whole message (:class:`~privrec.errors.MessageRejected`).
    """

    def bad(what: str) -> MessageRejected:
        return MessageRejected(f"federated DPALS task refused: {what}")

    def positive(name: str, value: float, *, zero: bool = False) -> None:
        v = float(value)
        if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
            raise bad(f"{name} must be finite and {'>= 0' if zero else '> 0'}, found {value!r}")

    if task.n_items != n_items:
        raise bad(f"catalogue of {task.n_items} items, this node's has {n_items}")
    if task.method not in ("adaptive", "uniform", "tail") or task.lhs not in ("none", "diagonal"):
        raise bad(f"unknown method {task.method!r} or lhs {task.lhs!r}")
    for name in ("count_sample", "bound"):
        v = getattr(task, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
            raise bad(f"{name} must be a non-negative 32-bit integer, found {v!r}")
    positive("alpha0", task.alpha0, zero=True)
    positive("user_regularization", task.user_regularization)
    positive("clip_norm", task.clip_norm)
    if not (math.isfinite(task.adaptive_exponent) and 0 <= task.adaptive_exponent <= 2):
        raise bad(f"adaptive_exponent must be in [0, 2], found {task.adaptive_exponent!r}")
    for scale in task.scales:
        positive("each scale", scale)
    if task.kind != "step":
        return
    head, counts, y = task.head, task.head_counts, task.item_factors
    if head is None or counts is None or y is None:
        raise bad("a step round needs the head items, their counts and the item factors")
    if head.ndim != 1 or head.size == 0 or np.unique(head).size != head.size:
        raise bad("the head must be distinct item ids")
    if head.min() < 0 or head.max() >= n_items:
        raise bad(f"the head names items outside the catalogue of {n_items}")
    if counts.shape != head.shape or not np.all(np.isfinite(counts)):
        raise bad("the head counts must be one finite count per head item")
    if y.ndim != 2 or y.shape[0] != head.size or not 1 <= y.shape[1] <= MAX_TASK_FACTORS:
        raise bad(f"item factors of shape {y.shape} for {head.size} head items")
    if not np.all(np.isfinite(y)) or float(np.max(np.abs(y), initial=0.0)) > MAX_FACTOR:
        raise bad(f"item factors must be finite and at most {MAX_FACTOR:g} in size")


def _node_salt(context: Context) -> int:
    """This node's secret salt for the run (CSPRNG; kept in ``Context.state``, never sent)."""
    rec = context.state.config_records.get(_STATE_SALT)
    value = None if rec is None else rec.get("salt")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    from privrec.privacy.contribution import draw_salt
    from privrec.privacy.randomness import secure_generator

    salt = draw_salt(secure_generator())
    context.state[_STATE_SALT] = ConfigRecord({"salt": salt})
    return salt


def _row(dense: np.ndarray, i: int) -> np.ndarray:
    out: np.ndarray = dense[i]
    return out


def dpals_payloads(
    content: RecordDict,
    task: ConfigRecord,
    data: NodeData,
    users: list[int],
    context: Context,
    test_mode: bool,
) -> tuple[dict[int, np.ndarray], Callable[[int], np.random.Generator]]:
    """Each hosted user's contribution to the round (the simulation's code) and its noise source.

    A seed in the task is honoured only on a node in ``test-mode`` (with a
    :class:`~privrec.errors.PrivacyWarning`); otherwise salts and noise come from the CSPRNG.
    """
    from privrec.privacy.randomness import secure_generator

    device_task, seed = _task_from(content, task)
    if device_task.kind not in ("lengths", "counts", "step"):
        raise ConfigError(f"unknown federated DPALS round {device_task.kind!r}")
    check_task(device_task, data.n_items)
    seed = seed if test_mode else None
    warn_seeded(seed)
    salt = seed if seed is not None else _node_salt(context)
    rows = np.searchsorted(data.user_ids, np.asarray(users, dtype=np.int64))
    x = data.histories[rows]
    x.data[:] = 1.0
    keys = np.asarray(users, dtype=np.int64)
    factors = device_task.item_factors
    dim = device_task.dim(0 if factors is None else int(np.shape(factors)[1]))

    def one(i: int) -> np.ndarray:
        row: np.ndarray = device_vectors(device_task, x[i], keys[i : i + 1], salt).toarray()[0]
        return row

    try:  # all hosted users at once; any failure → each user alone, guarded (see `guarded`)
        with np.errstate(all="ignore"):
            dense = device_vectors(device_task, x, keys, salt).toarray()
        payloads = {u: guarded(partial(_row, dense, i), dim) for i, u in enumerate(users)}
    except Exception:
        payloads = {u: guarded(partial(one, i), dim) for i, u in enumerate(users)}
    if seed is None:
        return payloads, lambda u: secure_generator()
    label = device_task.label
    return payloads, lambda u: device_rng(seed, label, 0, u)
