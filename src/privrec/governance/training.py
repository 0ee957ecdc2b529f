"""Training through the ledger: write-ahead charge, fit, atomic save, commit.

:func:`train` (also :meth:`Ledger.train <privrec.governance.Ledger.train>`) runs a private model
on :class:`~privrec.governance.records.GovernedData`:

1. the model calibrates its noise and announces its planned releases (``_plan``) — **before any
   noise is drawn** the ledger reserves their charge, or refuses (:class:`BudgetExceededError`)
   and the fit stops there;
2. the model fits, recording exactly the announced releases (checked);
3. the model file is written atomically (temporary name, then rename) — the release;
4. the charge is committed with the artifact's hash, kind, config, guarantee, privrec version and
   git commit, and the dataset version it was trained on.

A failure before step 1 leaves nothing behind; a failure after it keeps the charge (noise was
drawn), so the ledger may over-report but never under-reports.

:class:`ChargeSession` is the same protocol for trainings that are not a
:class:`~privrec.models.private.PrivateRecommender` — FederatedMF servers and cross-silo drivers
announce their planned events, train, then commit (see :func:`federated_events`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from privrec.errors import GovernanceError, PolicyViolation
from privrec.governance.records import ArtifactRecord, ChargeInfo, GovernedData
from privrec.privacy.events import SpentEvent

if TYPE_CHECKING:
    from privrec.governance.ledger import Ledger

__all__ = [
    "ChargeSession",
    "TrainingRecord",
    "artifact_info",
    "federated_events",
    "train",
    "train_from_cli",
]


@functools.cache
def git_commit() -> str | None:
    """The git commit of the privrec source tree, when it is a git checkout (else ``None``)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def artifact_info(
    path: str | Path,
    *,
    model_kind: str,
    config: dict[str, Any],
    guarantee: dict[str, Any],
    seeded_noise: bool,
    dataset_hash: str,
) -> dict[str, Any]:
    """The artifact fields :meth:`Ledger.commit` records (hashes the file)."""
    from privrec import __version__
    from privrec.governance.ledger import file_sha256

    return {
        "file_hash": file_sha256(path),
        "path": str(Path(path).resolve()),
        "model_kind": model_kind,
        "config_json": json.dumps(config, sort_keys=True, default=str),
        "privrec_version": __version__,
        "git_commit": git_commit(),
        "guarantee_json": json.dumps(guarantee, sort_keys=True, default=str),
        "seeded_noise": bool(seeded_noise),
        "dataset_hash": dataset_hash,
    }


class ChargeSession:
    """One write-ahead charge around a computation that releases noisy output.

    Use as a context manager: call :meth:`reserve` with the planned events before drawing any
    noise, :meth:`released` once output has left the process (a file written, a message sent to
    clients), and :meth:`commit` at the end. Leaving the block with an exception after the
    reservation keeps the charge reserved, with a note: noise may have been drawn, so the ledger
    over-reports rather than under-reports. Only :meth:`Ledger.abort` releases a reservation, for a
    computation known to have stopped before drawing noise.
    """

    def __init__(
        self,
        ledger: Ledger,
        dataset: str,
        *,
        kind: str,
        purpose: str | None = None,
        description: str = "",
        data: GovernedData | None = None,
    ) -> None:
        self.ledger = ledger
        self.dataset = dataset
        self.kind = kind
        self.purpose = purpose
        self.description = description
        self.data = data
        self.charge: ChargeInfo | None = None
        self.planned: list[SpentEvent] = []
        self._released = False
        self._noise_drawn = False

    # -- protocol
    def reserve(self, planned: list[SpentEvent]) -> ChargeInfo:
        if self.charge is not None:
            raise GovernanceError("this charge session already reserved its charge")
        self.charge = self.ledger.reserve(
            self.dataset,
            planned,
            purpose=self.purpose,
            kind=self.kind,
            description=self.description,
            data=self.data,
        )
        self.planned = list(planned)
        self._noise_drawn = True  # from here on the computation may draw noise
        return self.charge

    def gate(self, planned: list[SpentEvent]) -> None:
        """A model's ``release_gate``: reserve the planned releases (raises to refuse)."""
        self.reserve(planned)

    def released(self) -> None:
        """Noisy output has left the process: from now on the charge can only be committed."""
        if self.charge is None:
            raise GovernanceError("released before the charge was reserved (write-ahead violated)")
        self._released = True

    def commit(self, *, artifact: dict[str, Any] | None = None, result: Any = None) -> ChargeInfo:
        if self.charge is None:
            raise GovernanceError("nothing reserved to commit")
        self.charge = self.ledger.commit(self.charge, artifact=artifact, result=result)
        return self.charge

    def __enter__(self) -> ChargeSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or self.charge is None or self.charge.status != "reserved":
            return
        with contextlib.suppress(Exception):  # the original error matters more
            self.ledger.note(
                self.charge,
                f"kept after a failure ({type(exc).__name__}): noise may have been drawn"
                + ("; output was released" if self._released else ""),
            )


