"""Checkpoints of a FederatedMF server: numpy arrays and JSON metadata in one ``.npz``, no pickle.

Split from :mod:`privrec.federated.server`, whose ``state_dict`` / ``from_state`` / ``save`` /
``load`` call these functions. A checkpoint holds the server's state — item factors, optimiser
moments, clip norm, noise multipliers, the head and the noisy counts it was chosen from, the
accountant's records — and a round log. What it holds about the users is what was released
(the noised sums' effects and the noisy counts) and public settings; it holds no exact count
of people: the log keeps each round's clip norm and noised unclipped fraction, not its
survivors (the secure sum's exact cohort, which no guarantee covers), and abort reasons keep
their words, not their numbers (:func:`public_history`).

A checkpoint is checked against its own records before it is used (:func:`from_state`): the
head must be the one the model's rule chooses from the stored noisy counts (an edited head
could train rows the rule never released), and the accountant's records must charge every
round done at the stored noise (cut records would under-report ε and let a resumed run spend
past its budget), and an ε-calibrated run's stored noise must still fit its ε. Any mismatch is a
:class:`~privrec.errors.CheckpointMismatchError`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dp_accounting
import numpy as np

from privrec.errors import CheckpointMismatchError, DataError, PrivacyWarning
from privrec.federated.accounting import fast_epsilon
from privrec.federated.config import FederatedMFConfig
from privrec.federated.server_counting import HEAD_LABEL, ruled_head
from privrec.federated.sim_reports import without_numbers
from privrec.models.persistence import atomic_output
from privrec.privacy.events import SpentEvent, total_event

if TYPE_CHECKING:
    from privrec.federated.server import FederatedMFServer

__all__ = ["charged_events", "from_state", "load", "public_history", "save", "state_dict"]

#: Round-log keys that are exact counts of people (the secure sum's survivors): kept in memory
#: for the operator of the run, never written to a checkpoint.
_COUNT_KEYS = ("survivors", "honest_survivors", "sampled")


def public_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The round log fit for a checkpoint: no survivor counts, abort reasons without numbers.

    Survivors and honest survivors are exact counts of the people in a round's sum; no
    guarantee covers them and a resumed run does not need them (every completed round is
    charged its planned worst case, whatever its cohort). An abort reason such as "only 23
    masked inputs, at least 28 required" keeps its words with each number as ``N``.
    """
    out = []
    for entry in history:
        e = {k: v for k, v in entry.items() if k not in _COUNT_KEYS}
        if isinstance(e.get("reason"), str):
            e["reason"] = without_numbers(e["reason"])
        out.append(e)
    return out


