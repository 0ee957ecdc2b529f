"""What the ledger returns: plain frozen records (no database objects escape the ledger)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from privrec.data.interactions import Interactions
from privrec.governance.policy import PolicyReport

__all__ = [
    "ArtifactRecord",
    "BudgetStatus",
    "ChargeInfo",
    "DatasetInfo",
    "GovernedData",
    "GovernedVersion",
    "UserLineage",
]


def fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


@dataclass(frozen=True)
class GovernedData:
    """Interactions that passed through a dataset's policy, as registered in the ledger.

    Only :meth:`Ledger.load <privrec.governance.Ledger.load>` makes these; training through the
    ledger refuses anything else, and re-checks ``content_hash`` and the dataset's epoch (so data
    loaded before a deletion request cannot be trained on after it).
    """

    dataset: str
    version_id: int
    content_hash: str
    epoch: int
    interactions: Interactions = field(repr=False)
    report: PolicyReport = field(repr=False)


@dataclass(frozen=True)
class GovernedVersion:
    """A dataset version whose policy was applied where the data lies (a cluster's workers).

    Made by :meth:`Ledger.register_version <privrec.governance.Ledger.register_version>` from
    the workers' content hash, member hashes and policy report; the data itself never reaches
    the ledger's process. A charge reserved with it is checked like one on
    :class:`GovernedData` (version, epoch, consent file, retention), and lineage and deletion
    requests see its members, so a distributed training is as answerable as a local one.
    """

    dataset: str
    version_id: int
    content_hash: str
    epoch: int
    report: PolicyReport = field(repr=False)


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    unit: str
    policy: dict[str, Any]
    policy_hash: str
    epoch: int
    created_at: float
    versions: int
    deletions: int
    consents: int


@dataclass(frozen=True)
class ChargeInfo:
    """One charge. ``epsilon`` is its own ε at the dataset budget's δ (for the naive sum)."""

    id: int
    dataset: str
    actor: str
    purpose: str
    kind: str
    description: str
    status: str
    epsilon: float
    events: list[dict[str, Any]]
    created_at: float
    updated_at: float
    version_id: int | None
    artifact_id: int | None
    idempotency_key: str | None
    note: str
    result: Any = None
    #: ``True`` when an idempotency key matched an existing charge (no new charge was made)
    replayed: bool = False
    #: when the charge's output was recorded as released (:meth:`Ledger.mark_released`);
    #: a released charge can no longer be aborted
    released_at: float | None = None

    @staticmethod
    def from_row(r: Any, dataset: str, replayed: bool = False) -> ChargeInfo:
        return ChargeInfo(
            id=r.id,
            dataset=dataset,
            actor=r.actor,
            purpose=r.purpose,
            kind=r.kind,
            description=r.description,
            status=r.status,
            epsilon=float(r.epsilon),
            events=json.loads(r.events_json),
            created_at=r.created_at,
            updated_at=r.updated_at,
            version_id=r.version_id,
            artifact_id=r.artifact_id,
            idempotency_key=r.idempotency_key,
            note=r.note,
            result=None if r.result_json is None else json.loads(r.result_json),
            replayed=replayed,
            released_at=getattr(r, "released_at", None),
        )


@dataclass(frozen=True)
class BudgetStatus:
    """A budget and what has been spent of it: composed ε (dp-accounting) beside the naive sum."""

    dataset: str
    scope: str
    scope_value: str
    epsilon: float
    delta: float
    period_days: float | None
    accountant: str
    composed_epsilon: float
    naive_epsilon: float
    committed: int
    reserved: int
    aborted: int

    @property
    def remaining(self) -> float:
        return max(self.epsilon - self.composed_epsilon, 0.0)

    @property
    def label(self) -> str:
        return self.scope if self.scope == "dataset" else f"{self.scope} {self.scope_value}"


@dataclass(frozen=True)
class ArtifactRecord:
    """A released artifact and its provenance."""

    id: int
    dataset: str
    file_hash: str
    path: str
    model_kind: str
    config: dict[str, Any]
    privrec_version: str
    git_commit: str | None
    guarantee: dict[str, Any]
    seeded_noise: bool
    version_id: int | None
    dataset_hash: str
    created_at: float
    created_by: str
    charge_ids: tuple[int, ...] = ()
    #: fingerprint (``SHA256:…``) of the Ed25519 key that signed the released file, ``None`` if
    #: it was released unsigned
    signer: str | None = None


@dataclass(frozen=True)
class UserLineage:
    """An artifact trained on a dataset version that contained a given user.

    Two things can make a retrain due: a deletion request, and — where the policy requires
    consent kept in the ledger — a consent withdrawn (``consent_withdrawn_at``: when the
    person's current withdrawn state began).

    An entry exists only for versions that *held* the person, and every load drops a person
    whose deletion request (or withdrawal) it sees. So any request by a member came after their
    data was loaded — possibly while the model was fitting, before its artifact was committed —
    and the artifact was trained on their data: the times are deliberately not compared with
    the artifact's commit time (a request landing mid-fit used to be missed that way).
    """

    artifact: ArtifactRecord
    version_id: int
    deletion_requested_at: float | None
    retrain_due: float | None
    consent_withdrawn_at: float | None = None

    @property
    def trained_before_deletion(self) -> bool:
        """The artifact was trained on the person's data and they have since asked to be deleted."""
        return self.deletion_requested_at is not None

    @property
    def trained_before_withdrawal(self) -> bool:
        """The artifact was trained on the person's data and their consent is now withdrawn."""
        return self.consent_withdrawn_at is not None

    @property
    def reason(self) -> str:
        """Why a retrain is due, in words (empty when none is)."""
        why = []
        if self.trained_before_deletion:
            why.append("asked to be deleted")
        if self.trained_before_withdrawal:
            why.append("withdrawn consent")
        return " and ".join(why)