@dataclass(frozen=True)
class TrainingRecord:
    """What :func:`train` returns: the fitted model, the file, its committed charge and artifact."""

    model: Any
    path: Path
    charge: ChargeInfo
    artifact: ArtifactRecord


def _atomic_save(model: Any, output: Path, include_user_data: bool | None) -> Path:
    """``model.save`` to a temporary name, then rename: the release is all or nothing."""
    final = output if output.suffix == ".npz" else output.with_suffix(output.suffix + ".npz")
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp.npz")
    written = model.save(tmp, include_user_data=include_user_data)
    os.replace(written, final)
    return final


def train(
    ledger: Ledger,
    model: Any,
    data: GovernedData,
    *,
    output: str | Path,
    purpose: str | None = None,
    include_user_data: bool | None = None,
    fit: Callable[[Any, Any], Any] | None = None,
    **fit_kwargs: Any,
) -> TrainingRecord:
    """Fit a private ``model`` on governed ``data`` through a write-ahead charge, save and record it.

    Refuses (one-line typed errors, nothing written): data that did not come from
    :meth:`Ledger.load`, data loaded before a later deletion/consent/policy change, a
    non-private model, a model whose privacy unit is not the dataset's, and a charge that would
    exceed a budget (:class:`~privrec.errors.BudgetExceededError`, raised before any noise).
    """
    from privrec.governance.policy import content_hash
    from privrec.models.private import PrivateRecommender

    if not isinstance(data, GovernedData):
        raise PolicyViolation(
            "training through the ledger needs data from ledger.load(dataset, …): this data did not "
            "pass through the dataset's policy"
        )
    if not isinstance(model, PrivateRecommender):
        raise PolicyViolation(
            f"{getattr(model, 'name', type(model).__name__)} is not differentially private: the "
            "ledger only records releases whose privacy loss it can account for"
        )
    cfg = model.config()
    unit = str(getattr(cfg, "unit", ""))
    info = ledger.dataset(data.dataset)
    if unit != info.unit:
        raise PolicyViolation(
            f"dataset {data.dataset!r} is governed at the {info.unit} level; the model uses unit={unit!r}"
        )
    if content_hash(data.interactions) != data.content_hash:
        raise PolicyViolation("the data changed after ledger.load; load it again")
    eps = getattr(cfg, "epsilon", None)
    session = ChargeSession(
        ledger,
        data.dataset,
        kind="training",
        purpose=purpose,
        description=f"{model.name} (ε={eps:g}, δ={getattr(cfg, 'delta', 0):g})"
        if eps is not None
        else model.name,
        data=data,
    )
    with session:
        model.release_gate = session.gate
        try:
            if fit is not None:  # e.g. the CLI's progress bar
                fit(model, data.interactions)
            else:
                model.fit(data.interactions, **fit_kwargs)
        finally:
            model.release_gate = None
        spent = model.guarantee_.spent_events
        if session.charge is None:  # a model without the _plan hook: still before any release
            session.reserve(spent)
        elif [s.to_dict() for s in spent] != [s.to_dict() for s in session.planned]:
            raise GovernanceError(f"{model.name} released other events than it reserved")
        path = _atomic_save(model, Path(output), include_user_data)
        session.released()
        art = artifact_info(
            path,
            model_kind=model.name,
            config=cfg.model_dump(mode="json"),
            guarantee=model.guarantee_.model_dump(mode="json"),
            seeded_noise=model.guarantee_.seeded_noise,
            dataset_hash=data.content_hash,
        )
        charge = session.commit(artifact=art)
    assert charge.artifact_id is not None
    return TrainingRecord(model, path, charge, ledger.artifact(charge.artifact_id))


def federated_events(server: Any) -> list[SpentEvent]:
    """The planned events of a calibrated :class:`~privrec.federated.mf.FederatedMFServer`.

    Its whole training (private head selection, then every round) as one labelled event — what
    a :class:`ChargeSession` reserves before round 1. ``server`` must have been calibrated.
    """
    event = server._planned_event(server.noise_multiplier, server.head_noise_multiplier)
    return [SpentEvent(f"FederatedMF: {server.config.rounds} rounds (planned)", event)]


def train_from_cli(
    model: Any,
    data: Any,
    *,
    url: str | None,
    api_key: str | None,
    dataset: str,
    purpose: str | None,
    output: Path,
    include_user_data: bool | None,
    fit: Callable[[Any, Any], Any] | None = None,
) -> tuple[TrainingRecord, Any]:
    """``privrec train … --dataset NAME``: connect, load through the policy, train; returns the
    record and the dataset budget's status after the charge."""
    from privrec.governance.ledger import Ledger

    ledger = Ledger.connect(url, api_key)
    governed = ledger.load(dataset, data)
    rec = train(
        ledger,
        model,
        governed,
        output=output,
        purpose=purpose,
        include_user_data=include_user_data,
        fit=fit,
    )
    (status,) = [s for s in ledger.status(dataset) if s.scope == "dataset"]
    return rec, status
