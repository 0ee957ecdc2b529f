"""The ledger's tables (SQLAlchemy 2 declarative); Alembic migrations create and evolve them.

Times are UTC seconds since the epoch (``float``), identical on SQLite and PostgreSQL and
exact in the audit log's hashes. People are never stored by their raw ids: a consent, a
deletion request or a dataset version's member list holds a keyed hash of the user id
(:func:`privrec.governance.db.user_digest`), so reading the ledger does not reveal who is in a
dataset, while the ledger can still answer "was this person in that version?".
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKey",
    "Artifact",
    "AuditRow",
    "Base",
    "Budget",
    "Charge",
    "Consent",
    "Dataset",
    "DatasetVersion",
    "Deletion",
    "Meta",
    "Principal",
]


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the ledger: the user-hash key and the audit log's head.

    The ``audit_head`` row is also the ledger's write lock on PostgreSQL: every writing
    transaction takes ``SELECT … FOR UPDATE`` on it first, so budget checks and audit appends
    are serialised exactly as SQLite's ``BEGIN IMMEDIATE`` serialises them.
    """

    __tablename__ = "ledger_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Principal(Base):
    __tablename__ = "principals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiKey(Base):
    """An API key, stored as scrypt(secret, salt); ``key_id`` is the public part used to look it up."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"))
    salt: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(128))
    params: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Dataset(Base):
    """A named dataset, its privacy unit and the policy (TOML as canonical JSON) it is loaded under.

    ``epoch`` grows with every deletion request, consent import and policy change: a dataset
    version from an older epoch may still hold someone who has since left, so training refuses it.
    """

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    unit: Mapped[str] = mapped_column(String(16))
    policy_json: Mapped[str] = mapped_column(Text)
    policy_hash: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class DatasetVersion(Base):
    """One load of a dataset through its policy: content hash, sizes, counts-only report, members."""

    __tablename__ = "dataset_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    policy_hash: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    n_users: Mapped[int] = mapped_column(Integer)
    n_items: Mapped[int] = mapped_column(Integer)
    nnz: Mapped[int] = mapped_column(Integer)
    report_json: Mapped[str] = mapped_column(Text)
    #: sorted little-endian uint64 keyed hashes of the user ids it contains (for lineage)
    members: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class Budget(Base):
    """An (ε, δ) cap on a dataset for one scope: the whole dataset, one analyst or one purpose."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("dataset_id", "scope", "scope_value"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    scope: Mapped[str] = mapped_column(String(16))
    scope_value: Mapped[str] = mapped_column(String(128))
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    period_days: Mapped[float | None] = mapped_column(Float, nullable=True)
    accountant: Mapped[str] = mapped_column(String(8))
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(128))


class Charge(Base):
    """dp-accounting events charged to a dataset: reserved → committed (or aborted before any noise;
    never once ``released_at`` is set).

    ``gaussian_rate`` is Σ 1/z² when every event is an unsampled Gaussian release (else NULL):
    such charges compose exactly into one Gaussian (:func:`privrec.privacy.accounting.simplify`),
    which keeps composition fast with thousands of charges. ``epsilon`` is the charge's own ε at
    the dataset budget's δ, for the naive sum shown beside the composed ε.
    """

    __tablename__ = "charges"
    __table_args__ = (
        UniqueConstraint("actor", "idempotency_key"),
        Index("ix_charges_dataset_status", "dataset_id", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"), nullable=True)
    actor: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    events_json: Mapped[str] = mapped_column(Text)
    gaussian_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    epsilon: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    #: when the charge's noisy output was recorded as released (revision 0003): from then on
    #: the charge can only be committed, never aborted; ``NULL`` until then (and for every
    #: charge recorded before 0003)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Artifact(Base):
    """A released file (model, report, answer) and everything needed to trace it back."""

    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_hash: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    model_kind: Mapped[str] = mapped_column(String(64))
    config_json: Mapped[str] = mapped_column(Text)
    privrec_version: Mapped[str] = mapped_column(String(32))
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    guarantee_json: Mapped[str] = mapped_column(Text)
    seeded_noise: Mapped[bool] = mapped_column(Boolean)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"), nullable=True)
    dataset_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    #: the Ed25519 fingerprint (``SHA256:…``) of the key that signed the released file; ``None``
    #: for an unsigned release (and every artifact recorded before revision 0002)
    signer: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Consent(Base):
    """One consent record (the latest per user and dataset wins)."""

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_dataset_user", "dataset_id", "user_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    user_hash: Mapped[str] = mapped_column(String(16))
    granted: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(Text)


class Deletion(Base):
    """A deletion ("forget me") request: every later load of the dataset drops the user."""

    __tablename__ = "deletions"
    __table_args__ = (Index("ix_deletions_dataset_user", "dataset_id", "user_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    user_hash: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[float] = mapped_column(Float)
    requested_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)


class AuditRow(Base):
    """One audit-log row: ``hash = SHA-256(prev_hash | at | actor | action | payload)``."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