def state_dict(self: FederatedMFServer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, meta)``: numpy arrays and JSON-able metadata (no pickle anywhere)."""
    arrays = {
        "item_factors": self.item_factors,
        "adam_m": self.adam_m,
        "adam_v": self.adam_v,
        "head_items": np.zeros(0, np.int64) if self.head_items is None else self.head_items,
    }
    if self.noisy_counts is not None and self.noisy_lengths is not None:
        arrays["noisy_counts"] = self.noisy_counts
        arrays["noisy_lengths"] = self.noisy_lengths
    meta = {
        "config": self.config.model_dump(mode="json"),
        "n_items": self.n_items,
        # not the population (an exact count of people): the caller passes it again on load,
        # and the sampling rate — rounded up to two significant figures — checks it
        "sampling_rate": self.q,
        "round": self.round,
        "clip_norm": self.clip_norm,
        "noise_multiplier": self.noise_multiplier,
        "head_noise_multiplier": self.head_noise_multiplier,
        "rotation_seed": self.rotation_seed,
        "public_head": self.public_head,
        "has_head": self.head_items is not None,
        "head_rounds": self.head_rounds,
        "payload_rows": self.payload_rows,
        "spent": [s.to_dict() for s in self.spent],
        "runs": self._runs,
        "history": public_history(self.history),
    }
    return arrays, meta


def from_state(
    cls: type[FederatedMFServer],
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    rng: np.random.Generator | None = None,
    *,
    public_head: np.ndarray | None = None,
    population: int | None = None,
) -> FederatedMFServer:
    """Rebuild a server from :meth:`state_dict` output (no re-calibration), checked first.

    ``population`` is the number of users (devices) the run samples from — the data's, or the
    federation's enrolled nodes. It is not stored (an exact count of people); its sampling rate
    is, and must come out the same. Checkpoints written before carry it and may omit it.

    ``public_head`` confirms the head of a run started with a public head: the checkpoint's
    flag alone cannot say the head came from public data (an edited flag would skip the
    rule's check), so such a checkpoint is refused unless its head is passed again.

    Raises
    ------
    CheckpointMismatchError
        The stored head is not what the rule gives for the stored counts (or the public head
        passed), the accountant's records charge less than the rounds done imply, or an
        ε-calibrated run's stored noise would take the complete run past its ε.
    DataError
        Malformed state (non-finite noise, arrays that do not fit the head).
    """
    config = FederatedMFConfig.model_validate(meta["config"])
    if population is None:
        if "population" not in meta:
            raise DataError(
                "resuming needs the population (the number of users the run samples from): "
                "the checkpoint does not store that count",
                field="population",
            )
        population = int(meta["population"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # seeded rng re-created: warned at start
        srv = cls(config, int(meta["n_items"]), int(population), rng=rng, _calibrate=False)
    stored_q = meta.get("sampling_rate")
    if stored_q is not None and not math.isclose(float(stored_q), srv.q, rel_tol=1e-9):
        raise CheckpointMismatchError(
            "the population is not the checkpoint's: its sampling rate was "
            f"{float(stored_q):.4g}, these users give {srv.q:.4g} (the noise and the "
            "accounting were planned for that rate)"
        )
    srv.round = int(meta["round"])
    srv.clip_norm = float(meta["clip_norm"])
    srv.noise_multiplier = float(meta["noise_multiplier"])
    srv.head_noise_multiplier = float(meta["head_noise_multiplier"])
    for name in ("noise_multiplier", "head_noise_multiplier"):
        value = getattr(srv, name)
        if not (math.isfinite(value) and value >= 0):
            raise DataError("the checkpoint's noise is not a finite multiplier >= 0", field=name)
    if srv.round < 0 or not (math.isfinite(srv.clip_norm) and srv.clip_norm > 0):
        raise DataError("the checkpoint's round or clip norm is invalid", field="clip_norm")
    srv.rotation_seed = int(meta["rotation_seed"])
    srv.public_head = bool(meta["public_head"])
    head_rounds = meta.get("head_rounds")  # absent before it was stored: the configured T
    srv.head_rounds = None if head_rounds is None else int(head_rounds)
    srv.spent = [SpentEvent.from_dict(d) for d in meta["spent"]]
    srv._runs = [int(r) for r in meta["runs"]]
    srv.history = list(meta["history"])
    srv._encoder = None
    counted = "noisy_counts" in arrays and "noisy_lengths" in arrays
    if counted:
        srv.noisy_counts = np.asarray(arrays["noisy_counts"], dtype=np.float64)
        srv.noisy_lengths = np.asarray(arrays["noisy_lengths"], dtype=np.float64)
        if srv.noisy_counts.shape != (srv.n_items,) or not np.all(np.isfinite(srv.noisy_counts)):
            raise DataError("the checkpoint's noisy counts do not fit", field="noisy_counts")
        bins = (srv.count_dim - srv.n_items,)
        if srv.noisy_lengths.shape != bins or not np.all(np.isfinite(srv.noisy_lengths)):
            raise DataError(
                "the checkpoint's noisy length histogram does not fit", field="noisy_lengths"
            )
    if meta["has_head"]:
        srv.head_items = np.asarray(arrays["head_items"], dtype=np.int64)
        rows = meta.get("payload_rows")  # absent before the learnable head under distributed DP
        srv.payload_rows = srv.head_items.size if rows is None else int(rows)
        if not srv.head_items.size <= srv.payload_rows <= srv.n_items:
            raise DataError(
                "the checkpoint's payload rows do not fit its head",
                field="payload_rows",
                expected=f"{srv.head_items.size} <= rows <= {srv.n_items}",
                found=srv.payload_rows,
            )
        _check_head(srv, srv.noisy_counts if counted else None, public_head)
        k = srv.config.factors
        srv.item_factors = np.asarray(arrays["item_factors"], dtype=np.float64)
        srv.adam_m = np.asarray(arrays["adam_m"], dtype=np.float64)
        srv.adam_v = np.asarray(arrays["adam_v"], dtype=np.float64)
        n = srv.head_items.size
        if srv.item_factors.shape != (n, k) or {srv.adam_m.shape, srv.adam_v.shape} != {(n * k,)}:
            raise DataError(
                "the checkpoint's item factors do not fit its head",
                field="item_factors",
                expected=f"({n}, {k})",
                found=srv.item_factors.shape,
            )
        if not counted:
            # a checkpoint from before the counting round always ran: none is owed (or planned)
            srv.noisy_counts = np.zeros(srv.n_items)
            srv.noisy_lengths = np.zeros(srv.count_dim - srv.n_items)
    elif counted or srv.round:
        raise CheckpointMismatchError(
            "the checkpoint released counts or rounds but has no head", field="has_head"
        )
    _check_records(srv, counted)
    _check_noise(srv)
    return srv


def _check_noise(srv: FederatedMFServer) -> None:
    """Refuse an ε-calibrated run whose stored noise no longer fits its ε.

    The remaining rounds add the stored multipliers' noise; lowered in the file (with the
    records edited to match), they would be honestly accounted but would spend past the ε the
    run was calibrated for. The complete run's planned events
    (:meth:`~privrec.federated.server.FederatedMFServer.planned_events`, what calibration
    checked) must stay within it. Finished runs and fixed-multiplier runs have nothing to check.
    """
    c = srv.config
    if c.epsilon is None or srv.round >= c.rounds:
        return
    eps = fast_epsilon(total_event(srv.planned_events()), c.delta, c.accountant)
    if eps > c.epsilon * (1.0 + 1e-9):
        raise CheckpointMismatchError(
            "the checkpoint's noise multipliers would spend more than the run's epsilon",
            field="noise_multiplier",
            expected=f"epsilon <= {c.epsilon:g} over {c.rounds} rounds",
            found=f"{eps:.6g}",
        )


def _check_head(
    srv: FederatedMFServer, counts: np.ndarray | None, public_head: np.ndarray | None
) -> None:
    """Refuse a stored head (items and payload rows) other than the one the run must have."""
    assert srv.head_items is not None and srv.payload_rows is not None
    if srv.public_head:
        if public_head is None:
            raise CheckpointMismatchError(
                "the checkpoint says its head is public: pass that public head to resume it "
                "(a flag alone cannot show the head came from public data)",
                field="public_head",
            )
        want = np.unique(np.asarray(public_head, dtype=np.int64))
        rows = want.size
        what = "the public head passed"
    else:
        try:
            want, rows = ruled_head(srv, counts, srv.head_rounds)
        except DataError:
            raise CheckpointMismatchError(
                "the checkpoint's head was chosen privately but it stores no noisy counts to "
                "check it against",
                field="noisy_counts",
            ) from None
        what = "the head rule's choice from the stored noisy counts"
    if not (np.array_equal(srv.head_items, want) and srv.payload_rows == rows):
        raise CheckpointMismatchError(
            f"the checkpoint's head is not {what}",
            field="head_items",
            expected=f"{want.size} items in {rows} payload rows",
            found=f"{srv.head_items.size} items in {srv.payload_rows} payload rows",
        )


def charged_events(srv: FederatedMFServer, counted: bool) -> list[SpentEvent]:
    """What a server that released the counts (``counted``) and ``srv.round`` rounds at its
    stored noise must have recorded: the counting round's event, then one run of the planned
    round event — every completed round is charged that same event, whatever its cohort."""
    out = []
    if counted:
        out.append(SpentEvent(HEAD_LABEL, srv._charged_head_event(srv.head_noise_multiplier)))
    r = srv.round
    if r:
        label = "round 1" if r == 1 else f"rounds 1-{r}"
        event = srv._charged_round_event(srv.noise_multiplier)
        out.append(SpentEvent(label, dp_accounting.SelfComposedDpEvent(event, r)))
    return out


def _check_records(srv: FederatedMFServer, counted: bool) -> None:
    """Refuse accountant records that charge fewer rounds, or a smaller ε, than they must.

    The records are recomputed from the stored round count and noise
    (:func:`charged_events`). Identical records pass at once; others (e.g. written by an
    older release) pass only if they charge exactly the rounds done and their ε is at least
    the recomputed one — cut records would let the guarantee, and a ledger reading it,
    under-report what was spent.
    """
    if len(srv._runs) != len(srv.spent):
        raise CheckpointMismatchError(
            "the checkpoint's accountant records and their run lengths disagree", field="runs"
        )
    expected = charged_events(srv, counted)
    if [e.to_dict() for e in srv.spent] == [e.to_dict() for e in expected]:
        return
    charged = 0
    for spent, runs in zip(srv.spent, srv._runs, strict=True):
        if spent.label.startswith("round"):
            n = (
                spent.event.count
                if isinstance(spent.event, dp_accounting.SelfComposedDpEvent)
                else 1
            )
            if n != runs:
                raise CheckpointMismatchError(
                    "an accountant record's run length disagrees with its event",
                    field="runs",
                    expected=str(n),
                    found=runs,
                )
            charged += n
    if charged != srv.round:
        raise CheckpointMismatchError(
            "the checkpoint's accountant records charge another number of rounds than were done",
            field="spent",
            expected=f"{srv.round} rounds",
            found=f"{charged} rounds",
        )
    kind, delta = srv.config.accountant, srv.config.delta
    need = fast_epsilon(total_event(expected), delta, kind) if expected else 0.0
    have = fast_epsilon(total_event(srv.spent), delta, kind) if srv.spent else 0.0
    if have < need * (1.0 - 1e-9):
        raise CheckpointMismatchError(
            "the checkpoint's accountant records imply a smaller epsilon than the rounds done "
            "at the stored noise",
            field="spent",
            expected=f"epsilon >= {need:.6g}",
        )


def save(self: FederatedMFServer, path: str | Path) -> Path:
    """Checkpoint to ``path`` (``.npz`` with the metadata as a JSON byte array)."""
    arrays, meta = state_dict(self)
    path = Path(path)
    # atomic (a crash mid-write never leaves a half checkpoint), never through a planted link,
    # and durable: the charges it records must survive a power loss
    with atomic_output(path, durable=True) as tmp, tmp.open("wb") as fh:
        np.savez(
            fh,
            __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            **arrays,  # type: ignore[arg-type]
        )
    return path


def load(
    cls: type[FederatedMFServer],
    path: str | Path,
    rng: np.random.Generator | None = None,
    *,
    public_head: np.ndarray | None = None,
    population: int | None = None,
) -> FederatedMFServer:
    """Read a checkpoint written by :meth:`save` (checked by :func:`from_state`)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError("not a FederatedMF checkpoint", file=path, found=str(exc)) from None
    if "__meta__" not in arrays:
        raise DataError("not a FederatedMF checkpoint (no metadata)", file=path)
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return from_state(cls, arrays, meta, rng, public_head=public_head, population=population)
